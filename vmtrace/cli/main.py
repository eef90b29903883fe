"""The `vmtrace` command: options, subcommands, and the one place errors become messages."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from vmtrace import __version__
from vmtrace.cli.doctor import doctor_cmd
from vmtrace.errors import VmtraceError

# Kept here rather than imported, so `vmtrace --help` loads nothing of the tracer.
BACKEND_CHOICES = ("auto", "fentry", "kprobe", "tracepoint")

_STARTED = time.monotonic()
F = TypeVar("F", bound=Callable[..., Any])

EXAMPLES = """\b
Examples:
  sudo vmtrace -p 4242                  explain every VmPeak change of PID 4242
  sudo vmtrace -p 4242 -o peak.jsonl    ...and keep an event log for later
  sudo vmtrace -p 4242 -p 4243 -d 60    two processes, for one minute
  sudo vmtrace run -- ./myjob --big     trace a command from its first instruction
  sudo vmtrace --json -p 4242 | jq .    JSONL events on stdout

VmPeak (/proc/PID/status) is max(hiwater_vm, total_vm): the kernel latches hiwater_vm
just before it lowers total_vm. vmtrace prints a PEAK line for every increase of VmPeak,
with the call (mmap, brk, mremap, shmat, stack growth...), its size, mapping and user stack,
and a LATCH line when hiwater_vm is recorded. Log schema: docs/log-schema.md.
"""


def _positive(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise click.BadParameter("must be greater than 0")
    return value


def common_options(f: F) -> F:
    options = [
        click.option(
            "-o",
            "--output",
            type=click.Path(dir_okay=False),
            help="Write the JSONL event log to FILE.",
        ),
        click.option("--force", is_flag=True, help="Overwrite an existing output file."),
        click.option(
            "--backend",
            type=click.Choice(BACKEND_CHOICES),
            default="auto",
            show_default=True,
            help="How to observe the kernel; auto takes the best that attaches "
            "(fentry, kprobe, tracepoint) and says which and why.",
        ),
        click.option(
            "-d",
            "--duration",
            type=float,
            callback=_positive,
            metavar="SECONDS",
            help="Stop after SECONDS.",
        ),
        click.option(
            "--interval",
            type=float,
            default=1.0,
            show_default=True,
            callback=_positive,
            metavar="SECONDS",
            help="Check /proc/PID/status against the events every SECONDS.",
        ),
        click.option(
            "--json",
            "json_stdout",
            is_flag=True,
            help="Write JSONL records to stdout instead of text.",
        ),
        click.option(
            "-v", "--verbose", count=True, help="Say more (headers, offsets, every grow/shrink)."
        ),
        click.option("-q", "--quiet", is_flag=True, help="No diagnostics on stderr."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EXAMPLES,
)
@click.option(
    "-p",
    "--pid",
    "pids",
    type=click.IntRange(min=1),
    multiple=True,
    metavar="PID",
    help="Trace PID (all its threads); repeat for several processes.",
)
@common_options
@click.version_option(__version__, prog_name="vmtrace")
@click.pass_context
def cli(ctx: click.Context, /, pids: tuple[int, ...], **kw: Any) -> None:
    """Explain, event by event, every change of a process's peak virtual memory (VmPeak)."""
    if ctx.invoked_subcommand is not None:
        if pids:
            raise click.UsageError("-p/--pid goes before no subcommand (use `vmtrace -p PID`)")
        return
    if not pids:
        raise click.UsageError("nothing to trace: give -p PID, or use `vmtrace run -- CMD`")
    from vmtrace.cli.trace import trace

    ctx.exit(trace(started=_STARTED, pids=list(pids), command=None, **kw))


@cli.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    epilog="\b\nExample:\n  sudo vmtrace run -o job.jsonl -- python3 job.py --input big.csv",
)
@common_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run_cmd(ctx: click.Context, /, command: tuple[str, ...], **kw: Any) -> None:
    """Start COMMAND and trace it from its first instruction; exit with its status."""
    from vmtrace.cli.trace import trace

    ctx.exit(trace(started=_STARTED, pids=[], command=list(command), **kw))


cli.add_command(doctor_cmd)


def main() -> None:
    try:
        cli(prog_name="vmtrace")
    except VmtraceError as e:
        click.echo(f"vmtrace: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("vmtrace: interrupted", err=True)
        sys.exit(130)
