"""`vmtrace export`: an event log as CSV (one row per record) or as a Perfetto trace (pure).

`--format perfetto` is Perfetto's own protobuf format (vmtrace.pftrace, built from the events
below); `--format perfetto-json` is the legacy JSON described here.

Both stream: they take (line, record) pairs from vmtrace.logread and write as they go.

CSV: `CSV_COLUMNS`, in that order (docs/offline.md); a field that does not apply is empty.

Perfetto JSON: the Chrome trace-event JSON format ({"traceEvents": [...]}) that ui.perfetto.dev and
chrome://tracing open. Per process: counter tracks (ph "C") `VmSize kB` and `VmPeak kB` from
every change record and sample, `VmRSS kB` and `VmHWM kB` from the samples (and from change
records that carry rss_kb/hwm_kb); instant events (ph "i") for each new peak, latch, exec, hwm
and fork (thread scope, with the call, its arguments, the mapping and the user stack in
`args`), each OOM kill (with what the record says), each mismatch and exit (process scope),
and each loss and the end (global); process
and thread names as metadata (ph "M"). `ts` is the log's
CLOCK_MONOTONIC time in microseconds, so the trace lines up with perf or ftrace traces of the
same machine. The log is written in the order records were processed, which is not quite time
order (a sample is logged after the events drained with it); events are sorted by `ts` within a
window of `REORDER_WINDOW` events, which covers that.
"""

from __future__ import annotations

import csv
import heapq
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from vmtrace.frames import describe_frame, frames_of
from vmtrace.logread import CHANGE_TYPES, Record
from vmtrace.replay import judged
from vmtrace.sinks import describe_call
from vmtrace.units import human_kb

CSV_COLUMNS = (
    "line",
    "type",
    "ts_ns",
    "time",
    "pid",
    "tid",
    "comm",
    "cause",
    "syscall",
    "call",
    "ret",
    "delta_kb",
    "total_vm_kb_before",
    "total_vm_kb_after",
    "vm_peak_kb_before",
    "vm_peak_kb",
    "hiwater_vm_kb_before",
    "hiwater_vm_kb",
    "stack_vm_kb_before",
    "stack_vm_kb_after",
    "vm_size_kb",
    "vm_rss_kb",
    "vm_hwm_kb",
    "vm_hwm_kb_before",
    "rss_member",
    "parent_pid",
    "expected_vm_peak_kb",
    "match",
    "mapping_start",
    "mapping_end",
    "mapping_perms",
    "mapping_offset",
    "mapping_path",
    "args",
    "stack",
    "detail",
)
STACK_SEPARATOR = " | "
REORDER_WINDOW = 100_000
SESSION_PID = 0  # Perfetto's home for records about the whole session (lost, end)
_COMMON_KEYS = frozenset(("type", "ts_ns", "time", "pid", "tid", "comm"))


def only_pid(
    records: Iterable[tuple[int, Record]], pid: int | None
) -> Iterator[tuple[int, Record]]:
    """Records about `pid`, and those about the whole session (start, lost, end)."""
    for line, rec in records:
        if pid is None or rec.get("pid") in (None, pid):
            yield line, rec


# -- CSV ----------------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def _call(rec: Record) -> str:
    if rec["type"] == "exec":
        return "execve"
    if rec["type"] not in CHANGE_TYPES or rec["type"] == "baseline":
        return ""
    try:
        return describe_call(rec)
    except (KeyError, TypeError, ValueError):
        return str(rec.get("cause") or "")


def _detail(rec: Record) -> str:
    t = rec["type"]
    if t == "start":
        targets = ", ".join(
            f"{x.get('pid')} ({x.get('comm')})"
            for x in rec.get("targets") or []
            if isinstance(x, dict)
        )
        return (
            f"vmtrace {rec.get('vmtrace')} on {rec.get('kernel')}, {rec.get('backend')} "
            f"backend, targets: {targets}"
        )
    if t == "maps":
        return f"{len(rec['mappings'])} mappings at attach"
    if t == "mismatch":
        return str(rec.get("detail") or "")
    if t == "lost":
        return f"{rec['count']} records dropped by the kernel ({rec.get('total')} in all)"
    if t == "exit":
        status = rec.get("exit_status")
        st = f", exit status {status}" if status is not None else ""
        return f"exited (seen by {rec.get('source')}){st}"
    if t == "end":
        return f"{rec.get('reason')}: {rec.get('events')} events, {rec.get('lost')} lost"
    return ""


def csv_row(line: int, rec: Record) -> list[str]:
    """One CSV row (CSV_COLUMNS order) for one record."""
    status = rec.get("status") if rec["type"] in ("sample", "mismatch") else None
    m = rec.get("mapping") if rec["type"] in CHANGE_TYPES else None
    stack = rec.get("stack") if rec["type"] in CHANGE_TYPES else None
    values: dict[str, Any] = {
        "line": line,
        "type": rec["type"],
        "ts_ns": rec["ts_ns"],
        "time": rec.get("time"),
        "pid": rec.get("pid"),
        "tid": rec.get("tid"),
        "comm": rec.get("comm"),
        "call": _call(rec),
        "vm_size_kb": status["VmSize"] if status else None,
        "vm_rss_kb": status["VmRSS"] if status else None,
        "vm_hwm_kb": status["VmHWM"] if status else None,
        "mapping_start": m["start"] if m else None,
        "mapping_end": m["end"] if m else None,
        "mapping_perms": m["perms"] if m else None,
        "mapping_offset": m.get("offset") if m else None,
        "mapping_path": m["path"] if m else None,
        "stack": STACK_SEPARATOR.join(map(describe_frame, frames_of(stack))) if stack else None,
        "detail": _detail(rec),
    }
    if rec["type"] in CHANGE_TYPES:
        for key in ("cause", "syscall", "ret", "delta_kb", "args", "rss_member", "parent_pid"):
            values[key] = rec.get(key)
        values["vm_rss_kb"] = rec.get("rss_kb") or None
        values["vm_hwm_kb"] = rec.get("hwm_kb") or None
        values["vm_hwm_kb_before"] = rec.get("hwm_kb_before") if rec["type"] == "hwm" else None
        values["vm_peak_kb_before"] = rec.get("vm_peak_kb_before")
        values["hiwater_vm_kb_before"] = rec.get("hiwater_vm_kb_before")
        values["stack_vm_kb_before"] = rec.get("stack_vm_kb_before")
        values["stack_vm_kb_after"] = rec.get("stack_vm_kb_after")
    if rec["type"] in ("sample", "mismatch"):
        values["expected_vm_peak_kb"] = rec.get("expected_vm_peak_kb")
        values["match"] = rec.get("match")
    for key in ("total_vm_kb_before", "total_vm_kb_after", "vm_peak_kb", "hiwater_vm_kb"):
        values[key] = rec.get(key)
    return [_cell(values.get(c)) for c in CSV_COLUMNS]


def write_csv(records: Iterable[tuple[int, Record]], out: IO[str]) -> int:
    """Header and one row per record; returns the number of rows."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    n = 0
    for line, rec in judged(records):
        w.writerow(csv_row(line, rec))
        n += 1
    return n


# -- Perfetto (Chrome trace-event JSON) ---------------------------------------------------------


def _us(ts_ns: int) -> float:
    return round(ts_ns / 1000, 3)


@dataclass
class PerfettoConverter:
    """Records in, trace events out (unsorted: see `sorted_events`)."""

    process_names: dict[int, str] = field(default_factory=dict)
    thread_names: dict[tuple[int, int], str] = field(default_factory=dict)

    def events(self, rec: Record) -> Iterator[dict[str, Any]]:
        t = rec["type"]
        ts = rec["ts_ns"]
        us = _us(ts)
        pid = rec.get("pid")
        if t == "start":
            yield from self._name_process(SESSION_PID, "vmtrace (session)", us)
            for target in rec.get("targets") or []:
                yield from self._name_process(target["pid"], target.get("comm") or "?", us)
            yield self._instant(
                "vmtrace attached", us, SESSION_PID, SESSION_PID, "g", {"argv": rec.get("argv")}
            )
            return
        if t in ("lost", "end"):
            if t == "lost":
                name = f"lost {rec['count']} records"
                args = {"count": rec["count"], "total": rec.get("total")}
            else:
                name = f"end: {rec.get('reason')}"
                args = {"reason": rec.get("reason"), "events": rec.get("events")}
            yield self._instant(name, us, SESSION_PID, SESSION_PID, "g", args)
            return
        if pid is None:
            return
        comm = rec.get("comm")
        tid = rec.get("tid")
        if t == "exec" and comm:
            yield from self._name_process(pid, comm, us)
        elif pid not in self.process_names:
            yield from self._name_process(pid, comm or "?", us)
        if tid is not None and comm:
            yield from self._name_thread(pid, tid, comm, us)
        if t == "maps":
            total = sum(
                (int(m["end"], 16) - int(m["start"], 16)) // 1024
                for m in rec["mappings"]
                if m["path"] != "[vsyscall]"
            )
            args = {"mappings": len(rec["mappings"]), "total_kb": total}
            yield self._instant("maps at attach", us, pid, pid, "p", args)
        elif t in CHANGE_TYPES:
            yield self._counter("VmSize", us, pid, rec["total_vm_kb_after"])
            yield self._counter("VmPeak", us, pid, rec["vm_peak_kb"])
            if rec.get("rss_kb"):  # backends that follow RSS: every change record has it
                yield self._counter("VmRSS", us, pid, rec["rss_kb"])
            if rec.get("hwm_kb"):
                yield self._counter("VmHWM", us, pid, rec["hwm_kb"])
            if t in ("peak", "latch", "exec", "hwm", "fork"):
                yield self._change_instant(rec, us, pid, tid if tid is not None else pid)
        elif t in ("sample", "mismatch"):
            st = rec["status"]
            yield self._counter("VmSize", us, pid, st["VmSize"])
            yield self._counter("VmPeak", us, pid, st["VmPeak"])
            yield self._counter("VmRSS", us, pid, st["VmRSS"])
            yield self._counter("VmHWM", us, pid, st["VmHWM"])
            if t == "mismatch":
                args = {
                    "detail": rec.get("detail"),
                    "status": st,
                    "expected_vm_peak_kb": rec.get("expected_vm_peak_kb"),
                }
                yield self._instant("MISMATCH", us, pid, pid, "p", args)
        elif t == "oom":
            # Whatever the kernel said of the kill (RSS by kind, total_vm, cgroup...), as is.
            args = {k: v for k, v in rec.items() if k not in _COMMON_KEYS}
            scope, where = ("t", tid) if tid is not None else ("p", pid)
            yield self._instant(f"OOM kill of {comm or pid}", us, pid, where, scope, args)
        elif t == "exit":
            peak = rec.get("vm_peak_kb")
            shown = f"{human_kb(peak)}" if isinstance(peak, int) else "unknown"
            args = {
                "vm_peak_kb": peak,
                "source": rec.get("source"),
                "exit_status": rec.get("exit_status"),
            }
            yield self._instant(f"exit (final VmPeak {shown})", us, pid, pid, "p", args)

    def _name_process(self, pid: int, name: str, us: float) -> Iterator[dict[str, Any]]:
        if self.process_names.get(pid) != name:
            self.process_names[pid] = name
            yield {
                "name": "process_name",
                "ph": "M",
                "ts": us,
                "pid": pid,
                "tid": pid,
                "args": {"name": name},
            }

    def _name_thread(self, pid: int, tid: int, name: str, us: float) -> Iterator[dict[str, Any]]:
        if self.thread_names.get((pid, tid)) != name:
            self.thread_names[(pid, tid)] = name
            yield {
                "name": "thread_name",
                "ph": "M",
                "ts": us,
                "pid": pid,
                "tid": tid,
                "args": {"name": name},
            }

    @staticmethod
    def _counter(name: str, us: float, pid: int, kb: int) -> dict[str, Any]:
        return {"name": name, "ph": "C", "ts": us, "pid": pid, "tid": pid, "args": {"kB": kb}}

    @staticmethod
    def _instant(
        name: str, us: float, pid: int, tid: int, scope: str, args: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "name": name,
            "cat": "vmtrace",
            "ph": "i",
            "s": scope,
            "ts": us,
            "pid": pid,
            "tid": tid,
            "args": args,
        }

    def _change_instant(self, rec: Record, us: float, pid: int, tid: int) -> dict[str, Any]:
        t = rec["type"]
        m = rec.get("mapping")
        where = f" {m['path']}" if m else ""
        if t == "peak":
            rise = rec["vm_peak_kb"] - rec["vm_peak_kb_before"]
            name = f"peak: {rec['cause']}{where} +{human_kb(rise)}"
        elif t == "latch":
            name = f"latch: hiwater_vm {human_kb(rec['hiwater_vm_kb'])} by {rec['cause']}{where}"
        elif t == "hwm":
            name = f"VmHWM {human_kb(rec.get('hwm_kb') or 0)} by {rec['cause']}"
        elif t == "fork":
            name = f"fork from pid {rec.get('parent_pid')}"
        else:
            name = f"exec: VmPeak starts over at {human_kb(rec['vm_peak_kb'])}"
        args = {
            "type": t,
            "cause": rec["cause"],
            "call": _call(rec),
            "syscall": rec.get("syscall"),
            "args": rec.get("args"),
            "ret": rec.get("ret"),
            "mapping": m,
            "delta_kb": rec.get("delta_kb"),
            "vm_peak_kb_before": rec["vm_peak_kb_before"],
            "vm_peak_kb": rec["vm_peak_kb"],
            "total_vm_kb_before": rec["total_vm_kb_before"],
            "total_vm_kb_after": rec["total_vm_kb_after"],
            "hiwater_vm_kb": rec["hiwater_vm_kb"],
            "stack": rec.get("stack"),
        }
        for key in ("rss_kb", "hwm_kb", "hwm_kb_before", "rss_member", "parent_pid"):
            if rec.get(key) is not None:
                args[key] = rec[key]
        return self._instant(name, us, pid, tid, "t", args)


@dataclass
class SortStats:
    events: int = 0
    late: int = 0  # events older than one already written (beyond the reorder window)


def sorted_events(
    records: Iterable[tuple[int, Record]],
    window: int = REORDER_WINDOW,
    stats: SortStats | None = None,
) -> Iterator[dict[str, Any]]:
    """The trace events of the records, in `ts` order within `window` events."""
    conv = PerfettoConverter()
    heap: list[tuple[float, int, dict[str, Any]]] = []
    seq = 0
    last = float("-inf")
    st = stats if stats is not None else SortStats()

    def pop() -> dict[str, Any]:
        nonlocal last
        ts, _, ev = heapq.heappop(heap)
        if ts < last:
            st.late += 1
        last = max(last, ts)
        st.events += 1
        return ev

    for _line, rec in records:
        for ev in conv.events(rec):
            heapq.heappush(heap, (ev["ts"], seq, ev))
            seq += 1
            if len(heap) > window:
                yield pop()
    while heap:
        yield pop()


def write_perfetto(
    records: Iterable[tuple[int, Record]],
    out: IO[str],
    other: dict[str, Any] | None = None,
    window: int = REORDER_WINDOW,
) -> SortStats:
    """The whole trace JSON, written as the events come; `otherData` gets `other` and what
    the start record says of the trace."""
    stats = SortStats()
    info: dict[str, Any] = {}

    def tap() -> Iterator[tuple[int, Record]]:
        for line, rec in judged(records):
            if rec["type"] == "start":
                info.update(
                    vmtrace=rec.get("vmtrace"),
                    kernel=rec.get("kernel"),
                    backend=rec.get("backend"),
                    log_version=rec.get("version"),
                    clock=rec.get("clock"),
                    ts_unit="us, CLOCK_MONOTONIC",
                )
            yield line, rec

    out.write('{"traceEvents":[\n')
    first = True
    for ev in sorted_events(tap(), window, stats):
        out.write(("" if first else ",\n") + json.dumps(ev, separators=(",", ":")))
        first = False
    out.write('\n],\n"displayTimeUnit":"ms",\n"otherData":')
    out.write(json.dumps({**info, **(other or {})}, separators=(",", ":")))
    out.write("}\n")
    return stats
