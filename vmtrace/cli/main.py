"""The `vmtrace` command: options, subcommands, and the one place errors become messages."""

from __future__ import annotations

import importlib
import math
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import click

from vmtrace import __version__
from vmtrace.errors import VmtraceError
from vmtrace.sinks import DEFAULT_STACK_DEPTH
from vmtrace.units import parse_size

# Kept here rather than imported, so `vmtrace --help` loads nothing of the tracer.
BACKEND_CHOICES = ("auto", "fentry", "kprobe", "tracepoint")

PID_MAX_LIMIT = 4194304  # include/linux/threads.h: no pid is ever larger on 64-bit
F = TypeVar("F", bound=Callable[..., Any])

EXAMPLES = """\b
Examples:
  sudo vmtrace -p 4242                  explain every VmPeak change of PID 4242
  sudo vmtrace -p 4242 -o peak.jsonl    ...and keep an event log for later
  sudo vmtrace -p 4242 -p 4243 -d 60    two processes, for one minute
  sudo vmtrace run -- ./myjob --big     trace a command from its first instruction
  sudo vmtrace --json -p 4242 | jq .    JSONL events on stdout
  sudo vmtrace -a --min-delta 64M --metrics 127.0.0.1:9792
                                        every process; Prometheus metrics on /metrics

VmPeak (/proc/PID/status) is max(hiwater_vm, total_vm): the kernel latches hiwater_vm
just before it lowers total_vm. vmtrace prints a PEAK line for every increase of VmPeak,
with the call (mmap, brk, mremap, shmat, stack growth...), its size, mapping and user stack,
and a LATCH line when hiwater_vm is recorded. Log schema: docs/log-schema.md.
"""


class SizeType(click.ParamType):  # type: ignore[type-arg]
    """64M, 1G, 512k, 4096 (bytes)."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


SIZE = SizeType()


def _positive(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (0 < value < math.inf):  # also refuses nan
        raise click.BadParameter("must be a number of seconds greater than 0")
    return value


def _listen_address(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A bad --metrics address is refused before anything else is checked; whether it can
    be bound is known only once tracing is possible (the server starts just before)."""
    if value is not None:
        from vmtrace.metrics import parse_listen

        parse_listen(value)
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
            "(tracepoint, fentry, kprobe) and says which and why.",
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
            "--follow",
            is_flag=True,
            help="Also trace children (fork, vfork, clone) from their first instruction; "
            "an exec starts the peak over.",
        ),
        click.option(
            "--min-delta",
            type=SIZE,
            default="0",
            metavar="SIZE",
            help="Report only VmPeak increases of at least SIZE (64M, 1G...). The kernel side "
            "then keeps every other change to itself.",
        ),
        click.option(
            "--all-events",
            is_flag=True,
            help="With --min-delta, still send and log every change (only the console filters).",
        ),
        click.option(
            "--hwm-step",
            type=SIZE,
            default="0",
            metavar="SIZE",
            help="Explain VmHWM (peak RSS) too, one record each time it grows by SIZE "
            "(e.g. 1M; off by default: it probes every RSS change).",
        ),
        click.option(
            "--stack-bytes",
            type=SIZE,
            default="16K",
            show_default=True,
            metavar="SIZE",
            help="User stack copied by the kernel for each peak, latch and HWM record, to "
            "unwind its call chain (0: none; a multiple of 512 up to 64K).",
        ),
        click.option(
            "--stack-depth",
            type=click.IntRange(min=0),
            default=DEFAULT_STACK_DEPTH,
            show_default=True,
            metavar="N",
            help="User stack frames shown per PEAK, LATCH and HWM line (0: none; the -o log "
            "keeps every frame).",
        ),
        click.option(
            "--rotate",
            type=SIZE,
            default="0",
            metavar="SIZE",
            help="Rotate the -o log when it reaches SIZE (FILE.1, FILE.2, ...), losing nothing.",
        ),
        click.option(
            "--metrics",
            metavar="HOST:PORT",
            callback=_listen_address,
            help="Serve Prometheus metrics on http://HOST:PORT/metrics while tracing "
            "(e.g. 127.0.0.1:9792; :9792 for every interface).",
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


class _LazyGroup(click.Group):
    """Subcommands whose modules load only when named: tracing (`vmtrace -p`, `run`) loads
    none of the offline tools' modules before its probes are on."""

    LAZY: ClassVar[dict[str, str]] = {
        "doctor": "vmtrace.cli.doctor:doctor_cmd",
        "export": "vmtrace.cli.export:export_cmd",
        "plot": "vmtrace.cli.plot:plot_cmd",
        "report": "vmtrace.cli.report:report_cmd",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = self.LAZY.get(cmd_name)
        if where is None:
            return super().get_command(ctx, cmd_name)
        module, name = where.split(":")
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command)
        return command


@click.group(
    cls=_LazyGroup,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EXAMPLES,
)
@click.option(
    "-p",
    "--pid",
    "pids",
    type=click.IntRange(min=1, max=PID_MAX_LIMIT),
    multiple=True,
    metavar="PID",
    help="Trace PID (all its threads); repeat for several processes.",
)
@click.option(
    "--comm",
    "comms",
    multiple=True,
    metavar="NAME",
    help="Trace every process named NAME (its comm, 15 characters at most); repeatable.",
)
@click.option(
    "--cgroup",
    type=click.Path(exists=True, file_okay=False),
    metavar="PATH",
    help="Trace every process in cgroup v2 directory PATH and below (e.g. a container).",
)
@click.option(
    "-a", "--all", "all_", is_flag=True, help="Trace every process, with per-process accounting."
)
@common_options
@click.version_option(__version__, prog_name="vmtrace")
@click.pass_context
def cli(
    ctx: click.Context,
    /,
    pids: tuple[int, ...],
    comms: tuple[str, ...],
    cgroup: str | None,
    all_: bool,
    **kw: Any,
) -> None:
    """Explain, event by event, every change of a process's peak virtual memory (VmPeak)."""
    if ctx.invoked_subcommand is not None:
        if pids or comms or cgroup or all_:
            raise click.UsageError(
                "-p, --comm, --cgroup and -a go without a subcommand (e.g. `vmtrace -p PID`)"
            )
        return
    if not (pids or comms or cgroup or all_):
        raise click.UsageError(
            "nothing to trace: give -p PID, --comm NAME, --cgroup PATH or -a, "
            "or use `vmtrace run -- CMD`"
        )
    if all_ and (pids or comms or cgroup):
        raise click.UsageError(
            "-a/--all traces every process: it goes without -p, --comm, --cgroup"
        )
    for name in comms:
        if not name or len(name.encode()) > 15 or "/" in name:
            raise click.BadParameter(
                f"{name!r}: a process name is 1 to 15 bytes, without '/'", param_hint="--comm"
            )
    from vmtrace.cli.trace import trace
    from vmtrace.procfs import started_monotonic

    ctx.exit(
        trace(
            started=started_monotonic(os.getpid()),
            pids=list(pids),
            command=None,
            comms=comms,
            cgroup=cgroup,
            all_=all_,
            **kw,
        )
    )


@cli.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    epilog="\b\nExample:\n  sudo vmtrace run -o job.jsonl -- python3 job.py --input big.csv",
)
@common_options
@click.option(
    "-u",
    "--user",
    metavar="USER",
    help="Run COMMAND as USER (name or uid; vmtrace keeps root). Default: $SUDO_USER when "
    "set, else vmtrace's own user.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run_cmd(ctx: click.Context, /, command: tuple[str, ...], user: str | None, **kw: Any) -> None:
    """Start COMMAND and trace it from its first instruction; exit with its status."""
    from vmtrace.child import RunAs

    # Under sudo, the command runs as the user who asked for it, not as root.
    spec = user if user is not None else os.environ.get("SUDO_USER") or None
    run_as = RunAs.resolve(spec) if spec is not None else None
    from vmtrace.cli.trace import trace
    from vmtrace.procfs import started_monotonic

    started = started_monotonic(os.getpid())
    ctx.exit(trace(started=started, pids=[], command=list(command), run_as=run_as, **kw))




class _Interrupted(Exception):
    """Ctrl-C before the tracer took SIGINT over (or after it let go)."""


def _interrupted(_signum: int, _frame: object) -> None:
    raise _Interrupted


def main() -> None:
    # Not a KeyboardInterrupt: click would turn that into "Aborted!" and exit status 1.
    signal.signal(signal.SIGINT, _interrupted)
    try:
        cli(prog_name="vmtrace")
    except VmtraceError as e:
        click.echo(f"vmtrace: {e}", err=True)
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, _Interrupted):
        click.echo("vmtrace: interrupted", err=True)
        sys.exit(130)
