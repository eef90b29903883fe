"""The kernel side's guarantees: each change credited once, to the thread that made it;
every exec seen, however it was made; slow growth seen under --min-delta.

The expectations are what tests/integration/kernelload.c read from its own
/proc/self/status, and the thread ids it reported itself.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration._require import require
from tests.integration.conftest import (
    build_c,
    of,
    read_jsonl,
    run_traced,
    start_vmtrace,
    vmtrace_cmd,
    vmtrace_env,
)
from vmtrace.cgroups import cgroup2_mounts

pytestmark = pytest.mark.bpf

SRC = Path(__file__).resolve().parent / "kernelload.c"
PAGE_KB = 4


@pytest.fixture(scope="module")
def kernelload(bpf_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_c(SRC, tmp_path_factory.mktemp("kernelload"), "-pthread")


def test_every_latch_and_peak_is_the_writers_once(kernelload: Path, tmp_path: Path) -> None:
    """GIVEN a writer thread mapping and unmapping growing 64 MiB regions while two reader
    threads hold mmap_lock for reading in a loop (mincore, /proc/self/maps)
    THEN every peak and latch of those regions is the writer's mmap or munmap, once."""
    n = 150
    records, reports, _ = run_traced(tmp_path, command=[str(kernelload), "readers", str(n)])
    writer = next(r for r in reports if r["what"] == "writer")
    pid = writer["pid"]

    def region(r: dict[str, object]) -> bool:  # the writer's 64 MiB + i pages
        args = r.get("args")
        length = args.get("len", 0) if isinstance(args, dict) else 0
        return isinstance(length, int) and 64 << 20 < length <= (64 << 20) + n * 4096

    # everything above the first region's peak is the writer's loop
    first = min(r["vm_peak_kb"] for r in of(records, "peak", pid) if region(r))
    latches = [r for r in of(records, "latch", pid) if r["hiwater_vm_kb"] >= first]
    peaks = [r for r in of(records, "peak", pid) if r["vm_peak_kb"] >= first]
    for r in latches + peaks:
        assert r["tid"] == writer["tid"], ("credited to another thread", r)
        assert r["cause"] in ("mmap", "munmap"), r
    latches = [r for r in latches if region(r)]
    peaks = [r for r in peaks if region(r)]
    # each region raised VmPeak once and each unmap latched it once: no doubles, none lost
    assert len(peaks) == n, Counter(r["cause"] for r in peaks)
    assert len(latches) == n
    assert len({r["hiwater_vm_kb"] for r in latches}) == n, "a latch was reported twice"
    assert {r["vm_peak_kb"] for r in peaks} == {r["hiwater_vm_kb"] for r in latches}
    done = next(r for r in reports if r["what"] == "writer-done")
    assert max(r["vm_peak_kb"] for r in peaks) == done["vm_peak_kb"]


@pytest.mark.parametrize("how", ["execveat", "thread-exec"])
def test_every_exec_starts_the_peak_over(kernelload: Path, tmp_path: Path, how: str) -> None:
    """GIVEN a process that grows to 300 MiB, then execs a smaller image with execveat
    (fexecve) or with execve from a thread that is not the leader
    THEN an EXEC record names the call, and the final VmPeak everywhere (summary, exit
    record, report) is the new image's own."""
    records, reports, _ = run_traced(tmp_path, command=[str(kernelload), how, "300"])
    before = next(r for r in reports if r["what"] == "before-exec")
    new = next(r for r in reports if r["what"] == "new-image")
    pid = before["pid"]
    assert new["pid"] == pid
    assert new["vm_peak_kb"] < before["vm_peak_kb"] - 200 * 1024
    execs = of(records, "exec", pid)
    assert execs, "no exec record"
    last = execs[-1]
    assert last["syscall"] == ("execveat" if how == "execveat" else "execve"), last
    if how == "thread-exec":
        exec_thread = next(r for r in reports if r["what"] == "exec-thread")
        assert last["exec_tid"] == exec_thread["tid"], last
    # no change of the new image is shown as the old image's loader work
    after = [r for r in records if r["pid"] == pid and r["ts_ns"] > last["ts_ns"]]
    assert not [r for r in after if r["type"] == "peak" and r["syscall"] in ("execve", "execveat")]
    peaks_after = [r["vm_peak_kb"] for r in after if r["type"] == "peak"]
    assert max(peaks_after) == new["vm_peak_kb"]
    (exit_rec,) = of(records, "exit", pid)
    assert exit_rec["vm_peak_kb"] == new["vm_peak_kb"], exit_rec
    (end,) = of(records, "end")
    (summary,) = [s for s in end["summary"] if s["pid"] == pid]
    assert summary["vm_peak_kb"] == new["vm_peak_kb"]


def test_a_moved_mremap_is_where_the_kernel_put_it(kernelload: Path, tmp_path: Path) -> None:
    """GIVEN a 1 MiB + 4 KiB mapping 512 KiB past a 2 MiB boundary that cannot grow in place
    WHEN it is mremap()ed to 96 MiB (a huge-page-sized move: the kernel places it by the old
    mapping's page offset, not at the start of the free range it found)
    THEN the mremap record's result and mapping are where mremap said it went."""
    records, reports, _ = run_traced(tmp_path, command=[str(kernelload), "mremap-move"])
    (moved,) = [r for r in reports if r["what"] == "moved"]
    (rec,) = [r for r in records if r.get("pid") == moved["pid"] and r.get("cause") == "mremap"]
    assert rec["ret"] == moved["new"], (rec["ret"], moved)
    assert rec["mapping"]["start"] == moved["new"]


def test_min_delta_sees_slow_growth(kernelload: Path, tmp_path: Path) -> None:
    """GIVEN a heap growing in 128 KiB brk steps to 320 MiB
    WHEN traced with --min-delta 64M
    THEN a peak is reported each time VmPeak has risen 64 MiB since the last one reported,
    saying how many smaller rises it covers, and the last reported peak is within 64 MiB of
    the workload's own VmPeak."""
    records, reports, _ = run_traced(
        tmp_path, "--min-delta", "64M", command=[str(kernelload), "brk", "128", "2560"]
    )
    start = next(r for r in reports if r["what"] == "brk-start")
    done = next(r for r in reports if r["what"] == "brk-done")
    pid = start["pid"]
    peaks = [p for p in of(records, "peak", pid) if p["cause"] == "brk"]
    assert len(peaks) >= 4, peaks
    for a, b in itertools.pairwise(peaks):
        assert b["vm_peak_kb"] - a["vm_peak_kb"] >= 64 * 1024
        assert b["rises_covered"] >= 64 * 1024 // 128 - 1, b
    assert done["vm_peak_kb"] - peaks[-1]["vm_peak_kb"] < 64 * 1024
    assert peaks[-1]["vm_peak_kb"] > start["vm_peak_kb"] + 4 * 64 * 1024


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    """A fresh memory cgroup limited to 200 MiB without swap (v1 or v2, what the machine has)."""
    limit = str(200 << 20)
    v1 = Path("/sys/fs/cgroup/memory")
    v2 = next(
        (Path(m) for m in cgroup2_mounts() if "memory" in _read(Path(m) / "cgroup.controllers")),
        None,
    )
    if (v1 / "memory.limit_in_bytes").exists():
        cg = v1 / f"vmtrace-oom-{os.getpid()}"
        cg.mkdir()
        (cg / "memory.limit_in_bytes").write_text(limit)
    elif v2 is not None:
        with contextlib.suppress(OSError):
            (v2 / "cgroup.subtree_control").write_text("+memory")
        cg = v2 / f"vmtrace-oom-{os.getpid()}"
        cg.mkdir()
        (cg / "memory.max").write_text(limit)
        with contextlib.suppress(OSError):
            (cg / "memory.swap.max").write_text("0")
    else:
        require(False, "no memory cgroup controller (v1 or v2) on this machine")
        return
    try:
        yield cg
    finally:
        for _ in range(50):  # the killed process leaves the cgroup as it is reaped
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_oom_kill_is_explained(kernelload: Path, memory_cgroup: Path, tmp_path: Path) -> None:
    """GIVEN a process that grows 16 MiB at a time in a 200 MiB memory cgroup until the OOM
    killer kills it
    THEN an `oom` record names it, with its RSS by kind at the kill, its last VmPeak rises
    with their causes and its largest mappings, and its exit record says it was OOM-killed."""
    log = tmp_path / "log.jsonl"
    script = f'echo $$ > {memory_cgroup}/cgroup.procs && exec {kernelload} grow 16'
    vmt = start_vmtrace(["run", "-o", str(log), "--", "/bin/sh", "-c", script], tmp_path)
    vmt.wait()
    records = read_jsonl(log)
    reports = [json.loads(ln) for ln in vmt.stdout().splitlines() if ln.startswith('{"what"')]
    last = reports[-1]
    pid = last["pid"]
    (oom,) = of(records, "oom", pid)
    assert oom["rss_kb_by_kind"]["anon"] > 150 * 1024, oom
    assert oom["rss_kb"] == sum(oom["rss_kb_by_kind"].values())
    assert oom["vm_peak_kb"] >= last["vm_peak_kb"]
    assert memory_cgroup.name in (oom["cgroup"] or ""), oom["cgroup"]
    rises = oom["last_rises"]
    assert rises and rises[-1]["cause"] == "mmap", rises
    assert rises[-1]["vm_peak_kb"] >= last["vm_peak_kb"]
    assert oom["largest_mappings"][0]["size_kb"] >= 16 * 1024
    # the oom record comes before the exit, and the exit says how it ended
    (exit_rec,) = of(records, "exit", pid)
    assert records.index(oom) < records.index(exit_rec)
    assert exit_rec["ended"] == {"how": "oom-kill", "signal": 9, "name": "SIGKILL"}, exit_rec
    out = vmt.stdout()
    assert "OOM" in out and "killed by SIGKILL (OOM killer)" in out
    assert "map_touched+0x" in out, "the rises' stacks are shown as frames"
    # `vmtrace report` opens with it
    report = subprocess.run(
        vmtrace_cmd("report", str(log)), capture_output=True, text=True, env=vmtrace_env()
    )
    assert report.returncode == 0, report.stderr
    text = report.stdout
    assert f"OOM KILL: pid {pid}" in text
    assert text.index("OOM KILL") < text.index("== pid")
