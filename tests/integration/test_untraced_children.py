"""Without --follow, the summary says how many children of the traced process were not
traced, and the largest VmPeak seen among them; with --follow they are traced instead."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import (
    REPO_ROOT,
    RUN_TIMEOUT_S,
    read_jsonl,
    tail,
    vmtrace_cmd,
    vmtrace_env,
)

pytestmark = pytest.mark.bpf

GROW_KB = 64 * 1024
# A shell (traced) whose child maps GROW_KB and lives a few sample intervals; its grandchild
# (sleep) is seen too.
CHILD = (
    f"import mmap, subprocess; m = mmap.mmap(-1, {GROW_KB * 1024}); subprocess.run(['sleep', '2'])"
)
SHELL = ["/bin/sh", "-c", f'/usr/bin/python3 -c "{CHILD}"; true']


def trace(tmp_path: Path, *opts: str) -> tuple[str, list[dict[str, object]]]:
    log = tmp_path / "t.jsonl"
    proc = subprocess.run(
        vmtrace_cmd("run", "-q", "--interval", "0.3", "-o", str(log), *opts, "--", *SHELL),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=vmtrace_env(),
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, tail(proc.stderr)
    return proc.stdout, read_jsonl(log)


def test_children_not_traced_are_counted(bpf_ready: None, tmp_path: Path) -> None:
    text, records = trace(tmp_path)
    end = records[-1]
    untraced = end["untraced_children"]
    assert isinstance(untraced, dict)
    assert untraced["count"] == 2  # python3 and its sleep
    largest = untraced["largest"]
    assert isinstance(largest, dict)
    assert largest["comm"] == "python3" and int(largest["vm_peak_kb"]) > GROW_KB
    assert "2 children not traced; largest VmPeak seen " in text
    assert text.rstrip().endswith("(pid {} python3): use --follow".format(largest["pid"]))
    assert {r["pid"] for r in records if r.get("pid") is not None} == {end["summary"][0]["pid"]}


def test_with_follow_they_are_traced(bpf_ready: None, tmp_path: Path) -> None:
    text, records = trace(tmp_path, "--follow")
    assert "untraced_children" not in records[-1]
    assert "not traced" not in text
    assert len({r["pid"] for r in records if r.get("type") == "fork"}) == 2
