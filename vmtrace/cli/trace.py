"""`vmtrace -p PID` and `vmtrace run -- CMD`: live tracing."""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import TYPE_CHECKING

from vmtrace.child import RunAs
from vmtrace.errors import OutputError
from vmtrace.sinks import (
    DEFAULT_STACK_DEPTH,
    ConsoleSink,
    JsonlSink,
    LogFile,
    RotatingJsonlSink,
    Sink,
)
from vmtrace.tracer import TraceOptions, Tracer, default_log

if TYPE_CHECKING:
    from vmtrace.metrics import MetricsServer


def trace(
    *,
    started: float,
    pids: list[int],
    command: list[str] | None,
    output: str | None,
    force: bool,
    duration: float | None,
    interval: float,
    backend: str,
    json_stdout: bool,
    verbose: int,
    quiet: bool,
    follow: bool = False,
    min_delta: int = 0,
    all_events: bool = False,
    hwm_step: int = 0,
    stack_bytes: int = 16384,
    rotate: int = 0,
    comms: tuple[str, ...] = (),
    cgroup: str | None = None,
    all_: bool = False,
    stack_depth: int = DEFAULT_STACK_DEPTH,
    metrics: str | None = None,
    run_as: RunAs | None = None,
) -> int:
    opts = TraceOptions(
        pids=pids,
        command=command,
        duration=duration,
        interval=interval,
        backend=backend,
        follow=follow,
        comms=comms,
        cgroup=cgroup,
        all=all_,
        min_delta=min_delta,
        all_events=all_events,
        hwm_step=hwm_step,
        stack_bytes=stack_bytes,
        stack_depth=stack_depth,
        verbose=verbose,
        argv=sys.argv,
        run_as=run_as,
    )
    sinks: list[Sink] = []
    tracer = Tracer(opts, sinks, (lambda _m: None) if quiet else default_log)
    tracer.preflight()
    if run_as is not None:
        run_as.check_allowed()
        if not quiet:
            default_log(f"the command runs as {run_as.name} (uid {run_as.uid}, gid {run_as.gid})")
    server: MetricsServer | None = None
    if metrics is not None:
        # imported only then: prometheus_client and its HTTP server cost every start ~50 ms
        from vmtrace.metrics import MetricsServer, MetricsSink

        metrics_sink = MetricsSink()
        server = MetricsServer(metrics_sink, metrics)  # refuses before anything is traced
        sinks.append(metrics_sink)
        if not quiet:
            default_log(f"serving Prometheus metrics on {server.url}")
    log_sink: JsonlSink | None = None
    try:
        if output and rotate:
            log_sink = RotatingJsonlSink(output, force, rotate)
        elif output:
            log_sink = JsonlSink(LogFile(output, force), output)
    except OutputError:
        if server is not None:
            server.close()
        raise
    if log_sink is not None:
        sinks.append(log_sink)
    if json_stdout:
        sinks.append(JsonlSink(sys.stdout, "stdout"))
    else:
        sinks.append(
            ConsoleSink(sys.stdout, tracer.clock, verbose, min_delta // 1024, opts.stack_depth)
        )
    try:
        return tracer.run(started)
    except BaseException:
        if log_sink is not None:
            log_sink.abandon()  # no trace started: no log left behind (the error says why)
        raise
    finally:
        # Done: a Ctrl-C now (Python resets SIGINT while it shuts down) must not turn a
        # complete trace into an exit by signal.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if log_sink is not None:
            with contextlib.suppress(OutputError):  # already reported by the tracer
                log_sink.close()
        if server is not None:
            server.close()
        sys.stdout.flush()
