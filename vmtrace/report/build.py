"""Building a `Report` from a log's records: the engine's judgement (replay), the address
space (space), the timelines and causes."""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vmtrace.errors import LogFormatError, UsageError
from vmtrace.frames import describe_frame, legacy_frame, short_frame
from vmtrace.logread import (
    CHANGE_TYPES,
    Record,
    parse_mapping,
    status_from_record,
)
from vmtrace.records import (
    Explained,
    Frame,
    Mapping,
    ProcStatus,
    SampleCheck,
)
from vmtrace.replay import Replay
from vmtrace.report.model import (
    DEFAULT_MAX_PEAKS,
    NOT_RISES,
    STACK_FRAMES,
    TOP_CAUSES,
    TOP_ITEMS,
    UNEXPLAINED,
    Cause,
    Composition,
    GroupLine,
    HwmEntry,
    Item,
    OomKill,
    PeakEntry,
    ProcessReport,
    Report,
)
from vmtrace.sinks import describe_call
from vmtrace.space import (
    BEFORE,
    EXEC_IMAGE,
    GROUPS,
    OTHER,
    AddressSpace,
    AddressSpaces,
    Snapshot,
    group_of,
    kb_of,
)
from vmtrace.units import human_kb

# -- building -----------------------------------------------------------------------------------


K = TypeVar("K")


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


def where_of(site: CallSite) -> str:
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
        self.spaces = AddressSpaces(self.page)
        self.pending: dict[int, tuple[str, ProcStatus | None]] = {}
        self.end: Record | None = None
        self.lost = 0
        self.tallied = 0
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
                space=self.spaces.of(pid),
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
        if t == "tally":
            self.tallied += rec["count"]
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
        self.spaces = AddressSpaces(self.page)
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
        p.space = self.spaces.seed(pid, (parse_mapping(m, "mappings[]") for m in rec["mappings"]))
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
        if e.type != rec["type"] or e.vm_peak_kb != rec["vm_peak_kb"]:
            self.disagreements += 1
            if self.first_disagreement is None:
                self.first_disagreement = (
                    f"line {self.line}: the log says {rec['type']} at VmPeak {rec['vm_peak_kb']}"
                    f" kB, the engine {e.type} at {e.vm_peak_kb} kB"
                )
        p.comm = c.comm
        p.space = self.spaces.apply(c, f"line {self.line}")
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

    def _add_hwm(
        self,
        p: _Proc,
        rec: Record,
        vm_hwm_kb: int,
        vm_rss_kb: int,
        before: int | None,
        source: str = "sample",
        tid: int | None = None,
    ) -> None:
        p.hwm.add(
            HwmEntry(
                line=self.line,
                ts_ns=rec["ts_ns"],
                time=rec.get("time"),
                rel_s=self._rel(rec["ts_ns"]),
                vm_hwm_kb_before=before,
                vm_hwm_kb=vm_hwm_kb,
                vm_rss_kb=vm_rss_kb,
                source=source,
                tid=tid,
            )
        )
        p.last_hwm = vm_hwm_kb

    def _on_hwm_record(self, p: _Proc, rec: Record) -> None:
        hwm = rec.get("hwm_kb")
        if hwm is None:
            return
        before = rec.get("hwm_kb_before")
        before = before if before is not None else p.last_hwm
        self._add_hwm(p, rec, hwm, rec.get("rss_kb") or 0, before, rec["cause"], rec.get("tid"))
        if rec.get("rss_kb") is not None:
            p.max_rss = max(p.max_rss or 0, rec["rss_kb"])

    def _on_exit_hwm(self, p: _Proc, rec: Record) -> None:
        """The exit record's VmHWM is the kernel's final one: a process that ran between
        two samples (or while the reader was behind) has no other."""
        hwm = rec.get("hwm_kb")
        if hwm is not None and hwm != p.last_hwm:
            self._add_hwm(p, rec, hwm, 0, p.last_hwm, "exit")

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
            self._add_hwm(p, rec, status.vm_hwm_kb, status.vm_rss_kb, p.last_hwm)

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
            tallied=self.tallied,
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
                (Cause(c, where_of(site), kb, n, _frames(site)), kb)
                for (c, site), (kb, n) in p.by_site.items()
            ),
            by_mapping=_top((Cause(c, where, kb, n), kb) for (c, where), (kb, n) in by_map.items()),
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
                (Cause(c, where_of(chain), kb, n, _frames(chain)), kb)
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
                if self.tallied:
                    why.append(f"the kernel tallied {self.tallied} changes without logging them")
                if p.mismatches:
                    why.append(f"{counted(p.mismatches, 'sample')} corrected VmPeak")
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
            Item(m.path, kb_of(m.size), hex(m.start), hex(m.end), m.perms)
            for m in sorted(maps, key=lambda m: (-m.size, m.start))[:TOP_ITEMS]
        ]
        if g == snap.base_label and g in (EXEC_IMAGE, BEFORE):
            base = kb - sum(kb_of(m.size) for m in maps)
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


def counted(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")
