"""`vmtrace report`: what an event log says about each process's VmPeak (pure).

`build_report(records)` streams the records of a log (vmtrace.logread) through the same
`PeakEngine` that explained them live, and through an `AddressSpace` rebuilt from the log, and
returns a `Report`: per process, the timeline of new peaks (each with its cause and what is new
since the previous high), VmHWM (samples, HWM records, the exit), the causes of the final
VmPeak by call site (the innermost frames), by whole call chain and by mapping, and the
composition of the address space at the final peak. `render_text`, `render_markdown` and
`report_json` turn it into text.

Invariants the tests hold it to:
- the contributions by call site (and by call chain, and by mapping) add up to the final
  VmPeak: the starting
  value (the exec image, or VmPeak at attach) + each new peak's rise + any correction a
  `mismatch` made;
- the groups of the composition add up to the final VmPeak, with whatever the replay cannot
  place shown as its own `unattributed` line.
Memory is bounded: the timelines keep their first and last `max_peaks // 2` entries and count
the rest; the address space holds the mappings alive, not the history.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vmtrace.engine import ATTACHED, EXIT_FIX, MISMATCH_FIX, UNSEEN
from vmtrace.errors import LogFormatError, UsageError
from vmtrace.frames import describe_frame, legacy_frame, short_frame
from vmtrace.logread import (
    CHANGE_TYPES,
    Record,
    parse_mapping,
    status_from_record,
)
from vmtrace.records import (
    UNNAMED_FILE,
    Change,
    Explained,
    Frame,
    Mapping,
    ProcStatus,
    SampleCheck,
)
from vmtrace.replay import Replay
from vmtrace.shadow import ShadowMap
from vmtrace.sinks import describe_call
from vmtrace.units import human_kb

# Groups of the address space, in the order reports list them.
HEAP = "heap"
ANON = "anonymous"
FILE = "file-backed"
STACK = "stack"
THREAD_STACKS = "thread stacks"
SHARED = "shared memory"
RESERVED = "reservations"
EXEC_IMAGE = "exec image"
BEFORE = "before tracing"
OTHER = "other"
UNATTRIBUTED = "unattributed"
GROUPS = (HEAP, ANON, FILE, STACK, THREAD_STACKS, SHARED, RESERVED, EXEC_IMAGE, BEFORE, OTHER)
GROUP_HELP = {
    HEAP: "[heap]: the brk area",
    ANON: "private anonymous mappings (malloc arenas, large allocations)",
    FILE: "mapped files (executables, libraries, data files)",
    STACK: "[stack], the main thread's stack",
    THREAD_STACKS: "mmaps made with MAP_STACK (pthread stacks)",
    SHARED: "SysV shm, shared anonymous, /dev/shm and memfd mappings",
    RESERVED: "mapped PROT_NONE (---) when created: reserved address space",
    EXEC_IMAGE: "what execve mapped (executable, ld.so, stack, vdso): not itemised in the log",
    BEFORE: "mapped before the first record, not itemised in the log",
    OTHER: "kernel-named mappings ([vdso], [vvar]...) and changes the log gives no mapping for",
    UNATTRIBUTED: "what the replay of the log could not place",
}
THREAD_STACK_PATH = "[thread stack]"
UNEXPLAINED = UNSEEN[0]
# the engine's causes that are no rise of a call: no call site or chain of their own
NOT_RISES = frozenset(k[0] for k in (ATTACHED, MISMATCH_FIX, EXIT_FIX, UNSEEN))
TOP_ITEMS = 8
TOP_CAUSES = 10
STACK_FRAMES = 6
CHAIN_FRAMES = 16  # frames of a call chain the text shows (JSON and Markdown have them all)
DEFAULT_MAX_PEAKS = 400

K = TypeVar("K")

_SHARED_PREFIXES = ("/dev/shm/", "/memfd:", "/SYSV", "/dev/zero")


def group_of(m: Mapping) -> str:
    """The composition group of a mapping, from its name and its permissions when created."""
    path, perms = m.path, m.perms
    if path == "[heap]":
        return HEAP
    if path == "[stack]":
        return STACK
    if path == THREAD_STACK_PATH:
        return THREAD_STACKS
    shared = perms.endswith("s")
    if path == "[shm]" or path.startswith(_SHARED_PREFIXES) or (shared and path == "[anon]"):
        return SHARED
    if perms.startswith("---"):
        return RESERVED
    if path.startswith("/") or path == UNNAMED_FILE:
        return FILE
    if path in ("[anon]", ""):
        return ANON
    return OTHER


def _kb(nbytes: int) -> int:
    return nbytes // 1024


# -- the address space, rebuilt from the log ----------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The address space right after one record."""

    groups: dict[str, int]  # kB per group, unattributed excluded
    mappings: list[Mapping]
    base_label: str
    other_causes: dict[str, int]


class AddressSpace:
    """A process's mappings replayed from the log with vmtrace.shadow.ShadowMap.

    It starts from the `maps` record (attach with -p), or from an `exec` record, whose whole
    total_vm is the *base* (the exec image: the log does not itemise it); for a process whose
    first record is neither, the base is what total_vm was before that record. Each change
    record's `mapping` (and, for mremap, `args`) is then applied. Where an unmap or a
    MAP_FIXED mapping removes more than the shadow knew of, the difference came out of the base.
    Changes the log gives no mapping for (an untraced syscall, a fault) are kept by cause.
    After every record the replayed total is compared with the logged total_vm: `offset` is the
    difference, `lost_track` counts how often it changed.
    """

    def __init__(self, page_size: int = 4096) -> None:
        self.page = page_size
        self.shadow = ShadowMap()
        self.kb: dict[str, int] = dict.fromkeys(GROUPS, 0)
        self.base_kb = 0
        self.base_label = BEFORE
        self.other_causes: dict[str, int] = {}
        self.known = False
        self.offset = 0
        self.lost_track = 0
        self.first_lost_track: str | None = None

    # -- starting points
    def seed(self, mappings: Iterable[Mapping]) -> None:
        self._reset(EXEC_IMAGE, 0)
        for m in mappings:
            if m.path == "[vsyscall]":  # the gate page: in maps, not in total_vm
                continue
            self._insert(m)
        self.known = True

    def exec(self, total_kb: int) -> None:
        self._reset(EXEC_IMAGE, total_kb)
        self.known = True

    def _reset(self, label: str, base_kb: int) -> None:
        self.shadow = ShadowMap()
        self.kb = dict.fromkeys(GROUPS, 0)
        self.other_causes = {}
        self.base_label = label
        self.base_kb = base_kb
        self.offset = 0

    # -- bookkeeping
    def total_kb(self) -> int:
        return sum(self.kb.values()) + self.base_kb + sum(self.other_causes.values())

    def _insert(self, m: Mapping) -> int:
        """Map m (replacing what it overlaps); returns the kB it replaced that the shadow knew."""
        removed = self._remove(m.start, m.end)
        if m.end > m.start:
            self.shadow.insert(m)
            self.kb[group_of(m)] += _kb(m.size)
        return removed

    def _remove(self, start: int, end: int) -> int:
        gone = 0
        for piece in self.shadow.remove(start, end):
            self.kb[group_of(piece)] -= _kb(piece.size)
            gone += _kb(piece.size)
        return gone

    def clone(self) -> AddressSpace:
        other = AddressSpace(self.page)
        other.shadow = ShadowMap(self.shadow.mappings())
        other.kb = dict(self.kb)
        other.base_kb = self.base_kb
        other.base_label = self.base_label
        other.other_causes = dict(self.other_causes)
        other.known = self.known
        other.offset = self.offset
        return other

    def snapshot(self) -> Snapshot:
        groups = dict(self.kb)
        groups[self.base_label] += self.base_kb
        groups[OTHER] += sum(self.other_causes.values())
        return Snapshot(groups, self.shadow.mappings(), self.base_label, dict(self.other_causes))

    # -- replay
    def apply(self, c: Change, rec: Record, where: str) -> None:
        if c.kind == "exec":
            self.exec(c.total_vm_kb_after)
            return
        if not self.known:
            # Nothing itemised yet: what was there before this record is the base.
            self._reset(BEFORE, c.total_vm_kb_before)
            self.known = True
        if c.kind in ("baseline", "exit", "fork", "hwm"):
            self._check(c, where)
            return
        before = self.total_kb()
        span_kb = self._replay(c, rec)
        if span_kb is None:
            if c.delta_kb:
                self.other_causes[c.cause] = self.other_causes.get(c.cause, 0) + c.delta_kb
        else:
            # The kernel removed more than the shadow knew of: that part was in the base.
            missing = c.delta_kb - (self.total_kb() - before)
            if missing < 0 and self.base_kb > 0:
                take = min(-missing, self.base_kb, span_kb)
                self.base_kb -= take
        self._check(c, where)

    def _check(self, c: Change, where: str) -> None:
        offset = c.total_vm_kb_after - self.total_kb()
        if offset != self.offset:
            self.lost_track += 1
            if self.first_lost_track is None:
                self.first_lost_track = (
                    f"{where}: after {c.cause} total_vm is {c.total_vm_kb_after} kB, the replay "
                    f"has {self.total_kb()} kB"
                )
            self.offset = offset

    def _replay(self, c: Change, rec: Record) -> int | None:
        """Apply one change; the kB of address range it touched outside the shadow, or None
        when the log says nothing of where it happened."""
        m = c.mapping
        if m is None:
            return None
        sc = c.syscall
        args = rec.get("args") or {}
        if c.cause == "stack-growth":
            return _kb(m.size) - self._insert(m)
        if sc == "mmap":
            flags = str(args.get("flags", ""))
            if "stack" in flags.split("|") and m.path == "[anon]":
                m = dataclasses.replace(m, path=THREAD_STACK_PATH)
            return _kb(m.size) - self._insert(m)
        if sc in ("munmap", "shmdt"):
            return _kb(m.size) - self._remove(m.start, m.end)
        if sc == "brk":
            if c.delta_kb >= 0:
                return _kb(m.size) - self._insert(dataclasses.replace(m, path="[heap]"))
            return _kb(m.size) - self._remove(m.start, m.end)
        if sc == "mremap":
            old = _int_arg(args.get("old_addr"))
            old_len = _page_align(_int_arg(args.get("old_len")), self.page)
            outside = 0
            if old_len > 0:
                outside += _kb(old_len) - self._remove(old, old + old_len)
            return outside + _kb(m.size) - self._insert(m)
        if sc == "shmat":
            return _kb(m.size) - self._insert(m)
        return None


def _int_arg(v: Any) -> int:
    if isinstance(v, str):
        return int(v, 16)
    return int(v) if isinstance(v, int) else 0


def _page_align(n: int, page: int) -> int:
    return (n + page - 1) // page * page


# -- report data --------------------------------------------------------------------------------


@dataclass
class Item:
    label: str
    kb: int
    start: str | None = None
    end: str | None = None
    perms: str | None = None


@dataclass
class GroupLine:
    group: str
    kb: int
    mappings: int  # regions: adjacent pieces of one mapping counted once
    items: list[Item]
    more: int = 0  # regions not itemised


@dataclass
class Composition:
    at: str  # "peak", "exec", "attach"
    line: int | None
    ts_ns: int | None
    time: str | None
    rel_s: float | None
    vm_peak_kb: int
    groups: list[GroupLine]
    unattributed_kb: int
    note: str | None = None

    @property
    def total_kb(self) -> int:
        return sum(g.kb for g in self.groups) + self.unattributed_kb


@dataclass
class PeakEntry:
    type: str  # "peak" or "exec"
    line: int
    ts_ns: int
    time: str | None
    rel_s: float
    tid: int
    comm: str
    cause: str
    call: str
    mapping: str | None
    vm_peak_kb_before: int
    vm_peak_kb: int
    new_since_previous: dict[str, int]
    stack: list[Frame] | None = None
    records_since_previous: int = 0


@dataclass
class HwmEntry:
    line: int
    ts_ns: int
    time: str | None
    rel_s: float
    vm_hwm_kb_before: int | None
    vm_hwm_kb: int
    vm_rss_kb: int
    source: str = "sample"  # or the cause of an `hwm` record, or "exit"
    tid: int | None = None


@dataclass
class Cause:
    cause: str
    where: str  # the call site or chain (short frames joined by " ← ") or the mapping
    kb: int
    peaks: int
    frames: list[str] = field(default_factory=list)  # sites and chains: each frame in full


@dataclass
class ProcessReport:
    pid: int
    comm: str
    final_vm_peak_kb: int
    start_vm_peak_kb: int | None  # VmPeak at attach (-p), None if traced from exec or unknown
    set_by: PeakEntry | None
    peaks: int
    latches: int
    execs: int
    samples: int
    mismatches: int
    timeline: list[PeakEntry]
    timeline_omitted: int
    hwm: list[HwmEntry]
    hwm_omitted: int
    max_rss_kb: int | None
    by_call_site: list[Cause]
    by_mapping: list[Cause]
    causes_more_kb: tuple[int, int]  # kB of the causes past the top lists (site, mapping)
    composition: Composition | None
    replay_lost_track: int
    replay_first_problem: str | None
    logged_final_vm_peak_kb: int | None  # from the exit record or end summary
    exited: bool
    by_call_chain: list[Cause] = field(default_factory=list)
    chain_more_kb: int = 0  # kB of the call chains past the top list


@dataclass
class OomKill:
    """An `oom` record: the OOM killer's victim, what it had become and its last rises."""

    pid: int
    comm: str
    time: str | None
    cgroup: str | None
    rss_kb: int
    rss_kb_by_kind: dict[str, int]
    vm_peak_kb: int | None
    last_rises: list[str]  # "+SIZE to SIZE: call mapping", oldest first
    largest_mappings: list[str]


@dataclass
class Report:
    log: str
    version: int
    vmtrace: str | None
    kernel: str | None
    backend: str | None
    started: str | None
    duration_s: float | None
    end_reason: str | None
    complete: bool
    events: int | None
    lost: int
    change_records: int
    engine_disagreements: int
    first_disagreement: str | None
    warnings: list[str]
    processes: list[ProcessReport]
    oom_kills: list[OomKill] = field(default_factory=list)


# -- building -----------------------------------------------------------------------------------


class _Bounded:
    """The first and last `limit // 2` entries of a long sequence, and how many were dropped."""

    def __init__(self, limit: int) -> None:
        self.head_max = max(limit - limit // 2, 1)
        self.head: list[Any] = []
        self.tail: deque[Any] = deque(maxlen=max(limit // 2, 1))
        self.count = 0

    def add(self, x: Any) -> None:
        self.count += 1
        if len(self.head) < self.head_max:
            self.head.append(x)
        else:
            self.tail.append(x)

    def items(self) -> list[Any]:
        return self.head + list(self.tail)

    @property
    def omitted(self) -> int:
        return self.count - len(self.head) - len(self.tail)


@dataclass
class _Proc:
    pid: int
    comm: str
    space: AddressSpace
    timeline: _Bounded
    hwm: _Bounded
    start_vm_peak_kb: int | None = None
    set_by: PeakEntry | None = None
    set_by_snapshot: Snapshot | None = None
    set_by_line: int | None = None
    prev_groups: dict[str, int] = field(default_factory=dict)
    since_previous: int = 0
    peaks: int = 0
    latches: int = 0
    execs: int = 0
    samples: int = 0
    mismatches: int = 0
    last_hwm: int | None = None
    max_rss: int | None = None
    by_site: dict[tuple[str, CallSite], list[int]] = field(default_factory=dict)
    by_chain: dict[tuple[str, CallSite], list[int]] = field(default_factory=dict)
    attach_snapshot: Snapshot | None = None
    attach_line: int | None = None
    attach_ts: int | None = None
    logged_final: int | None = None
    exited: bool = False


def _add(d: dict[K, list[int]], key: K, kb: int, peaks: int = 1) -> None:
    acc = d.setdefault(key, [0, 0])
    acc[0] += kb
    acc[1] += peaks


CallSite = tuple[Frame, ...]
NO_STACK: CallSite = (legacy_frame("(no stack)"),)
EXEC_SITE: CallSite = (legacy_frame("(exec image)"),)


def _site_frame(f: Frame) -> Frame:
    """A frame as a grouping key: where it is in its file, not where that file was mapped
    (which differs between processes and runs)."""
    if f.function is None and f.module is None:
        return f  # its address is all there is
    return dataclasses.replace(f, address=0)


def call_site(stack: Iterable[Frame] | None) -> CallSite:
    """A user stack as a call-site key: repeated frames (recursion) collapsed, the innermost
    STACK_FRAMES kept."""
    if not stack:
        return NO_STACK
    out: list[Frame] = []
    for frame in map(_site_frame, stack):
        if not out or out[-1] != frame:
            out.append(frame)
        if len(out) == STACK_FRAMES:
            break
    return tuple(out)


def call_chain(stack: Iterable[Frame] | None) -> CallSite:
    """A user stack as a call-chain key: every frame, as it is (two peaks group together
    only if their whole chains are the same)."""
    chain = tuple(map(_site_frame, stack or ()))
    return chain or NO_STACK


def _where(site: CallSite) -> str:
    return " ← ".join(short_frame(f) for f in site)


def _frames(site: CallSite) -> list[str]:
    """The frames of a site in full; none for the stand-ins of what has no stack."""
    return [] if site in (NO_STACK, EXEC_SITE) else [describe_frame(f) for f in site]


class ReportBuilder:
    """Feeds records one by one (`add`), then `finish()` gives the Report."""

    def __init__(
        self, log_name: str, *, pid: int | None = None, max_peaks: int = DEFAULT_MAX_PEAKS
    ) -> None:
        self.log_name = log_name
        self.only_pid = pid
        self.max_peaks = max(max_peaks, 2)
        self.replay = Replay()
        self.engine = self.replay.engine  # read only: the replay feeds it
        self.judged: Explained | SampleCheck | None = None  # the record being added
        self.procs: dict[int, _Proc] = {}
        self.start: Record | None = None
        self.t0 = 0
        self.page = 4096
        self.pending: dict[int, tuple[str, ProcStatus | None]] = {}
        self.end: Record | None = None
        self.lost = 0
        self.change_records = 0
        self.disagreements = 0
        self.first_disagreement: str | None = None
        self.warnings: list[str] = []
        self.line = 0
        self.last_ts: int | None = None
        self.seen_pids: set[int] = set()
        self.target_status: dict[int, ProcStatus] = {}
        self.oom_kills: list[OomKill] = []

    # -- helpers
    def _rel(self, ts: int) -> float:
        return round((ts - self.t0) / 1e9, 6)

    def _proc(self, pid: int, comm: str | None) -> _Proc:
        p = self.procs.get(pid)
        if p is None:
            p = self.procs[pid] = _Proc(
                pid=pid,
                comm=comm or "?",
                space=AddressSpace(self.page),
                timeline=_Bounded(self.max_peaks),
                hwm=_Bounded(self.max_peaks),
            )
        return p

    def _start_pending(self) -> None:
        for pid, (comm, _status) in self.pending.items():
            if self.only_pid is None or pid == self.only_pid:
                self._proc(pid, comm)
        self.pending.clear()

    # -- input
    def add(self, rec: Record, line: int) -> None:
        self.line = line
        try:
            self.judged = self.replay.feed(rec)
        except LogFormatError as err:  # the reader checked it already; for direct callers
            raise LogFormatError(
                f"failed to read {self.log_name}: line {self.line}: {err}"
            ) from None
        t = rec["type"]
        ts = rec["ts_ns"]
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        if t == "start":
            self._on_start(rec)
            return
        if t == "maps":
            self._on_maps(rec)
            return
        if self.pending:
            self._start_pending()
        pid = rec.get("pid")
        if pid is not None:
            self.seen_pids.add(pid)
        if t == "lost":
            self.lost += rec["count"]
            return
        if t == "end":
            self.end = rec
            self._on_end(rec)
            return
        if pid is None or (self.only_pid is not None and pid != self.only_pid):
            return
        if t in CHANGE_TYPES:
            self._on_change(rec)
        elif t in ("sample", "mismatch"):
            self._on_sample(rec)
        elif t == "oom":
            self.oom_kills.append(_oom_kill(rec))
        elif t == "exit":
            p = self._proc(pid, rec.get("comm"))
            p.exited = True
            if rec.get("vm_peak_kb") is not None:
                p.logged_final = rec["vm_peak_kb"]
            self._on_exit_hwm(p, rec)

    def _on_start(self, rec: Record) -> None:
        self.start = rec
        self.t0 = rec["ts_ns"]
        self.page = rec.get("page_size") or 4096
        for t in rec.get("targets") or []:
            pid = t["pid"]
            status = t.get("status")
            st = status_from_record(t) if status is not None else None
            if self.only_pid is None or pid == self.only_pid:
                self._proc(pid, t.get("comm"))
            self.pending[pid] = (t.get("comm") or "?", st)
            if st is not None:
                self.target_status[pid] = st

    def _on_maps(self, rec: Record) -> None:
        pid = rec["pid"]
        comm, status = self.pending.pop(pid, (rec.get("comm") or "?", None))
        if self.only_pid is not None and pid != self.only_pid:
            return
        p = self._proc(pid, comm)
        p.space.seed(parse_mapping(m, "mappings[]") for m in rec["mappings"])
        p.start_vm_peak_kb = status.vm_peak_kb if status else None
        p.attach_snapshot = p.space.snapshot()
        p.attach_line = self.line
        p.attach_ts = rec["ts_ns"]
        p.prev_groups = dict(p.attach_snapshot.groups)

    def _on_change(self, rec: Record) -> None:
        e = self.judged
        assert isinstance(e, Explained)
        c = e.change
        self.change_records += 1
        p = self._proc(c.pid, c.comm)
        if c.kind == "fork":
            self._on_fork(p, rec)
        if e.type != rec["type"] or e.vm_peak_kb != rec["vm_peak_kb"]:
            self.disagreements += 1
            if self.first_disagreement is None:
                self.first_disagreement = (
                    f"line {self.line}: the log says {rec['type']} at VmPeak {rec['vm_peak_kb']}"
                    f" kB, the engine {e.type} at {e.vm_peak_kb} kB"
                )
        p.comm = c.comm
        p.space.apply(c, rec, f"line {self.line}")
        p.since_previous += 1
        if e.type == "latch":
            p.latches += 1
        elif e.type == "hwm":
            self._on_hwm_record(p, rec)
        if e.type not in ("peak", "exec"):
            return
        snap = p.space.snapshot()
        new = {
            g: snap.groups.get(g, 0) - p.prev_groups.get(g, 0)
            for g in GROUPS
            if snap.groups.get(g, 0) != p.prev_groups.get(g, 0)
        }
        if e.type == "exec":
            p.execs += 1
            p.by_site.clear()
            p.by_chain.clear()
            p.start_vm_peak_kb = None
            new = {}
        else:
            p.peaks += 1
        entry = PeakEntry(
            type=e.type,
            line=self.line,
            ts_ns=c.ts_ns,
            time=rec.get("time"),
            rel_s=self._rel(c.ts_ns),
            tid=c.tid,
            comm=c.comm,
            cause=c.cause,
            call=_describe(rec),
            mapping=c.mapping.path if c.mapping else None,
            vm_peak_kb_before=e.vm_peak_kb_before,
            vm_peak_kb=e.vm_peak_kb,
            new_since_previous=new,
            stack=list(c.stack) if c.stack is not None else None,
            records_since_previous=p.since_previous - 1,
        )
        p.timeline.add(entry)
        p.since_previous = 0
        p.prev_groups = dict(snap.groups)
        if e.new_high:
            p.set_by = entry
            p.set_by_snapshot = snap
            p.set_by_line = self.line
        if e.type == "exec":
            site: tuple[str, CallSite] = ("execve", EXEC_SITE)
            chain = site
            rise = e.vm_peak_kb
        else:
            site = (c.cause, call_site(c.stack))
            chain = (c.cause, call_chain(c.stack))
            rise = e.rise_kb
        _add(p.by_site, site, rise)
        _add(p.by_chain, chain, rise)

    def _on_fork(self, child: _Proc, rec: Record) -> None:
        """A traced child: its mm starts as a copy of its parent's."""
        parent = self.procs.get(rec.get("parent_pid") or -1)
        if parent is not None and parent.space.known:
            child.space = parent.space.clone()

    def _on_hwm_record(self, p: _Proc, rec: Record) -> None:
        hwm = rec.get("hwm_kb")
        if hwm is None:
            return
        before = rec.get("hwm_kb_before")
        p.hwm.add(
            HwmEntry(
                line=self.line,
                ts_ns=rec["ts_ns"],
                time=rec.get("time"),
                rel_s=self._rel(rec["ts_ns"]),
                vm_hwm_kb_before=before if before is not None else p.last_hwm,
                vm_hwm_kb=hwm,
                vm_rss_kb=rec.get("rss_kb") or 0,
                source=rec["cause"],
                tid=rec.get("tid"),
            )
        )
        p.last_hwm = hwm
        if rec.get("rss_kb") is not None:
            p.max_rss = max(p.max_rss or 0, rec["rss_kb"])

    def _on_exit_hwm(self, p: _Proc, rec: Record) -> None:
        """The exit record's VmHWM is the kernel's final one: a process that ran between
        two samples (or while the reader was behind) has no other."""
        hwm = rec.get("vm_hwm_kb")
        if hwm is None or hwm == p.last_hwm:
            return
        p.hwm.add(
            HwmEntry(
                line=self.line,
                ts_ns=rec["ts_ns"],
                time=rec.get("time"),
                rel_s=self._rel(rec["ts_ns"]),
                vm_hwm_kb_before=p.last_hwm,
                vm_hwm_kb=hwm,
                vm_rss_kb=0,
                source="exit",
            )
        )
        p.last_hwm = hwm

    def _on_sample(self, rec: Record) -> None:
        pid = rec["pid"]
        status = status_from_record(rec)
        p = self._proc(pid, rec.get("comm"))
        check = self.judged
        assert isinstance(check, SampleCheck)
        p.samples += 1
        if check.mismatch:
            p.mismatches += 1
        p.max_rss = max(p.max_rss or 0, status.vm_rss_kb)
        if p.last_hwm is None or status.vm_hwm_kb != p.last_hwm:
            p.hwm.add(
                HwmEntry(
                    line=self.line,
                    ts_ns=rec["ts_ns"],
                    time=rec.get("time"),
                    rel_s=self._rel(rec["ts_ns"]),
                    vm_hwm_kb_before=p.last_hwm,
                    vm_hwm_kb=status.vm_hwm_kb,
                    vm_rss_kb=status.vm_rss_kb,
                )
            )
            p.last_hwm = status.vm_hwm_kb

    def _on_end(self, rec: Record) -> None:
        summary = rec.get("summary")
        if not isinstance(summary, list):
            return
        for s in summary:
            if not isinstance(s, dict):
                continue
            pid, peak = s.get("pid"), s.get("vm_peak_kb")
            if pid in self.procs and isinstance(peak, int) and not isinstance(peak, bool):
                p = self.procs[pid]
                if p.logged_final is None:
                    p.logged_final = peak

    # -- output
    def finish(self, warnings: Iterable[str] = (), complete: bool | None = None) -> Report:
        if self.start is None:
            raise LogFormatError(f"failed to read {self.log_name}: it has no start record")
        if self.pending:
            self._start_pending()
        if self.only_pid is not None and self.only_pid not in self.procs:
            pids = ", ".join(str(p) for p in sorted(self.seen_pids)) or "none"
            raise UsageError(
                f"failed to report on pid {self.only_pid}: it is not in {self.log_name} "
                f"(pids in the log: {pids})"
            )
        start = self.start
        end = self.end
        events = end.get("events") if end else None
        duration = None
        ts_end = end["ts_ns"] if end else self.last_ts
        if ts_end is not None:
            duration = round((ts_end - self.t0) / 1e9, 3)
        return Report(
            log=self.log_name,
            version=start["version"],
            vmtrace=start.get("vmtrace"),
            kernel=start.get("kernel"),
            backend=start.get("backend"),
            started=start.get("time"),
            duration_s=duration,
            end_reason=end.get("reason") if end else None,
            complete=end is not None if complete is None else complete,
            events=events if isinstance(events, int) else None,
            lost=self.lost,
            change_records=self.change_records,
            engine_disagreements=self.disagreements,
            first_disagreement=self.first_disagreement,
            warnings=list(self.warnings) + list(warnings),
            processes=[self._process_report(p) for p in self.procs.values()],
            oom_kills=list(self.oom_kills),
        )

    def _process_report(self, p: _Proc) -> ProcessReport:
        final = self.engine.expected_vm_peak_kb(p.pid)
        if not final:  # no record of it but the start (a log cut short)
            status = self.target_status.get(p.pid)
            final = p.start_vm_peak_kb or (status.vm_peak_kb if status else 0)
        # The engine's causes by mapping: each new peak's rise, the VmPeak at attach and
        # the kernel's corrections (grouped by call site and chain here, where they are
        # not rises). Whatever the records do not explain (lost records, peaks the kernel
        # kept to itself) is its own line: the causes always add up to the final VmPeak.
        by_map = {(c.cause, c.mapping): [c.kb, c.peaks] for c in self.engine.causes(p.pid)}
        for (cause, _), (kb, _) in by_map.items():
            if cause in NOT_RISES:
                _add(p.by_site, (cause, ()), kb, 0)
                _add(p.by_chain, (cause, ()), kb, 0)
        missing = final - sum(v[0] for v in by_map.values())
        if missing:
            _add(p.by_site, (UNEXPLAINED, ()), missing, 0)
            _add(p.by_chain, (UNEXPLAINED, ()), missing, 0)
            by_map[(UNEXPLAINED, "")] = [missing, 0]
        return ProcessReport(
            pid=p.pid,
            comm=p.comm,
            final_vm_peak_kb=final,
            start_vm_peak_kb=p.start_vm_peak_kb,
            set_by=p.set_by if p.set_by and p.set_by.type == "peak" else None,
            peaks=p.peaks,
            latches=p.latches,
            execs=p.execs,
            samples=p.samples,
            mismatches=p.mismatches,
            timeline=p.timeline.items(),
            timeline_omitted=p.timeline.omitted,
            hwm=p.hwm.items(),
            hwm_omitted=p.hwm.omitted,
            max_rss_kb=p.max_rss,
            by_call_site=_top(
                (Cause(c, _where(site), kb, n, _frames(site)), kb)
                for (c, site), (kb, n) in p.by_site.items()
            ),
            by_mapping=_top(
                (Cause(c, where, kb, n), kb) for (c, where), (kb, n) in by_map.items()
            ),
            causes_more_kb=(
                _rest(v[0] for v in p.by_site.values()),
                _rest(v[0] for v in by_map.values()),
            ),
            composition=self._composition(p, final),
            replay_lost_track=p.space.lost_track,
            replay_first_problem=p.space.first_lost_track,
            logged_final_vm_peak_kb=p.logged_final,
            exited=p.exited,
            by_call_chain=_top(
                (Cause(c, _where(chain), kb, n, _frames(chain)), kb)
                for (c, chain), (kb, n) in p.by_chain.items()
            ),
            chain_more_kb=_rest(v[0] for v in p.by_chain.values()),
        )

    def _composition(self, p: _Proc, final: int) -> Composition | None:
        if p.set_by is not None and p.set_by_snapshot is not None:
            e = p.set_by
            snap = p.set_by_snapshot
            comp = _compose(snap, final, e.type, e.line, e.ts_ns, e.time, e.rel_s)
            if comp.unattributed_kb:
                why = []
                if self.lost:
                    why.append(f"the kernel dropped {self.lost} records")
                if p.mismatches:
                    why.append(f"{_n(p.mismatches, 'sample')} corrected VmPeak")
                if p.space.first_lost_track:
                    why.append(p.space.first_lost_track)
                comp.note = "the replay of the log does not account for all of VmPeak" + (
                    f" ({'; '.join(why)})" if why else ""
                )
            return comp
        if p.attach_snapshot is not None:
            comp = _compose(
                p.attach_snapshot,
                final,
                "attach",
                p.attach_line,
                p.attach_ts,
                None,
                self._rel(p.attach_ts) if p.attach_ts is not None else None,
            )
            comp.note = (
                "no new peak while traced: VmPeak was reached before vmtrace attached; shown is "
                "the address space at attach, the rest of VmPeak is unattributed"
            )
            return comp
        return None


def _compose(
    snap: Snapshot,
    vm_peak_kb: int,
    at: str,
    line: int | None,
    ts: int | None,
    time: str | None,
    rel: float | None,
) -> Composition:
    by_group: dict[str, list[Mapping]] = {}
    for m in coalesce(snap.mappings):
        by_group.setdefault(group_of(m), []).append(m)
    lines: list[GroupLine] = []
    for g in GROUPS:
        kb = snap.groups.get(g, 0)
        maps = by_group.get(g, [])
        if not kb and not maps:
            continue
        items = [
            Item(m.path, _kb(m.size), hex(m.start), hex(m.end), m.perms)
            for m in sorted(maps, key=lambda m: (-m.size, m.start))[:TOP_ITEMS]
        ]
        if g == snap.base_label and g in (EXEC_IMAGE, BEFORE):
            base = kb - sum(_kb(m.size) for m in maps)
            if base:
                label = "as execve mapped it" if g == EXEC_IMAGE else "present before tracing"
                items.insert(0, Item(f"({label})", base))
        if g == OTHER:
            for cause, ckb in snap.other_causes.items():
                if ckb:
                    items.append(Item(f"({cause}: no mapping in the log)", ckb))
        lines.append(GroupLine(g, kb, len(maps), items, max(len(maps) - TOP_ITEMS, 0)))
    unattributed = vm_peak_kb - sum(x.kb for x in lines)
    return Composition(at, line, ts, time, rel, vm_peak_kb, lines, unattributed)


def coalesce(mappings: Iterable[Mapping]) -> list[Mapping]:
    """Adjacent pieces of one region (same name and permissions, contiguous file offsets) as
    one mapping: a stack grown 64 kB at a time is one [stack]."""
    out: list[Mapping] = []
    for m in sorted(mappings, key=lambda m: m.start):
        prev = out[-1] if out else None
        if (
            prev is not None
            and prev.end == m.start
            and (prev.path, prev.perms) == (m.path, m.perms)
            and (not m.path.startswith("/") or prev.offset + prev.size == m.offset)
        ):
            out[-1] = Mapping(prev.start, m.end, m.perms, m.path, prev.offset)
        else:
            out.append(m)
    return out


def _top(pairs: Iterable[tuple[Cause, int]]) -> list[Cause]:
    ranked = sorted(pairs, key=lambda ck: -ck[1])
    return [c for c, kb in ranked[:TOP_CAUSES] if kb]


def _rest(kbs: Iterable[int]) -> int:
    ranked = sorted(kbs, reverse=True)
    return sum(ranked[TOP_CAUSES:])


def _describe(rec: Record) -> str:
    if rec.get("type") == "exec":
        return "execve"
    try:
        return describe_call(rec)
    except (KeyError, TypeError, ValueError):  # a call whose args the console cannot show
        return str(rec.get("cause"))


def build_report(
    records: Iterable[tuple[int, Record]] | Iterator[tuple[int, Record]],
    log_name: str,
    *,
    pid: int | None = None,
    max_peaks: int = DEFAULT_MAX_PEAKS,
    warnings: Iterable[str] = (),
) -> Report:
    """The report of a log, from its (line number, record) pairs in file order."""
    b = ReportBuilder(log_name, pid=pid, max_peaks=max_peaks)
    for line, rec in records:
        b.add(rec, line)
    return b.finish(warnings)


# -- rendering ----------------------------------------------------------------------------------


def report_dict(r: Report) -> dict[str, Any]:
    d = dataclasses.asdict(r)
    for pd, pr in zip(d["processes"], r.processes, strict=True):
        if pr.composition is not None:
            pd["composition"]["total_kb"] = pr.composition.total_kb
    return d


def report_json(r: Report) -> str:
    return json.dumps(report_dict(r), indent=2) + "\n"


def _clock(time: str | None) -> str:
    """HH:MM:SS.mmm of an ISO time (UTC, as logged)."""
    if time and len(time) >= 23 and time[10] == "T":
        return time[11:23]
    return time or "?"


def _size(kb: int) -> str:
    return f"{human_kb(kb)} [{kb} kB]"


def _signed(kb: int) -> str:
    return ("+" if kb >= 0 else "") + human_kb(kb)


def _news(new: dict[str, int]) -> str:
    return ", ".join(f"{_signed(kb)} {g}" for g, kb in new.items() if kb)


@dataclass
class _Run:
    """Consecutive peaks of one call (same thread, cause and mapping) shown as one line."""

    first: PeakEntry
    last: PeakEntry
    n: int
    new: dict[str, int]


def merge_runs(entries: Iterable[PeakEntry]) -> list[_Run]:
    runs: list[_Run] = []
    for e in entries:
        r = runs[-1] if runs else None
        if (
            r is not None
            and e.type == "peak"
            and r.last.type == "peak"
            and (e.tid, e.cause, e.mapping) == (r.last.tid, r.last.cause, r.last.mapping)
            and e.vm_peak_kb_before == r.last.vm_peak_kb
        ):
            r.last = e
            r.n += 1
            for g, kb in e.new_since_previous.items():
                r.new[g] = r.new.get(g, 0) + kb
        else:
            runs.append(_Run(e, e, 1, dict(e.new_since_previous)))
    return runs


def _run_text(r: _Run) -> tuple[str, str]:
    """(headline, call) of a timeline line."""
    f, last = r.first, r.last
    if f.type == "exec":
        return (
            f"EXEC  VmPeak starts over at {_size(f.vm_peak_kb)} "
            f"(was {human_kb(f.vm_peak_kb_before)})",
            f"tid {f.tid} {f.comm}",
        )
    rise = last.vm_peak_kb - f.vm_peak_kb_before
    where = f" {f.mapping}" if f.mapping else ""
    times = f" ×{r.n}" if r.n > 1 else ""
    head = (
        f"PEAK  {human_kb(f.vm_peak_kb_before)} -> {_size(last.vm_peak_kb)} (+{human_kb(rise)})"
        f"  {f.cause}{where}{times}"
    )
    call = f.call if r.n == 1 else f"{r.n} peaks of {f.cause}{where}, the last: {last.call}"
    return head, f"tid {f.tid} {f.comm}: {call}"


def _oom_kill(rec: Record) -> OomKill:
    rises = []
    for r in rec.get("last_rises") or []:
        rise = (r.get("vm_peak_kb") or 0) - (r.get("vm_peak_kb_before") or 0)
        where = f" {r['mapping']['path']}" if r.get("mapping") else ""
        rises.append(
            f"+{human_kb(rise)} to {human_kb(r.get('vm_peak_kb') or 0)}: {_describe(r)}{where}"
        )
    largest = [
        f"{human_kb(m.get('size_kb') or 0)} {m.get('path')} {m.get('start')}-{m.get('end')}"
        for m in rec.get("largest_mappings") or []
    ]
    by_kind = rec.get("rss_kb_by_kind") or {}
    return OomKill(
        pid=int(rec["pid"]),
        comm=str(rec.get("comm") or "?"),
        time=rec.get("time"),
        cgroup=rec.get("cgroup"),
        rss_kb=int(rec.get("rss_kb") or 0),
        rss_kb_by_kind={str(k): int(v) for k, v in by_kind.items()},
        vm_peak_kb=rec.get("vm_peak_kb"),
        last_rises=rises,
        largest_mappings=largest,
    )


def _oom_text(o: OomKill, w: Any) -> None:
    kinds = ", ".join(f"{k} {human_kb(v)}" for k, v in o.rss_kb_by_kind.items())
    cg = f" in cgroup {o.cgroup}" if o.cgroup else ""
    w(f"OOM KILL: pid {o.pid} {o.comm} at {_clock(o.time)}{cg}")
    peak = human_kb(o.vm_peak_kb) if o.vm_peak_kb is not None else "?"
    w(f"  RSS at the kill {human_kb(o.rss_kb)} ({kinds}); VmPeak {peak}")
    if o.last_rises:
        w("  its last VmPeak rises:")
        for line in o.last_rises:
            w(f"    {line}")
    if o.largest_mappings:
        w("  its largest mappings:")
        for line in o.largest_mappings:
            w(f"    {line}")


def render_text(r: Report) -> str:
    out: list[str] = []
    w = out.append
    w(f"vmtrace report of {r.log}")
    w(
        f"  log version {r.version}, vmtrace {r.vmtrace or '?'}, kernel {r.kernel or '?'}, "
        f"{r.backend or '?'} backend"
    )
    dur = f", {r.duration_s:.3f} s" if r.duration_s is not None else ""
    ending = f"ended: {r.end_reason}" if r.complete else "no end record (vmtrace was killed?)"
    w(f"  started {r.started or '?'}{dur}; {ending}; {r.lost} records lost by the kernel")
    agree = (
        f"all {r.change_records} change records agree with the log"
        if not r.engine_disagreements
        else f"{r.engine_disagreements} of {r.change_records} change records DISAGREE with the "
        f"log (first: {r.first_disagreement})"
    )
    w(f"  re-explained offline by the engine: {agree}")
    for msg in r.warnings:
        w(f"  warning: {msg}")
    for o in r.oom_kills:  # what an on-call engineer opens the report for, first
        w("")
        _oom_text(o, w)
    for p in r.processes:
        w("")
        _process_text(p, w)
    return "\n".join(out) + "\n"


def _process_text(p: ProcessReport, w: Any) -> None:
    w(f"== pid {p.pid} {p.comm} ==")
    final = f"final VmPeak {_size(p.final_vm_peak_kb)}"
    if p.set_by is not None:
        s = p.set_by
        where = f" {s.mapping}" if s.mapping else ""
        final += (
            f", set by {s.cause}{where} (+{human_kb(s.vm_peak_kb - s.vm_peak_kb_before)}) in "
            f"tid {s.tid} {s.comm} at {_clock(s.time)} (+{s.rel_s:.3f} s)"
        )
    elif p.start_vm_peak_kb is not None and p.final_vm_peak_kb == p.start_vm_peak_kb:
        final += ", reached before vmtrace attached (no new peak while traced)"
    w(final)
    if p.logged_final_vm_peak_kb is not None and p.logged_final_vm_peak_kb != p.final_vm_peak_kb:
        w(f"  WARNING: the log's own final VmPeak is {p.logged_final_vm_peak_kb} kB")
    w(
        f"{p.peaks} new peaks, {p.latches} latches, {p.execs} exec, {p.samples} samples, "
        f"{p.mismatches} mismatches" + ("" if p.exited else "; still running at the end")
    )
    w("")
    w("VmPeak timeline (new highs; consecutive peaks of one call merged):")
    if p.start_vm_peak_kb is not None:
        w(f"  {'attach':>10}  VmPeak {_size(p.start_vm_peak_kb)} when vmtrace attached")
    if not p.timeline:
        w("  (no new peak)")
    for r in merge_runs(p.timeline):
        head, call = _run_text(r)
        w(f"  {r.last.rel_s:>+9.3f}s {_clock(r.last.time)}  {head}")
        w(f"        {call}")
        if r.first.stack:
            w(f"        at {_where(call_site(r.first.stack)[:3])}")
        news = _news(r.new)
        if news:
            w(f"        new since the previous high: {news}")
    if p.timeline_omitted:
        w(f"  ({p.timeline_omitted} more peaks in the middle of the log not shown)")
    if p.hwm:
        w("")
        w("VmHWM (resident set high-water mark, from the samples, HWM records and exit):")
        for h in p.hwm:
            was = f" (was {human_kb(h.vm_hwm_kb_before)})" if h.vm_hwm_kb_before is not None else ""
            rss = "at exit" if h.source == "exit" else f"VmRSS {human_kb(h.vm_rss_kb)}"
            w(f"  {h.rel_s:>+9.3f}s {_clock(h.time)}  VmHWM {_size(h.vm_hwm_kb)}{was}, {rss}")
        if p.hwm_omitted:
            w(f"  ({p.hwm_omitted} more changes not shown)")
    w("")
    w("What VmPeak is made of (each new high's rise, since the last exec):")
    w("  by call site:")
    for c in p.by_call_site:
        w(f"    {human_kb(c.kb):>10}  {c.cause:<14} {c.where}{_peaks(c.peaks)}")
    if p.causes_more_kb[0]:
        w(f"    {human_kb(p.causes_more_kb[0]):>10}  (the other call sites)")
    w("  by call chain (the whole user stack, innermost frame first):")
    for c in p.by_call_chain:
        where = "" if c.frames else f" {c.where}"
        w(f"    {human_kb(c.kb):>10}  {c.cause:<14}{where}{_peaks(c.peaks)}")
        for i, frame in enumerate(c.frames[:CHAIN_FRAMES]):
            w(f"    {'':>10}    #{i} {frame}")
        if len(c.frames) > CHAIN_FRAMES:
            w(f"    {'':>10}    ... {len(c.frames) - CHAIN_FRAMES} more")
    if p.chain_more_kb:
        w(f"    {human_kb(p.chain_more_kb):>10}  (the other call chains)")
    w("  by mapping:")
    for c in p.by_mapping:
        w(f"    {human_kb(c.kb):>10}  {c.cause:<14} {c.where}{_peaks(c.peaks)}")
    if p.causes_more_kb[1]:
        w(f"    {human_kb(p.causes_more_kb[1]):>10}  (the other mappings)")
    comp = p.composition
    w("")
    if comp is None:
        w("Address space at the final peak: not in the log")
        return
    when = f"{comp.rel_s:+.3f} s, line {comp.line}" if comp.rel_s is not None else "?"
    w(f"Address space at the final peak ({comp.at}, {when}), rebuilt from the log:")
    for g in comp.groups:
        n = f"{g.mappings} region{'s' if g.mappings != 1 else ''}" if g.mappings else ""
        w(f"  {human_kb(g.kb):>10}  {g.group:<14} {n}")
        for it in g.items:
            rng = f" {it.start}-{it.end} {it.perms}" if it.start else ""
            w(f"  {'':>10}    {human_kb(it.kb):>10}  {it.label}{rng}")
        if g.more:
            w(f"  {'':>10}    ... and {g.more} more")
    if comp.unattributed_kb:
        w(f"  {human_kb(comp.unattributed_kb):>10}  {UNATTRIBUTED}")
    w(f"  {'=' * 10}")
    w(f"  {human_kb(comp.total_kb):>10}  = VmPeak {comp.vm_peak_kb} kB")
    if comp.note:
        w(f"  note: {comp.note}")
    if p.replay_lost_track and p.replay_first_problem:
        w(
            f"  note: the replay lost track of total_vm {p.replay_lost_track} times, first at "
            f"{p.replay_first_problem}"
        )


def _n(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _peaks(n: int) -> str:
    return f"  ({_n(n, 'peak')})" if n else ""


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(r: Report) -> str:
    out: list[str] = []
    w = out.append
    w(f"# vmtrace report: `{_md(r.log)}`")
    w("")
    w(
        f"log version {r.version}, vmtrace {r.vmtrace or '?'}, kernel `{r.kernel or '?'}`, "
        f"{r.backend or '?'} backend; started {r.started or '?'}"
        + (f", {r.duration_s:.3f} s" if r.duration_s is not None else "")
        + (f"; ended: {r.end_reason}" if r.complete else "; **no end record**")
        + f"; {r.lost} records lost."
    )
    w("")
    w(
        f"Re-explained offline by the engine: {r.change_records} change records, "
        f"{r.engine_disagreements} disagreements."
    )
    for msg in r.warnings:
        w(f"\n> warning: {_md(msg)}")
    for p in r.processes:
        w("")
        w(f"## pid {p.pid} `{_md(p.comm)}`: final VmPeak {_size(p.final_vm_peak_kb)}")
        w("")
        w(
            f"{p.peaks} new peaks, {p.latches} latches, {p.execs} exec, {p.samples} samples, "
            f"{p.mismatches} mismatches."
        )
        w("")
        w("### VmPeak timeline")
        w("")
        w("| t (s) | time (UTC) | VmPeak | rise | cause | call | new since previous high |")
        w("|---:|---|---:|---:|---|---|---|")
        if p.start_vm_peak_kb is not None:
            w(f"| attach | | {p.start_vm_peak_kb} kB | | | | |")
        for run in merge_runs(p.timeline):
            f, last = run.first, run.last
            rise = last.vm_peak_kb - f.vm_peak_kb_before if f.type == "peak" else 0
            cause = "exec" if f.type == "exec" else f"{f.cause} {f.mapping or ''}".strip()
            if run.n > 1:
                cause += f" ×{run.n}"
            call = f.call if run.n == 1 else f"last: {last.call}"
            w(
                f"| {last.rel_s:.3f} | {_clock(last.time)} | {last.vm_peak_kb} kB | "
                f"{_signed(rise) if f.type == 'peak' else 'starts over'} | {_md(cause)} | "
                f"`{_md(call)}` | {_md(_news(run.new))} |"
            )
        if p.timeline_omitted:
            w(f"\n{p.timeline_omitted} more peaks in the middle of the log are not shown.")
        if p.hwm:
            w("")
            w("### VmHWM (samples, HWM records, the exit)")
            w("")
            w("| t (s) | VmHWM | VmRSS |")
            w("|---:|---:|---:|")
            for h in p.hwm:
                rss = "(exit)" if h.source == "exit" else f"{h.vm_rss_kb} kB"
                w(f"| {h.rel_s:.3f} | {h.vm_hwm_kb} kB | {rss} |")
        w("")
        w("### Causes of the final VmPeak")
        for title, causes in (
            ("call site", p.by_call_site),
            ("call chain", p.by_call_chain),
            ("mapping", p.by_mapping),
        ):
            w("")
            w(f"| kB | cause | {title} | peaks |")
            w("|---:|---|---|---:|")
            for c in causes:
                w(f"| {c.kb} | {_md(c.cause)} | `{_md(c.where)}` | {c.peaks} |")
        comp = p.composition
        w("")
        w("### Address space at the final peak")
        w("")
        if comp is None:
            w("Not in the log.")
            continue
        w("| group | kB | mappings | largest |")
        w("|---|---:|---:|---|")
        for g in comp.groups:
            largest = "; ".join(f"{it.label} {it.kb} kB" for it in g.items[:3])
            w(f"| {g.group} | {g.kb} | {g.mappings} | {_md(largest)} |")
        if comp.unattributed_kb:
            w(f"| {UNATTRIBUTED} | {comp.unattributed_kb} | | |")
        w(f"| **total** | **{comp.total_kb}** | | = VmPeak {comp.vm_peak_kb} kB |")
        if comp.note:
            w(f"\nNote: {_md(comp.note)}")
    return "\n".join(out) + "\n"
