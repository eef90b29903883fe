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
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType

from vmtrace import __version__, procfs, schema, taskstats
from vmtrace.abi import EventKind, KernelEvent, TraceConfig
from vmtrace.backends import (
    Candidate,
    KernelSurvey,
    candidates,
    forget_failure,
    remember_failure,
    remembered_failure,
)
from vmtrace.cgroups import resolve_cgroup
from vmtrace.child import HeldChild, RunAs
from vmtrace.engine import PeakEngine
from vmtrace.enrich import Enricher
from vmtrace.errors import EnvironmentProblem, OutputError, ProbeError, VmtraceError
from vmtrace.kernel.headers import choose_headers
from vmtrace.kernel.offsets import boot_offsets, read_offsets
from vmtrace.kernel.privileges import check_tracing_privileges
from vmtrace.kernel.tracefs import tracefs_root
from vmtrace.lifecycle import KernelAccounts, exit_status_of, gone
from vmtrace.pidns import PidNamespace, own_pid_namespace
from vmtrace.records import Explained, Mapping
from vmtrace.sampling import Sampler
from vmtrace.session import BccSession
from vmtrace.sinks import DEFAULT_STACK_DEPTH, Sink
from vmtrace.units import WallClock
from vmtrace.untraced import UntracedChildren

POLL_MS = 100
OOM_RISES = 5  # VmPeak rises an OOM record recalls
OOM_MAPPINGS = 5  # largest mappings it lists
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
    follow: bool = False
    comms: tuple[str, ...] = ()
    cgroup: str | None = None
    all: bool = False
    min_delta: int = 0  # bytes
    all_events: bool = False
    hwm_step: int = 0  # bytes; 0: no VmHWM records
    stack_bytes: int = 16384  # user stack copied per vital record; 0: none
    stack_depth: int = DEFAULT_STACK_DEPTH  # frames the console shows; the log keeps them all
    run_as: RunAs | None = None  # `run`: the user the command runs as (None: vmtrace's)

    @property
    def discovers(self) -> bool:
        """Targets may appear that were not named up front (children, --all, ...)."""
        return self.follow or self.all or bool(self.comms) or self.cgroup is not None


@dataclass
class _Target:
    info: procfs.ProcessInfo
    alive: bool = True
    last: Explained | None = None


class _Stop:
    """Set by SIGINT/SIGTERM; the loop notices within one poll."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.signum = 0

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.reason = "interrupted" if signum == signal.SIGINT else "terminated"
        self.signum = signum


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
        self.tallied_reported = 0
        self.child: HeldChild | None = None
        self.clock = WallClock(time.clock_gettime_ns(time.CLOCK_MONOTONIC), time.time_ns())
        self.enricher: Enricher | None = None
        self._infos: list[procfs.ProcessInfo] = []
        self.accounts = KernelAccounts(lambda pid: pid in self.targets and self.targets[pid].alive)
        self.sampler: Sampler | None = None
        self._sessions: list[BccSession] = []  # made so far, best first
        self._pending: Iterator[Candidate] = iter(())  # the candidates not surveyed yet
        self._session_of: Callable[[Candidate], BccSession] | None = None
        self._unusable: list[str] = []
        self.backend_reason = ""
        self.output_error: OutputError | None = None
        self._stop = _Stop()
        self._rises: dict[int, deque[Explained]] = {}
        self._oom_killed: set[int] = set()
        # Without --follow (or another way of adding processes), what traced processes
        # started is not traced: the summary says how many the samples saw.
        self.untraced = None if opts.discovers else UntracedChildren()
        self.pidns: PidNamespace | None = None  # vmtrace's own, when not the host's
        self._cgroups: dict[int, str] = {}  # memory cgroups as last seen, for OOM records

    # -- set-up -----------------------------------------------------------------------
    def _prepare(self) -> None:
        """The first session to try (more follow from _next_session() if it fails to load);
        refuses when no backend can run on this kernel."""
        check_tracing_privileges()
        survey = KernelSurvey(tracefs_root())
        offsets = boot_offsets(
            survey.btf_path, lambda: read_offsets(survey.btf_path, btf=survey.btf)
        )
        headers = choose_headers()
        self.pidns = own_pid_namespace()
        config = self._config()
        if self.opts.verbose:
            self.log(f"headers: {headers.description}")
            self.log(
                f"BTF offsets: task_struct.mm={offsets.task_mm} mm_struct.total_vm="
                f"{offsets.mm_total_vm} hiwater_vm={offsets.mm_hiwater_vm} stack_vm="
                f"{offsets.mm_stack_vm}"
            )
        max_targets = 32768 if self.opts.discovers else 1024

        def session_of(c: Candidate) -> BccSession:
            return BccSession(
                c.name,
                offsets,
                headers.kernel_source,
                survey.have_task_pt_regs,
                c.plan,
                config=config,
                max_targets=max_targets,
                stack_bytes=self.opts.stack_bytes,
                oom_victim=survey.oom_victim,
                pidns=self.pidns,
            )

        self._session_of = session_of
        self._pending = candidates(self.opts.backend, survey)
        first = self._next_session()
        if first is None:
            fix = "" if self.opts.backend == "auto" else " (fix: --backend auto)"
            raise EnvironmentProblem(
                f"failed to use the {self.opts.backend} backend: {'; '.join(self._unusable)}{fix}"
            )

    def _next_session(self) -> BccSession | None:
        """The session of the next candidate that can run here, surveyed only now: a later
        one is looked at only if those before it fail (why the others cannot run is kept
        in _unusable)."""
        for c in self._pending:
            if c.usable and self._session_of is not None:
                session = self._session_of(c)
                self._sessions.append(session)
                return session
            self._unusable.append(f"{c.name}: {c.reason}")
            if self.opts.verbose:
                self.log(f"backend {c.name}: {c.reason}")
        return None

    def _remembered(self, session: BccSession) -> str | None:
        """Why `session` failed to load before in this boot, if it did (`auto` only: an
        explicit --backend always tries for real)."""
        if self.opts.backend != "auto":
            return None
        return remembered_failure(session.backend, session.plan)

    def _config(self) -> TraceConfig:
        page = os.sysconf("SC_PAGE_SIZE")
        cg = resolve_cgroup(self.opts.cgroup) if self.opts.cgroup else None
        kernel_min_delta = 0 if self.opts.all_events else self.opts.min_delta
        return TraceConfig(
            min_delta_pages=-(-kernel_min_delta // page),
            hwm_step_pages=-(-self.opts.hwm_step // page),
            cgroup_id=cg.cgroup_id if cg else 0,
            cgroup_path=cg.path if cg else None,
            follow=self.opts.follow,
            all=self.opts.all,
            comms=self.opts.comms,
            self_tgid=os.getpid(),
        )

    def _open_backend(self) -> BccSession:
        """Load the first candidate that loads; say which and why in backend_reason."""
        tried: list[str] = []
        session: BccSession | None = self._sessions[0]
        while session is not None:
            known = self._remembered(session)
            if known:
                following = self._next_session()
                if following is not None:
                    tried.append(f"{session.backend}: {known} (this boot, remembered)")
                    session = following
                    continue
            try:
                session.open()
                if known:
                    forget_failure(session.backend, session.plan)
            except ProbeError as e:
                remember_failure(session.backend, session.plan, str(e))
                if self.opts.verbose > 1 and session.diagnostics:
                    self.log(f"bcc said, loading {session.backend}:\n{session.diagnostics}")
                following = self._next_session()
                if following is None:
                    raise ProbeError("; ".join([*self._unusable, *tried, str(e)])) from None
                tried.append(f"{session.backend}: {e}")
                if self.opts.verbose:
                    self.log(f"backend {session.backend} did not load: {e}")
                session = following
                continue
            sites = f" ({session.plan.describe()})" if session.plan else ""
            why = "requested" if self.opts.backend != "auto" else "auto: best that attached"
            self.backend_reason = "; ".join([f"{why}{sites}", *self._unusable, *tried])
            return session
        raise ProbeError("failed to load any backend")  # unreachable: _prepare refuses none

    # -- main -------------------------------------------------------------------------
    def preflight(self) -> None:
        """Everything that can refuse to trace, before any file is created or probe loaded."""
        self.opts.pids = self._processes_of(self.opts.pids)
        self._infos = [procfs.inspect_target(pid) for pid in self.opts.pids]
        self._prepare()

    def _processes_of(self, pids: list[int]) -> list[int]:
        """-p takes a process; given a thread's id it traces that thread's process (the
        kernel side and /proc/PID/status are per process), and says so."""
        out: list[int] = []
        for pid in pids:
            tgid = procfs.tgid_of(pid)
            if tgid is not None and tgid != pid:
                comm = procfs.read_comm(tgid) or "?"
                self.log(f"{pid} is a thread of process {tgid} ({comm}): tracing process {tgid}")
                pid = tgid
            if pid not in out:
                out.append(pid)
        return out

    def run(self, started: float) -> int:
        opts = self.opts
        infos = self._infos
        released = True
        if opts.command:
            self.child = HeldChild(opts.command, opts.run_as)
            released = False
        stop = self._stop
        # Kept until the process exits: a Ctrl-C after the trace is complete only sets a
        # reason nobody reads, where the handler before it would turn a complete trace
        # into an exit by signal.
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        reason = "error"
        session: BccSession | None = None
        try:
            try:
                if self.child is not None:
                    infos = [procfs.inspect_target(self.child.pid)]
                threading.Thread(target=taskstats.preload, name="preload", daemon=True).start()
                session = self.session = self._open_backend()
                # imported here, not at the top: only a trace that starts needs its ELF library
                from vmtrace.unwind import Unwinder

                self.enricher = Enricher(os.sysconf("SC_PAGE_SIZE"), procfs.read_maps, Unwinder())
                for info in infos:
                    session.add_target(info.pid)
                self.accounts.open(self.log)
                self.sampler = Sampler(
                    session,
                    self.engine,
                    self.accounts,
                    self.clock,
                    kernel_filters=bool(opts.min_delta) and not opts.all_events,
                    hwm_step=opts.hwm_step,
                    drain=lambda: self._drain_all(max_batches=2),
                    emit=self._emit,
                )
                attach_seconds = time.monotonic() - started
                self._announce(infos, attach_seconds)
                if self.child is not None and stop.reason is None:
                    self.child.release()
                    released = True
                reason = stop.reason or self._loop(stop)
            finally:
                # The handlers stay until everything is written and detached: a second
                # Ctrl-C during shutdown must not cut the log short or leave probes behind.
                try:
                    if not released and self.child is not None:
                        self.child.abandon()
                        if stop.reason:
                            name = self.child.command[0]
                            self.log(f"{stop.reason} before {name} started: it did not run")
                    elif (
                        self.child is not None
                        and reason != "targets-exited"  # exiting, not yet reaped
                        and self.child.poll() is None
                    ):
                        self._note_untraced(reason)
                    if self.session is not None:
                        self._finish(reason)
                finally:
                    try:
                        if session is not None:
                            session.close()
                    finally:
                        self.accounts.close()
        finally:
            # Whatever ended the trace (an error included), the command is not left behind
            # unannounced: it has exited, or runs on untraced and vmtrace waits for it.
            status = self._child_status(released)
        if self.output_error is not None:
            raise self.output_error
        if status is None:  # -p / --comm / --cgroup / -a
            return 0
        if not released and stop.signum:
            return 128 + stop.signum  # the command never ran
        return status if status >= 0 else 128 - status

    def _note_untraced(self, reason: str) -> None:
        assert self.child is not None
        why = {"error": "vmtrace failed", "duration": "--duration elapsed"}.get(reason, reason)
        self.log(
            f"no longer tracing pid {self.child.pid} ({self.child.command[0]}): {why}; it runs "
            "on untraced, and vmtrace exits with its status (Ctrl-C or SIGTERM is passed on)"
        )

    def _child_status(self, released: bool) -> int | None:
        """The command's exit status (negative: killed by that signal), once it has exited;
        None without a command."""
        child = self.child
        if child is None:
            return None
        if released and child.poll() is None:
            return child.wait_forwarding((signal.SIGINT, signal.SIGTERM, signal.SIGHUP))
        return child.wait()

    def _announce(self, infos: list[procfs.ProcessInfo], attach_seconds: float) -> None:
        assert self.enricher is not None
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        statuses = []
        all_maps = {}
        for info in infos:
            status = procfs.read_status(info.pid)
            all_maps[info.pid] = maps = procfs.read_maps(info.pid)
            self.targets[info.pid] = _Target(info)
            # A `run` child is still the forked vmtrace until it execs: its peak is not the
            # command's, and the exec record starts the command's own.
            self.engine.start(info.pid, info.comm, None if self.opts.command else status)
            self.enricher.attach(info.pid, maps)
            statuses.append((info, status))
        user = pwd.getpwuid(os.getuid()).pw_name
        start = schema.start_record(
            self.clock,
            vmtrace_version=__version__,
            kernel=os.uname().release,
            backend=self.session.backend if self.session else "?",
            backend_reason=self.backend_reason,
            page_size=os.sysconf("SC_PAGE_SIZE"),
            user={
                "uid": os.getuid(),
                "name": user,
                "sudo_user": os.environ.get("SUDO_USER"),
                # `run`: the user the command runs as, when not vmtrace's own
                "run_as": (
                    {"name": ra.name, "uid": ra.uid, "gid": ra.gid}
                    if (ra := self.opts.run_as) is not None
                    else None
                ),
            },
            argv=self.opts.argv,
            targets=statuses,
            attach_seconds=attach_seconds,
            interval=self.opts.interval,
            filters=self._filters(),
        )
        for entry, (info, status) in zip(start["targets"], statuses, strict=True):
            entry["taskstats"] = self.accounts.view(info.pid, status)
        self._emit(start)
        if not self.opts.command:
            for info in infos:
                self._emit(
                    schema.maps_record(self.clock, now, info.pid, info.comm, all_maps[info.pid])
                )
        self._flush()
        pids = ", ".join(f"{i.pid} ({i.comm}{_nested(i)})" for i in infos) or self._scope()
        if self.pidns is not None:
            self.log(
                "vmtrace runs in a PID namespace: PIDs are that namespace's (each process's "
                "host PID is in its baseline record)"
            )
        self.log(
            f"tracing {pids} with the {self.session.backend if self.session else '?'} backend "
            f"(attached in {attach_seconds:.2f} s); "
            "Ctrl-C to stop"
        )

    def _scope(self) -> str:
        o = self.opts
        if o.all:
            return "every process"
        parts = [f"processes named {', '.join(o.comms)}"] if o.comms else []
        if o.cgroup:
            parts.append(f"cgroup {o.cgroup}")
        return " and ".join(parts) or "nothing yet"

    def _filters(self) -> dict[str, object]:
        o = self.opts
        return {
            "follow": o.follow,
            "all": o.all,
            "comms": list(o.comms),
            "cgroup": o.cgroup,
            "min_delta_kb": o.min_delta // 1024,
            "all_events": o.all_events,
            "hwm_step_kb": o.hwm_step // 1024,
        }

    def _adopt(self, ev: KernelEvent) -> _Target:
        """A process the kernel side started tracing by itself (--follow, --all, --comm,
        --cgroup): learn what it is, as far as /proc still can tell."""
        assert self.enricher is not None
        fallback = procfs.ProcessInfo(ev.pid, ev.comm, (), 0, {})
        info = procfs.inspect_target_quietly(ev.pid, fallback)
        target = self.targets[ev.pid] = _Target(info)
        self.engine.start(ev.pid, info.comm, None)
        if ev.kind is not EventKind.FORK:  # a fork record attaches the child's maps itself
            self.enricher.attach(ev.pid, procfs.read_maps(ev.pid))
        return target

    def _loop(self, stop: _Stop) -> str:
        assert self.session is not None
        deadline = time.monotonic() + self.opts.duration if self.opts.duration else None
        next_sample = time.monotonic() + self.opts.interval
        while True:
            self._process(self.session.poll(POLL_MS))
            if self.output_error is not None:
                return "error"  # at once: the rest of a flood's records would take seconds
            self._drain_exits()
            self._check_lost()
            self._check_tallied()
            now = time.monotonic()
            if now >= next_sample:
                self._sample()
                next_sample = now + self.opts.interval
                self._check_alive()
            elif self.child is not None:
                self._check_alive()  # `run` ends as soon as the command does
            self._flush()
            if stop.reason:
                return stop.reason
            if self.output_error is not None:
                return "error"
            # --all, --comm and --cgroup may have nothing traced yet, or again: they run
            # until stopped. Named targets (and their --follow children) end with the last.
            open_ended = self.opts.all or bool(self.opts.comms) or self.opts.cgroup is not None
            if not open_ended and not any(t.alive for t in self.targets.values()):
                return "targets-exited"
            if deadline is not None and now >= deadline:
                return "duration"

    def _process(self, batch: list[KernelEvent]) -> None:
        assert self.enricher is not None
        for ev in batch:
            target = self.targets.get(ev.pid)
            if target is None or not target.alive:
                if not self.opts.discovers:
                    continue
                target = self._adopt(ev)
            self.events += 1
            explained = self.engine.explain(self.enricher.enrich(ev))
            if ev.kind is EventKind.EXEC:
                fresh = procfs.inspect_target_quietly(ev.pid, target.info)
                target.info = dataclasses.replace(fresh, comm=ev.comm)
                self._note_cgroup(ev.pid)
            if ev.kind is EventKind.OOM:
                self._oom(explained)
                continue
            target.last = explained
            if explained.type == "peak":
                self._rises.setdefault(ev.pid, deque(maxlen=OOM_RISES)).append(explained)
            if ev.kind is EventKind.EXIT:
                self._exited(ev.pid, "bpf", ev.ts_ns)
            else:
                self._emit(schema.explained_record(explained, self.clock))

    def _oom(self, explained: Explained) -> None:
        """The OOM killer chose a traced process: what it had become and why, written and
        flushed at once (the machine may not last)."""
        pid = explained.change.pid
        self._oom_killed.add(pid)
        largest: list[Mapping] = []
        if self.enricher is not None:
            largest = sorted(self.enricher.shadow(pid).mappings(), key=lambda m: -m.size)
        self._emit(
            schema.oom_record(
                explained,
                self.clock,
                vm_peak_kb=self.engine.expected_vm_peak_kb(pid),
                vm_hwm_kb=self.engine.vm_hwm_kb(pid),
                cgroup=self._victim_cgroup(pid),
                rises=list(self._rises.get(pid, ())),
                largest=largest[:OOM_MAPPINGS],
            )
        )
        self._flush()

    def _note_cgroup(self, pid: int) -> None:
        cgroup = procfs.read_cgroup(pid)
        if cgroup is not None and cgroup != "/":
            self._cgroups[pid] = cgroup

    def _victim_cgroup(self, pid: int) -> str | None:
        """The OOM victim's memory cgroup: read now, or, if it has already gone (an exiting
        task reads as the root, or not at all), as last seen at an exec or a sample."""
        now = procfs.read_cgroup(pid)
        if now is None or now == "/":
            return self._cgroups.get(pid, now)
        return now

    def _sample(self) -> None:
        assert self.sampler is not None
        for pid, target in list(self.targets.items()):
            if not target.alive:
                continue
            reading = self.sampler.read(pid)
            if reading is None or not target.alive:  # gone, or its exit was in the ring
                continue
            rec = self.sampler.record(pid, target.info.comm, reading)
            self._note_cgroup(pid)
            self._emit(rec)
        if self.untraced is not None:
            self.untraced.observe({pid for pid, t in self.targets.items() if t.alive})

    def _drain_all(self, max_batches: int = 50) -> None:
        """Whatever is in the ring now, batch by batch (a flood from other targets cannot
        keep this going for more than max_batches, nor past a Ctrl-C: the final drain, once
        the kernel side has stopped sending, takes what is left)."""
        assert self.session is not None
        for _ in range(max_batches):
            batch = self.session.drain()
            self._process(batch)
            if not self.session.more or self._stop.reason or self.output_error is not None:
                return

    def _check_lost(self) -> None:
        assert self.session is not None
        total = self.session.lost()
        if total > self.lost_reported:
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            by_kind = dataclasses.asdict(self.session.losses())
            by_pid = {}
            for pid in self.engine.pids():
                # the kernel's count while the process lives, its last record's after
                n = max(self.session.lost_of(pid) or 0, self.engine.lost(pid))
                if n:
                    by_pid[pid] = n
            self._emit(
                schema.lost_record(
                    self.clock, now, total - self.lost_reported, total, by_kind, by_pid
                )
            )
            self.lost_reported = total

    def _check_tallied(self) -> None:
        """Changes the kernel side counted instead of sending (the reader was behind): a
        `tally` record each poll that saw more, with every process's totals so far."""
        assert self.session is not None
        total = self.session.tallied()
        if total <= self.tallied_reported:
            return
        by_pid = {}
        for pid in self.engine.pids():
            # the kernel's totals while the process lives, its last record's after
            t = self.engine.tally(pid).latest(self.session.tally_of(pid))
            if t.changes:
                by_pid[pid] = t
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self._emit(
            schema.tally_record(self.clock, now, total - self.tallied_reported, total, by_pid)
        )
        self.tallied_reported = total

    def _check_alive(self) -> None:
        for pid, target in list(self.targets.items()):
            if not target.alive:
                continue
            source = gone(pid, target.info, self.child)
            if source is not None:
                self._end_after_drain(pid, target, source)

    def _drain_exits(self) -> None:
        """Taskstats' exit notifications, which can come before the kernel side's exit
        record is read (or when it was lost)."""
        for pid in self.accounts.exited():  # each a live target when it is yielded
            self._end_after_drain(pid, self.targets[pid], "taskstats")

    def _end_after_drain(self, pid: int, target: _Target, source: str) -> None:
        """`target` has gone, as `source` says: its last records first (they precede its
        exit, which may be among them and may begin a new process under its pid), then
        its exit, unless they ended it."""
        self._drain_all()
        if self.targets.get(pid) is target and target.alive:
            self._exited(pid, source, time.clock_gettime_ns(time.CLOCK_MONOTONIC))

    def _exited(self, pid: int, source: str, ts_ns: int) -> None:
        target = self.targets[pid]
        if not target.alive:
            return
        final = self.accounts.final(pid)  # while it counts as traced: its notification is kept
        target.alive = False
        exit_status = None
        if self.child is not None and self.child.pid == pid and self.child.returncode is not None:
            exit_status = self.child.returncode
        kernel = None
        expected = self.engine.expected_vm_peak_kb(pid)  # from the events, before the kernel's
        if final is not None and self.sampler is not None:
            self.sampler.at_exit(ts_ns, pid, target.info.comm, final)
            kernel = {
                "hiwater_vm_kb": final.hiwater_vm_kb,
                "hiwater_rss_kb": final.hiwater_rss_kb,
                "exit_code": final.exit_code,
            }
        code = target.last.change.exit_code if target.last is not None else None
        if code is None and final is not None:
            code = final.exit_code
        ended = schema.ended_dict(code, pid in self._oom_killed)
        if exit_status is None and code is not None:
            exit_status = exit_status_of(code)
        self._emit(
            schema.exit_record(
                self.clock,
                ts_ns,
                pid,
                target.info.comm,
                expected,
                source,
                target.last,
                exit_status,
                kernel,
                ended,
            )
        )
        self._rises.pop(pid, None)
        self._cgroups.pop(pid, None)
        if self.session is not None and not self.opts.discovers:
            # The kernel side forgets a process when its last thread exits. This is for a
            # target named here that exited before the probes saw it. Only then, though:
            # where the kernel side adds processes itself, a new one may already have the
            # pid (its entry must stay) by the time this exit is read.
            self.session.remove_target(pid)
        if self.enricher is not None:
            self.enricher.forget(pid)

    def _finish(self, reason: str) -> None:
        assert self.session is not None
        try:
            # Everything the kernel sent before the stop: it sends nothing more, so the ring,
            # which its size bounds, is drained to the end even after a flood.
            self.session.stop_sending()
            while True:
                batch = self.session.drain()
                self._process(batch)
                if not self.session.more:
                    break
            self._process(self.session.rest())
            self._check_lost()
            self._check_tallied()
        except VmtraceError as e:
            self.log(f"failed to drain the last records: {e}")
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if self.session.decode_errors:
            self.log(f"warning: {self.session.decode_errors} records could not be decoded")
        end = schema.end_record(
            self.clock,
            now,
            reason,
            self.events,
            self.lost_reported,
            self.engine.summary(),
            lost_by_kind=dataclasses.asdict(self.session.losses()),
            filtered=self.session.filtered(),
            tallied=self.tallied_reported,
        )
        if self.untraced is not None:
            end["untraced_children"] = self.untraced.summary()
        self._emit(end)
        self._flush()

    def _emit(self, rec: schema.Record) -> None:
        for sink in list(self.sinks):
            try:
                sink.write(rec)
            except OutputError as e:
                self._sink_failed(sink, e)

    def _flush(self) -> None:
        for sink in list(self.sinks):
            try:
                sink.flush()
            except OutputError as e:
                self._sink_failed(sink, e)

    def _sink_failed(self, sink: Sink, error: OutputError) -> None:
        """A full disk or a vanished output: stop writing there, stop tracing, keep what was
        written (whole lines, at most a partial last one), report the error at the end."""
        self.sinks.remove(sink)
        if self.output_error is None:
            self.output_error = error
            self.log(f"{error}; stopping the trace (what was written is kept)")


def default_log(msg: str) -> None:
    print(f"vmtrace: {msg}", file=sys.stderr, flush=True)


def _nested(info: procfs.ProcessInfo) -> str:
    """A process in a PID namespace below vmtrace's (a container): its number there too."""
    if len(info.ns_pids) < 2:
        return ""
    return f", PID {info.ns_pids[-1]} in its namespace"
