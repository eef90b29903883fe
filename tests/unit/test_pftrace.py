"""`vmtrace export --format perfetto` (vmtrace/pftrace.py): the protobuf trace, parsed back
with the protos of the `perfetto` package.

`check_proto_trace` is the structural validation (also used by
tests/integration/test_offline_tools.py on a real log): one packet sequence that starts by
clearing its state with a clock snapshot making CLOCK_MONOTONIC the trace clock, every track
described before an event uses it, threads under their process, counters in bytes.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from vmtrace.export import PerfettoConverter
from vmtrace.logread import LogReader, numbered, read_log
from vmtrace.pftrace import CLOCK_MONOTONIC, SESSION_TRACK, ProtoWriter, write_perfetto_proto

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RUN = FIXTURES / "run_small.jsonl"
ATTACH = FIXTURES / "attach_small.jsonl"
REPO = Path(__file__).resolve().parents[2]


class Parsed:
    def __init__(self, data: bytes) -> None:
        self.trace = pb.Trace()
        self.trace.ParseFromString(data)
        self.packets = list(self.trace.packet)
        self.tracks: dict[int, Any] = {}
        self.events: list[tuple[int, Any]] = []  # (timestamp, TrackEvent)
        for p in self.packets:
            if p.HasField("track_descriptor"):
                self.tracks[p.track_descriptor.uuid] = p.track_descriptor
            elif p.HasField("track_event"):
                self.events.append((p.timestamp, p.track_event))

    def instants(self, prefix: str = "") -> list[tuple[int, Any]]:
        return [
            (ts, e)
            for ts, e in self.events
            if e.type == pb.TrackEvent.TYPE_INSTANT and e.name.startswith(prefix)
        ]

    def counters(self) -> dict[tuple[int, str], list[int]]:
        """(pid, counter name) -> values in bytes, in trace order."""
        out: dict[tuple[int, str], list[int]] = defaultdict(list)
        for _ts, e in self.events:
            if e.type == pb.TrackEvent.TYPE_COUNTER:
                track = self.tracks[e.track_uuid]
                pid = self.tracks[track.parent_uuid].process.pid
                out[(pid, track.name)].append(e.counter_value)
        return out


def annotations(event: Any) -> dict[str, Any]:
    return {a.name: value(a) for a in event.debug_annotations}


def value(a: Any) -> Any:
    if a.dict_entries:
        return {e.name: value(e) for e in a.dict_entries}
    if a.array_values:
        return [value(v) for v in a.array_values]
    kind = a.WhichOneof("value")
    return getattr(a, kind) if kind else None


def check_proto_trace(data: bytes) -> Parsed:
    t = Parsed(data)
    assert t.packets, "no packets"
    first = t.packets[0]
    assert first.sequence_flags & pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
    assert first.clock_snapshot.primary_trace_clock == CLOCK_MONOTONIC
    assert CLOCK_MONOTONIC in {c.clock_id for c in first.clock_snapshot.clocks}
    described: set[int] = set()
    last_ts = 0
    for p in t.packets:
        assert p.trusted_packet_sequence_id == 1
        if p.HasField("track_descriptor"):
            d = p.track_descriptor
            if d.parent_uuid:
                assert d.parent_uuid in described, f"parent described later: {d}"
            if d.HasField("thread"):
                assert t.tracks[d.parent_uuid].process.pid == d.thread.pid
                assert d.thread.thread_name
            if d.HasField("process"):
                assert d.process.process_name
            if d.HasField("counter"):
                assert d.counter.unit == pb.CounterDescriptor.UNIT_SIZE_BYTES
                assert d.name in ("VmSize", "VmPeak", "VmRSS", "VmHWM")
            described.add(d.uuid)
        elif p.HasField("track_event"):
            assert p.timestamp_clock_id == CLOCK_MONOTONIC
            assert p.timestamp >= last_ts, "events go back in time"
            last_ts = p.timestamp
            e = p.track_event
            assert e.track_uuid in described, f"event on an undescribed track: {e}"
            if e.type == pb.TrackEvent.TYPE_INSTANT:
                assert e.name and list(e.categories) == ["vmtrace"]
            else:
                assert e.type == pb.TrackEvent.TYPE_COUNTER and e.counter_value >= 0
    return t


def proto_of(path: Path) -> Parsed:
    out = io.BytesIO()
    write_perfetto_proto(numbered(LogReader(path)), out)
    return check_proto_trace(out.getvalue())


def test_counters_per_process_in_bytes() -> None:
    t = proto_of(RUN)
    recs = list(read_log(RUN))
    counters = t.counters()
    changes = [r for r in recs if r.get("total_vm_kb_after") is not None and r["type"] != "exit"]
    assert len(counters[(100, "VmSize")]) == len(changes)
    end = recs[-1]
    assert counters[(100, "VmPeak")][-1] == end["summary"][0]["vm_peak_kb"] * 1024
    samples = [r["status"] for r in recs if r["type"] == "sample"]
    assert counters[(100, "VmRSS")] == [s["VmRSS"] * 1024 for s in samples]
    assert counters[(100, "VmHWM")] == [s["VmHWM"] * 1024 for s in samples]


def test_one_instant_per_peak_with_call_mapping_and_stack() -> None:
    t = proto_of(RUN)
    peaks = [r for r in read_log(RUN) if r["type"] == "peak"]
    instants = t.instants("peak: ")
    assert len(instants) == len(peaks) > 0
    for rec, (ts, ev) in zip(peaks, instants, strict=True):
        assert ts == rec["ts_ns"]
        track = t.tracks[ev.track_uuid]
        assert (track.thread.pid, track.thread.tid) == (rec["pid"], rec["tid"])
        ann = annotations(ev)
        assert ann["cause"] == rec["cause"]
        assert ann["vm_peak_kb"] == rec["vm_peak_kb"]
        # annotations leave out the fields a frame does not know (None)
        frames = [{k: v for k, v in f.items() if v is not None} for f in rec["stack"] or []]
        assert ann.get("stack") == frames or (not frames and "stack" not in ann)
        m = rec["mapping"]
        if m:
            assert ann["mapping"]["path"] == m["path"] and ann["mapping"]["start"] == m["start"]
        assert {k: v for k, v in (rec["args"] or {}).items() if v is not None} == (
            ann.get("args") or {}
        )
        assert ann["call"].startswith(rec["syscall"] or rec["cause"].split(":")[-1])


def test_latches_execs_and_the_session() -> None:
    t = proto_of(RUN)
    recs = list(read_log(RUN))
    assert len(t.instants("latch: ")) == sum(r["type"] == "latch" for r in recs)
    execs = t.instants("exec: ")
    assert len(execs) == sum(r["type"] == "exec" for r in recs) == 1
    # exec renamed the process: its track has the new name, its thread too
    proc = {d.process.pid: d.process.process_name for d in t.tracks.values() if d.process.pid}
    assert proc[100] == "job"
    assert {d.thread.tid: d.thread.thread_name for d in t.tracks.values() if d.thread.tid}[
        101
    ] == "worker"
    session = [e.name for _ts, e in t.events if e.track_uuid == SESSION_TRACK]
    assert session[0] == "vmtrace attached" and session[-1] == "end: targets-exited"


def test_an_oom_record_is_an_instant_with_what_it_says() -> None:
    out = io.BytesIO()
    w = ProtoWriter(out)
    w.begin(None)
    conv = PerfettoConverter()
    oom = {
        "type": "oom",
        "ts_ns": 5_000_000_000,
        "pid": 300,
        "tid": 300,
        "comm": "hog",
        "rss_kb": {"anon": 204_000, "file": 1_000, "shmem": 0},
        "total_vm_kb": 300_000,
        "cgroup": "/sys/fs/cgroup/limited",
        "stack": ["#0 memset [libc.so.6]"],
    }
    for ev in conv.events(oom):
        w.event(ev)
    t = check_proto_trace(out.getvalue())
    [(ts, ev)] = t.instants("OOM kill of hog")
    assert ts == 5_000_000_000
    ann = annotations(ev)
    assert ann["rss_kb"] == oom["rss_kb"] and ann["total_vm_kb"] == 300_000
    assert ann["stack"] == oom["stack"] and ann["cgroup"] == oom["cgroup"]


def test_an_attach_log() -> None:
    t = proto_of(ATTACH)
    assert t.instants("maps at attach")
    assert {pid for pid, _ in t.counters()} == {
        r["pid"] for r in read_log(ATTACH) if r["type"] in ("baseline", "peak", "sample")
    }


def test_cli_export_perfetto_is_protobuf_perfetto_json_is_json(tmp_path: Path) -> None:
    def export(fmt: str, out: Path) -> None:
        res = subprocess.run(
            [sys.executable, "-m", "vmtrace", "export", "--format", fmt, "-o", str(out), str(RUN)],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        assert res.returncode == 0 and res.stderr == "", res.stderr

    export("perfetto", tmp_path / "t.pftrace")
    t = check_proto_trace((tmp_path / "t.pftrace").read_bytes())
    assert len(t.instants("peak: ")) == 7
    assert oct((tmp_path / "t.pftrace").stat().st_mode & 0o777) == "0o600"
    export("perfetto-json", tmp_path / "t.json")
    assert (tmp_path / "t.json").read_text().startswith('{"traceEvents":[')


def test_a_binary_trace_is_not_written_to_a_terminal() -> None:
    import os
    import pty

    leader, follower = pty.openpty()
    try:
        res = subprocess.run(
            [sys.executable, "-m", "vmtrace", "export", "--format", "perfetto", str(RUN)],
            stdout=follower,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            check=False,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert res.returncode == 1
    assert res.stderr == (
        "vmtrace: failed to export: a protobuf trace is binary, not for a terminal "
        "(fix: -o FILE.pftrace, or redirect stdout)\n"
    )
