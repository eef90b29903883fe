"""vmtrace.logread: the streaming, checking reader of event logs, and change_from_record.

The fixtures (tests/fixtures/*.jsonl) are small logs written by hand in the shape the tracer
writes; tests/integration/test_offline_tools.py does the same checks on real logs.
"""

from __future__ import annotations

import contextlib
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmtrace import plot
from vmtrace.engine import PeakEngine
from vmtrace.errors import LogFormatError, VmtraceError
from vmtrace.export import write_csv, write_perfetto
from vmtrace.logread import (
    CHANGE_TYPES,
    LogReader,
    change_from_record,
    check_record,
    numbered,
    read_log,
    status_from_record,
)
from vmtrace.plot import collect
from vmtrace.records import Change, Explained, Mapping
from vmtrace.report import build_report
from vmtrace.schema import SCHEMA_VERSION, explained_record
from vmtrace.units import WallClock
from vmtrace.unwind import Frame

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RUN = FIXTURES / "run_small.jsonl"
ATTACH = FIXTURES / "attach_small.jsonl"
MISMATCH = FIXTURES / "mismatch_small.jsonl"
STACKS = FIXTURES / "stacks_small.jsonl"  # version 2: stacks of frame objects


def records(path: Path, warnings: list[str] | None = None) -> list[dict[str, Any]]:
    return list(read_log(path, (warnings.append if warnings is not None else None)))


def write_lines(path: Path, lines: list[str], newline_at_end: bool = True) -> Path:
    path.write_text("\n".join(lines) + ("\n" if newline_at_end else ""))
    return path


def fixture_lines(path: Path = RUN) -> list[str]:
    return path.read_text().splitlines()


# -- reading ------------------------------------------------------------------------------------


def test_reads_every_record_in_order_start_first() -> None:
    recs = records(RUN)
    assert [r["type"] for r in recs][:3] == ["start", "baseline", "exec"]
    assert recs[-1]["type"] == "end"
    assert len(recs) == 18
    # unknown fields are passed through untouched (and never looked at)
    assert recs[0]["future_field"] == {"added": "in a later version"}


def test_line_numbers_follow_the_file() -> None:
    reader = LogReader(RUN)
    pairs = list(numbered(reader))
    assert [n for n, _ in pairs] == list(range(1, 19))
    assert reader.start is not None and reader.start["version"] == 1
    assert reader.complete and not reader.truncated


def test_unknown_record_type_is_skipped_with_one_warning(tmp_path: Path) -> None:
    lines = fixture_lines(ATTACH)
    extra = json.dumps({"type": "future_thing", "ts_ns": 1})
    log = write_lines(tmp_path / "log.jsonl", [*lines[:-1], extra, lines[-1]])
    warnings: list[str] = []
    recs = records(log, warnings)
    assert "future_thing" not in [r["type"] for r in recs]
    assert len(recs) == len(lines) - 1  # the fixture has one already: both skipped
    assert len(warnings) == 1 and "unknown type 'future_thing'" in warnings[0]


def test_truncated_last_line_warns_and_keeps_the_rest(tmp_path: Path) -> None:
    lines = fixture_lines(RUN)
    cut = lines[-1][: len(lines[-1]) // 2]
    log = write_lines(tmp_path / "cut.jsonl", [*lines[:-1], cut], newline_at_end=False)
    warnings: list[str] = []
    reader = LogReader(log, warnings.append)
    recs = list(reader)
    assert len(recs) == len(lines) - 1
    assert reader.truncated and not reader.complete
    assert warnings == [
        f"{log}: line {len(lines)} is incomplete (the log ends mid-record: was vmtrace "
        "killed?); ignoring it"
    ]


def test_complete_last_line_without_newline_is_a_record(tmp_path: Path) -> None:
    lines = fixture_lines(RUN)
    log = write_lines(tmp_path / "nonl.jsonl", lines, newline_at_end=False)
    warnings: list[str] = []
    assert len(records(log, warnings)) == len(lines)
    assert warnings == []


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"type": "peak", ', "line 3 is not JSON (Expecting property name enclosed in double"),
        ("[1, 2]", "line 3 is not a JSON object (it is list)"),
        ('{"type": "sample", "ts_ns": NaN}', "line 3 is not JSON (NaN is not a JSON number"),
        ('{"type": "sample"}', "line 3: sample record: field 'ts_ns' is missing"),
        ('{"ts_ns": 5}', "line 3: record: it has no string field 'type'"),
        (
            '{"type": "lost", "ts_ns": 5, "count": "3"}',
            "line 3: lost record: field 'count' is not an integer (\"3\")",
        ),
        (
            '{"type": "lost", "ts_ns": 5, "count": 3, "by_pid": {"12": "x"}}',
            "line 3: lost record: field 'by_pid' is not an object of pid -> count",
        ),
        (
            '{"type": "lost", "ts_ns": true, "count": 3}',
            "line 3: lost record: field 'ts_ns' is not an integer (true)",
        ),
        ("[" * 100000, "line 3 is not JSON (nested too deeply)"),
    ],
)
def test_malformed_line_is_an_error_naming_the_line(tmp_path: Path, bad: str, message: str) -> None:
    lines = fixture_lines(RUN)
    log = write_lines(tmp_path / "bad.jsonl", [*lines[:2], bad, *lines[2:]])
    with pytest.raises(LogFormatError) as err:
        records(log)
    assert str(err.value).startswith(f"failed to read {log}: {message}")


def test_bad_change_fields_are_errors(tmp_path: Path) -> None:
    lines = fixture_lines(RUN)
    rec = json.loads(lines[3])  # a peak with a mapping
    rec["mapping"]["start"] = "0xnothex"
    log = write_lines(tmp_path / "bad.jsonl", [*lines[:3], json.dumps(rec), *lines[4:]])
    with pytest.raises(LogFormatError, match=r"line 4: peak record: field 'mapping.start'"):
        records(log)
    rec = json.loads(lines[3])
    del rec["args"]["len"]
    log = write_lines(tmp_path / "bad2.jsonl", [*lines[:3], json.dumps(rec), *lines[4:]])
    with pytest.raises(LogFormatError, match=r"line 4: peak record: field 'len' is missing"):
        records(log)


def test_invalid_utf8_is_an_error_in_the_middle_a_warning_at_the_cut(tmp_path: Path) -> None:
    lines = [ln.encode() for ln in fixture_lines(RUN)]
    log = tmp_path / "latin.jsonl"
    log.write_bytes(b"\n".join([*lines[:4], b'{"type": "\xff"}', *lines[4:]]) + b"\n")
    with pytest.raises(LogFormatError, match="line 5 is not JSON \\(not UTF-8 at byte 10\\)"):
        records(log)
    log.write_bytes(b"\n".join(lines[:4]) + b'\n{"type": "pe\xc3')
    warnings: list[str] = []
    assert len(records(log, warnings)) == 4
    assert "line 5 is incomplete" in warnings[0]


def test_newer_version_is_refused_clearly(tmp_path: Path) -> None:
    lines = fixture_lines(RUN)
    start = json.loads(lines[0])
    start["version"] = SCHEMA_VERSION + 1
    log = write_lines(tmp_path / "v_next.jsonl", [json.dumps(start), *lines[1:]])
    with pytest.raises(LogFormatError) as err:
        records(log)
    assert str(err.value) == (
        f"failed to read {log}: it is a version {SCHEMA_VERSION + 1} log and this vmtrace "
        f"reads version {SCHEMA_VERSION} at most (fix: read it with a newer vmtrace)"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "it is empty"),
        ("\n\n", "it has no records"),
        ('{"type": "peak", "ts_ns": 1}\n', "line 1 is a peak record, not `start`"),
        ('{"type": "start", "ts_ns": 1}\n', "line 1: the start record has no integer `version`"),
        ('{"type": "start", "ts_ns": 1, "version": 0}\n', "invalid version 0"),
    ],
)
def test_not_a_log(tmp_path: Path, content: str, message: str) -> None:
    log = tmp_path / "x.jsonl"
    log.write_text(content)
    with pytest.raises(LogFormatError, match=message):
        records(log)


def test_missing_file_and_second_start(tmp_path: Path) -> None:
    with pytest.raises(LogFormatError, match="No such file or directory"):
        records(tmp_path / "nope.jsonl")
    lines = fixture_lines(RUN)
    log = write_lines(tmp_path / "two.jsonl", lines + lines)
    with pytest.raises(LogFormatError, match="line 19 is a second start record"):
        records(log)


# -- change_from_record: the engine re-explains a log as it did live ----------------------------


def replay(path: Path) -> list[tuple[dict[str, Any], Explained]]:
    """Each change record with the engine's explanation of it, fed as the tracer fed it."""
    engine = PeakEngine()
    out = []
    started = False
    targets: dict[int, Any] = {}
    for rec in read_log(path):
        if rec["type"] == "start":
            targets = {t["pid"]: t for t in rec["targets"]}
        if rec["type"] == "maps":  # `-p`: the tracer started the engine with /proc's reading
            t = targets[rec["pid"]]
            engine.start(rec["pid"], t["comm"], status_from_record(t))
        if rec["type"] in ("sample", "mismatch"):
            engine.check_sample(rec["ts_ns"], rec["pid"], status_from_record(rec))
        if rec["type"] in CHANGE_TYPES:
            started = True
            out.append((rec, engine.explain(change_from_record(rec))))
    assert started
    return out


@pytest.mark.parametrize("path", [RUN, ATTACH, MISMATCH, STACKS], ids=lambda p: p.name)
def test_engine_re_explains_each_change_record_as_logged(path: Path) -> None:
    for rec, e in replay(path):
        assert (e.type, e.vm_peak_kb, e.vm_peak_kb_before) == (
            rec["type"],
            rec["vm_peak_kb"],
            rec["vm_peak_kb_before"],
        ), rec


def test_change_from_record_fields() -> None:
    recs = records(RUN)
    mremap = recs[13]
    c = change_from_record(mremap)
    assert c.kind == "change" and c.cause == "mremap" and c.syscall == "mremap"
    assert c.ret == 0x7F4000000000  # hex string -> int
    assert c.mapping == Mapping(0x7F4000000000, 0x7F4000400000, "rw-p", "[anon]", 0)
    # a version 1 log: each symbolised string is a frame's function, with no module
    assert c.stack == (
        Frame(0, "__GI___mremap+0x30 [libc.so.6]", None, None, None),
        Frame(0, "worker_main+0x40 [job]", None, None, None),
        Frame(0, "start_thread+0x305 [libc.so.6]", None, None, None),
    )
    assert (c.total_vm_kb_before, c.total_vm_kb_after, c.delta_kb) == (10980, 13028, 2048)
    assert (c.hiwater_vm_kb_before, c.hiwater_vm_kb_after) == (1756, 1756)
    assert c.kernel_peak_kb_before == 10980
    assert c.tid == 101 and c.comm == "worker"
    assert change_from_record(recs[2]).kind == "exec"
    assert change_from_record(recs[1]).kind == "baseline"


def test_version_1_stacks_are_read_as_frames() -> None:
    """A version 1 log's stack (symbolised strings) reaches the tools as frame objects."""
    recs = records(RUN)
    assert recs[0]["version"] == 1
    assert recs[13]["stack"][0] == {
        "address": "0x0",
        "function": "__GI___mremap+0x30 [libc.so.6]",
        "offset": None,
        "module": None,
        "module_offset": None,
    }
    raw = json.loads(fixture_lines(RUN)[13])
    assert [f["function"] for f in recs[13]["stack"]] == raw["stack"]
    assert recs[7]["stack"] is None  # no stack stays no stack


def test_version_2_stacks_are_frames() -> None:
    recs = records(STACKS)
    assert recs[0]["version"] == 2
    raw = [json.loads(line) for line in fixture_lines(STACKS)]
    assert [r.get("stack") for r in recs] == [r.get("stack") for r in raw]  # untouched
    peak = recs[2]
    c = change_from_record(peak)
    assert c.stack is not None and len(c.stack) == 9
    libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    assert c.stack[0] == Frame(0x7F00001052A3, "__mmap64", 0x13, libc, 0x1052A3)
    assert c.stack[4] == Frame(
        0x555555555A21, "xalloc", 0x11, "/opt/index/bin/index", 0x1A21, "index.c", 31
    )
    brk = change_from_record(recs[6])
    assert brk.stack is not None
    assert brk.stack[1] == Frame(0x555555559A10, None, None, "/opt/index/bin/index", 0x5A10)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stack": "f"}, "field 'stack' is not a list"),
        ({"stack": [1]}, r"field 'stack\[0\]' is not an object"),
        ({"stack": [{"function": "f"}]}, "field 'address' is missing"),
        ({"stack": [{"address": "0xzz"}]}, r"field 'stack\[0\].address' is not a hex address"),
        (
            {"stack": [{"address": "0x1", "function": 3}]},
            r"field 'stack\[0\].function' is not a string",
        ),
        ({"stack": [{"address": "0x1", "offset": -1}]}, r"field 'stack\[0\].offset' is negative"),
        (
            {"stack": [{"address": "0x1", "line": "12"}]},
            r"field 'stack\[0\].line' is not an integer",
        ),
    ],
)
def test_bad_frames_are_errors(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    lines = fixture_lines(STACKS)
    rec = dict(json.loads(lines[2]), **change)
    log = write_lines(tmp_path / "bad.jsonl", [*lines[:2], json.dumps(rec), *lines[3:]])
    with pytest.raises(LogFormatError, match=r"line 3: peak record: " + message):
        records(log)


def test_change_from_record_refuses_other_records_and_bad_fields() -> None:
    recs = records(RUN)
    with pytest.raises(LogFormatError, match="a 'sample' record is not a change"):
        change_from_record(recs[6])
    bad = dict(recs[3], total_vm_kb_after=None)
    with pytest.raises(LogFormatError, match="field 'total_vm_kb_after' is null"):
        change_from_record(bad)
    with pytest.raises(LogFormatError, match="field 'cause' is missing"):
        check_record({k: v for k, v in recs[3].items() if k != "cause"})


_addr = st.integers(min_value=0x1000, max_value=0x7FFF_FFFF_F000).map(lambda a: a & ~0xFFF)
_kb = st.integers(min_value=0, max_value=1 << 40)
_small = st.none() | st.integers(min_value=0, max_value=1 << 40)
_frames = st.builds(
    Frame,
    st.integers(min_value=0, max_value=(1 << 64) - 1),
    st.none() | st.text(max_size=40),
    _small,
    st.none() | st.sampled_from(["/usr/lib/x86_64-linux-gnu/libc.so.6", "/opt/job (deleted)"]),
    _small,
    st.none() | st.text(max_size=20),
    st.none() | st.integers(min_value=1, max_value=1 << 20),
)


@st.composite
def changes(draw: st.DrawFn) -> Change:
    start = draw(_addr)
    size = draw(st.integers(min_value=1, max_value=1 << 20)) * 4096
    mapping = draw(
        st.none()
        | st.builds(
            Mapping,
            st.just(start),
            st.just(start + size),
            st.sampled_from(["rw-p", "---p", "r-xp", "rw-s"]),
            st.sampled_from(["[anon]", "[heap]", "/usr/lib/libc.so.6", "[stack]"]),
            st.integers(min_value=0, max_value=1 << 30),
        )
    )
    args = draw(
        st.none()
        | st.fixed_dictionaries(
            {
                "addr": st.just("0x0"),
                "len": st.just(size),
                "prot": st.just("rw-"),
                "flags": st.just("private|anon"),
                "fd": st.just(-1),
                "offset": st.just(0),
            }
        )
    )
    return Change(
        kind=draw(st.sampled_from(["change", "exec", "baseline"])),
        ts_ns=draw(st.integers(min_value=0, max_value=1 << 62)),
        pid=draw(st.integers(min_value=1, max_value=1 << 22)),
        tid=draw(st.integers(min_value=1, max_value=1 << 22)),
        comm=draw(st.text(min_size=1, max_size=15)),
        cause="mmap" if args else draw(st.sampled_from(["stack-growth", "syscall:io_setup"])),
        syscall="mmap" if args else None,
        args=args,
        ret=start if args else None,
        total_vm_kb_before=draw(_kb),
        total_vm_kb_after=draw(_kb),
        hiwater_vm_kb_before=draw(_kb),
        hiwater_vm_kb_after=draw(_kb),
        stack_vm_kb_before=draw(_kb),
        stack_vm_kb_after=draw(_kb),
        kernel_peak_kb_before=draw(_kb),
        mapping=mapping,
        stack=draw(st.none() | st.lists(_frames, max_size=5).map(tuple)),
        stack_unread=draw(st.booleans()),
    )


@settings(max_examples=300, deadline=None, database=None)
@given(changes())
def test_schema_then_reader_round_trip(c: Change) -> None:
    """What schema.explained_record writes, change_from_record reads back unchanged (the
    kernel's peak-before travels as vm_peak_kb_before)."""
    e = Explained(
        "exec" if c.kind == "exec" else "baseline" if c.kind == "baseline" else "peak",
        c,
        c.kernel_peak_kb_before,
        max(c.kernel_peak_kb_before, c.total_vm_kb_after),
    )
    rec = json.loads(json.dumps(explained_record(e, WallClock(0, 0))))
    assert change_from_record(rec) == c


# -- streaming: memory does not grow with the length of the log ---------------------------------


def synthetic_log(path: Path, iterations: int) -> Path:
    """A `-p` log of a loop that maps a region one page bigger than last time (a new peak)
    and unmaps it (a latch): two records per iteration, plus a sample every 50."""
    base = 10_000
    with path.open("w") as f:

        def put(rec: dict[str, Any]) -> None:
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")

        common = {"time": "2026-01-02T03:04:05.000000+00:00", "comm": "loop"}
        put(
            {
                "type": "start",
                "ts_ns": 0,
                "version": 1,
                "page_size": 4096,
                "targets": [
                    {
                        "pid": 7,
                        "comm": "loop",
                        "status": {"VmPeak": base, "VmSize": base, "VmHWM": 1, "VmRSS": 1},
                    }
                ],
            }
        )
        put(
            {
                "type": "maps",
                "ts_ns": 1,
                "pid": 7,
                "comm": "loop",
                "mappings": [
                    {
                        "start": "0x400000",
                        "end": hex(0x400000 + base * 1024),
                        "perms": "r-xp",
                        "offset": 0,
                        "path": "/bin/loop",
                    }
                ],
            }
        )
        peak = base
        for i in range(iterations):
            size = 4 * (i + 1)
            addr = 0x7F0000000000
            m = {
                "start": hex(addr),
                "end": hex(addr + size * 1024),
                "perms": "rw-p",
                "offset": 0,
                "path": "[anon]",
            }
            stack = ["__mmap64+0x13 [libc.so.6]", f"grow+0x{i % 7:x} [loop]", "main+0x10 [loop]"]
            change = {
                "pid": 7,
                "tid": 7,
                **common,
                "syscall": "mmap",
                "mapping": m,
                "stack_vm_kb_before": 132,
                "stack_vm_kb_after": 132,
            }
            put(
                {
                    "type": "peak",
                    "ts_ns": 10 + 3 * i,
                    **change,
                    "cause": "mmap",
                    "total_vm_kb_before": base,
                    "total_vm_kb_after": base + size,
                    "vm_peak_kb_before": peak,
                    "vm_peak_kb": base + size,
                    "hiwater_vm_kb_before": peak,
                    "hiwater_vm_kb": peak,
                    "delta_kb": size,
                    "args": {
                        "addr": "0x0",
                        "len": size * 1024,
                        "prot": "rw-",
                        "flags": "private|anon",
                        "fd": -1,
                        "offset": 0,
                    },
                    "ret": hex(addr),
                    "stack": stack,
                }
            )
            put(
                {
                    "type": "latch",
                    "ts_ns": 11 + 3 * i,
                    **change,
                    "cause": "munmap",
                    "syscall": "munmap",
                    "total_vm_kb_before": base + size,
                    "total_vm_kb_after": base,
                    "vm_peak_kb_before": base + size,
                    "vm_peak_kb": base + size,
                    "hiwater_vm_kb_before": peak,
                    "hiwater_vm_kb": base + size,
                    "delta_kb": -size,
                    "args": {"addr": hex(addr), "len": size * 1024},
                    "ret": 0,
                    "stack": None,
                }
            )
            peak = base + size
            if i % 50 == 0:
                put(
                    {
                        "type": "sample",
                        "ts_ns": 12 + 3 * i,
                        "pid": 7,
                        **common,
                        "status": {"VmPeak": peak, "VmSize": base, "VmHWM": 100 + i, "VmRSS": 100},
                        "expected_vm_peak_kb": peak,
                        "match": True,
                    }
                )
        put({"type": "end", "ts_ns": 20 + 3 * iterations, "reason": "targets-exited"})
    return path


class _Null:
    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass


def _peak_memory(work: Any) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("big")
    return synthetic_log(d / "small.jsonl", 2_000), synthetic_log(d / "big.jsonl", 20_000)


@pytest.mark.parametrize("tool", ["read", "report", "csv", "perfetto", "plot-data"])
def test_memory_does_not_grow_with_log_length(
    logs: tuple[Path, Path], tool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten times the records, the same peak memory (within slack): every tool streams.
    (The plot keeps at most MAX_POINTS points per series and MAX_PEAKS peaks: lowered here so
    that both logs are past those bounds.)"""
    monkeypatch.setattr(plot, "MAX_POINTS", 500)
    monkeypatch.setattr(plot, "MAX_PEAKS", 300)

    def run(path: Path) -> None:
        pairs = numbered(LogReader(path))
        if tool == "read":
            for _ in pairs:
                pass
        elif tool == "report":
            rep = build_report(pairs, str(path), max_peaks=100)
            assert rep.processes[0].peaks == (2_000 if path == logs[0] else 20_000)
        elif tool == "csv":
            write_csv(pairs, _Null())  # type: ignore[arg-type]
        elif tool == "perfetto":
            write_perfetto(pairs, _Null(), window=1000)  # type: ignore[arg-type]
        else:
            data = collect(pairs, "x")
            assert len(data.processes[7].vm_size) < 2 * 20_000

    small = _peak_memory(lambda: run(logs[0]))
    big = _peak_memory(lambda: run(logs[1]))
    assert big < small * 1.5 + 512 * 1024, (tool, small, big)


def test_synthetic_log_is_consistent(logs: tuple[Path, Path]) -> None:
    """The memory test's log is itself re-explained exactly (so it measures real work)."""
    for rec, e in replay(logs[0])[:200]:
        assert (e.type, e.vm_peak_kb) == (rec["type"], rec["vm_peak_kb"])


def test_a_change_record_missing_any_field_is_a_format_error_or_read() -> None:
    """GIVEN each change record of the fixtures (every change type they have)
    WHEN any one of its fields is missing
    THEN change_from_record reads it or raises LogFormatError, never a KeyError: a field
    the engine input needs is required by the record type's definition, whichever type it
    is."""
    seen: set[str] = set()
    for path in sorted(FIXTURES.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("type") not in CHANGE_TYPES:
                continue
            seen.add(rec["type"])
            for name in rec:
                if name == "type":
                    continue
                cut = {k: v for k, v in rec.items() if k != name}
                with contextlib.suppress(LogFormatError):
                    change_from_record(cut)
    assert {"peak", "latch", "exec", "baseline"} <= seen


# -- property: corrupted logs give a LogFormatError or a warning, never a traceback --------------

EXAMPLES_RUN: list[int] = []


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    data = bytearray(b"".join(p.read_bytes() for p in [draw(st.sampled_from([RUN, ATTACH]))]))
    lines = bytes(data).split(b"\n")
    how = draw(st.sampled_from(["flip", "cut", "insert", "lines", "field", "junk-line"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        return bytes(data)
    if how == "cut":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if how == "insert":
        i = draw(st.integers(0, len(data)))
        return bytes(data[:i]) + draw(st.binary(max_size=20)) + bytes(data[i:])
    if how == "lines":
        ops = draw(
            st.lists(
                st.tuples(st.sampled_from(["dup", "drop", "swap"]), st.integers(0, len(lines) - 1)),
                max_size=4,
            )
        )
        for op, i in ops:
            i %= len(lines)
            if op == "dup":
                lines.insert(i, lines[i])
            elif op == "drop" and len(lines) > 1:
                del lines[i]
            else:
                j = (i + 1) % len(lines)
                lines[i], lines[j] = lines[j], lines[i]
        return b"\n".join(lines)
    if how == "field":
        i = draw(st.integers(0, len(lines) - 2))
        rec = json.loads(lines[i])
        key = draw(st.sampled_from(sorted(rec)))
        json_values = st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner),
            max_leaves=5,
        )
        rec[key] = draw(json_values)
        if draw(st.booleans()) and isinstance(rec.get("mapping"), dict):
            rec["mapping"][draw(st.sampled_from(["start", "end", "perms", "path"]))] = draw(
                json_values
            )
        lines[i] = json.dumps(rec).encode()
        return b"\n".join(lines)
    i = draw(st.integers(0, len(lines) - 1))
    lines.insert(i, draw(st.binary(max_size=40)))
    return b"\n".join(lines)


def _every_tool(path: Path) -> None:
    warnings: list[str] = []
    build_report(numbered(LogReader(path, warnings.append)), str(path))
    write_csv(numbered(LogReader(path, warnings.append)), _Null())  # type: ignore[arg-type]
    write_perfetto(numbered(LogReader(path, warnings.append)), _Null())  # type: ignore[arg-type]
    collect(numbered(LogReader(path, warnings.append)), "x")
    assert all(isinstance(w, str) for w in warnings)


def test_corrupted_logs_never_crash(tmp_path: Path) -> None:
    """Byte flips, cuts, inserted bytes, duplicated/dropped/swapped lines, fields replaced by
    random JSON, junk lines: the reader and every offline tool either finish (with warnings)
    or raise a LogFormatError (a VmtraceError: one line at the CLI), nothing else."""
    outcomes = {"ok": 0, "error": 0}

    @settings(
        max_examples=400,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(corrupted())
    def check(blob: bytes) -> None:
        path = tmp_path / "corrupt.jsonl"
        path.write_bytes(blob)
        EXAMPLES_RUN.append(1)
        try:
            _every_tool(path)
            outcomes["ok"] += 1
        except VmtraceError as e:
            assert isinstance(e, LogFormatError), repr(e)
            assert str(e).startswith(f"failed to read {path}: "), str(e)
            assert "\n" not in str(e)
            outcomes["error"] += 1

    check()
    print(f"corrupted-log examples run: {len(EXAMPLES_RUN)} {outcomes}")
    assert len(EXAMPLES_RUN) >= 300
    assert outcomes["ok"] > 0 and outcomes["error"] > 0
