"""Backend choice on the running kernel, checked against what `vmtrace doctor` found.

On this project's 6.18 machine (no kprobes, fentry refused) auto must pick tracepoint and an
explicit --backend kprobe must fail with one line; on a kernel with kprobes (the VMs of
scripts/kernel-vm: 5.10, where tracepoint is refused, and 6.1) the same tests check the other
direction.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import REPO_ROOT, doctor_report, vmtrace_cmd, vmtrace_env
from vmtrace.session import BACKENDS

pytestmark = pytest.mark.bpf

ALL = BACKENDS  # best first


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        vmtrace_cmd(*args),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=vmtrace_env(),
        timeout=300,
    )


@pytest.fixture(scope="module")
def doctor(bpf_ready: None) -> dict[str, object]:
    report = doctor_report()
    assert report.get("backends"), f"vmtrace doctor --json gave no backends: {report!r}"
    return report


def test_doctor_exit_status_matches_working_backends(bpf_ready: None) -> None:
    proc = _run("doctor")
    working = doctor_report().get("working")
    assert (proc.returncode == 0) == bool(working), proc.stdout + proc.stderr
    assert "backend tracepoint" in proc.stdout


def test_auto_picks_the_best_backend_that_loads(doctor: dict[str, object], tmp_path: Path) -> None:
    working = doctor["working"]
    assert isinstance(working, list) and working, "no backend works here"
    log = tmp_path / "auto.jsonl"
    proc = _run("run", "-q", "-o", str(log), "--", "/bin/true")
    assert proc.returncode == 0, proc.stderr
    start = json.loads(log.read_text().splitlines()[0])
    assert start["backend"] == working[0], start["backend_reason"]
    assert start["backend_reason"].startswith("auto: best that attached")
    for name in ALL[: ALL.index(working[0])]:
        assert f"{name}: " in start["backend_reason"], "a better backend's failure is not said"


def test_unusable_backends_fail_with_one_line(doctor: dict[str, object]) -> None:
    """Every backend doctor could not load is refused in one line, exit 1 (a loop, not a
    parametrised skip: with VMTRACE_REQUIRE_BPF=1 any skip fails CI)."""
    working = doctor["working"]
    assert isinstance(working, list)
    for backend in (b for b in ALL if b not in working):
        proc = _run("run", "--backend", backend, "--", "/bin/true")
        assert proc.returncode == 1, f"{backend}: {proc.stdout}{proc.stderr}"
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, f"{backend}: expected one line, got:\n{proc.stderr}"
        assert lines[0].startswith("vmtrace: failed to "), lines[0]
        assert backend in lines[0]


def test_expected_backends_load_here(doctor: dict[str, object]) -> None:
    """scripts/test-vm names the backends each VM kernel must load (VMTRACE_EXPECT_BACKENDS), so
    a backend that silently stopped loading there fails CI instead of being skipped."""
    expected = os.environ.get("VMTRACE_EXPECT_BACKENDS", "").split()
    working = doctor["working"]
    assert isinstance(working, list)
    missing = [b for b in expected if b not in working]
    assert not missing, f"expected {missing} to load on {os.uname().release}: {doctor['backends']}"
