"""The live tracer: kernel → decode → enrich → engine → sinks, until told to stop.

Order matters for exactness: probes are attached before /proc is read, so no change falls
between the attach-time reading and the first event; and every sample of /proc is followed
by a drain of the ring buffer before it is compared with the events.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

from vmtrace import __version__, procfs, schema
from vmtrace.abi import EventKind, KernelEvent
from vmtrace.backends import KernelSurvey, candidates
from vmtrace.child import HeldChild
from vmtrace.engine import PeakEngine
from vmtrace.enrich import Enricher
from vmtrace.errors import EnvironmentProblem, ProbeError, VmtraceError
from vmtrace.kernel.headers import choose_headers
from vmtrace.kernel.offsets import read_offsets
from vmtrace.kernel.privileges import check_tracing_privileges
from vmtrace.kernel.tracefs import tracefs_root
from vmtrace.records import Explained
from vmtrace.session import BccSession
from vmtrace.sinks import Sink
from vmtrace.units import WallClock

POLL_MS = 100
Log = Callable[[str], None]


@dataclass
class TraceOptions:
    pids: list[int] = field(default_factory=list)
    command: list[str] | None = None
    duration: float | None = None
    interval: float = 1.0
    backend: str = "auto"
    verbose: int = 0
    argv: Sequence[str] = ()


@dataclass
class _Target:
    info: procfs.ProcessInfo
    alive: bool = True
    exit_seen: bool = False
    last: Explained | None = None


class _Stop:
    """Set by SIGINT/SIGTERM; the loop notices within one poll."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.reason = "interrupted" if signum == signal.SIGINT else "terminated"


class Tracer:
    def __init__(self, opts: TraceOptions, sinks: list[Sink], log: Log) -> None:
        self.opts = opts
        self.sinks = sinks
        self.log = log
        self.session: BccSession | None = None
        self.engine = PeakEngine()
        self.targets: dict[int, _Target] = {}
        self.events = 0
        self.lost_reported = 0
        self.child: HeldChild | None = None
        self.clock = WallClock(time.clock_gettime_ns(time.CLOCK_MONOTONIC), time.time_ns())
        self.enricher: Enricher | None = None
        self._infos: list[procfs.ProcessInfo] = []
        self._sessions: list[BccSession] = []
        self._unusable: list[str] = []
        self.backend_reason = ""

    # -- set-up -----------------------------------------------------------------------
    def _prepare(self) -> list[BccSession]:
        """The sessions to try, best first; refuses when none can run on this kernel."""
        check_tracing_privileges()
        survey = KernelSurvey(tracefs_root())
        found = candidates(self.opts.backend, survey)
        self._unusable = [f"{c.name}: {c.reason}" for c in found if not c.usable]
        usable = [c for c in found if c.usable]
        if not usable:
            fix = "" if self.opts.backend == "auto" else " (fix: --backend auto)"
            raise EnvironmentProblem(
                f"failed to use the {self.opts.backend} backend: {'; '.join(self._unusable)}{fix}"
            )
        offsets = read_offsets()
        headers = choose_headers()
        if self.opts.verbose:
            self.log(f"headers: {headers.description}")
            self.log(
                f"BTF offsets: task_struct.mm={offsets.task_mm} mm_struct.total_vm="
                f"{offsets.mm_total_vm} hiwater_vm={offsets.mm_hiwater_vm} stack_vm="
                f"{offsets.mm_stack_vm}"
            )
            for reason in self._unusable:
                self.log(f"backend {reason}")
        return [
            BccSession(c.name, offsets, headers.kernel_source, survey.have_exit_mmap, c.plan)
            for c in usable
        ]

    def _open_backend(self) -> BccSession:
        """Load the first candidate that loads; say which and why in backend_reason."""
        tried = list(self._unusable)
        for i, session in enumerate(self._sessions):
            last = i == len(self._sessions) - 1
            try:
                session.open()
            except ProbeError as e:
                if self.opts.verbose > 1 and session.diagnostics:
                    self.log(f"bcc said, loading {session.backend}:\n{session.diagnostics}")
                if last:
                    raise ProbeError(
                        "; ".join([*tried, str(e)]) if tried else str(e)
                    ) from None
                tried.append(f"{session.backend}: {e}")
                if self.opts.verbose:
                    self.log(f"backend {session.backend} did not load: {e}")
                continue
            sites = f" ({session.plan.describe()})" if session.plan else ""
            why = "requested" if self.opts.backend != "auto" else "auto: best that attached"
            self.backend_reason = "; ".join([f"{why}{sites}", *tried])
            return session
        raise ProbeError("failed to load any backend")  # unreachable: _prepare refuses none

    # -- main -------------------------------------------------------------------------
    def preflight(self) -> None:
        """Everything that can refuse to trace, before any file is created or probe loaded."""
        self._infos = [procfs.inspect_target(pid) for pid in self.opts.pids]
        self._sessions = self._prepare()

    def run(self, started: float) -> int:
        opts = self.opts
        infos = self._infos
        released = True
        if opts.command:
            self.child = HeldChild(opts.command)
            released = False
            infos = [procfs.inspect_target(self.child.pid)]
        stop = _Stop()
        old_int = signal.signal(signal.SIGINT, stop)
        old_term = signal.signal(signal.SIGTERM, stop)
        reason = "error"
        session: BccSession | None = None
        try:
            session = self.session = self._open_backend()
            self.enricher = Enricher(
                os.sysconf("SC_PAGE_SIZE"), _name_file, procfs.read_maps, session.symbolize
            )
            for info in infos:
                session.add_target(info.pid)
            attach_seconds = time.monotonic() - started
            self._announce(infos, attach_seconds)
            if self.child is not None:
                self.child.release()
                released = True
            reason = self._loop(stop)
        finally:
            if not released and self.child is not None:
                self.child.abandon()
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
            try:
                if self.session is not None:
                    self._finish(reason)
            finally:
                if session is not None:
                    session.close()
        if self.child is not None:
            rc = self.child.wait()
            return rc if rc >= 0 else 128 - rc
        return 0

    def _announce(self, infos: list[procfs.ProcessInfo], attach_seconds: float) -> None:
        assert self.enricher is not None
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        statuses = []
        for info in infos:
            status = procfs.read_status(info.pid)
            maps = procfs.read_maps(info.pid)
            self.targets[info.pid] = _Target(info)
            # A `run` child is still the forked vmtrace until it execs: its peak is not the
            # command's, and the exec record starts the command's own.
            self.engine.start(info.pid, info.comm, None if self.opts.command else status)
            self.enricher.attach(info.pid, maps)
            statuses.append((info, status))
        user = pwd.getpwuid(os.getuid()).pw_name
        self._emit(
            schema.start_record(
                self.clock,
                vmtrace_version=__version__,
                kernel=os.uname().release,
                backend=self.session.backend if self.session else "?",
                backend_reason=self.backend_reason,
                page_size=os.sysconf("SC_PAGE_SIZE"),
                user={"uid": os.getuid(), "name": user, "sudo_user": os.environ.get("SUDO_USER")},
                argv=self.opts.argv,
                targets=statuses,
                attach_seconds=attach_seconds,
                interval=self.opts.interval,
            )
        )
        if not self.opts.command:
            for info in infos:
                self._emit(
                    schema.maps_record(
                        self.clock, now, info.pid, info.comm, procfs.read_maps(info.pid)
                    )
                )
        self._flush()
        pids = ", ".join(f"{i.pid} ({i.comm})" for i in infos)
        self.log(
            f"tracing {pids} with the {self.session.backend if self.session else '?'} backend "
            f"(attached in {attach_seconds:.2f} s); "
            "Ctrl-C to stop"
        )

    def _loop(self, stop: _Stop) -> str:
        assert self.session is not None
        deadline = time.monotonic() + self.opts.duration if self.opts.duration else None
        next_sample = time.monotonic() + self.opts.interval
        while True:
            self._process(self.session.poll(POLL_MS))
            self._check_lost()
            now = time.monotonic()
            if now >= next_sample:
                self._sample()
                next_sample = now + self.opts.interval
            self._check_alive()
            self._flush()
            if stop.reason:
                return stop.reason
            if not any(t.alive for t in self.targets.values()):
                return "targets-exited"
            if deadline is not None and now >= deadline:
                return "duration"

    def _process(self, batch: list[KernelEvent]) -> None:
        assert self.enricher is not None
        for ev in batch:
            target = self.targets.get(ev.pid)
            if target is None:
                continue
            self.events += 1
            explained = self.engine.explain(self.enricher.enrich(ev))
            if ev.kind is EventKind.EXEC:
                fresh = procfs.inspect_target_quietly(ev.pid, target.info)
                target.info = dataclasses.replace(fresh, comm=ev.comm)
            target.last = explained
            if ev.kind is EventKind.EXIT:
                self._exited(ev.pid, "bpf", ev.ts_ns)
            else:
                self._emit(schema.explained_record(explained, self.clock))

    def _sample(self) -> None:
        assert self.session is not None
        for pid, target in self.targets.items():
            if not target.alive:
                continue
            status = procfs.read_status(pid)
            ts = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            # Changes made before the reading are in the ring buffer by now (or under a lock
            # not yet released: the engine allows one such disagreement).
            self._process(self.session.drain())
            if status is None or not target.alive:
                continue
            check = self.engine.check_sample(ts, pid, status)
            self._emit(schema.sample_record(check, self.clock, target.info.comm))

    def _check_lost(self) -> None:
        assert self.session is not None
        total = self.session.lost()
        if total > self.lost_reported:
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            self._emit(schema.lost_record(self.clock, now, total - self.lost_reported, total))
            self.lost_reported = total

    def _check_alive(self) -> None:
        for pid, target in self.targets.items():
            if not target.alive:
                continue
            gone = False
            if self.child is not None and self.child.pid == pid:
                gone = self.child.poll() is not None
            else:
                start = procfs.read_start_time(pid)
                gone = (
                    start is None
                    or start != target.info.start_time
                    or procfs.read_status(pid) is None
                )
            if gone:
                assert self.session is not None
                self._process(self.session.drain())
                if target.alive:
                    source = "wait" if self.child is not None else "proc"
                    self._exited(pid, source, time.clock_gettime_ns(time.CLOCK_MONOTONIC))

    def _exited(self, pid: int, source: str, ts_ns: int) -> None:
        target = self.targets[pid]
        if not target.alive:
            return
        target.alive = False
        exit_status = None
        if self.child is not None and self.child.pid == pid and self.child.returncode is not None:
            exit_status = self.child.returncode
        self._emit(
            schema.exit_record(
                self.clock,
                ts_ns,
                pid,
                target.info.comm,
                self.engine.expected_vm_peak_kb(pid),
                source,
                target.last,
                exit_status,
            )
        )
        if self.session is not None:
            self.session.remove_target(pid)
        if self.enricher is not None:
            self.enricher.forget(pid)

    def _finish(self, reason: str) -> None:
        assert self.session is not None
        try:
            self._process(self.session.drain())
            self._check_lost()
        except VmtraceError as e:
            self.log(f"failed to drain the last records: {e}")
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if self.session.decode_errors:
            self.log(f"warning: {self.session.decode_errors} records could not be decoded")
        self._emit(
            schema.end_record(
                self.clock, now, reason, self.events, self.lost_reported, self.engine.summary()
            )
        )
        self._flush()

    def _emit(self, rec: schema.Record) -> None:
        for sink in self.sinks:
            sink.write(rec)

    def _flush(self) -> None:
        for sink in self.sinks:
            sink.flush()


def _name_file(pid: int, fd: int, start: int, end: int) -> str | None:
    # The fd may be closed already (ld.so closes right after mapping); the mapping lasts longer.
    return procfs.read_fd_path(pid, fd) or procfs.read_mapped_file(pid, start, end)


def default_log(msg: str) -> None:
    print(f"vmtrace: {msg}", file=sys.stderr, flush=True)
