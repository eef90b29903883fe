"""`vmtrace report LOG`: what a log says about VmPeak, as text, JSON or Markdown.

Offline: needs neither root nor bcc. Shared by the offline subcommands: `read_records` (the
log, with warnings on stderr, and a progress bar on stderr when it is a terminal) and
`write_text` (stdout, or a new file with -o).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

import click
from tqdm import tqdm

from vmtrace.logread import LogReader, Record, numbered
from vmtrace.report import (
    DEFAULT_MAX_PEAKS,
    build_report,
    render_markdown,
    render_text,
    report_json,
)
from vmtrace.sinks import open_log


def warn(msg: str) -> None:
    click.echo(f"vmtrace: warning: {msg}", err=True)


def read_records(log: str, warnings: list[str] | None = None) -> Iterator[tuple[int, Record]]:
    """(line, record) pairs of LOG; warnings go to stderr (and to `warnings`)."""

    def note(msg: str) -> None:
        if warnings is not None:
            warnings.append(msg)
        warn(msg)

    reader = LogReader(log, note)
    return with_progress(reader, numbered(reader))


PROGRESS_DELAY_S = 1.0  # a log read faster than this never shows a bar
PROGRESS_EVERY = 2000  # records between updates of the bar


def with_progress(
    reader: LogReader,
    pairs: Iterable[tuple[int, Record]],
    stream: TextIO | None = None,
    delay: float = PROGRESS_DELAY_S,
) -> Iterator[tuple[int, Record]]:
    """`pairs`, with a bar of how much of the log was read on `stream` (stderr) if it is a
    terminal; nothing is written otherwise, nor for a log read within `delay` seconds, and
    the bar is erased once the log is read."""
    out = stream if stream is not None else sys.stderr
    if not out.isatty():
        yield from pairs
        return
    try:
        size: int | None = os.path.getsize(reader.path)
    except OSError:
        size = None  # LogReader says why, on its first read
    bar = tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"reading {os.path.basename(reader.name)}",
        file=out,
        delay=delay,
        leave=False,
        dynamic_ncols=True,
    )
    done = 0
    try:
        for i, pair in enumerate(pairs):
            if i % PROGRESS_EVERY == 0:
                bar.update(reader.bytes_read - done)
                done = reader.bytes_read
            yield pair
        bar.update(reader.bytes_read - done)
    finally:
        bar.close()


def write_text(text: str, output: str | None, force: bool) -> None:
    if output is None:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:  # `vmtrace report LOG | head`
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return
    with open_log(output, force) as f:
        f.write(text)


@click.command(
    "report",
    epilog="\b\nExamples:\n  vmtrace report job.jsonl\n"
    "  vmtrace report --format markdown --pid 4242 job.jsonl > report.md",
)
@click.argument("log", type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "markdown"]),
    default="text",
    show_default=True,
    help="Output format.",
)
@click.option("--pid", type=click.IntRange(min=1), help="Only this process of the log.")
@click.option(
    "--max-peaks",
    type=click.IntRange(min=2),
    default=DEFAULT_MAX_PEAKS,
    show_default=True,
    metavar="N",
    help="Timeline entries kept per process (the first and the last N/2).",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def report_cmd(
    log: str, fmt: str, pid: int | None, max_peaks: int, output: str | None, force: bool
) -> None:
    """Explain the VmPeak of each process of an event LOG (offline, no root needed).

    The timeline of new peaks with their causes, VmHWM (samples, HWM records, the exit), the
    causes of the final VmPeak by call site and by mapping, and the address space at the
    final peak, rebuilt from the log and grouped (heap, anonymous, file-backed, stacks,
    shared memory, reservations, exec image).
    """
    warnings: list[str] = []
    rep = build_report(
        read_records(log, warnings), log, pid=pid, max_peaks=max_peaks, warnings=warnings
    )
    if fmt == "json":
        text = report_json(rep)
    elif fmt == "markdown":
        text = render_markdown(rep)
    else:
        text = render_text(rep)
    write_text(text, output, force)
