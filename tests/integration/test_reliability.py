"""Reliability (root, real BPF): `vmtrace run` never leaves its command behind and exits with
its status; -p given a thread id; no output file from a trace that could not start; stack
symbols of a workload that has exited.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
from tests.integration.test_hardening import (  # noqa: F401
    cleanup,
    hardload,
    ready,
    release,
    spawn,
    tmpfs,
)

pytestmark = pytest.mark.bpf

EXIT_TIMEOUT_S = 60.0


def lines_of(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def no_traceback(vmt: VmtraceProc) -> None:
    text = vmt.stderr() + vmt.stdout()
    assert "Traceback" not in text and "Aborted!" not in text, tail(vmt.stderr())


def ends_with_end(records: list[Record]) -> None:
    assert records and records[-1]["type"] == "end", records[-3:]


def session_left(pid: int) -> list[str]:
    """Processes still in session PID (vmtrace was started as a session leader)."""
    res = subprocess.run(["pgrep", "-s", str(pid)], capture_output=True, text=True)
    return res.stdout.split()


def start_run(tmp_path: Path, command: list[str], *extra: str) -> tuple[VmtraceProc, Path]:
    log = tmp_path / "log.jsonl"
    vmt = start_vmtrace(
        ["run", *extra, "-o", str(log), "--", *command], tmp_path, start_new_session=True
    )
    return vmt, log


# ---- run: the command's exit status, and never left behind -----------------------------


def test_run_exits_128_plus_signal_when_ctrl_c_kills_the_command(
    bpf_ready: None, tmp_path: Path
) -> None:
    """GIVEN `vmtrace run -- sleep 30` WHEN Ctrl-C (SIGINT to the process group) arrives
    while it is traced THEN sleep dies of it and vmtrace exits 130; the log is whole."""
    vmt, log = start_run(tmp_path, ["sleep", "30"])
    with cleanup(vmt):
        wait_for_start(log, vmt)
        os.killpg(vmt.proc.pid, signal.SIGINT)
        rc = vmt.wait(EXIT_TIMEOUT_S)
    no_traceback(vmt)
    assert rc == 128 + signal.SIGINT, tail(vmt.stderr())
    records = read_jsonl(log)
    ends_with_end(records)
    assert records[-1]["reason"] == "interrupted"
    assert not session_left(vmt.proc.pid)


def test_run_command_killed_by_signal_gives_128_plus_n(bpf_ready: None, tmp_path: Path) -> None:
    """GIVEN a command that kills itself with SIGTERM THEN vmtrace exits 143 (not 0, not
    the -15 of a wait status)."""
    vmt, log = start_run(tmp_path, ["sh", "-c", "kill -TERM $$"])
    with cleanup(vmt):
        rc = vmt.wait(EXIT_TIMEOUT_S)
    no_traceback(vmt)
    assert rc == 128 + signal.SIGTERM, tail(vmt.stderr())
    ends_with_end(read_jsonl(log))


def test_run_stopped_alone_releases_the_command_with_a_note(
    bpf_ready: None, tmp_path: Path
) -> None:
    """GIVEN `vmtrace run -- sh -c 'sleep 3; exit 7'` WHEN only vmtrace gets SIGTERM THEN
    the trace ends (log whole), one line says the command runs on untraced, and vmtrace
    waits for it and exits with its status, 7."""
    vmt, log = start_run(tmp_path, ["sh", "-c", "sleep 3; exit 7"])
    with cleanup(vmt):
        wait_for_start(log, vmt)
        t0 = time.monotonic()
        vmt.proc.send_signal(signal.SIGTERM)
        rc = vmt.wait(EXIT_TIMEOUT_S)
        waited = time.monotonic() - t0
    no_traceback(vmt)
    assert rc == 7, tail(vmt.stderr())
    notes = [ln for ln in lines_of(vmt.stderr()) if "runs on untraced" in ln]
    assert len(notes) == 1, vmt.stderr()
    records = read_jsonl(log)
    ends_with_end(records)
    assert records[-1]["reason"] == "terminated"
    child = records[0]["targets"][0]["pid"]
    assert str(child) in notes[0]
    assert waited > 1.0, "vmtrace did not wait for its command"
    assert not session_left(vmt.proc.pid)


@pytest.fixture(scope="module")
def start_record_s(bpf_ready: None, tmp_path_factory: pytest.TempPathFactory) -> float:
    """How long `vmtrace run` takes here to write its `start` record (imports, compile,
    load): the shortest of two runs after a warm-up."""
    times = []
    for i in range(3):
        tmp = tmp_path_factory.mktemp(f"start-record-{i}")
        t0 = time.monotonic()
        vmt, log = start_run(tmp, ["true"])
        with cleanup(vmt):
            wait_for_start(log, vmt)
            times.append(time.monotonic() - t0)
            vmt.wait(EXIT_TIMEOUT_S)
    return min(times[1:])


# Fractions of the time to the `start` record: during the imports, and during the compile.
@pytest.mark.parametrize("fraction", [0.2, 0.6])
def test_run_ctrl_c_before_the_trace_starts_never_runs_the_command(
    start_record_s: float, tmp_path: Path, fraction: float
) -> None:
    """GIVEN Ctrl-C at FRACTION of the time `vmtrace run` takes here to start tracing,
    before its `start` record WHEN vmtrace stops THEN exit 130, the command never ran (its
    marker file is absent), no traceback (nor a copy of vmtrace unwinding in the held
    child: click's "Aborted!")."""
    marker = tmp_path / "ran"
    vmt, log = start_run(tmp_path, ["sh", "-c", f"touch {marker}; sleep 30"])
    with cleanup(vmt):
        time.sleep(fraction * start_record_s)
        started_before = log.exists() and log.stat().st_size > 0
        os.killpg(vmt.proc.pid, signal.SIGINT)
        rc = vmt.wait(EXIT_TIMEOUT_S)
    no_traceback(vmt)
    if started_before:
        pytest.skip("the trace started within the delay: nothing to check here")
    assert rc == 128 + signal.SIGINT, tail(vmt.stderr())
    assert not marker.exists(), "the command ran although the trace never started"
    assert not session_left(vmt.proc.pid)


def test_run_error_releases_the_command(hardload: Path, tmp_path: Path) -> None:  # noqa: F811
    """GIVEN `vmtrace run --follow -o` on a 64 KiB tmpfs and a command that floods, then
    sleeps 4 s WHEN the log fills up THEN the error is reported, one line says the command
    runs on untraced, the command runs to its end (its last word reaches stdout), and
    vmtrace exits 1."""
    script = f"{hardload} flood 2 1000 && sleep 4 && echo command-done"
    with tmpfs("size=64k,mode=0700") as mnt:
        log = mnt / "log.jsonl"
        vmt = start_vmtrace(
            ["run", "--follow", "-o", str(log), "--", "sh", "-c", script],
            tmp_path,
            start_new_session=True,
        )
        with cleanup(vmt):
            rc = vmt.wait(EXIT_TIMEOUT_S)
    no_traceback(vmt)
    assert rc == 1, tail(vmt.stderr())
    err = lines_of(vmt.stderr())
    assert any("No space left on device" in ln for ln in err), err
    assert len([ln for ln in err if "runs on untraced" in ln]) == 1, err
    assert "command-done" in vmt.stdout().splitlines(), vmt.stdout()[-2000:]
    assert not session_left(vmt.proc.pid)


# ---- -p with a thread id ----------------------------------------------------------------


def test_pid_of_a_thread_traces_its_process(bpf_ready: None, tmp_path: Path) -> None:
    """GIVEN the id of a thread (not the main one) of a process WHEN `vmtrace -p TID` THEN
    one line says it traces the process instead, and it does: the start record's target is
    the process, its samples match, no MISMATCH."""
    code = (
        "import threading, time, sys\n"
        "t = threading.Thread(target=time.sleep, args=(60,), daemon=True); t.start()\n"
        "print(t.native_id, flush=True); sys.stdin.readline()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    with cleanup(proc):
        assert proc.stdout is not None
        tid = int(proc.stdout.readline())
        assert tid != proc.pid
        log = tmp_path / "log.jsonl"
        vmt = start_vmtrace(["-p", str(tid), "-o", str(log), "-d", "3"], tmp_path)
        with cleanup(vmt):
            rc = vmt.wait(EXIT_TIMEOUT_S)
    no_traceback(vmt)
    assert rc == 0, tail(vmt.stderr())
    said = [ln for ln in lines_of(vmt.stderr()) if "is a thread of process" in ln]
    assert said == [
        f"vmtrace: {tid} is a thread of process {proc.pid} (python3): tracing process {proc.pid}"
    ] or said == [
        f"vmtrace: {tid} is a thread of process {proc.pid} "
        f"({Path(sys.executable).name[:15]}): tracing process {proc.pid}"
    ], said
    records = read_jsonl(log)
    assert [t["pid"] for t in records[0]["targets"]] == [proc.pid]
    samples = [r for r in records if r["type"] == "sample"]
    assert samples and all(r["pid"] == proc.pid for r in samples)
    assert not [r for r in records if r["type"] == "mismatch"]


# ---- no output file from a trace that could not start -----------------------------------


@pytest.fixture
def broken_bpf_dir(tmp_path: Path) -> Path:
    """A copy of bpf/ whose programs do not compile: every backend fails to load, on any
    kernel, after the checks that come before creating the output."""
    where = tmp_path / "bpf"
    shutil.copytree(REPO_ROOT / "bpf", where)
    for c in where.glob("*.c"):
        c.write_text(c.read_text() + "\n#error vmtrace test: this program must not compile\n")
    return where


@pytest.mark.parametrize("force", [False, True])
def test_backend_that_fails_to_load_leaves_no_output(
    bpf_ready: None, tmp_path: Path, broken_bpf_dir: Path, force: bool
) -> None:
    """GIVEN BPF programs that fail to compile WHEN `vmtrace run -o LOG` (LOG new, or an
    existing file with --force) THEN exit 1 with one `failed to load` line, and LOG is as
    before: absent, or the old file with its content."""
    log = tmp_path / "log.jsonl"
    if force:
        log.write_text("an earlier log\n")
    env = vmtrace_env()
    env["VMTRACE_BPF_DIR"] = str(broken_bpf_dir)
    marker = tmp_path / "ran"
    args = ["run", "--backend", "tracepoint", "-o", str(log), *(["--force"] if force else [])]
    args += ["--", "touch", str(marker)]
    res = subprocess.run(
        vmtrace_cmd(*args),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=RUN_TIMEOUT_S,
    )
    assert "Traceback" not in res.stderr + res.stdout
    assert res.returncode == 1, res.stderr
    lines = lines_of(res.stderr)
    assert len(lines) == 1 and "failed to load the tracepoint backend" in lines[0], lines
    if force:
        assert log.read_text() == "an earlier log\n"
    else:
        assert not log.exists(), f"left {log} ({log.stat().st_size} bytes)"
    assert not marker.exists(), "the command ran untraced"


# ---- stack symbols ----------------------------------------------------------------------


def test_peak_stack_named_after_the_target_exited(hardload: Path, tmp_path: Path) -> None:  # noqa: F811
    """GIVEN `vmtrace -p` of a process that maps 64 MiB and exits at once WHEN its records
    are read (the process gone, /proc/PID/maps with it) THEN the stack of the 64 MiB peak
    still names libc's mmap: symbols come from the mappings vmtrace saw while it lived."""
    proc = ready(spawn(hardload, "wait", "big", "64"))
    log = tmp_path / "log.jsonl"
    vmt = start_vmtrace(["-p", str(proc.pid), "-o", str(log)], tmp_path)
    with cleanup(proc, vmt):
        wait_for_start(log, vmt)
        release(proc)
        assert proc.wait(timeout=RUN_TIMEOUT_S) == 0
        rc = vmt.wait(EXIT_TIMEOUT_S)
    no_traceback(vmt)
    assert rc == 0, tail(vmt.stderr())
    records = read_jsonl(log)
    big = [
        r
        for r in records
        if r["type"] == "peak" and r["vm_peak_kb"] - r["vm_peak_kb_before"] >= 32 * 1024
    ]
    assert len(big) == 1, [r["type"] for r in records]
    stack = big[0].get("stack") or []
    assert stack, big[0]
    libc = [f for f in stack if (f["module"] or "").endswith("/libc.so.6")]
    assert libc and libc[0]["function"] in ("mmap", "mmap64", "__mmap", "__mmap64"), stack
