"""Hardening: faults vmtrace must survive (root, real BPF).

The target exits, execs, or churns threads during attach, tracing and shutdown; a traced pid
is reused by an unrelated process; vmtrace itself is SIGKILLed; the disk fills up; the output
cannot be created; an mmap/munmap flood overruns the ring buffer. Every expectation is either
a number the workload (tests/integration/hardload.c) read from its own /proc/self/status, or
what the kernel says is loaded (bpftool), never a value written by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration._require import require
from tests.integration.conftest import (
    REPO_ROOT,
    RUN_TIMEOUT_S,
    Record,
    VmtraceProc,
    read_jsonl,
    start_vmtrace,
    tail,
    vmtrace_cmd,
    vmtrace_env,
    wait_for_start,
)

pytestmark = pytest.mark.bpf

HARDLOAD_SRC = Path(__file__).resolve().parent / "hardload.c"
# vmtrace's BPF programs as bcc names them (after the C functions in bpf/*.c).
# bcc's program names (the OOM probe's shows as its event's name)
PROG_NAME = re.compile(
    r"^(tracepoint__|raw_tracepoint__|kprobe__|kretprobe__|kfunc__|kretfunc__|vmt_|mark_victim$)"
)
# How long vmtrace may take to notice an exit and finish (it polls every 100 ms).
EXIT_TIMEOUT_S = 60.0


# ---- helpers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hardload(bpf_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    require(gcc is not None, "gcc is needed to build tests/integration/hardload.c")
    assert gcc is not None
    out = tmp_path_factory.mktemp("hardload") / "hardload"
    res = subprocess.run(
        [gcc, "-O2", "-Wall", "-pthread", "-o", str(out), str(HARDLOAD_SRC)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    return out


def spawn(hardload: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(hardload), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def report(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"workload {proc.args!r} said nothing (exit {proc.poll()})"
    rep: dict[str, Any] = json.loads(line)
    return rep


def ready(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    rep = report(proc)
    assert rep["what"] in ("ready", "hold"), rep
    return proc


def release(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"\n")
    proc.stdin.flush()


@contextlib.contextmanager
def cleanup(*procs: subprocess.Popen[bytes] | VmtraceProc) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            proc = p.proc if isinstance(p, VmtraceProc) else p
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def of(records: list[Record], rtype: str, pid: int | None = None) -> list[Record]:
    return [r for r in records if r["type"] == rtype and (pid is None or r["pid"] == pid)]


def no_traceback(vmt: VmtraceProc) -> None:
    assert "Traceback" not in vmt.stderr() + vmt.stdout(), tail(vmt.stderr())


def vmtrace_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]


def check_log_prefix(path: Path) -> list[Record]:
    """A log written by a vmtrace that may have died: every complete line is a JSON object,
    the first a `start`; only the last line may lack its newline (and then may be partial)."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, partial = lines[:-1], lines[-1]
    records = []
    for i, line in enumerate(complete, 1):
        try:
            rec = json.loads(line)
        except ValueError as e:
            pytest.fail(f"{path}:{i}: complete line is not JSON ({e}): {line[:200]!r}")
        assert isinstance(rec, dict), f"{path}:{i}: not an object"
        records.append(rec)
    if partial:
        with contextlib.suppress(ValueError):
            json.loads(partial)  # a partial last line is allowed, a whole one without \n too
    assert records and records[0]["type"] == "start", records[:1]
    return records


def assert_ends_well(records: list[Record]) -> None:
    """The log is whole: one `end`, last; nothing about a process after its `exit`."""
    assert records[-1]["type"] == "end", records[-3:]
    assert len(of(records, "end")) == 1
    exited: set[int] = set()
    for rec in records:
        assert rec["pid"] not in exited, f"record after the exit of pid {rec['pid']}: {rec}"
        if rec["type"] == "exit":
            exited.add(rec["pid"])


# ---- the target exits, execs, churns threads ------------------------------------------


@pytest.mark.parametrize("delay", [0.0, 0.4, 0.9, 1.6])
def test_target_exits_during_attach(hardload: Path, tmp_path: Path, delay: float) -> None:
    """GIVEN a process that exits DELAY s after `vmtrace -p` starts (while vmtrace checks it,
    compiles or attaches) THEN no traceback; either a one-line error (exit 1: it is gone) or
    exit 0 with a log that has the target's exit record and ends with `end`."""
    proc = ready(spawn(hardload, "wait", "big", "16"))
    reaper = threading.Thread(target=proc.wait)  # reaped at once: no zombie to find
    log = tmp_path / "log.jsonl"
    vmt = start_vmtrace(["-p", str(proc.pid), "-o", str(log)], tmp_path)
    with cleanup(proc, vmt):
        time.sleep(delay)
        release(proc)
        reaper.start()
        rc = vmt.wait(EXIT_TIMEOUT_S)
        reaper.join()
    no_traceback(vmt)
    if rc != 0:
        lines = vmtrace_lines(vmt.stderr())
        assert rc == 1, f"exit {rc}: {tail(vmt.stderr())}"
        assert len(lines) == 1 and lines[0].startswith("vmtrace: failed to"), lines
        if log.exists():
            records = read_jsonl(log)
            if records:
                assert_ends_well(records)
        return
    records = read_jsonl(log)
    assert_ends_well(records)
    assert records[-1]["reason"] == "targets-exited"
    assert len(of(records, "exit", proc.pid)) == 1, records[-3:]


def test_target_exits_while_traced(hardload: Path, tmp_path: Path) -> None:
    """GIVEN an attached process that maps 64 MiB and exits THEN vmtrace ends by itself with
    exit 0, the log ends with the target's `exit` (its VmPeak as the target read it) and
    `end` (targets-exited)."""
    proc = ready(spawn(hardload, "wait", "big", "64"))
    log = tmp_path / "log.jsonl"
    vmt = start_vmtrace(["-p", str(proc.pid), "-o", str(log)], tmp_path)
    with cleanup(proc, vmt):
        wait_for_start(log, vmt)
        release(proc)
        rep = report(proc)
        assert proc.wait(timeout=RUN_TIMEOUT_S) == 0
        assert vmt.wait(EXIT_TIMEOUT_S) == 0, tail(vmt.stderr())
    no_traceback(vmt)
    records = read_jsonl(log)
    assert_ends_well(records)
    assert [r["type"] for r in records[-2:]] == ["exit", "end"]
    assert records[-2]["pid"] == proc.pid
    assert records[-2]["vm_peak_kb"] == rep["vm_peak_kb"]
    assert records[-1]["reason"] == "targets-exited"


def test_sigint_as_the_target_exits(hardload: Path, tmp_path: Path) -> None:
    """GIVEN an attached process WHEN vmtrace gets SIGINT and the process exits at the same
    moment THEN vmtrace exits 0, the log ends with `end`, and nothing about the process
    follows its `exit` record, if there is one (then with the VmPeak it read)."""
    proc = ready(spawn(hardload, "wait", "big", "48"))
    log = tmp_path / "log.jsonl"
    vmt = start_vmtrace(["-p", str(proc.pid), "-o", str(log)], tmp_path)
    with cleanup(proc, vmt):
        wait_for_start(log, vmt)
        vmt.proc.send_signal(signal.SIGINT)
        release(proc)
        rep = report(proc)
        assert proc.wait(timeout=RUN_TIMEOUT_S) == 0
        rc = vmt.wait(EXIT_TIMEOUT_S)
    no_traceback(vmt)
    assert rc == 0, tail(vmt.stderr())
    records = read_jsonl(log)
    assert_ends_well(records)
    assert records[-1]["reason"] in ("interrupted", "targets-exited")
    for ex in of(records, "exit", proc.pid):
        assert ex["vm_peak_kb"] == rep["vm_peak_kb"], ex


def test_sigint_during_shutdown(hardload: Path, tmp_path: Path) -> None:
    """GIVEN an attached process that exits WHEN vmtrace gets SIGINT right after the exit
    and again every 5 ms until it is gone (Ctrl-C while it shuts down: an impatient user)
    THEN exit 0, no traceback, the log ends with the process's `exit` (the kernel's record
    of it was in the ring buffer before the first signal) and `end`."""
    proc = ready(spawn(hardload, "wait", "big", "48"))
    log = tmp_path / "log.jsonl"
    vmt = start_vmtrace(["-p", str(proc.pid), "-o", str(log)], tmp_path)
    with cleanup(proc, vmt):
        wait_for_start(log, vmt)
        release(proc)
        rep = report(proc)
        assert proc.wait(timeout=RUN_TIMEOUT_S) == 0
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        while vmt.proc.poll() is None and time.monotonic() < deadline:
            vmt.proc.send_signal(signal.SIGINT)
            time.sleep(0.005)
        rc = vmt.wait(EXIT_TIMEOUT_S)
    records = read_jsonl(log)
    assert records and records[-1]["type"] == "end", records[-2:]
    no_traceback(vmt)
    assert rc == 0, tail(vmt.stderr())
    assert_ends_well(records)
    (ex,) = of(records, "exit", proc.pid)
    assert ex["vm_peak_kb"] == rep["vm_peak_kb"]


def test_threads_come_and_go_during_attach_and_tracing(hardload: Path, tmp_path: Path) -> None:
    """GIVEN a process that starts and joins 8 threads at a time (each maps and unmaps 1-4 MiB
    on an 8 MiB stack) before, during and after the attach, then maps 256 MiB in one more
    thread WHEN traced with -p THEN vmtrace exits 0 with no mismatch, and the last peak and
    the exit record are exactly the VmPeak the process read."""
    proc = spawn(hardload, "churn")
    log = tmp_path / "log.jsonl"
    with cleanup(proc):
        time.sleep(0.2)
        vmt = start_vmtrace(["-p", str(proc.pid), "-o", str(log), "--interval", "0.3"], tmp_path)
        with cleanup(vmt):
            wait_for_start(log, vmt)
            time.sleep(2.0)  # churning while traced, sampled several times
            release(proc)
            rep = report(proc)
            assert proc.wait(timeout=RUN_TIMEOUT_S) == 0
            assert vmt.wait(EXIT_TIMEOUT_S) == 0, tail(vmt.stderr())
    no_traceback(vmt)
    assert rep["arg"] > 5, f"only {rep['arg']} rounds of threads"
    records = read_jsonl(log)
    assert_ends_well(records)
    assert not of(records, "mismatch"), of(records, "mismatch")[:3]
    samples = of(records, "sample", proc.pid)
    assert samples and all(s["match"] for s in samples), [s for s in samples if not s["match"]]
    peaks = of(records, "peak", proc.pid)
    assert peaks and peaks[-1]["vm_peak_kb"] == rep["vm_peak_kb"], (peaks[-2:], rep)
    (ex,) = of(records, "exit", proc.pid)
    assert ex["vm_peak_kb"] == rep["vm_peak_kb"]
    assert len({r["tid"] for r in of(records, "grow", proc.pid)}) > 8, "threads not seen"


def test_threads_from_the_first_instruction(hardload: Path, tmp_path: Path) -> None:
    """GIVEN `vmtrace run` of 100 rounds of 16 short-lived threads, then 16 threads that keep
    their maps THEN exit 0 and the peak records end exactly at the VmPeak it read."""
    log = tmp_path / "log.jsonl"
    vmt = start_vmtrace(
        ["run", "-o", str(log), "--", str(hardload), "threads", "100", "16"], tmp_path
    )
    with cleanup(vmt):
        assert vmt.wait(RUN_TIMEOUT_S) == 0, tail(vmt.stderr())
    no_traceback(vmt)
    reps = {
        r["what"]: r
        for r in map(
            json.loads, (ln for ln in vmt.stdout().splitlines() if ln.startswith('{"what"'))
        )
    }
    done = reps["threads-done"]
    records = read_jsonl(log)
    assert_ends_well(records)
    assert not of(records, "mismatch")
    peaks = of(records, "peak", done["pid"])
    assert max(p["vm_peak_kb"] for p in peaks) == done["vm_peak_kb"]
    assert records[-1]["summary"][0]["vm_peak_kb"] == done["vm_peak_kb"]


def test_exec_while_traced(hardload: Path, tmp_path: Path) -> None:
    """GIVEN an attached process that maps 64 MiB then execs a program that maps 200 MiB
    THEN an `exec` record (VmPeak starts over; before it, the old mm's VmPeak as the process
    read it), and the peaks after it end exactly at the new program's own VmPeak."""
    proc = ready(spawn(hardload, "wait", "exec", "64", "200"))
    log = tmp_path / "log.jsonl"
    vmt = start_vmtrace(["-p", str(proc.pid), "-o", str(log)], tmp_path)
    with cleanup(proc, vmt):
        wait_for_start(log, vmt)
        release(proc)
        pre, post = report(proc), report(proc)
        assert proc.wait(timeout=RUN_TIMEOUT_S) == 0
        assert vmt.wait(EXIT_TIMEOUT_S) == 0, tail(vmt.stderr())
    no_traceback(vmt)
    assert (pre["what"], post["what"], post["pid"]) == ("pre-exec", "big", proc.pid)
    records = read_jsonl(log)
    assert_ends_well(records)
    mine = [r for r in records if r["pid"] == proc.pid]
    kinds = [r["type"] for r in mine]
    assert kinds.count("exec") == 1, kinds
    at = kinds.index("exec")
    exec_rec = mine[at]
    assert exec_rec["vm_peak_kb_before"] == pre["vm_peak_kb"], exec_rec
    assert exec_rec["vm_peak_kb"] < pre["vm_peak_kb"]
    after = [r for r in mine[at + 1 :] if r["type"] == "peak"]
    assert after and after[-1]["vm_peak_kb"] == post["vm_peak_kb"], (after[-2:], post)
    assert of(records, "exit", proc.pid)[0]["vm_peak_kb"] == post["vm_peak_kb"]
    assert not of(records, "mismatch")


# ---- PID reuse --------------------------------------------------------------------------


def spawn_with_pid(hardload: Path, pid: int, *args: str) -> subprocess.Popen[bytes] | None:
    """Start `hardload ARGS` as process PID (ns_last_pid = PID-1, then fork), retrying while
    some other process takes the pid first; None if it never worked."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        proc = spawn(hardload, *args)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
        time.sleep(0.01)
    return None


def test_reused_pid_is_not_traced_as_the_old_process(hardload: Path, tmp_path: Path) -> None:
    """GIVEN vmtrace -p P -p Q WHEN P exits and, while vmtrace still runs for Q, a new
    unrelated process gets pid P and maps 128 MiB THEN there is no record under pid P after
    P's exit record, and the new process's VmPeak appears nowhere."""
    require(os.path.exists("/proc/sys/kernel/ns_last_pid"), "needs /proc/sys/kernel/ns_last_pid")
    first = ready(spawn(hardload, "hold"))
    keeper = ready(spawn(hardload, "hold"))
    pid = first.pid
    log = tmp_path / "log.jsonl"
    vmt = start_vmtrace(
        ["-p", str(pid), "-p", str(keeper.pid), "-o", str(log), "--interval", "0.2"], tmp_path
    )
    reused: subprocess.Popen[bytes] | None = None
    with cleanup(first, keeper, vmt):
        wait_for_start(log, vmt)
        release(first)
        assert first.wait(timeout=RUN_TIMEOUT_S) == 0
        reused = spawn_with_pid(hardload, pid, "wait", "big", "128")
        assert reused is not None, f"could not get pid {pid} again"
        with cleanup(reused):
            ready(reused)
            release(reused)
            rep = report(reused)
            assert reused.wait(timeout=RUN_TIMEOUT_S) == 0
        time.sleep(1.0)  # samples and exit checks run while pid P is the new process's
        release(keeper)
        assert keeper.wait(timeout=RUN_TIMEOUT_S) == 0
        assert vmt.wait(EXIT_TIMEOUT_S) == 0, tail(vmt.stderr())
    no_traceback(vmt)
    records = read_jsonl(log)
    assert_ends_well(records)  # includes: nothing under P after P's exit
    assert len(of(records, "exit", pid)) == 1
    assert of(records, "exit", keeper.pid)
    assert all(r.get("vm_peak_kb") != rep["vm_peak_kb"] for r in records if r["pid"] == pid), (
        "the new process's peak was taken for the old one"
    )
    assert not of(records, "mismatch")


# ---- SIGKILL ----------------------------------------------------------------------------


def bpftool_json(*args: str) -> Any:
    res = subprocess.run(["bpftool", *args, "--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout or "[]")


def tracefs_dir() -> Path | None:
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "tracefs":
                return Path(parts[1])
    return None


def test_sigkill_leaves_nothing_attached(hardload: Path, tmp_path: Path) -> None:
    """GIVEN vmtrace tracing a process that churns threads and maps WHEN it is killed with
    SIGKILL THEN none of its BPF programs, maps or perf events stays in the kernel
    (bpftool), no bcc probe is left in tracefs, the log written so far parses line by line
    (at most a partial last line), and the traced process carries on unharmed."""
    require(shutil.which("bpftool") is not None, "bpftool is needed (apt-get install bpftool)")
    proc = ready(spawn(hardload, "wait", "churn"))
    log = tmp_path / "log.jsonl"
    vmt = start_vmtrace(["-p", str(proc.pid), "-o", str(log)], tmp_path)
    vpid = vmt.proc.pid
    with cleanup(proc, vmt):
        wait_for_start(log, vmt)
        release(proc)
        time.sleep(1.5)
        perf = [p for p in bpftool_json("perf", "list") if p.get("pid") == vpid]
        prog_ids = {p["prog_id"] for p in perf}
        assert prog_ids, "vmtrace has no BPF program attached while tracing"
        progs = {p["id"]: p for p in bpftool_json("prog", "list") if p["id"] in prog_ids}
        assert all(PROG_NAME.match(p.get("name", "")) for p in progs.values()), progs
        map_ids = {m for p in progs.values() for m in p.get("map_ids", [])}
        assert map_ids
        vmt.proc.send_signal(signal.SIGKILL)
        assert vmt.proc.wait(timeout=30) == -signal.SIGKILL
        # programs and maps are freed after an RCU grace period: allow a few seconds
        deadline = time.monotonic() + 10
        while True:
            left_progs = prog_ids & {p["id"] for p in bpftool_json("prog", "list")}
            left_maps = map_ids & {m["id"] for m in bpftool_json("map", "list")}
            left_perf = [p for p in bpftool_json("perf", "list") if p.get("pid") == vpid]
            if not (left_progs or left_maps or left_perf) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not left_progs, f"BPF programs still loaded after SIGKILL: {left_progs}"
        assert not left_maps, f"BPF maps still there after SIGKILL: {left_maps}"
        assert not left_perf, f"perf events still attached after SIGKILL: {left_perf}"
        tfs = tracefs_dir()
        if tfs is not None:
            for name in ("kprobe_events", "uprobe_events"):
                f = tfs / name
                if f.exists():
                    assert f"bcc_{vpid}" not in f.read_text(), f.read_text()
        # the target never noticed
        assert proc.poll() is None, "the traced process died with vmtrace"
        release(proc)
        rep = report(proc)
        assert proc.wait(timeout=RUN_TIMEOUT_S) == 0 and rep["what"] == "churn-done"
    records = check_log_prefix(log)
    assert of(records, "grow") or of(records, "shrink"), "nothing logged before the kill"
    assert not of(records, "end")


# ---- output faults ----------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(options: str) -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="vmtrace-hard-"))
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "vmtrace-hard", str(where)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        where.rmdir()
        require(False, f"cannot mount a tmpfs ({options}): {res.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def test_disk_full_stops_cleanly(hardload: Path, tmp_path: Path) -> None:
    """GIVEN -o on a 64 KiB tmpfs and a busy target WHEN the disk fills THEN vmtrace exits
    1 with one stderr line `vmtrace: failed to write FILE: No space left on device` (with -q),
    every complete line of the log parses, nothing stays attached, the target lives on."""
    proc = ready(spawn(hardload, "wait", "churn"))
    with tmpfs("size=64k,mode=0700") as mnt, cleanup(proc):
        log = mnt / "log.jsonl"
        vmt = start_vmtrace(["-q", "-p", str(proc.pid), "-o", str(log)], tmp_path)
        with cleanup(vmt):
            wait_for_start(log, vmt)
            release(proc)
            rc = vmt.wait(EXIT_TIMEOUT_S)
        no_traceback(vmt)
        lines = vmtrace_lines(vmt.stderr())
        assert rc == 1, f"exit {rc}: {tail(vmt.stderr())}"
        assert len(lines) == 1, lines
        assert re.fullmatch(
            rf"vmtrace: failed to write {re.escape(str(log))}: No space left on device", lines[0]
        ), lines
        assert log.stat().st_size > 32 * 1024
        records = check_log_prefix(log)
        assert len(records) > 2
        left = [p for p in bpftool_json("perf", "list") if p.get("pid") == vmt.proc.pid]
        assert not left
        assert proc.poll() is None, "the traced process died"
        release(proc)
        assert report(proc)["what"] == "churn-done"
        assert proc.wait(timeout=RUN_TIMEOUT_S) == 0


@pytest.mark.parametrize("where", ["read-only-mount", "proc", "missing-dir"])
def test_unwritable_output_refused_before_tracing(
    hardload: Path, tmp_path: Path, where: str
) -> None:
    """GIVEN -o in a read-only file system, under /proc, or in a directory that does not
    exist WHEN vmtrace -p starts THEN one line `vmtrace: failed to create ...`, exit 1, and
    it never loaded a BPF program nor opened a perf event (strace)."""
    require(shutil.which("strace") is not None, "strace is needed (apt-get install strace)")
    proc = ready(spawn(hardload, "hold"))
    with contextlib.ExitStack() as stack:
        stack.enter_context(cleanup(proc))
        if where == "read-only-mount":
            out = stack.enter_context(tmpfs("ro,size=64k")) / "log.jsonl"
        elif where == "proc":
            out = Path("/proc/vmtrace-hardening.jsonl")
        else:
            out = tmp_path / "no" / "such" / "dir" / "log.jsonl"
        calls = tmp_path / "strace.txt"
        res = subprocess.run(
            [
                "strace",
                "-f",
                "-qq",
                "-e",
                "trace=bpf,perf_event_open",
                "-o",
                str(calls),
                *vmtrace_cmd("-p", str(proc.pid), "-o", str(out)),
            ],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=vmtrace_env(),
            timeout=RUN_TIMEOUT_S,
        )
        assert res.returncode == 1, res.stderr
        assert "Traceback" not in res.stderr + res.stdout
        lines = vmtrace_lines(res.stderr)
        assert len(lines) == 1 and lines[0].startswith(f"vmtrace: failed to create {out}"), lines
        assert not out.exists()
        traced = calls.read_text()
        assert "BPF_PROG_LOAD" not in traced and "perf_event_open(" not in traced, traced[:2000]
        assert proc.poll() is None


# ---- event flood ------------------------------------------------------------------------


def test_event_flood_is_counted_and_peak_exact(hardload: Path, tmp_path: Path) -> None:
    """GIVEN 4 threads doing 64 KiB mmap+munmap as fast as they can for 1 s, and at least
    50,000 times (hundreds of thousands of total_vm changes) WHEN traced with `vmtrace run`
    THEN exit 0; nothing is lost: every change is either a record or tallied by the kernel
    (the reader being behind), `end.tallied` is the sum of the `tally` records and their last
    `total`; the kB the logged changes and the tallies map and unmap cover the workload's own
    64 KiB regions; the final VmPeak in the summary is exactly the workload's own reading."""
    log = tmp_path / "log.jsonl"
    vmt = start_vmtrace(
        # at least 1 s, and on until 50,000 iterations (100,000 changes) however slow the host
        ["run", "-o", str(log), "--", str(hardload), "flood", "4", "1000", "0", "50000"],
        tmp_path,
    )
    with cleanup(vmt):
        assert vmt.wait(RUN_TIMEOUT_S) == 0, tail(vmt.stderr())
    no_traceback(vmt)
    rep = json.loads(next(ln for ln in vmt.stdout().splitlines() if ln.startswith('{"what"')))
    changes = 2 * rep["arg"]
    assert changes >= 100_000, f"only {changes} changes: not a flood"
    records = read_jsonl(log)
    assert_ends_well(records)
    end = records[-1]
    assert end["lost"] == 0 == sum(r["count"] for r in of(records, "lost")), end["lost_by_kind"]
    tallies = of(records, "tally")
    assert end["tallied"] == sum(r["count"] for r in tallies)
    (summary,) = [s for s in end["summary"] if s["pid"] == rep["pid"]]
    if tallies:
        assert tallies[-1]["total"] == end["tallied"]
        # one process traced: what was tallied is its own
        assert set(tallies[-1]["by_pid"]) == {str(rep["pid"])}, tallies[-1]
    assert summary["tallied"]["changes"] == end["tallied"], (summary["tallied"], end["tallied"])
    counted = [r for r in records if r["type"] in ("grow", "shrink", "peak", "latch")]
    assert end["events"] >= len(counted) > 0
    assert len(counted) + end["tallied"] >= changes, (len(counted), end["tallied"], changes)
    mine = [r for r in counted if r["pid"] == rep["pid"]]
    grown = sum(r["delta_kb"] for r in mine if r["delta_kb"] > 0)
    shrunk = -sum(r["delta_kb"] for r in mine if r["delta_kb"] < 0)
    regions_kb = 64 * rep["arg"]
    assert grown + summary["tallied"]["grown_kb"] >= regions_kb, (grown, summary["tallied"])
    assert shrunk + summary["tallied"]["shrunk_kb"] >= regions_kb, (shrunk, summary["tallied"])
    (summary,) = [s for s in end["summary"] if s["pid"] == rep["pid"]]
    assert summary["vm_peak_kb"] == rep["vm_peak_kb"], (summary, rep)


def test_sustained_flood_keeps_vmtrace_responsive(hardload: Path, tmp_path: Path) -> None:
    """GIVEN an attached process flooding mmap/munmap from 2 threads without pause WHEN
    traced for 6 s THEN vmtrace keeps writing its log during the flood (records are flushed
    every poll), its RSS stays under 512 MiB, and SIGINT stops it within 10 s with `end`
    (what it could not keep up with is counted as lost)."""
    proc = ready(spawn(hardload, "wait", "flood", "2", "0"))
    log = tmp_path / "log.jsonl"
    vmt = start_vmtrace(["-p", str(proc.pid), "-o", str(log)], tmp_path)
    with cleanup(proc, vmt):
        wait_for_start(log, vmt)
        start_size = log.stat().st_size
        release(proc)
        sizes, rss = [], []
        for _ in range(6):
            time.sleep(1.0)
            sizes.append(log.stat().st_size)
            status = Path(f"/proc/{vmt.proc.pid}/status").read_text()
            rss.append(int(status.split("VmRSS:")[1].split()[0]))
        vmt.proc.send_signal(signal.SIGINT)
        try:
            rc: int | None = vmt.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        release(proc)
        assert proc.wait(timeout=RUN_TIMEOUT_S) == 0
    assert sizes[2] > start_size and sizes[-1] > sizes[2], f"log stalled: {sizes}"
    assert max(rss) < 512 * 1024, f"vmtrace RSS (kB) during the flood: {rss}"
    assert rc == 0, "vmtrace did not stop within 10 s of SIGINT"
    records = read_jsonl(log)
    assert_ends_well(records)
    assert records[-1]["lost"] == sum(r["count"] for r in of(records, "lost"))
