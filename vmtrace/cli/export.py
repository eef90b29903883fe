"""`vmtrace export LOG --format csv|perfetto`: a log for spreadsheets or the Perfetto UI."""

from __future__ import annotations

import sys
from typing import IO

import click

from vmtrace.cli.report import read_records, warn
from vmtrace.export import only_pid, write_csv, write_perfetto
from vmtrace.folded import write_folded
from vmtrace.sinks import open_log


@click.command(
    "export",
    epilog="\b\nExamples:\n  vmtrace export --format csv job.jsonl > job.csv\n"
    "  vmtrace export --format perfetto -o job.trace.json job.jsonl\n"
    "  (then open job.trace.json in https://ui.perfetto.dev)",
)
@click.argument("log", type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "perfetto", "folded"]),
    required=True,
    help="csv: one row per record; perfetto: Chrome/Perfetto trace-event JSON; folded: the "
    "stacks of the new peaks weighted by the kB each added to VmPeak (flamegraph.pl, inferno, "
    "speedscope).",
)
@click.option("--pid", type=click.IntRange(min=1), help="Only this process of the log.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def export_cmd(log: str, fmt: str, pid: int | None, output: str | None, force: bool) -> None:
    """Convert an event LOG to CSV, a Perfetto trace or folded stacks (offline, no root)."""
    records = only_pid(read_records(log), pid)
    out: IO[str] = open_log(output, force) if output else sys.stdout
    try:
        if fmt == "csv":
            write_csv(records, out)
        elif fmt == "folded":
            write_folded(records, out)
        else:
            stats = write_perfetto(records, out, {"log": log})
            if stats.late:
                warn(
                    f"{stats.late} events were further out of time order than the reordering "
                    "window: they are written in log order (Perfetto sorts them)"
                )
        out.flush()
    except BrokenPipeError:
        pass
    finally:
        if output:
            out.close()
