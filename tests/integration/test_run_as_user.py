"""`vmtrace run -u USER`: the command runs as USER (uid, gid, groups, HOME) while vmtrace keeps
root, and the trace is as exact as when it runs as root."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    RUN_TIMEOUT_S,
    read_jsonl,
    tail,
    vmtrace_cmd,
    vmtrace_env,
)

pytestmark = pytest.mark.bpf

GROW = 64 * 1024 * 1024
PYTHON = "/usr/bin/python3"
# Reports who it is, maps GROW bytes, then reports its VmPeak: both from /proc/self/status, on
# stderr (vmtrace's stdout has the console, and -q leaves stderr to errors).
WORKLOAD = f"""
import json, mmap, os, sys
def status():
    return dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
before = status()
m = mmap.mmap(-1, {GROW})
after = status()
print(json.dumps({{
    "uid": before["Uid"].split(), "gid": before["Gid"].split(),
    "groups": before["Groups"].split(), "home": os.environ.get("HOME"),
    "user": os.environ.get("USER"), "peak_kb": int(after["VmPeak"].split()[0]),
    "peak_before_kb": int(before["VmPeak"].split()[0]),
}}), file=sys.stderr)
"""


def run_as(tmp_path: Path, user_args: list[str], env: dict[str, str]) -> tuple[Any, list[Any]]:
    log = tmp_path / "run.jsonl"
    proc = subprocess.run(
        # Debian's interpreter, not the venv's: the venv is the checkout's, which USER may not
        # be able to read.
        vmtrace_cmd("run", *user_args, "-q", "-o", str(log), "--", PYTHON, "-c", WORKLOAD),
        capture_output=True,
        text=True,
        cwd="/",
        env=env,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, tail(proc.stderr)
    reports = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith('{"uid"')]
    assert len(reports) == 1, proc.stderr[-2000:]
    return reports[0], read_jsonl(log)


def check_exact(report: dict[str, Any], records: list[Any]) -> None:
    """The trace has the mmap's rise, no mismatch, and ends where the kernel says."""
    assert not [r for r in records if r["type"] in ("mismatch", "lost")]
    assert all(r["match"] for r in records if r["type"] == "sample")
    peaks = [r for r in records if r["type"] == "peak"]
    rise = [r for r in peaks if r["cause"] == "mmap" and r["args"]["len"] == GROW]
    assert len(rise) == 1
    assert rise[0]["vm_peak_kb"] == report["peak_kb"]
    assert rise[0]["vm_peak_kb_before"] == report["peak_before_kb"]
    [exit_rec] = [r for r in records if r["type"] == "exit"]
    if exit_rec["taskstats"] is not None:
        assert exit_rec["match"] is True, exit_rec
    assert records[-1]["summary"][0]["vm_peak_kb"] == exit_rec["vm_peak_kb"]


@pytest.fixture(scope="module")
def nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "nobody"],
            check=True,
        )
        return pwd.getpwnam("nobody")


def test_run_as_a_user(bpf_ready: None, nobody: pwd.struct_passwd, tmp_path: Path) -> None:
    report, records = run_as(tmp_path, ["-u", "nobody"], vmtrace_env())
    uid, gid = str(nobody.pw_uid), str(nobody.pw_gid)
    assert report["uid"] == [uid] * 4  # real, effective, saved, filesystem
    assert report["gid"] == [gid] * 4
    assert sorted(report["groups"]) == sorted(
        str(g) for g in os.getgrouplist("nobody", nobody.pw_gid)
    )
    assert (report["home"], report["user"]) == (nobody.pw_dir, "nobody")
    start = records[0]
    assert start["user"]["uid"] == 0  # vmtrace itself stayed root
    assert start["user"]["run_as"] == {"name": "nobody", "uid": nobody.pw_uid, "gid": nobody.pw_gid}
    check_exact(report, records)


def test_sudo_user_is_the_default(
    bpf_ready: None, nobody: pwd.struct_passwd, tmp_path: Path
) -> None:
    report, records = run_as(tmp_path, [], {**vmtrace_env(), "SUDO_USER": "nobody"})
    assert report["uid"] == [str(nobody.pw_uid)] * 4
    check_exact(report, records)


def test_without_sudo_user_the_command_runs_as_the_caller(bpf_ready: None, tmp_path: Path) -> None:
    report, records = run_as(tmp_path, [], vmtrace_env())
    assert report["uid"] == [str(os.getuid())] * 4
    check_exact(report, records)
