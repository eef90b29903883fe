"""Fixtures and helpers for the integration tests: build the C workload, run vmtrace, read logs.

vmtrace is always run as `[sys.executable, "-m", "vmtrace", ...]` from the repository root, with
PYTHONUNBUFFERED=1 so that its text and log reach us as they are written. Its stdout and stderr go
to files (a pipe could fill up and stall it while the test waits for something else).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration._require import require

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKLOAD_SRC = Path(__file__).resolve().parent / "workload.c"

# bcc compiles the BPF program when vmtrace starts: allow for a slow machine.
START_TIMEOUT_S = 180.0
RUN_TIMEOUT_S = 300.0

Record = dict[str, Any]


def vmtrace_env() -> dict[str, str]:
    env = dict(os.environ)
    # `vmtrace run` runs the command as $SUDO_USER by default; the workloads are built in
    # root's private temporary directories, so under `sudo scripts/test` they run as root.
    env.pop("SUDO_USER", None)
    env["PYTHONUNBUFFERED"] = "1"
    pythonpath = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pythonpath if pythonpath else "")
    return env


def vmtrace_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vmtrace", *args]


@dataclass
class VmtraceProc:
    """A running vmtrace, its output going to files."""

    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(
                f"vmtrace did not exit within {timeout:.0f} s: {self.proc.args!r}\n"
                f"stderr:\n{tail(self.stderr())}"
            )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def start_vmtrace(
    args: Sequence[str], workdir: Path, name: str = "vmtrace", **popen: Any
) -> VmtraceProc:
    """Start `python -m vmtrace ARGS`; stdout/stderr go to WORKDIR/NAME.{stdout,stderr}."""
    stdout_path = workdir / f"{name}.stdout"
    stderr_path = workdir / f"{name}.stderr"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            vmtrace_cmd(*args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=REPO_ROOT,
            env=vmtrace_env(),
            **popen,
        )
    return VmtraceProc(proc, stdout_path, stderr_path)


def read_jsonl(path: Path) -> list[Record]:
    """Every line of PATH as a JSON object; fails the test naming the first bad line."""
    records: list[Record] = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                pytest.fail(f"{path}:{lineno}: not JSON ({e}): {line[:200]!r}")
            if not isinstance(obj, dict):
                pytest.fail(f"{path}:{lineno}: not a JSON object: {line[:200]!r}")
            records.append(obj)
    return records


def first_record(path: Path) -> Record | None:
    """The first complete line of PATH as JSON, or None if there is none yet."""
    try:
        with path.open() as f:
            line = f.readline()
    except FileNotFoundError:
        return None
    if not line.endswith("\n"):
        return None
    obj = json.loads(line)
    return obj if isinstance(obj, dict) else None


def wait_for_start(log: Path, vmt: VmtraceProc, timeout: float = START_TIMEOUT_S) -> Record:
    """Wait until vmtrace has written (and flushed) its `start` record to LOG."""
    deadline = time.monotonic() + timeout
    while True:
        rec = first_record(log)
        if rec is not None:
            if rec.get("type") != "start":
                pytest.fail(f"first record of {log} is not `start`: {rec!r}")
            return rec
        rc = vmt.proc.poll()
        if rc is not None:
            pytest.fail(
                f"vmtrace exited with {rc} before writing its start record\n"
                f"stderr:\n{tail(vmt.stderr())}"
            )
        if time.monotonic() > deadline:
            vmt.kill()
            pytest.fail(
                f"no start record in {log} after {timeout:.0f} s\nstderr:\n{tail(vmt.stderr())}"
            )
        time.sleep(0.05)


def run_traced(
    workdir: Path, *args: str, command: list[str]
) -> tuple[list[Record], list[dict[str, Any]], str]:
    """`vmtrace run ARGS -o LOG -- COMMAND`; the log, the workload's reports, vmtrace's stdout."""
    log = workdir / "log.jsonl"
    reports = workdir / "reports.jsonl"
    with reports.open("wb") as out:
        vmt = start_vmtrace(["run", *args, "-o", str(log), "--", *command], workdir)
        rc = vmt.proc.wait(timeout=RUN_TIMEOUT_S)
    assert rc == 0, f"vmtrace run exited {rc}\n{tail(vmt.stderr())}"
    # The workload's stdout went to vmtrace's stdout file (vmtrace run passes it through).
    lines = [ln for ln in vmt.stdout().splitlines() if ln.startswith('{"what"')]
    out.close()
    return read_jsonl(log), [json.loads(ln) for ln in lines], vmt.stdout()


def of(records: list[Record], rtype: str, pid: int | None = None) -> list[Record]:
    return [r for r in records if r["type"] == rtype and (pid is None or r["pid"] == pid)]


def max_peak(records: list[Record], pid: int) -> int:
    return max((r["vm_peak_kb"] or 0) for r in records if r["pid"] == pid)


def build_c(src: Path, out_dir: Path, *flags: str) -> Path:
    """A test workload built from SRC (gcc, -O0 unless FLAGS say otherwise)."""
    gcc = shutil.which("gcc")
    require(gcc is not None, f"gcc is needed to build {src.name}")
    assert gcc is not None
    out = out_dir / src.stem
    res = subprocess.run(
        [gcc, "-O0", "-Wall", *flags, "-o", str(out), str(src)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="session")
def bpf_ready() -> None:
    """Skip (or fail under VMTRACE_REQUIRE_BPF=1) when BPF tracing cannot work here."""
    require(os.geteuid() == 0, "vmtrace loads BPF programs: the integration tests need root")
    require(
        importlib.util.find_spec("bcc") is not None,
        "bcc (Debian's python3-bpfcc) is not importable from this Python",
    )


@pytest.fixture(scope="session")
def workload_bin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """tests/integration/workload.c, built once per session."""
    gcc = shutil.which("gcc")
    require(gcc is not None, "gcc is needed to build tests/integration/workload.c")
    assert gcc is not None
    out = tmp_path_factory.mktemp("workload") / "workload"
    cmd = [
        gcc,
        "-O0",
        "-pthread",
        # one fault per 64 KiB frame in the stack-growth step, not one per page
        "-fno-stack-clash-protection",
        # no lazy symbol binding inside a measured step
        "-Wl,-z,now",
        "-Wall",
        "-o",
        str(out),
        str(WORKLOAD_SRC),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.fail(f"building the workload failed: {' '.join(cmd)}\n{res.stderr}")
    yield out


@functools.cache
def doctor_report() -> dict[str, Any]:
    """`vmtrace doctor --json` on this machine (loads each backend once), or {} if it cannot
    run (not root: the tests skip on their own)."""
    if os.geteuid() != 0:
        return {}
    proc = subprocess.run(
        vmtrace_cmd("doctor", "--json"),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=vmtrace_env(),
        timeout=300,
    )
    try:
        report: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {}
    return report


def backends_under_test() -> list[str]:
    """The backends the workload tests run with: VMTRACE_TEST_BACKENDS (space separated), else
    every backend that `vmtrace doctor` loaded on this kernel (tracepoint if it cannot tell)."""
    chosen = os.environ.get("VMTRACE_TEST_BACKENDS", "").split()
    if chosen:
        return chosen
    working = doctor_report().get("working") or []
    return [str(b) for b in working] or ["tracepoint"]


@pytest.fixture(params=backends_under_test())
def bcc_session(request: pytest.FixtureRequest, bpf_ready: None) -> Iterator[Any]:
    """A BccSession of the backend `request.param` (every backend under test unless a test
    names some with indirect parametrisation), compiled and loaded, not yet opened."""
    # imported here: collecting the tests must not need bcc (they skip without it)
    from vmtrace.abi import TraceConfig
    from vmtrace.backends import KernelSurvey, candidates
    from vmtrace.kernel.headers import choose_headers
    from vmtrace.kernel.offsets import read_offsets
    from vmtrace.kernel.tracefs import tracefs_root
    from vmtrace.session import BccSession

    survey = KernelSurvey(tracefs_root())
    (c,) = candidates(request.param, survey)
    if not c.usable:
        pytest.skip(f"{c.name}: {c.reason}")
    s = BccSession(
        c.name,
        read_offsets(survey.btf_path, btf=survey.btf),
        choose_headers().kernel_source,
        survey.have_task_pt_regs,
        c.plan,
        config=TraceConfig(),
        oom_victim=survey.oom_victim,
    )
    yield s
    s.close()


def answer(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> bytes:
    """The next line a workload writes on its stdout pipe; fails after timeout_s."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, "the workload did not answer"
    return proc.stdout.readline()


def rmdir_when_empty(d: Path) -> None:
    """A cgroup whose last member just exited is removable a moment later."""
    for _ in range(50):
        try:
            d.rmdir()
            return
        except OSError:
            time.sleep(0.1)
    d.rmdir()


@pytest.fixture
def cgroup_dir() -> Iterator[Path]:
    """A fresh cgroup v2 directory (mounting cgroup2 if the machine has none, e.g. the VM)."""
    from vmtrace.cgroups import cgroup2_mounts

    mounted: Path | None = None
    roots = cgroup2_mounts()
    if roots:
        root = Path(roots[0])
    else:
        mounted = Path(tempfile.mkdtemp(prefix="vmtrace-cg2-"))
        res = subprocess.run(["mount", "-t", "cgroup2", "none", str(mounted)], capture_output=True)
        require(res.returncode == 0, f"cannot mount cgroup2: {res.stderr!r}")
        root = mounted
    cg = root / f"vmtrace-test-{os.getpid()}"
    cg.mkdir()
    try:
        yield cg
    finally:
        rmdir_when_empty(cg)
        if mounted is not None:
            subprocess.run(["umount", str(mounted)], check=False)
            mounted.rmdir()
