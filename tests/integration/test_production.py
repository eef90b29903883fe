"""Production scope: --follow, --min-delta, VmHWM, --cgroup, exit records.

Every expectation is a number the workload (tests/integration/prodload.c) read from its own
/proc/self/status: vmtrace's records must agree with the kernel, not with the test.
"""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration._require import require
from tests.integration.conftest import (
    RUN_TIMEOUT_S,
    Record,
    max_peak,
    of,
    read_jsonl,
    run_traced,
    start_vmtrace,
    tail,
    wait_for_start,
)

pytestmark = pytest.mark.bpf

PRODLOAD_SRC = Path(__file__).resolve().parent / "prodload.c"


@pytest.fixture(scope="module")
def prodload(bpf_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    require(gcc is not None, "gcc is needed to build tests/integration/prodload.c")
    assert gcc is not None
    out = tmp_path_factory.mktemp("prodload") / "prodload"
    res = subprocess.run(
        [gcc, "-O0", "-Wall", "-o", str(out), str(PRODLOAD_SRC)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    return out


# ---- --follow ---------------------------------------------------------------------------


def test_follow_traces_children_and_their_exec(prodload: Path, tmp_path: Path) -> None:
    """GIVEN a parent (64 MiB) that forks child A (maps 200 MiB) and child B (execs a 300 MiB
    program) WHEN traced with --follow THEN each process's peaks end exactly at the VmPeak it
    read itself, B's exec is reported (the peak starts over), and all three exit records
    carry those values."""
    records, reports, _ = run_traced(tmp_path, "--follow", command=[str(prodload), "family"])
    by_what = {r["what"]: r for r in reports}
    parent = by_what["parent-64"]
    child_a = by_what["child-a-200"]
    child_b = by_what["big"]
    forks = of(records, "fork")
    assert {f["pid"] for f in forks} == {child_a["pid"], child_b["pid"]}, forks
    assert all(f["parent_pid"] == parent["pid"] for f in forks)
    for who in (parent, child_a, child_b):
        peaks = of(records, "peak", who["pid"])
        assert peaks, f"no peak records for {who['what']} (pid {who['pid']})"
        assert max_peak(records, who["pid"]) == who["vm_peak_kb"], (who, peaks[-3:])
    assert of(records, "exec", child_b["pid"]), "child B's exec not reported"
    exits = {r["pid"]: r for r in of(records, "exit")}
    assert exits[child_a["pid"]]["vm_peak_kb"] == child_a["vm_peak_kb"]
    assert exits[child_b["pid"]]["vm_peak_kb"] == child_b["vm_peak_kb"]
    assert exits[parent["pid"]]["vm_peak_kb"] == by_what["parent-done"]["vm_peak_kb"]


# ---- --min-delta ------------------------------------------------------------------------


def test_min_delta_keeps_large_peaks_only(prodload: Path, tmp_path: Path) -> None:
    """GIVEN ten 8 KiB peaks then one of 128 MiB WHEN traced with --min-delta 64M THEN only
    the large one reaches the log (the kernel side filtered the rest and says how many),
    and it ends exactly at the VmPeak the workload read."""
    records, reports, stdout = run_traced(
        tmp_path, "--min-delta", "64M", command=[str(prodload), "sizes"]
    )
    large = next(r for r in reports if r["what"] == "large")
    peaks = of(records, "peak", large["pid"])
    assert peaks and all(p["vm_peak_kb"] - p["vm_peak_kb_before"] >= 64 * 1024 for p in peaks)
    assert peaks[-1]["vm_peak_kb"] == large["vm_peak_kb"]
    assert not of(records, "grow") and not of(records, "shrink")
    end = records[-1]
    assert end["type"] == "end" and end["filtered"] >= 10, end
    assert stdout.count(" PEAK ") == len(peaks)


def test_all_events_logs_everything_but_prints_large_peaks(prodload: Path, tmp_path: Path) -> None:
    """GIVEN the same workload WHEN traced with --min-delta 64M --all-events THEN every VmPeak
    the workload read after a small mmap is a peak record in the log, while the console
    shows only the peaks of at least 64 MiB."""
    records, reports, stdout = run_traced(
        tmp_path, "--min-delta", "64M", "--all-events", command=[str(prodload), "sizes"]
    )
    pid = reports[0]["pid"]
    logged = {p["vm_peak_kb"] for p in of(records, "peak", pid)}
    small = [r for r in reports if r["what"] in ("filled", "small")]
    assert [r["what"] for r in small] == ["filled"] + ["small"] * 10, reports
    # From VmSize == VmPeak ("filled"), every mmap raises VmPeak: the workload guarantees it.
    raised = [b for a, b in itertools.pairwise(small) if b["vm_peak_kb"] > a["vm_peak_kb"]]
    assert len(raised) == 10, ("each small mmap should raise VmPeak", small)
    assert all(r["vm_peak_kb"] in logged for r in raised), (raised, sorted(logged))
    large = [p for p in of(records, "peak") if p["vm_peak_kb"] - p["vm_peak_kb_before"] >= 65536]
    assert stdout.count(" PEAK ") == len(large)


# ---- VmHWM ------------------------------------------------------------------------------


def test_hwm_records_follow_proc_vmhwm(prodload: Path, tmp_path: Path) -> None:
    """GIVEN a workload touching 32 MiB in 1 MiB steps WHEN traced with --hwm-step 1M THEN
    the last hwm record before its final reading is within one step of the VmHWM it read
    (never above it), each record is at least one step above the previous one, and they
    are anon page growth. (A transparent huge page fault adds 2 MiB at once: the 6.1 VM
    has THP always on, so there may be half as many records as MiB.)"""
    records, reports, _ = run_traced(
        tmp_path, "--hwm-step", "1M", command=[str(prodload), "hwm", "32"]
    )
    start = next(r for r in reports if r["what"] == "hwm-start")
    done = next(r for r in reports if r["what"] == "hwm-done")
    hwms = [r for r in of(records, "hwm", done["pid"]) if r["ts_ns"] <= done["ts_ns"]]
    span = done["vm_hwm_kb"] - start["vm_hwm_kb"]
    assert len(hwms) >= span // 2048, f"{len(hwms)} hwm records for {span} kB of growth"
    last = hwms[-1]["hwm_kb"]
    assert done["vm_hwm_kb"] - 1024 < last <= done["vm_hwm_kb"], (last, done)
    assert all(h["rss_member"] == "anon" for h in hwms[1:])
    assert all(h["hwm_kb"] - h["hwm_kb_before"] >= 1024 for h in hwms[1:])


def test_clear_refs_reset_of_vmhwm_is_reported(prodload: Path, tmp_path: Path) -> None:
    """GIVEN a workload that touches 64 MiB, drops it and writes 5 to /proc/self/clear_refs
    (the kernel then resets hiwater_rss to the current RSS) WHEN traced with --hwm-step THEN
    a `hwm-reset` record says VmHWM fell to about what the workload read after the reset."""
    records, reports, stdout = run_traced(
        tmp_path,
        "--hwm-step",
        "1M",
        "--interval",
        "0.2",
        command=[str(prodload), "hwm-reset", "64"],
    )
    touched = next(r for r in reports if r["what"] == "touched")
    reset = next(r for r in reports if r["what"] == "reset")
    assert reset["vm_hwm_kb"] < touched["vm_hwm_kb"] - 32 * 1024, "clear_refs did not reset"
    resets = of(records, "hwm-reset", reset["pid"])
    # VmHWM can fall in two steps: when MADV_DONTNEED lowers RSS (if hiwater_rss was not
    # latched before it) and when clear_refs resets hiwater_rss; a sample between the two (a
    # slow machine) sees each; with no sample between the reset and the exit (a reader
    # behind), the exit's final VmHWM (taskstats) shows the fall. Either way the falls start
    # at the touched VmHWM and end at the reset.
    assert 1 <= len(resets) <= 2, resets
    assert resets[0]["hwm_kb_before"] >= touched["vm_hwm_kb"] - 1024
    assert all(r["hwm_kb"] < r["hwm_kb_before"] for r in resets)
    assert abs(resets[-1]["hwm_kb"] - reset["vm_hwm_kb"]) <= 1024, (resets[-1], reset)
    assert "HWM-RESET" in stdout
    (exit_rec,) = of(records, "exit", reset["pid"])
    (summary,) = [s for s in records[-1]["summary"] if s["pid"] == reset["pid"]]
    assert summary["vm_hwm_kb"] == exit_rec["hwm_kb"] == exit_rec["taskstats"]["hiwater_rss_kb"]


# ---- --cgroup ---------------------------------------------------------------------------


def _waiting(prodload: Path, mib: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [str(prodload), "wait", "big", str(mib)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    assert ready["what"] == "ready"
    return proc


def _release_all(
    vmt_args: list[str], procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> tuple[list[Record], dict[int, dict[str, Any]], int]:
    """Start vmtrace, release the waiting workloads, collect their reports, stop vmtrace with
    SIGINT; the log, the reports by pid, and vmtrace's own pid."""
    log = tmp_path / "log.jsonl"
    vmt = start_vmtrace([*vmt_args, "-o", str(log)], tmp_path)
    reports: dict[int, dict[str, Any]] = {}
    try:
        wait_for_start(log, vmt)
        for proc in procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(b"\n")
            proc.stdin.close()
            reports[proc.pid] = json.loads(proc.stdout.readline())
            assert proc.wait(timeout=RUN_TIMEOUT_S) == 0
        vmt.proc.send_signal(signal.SIGINT)
        assert vmt.proc.wait(timeout=RUN_TIMEOUT_S) == 0, tail(vmt.stderr())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        if vmt.proc.poll() is None:
            vmt.proc.kill()
    return read_jsonl(log), reports, vmt.proc.pid


def test_comm_traces_processes_by_name(prodload: Path, tmp_path: Path) -> None:
    """GIVEN two waiting workloads, one named prodload and one otherload WHEN traced with
    --comm prodload THEN only the first is traced, its peak ending at its own reading."""
    other = tmp_path / "otherload"
    shutil.copy(prodload, other)
    named, unnamed = _waiting(prodload, 80), _waiting(other, 40)
    records, reports, _ = _release_all(["--comm", "prodload"], [named, unnamed], tmp_path)
    traced = {r["pid"] for r in records if r.get("pid")}
    assert unnamed.pid not in traced
    assert max_peak(records, named.pid) == reports[named.pid]["vm_peak_kb"]


def test_all_traces_every_process_but_itself(prodload: Path, tmp_path: Path) -> None:
    """GIVEN a waiting workload WHEN traced with -a THEN it is traced (exact peak, found by
    the kernel side on its own), and vmtrace never traces itself."""
    proc = _waiting(prodload, 90)
    records, reports, vmtrace_pid = _release_all(["-a"], [proc], tmp_path)
    assert max_peak(records, proc.pid) == reports[proc.pid]["vm_peak_kb"]
    assert vmtrace_pid not in {r["pid"] for r in records}


def test_cgroup_traces_only_its_members(prodload: Path, cgroup_dir: Path, tmp_path: Path) -> None:
    """GIVEN two waiting workloads, one moved into a cgroup WHEN traced with --cgroup THEN
    the member's peak ends at its own VmPeak reading and the other is never traced."""
    inside, outside = _waiting(prodload, 120), _waiting(prodload, 60)
    (cgroup_dir / "cgroup.procs").write_text(str(inside.pid))
    records, reports, _ = _release_all(["--cgroup", str(cgroup_dir)], [inside, outside], tmp_path)
    traced = {r["pid"] for r in records if r.get("pid")}
    assert outside.pid not in traced
    assert max_peak(records, inside.pid) == reports[inside.pid]["vm_peak_kb"]
    assert records[-1]["type"] == "end" and records[-1]["reason"] == "interrupted"


# ---- exit -------------------------------------------------------------------------------


def test_exit_record_carries_the_final_vmpeak(prodload: Path, tmp_path: Path) -> None:
    """GIVEN an attached workload that maps 150 MiB, reads its VmPeak and exits THEN the exit
    record's VmPeak equals that reading."""
    proc = _waiting(prodload, 150)
    try:
        log = tmp_path / "log.jsonl"
        vmt = start_vmtrace(["-p", str(proc.pid), "-o", str(log)], tmp_path)
        wait_for_start(log, vmt)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"\n")
        proc.stdin.close()
        report = json.loads(proc.stdout.readline())
        assert proc.wait(timeout=RUN_TIMEOUT_S) == 0
        assert vmt.proc.wait(timeout=RUN_TIMEOUT_S) == 0, tail(vmt.stderr())
    finally:
        if proc.poll() is None:
            proc.kill()
    records = read_jsonl(log)
    (exit_rec,) = of(records, "exit", proc.pid)
    assert exit_rec["vm_peak_kb"] == report["vm_peak_kb"], exit_rec
