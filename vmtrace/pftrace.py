"""`vmtrace export --format perfetto`: an event log as a Perfetto TrackEvent protobuf trace.

The same picture as the JSON export (vmtrace.export.PerfettoConverter, whose events are
translated here one by one), in Perfetto's own format, written with the protos and the
streaming builder of the `perfetto` package:
- per process, a process track with one counter track each (bytes) for VmSize, VmPeak and,
  when the log has them, VmRSS and VmHWM;
- per thread, a thread track with an instant event for each new peak, latch, exec, VmHWM rise
  and fork (and each OOM kill, when the log has them), its call, arguments, mapping and user
  stack as debug annotations; mismatches and exits on the process track; losses, the start
  and the end on a global `vmtrace` track.
Timestamps are the log's CLOCK_MONOTONIC nanoseconds, declared as the trace clock by a clock
snapshot that also gives the wall clock, so the trace lines up with perf or ftrace traces of
the same boot.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import IO, Any

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from perfetto.trace_builder.proto_builder import StreamingTraceProtoBuilder

from vmtrace.export import REORDER_WINDOW, SESSION_PID, SortStats, sorted_events
from vmtrace.logread import Record
from vmtrace.replay import judged

SEQUENCE_ID = 1
CLOCK_MONOTONIC = 3  # ClockSnapshot.Clock.BuiltinClocks
CLOCK_REALTIME = 1
SESSION_TRACK = 1
COUNTERS = ("VmSize", "VmPeak", "VmRSS", "VmHWM")
INT64_MAX = (1 << 63) - 1

# uuids: a kind in the top bits, the pid or tid below (pids are < 2**22)
_PROCESS, _THREAD, _COUNTER = 1 << 40, 2 << 40, 3 << 40


def process_uuid(pid: int) -> int:
    return _PROCESS | pid


def thread_uuid(tid: int) -> int:
    return _THREAD | tid


def counter_uuid(pid: int, name: str) -> int:
    return _COUNTER | (pid << 3) | COUNTERS.index(name)


def annotate(ann: Any, value: object) -> bool:
    """Fill a DebugAnnotation with a JSON value; False for a null (left out)."""
    if value is None:
        return False
    if isinstance(value, bool):
        ann.bool_value = value
    elif isinstance(value, int):
        if -INT64_MAX - 1 <= value <= INT64_MAX:
            ann.int_value = value
        else:
            ann.string_value = str(value)
    elif isinstance(value, float):
        ann.double_value = value
    elif isinstance(value, str):
        ann.string_value = value
    elif isinstance(value, dict):
        for k, v in value.items():
            entry = ann.dict_entries.add()
            entry.name = str(k)
            if not annotate(entry, v):
                del ann.dict_entries[-1]
    elif isinstance(value, (list, tuple)):
        for v in value:
            item = ann.array_values.add()
            if not annotate(item, v):
                item.string_value = "null"
    else:
        ann.string_value = str(value)
    return True


class ProtoWriter:
    """JSON trace events in, TracePackets out, with the track descriptors each needs first."""

    def __init__(self, out: IO[bytes]) -> None:
        self._builder = StreamingTraceProtoBuilder(out)
        self._described: dict[int, str] = {}  # uuid -> the name it was described with
        self._thread_pid: dict[int, int] = {}
        self.packets = 0

    def _packet(self, ts_ns: int | None = None) -> Any:
        p = self._builder.create_packet()
        p.trusted_packet_sequence_id = SEQUENCE_ID
        if ts_ns is not None:
            p.timestamp = ts_ns
            p.timestamp_clock_id = CLOCK_MONOTONIC
        return p

    def _write(self, p: Any) -> None:
        self._builder.write_packet(p)
        self.packets += 1

    def begin(self, start: Record | None) -> None:
        """The clock snapshot (the log's monotonic clock is the trace's) and the global
        track; first on the sequence, so it also starts the sequence's state."""
        p = self._packet()
        p.sequence_flags = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
        clock = (start or {}).get("clock") or {}
        snap = p.clock_snapshot
        snap.primary_trace_clock = CLOCK_MONOTONIC
        mono = snap.clocks.add()
        mono.clock_id = CLOCK_MONOTONIC
        mono.timestamp = int(clock.get("monotonic_ns") or (start or {}).get("ts_ns") or 0)
        if clock.get("wall_ns"):
            wall = snap.clocks.add()
            wall.clock_id = CLOCK_REALTIME
            wall.timestamp = int(clock["wall_ns"])
        self._write(p)
        self._describe_global()

    def _describe_global(self) -> None:
        p = self._packet()
        p.track_descriptor.uuid = SESSION_TRACK
        p.track_descriptor.name = "vmtrace"
        self._write(p)
        self._described[SESSION_TRACK] = "vmtrace"

    def _describe_process(self, pid: int, name: str | None) -> int:
        uuid = process_uuid(pid)
        known = self._described.get(uuid)
        if known is None or (name is not None and name != known):
            p = self._packet()
            d = p.track_descriptor
            d.uuid = uuid
            d.process.pid = pid
            d.process.process_name = name or known or "?"
            self._write(p)
            self._described[uuid] = d.process.process_name
        return uuid

    def _describe_thread(self, pid: int, tid: int, name: str | None) -> int:
        uuid = thread_uuid(tid)
        known = self._described.get(uuid)
        if known is None or self._thread_pid.get(tid) != pid or (name and name != known):
            parent = self._describe_process(pid, None)
            p = self._packet()
            d = p.track_descriptor
            d.uuid = uuid
            d.parent_uuid = parent
            d.thread.pid = pid
            d.thread.tid = tid
            d.thread.thread_name = name or known or "?"
            self._write(p)
            self._described[uuid] = d.thread.thread_name
            self._thread_pid[tid] = pid
        return uuid

    def _describe_counter(self, pid: int, name: str) -> int:
        uuid = counter_uuid(pid, name)
        if uuid not in self._described:
            parent = self._describe_process(pid, None)
            p = self._packet()
            d = p.track_descriptor
            d.uuid = uuid
            d.parent_uuid = parent
            d.name = name
            d.counter.unit = pb.CounterDescriptor.UNIT_SIZE_BYTES
            self._write(p)
            self._described[uuid] = name
        return uuid

    def event(self, ev: dict[str, Any]) -> None:
        ts_ns = round(ev["ts"] * 1000)
        pid, tid = int(ev["pid"]), int(ev["tid"])
        ph = ev["ph"]
        if ph == "M":
            name = str(ev["args"]["name"])
            if pid == SESSION_PID:
                return  # the global track has its own name
            if ev["name"] == "process_name":
                self._describe_process(pid, name)
            else:
                self._describe_thread(pid, tid, name)
            return
        if ph == "C":
            track = self._describe_counter(pid, ev["name"])
            p = self._packet(ts_ns)
            p.sequence_flags = pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
            te = p.track_event
            te.type = pb.TrackEvent.TYPE_COUNTER
            te.track_uuid = track
            te.counter_value = int(ev["args"]["kB"]) * 1024
            self._write(p)
            return
        scope = ev.get("s")
        if pid == SESSION_PID or scope == "g":
            track = SESSION_TRACK
        elif scope == "t":
            track = self._describe_thread(pid, tid, None)
        else:
            track = self._describe_process(pid, None)
        p = self._packet(ts_ns)
        p.sequence_flags = pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
        te = p.track_event
        te.type = pb.TrackEvent.TYPE_INSTANT
        te.track_uuid = track
        te.name = str(ev["name"])
        te.categories.append(str(ev.get("cat") or "vmtrace"))
        for key, value in (ev.get("args") or {}).items():
            ann = te.debug_annotations.add()
            ann.name = str(key)
            if not annotate(ann, value):
                del te.debug_annotations[-1]
        self._write(p)


def write_perfetto_proto(
    records: Iterable[tuple[int, Record]],
    out: IO[bytes],
    window: int = REORDER_WINDOW,
) -> SortStats:
    """The whole protobuf trace, written packet by packet as the events come."""
    stats = SortStats()
    writer = ProtoWriter(out)
    it = judged(records)
    first = next(it, None)
    writer.begin(first[1] if first and first[1].get("type") == "start" else None)

    def again() -> Iterator[tuple[int, Record]]:
        if first is not None:
            yield first
        yield from it

    for ev in sorted_events(again(), window, stats):
        writer.event(ev)
    return stats
