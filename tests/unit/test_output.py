"""Log records (schema.py, docs/log-schema.md), sinks (console, JSONL, open_log) and units."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmtrace import schema
from vmtrace.engine import PeakEngine
from vmtrace.errors import OutputError
from vmtrace.procfs import ProcessInfo
from vmtrace.records import Change, Explained, Mapping, ProcStatus, SampleCheck, Tally
from vmtrace.sinks import ConsoleSink, JsonlSink, describe_call, open_log
from vmtrace.syscalls import decode_args
from vmtrace.units import WallClock, human_bytes, human_kb
from vmtrace.unwind import Frame

CLOCK = WallClock(monotonic_ns=1_000_000_000, wall_ns=1_700_000_000_000_000_000)
TS = 2_500_000_000  # -> 2023-11-14T22:13:21.500000+00:00
TS_ISO = "2023-11-14T22:13:21.500000+00:00"
ADDR = 0x7F12_3400_0000
MIB64 = 64 * 1024 * 1024
ANON = Mapping(ADDR, ADDR + MIB64, "rw-p", "[anon]")
PID, TID = 4242, 4243
LIBC_PATH = "/usr/lib/x86_64-linux-gnu/libc.so.6"
JOB_PATH = "/opt/job/bin/job"
STACK = (
    Frame(0x7F00_0001_1A2B, "__mmap64", 0x13, LIBC_PATH, 0x11A2B),
    Frame(0x5555_5555_1234, "main", 0x14, JOB_PATH, 0x1234, "job.c", 42),
    Frame(0x5555_5555_3A2B, None, None, JOB_PATH, 0x3A2B),
)

COMMON = (
    "type",
    "ts_ns",
    "time",
    "pid",
    "tid",
    "comm",
    "total_vm_kb_before",
    "total_vm_kb_after",
    "vm_peak_kb",
    "hiwater_vm_kb",
)
CHANGE_FIELDS = (
    "cause",
    "syscall",
    "args",
    "ret",
    "delta_kb",
    "vm_peak_kb_before",
    "hiwater_vm_kb_before",
    "stack_vm_kb_before",
    "stack_vm_kb_after",
    "mapping",
    "stack",
)


def mmap_change(ts: int = TS) -> Change:
    return Change(
        kind="change",
        ts_ns=ts,
        pid=PID,
        tid=TID,
        comm="job",
        cause="mmap",
        syscall="mmap",
        args=decode_args("mmap", (0, MIB64, 3, 0x22, (1 << 64) - 1, 0)),
        ret=ADDR,
        total_vm_kb_before=10_000,
        total_vm_kb_after=75_536,
        hiwater_vm_kb_before=0,
        hiwater_vm_kb_after=0,
        stack_vm_kb_before=132,
        stack_vm_kb_after=132,
        kernel_peak_kb_before=10_000,
        mapping=ANON,
        stack=STACK,
    )


def munmap_change(ts: int = TS + 1000) -> Change:
    return Change(
        kind="change",
        ts_ns=ts,
        pid=PID,
        tid=TID,
        comm="job",
        cause="munmap",
        syscall="munmap",
        args=decode_args("munmap", (ADDR, MIB64)),
        ret=0,
        total_vm_kb_before=75_536,
        total_vm_kb_after=10_000,
        hiwater_vm_kb_before=0,
        hiwater_vm_kb_after=75_536,
        stack_vm_kb_before=132,
        stack_vm_kb_after=132,
        kernel_peak_kb_before=75_536,
        mapping=ANON,
    )


def grow_change(ts: int = TS + 2000) -> Change:
    return Change(
        kind="change",
        ts_ns=ts,
        pid=PID,
        tid=TID,
        comm="job",
        cause="brk",
        syscall="brk",
        args={"brk": "0x555555600000"},
        ret=0x5555_5560_0000,
        total_vm_kb_before=10_000,
        total_vm_kb_after=10_132,
        hiwater_vm_kb_before=75_536,
        hiwater_vm_kb_after=75_536,
        stack_vm_kb_before=132,
        stack_vm_kb_after=132,
        kernel_peak_kb_before=75_536,
        mapping=Mapping(0x5555_555DF000, 0x5555_5560_0000, "rw-p", "[heap]"),
    )


@pytest.fixture
def engine_and_records() -> tuple[PeakEngine, list[Explained]]:
    eng = PeakEngine()
    eng.start(PID, "job", ProcStatus(10_000, 10_000, 500, 500))
    recs = [eng.explain(c) for c in (mmap_change(), munmap_change(), grow_change())]
    assert [r.type for r in recs] == ["peak", "latch", "grow"]
    return eng, recs


# -- schema -------------------------------------------------------------------------------


def test_peak_record_is_exactly_as_documented(
    engine_and_records: tuple[PeakEngine, list[Explained]],
) -> None:
    _, (peak, _, _) = engine_and_records
    rec = schema.explained_record(peak, CLOCK)
    assert rec == {
        "type": "peak",
        "ts_ns": TS,
        "time": TS_ISO,
        "pid": PID,
        "tid": TID,
        "comm": "job",
        "total_vm_kb_before": 10_000,
        "total_vm_kb_after": 75_536,
        "vm_peak_kb": 75_536,
        "hiwater_vm_kb": 0,
        "cause": "mmap",
        "syscall": "mmap",
        "args": {
            "addr": "0x0",
            "len": MIB64,
            "prot": "rw-",
            "flags": "private|anon",
            "fd": -1,
            "offset": 0,
        },
        "ret": "0x7f1234000000",
        "delta_kb": 65_536,
        "vm_peak_kb_before": 10_000,
        "kernel_peak_kb_before": 10_000,
        "new_high": True,
        "hiwater_vm_kb_before": 0,
        "stack_vm_kb_before": 132,
        "stack_vm_kb_after": 132,
        "mapping": {
            "start": "0x7f1234000000",
            "end": "0x7f1238000000",
            "perms": "rw-p",
            "offset": 0,
            "path": "[anon]",
        },
        "stack": [
            {
                "address": "0x7f0000011a2b",
                "function": "__mmap64",
                "offset": 0x13,
                "module": LIBC_PATH,
                "module_offset": 0x11A2B,
            },
            {
                "address": "0x555555551234",
                "function": "main",
                "offset": 0x14,
                "module": JOB_PATH,
                "module_offset": 0x1234,
                "file": "job.c",
                "line": 42,
            },
            {
                "address": "0x555555553a2b",
                "function": None,
                "offset": None,
                "module": JOB_PATH,
                "module_offset": 0x3A2B,
            },
        ],
        "rss_kb": 0,
        "hwm_kb": 0,
        "mm_id": None,
    }
    json.dumps(rec)  # serialisable as is


def test_latch_record_keeps_int_ret_and_hiwater(
    engine_and_records: tuple[PeakEngine, list[Explained]],
) -> None:
    _, (_, latch, _) = engine_and_records
    rec = schema.explained_record(latch, CLOCK)
    assert rec["type"] == "latch"
    assert rec["ret"] == 0  # not an address: an int
    assert (rec["hiwater_vm_kb_before"], rec["hiwater_vm_kb"]) == (0, 75_536)
    assert (rec["vm_peak_kb_before"], rec["vm_peak_kb"]) == (75_536, 75_536)
    assert rec["delta_kb"] == -65_536
    assert rec["args"] == {"addr": "0x7f1234000000", "len": MIB64}
    assert rec["stack"] is None


def test_failed_mmap_ret_is_a_negative_int() -> None:
    c = mmap_change()
    failed = Change(**{**{f: getattr(c, f) for f in c.__slots__}, "ret": -12, "mapping": None})
    rec = schema.explained_record(Explained("grow", failed, 10_000, 10_000), CLOCK)
    assert rec["ret"] == -12
    assert rec["mapping"] is None


def _info() -> ProcessInfo:
    return ProcessInfo(PID, "job", ("./job", "--big"), 12345, {PID: "job", TID: "worker"})


def all_records(eng: PeakEngine, recs: list[Explained]) -> Iterator[dict[str, Any]]:
    status = ProcStatus(75_536, 10_132, 700, 600)
    yield schema.start_record(
        CLOCK,
        vmtrace_version="0.1.0",
        kernel="6.18.44",
        backend="tracepoint",
        backend_reason="test",
        page_size=4096,
        user={"uid": 0, "name": "root"},
        argv=["vmtrace", "-p", str(PID)],
        targets=[(_info(), status)],
        attach_seconds=0.1234,
        interval=1.0,
    )
    yield schema.maps_record(CLOCK, TS, PID, "job", [ANON])
    for r in recs:
        yield schema.explained_record(r, CLOCK)
    yield schema.sample_record(SampleCheck(TS, PID, status, 75_536, True, False), CLOCK, "job")
    yield schema.sample_record(SampleCheck(TS, PID, status, 70_000, False, True), CLOCK, "job")
    yield schema.lost_record(CLOCK, TS, 3, 5, {"changes": 5}, {PID: 4, 77: 1})
    yield schema.exit_record(CLOCK, TS, PID, "job", 75_536, "proc", recs[-1], None)
    yield schema.end_record(CLOCK, TS, "interrupted", 3, 5, eng.summary())


def test_every_record_has_the_common_fields(
    engine_and_records: tuple[PeakEngine, list[Explained]],
) -> None:
    eng, recs = engine_and_records
    types = []
    for rec in all_records(eng, recs):
        types.append(rec["type"])
        assert tuple(rec)[: len(COMMON)] == COMMON, rec["type"]
        assert rec["time"] == CLOCK.iso(rec["ts_ns"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", rec["time"])
        json.loads(json.dumps(rec))
    assert types == [
        "start",
        "maps",
        "peak",
        "latch",
        "grow",
        "sample",
        "mismatch",
        "lost",
        "exit",
        "end",
    ]


def test_change_records_have_the_change_fields(
    engine_and_records: tuple[PeakEngine, list[Explained]],
) -> None:
    _, recs = engine_and_records
    for r in recs:
        rec = schema.explained_record(r, CLOCK)
        assert set(CHANGE_FIELDS) <= set(rec), r.type
        assert rec["delta_kb"] == rec["total_vm_kb_after"] - rec["total_vm_kb_before"]


def test_addresses_are_hex_strings(
    engine_and_records: tuple[PeakEngine, list[Explained]],
) -> None:
    eng, recs = engine_and_records
    for rec in all_records(eng, recs):
        for m in [rec.get("mapping"), *(rec.get("mappings") or [])]:
            if m:
                assert re.fullmatch(r"0x[0-9a-f]+", m["start"]), m
                assert re.fullmatch(r"0x[0-9a-f]+", m["end"]), m
        if rec["type"] in ("peak", "grow") and rec["syscall"] in ("mmap", "brk"):
            assert isinstance(rec["ret"], str) and rec["ret"].startswith("0x")


def test_session_records_have_null_pid(
    engine_and_records: tuple[PeakEngine, list[Explained]],
) -> None:
    eng, recs = engine_and_records
    by_type = {rec["type"]: rec for rec in all_records(eng, recs)}
    for t in ("lost", "end"):
        assert by_type[t]["pid"] is None
        assert by_type[t]["total_vm_kb_after"] is None
    assert (by_type["lost"]["count"], by_type["lost"]["total"]) == (3, 5)


def test_start_record_fields(engine_and_records: tuple[PeakEngine, list[Explained]]) -> None:
    eng, recs = engine_and_records
    start = next(all_records(eng, recs))
    assert start["version"] == schema.SCHEMA_VERSION == 5
    assert (start["vmtrace"], start["kernel"], start["backend"]) == (
        "0.1.0",
        "6.18.44",
        "tracepoint",
    )
    assert start["page_size"] == 4096
    assert start["clock"] == {
        "monotonic_ns": 1_000_000_000,
        "wall_ns": 1_700_000_000_000_000_000,
        "wall_time": "2023-11-14T22:13:20.000000+00:00",
    }
    assert start["user"] == {"uid": 0, "name": "root"}
    assert start["argv"] == ["vmtrace", "-p", "4242"]
    (t,) = start["targets"]
    assert (t["pid"], t["comm"], t["cmdline"]) == (PID, "job", ["./job", "--big"])
    assert t["status"] == {"VmPeak": 75_536, "VmSize": 10_132, "VmHWM": 700, "VmRSS": 600}


def test_maps_record_has_offsets() -> None:
    lib = Mapping(0x7F00_0000_0000, 0x7F00_0002_8000, "r-xp", "/usr/lib/libc.so.6", 0x28000)
    rec = schema.maps_record(CLOCK, TS, PID, "job", [lib])
    assert rec["mappings"] == [
        {
            "start": "0x7f0000000000",
            "end": "0x7f0000028000",
            "perms": "r-xp",
            "offset": 0x28000,
            "path": "/usr/lib/libc.so.6",
        }
    ]


def test_sample_and_mismatch_records(
    engine_and_records: tuple[PeakEngine, list[Explained]],
) -> None:
    eng, recs = engine_and_records
    by_type = {rec["type"]: rec for rec in all_records(eng, recs)}
    s = by_type["sample"]
    assert (s["expected_vm_peak_kb"], s["match"], s["vm_peak_kb"]) == (75_536, True, 75_536)
    assert s["status"] == {"VmPeak": 75_536, "VmSize": 10_132, "VmHWM": 700, "VmRSS": 600}
    assert "detail" not in s
    m = by_type["mismatch"]
    assert (m["expected_vm_peak_kb"], m["match"]) == (70_000, False)
    assert m["detail"] == (
        "/proc/4242/status says VmPeak 75536 kB, the events say 70000 kB (twice in a row)"
    )


def test_exit_and_end_records(engine_and_records: tuple[PeakEngine, list[Explained]]) -> None:
    eng, recs = engine_and_records
    by_type = {rec["type"]: rec for rec in all_records(eng, recs)}
    ex = by_type["exit"]
    assert (ex["source"], ex["vm_peak_kb"], ex["tid"], ex["total_vm_kb_after"]) == (
        "proc",
        75_536,
        TID,
        10_132,
    )
    end = by_type["end"]
    assert (end["reason"], end["events"], end["lost"]) == ("interrupted", 3, 5)
    (s,) = end["summary"]
    assert (s["pid"], s["vm_peak_kb"], s["peaks"], s["latches"]) == (PID, 75_536, 1, 1)
    assert s["set_by"]["time"] == TS_ISO
    assert (s["set_by"]["tid"], s["set_by"]["cause"], s["set_by"]["rise_kb"]) == (
        TID,
        "mmap",
        65_536,
    )
    assert s["set_by"]["delta_kb"] == 65_536  # the mmap's own size: total_vm's change
    assert s["top_causes"] == [
        {"cause": "mmap", "mapping": "[anon]", "kb": 65_536},
        {"cause": "(VmPeak when vmtrace attached)", "mapping": "", "kb": 10_000},
    ]


# -- console ------------------------------------------------------------------------------

_T = r"\d\d:\d\d:\d\d\.\d{3}"


def console(records: list[dict[str, Any]], verbose: int = 0, stack_depth: int = 8) -> list[str]:
    out = io.StringIO()
    sink = ConsoleSink(out, CLOCK, verbose, stack_depth=stack_depth)
    for r in records:
        sink.write(r)
    sink.close()
    return out.getvalue().splitlines()


def test_console_peak(engine_and_records: tuple[PeakEngine, list[Explained]]) -> None:
    _, (peak, _, _) = engine_and_records
    lines = console([schema.explained_record(peak, CLOCK)])
    assert len(lines) == 5
    head, call, f0, f1, f2 = lines
    assert " PEAK " in head
    assert "[75536 kB]" in head
    assert "tid 4243" in head
    assert re.fullmatch(
        _T + r" PEAK  VmPeak 9\.77 MiB -> 73\.77 MiB \(\+64\.00 MiB\) \[75536 kB\]  "
        r"pid 4242 tid 4243 job",
        head,
    ), head
    assert call == (
        "    mmap(NULL, 64.00 MiB, rw-, private|anon) = 0x7f1234000000"
        "  [anon] 0x7f1234000000-0x7f1238000000 rw-p"
    )
    assert f0 == f"      #0 __mmap64+0x13 ({LIBC_PATH})"
    assert f1 == f"      #1 main+0x14 ({JOB_PATH}) at job.c:42"
    assert f2 == f"      #2 {JOB_PATH}+0x3a2b"  # no symbol: where in the file, not an address


def deep_peak(frames: int) -> dict[str, Any]:
    c = mmap_change()
    stack = tuple(
        Frame(0x5555_5555_0000 + i, f"f{i}", i, JOB_PATH, 0x1000 + i) for i in range(frames)
    )
    e = Explained(
        "peak",
        Change(**{**{f: getattr(c, f) for f in c.__slots__}, "stack": stack}),
        10_000,
        75_536,
    )
    return schema.explained_record(e, CLOCK)


@pytest.mark.parametrize(
    ("frames", "depth", "shown", "more"),
    [
        (20, 8, 8, "... 12 more"),
        (8, 8, 8, None),
        (9, 8, 8, "... 1 more"),
        (3, 1, 1, "... 2 more"),
        (20, 0, 0, None),
        (0, 8, 0, None),
    ],
)
def test_console_stack_depth(frames: int, depth: int, shown: int, more: str | None) -> None:
    lines = console([deep_peak(frames)], stack_depth=depth)[2:]
    assert lines[:shown] == [f"      #{i} f{i}+0x{i:x} ({JOB_PATH})" for i in range(shown)]
    assert lines[shown:] == ([f"      {more}"] if more else [])


def test_console_latch_and_hwm_show_their_stacks(
    engine_and_records: tuple[PeakEngine, list[Explained]],
) -> None:
    _, (_, latch, _) = engine_and_records
    c = latch.change
    with_stack = Explained(
        "latch",
        Change(**{**{f: getattr(c, f) for f in c.__slots__}, "stack": STACK[:2]}),
        latch.vm_peak_kb_before,
        latch.vm_peak_kb,
    )
    lines = console([schema.explained_record(with_stack, CLOCK)], stack_depth=1)
    assert lines[2:] == [f"      #0 __mmap64+0x13 ({LIBC_PATH})", "      ... 1 more"]
    hwm = dict(
        schema.explained_record(with_stack, CLOCK),
        type="hwm",
        hwm_kb_before=100,
        hwm_kb=2000,
        rss_member="anon",
        syscall=None,
    )
    lines = console([hwm])
    assert lines[1] == "    anon pages brought in by page faults"
    assert lines[2:] == [
        f"      #0 __mmap64+0x13 ({LIBC_PATH})",
        f"      #1 main+0x14 ({JOB_PATH}) at job.c:42",
    ]


def test_console_shows_version_1_frames_as_they_were_logged() -> None:
    rec = dict(deep_peak(0), stack=["__mmap64+0x13 [libc.so.6]", "main+0x10 [job]"])
    assert console([rec])[2:] == ["      #0 __mmap64+0x13 [libc.so.6]", "      #1 main+0x10 [job]"]


def test_console_latch(engine_and_records: tuple[PeakEngine, list[Explained]]) -> None:
    _, (_, latch, _) = engine_and_records
    lines = console([schema.explained_record(latch, CLOCK)])
    assert len(lines) == 2
    assert " LATCH " in lines[0]
    assert re.fullmatch(
        _T + r" LATCH hiwater_vm 73\.77 MiB recorded \[75536 kB\]  pid 4242 tid 4243 job",
        lines[0],
    ), lines[0]
    assert lines[1] == (
        "    munmap(0x7f1234000000, 64.00 MiB) = 0  total_vm 73.77 MiB -> 9.77 MiB"
        "  [anon] 0x7f1234000000-0x7f1238000000 rw-p"
    )


def test_console_grow_is_silent_unless_verbose(
    engine_and_records: tuple[PeakEngine, list[Explained]],
) -> None:
    _, (_, _, grow) = engine_and_records
    rec = schema.explained_record(grow, CLOCK)
    assert console([rec]) == []
    (line,) = console([rec], verbose=1)
    assert re.fullmatch(
        _T + r" GROW  total_vm 9\.77 MiB -> 9\.89 MiB  pid 4242 tid 4243 job  "
        r"brk\(0x555555600000\) = 0x555555600000  \[heap\] 0x5555555df000-0x555555600000 rw-p",
        line,
    ), line


def test_console_sample_only_verbose(
    engine_and_records: tuple[PeakEngine, list[Explained]],
) -> None:
    eng, recs = engine_and_records
    by_type = {rec["type"]: rec for rec in all_records(eng, recs)}
    assert console([by_type["sample"]]) == []
    (line,) = console([by_type["sample"]], verbose=1)
    assert line.endswith(" SAMPLE pid 4242 VmPeak 75536 kB (events: 75536 kB) ok")
    (mm,) = console([by_type["mismatch"]])
    assert mm.endswith(
        " MISMATCH pid 4242: /proc/4242/status says VmPeak 75536 kB, the events say 70000 kB"
        " (twice in a row)"
    )


def test_console_lost_exit_and_end(
    engine_and_records: tuple[PeakEngine, list[Explained]],
) -> None:
    eng, recs = engine_and_records
    by_type = {rec["type"]: rec for rec in all_records(eng, recs)}
    (lost,) = console([by_type["lost"]])
    assert lost.endswith(
        " LOST  3 records dropped by the kernel (ring buffer full; 5 in all, pid 77: 1, "
        "pid 4242: 4): the address space shown may miss mappings; VmPeak stays exact"
    )
    assert by_type["lost"]["by_pid"] == {"77": 1, "4242": 4}
    (ex,) = console([by_type["exit"]])
    assert ex.endswith(" EXIT  pid 4242 job: final VmPeak 73.77 MiB [75536 kB]")
    assert console([by_type["end"]]) == [
        "--- vmtrace summary (interrupted; 3 events, 5 lost)",
        "pid 4242 job: VmPeak 73.77 MiB [75536 kB], 1 new peaks, 1 latches",
        f"  set by mmap [anon] in tid 4243 job at {TS_ISO} (+64.00 MiB)",
        "  largest contributors to the peak:",
        "     64.00 MiB  mmap  [anon]",
        "      9.77 MiB  (VmPeak when vmtrace attached)",
    ]


def test_console_exit_with_unknown_peak() -> None:
    rec = schema.exit_record(CLOCK, TS, PID, "job", None, "wait", None, 0)
    assert rec["tid"] is None and rec["exit_status"] == 0
    (line,) = console([rec])
    assert line.endswith(" EXIT  pid 4242 job: final VmPeak unknown")


def test_console_exec(engine_and_records: tuple[PeakEngine, list[Explained]]) -> None:
    eng, _ = engine_and_records
    c = Change(
        kind="exec",
        ts_ns=TS,
        pid=PID,
        tid=PID,
        comm="new",
        cause="execve",
        syscall="execve",
        args=None,
        ret=0,
        total_vm_kb_before=10_132,
        total_vm_kb_after=2048,
        hiwater_vm_kb_before=75_536,
        hiwater_vm_kb_after=0,
        stack_vm_kb_before=132,
        stack_vm_kb_after=132,
        kernel_peak_kb_before=75_536,
    )
    (line,) = console([schema.explained_record(eng.explain(c), CLOCK)])
    assert line.endswith(
        " EXEC  new address space, VmPeak starts over at 2.00 MiB [2048 kB] (was 73.77 MiB)"
        "  pid 4242 tid 4242 new"
    )


@pytest.mark.parametrize(
    ("rec", "text"),
    [
        ({"cause": "stack-growth", "syscall": None}, "stack growth (page fault)"),
        ({"cause": "stack-growth", "syscall": "read"}, "stack growth in read()"),
        ({"cause": "fault", "syscall": None}, "page fault (no syscall)"),
        ({"cause": "syscall:io_setup", "syscall": "io_setup"}, "io_setup() (untraced syscall)"),
        (
            {
                "cause": "mmap",
                "syscall": "mmap",
                "ret": "0x7f0000000000",
                "args": {
                    "addr": "0x7f0000000000",
                    "len": 8192,
                    "prot": "r--",
                    "flags": "shared|fixed",
                    "fd": 5,
                    "offset": 0,
                },
            },
            "mmap(0x7f0000000000, 8 kB, r--, shared|fixed, fd 5) = 0x7f0000000000",
        ),
        (
            {
                "cause": "mremap",
                "syscall": "mremap",
                "ret": "0x7f0000000000",
                "args": {
                    "old_addr": "0x7e0000000000",
                    "old_len": 4096,
                    "new_len": 1 << 20,
                    "flags": "maymove",
                    "new_addr": "0x0",
                },
            },
            "mremap(0x7e0000000000, 4 kB -> 1.00 MiB, maymove) = 0x7f0000000000",
        ),
        (
            {
                "cause": "shmat",
                "syscall": "shmat",
                "ret": "0x7f0000000000",
                "args": {"shmid": 7, "addr": "0x0", "flags": "0x0"},
            },
            "shmat(shmid 7, NULL, 0x0) = 0x7f0000000000",
        ),
        (
            {"cause": "shmdt", "syscall": "shmdt", "ret": 0, "args": {"addr": "0x7f0000000000"}},
            "shmdt(0x7f0000000000) = 0",
        ),
        ({"cause": "mmap", "syscall": "mmap", "ret": -12, "args": None}, "mmap() = -12"),
    ],
)
def test_describe_call(rec: dict[str, Any], text: str) -> None:
    assert describe_call(rec) == text


# -- open_log and JSONL -------------------------------------------------------------------


@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_open_log_creates_0600(tmp_path: Path, umask022: None) -> None:
    p = tmp_path / "log.jsonl"
    with open_log(str(p), force=False) as f:
        f.write("x\n")
    assert p.stat().st_mode & 0o777 == 0o600
    assert p.read_text() == "x\n"


def test_open_log_refuses_existing_without_force(tmp_path: Path) -> None:
    p = tmp_path / "log.jsonl"
    p.write_text("precious\n")
    with pytest.raises(OutputError) as ei:
        open_log(str(p), force=False)
    msg = str(ei.value)
    assert "--force" in msg
    assert "\n" not in msg
    assert msg == f"failed to create {p}: it exists (fix: choose another -o, or add --force)"
    assert p.read_text() == "precious\n"


def test_open_log_overwrites_with_force(tmp_path: Path) -> None:
    p = tmp_path / "log.jsonl"
    p.write_text("old old old\n")
    with open_log(str(p), force=True) as f:
        f.write("new\n")
    assert p.read_text() == "new\n"


@pytest.mark.parametrize("force", [True, False])
def test_open_log_refuses_a_symlink(tmp_path: Path, force: bool) -> None:
    target = tmp_path / "target"
    target.write_text("keep\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    with pytest.raises(OutputError) as ei:
        open_log(str(link), force=force)
    assert ("symlink" if force else "--force") in str(ei.value)
    assert target.read_text() == "keep\n"
    assert link.is_symlink()


def test_open_log_refuses_a_dangling_symlink_with_force(tmp_path: Path) -> None:
    link = tmp_path / "link.jsonl"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="symlink"):
        open_log(str(link), force=True)
    assert not (tmp_path / "nowhere").exists()


def test_open_log_in_a_missing_directory(tmp_path: Path) -> None:
    p = tmp_path / "no" / "log.jsonl"
    with pytest.raises(OutputError, match=r"^failed to create .*: No such file or directory$"):
        open_log(str(p), force=False)


def test_jsonl_sink_one_object_per_line(
    tmp_path: Path, engine_and_records: tuple[PeakEngine, list[Explained]]
) -> None:
    eng, recs = engine_and_records
    p = tmp_path / "log.jsonl"
    sink = JsonlSink(open_log(str(p), force=False), str(p))
    expected = list(all_records(eng, recs))
    for rec in expected:
        sink.write(rec)
    sink.flush()
    sink.close()
    text = p.read_text()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == len(expected) == 10
    assert [json.loads(ln) for ln in lines] == json.loads(json.dumps(expected))
    assert all(ln.startswith('{"type":') for ln in lines)


class _FullDisk(io.StringIO):
    def write(self, s: str) -> int:
        raise OSError(28, "No space left on device")


def test_jsonl_sink_write_error_is_an_output_error() -> None:
    sink = JsonlSink(_FullDisk(), "out.jsonl")
    with pytest.raises(OutputError, match=r"^failed to write out\.jsonl: No space left on device$"):
        sink.write({"type": "lost"})


# -- units --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kb", "text"),
    [
        (0, "0 kB"),
        (1023, "1023 kB"),
        (1024, "1.00 MiB"),
        (10_000, "9.77 MiB"),
        (65_536, "64.00 MiB"),
        (1_048_576, "1.00 GiB"),
        (1_331_200, "1.27 GiB"),
        (-2048, "-2.00 MiB"),
        (-5, "-5 kB"),
    ],
)
def test_human_kb(kb: int, text: str) -> None:
    assert human_kb(kb) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1 kB"), (1536, "1.5 kB"), (MIB64, "64.00 MiB")],
)
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


def test_wall_clock() -> None:
    assert CLOCK.wall_ns_of(TS) == 1_700_000_001_500_000_000
    assert CLOCK.iso(1_000_123_456) == "2023-11-14T22:13:20.000123+00:00"
    assert re.fullmatch(_T, CLOCK.clock_of_day(TS))


def _loader_peak(before: int, after: int, path: str, module: str) -> dict[str, Any]:
    rec = deep_peak(1)
    rec.update(vm_peak_kb_before=before, vm_peak_kb=after)
    rec["mapping"] = dict(rec["mapping"], path=path)
    rec["stack"] = [dict(rec["stack"][0], module=module)]
    return rec


def test_console_sums_the_loaders_start_up_in_one_line() -> None:
    """GIVEN an exec, then peaks whose innermost frame is in ld.so, then one from the program
    THEN the console shows the exec, one LOAD line for the loader's work, and the program's
    peak in full; with -v every peak is shown."""
    ld = "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    execrec = dict(deep_peak(0), type="exec", vm_peak_kb_before=0, vm_peak_kb=400)
    loaders = [
        _loader_peak(400, 2400, "/usr/lib/libc.so.6", ld),
        _loader_peak(2400, 2500, "/usr/lib/libm.so.6", ld),
        _loader_peak(2500, 2600, "/usr/lib/libm.so.6", ld),
    ]
    mine = _loader_peak(2600, 70000, "[anon]", JOB_PATH)
    lines = console([execrec, *loaders, mine])
    assert " EXEC " in lines[0]
    assert re.search(
        r" LOAD  ld\.so mapped 2 objects: \+2\.15 MiB to 2\.54 MiB in 3 peaks", lines[1]
    )
    assert " PEAK " in lines[2] and "[70000 kB]" in lines[2]
    assert sum(" PEAK " in ln for ln in lines) == 1
    assert sum(" PEAK " in ln for ln in console([execrec, *loaders, mine], verbose=1)) == 4
    # a process that exits while loading still gets its line
    assert any(" LOAD " in ln for ln in console([execrec, loaders[0], dict(execrec, type="exit")]))


def test_console_summary_says_what_the_kernel_side_missed() -> None:
    end = schema.end_record(
        CLOCK, TS, "interrupted", 3, 0, [], {"changes": 0, "vital": 0, "stacks": 2, "calls_full": 1}
    )
    assert console([end]) == [
        "--- vmtrace summary (interrupted; 3 events, 0 lost)",
        "kernel side: 2 user stacks not read (those records have no call chain), "
        "1 calls judged change by change (the calls-in-flight map was full)",
    ]
    quiet = schema.end_record(CLOCK, TS, "interrupted", 3, 0, [], {"changes": 0, "stacks": 0})
    assert console([quiet]) == ["--- vmtrace summary (interrupted; 3 events, 0 lost)"]


def test_records_without_a_readable_stack_are_counted_per_process() -> None:
    eng = PeakEngine()
    eng.start(PID, "job", ProcStatus(10_000, 10_000, 500, 500))
    unread = dataclasses.replace(mmap_change(), stack_unread=True)
    for c in (unread, munmap_change(), dataclasses.replace(grow_change(), stack_unread=True)):
        eng.explain(c)
    (s,) = eng.summary()
    assert s.stacks_unread == 2
    assert schema.explained_record(eng.explain(unread), CLOCK)["stack_unread"] is True
    assert "stack_unread" not in schema.explained_record(eng.explain(grow_change()), CLOCK)
    end = schema.end_record(CLOCK, TS, "interrupted", 3, 0, eng.summary())
    assert end["summary"][0]["stacks_unread"] == 3
    assert "  3 of its records have no call chain: its user stack could not be read" in console(
        [end]
    )


def test_changes_the_kernel_tallied_are_counted_per_process_whatever_the_order() -> None:
    """Each record carries its process's tally so far: the engine keeps the latest totals
    even when an older record (another ring, another CPU) is read after a newer one, and the
    summary, the `tally` record and the console say what was counted, not logged."""
    eng = PeakEngine()
    eng.start(PID, "job", ProcStatus(10_000, 10_000, 500, 500))
    newer = dataclasses.replace(munmap_change(), tally=Tally(900, 57_600, 64_000))
    older = dataclasses.replace(mmap_change(), tally=Tally(400, 25_600, 25_600))
    for c in (newer, older, grow_change()):
        eng.explain(c)
    assert eng.tally(PID) == Tally(900, 57_600, 64_000)
    assert eng.tally(PID + 1) == Tally()
    end = schema.end_record(CLOCK, TS, "interrupted", 3, 0, eng.summary(), tallied=900)
    assert end["tallied"] == 900
    assert end["summary"][0]["tallied"] == {"changes": 900, "grown_kb": 57_600, "shrunk_kb": 64_000}
    lines = console([end])
    assert lines[0] == "--- vmtrace summary (interrupted; 3 events, 900 tallied, 0 lost)"
    assert (
        "  900 of its grow/shrink changes counted, not logged one by one (the reader was "
        "behind): they mapped 56.25 MiB and unmapped 62.50 MiB; peaks and latches are all logged"
    ) in lines
    rec = schema.tally_record(CLOCK, TS, 500, 900, {PID: eng.tally(PID)})
    assert rec["pid"] is None and rec["count"] == 500 and rec["total"] == 900
    assert rec["by_pid"] == {str(PID): end["summary"][0]["tallied"]}
    assert console([rec]) == []  # said once, in the summary, not a line per poll
