"""`vmtrace plot LOG -o FILE`: VmSize, VmPeak and RSS over time, new peaks annotated."""

from __future__ import annotations

import click

from vmtrace.cli.report import read_records


@click.command(
    "plot",
    epilog="\b\nExamples:\n  vmtrace plot job.jsonl -o job.png\n"
    "  vmtrace plot job.jsonl -o job.html     (a self-contained page)",
)
@click.argument("log", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    required=True,
    help="The picture: .png, .svg, or .html (self-contained page).",
)
@click.option("--pid", type=click.IntRange(min=1), help="Only this process of the log.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def plot_cmd(log: str, output: str, pid: int | None, force: bool) -> None:
    """Draw VmSize, VmPeak and RSS of an event LOG over time (offline, no root needed)."""
    from vmtrace import plot  # matplotlib: only loaded by this command

    fmt = plot.format_of(output)
    data = plot.collect(read_records(log), f"vmtrace: {log}", pid)
    plot.write(data, output, fmt, force)
