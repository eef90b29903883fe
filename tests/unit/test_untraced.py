"""Without --follow: counting the descendants of traced processes that are not traced
(vmtrace/untraced.py, procfs.read_process_table / descendants), on a fake /proc and on the
real one, and the summary line."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

from vmtrace.procfs import descendants, parse_stat, read_process_table
from vmtrace.sinks import ConsoleSink
from vmtrace.units import WallClock
from vmtrace.untraced import UntracedChildren


def fake_proc(root: Path, procs: dict[int, tuple[str, int, int, int | None]]) -> str:
    """pid -> (comm, ppid, start_time, VmPeak kB or None for no status)."""
    for pid, (comm, ppid, start, peak) in procs.items():
        d = root / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        fields = ["S", str(ppid)] + ["0"] * 17 + [str(start)] + ["0"] * 30
        (d / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
        if peak is not None:
            (d / "status").write_text(
                f"Name:\t{comm}\nVmPeak:\t{peak} kB\nVmSize:\t{peak} kB\n"
                "VmHWM:\t1 kB\nVmRSS:\t1 kB\n"
            )
    (root / "self").mkdir(exist_ok=True)
    return str(root)


def test_parse_stat_with_a_hostile_comm() -> None:
    e = parse_stat(7, "7 (a) b (c) S 3 " + " ".join(["0"] * 17) + " 999 0 0\n")
    assert (e.pid, e.comm, e.ppid, e.start_time) == (7, "a) b (c", 3, 999)


def test_descendants_are_children_and_their_children_not_the_traced(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        {
            1: ("init", 0, 1, None),
            10: ("make", 1, 100, 5_000),
            11: ("sh", 10, 101, 2_000),
            12: ("cc1", 11, 102, 62_000),
            13: ("sh", 10, 103, 2_100),
            20: ("other", 1, 104, 9_000),
            30: ("traced-child", 10, 105, 1_000),
        },
    )
    table = read_process_table(proc)
    got = {e.pid for e in descendants(table, {10, 30})}
    assert got == {11, 12, 13}


def test_counts_each_process_once_and_keeps_the_largest_peak(tmp_path: Path) -> None:
    procs = {10: ("make", 1, 100, 5_000), 11: ("sh", 10, 101, 2_000)}
    proc = fake_proc(tmp_path, procs)
    u = UntracedChildren(proc)
    u.observe({10})
    # the child exec'd into cc1 and grew; a new one (same pid reused later: new start time)
    fake_proc(tmp_path, {11: ("cc1", 10, 101, 62_000), 12: ("as", 10, 110, 3_000)})
    u.observe({10})
    fake_proc(tmp_path, {11: ("ld", 10, 120, 7_000)})  # pid 11 reused
    u.observe({10})
    assert u.summary() == {
        "count": 3,  # sh that became cc1, as, and ld on the reused pid
        "largest": {"pid": 11, "comm": "cc1", "vm_peak_kb": 62_000},
    }


def test_nothing_seen() -> None:
    u = UntracedChildren()
    u.observe(set())
    assert u.summary() == {"count": 0, "largest": None}


def test_real_children_of_this_process_are_seen() -> None:
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) for _ in "ab"]
    try:
        time.sleep(0.2)
        u = UntracedChildren()
        u.observe({os.getpid()})
        assert u.count >= 2  # and pytest's own helpers, if any
        top = u.summary()["largest"]
        assert top is not None and top["vm_peak_kb"] > 0
    finally:
        for k in kids:
            k.kill()
            k.wait()


def summary_text(untraced: object) -> str:
    out = io.StringIO()
    sink = ConsoleSink(out, WallClock(0, 0))
    sink.write(
        {
            "type": "end",
            "ts_ns": 1,
            "reason": "targets-exited",
            "events": 3,
            "lost": 0,
            "summary": [],
            "untraced_children": untraced,
        }
    )
    return out.getvalue()


def test_summary_line() -> None:
    text = summary_text({"count": 3, "largest": {"pid": 12, "comm": "cc1", "vm_peak_kb": 63488}})
    assert "3 children not traced; largest VmPeak seen 62.00 MiB (pid 12 cc1): use --follow" in text
    assert "1 child not traced: use --follow" in summary_text({"count": 1, "largest": None})
    assert "not traced" not in summary_text({"count": 0, "largest": None})
    assert "not traced" not in summary_text(None)
