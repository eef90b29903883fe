"""vmtrace.export (`vmtrace export`): CSV rows and the Perfetto / Chrome trace-event JSON.

`check_trace` is the structural validation of a trace (also used on real logs by
tests/integration/test_offline_tools.py): the fields each phase needs, `ts` in microseconds,
non-decreasing, counters numeric, instants scoped, every process and thread named.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest

from vmtrace.export import (
    CSV_COLUMNS,
    SESSION_PID,
    SortStats,
    csv_row,
    only_pid,
    sorted_events,
    write_csv,
    write_perfetto,
)
from vmtrace.logread import LogReader, numbered, read_log

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RUN = FIXTURES / "run_small.jsonl"
ATTACH = FIXTURES / "attach_small.jsonl"

Event = dict[str, Any]


def check_trace(trace: Any) -> list[Event]:
    """Assert the structure Perfetto's JSON importer reads; returns the events."""
    assert isinstance(trace, dict) and isinstance(trace.get("traceEvents"), list)
    events: list[Event] = trace["traceEvents"]
    assert events, "no events"
    named_processes: set[int] = set()
    named_threads: set[tuple[int, int]] = set()
    last_ts = float("-inf")
    for ev in events:
        ph = ev.get("ph")
        assert ph in ("C", "i", "M"), ev
        assert isinstance(ev.get("name"), str) and ev["name"], ev
        assert isinstance(ev.get("pid"), int) and isinstance(ev.get("tid"), int), ev
        ts = ev.get("ts")
        assert isinstance(ts, (int, float)) and not isinstance(ts, bool), ev
        assert ts >= last_ts, f"ts goes back: {last_ts} -> {ev}"
        last_ts = ts
        args = ev.get("args")
        assert isinstance(args, dict), ev
        if ph == "M":
            assert ev["name"] in ("process_name", "thread_name"), ev
            assert isinstance(args.get("name"), str) and args["name"], ev
            if ev["name"] == "process_name":
                named_processes.add(ev["pid"])
            else:
                named_threads.add((ev["pid"], ev["tid"]))
        elif ph == "C":
            assert ev["name"] in ("VmSize", "VmPeak", "VmRSS", "VmHWM"), ev
            assert list(args) == ["kB"], ev
            assert isinstance(args["kB"], int) and args["kB"] >= 0, ev
            assert ev["pid"] in named_processes, f"counter of an unnamed process: {ev}"
        else:
            assert ev.get("s") in ("g", "p", "t"), ev
            if ev["s"] == "t":
                assert (ev["pid"], ev["tid"]) in named_threads, f"unnamed thread: {ev}"
            else:
                assert ev["pid"] in named_processes, ev
    return events


def perfetto(path: Path, pid: int | None = None) -> tuple[dict[str, Any], str]:
    out = io.StringIO()
    write_perfetto(only_pid(numbered(LogReader(path)), pid), out, {"log": str(path)})
    text = out.getvalue()
    return json.loads(text), text


# -- Perfetto -----------------------------------------------------------------------------------


def test_perfetto_trace_structure_and_content() -> None:
    trace, _ = perfetto(RUN)
    events = check_trace(trace)
    assert trace["displayTimeUnit"] == "ms"
    assert trace["otherData"]["log"] == str(RUN)
    assert trace["otherData"]["vmtrace"] == "0.1.0"
    recs = list(read_log(RUN))
    # one instant per peak, at the record's time in µs, with its cause, args and stack
    peaks = [r for r in recs if r["type"] == "peak"]
    instants = [e for e in events if e["ph"] == "i" and e["name"].startswith("peak: ")]
    assert len(instants) == len(peaks) == 7
    for rec, ev in zip(peaks, instants, strict=True):
        assert ev["ts"] == rec["ts_ns"] / 1000
        assert (ev["pid"], ev["tid"], ev["s"]) == (rec["pid"], rec["tid"], "t")
        assert ev["args"]["cause"] == rec["cause"]
        assert ev["args"]["args"] == rec["args"]
        assert ev["args"]["stack"] == rec["stack"]
        assert ev["args"]["vm_peak_kb"] == rec["vm_peak_kb"]
    assert instants[-1]["name"] == "peak: mremap [anon] +2.00 MiB"
    assert instants[-1]["args"]["call"].startswith("mremap(0x7f3000000000, 2.00 MiB -> 4.00 MiB")
    names = {e["name"] for e in events if e["ph"] == "i"}
    assert {"exec: VmPeak starts over at 400 kB", "end: targets-exited"} <= names
    assert "latch: hiwater_vm 1.71 MiB by munmap [anon]" in names
    # counters: VmSize/VmPeak per change record and sample, RSS/HWM from the samples
    counters: dict[str, list[int]] = {}
    for e in events:
        if e["ph"] == "C":
            counters.setdefault(e["name"], []).append(e["args"]["kB"])
    changes = [r for r in recs if r.get("total_vm_kb_after") is not None and r["type"] != "exit"]
    assert len(counters["VmSize"]) == len(changes)
    assert counters["VmPeak"][-1] == 13028 and max(counters["VmPeak"]) == 30000
    assert counters["VmRSS"] == [900, 2900, 2000]
    assert counters["VmHWM"] == [900, 3000, 3100]
    # names: the process as exec named it, the worker thread
    meta = {(e["name"], e["pid"], e["tid"]): e["args"]["name"] for e in events if e["ph"] == "M"}
    assert meta[("thread_name", 100, 101)] == "worker"
    assert meta[("process_name", 100, 100)] == "job"
    assert meta[("process_name", SESSION_PID, SESSION_PID)] == "vmtrace (session)"


def test_perfetto_sorts_records_that_come_out_of_order() -> None:
    recs = list(numbered(LogReader(RUN)))
    body = recs[1:-1]
    random.Random(5).shuffle(body)
    shuffled = [recs[0], *body, recs[-1]]
    events = list(sorted_events(shuffled))
    ts = [e["ts"] for e in events]
    assert ts == sorted(ts)
    # beyond the window, events keep log order and are counted
    stats = SortStats()
    list(sorted_events(shuffled, window=2, stats=stats))
    assert stats.late > 0 and stats.events == len(events)


def test_perfetto_pid_filter_keeps_session_events() -> None:
    trace, _ = perfetto(ATTACH, pid=200)
    events = check_trace(trace)
    assert {e["pid"] for e in events} == {SESSION_PID, 200}
    trace, _ = perfetto(ATTACH, pid=999)
    assert {e["pid"] for e in trace["traceEvents"] if e["ph"] != "M"} == {SESSION_PID}


def test_perfetto_of_an_attach_log() -> None:
    trace, _ = perfetto(ATTACH)
    events = check_trace(trace)
    maps = [e for e in events if e["name"] == "maps at attach"]
    assert maps[0]["args"] == {"mappings": 9, "total_kb": 3000}
    peak = [e for e in events if e["name"].startswith("peak: stack-growth")]
    assert peak[0]["args"]["mapping"]["path"] == "[stack]"
    assert [e["name"] for e in events if e["ph"] == "i" and e["s"] == "p"] == [
        "maps at attach",
        "exit (final VmPeak 5.47 MiB)",
    ]


# -- CSV ----------------------------------------------------------------------------------------


def rows(path: Path) -> list[dict[str, str]]:
    out = io.StringIO()
    n = write_csv(numbered(LogReader(path)), out)
    parsed = list(csv.reader(io.StringIO(out.getvalue())))
    assert tuple(parsed[0]) == CSV_COLUMNS
    assert len(parsed) == n + 1
    return [dict(zip(CSV_COLUMNS, r, strict=True)) for r in parsed[1:]]


def test_csv_column_order_is_stable() -> None:
    assert CSV_COLUMNS[:6] == ("line", "type", "ts_ns", "time", "pid", "tid")
    assert len(set(CSV_COLUMNS)) == len(CSV_COLUMNS)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "offline.md").read_text()
    assert ", ".join(f"`{c}`" for c in CSV_COLUMNS) in doc


def test_csv_one_row_per_record_with_its_fields() -> None:
    got = rows(RUN)
    assert [r["type"] for r in got] == [r["type"] for r in read_log(RUN)]
    assert [int(r["line"]) for r in got] == list(range(1, 19))
    mremap = got[13]
    assert mremap["cause"] == "mremap" and mremap["tid"] == "101" and mremap["comm"] == "worker"
    assert mremap["ret"] == "0x7f4000000000" and mremap["delta_kb"] == "2048"
    assert mremap["vm_peak_kb_before"] == "10980" and mremap["vm_peak_kb"] == "13028"
    assert mremap["mapping_start"] == "0x7f4000000000" and mremap["mapping_path"] == "[anon]"
    assert mremap["call"] == (
        "mremap(0x7f3000000000, 2.00 MiB -> 4.00 MiB, maymove) = 0x7f4000000000"
    )
    assert json.loads(mremap["args"])["new_len"] == 4194304
    assert mremap["stack"].split(" | ") == [
        "__GI___mremap+0x30 [libc.so.6]",
        "worker_main+0x40 [job]",
        "start_thread+0x305 [libc.so.6]",
    ]
    assert mremap["vm_rss_kb"] == "" and mremap["match"] == ""
    sample = got[6]
    assert (sample["vm_size_kb"], sample["vm_rss_kb"], sample["vm_hwm_kb"]) == (
        "1756",
        "900",
        "900",
    )
    assert (sample["expected_vm_peak_kb"], sample["match"]) == ("1756", "true")
    assert got[0]["detail"].startswith("vmtrace 0.1.0 on 6.1.0-test, tracepoint backend")
    assert got[-2]["detail"] == "exited (seen by wait), exit status 0"
    assert got[-1]["detail"] == "targets-exited: 13 events, 0 lost"


def test_csv_row_of_a_maps_and_a_lost_record() -> None:
    recs = list(read_log(ATTACH))
    row = dict(zip(CSV_COLUMNS, csv_row(2, recs[1]), strict=True))
    assert row["type"] == "maps" and row["detail"] == "9 mappings at attach"
    lost = {"type": "lost", "ts_ns": 5, "pid": None, "count": 3, "total": 7}
    row = dict(zip(CSV_COLUMNS, csv_row(9, lost), strict=True))
    assert row["detail"] == "3 records dropped by the kernel (7 in all)" and row["pid"] == ""


def test_cli_export(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "t.json"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmtrace",
            "export",
            "--format",
            "perfetto-json",
            "-o",
            str(out),
            str(RUN),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    check_trace(json.loads(out.read_text()))
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    res = subprocess.run(
        [sys.executable, "-m", "vmtrace", "export", "--format", "csv", "--pid", "100", str(RUN)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0 and res.stdout.splitlines()[0] == ",".join(CSV_COLUMNS)
    assert len(res.stdout.splitlines()) == 19


@pytest.mark.parametrize("path", [RUN, ATTACH], ids=lambda p: p.name)
def test_exports_stream_the_same_records(path: Path) -> None:
    n = sum(1 for _ in read_log(path))
    assert len(rows(path)) == n


def test_version_2_stacks_in_csv_and_perfetto() -> None:
    stacks = FIXTURES / "stacks_small.jsonl"
    peak = rows(stacks)[2]
    libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    frames = peak["stack"].split(" | ")
    assert len(frames) == 9
    assert frames[0] == f"__mmap64+0x13 ({libc})"
    assert frames[6] == "parse_a+0x57 (/opt/index/bin/index) at index.c:70"
    brk = rows(stacks)[6]
    assert brk["stack"].split(" | ")[1] == "/opt/index/bin/index+0x5a10"
    trace, _ = perfetto(stacks)
    instants = [e for e in check_trace(trace) if e["name"].startswith("peak: ")]
    first = next(r for r in read_log(stacks) if r["type"] == "peak")
    assert instants[0]["args"]["stack"] == first["stack"]
    assert instants[0]["args"]["stack"][6]["function"] == "parse_a"
