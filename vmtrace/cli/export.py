"""`vmtrace export LOG --format csv|perfetto|perfetto-json`: a log for spreadsheets or the
Perfetto UI."""

from __future__ import annotations

import os
import sys
from typing import IO

import click

from vmtrace.cli.report import read_records, warn
from vmtrace.errors import OutputError
from vmtrace.export import SortStats, only_pid, write_csv, write_perfetto
from vmtrace.folded import write_folded
from vmtrace.sinks import create_output, open_log


@click.command(
    "export",
    epilog="\b\nExamples:\n  vmtrace export --format csv job.jsonl > job.csv\n"
    "  vmtrace export --format perfetto -o job.pftrace job.jsonl\n"
    "  (then open job.pftrace in https://ui.perfetto.dev)\n"
    "  vmtrace export --format perfetto-json -o job.trace.json job.jsonl",
)
@click.argument("log", type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "perfetto", "perfetto-json", "folded"]),
    required=True,
    help="csv: one row per record; perfetto: Perfetto's protobuf trace (TrackEvent); "
    "perfetto-json: the legacy Chrome/Perfetto trace-event JSON; folded: the stacks of the new "
    "peaks weighted by the kB each added to VmPeak (flamegraph.pl, inferno, speedscope).",
)
@click.option("--pid", type=click.IntRange(min=1), help="Only this process of the log.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def export_cmd(log: str, fmt: str, pid: int | None, output: str | None, force: bool) -> None:
    """Convert an event LOG to CSV, a Perfetto trace or folded stacks (offline, no root)."""
    if fmt == "perfetto":
        _export_proto(log, pid, output, force)
        return
    records = only_pid(read_records(log), pid)
    out: IO[str] = open_log(output, force) if output else sys.stdout
    try:
        if fmt == "csv":
            write_csv(records, out)
        elif fmt == "folded":
            write_folded(records, out)
        else:
            _warn_late(write_perfetto(records, out, {"log": log}))
        out.flush()
    except BrokenPipeError:
        pass
    finally:
        if output:
            out.close()


def _export_proto(log: str, pid: int | None, output: str | None, force: bool) -> None:
    from vmtrace.pftrace import write_perfetto_proto  # protobuf: only loaded for this format

    if output is None and sys.stdout.isatty():
        raise OutputError(
            "failed to export: a protobuf trace is binary, not for a terminal "
            "(fix: -o FILE.pftrace, or redirect stdout)"
        )
    records = only_pid(read_records(log), pid)
    out: IO[bytes] = os.fdopen(create_output(output, force), "wb") if output else sys.stdout.buffer
    try:
        _warn_late(write_perfetto_proto(records, out))
        out.flush()
    except BrokenPipeError:
        pass
    finally:
        if output:
            out.close()


def _warn_late(stats: SortStats) -> None:
    if stats.late:
        warn(
            f"{stats.late} events were further out of time order than the reordering "
            "window: they are written in log order (Perfetto sorts them)"
        )
