"""The JSONL log records (defined in vmtrace.logformat), built from engine output.

Every sink renders these dicts, the console included, so what is printed and what is
logged cannot disagree.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Sequence
from typing import Any

from vmtrace.frames import frame_record
from vmtrace.logformat import SCHEMA_VERSION
from vmtrace.procfs import ProcessInfo
from vmtrace.records import Explained, Mapping, ProcessSummary, ProcStatus, SampleCheck, Tally
from vmtrace.units import WallClock

Record = dict[str, Any]


def _common(
    rtype: str,
    clock: WallClock,
    ts_ns: int,
    pid: int | None = None,
    tid: int | None = None,
    comm: str | None = None,
    total_before: int | None = None,
    total_after: int | None = None,
    vm_peak: int | None = None,
    hiwater: int | None = None,
) -> Record:
    return {
        "type": rtype,
        "ts_ns": ts_ns,
        "time": clock.iso(ts_ns),
        "pid": pid,
        "tid": tid,
        "comm": comm,
        "total_vm_kb_before": total_before,
        "total_vm_kb_after": total_after,
        "vm_peak_kb": vm_peak,
        "hiwater_vm_kb": hiwater,
    }


def status_dict(s: ProcStatus) -> dict[str, int]:
    return {
        "VmPeak": s.vm_peak_kb,
        "VmSize": s.vm_size_kb,
        "VmHWM": s.vm_hwm_kb,
        "VmRSS": s.vm_rss_kb,
    }


def mapping_dict(m: Mapping) -> dict[str, Any]:
    return {
        "start": hex(m.start),
        "end": hex(m.end),
        "perms": m.perms,
        "offset": m.offset,
        "path": m.path,
    }


def start_record(
    clock: WallClock,
    *,
    vmtrace_version: str,
    kernel: str,
    backend: str,
    backend_reason: str,
    page_size: int,
    user: dict[str, Any],
    argv: Sequence[str],
    targets: Iterable[tuple[ProcessInfo, ProcStatus | None]],
    attach_seconds: float,
    interval: float,
    filters: dict[str, Any] | None = None,
) -> Record:
    rec = _common("start", clock, clock.monotonic_ns)
    rec.update(
        version=SCHEMA_VERSION,
        vmtrace=vmtrace_version,
        kernel=kernel,
        backend=backend,
        backend_reason=backend_reason,
        page_size=page_size,
        clock={
            "monotonic_ns": clock.monotonic_ns,
            "wall_ns": clock.wall_ns,
            "wall_time": clock.iso(clock.monotonic_ns),
        },
        user=user,
        argv=list(argv),
        attach_seconds=round(attach_seconds, 3),
        interval=interval,
        filters=filters or {},
        targets=[
            {
                "pid": info.pid,
                "comm": info.comm,
                "cmdline": list(info.cmdline),
                "threads": {str(t): c for t, c in info.threads.items()},
                "ns_pids": list(info.ns_pids),
                "status": status_dict(st) if st else None,
            }
            for info, st in targets
        ],
    )
    return rec


def maps_record(clock: WallClock, ts_ns: int, pid: int, comm: str, maps: list[Mapping]) -> Record:
    rec = _common("maps", clock, ts_ns, pid=pid, comm=comm)
    rec["mappings"] = [mapping_dict(m) for m in maps]
    return rec


def explained_record(e: Explained, clock: WallClock) -> Record:
    c = e.change
    rec = _common(
        e.type,
        clock,
        c.ts_ns,
        pid=c.pid,
        tid=c.tid,
        comm=c.comm,
        total_before=c.total_vm_kb_before,
        total_after=c.total_vm_kb_after,
        vm_peak=e.vm_peak_kb,
        hiwater=c.hiwater_vm_kb_after,
    )
    ret: int | str | None = c.ret
    if c.ret is not None and c.ret >= 0 and c.syscall in ("mmap", "mremap", "shmat", "brk"):
        ret = hex(c.ret)
    rec.update(
        cause=c.cause,
        syscall=c.syscall,
        args=dict(c.args) if c.args is not None else None,
        ret=ret,
        delta_kb=c.delta_kb,
        vm_peak_kb_before=e.vm_peak_kb_before,
        # the kernel side's own per-mm peak before the change: what a replay judges from
        kernel_peak_kb_before=c.kernel_peak_kb_before,
        new_high=e.new_high,
        hiwater_vm_kb_before=c.hiwater_vm_kb_before,
        stack_vm_kb_before=c.stack_vm_kb_before,
        stack_vm_kb_after=c.stack_vm_kb_after,
        mapping=mapping_dict(c.mapping) if c.mapping else None,
        stack=[frame_record(f) for f in c.stack] if c.stack is not None else None,
        rss_kb=c.rss_kb,
        hwm_kb=c.hwm_kb,
        mm_id=hex(c.mm_id) if c.mm_id else None,
    )
    if e.type == "peak" and c.folded_rises:
        rec["rises_covered"] = c.folded_rises
    if c.stack_unread:
        rec["stack_unread"] = True  # `stack` is then what the registers alone gave
    if e.type == "hwm":
        rec.update(hwm_kb_before=c.hwm_kb_before, rss_member=c.rss_member)
    elif e.type == "fork":
        rec.update(parent_pid=c.parent_pid)
    elif e.type == "exec":
        rec.update(exec_tid=c.exec_tid)
    elif e.type == "baseline" and c.host_pid is not None:
        rec.update(host_pid=c.host_pid)
    return rec


def sample_record(s: SampleCheck, clock: WallClock, comm: str | None) -> Record:
    rec = _common(
        "mismatch" if s.mismatch else "sample",
        clock,
        s.ts_ns,
        pid=s.pid,
        comm=comm,
        total_after=s.status.vm_size_kb,
        vm_peak=s.status.vm_peak_kb,
    )
    rec.update(
        status=status_dict(s.status),
        expected_vm_peak_kb=s.expected_vm_peak_kb,
        match=s.match,
    )
    if s.mismatch:
        rec["detail"] = (
            f"/proc/{s.pid}/status says VmPeak {s.status.vm_peak_kb} kB, the events say "
            f"{s.expected_vm_peak_kb} kB (twice in a row)"
        )
    return rec


def hwm_reset_record(
    clock: WallClock,
    ts_ns: int,
    pid: int,
    comm: str,
    hwm_kb_before: int,
    hwm_kb: int,
    status: ProcStatus | None,
) -> Record:
    """VmHWM fell, as a sample (`status`) or the exit (None: taskstats' final VmHWM) saw."""
    vm_peak = status.vm_peak_kb if status is not None else None
    rec = _common("hwm-reset", clock, ts_ns, pid=pid, comm=comm, vm_peak=vm_peak)
    rec.update(
        hwm_kb_before=hwm_kb_before,
        hwm_kb=hwm_kb,
        seen_at="sample" if status is not None else "exit",
        status=status_dict(status) if status is not None else None,
        detail="VmHWM went down: /proc/PID/clear_refs was written (5), or pages were "
        "reclaimed before an unmap latched hiwater_rss",
    )
    return rec


def lost_record(
    clock: WallClock,
    ts_ns: int,
    count: int,
    total: int,
    by_kind: dict[str, int] | None = None,
    by_pid: dict[int, int] | None = None,
) -> Record:
    """`by_kind`: totals so far of grow/shrink (`changes`) and peak/latch/lifecycle
    (`vital`) records dropped, stacks not read, processes the targets map had no room for.
    `by_pid`: records dropped so far per traced process that lost any."""
    rec = _common("lost", clock, ts_ns)
    rec.update(
        count=count,
        total=total,
        by_kind=by_kind or {},
        by_pid={str(pid): n for pid, n in sorted((by_pid or {}).items())},
    )
    return rec


def tally_record(
    clock: WallClock, ts_ns: int, count: int, total: int, by_pid: dict[int, Tally]
) -> Record:
    """The reader was behind: `count` more grow/shrink changes (`total` so far) were counted
    by the kernel side instead of sent one by one. `by_pid`: the totals so far of each
    process that had any, with the kB they mapped and unmapped."""
    rec = _common("tally", clock, ts_ns)
    rec.update(
        count=count,
        total=total,
        by_pid={str(pid): t.as_dict() for pid, t in sorted(by_pid.items())},
    )
    return rec


def exit_record(
    clock: WallClock,
    ts_ns: int,
    pid: int,
    comm: str,
    vm_peak_kb: int | None,
    source: str,
    last: Explained | None,
    exit_status: int | None = None,
    kernel: dict[str, Any] | None = None,
    ended: dict[str, Any] | None = None,
) -> Record:
    """`vm_peak_kb` is the kernel's final value when taskstats gave one (`kernel`), else the
    one rebuilt from events; `expected_vm_peak_kb` and `match` compare the two. `ended`:
    how the process ended (`ended_dict`)."""
    c = last.change if last else None
    expected = vm_peak_kb
    if kernel is not None:
        vm_peak_kb = kernel["hiwater_vm_kb"]
    rec = _common(
        "exit",
        clock,
        ts_ns,
        pid=pid,
        tid=c.tid if c else None,
        comm=comm,
        total_before=c.total_vm_kb_before if c else None,
        total_after=c.total_vm_kb_after if c else None,
        vm_peak=vm_peak_kb,
        hiwater=c.hiwater_vm_kb_after if c else None,
    )
    rec.update(
        source=source,
        exit_status=exit_status,
        expected_vm_peak_kb=expected,
        match=None if kernel is None or expected is None else expected == vm_peak_kb,
        hwm_kb=kernel["hiwater_rss_kb"] if kernel else (c.hwm_kb if c else None),
        taskstats=kernel,
        ended=ended,
    )
    return rec


def ended_dict(exit_code: int | None, oom_killed: bool = False) -> dict[str, Any] | None:
    """How a process ended, from the kernel's exit code (status << 8 | signal)."""
    if exit_code is None:
        return None
    sig = exit_code & 0x7F
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        how = "oom-kill" if oom_killed and sig == signal.SIGKILL else "signal"
        return {"how": how, "signal": sig, "name": name}
    return {"how": "exit", "code": (exit_code >> 8) & 0xFF}


def oom_record(
    e: Explained,
    clock: WallClock,
    *,
    vm_peak_kb: int | None,
    vm_hwm_kb: int | None,
    cgroup: str | None,
    rises: Sequence[Explained],
    largest: Sequence[Mapping],
) -> Record:
    """The OOM killer's victim at the kill: its counters from the kernel, what it had
    become, the last rises of its VmPeak with their causes, and its largest mappings."""
    c = e.change
    rec = _common(
        "oom",
        clock,
        c.ts_ns,
        pid=c.pid,
        tid=c.tid,
        comm=c.comm,
        total_before=c.total_vm_kb_before,
        total_after=c.total_vm_kb_after,
        vm_peak=vm_peak_kb,
        hiwater=c.hiwater_vm_kb_after,
    )
    rec.update(
        cgroup=cgroup,
        trigger_pid=c.oom_trigger_pid,
        rss_kb=c.rss_kb,
        rss_kb_by_kind={"anon": c.rss_anon_kb, "file": c.rss_file_kb, "shmem": c.rss_shmem_kb},
        hwm_kb=max(c.hwm_kb, vm_hwm_kb or 0),
        last_rises=[explained_record(r, clock) for r in rises],
        largest_mappings=[dict(mapping_dict(m), size_kb=m.size // 1024) for m in largest],
        mm_id=hex(c.mm_id) if c.mm_id else None,
    )
    return rec


def summary_dict(s: ProcessSummary, clock: WallClock) -> dict[str, Any]:
    set_by = None
    if s.set_by is not None:
        c = s.set_by.change
        set_by = {
            "time": clock.iso(c.ts_ns),
            "ts_ns": c.ts_ns,
            "tid": c.tid,
            "comm": c.comm,
            "cause": c.cause,
            "type": s.set_by.type,
            "delta_kb": c.delta_kb,
            "rise_kb": s.set_by.rise_kb,
            "mapping": mapping_dict(c.mapping) if c.mapping else None,
        }
    hwm_set_by = None
    if s.hwm_set_by is not None:
        h = s.hwm_set_by.change
        hwm_set_by = {
            "time": clock.iso(h.ts_ns),
            "ts_ns": h.ts_ns,
            "tid": h.tid,
            "comm": h.comm,
            "cause": h.cause,
            "rise_kb": h.hwm_kb - h.hwm_kb_before,
        }
    return {
        "pid": s.pid,
        "comm": s.comm,
        "vm_peak_kb": s.vm_peak_kb,
        "vm_hwm_kb": s.vm_hwm_kb,
        "hwm_set_by": hwm_set_by,
        "peaks": s.peaks,
        "latches": s.latches,
        "lost": s.lost,
        "tallied": s.tally.as_dict(),
        "stacks_unread": s.stacks_unread,
        "set_by": set_by,
        "top_causes": [{"cause": t.cause, "mapping": t.mapping, "kb": t.kb} for t in s.top_causes],
    }


def end_record(
    clock: WallClock,
    ts_ns: int,
    reason: str,
    events: int,
    lost: int,
    summaries: list[ProcessSummary],
    lost_by_kind: dict[str, int] | None = None,
    filtered: int = 0,
    tallied: int = 0,
) -> Record:
    rec = _common("end", clock, ts_ns)
    rec.update(
        reason=reason,
        events=events,
        lost=lost,
        lost_by_kind=lost_by_kind or {},
        filtered=filtered,
        tallied=tallied,
        summary=[summary_dict(s, clock) for s in summaries],
    )
    return rec
