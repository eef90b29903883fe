"""vmtrace.pidns: which PID namespace vmtrace's numbers belong to, from a /proc tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmtrace.errors import EnvironmentProblem
from vmtrace.pidns import PidNamespace, nested_pids, own_pid_namespace


def _proc(tmp_path: Path, self_pid: int) -> Path:
    proc = tmp_path / "proc"
    ns = proc / str(self_pid) / "ns"
    ns.mkdir(parents=True)
    (ns / "pid").write_text("")
    (proc / "self").symlink_to(str(self_pid))
    return proc


def test_a_namespace_of_its_own_is_named_by_its_nsfs_device_and_inode(tmp_path: Path) -> None:
    """GIVEN a /proc whose self is vmtrace and whose ns/pid is not the initial namespace
    WHEN vmtrace's namespace is read
    THEN it is that file's device and inode, passed to the BPF side as two numbers."""
    proc = _proc(tmp_path, os.getpid())
    st = os.stat(proc / "self" / "ns" / "pid")
    ns = own_pid_namespace(str(proc))
    assert ns == PidNamespace(dev=st.st_dev, ino=st.st_ino)
    assert ns.cflags() == [f"-DVMT_PIDNS_DEV={st.st_dev}", f"-DVMT_PIDNS_INO={st.st_ino}"]


def test_a_proc_of_another_namespace_is_refused_with_the_fix(tmp_path: Path) -> None:
    """GIVEN a /proc mounted for another PID namespace (its self is another number)
    WHEN vmtrace's namespace is read
    THEN one error says so and how to fix it: its PIDs would name other processes."""
    proc = _proc(tmp_path, os.getpid() + 100_000)
    with pytest.raises(EnvironmentProblem, match=r"another PID namespace.*fix: mount"):
        own_pid_namespace(str(proc))


def test_nspid_lists_the_number_here_then_below() -> None:
    """GIVEN /proc/PID/status texts WHEN NSpid is parsed THEN its numbers, outermost first."""
    assert nested_pids("Name:\tx\nNSpid:\t4242\t1\nVmPeak:\t1 kB\n") == (4242, 1)
    assert nested_pids("NSpid:\t7\n") == (7,)
    assert nested_pids("Name:\told kernel\n") == ()
