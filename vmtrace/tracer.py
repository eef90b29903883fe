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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

from vmtrace import __version__, procfs, schema
from vmtrace.abi import EventKind, KernelEvent, TraceConfig
from vmtrace.backends import (
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
from vmtrace.kernel.offsets import read_offsets
from vmtrace.kernel.privileges import check_tracing_privileges
from vmtrace.kernel.tracefs import tracefs_root
from vmtrace.pidns import PidNamespace, own_pid_namespace
from vmtrace.records import Explained, Mapping, ProcStatus
from vmtrace.session import BccSession
from vmtrace.sinks import DEFAULT_STACK_DEPTH, Sink
from vmtrace.taskstats import ExitListener, TaskStat, TaskstatsClient
from vmtrace.units import WallClock
from vmtrace.untraced import UntracedChildren
from vmtrace.unwind import Unwinder

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
        self.child: HeldChild | None = None
        self.clock = WallClock(time.clock_gettime_ns(time.CLOCK_MONOTONIC), time.time_ns())
        self.enricher: Enricher | None = None
        self._infos: list[procfs.ProcessInfo] = []
        self._taskstats: TaskstatsClient | None = None
        self._exits: ExitListener | None = None
        self._kernel_exit: dict[int, TaskStat] = {}
        self._sessions: list[BccSession] = []
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
        self.pidns = own_pid_namespace()
        config = self._config()
        if self.opts.verbose:
            self.log(f"headers: {headers.description}")
            self.log(
                f"BTF offsets: task_struct.mm={offsets.task_mm} mm_struct.total_vm="
                f"{offsets.mm_total_vm} hiwater_vm={offsets.mm_hiwater_vm} stack_vm="
                f"{offsets.mm_stack_vm}"
            )
            for reason in self._unusable:
                self.log(f"backend {reason}")
        max_targets = 32768 if self.opts.discovers else 1024
        return [
            BccSession(
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
            for c in usable
        ]

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
        tried = list(self._unusable)
        auto = self.opts.backend == "auto"
        for i, session in enumerate(self._sessions):
            last = i == len(self._sessions) - 1
            known = remembered_failure(session.backend, session.plan) if auto else None
            if known and not last:
                tried.append(f"{session.backend}: {known} (this boot, remembered)")
                continue
            try:
                session.open()
                if known:
                    forget_failure(session.backend, session.plan)
            except ProbeError as e:
                remember_failure(session.backend, session.plan, str(e))
                if self.opts.verbose > 1 and session.diagnostics:
                    self.log(f"bcc said, loading {session.backend}:\n{session.diagnostics}")
                if last:
                    raise ProbeError("; ".join([*tried, str(e)]) if tried else str(e)) from None
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
        self.opts.pids = self._processes_of(self.opts.pids)
        self._infos = [procfs.inspect_target(pid) for pid in self.opts.pids]
        self._sessions = self._prepare()

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
                session = self.session = self._open_backend()
                self.enricher = Enricher(
                    os.sysconf("SC_PAGE_SIZE"), procfs.read_maps, Unwinder()
                )
                for info in infos:
                    session.add_target(info.pid)
                self._open_taskstats()
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
                        for closable in (self._exits, self._taskstats):
                            if closable is not None:
                                closable.close()
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

    def _open_taskstats(self) -> None:
        """Cross-checks and exit values from the kernel's taskstats; tracing goes on
        without them (e.g. inside a container, where registering is refused)."""
        try:
            self._taskstats = TaskstatsClient()
            self._exits = ExitListener()
            self._exits.drain()  # what arrived while registering
        except VmtraceError as e:
            self.log(f"warning: no taskstats cross-checks: {e}")

    def _kernel_view(self, pid: int, status: ProcStatus | None) -> dict[str, object] | None:
        """taskstats' hiwater_vm/hiwater_rss for `pid`, compared with /proc's VmPeak/VmHWM.
        hiwater_vm is VmPeak exactly; hiwater_rss misses the per-CPU RSS deltas /proc adds
        up (6.2+), so it is within RSS_SLACK_KB of VmHWM, not equal."""
        if self._taskstats is None:
            return None
        try:
            st = self._taskstats.query(pid)
        except VmtraceError:
            return None
        view: dict[str, object] = {
            "hiwater_vm_kb": st.hiwater_vm_kb,
            "hiwater_rss_kb": st.hiwater_rss_kb,
        }
        if status is not None:
            view["vm_peak_match"] = st.hiwater_vm_kb == status.vm_peak_kb
            view["vm_hwm_delta_kb"] = status.vm_hwm_kb - st.hiwater_rss_kb
        return view

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
            entry["taskstats"] = self._kernel_view(info.pid, status)
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
        assert self.session is not None
        for pid, target in list(self.targets.items()):
            if not target.alive:
                continue
            status, ts, kernel_peak = self._settled_status(pid)
            if status is None or not target.alive:
                continue
            if kernel_peak is not None:  # noted only with a sample that says so: as replayed
                self.engine.note_kernel_peak(pid, kernel_peak)
            check = self.engine.check_sample(ts, pid, status)
            rec = schema.sample_record(check, self.clock, target.info.comm)
            if kernel_peak is not None:
                rec["kernel_peak_kb"] = kernel_peak
            if self.opts.hwm_step:
                self._check_hwm_reset(ts, pid, target, status)
            self._note_cgroup(pid)
            kernel = self._kernel_view(pid, status)
            if kernel is not None:
                rec["taskstats"] = kernel
            self._emit(rec)
        if self.untraced is not None:
            self.untraced.observe({pid for pid, t in self.targets.items() if t.alive})

    def _check_hwm_reset(self, ts: int, pid: int, target: _Target, status: ProcStatus) -> None:
        """VmHWM only goes down when someone writes 5 to /proc/PID/clear_refs (hiwater_rss
        is reset to the current RSS), or when pages were reclaimed before any unmap
        latched hiwater_rss. Say so, and let HWM records start again from there."""
        assert self.session is not None
        before = self.engine.hwm_fall(pid, ts, status.vm_hwm_kb, self._hwm_tolerance_kb())
        if before is None:
            return
        self.engine.reset_hwm(pid, status.vm_hwm_kb, ts)
        self.session.reset_hwm(pid, status.vm_hwm_kb * 1024 // os.sysconf("SC_PAGE_SIZE"))
        self._emit(
            schema.hwm_reset_record(
                self.clock, ts, pid, target.info.comm, before, status.vm_hwm_kb, status
            )
        )

    def _hwm_tolerance_kb(self) -> int:
        return max(1024, self.opts.hwm_step // 1024)

    def _final(self, ts: int, pid: int, target: _Target, final: TaskStat) -> None:
        """The kernel's VmPeak and VmHWM at exit end the engine's; VmHWM lower than the
        records said fell after the last sample (or none was taken: a short run, a reader
        behind)."""
        if self.opts.hwm_step:
            tolerance = self._hwm_tolerance_kb()
            before = self.engine.hwm_fall(pid, ts, final.hiwater_rss_kb, tolerance)
            if before is not None:
                rec = schema.hwm_reset_record(
                    self.clock, ts, pid, target.info.comm, before, final.hiwater_rss_kb, None
                )
                self._emit(rec)
        self.engine.final(pid, final.hiwater_vm_kb, final.hiwater_rss_kb)

    def _settled_status(self, pid: int) -> tuple[ProcStatus | None, int, int | None]:
        """/proc/PID/status, read when the events can agree with it: a change made before
        the reading is in the ring buffer once drained, unless its mmap_lock was still held
        (or its syscall had not returned); such a reading is retried a few times, briefly,
        before it counts as a disagreement (and two of those as a mismatch). With
        --min-delta, also the kernel side's per-mm peak (kB) the reading is checked against."""
        assert self.session is not None
        page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
        status, ts, kernel_kb = None, 0, None
        for attempt in range(4):
            status = procfs.read_status(pid)
            ts = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            self._drain_all(max_batches=2)
            if self.opts.min_delta and not self.opts.all_events:
                kernel_peak = self.session.kernel_peak_pages(pid)
                kernel_kb = kernel_peak * page_kb if kernel_peak is not None else None
            expected = max(self.engine.expected_vm_peak_kb(pid) or 0, kernel_kb or 0)
            if status is None or status.vm_peak_kb == expected:
                break
            time.sleep(0.005 * (attempt + 1))
        return status, ts, kernel_kb

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

    def _check_alive(self) -> None:
        for pid, target in list(self.targets.items()):
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
                self._drain_all()  # its last records first: they precede its exit
                if self.targets.get(pid) is target and target.alive:
                    waited = self.child is not None and self.child.pid == pid
                    source = "wait" if waited else "proc"
                    self._exited(pid, source, time.clock_gettime_ns(time.CLOCK_MONOTONIC))

    def _drain_exits(self) -> None:
        """Taskstats exit notifications: the kernel's final VmPeak/VmHWM of each traced
        process, sent from do_exit before the mm goes (so they outlive /proc)."""
        if self._exits is None:
            return
        for st in self._exits.drain():
            target = self.targets.get(st.pid)
            if st.aggregate != "tgid" or target is None or not target.alive:
                continue
            self._kernel_exit[st.pid] = st
            self._drain_all()  # its last records, BPF exit included
            # ...which may have ended it and begun a new process under its pid
            if self.targets.get(st.pid) is target and target.alive:
                self._exited(st.pid, "taskstats", time.clock_gettime_ns(time.CLOCK_MONOTONIC))

    def _exited(self, pid: int, source: str, ts_ns: int) -> None:
        target = self.targets[pid]
        if not target.alive:
            return
        target.alive = False
        exit_status = None
        if self.child is not None and self.child.pid == pid and self.child.returncode is not None:
            exit_status = self.child.returncode
        if pid not in self._kernel_exit and self._exits is not None:
            # The notification is sent before the mm is torn down: it is queued by now.
            for rec in self._exits.drain():
                if rec.aggregate == "tgid":
                    self._kernel_exit[rec.pid] = rec
        final: TaskStat | None = self._kernel_exit.pop(pid) if pid in self._kernel_exit else None
        kernel = None
        expected = self.engine.expected_vm_peak_kb(pid)  # from the events, before the kernel's
        if final is not None:
            self._final(ts_ns, pid, target, final)
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
            # as waitpid's caller would say it (Popen.returncode): the code, or -signal
            exit_status = -(code & 0x7F) if code & 0x7F else (code >> 8) & 0xFF
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
            self._check_lost()
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
