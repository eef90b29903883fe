"""A log replayed through the engine that explained it live: where every offline tool
(report, plot, export) gets each record's meaning for VmPeak, so that they agree with each
other and with the live summary.

The engine is fed what the live tracer fed it, in the same order: the VmPeak /proc gave at
attach (the `maps` record of -p; none for `run`), each change as the kernel reported it,
each sample, and the kernel's final values at exit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from vmtrace.engine import PeakEngine
from vmtrace.logread import CHANGE_TYPES, Record, change_from_record, status_from_record
from vmtrace.records import Explained, ProcStatus, SampleCheck


class Replay:
    def __init__(self) -> None:
        self.engine = PeakEngine()
        # start's targets, until their `maps` record (-p) or the first other record (`run`)
        self._pending: dict[int, tuple[str, ProcStatus | None]] = {}

    def feed(self, rec: Record) -> Explained | SampleCheck | None:
        """The engine's judgement of one record: an Explained change, a SampleCheck, or
        None for records that are no change and no sample."""
        t = rec["type"]
        if t == "start":
            for target in rec.get("targets") or []:
                status = status_from_record(target) if target.get("status") else None
                self._pending[target["pid"]] = (target.get("comm") or "?", status)
            return None
        if t == "maps":
            pid = rec["pid"]
            comm, status = self._pending.pop(pid, (rec.get("comm") or "?", None))
            self.engine.start(pid, comm, status)
            return None
        if self._pending:
            # `run`: the child has no VmPeak of its own until it execs
            for pid, (comm, _) in self._pending.items():
                self.engine.start(pid, comm, None)
            self._pending.clear()
        if t in CHANGE_TYPES:
            return self.engine.explain(change_from_record(rec))
        if t in ("sample", "mismatch"):
            if isinstance(rec.get("kernel_peak_kb"), int):  # --min-delta: as the live check
                self.engine.note_kernel_peak(rec["pid"], rec["kernel_peak_kb"])
            return self.engine.check_sample(rec["ts_ns"], rec["pid"], status_from_record(rec))
        if t == "exit":
            counters = [rec.get("total_vm_kb_after"), rec.get("hiwater_vm_kb")]
            known = [v for v in counters if isinstance(v, int)]
            if known and rec.get("source") == "bpf":  # the exit record of the last thread
                self.engine.exit_counters(rec["pid"], max(known))
            kernel = rec.get("taskstats")
            if isinstance(kernel, dict):  # the kernel's last word, as live
                self.engine.final(rec["pid"], kernel["hiwater_vm_kb"], kernel["hiwater_rss_kb"])
        return None


def judged(records: Iterable[tuple[int, Record]]) -> Iterator[tuple[int, Record]]:
    """(line, record) pairs of a log, in its order, with each change record's `type`,
    `vm_peak_kb`, `vm_peak_kb_before` and `new_high` as the engine judges them (the same
    as logged, unless the log was written by a vmtrace whose rule differed)."""
    replay = Replay()
    for line, rec in records:
        e = replay.feed(rec)
        if isinstance(e, Explained):
            rec = {
                **rec,
                "type": e.type,
                "vm_peak_kb": e.vm_peak_kb,
                "vm_peak_kb_before": e.vm_peak_kb_before,
                "new_high": e.new_high,
            }
        yield line, rec
