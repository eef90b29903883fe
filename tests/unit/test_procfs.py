"""procfs parsers on recorded text, inspect_target on the live /proc, syscall decoding helpers."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from vmtrace import procfs
from vmtrace.errors import TargetError
from vmtrace.procfs import inspect_target, parse_maps, parse_stat_start_time, parse_status
from vmtrace.records import Mapping, ProcStatus
from vmtrace.syscalls import (
    decode_args,
    decode_ret,
    fd_of,
    map_flag_names,
    mremap_flag_names,
    page_align,
    prot_letters,
    syscall_name,
)

# /proc/PID/status of `cat` on Linux 6.18 (recorded on the development machine).
STATUS_CAT = """\
Name:\tcat
Umask:\t0022
State:\tR (running)
Tgid:\t7675
Ngid:\t0
Pid:\t7675
PPid:\t7673
TracerPid:\t0
Uid:\t0\t0\t0\t0
Gid:\t0\t0\t0\t0
FDSize:\t256
Groups:\t\x20
NStgid:\t7675
NSpid:\t7675
NSpgid:\t7673
NSsid:\t6573
Kthread:\t0
VmPeak:\t    3060 kB
VmSize:\t    3060 kB
VmLck:\t       0 kB
VmPin:\t       0 kB
VmHWM:\t    1692 kB
VmRSS:\t    1692 kB
RssAnon:\t     112 kB
RssFile:\t    1580 kB
RssShmem:\t       0 kB
VmData:\t     360 kB
VmStk:\t     132 kB
VmExe:\t      20 kB
VmLib:\t    1528 kB
VmPTE:\t      52 kB
VmSwap:\t       0 kB
HugetlbPages:\t       0 kB
CoreDumping:\t0
THP_enabled:\t1
untag_mask:\t0xffffffffffffffff
Threads:\t1
SigQ:\t1/96365
SigPnd:\t0000000000000000
ShdPnd:\t0000000000000000
SigBlk:\t0000000000000000
SigIgn:\t0000000000000000
SigCgt:\t0000000000000000
CapInh:\t0000000000000000
CapPrm:\t000001fffeffffff
CapEff:\t000001fffeffffff
CapBnd:\t000001fffeffffff
CapAmb:\t0000000000000000
NoNewPrivs:\t0
Seccomp:\t0
Seccomp_filters:\t0
Speculation_Store_Bypass:\tvulnerable
SpeculationIndirectBranch:\talways enabled
Cpus_allowed:\t3
Cpus_allowed_list:\t0-1
Mems_allowed_list:\t0
voluntary_ctxt_switches:\t0
nonvoluntary_ctxt_switches:\t0
"""

# /proc/2/status (kthreadd) on the same machine: a kernel thread has no Vm* lines.
STATUS_KTHREADD = """\
Name:\tkthreadd
Umask:\t0022
State:\tS (sleeping)
Tgid:\t2
Ngid:\t0
Pid:\t2
PPid:\t0
TracerPid:\t0
Uid:\t0\t0\t0\t0
Gid:\t0\t0\t0\t0
FDSize:\t64
Groups:\t\x20
NStgid:\t2
NSpid:\t2
NSpgid:\t0
NSsid:\t0
Kthread:\t1
Threads:\t1
SigQ:\t2/96365
SigPnd:\t0000000000000000
ShdPnd:\t0000000000000000
SigBlk:\t0000000000000000
SigIgn:\tffffffffffffffff
SigCgt:\t0000000000000000
CapInh:\t0000000000000000
CapPrm:\t000001ffffffffff
CapEff:\t000001ffffffffff
CapBnd:\t000001ffffffffff
CapAmb:\t0000000000000000
NoNewPrivs:\t0
Seccomp:\t0
Seccomp_filters:\t0
Cpus_allowed:\t3
Cpus_allowed_list:\t0-1
Mems_allowed_list:\t0
voluntary_ctxt_switches:\t61
nonvoluntary_ctxt_switches:\t0
"""

# /proc/PID/maps excerpt: file mappings, anonymous lines (which end in a space), heap, SysV
# shared memory, a deleted file with spaces in its name, vdso and stack.
MAPS = """\
56359119b000-56359119d000 r--p 00000000 fe:00 260386                     /usr/bin/head
56359119d000-5635911a3000 r-xp 00002000 fe:00 260386                     /usr/bin/head
55edc5fb1000-55edc5fd2000 rw-p 00000000 00:00 0                          [heap]
7fc617150000-7fc617283000 rw-p 00000000 00:00 0\x20
7fc617300000-7fc617400000 rw-s 00000000 00:01 32770                      /SYSV00000000 (deleted)
7fc617500000-7fc617501000 rw-s 00003000 00:19 12                         /dev/shm/my file (deleted)
7fc9a00b0000-7fc9a00b2000 r-xp 00000000 00:00 0                          [vdso]
7ffdc6f73000-7ffdc6f94000 rw-p 00000000 00:00 0                          [stack]
"""


# -- parse_status ------------------------------------------------------------------------


def test_parse_status_real_text() -> None:
    assert parse_status(STATUS_CAT) == ProcStatus(
        vm_peak_kb=3060, vm_size_kb=3060, vm_hwm_kb=1692, vm_rss_kb=1692
    )


def test_parse_status_kernel_thread_is_none() -> None:
    assert parse_status(STATUS_KTHREADD) is None


def test_parse_status_distinct_values() -> None:
    text = "VmPeak:\t 9000 kB\nVmSize:\t 8000 kB\nVmHWM:\t 700 kB\nVmRSS:\t 600 kB\n"
    assert parse_status(text) == ProcStatus(9000, 8000, 700, 600)


def test_parse_status_without_rss_lines() -> None:
    assert parse_status("VmPeak:\t 10 kB\nVmSize:\t 5 kB\n") == ProcStatus(10, 5, 0, 0)


# -- parse_maps --------------------------------------------------------------------------


def test_parse_maps() -> None:
    assert parse_maps(MAPS) == [
        Mapping(0x56359119B000, 0x56359119D000, "r--p", "/usr/bin/head", 0),
        Mapping(0x56359119D000, 0x5635911A3000, "r-xp", "/usr/bin/head", 0x2000),
        Mapping(0x55EDC5FB1000, 0x55EDC5FD2000, "rw-p", "[heap]", 0),
        Mapping(0x7FC617150000, 0x7FC617283000, "rw-p", "[anon]", 0),
        Mapping(0x7FC617300000, 0x7FC617400000, "rw-s", "[shm]", 0),
        Mapping(0x7FC617500000, 0x7FC617501000, "rw-s", "/dev/shm/my file (deleted)", 0x3000),
        Mapping(0x7FC9A00B0000, 0x7FC9A00B2000, "r-xp", "[vdso]", 0),
        Mapping(0x7FFDC6F73000, 0x7FFDC6F94000, "rw-p", "[stack]", 0),
    ]


def test_parse_maps_anon_line_without_trailing_space_and_junk() -> None:
    text = "7f0000000000-7f0000001000 ---p 00000000 00:00 0\n\nnot a maps line\n"
    assert parse_maps(text) == [Mapping(0x7F0000000000, 0x7F0000001000, "---p", "[anon]", 0)]


def test_parse_maps_of_this_process_is_sorted_and_has_a_stack() -> None:
    maps = procfs.read_maps(os.getpid())
    assert maps, "this process has mappings"
    assert [m.start for m in maps] == sorted(m.start for m in maps)
    assert all(m.end > m.start for m in maps)
    assert any(m.path == "[stack]" for m in maps)


# -- parse_stat_start_time ---------------------------------------------------------------


def test_parse_stat_start_time_real() -> None:
    stat = (
        "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 25 0 0 "
        "18446744073709551615 0 0 0 0 0 0 0 2147483647 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0"
    )
    assert parse_stat_start_time(stat) == 25


def test_parse_stat_start_time_with_spaces_and_parens_in_comm() -> None:
    stat = (
        "7681 (my (evil) ) x) R 7673 7673 6573 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 83871 "
        "3133440 379 18446744073709551615 93918836957184 93918836977065 140723315549728 0 0 0"
    )
    assert parse_stat_start_time(stat) == 83871


def test_read_start_time_of_this_process() -> None:
    t = procfs.read_start_time(os.getpid())
    assert isinstance(t, int) and t > 0
    assert procfs.read_start_time(4_194_304) is None


# -- inspect_target ----------------------------------------------------------------------


def test_inspect_target_pid_0() -> None:
    with pytest.raises(TargetError, match=r"^failed to trace PID 0: not a valid process ID$"):
        inspect_target(0)


def test_inspect_target_no_such_process() -> None:
    with pytest.raises(TargetError) as ei:
        inspect_target(4_194_304)  # above the largest possible pid_max
    assert str(ei.value).startswith("failed to trace PID 4194304: no such process")
    assert "ps -p 4194304" in str(ei.value)


def test_inspect_target_of_a_process_that_exits_between_open_and_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kernel answers ESRCH to a read of /proc/PID/status opened before the process was
    reaped: that is "no such process", never a traceback (the interleaving is forced)."""
    child = subprocess.Popen(["sleep", "30"])
    real_read = procfs._read

    def read_after_exit(path: str) -> str:
        with open(path, encoding="utf-8") as f:
            child.kill()
            child.wait()
            return f.read()

    monkeypatch.setattr(procfs, "_read", read_after_exit)
    try:
        with pytest.raises(TargetError, match=rf"^failed to trace PID {child.pid}: no such "):
            inspect_target(child.pid)
    finally:
        monkeypatch.setattr(procfs, "_read", real_read)
        if child.poll() is None:
            child.kill()
            child.wait()


def test_inspect_target_kernel_thread() -> None:
    try:
        comm = Path("/proc/2/comm").read_text().strip()
    except OSError:
        comm = ""
    if comm != "kthreadd":
        pytest.skip("/proc/2 is not kthreadd here (PID namespace?)")
    with pytest.raises(TargetError, match=r"^failed to trace PID 2: it is a kernel thread"):
        inspect_target(2)


def test_inspect_target_self() -> None:
    info = inspect_target(os.getpid())
    assert info.pid == os.getpid()
    assert info.comm == Path("/proc/self/comm").read_text().strip()
    assert info.cmdline[0] == Path("/proc/self/cmdline").read_bytes().split(b"\0")[0].decode()
    assert os.getpid() in info.threads
    assert info.start_time == procfs.read_start_time(os.getpid())


def test_inspect_target_on_a_fake_proc(tmp_path: Path) -> None:
    d = tmp_path / "77"
    (d / "task" / "77").mkdir(parents=True)
    (d / "task" / "78").mkdir()
    (d / "status").write_text(STATUS_CAT)
    (d / "cmdline").write_text("python3\0job.py\0--big\0")
    (d / "comm").write_text("python3\n")
    (d / "task" / "77" / "comm").write_text("python3\n")
    (d / "task" / "78" / "comm").write_text("worker 1\n")
    (d / "stat").write_text("77 (python3) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 2 0 4242 0 0\n")
    info = inspect_target(77, proc=str(tmp_path))
    assert info == procfs.ProcessInfo(
        pid=77,
        comm="python3",
        cmdline=("python3", "job.py", "--big"),
        start_time=4242,
        threads={77: "python3", 78: "worker 1"},
        ns_pids=(7675,),  # STATUS_CAT's NSpid line
    )


def test_inspect_target_zombie(tmp_path: Path) -> None:
    d = tmp_path / "77"
    d.mkdir()
    (d / "status").write_text("Name:\tjob\nState:\tZ (zombie)\nTgid:\t77\n")
    (d / "cmdline").write_text("")
    with pytest.raises(TargetError, match=r"^failed to trace PID 77: it has exited \(zombie\)$"):
        inspect_target(77, proc=str(tmp_path))


def test_read_status_of_a_missing_process() -> None:
    assert procfs.read_status(4_194_304) is None
    assert procfs.read_maps(4_194_304) == []
    assert procfs.read_threads(4_194_304) == {}
    assert procfs.read_comm(4_194_304) == "?"


# -- syscalls ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prot", "letters"),
    [(0, "---"), (1, "r--"), (2, "-w-"), (3, "rw-"), (4, "--x"), (5, "r-x"), (7, "rwx")],
)
def test_prot_letters(prot: int, letters: str) -> None:
    assert prot_letters(prot) == letters


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (0x22, "private|anon"),
        (0x01, "shared"),
        (0x03, "shared_validate"),
        (0x32, "private|fixed|anon"),
        (0x100022, "private|anon|fixed_noreplace"),
        (0x20022, "private|anon|stack"),
        (0x4022 | 0x8000, "private|anon|noreserve|populate"),
        (0, "0x0"),
    ],
)
def test_map_flag_names(flags: int, names: str) -> None:
    assert map_flag_names(flags) == names


def test_mremap_flag_names() -> None:
    assert mremap_flag_names(0) == "0"
    assert mremap_flag_names(1) == "maymove"
    assert mremap_flag_names(3) == "maymove|fixed"
    assert mremap_flag_names(7) == "maymove|fixed|dontunmap"


def test_decode_ret() -> None:
    assert decode_ret("mmap", -12) == -12  # -ENOMEM stays negative
    assert decode_ret("mmap", -4095) == -4095
    assert decode_ret("mmap", 0x7F12_3400_0000) == 0x7F12_3400_0000
    assert decode_ret("brk", 0x5555_5560_0000) == 0x5555_5560_0000
    # an "address" below -4095 is an address, read unsigned
    assert decode_ret("mremap", -4096) == (1 << 64) - 4096
    assert decode_ret("munmap", 0) == 0
    assert decode_ret("munmap", -22) == -22
    assert decode_ret("shmdt", -4096) == -4096  # not an address syscall: left as is


def test_fd_of() -> None:
    assert fd_of((1 << 64) - 1) == -1
    assert fd_of(0xFFFFFFFF) == -1
    assert fd_of(3) == 3
    assert fd_of(0x1_0000_0005) == 5  # only the low 32 bits are the int fd
    assert fd_of(0x7FFFFFFF) == 0x7FFFFFFF


def test_syscall_name() -> None:
    assert syscall_name(9) == "mmap"
    assert syscall_name(59) == "execve"
    assert syscall_name(206) == "io_setup"
    assert syscall_name(-1) is None
    assert syscall_name(-5) is None
    assert syscall_name(1000) == "syscall_1000"


def test_page_align() -> None:
    assert page_align(0, 4096) == 0
    assert page_align(1, 4096) == 4096
    assert page_align(4096, 4096) == 4096
    assert page_align(4097, 4096) == 8192


def test_decode_args() -> None:
    assert decode_args("mmap", (0x1000, 8192, 5, 0x12, 3, 0x2000)) == {
        "addr": "0x1000",
        "len": 8192,
        "prot": "r-x",
        "flags": "private|fixed",
        "fd": 3,
        "offset": 0x2000,
    }
    assert decode_args("munmap", (0x1000, 8192, 0, 0, 0, 0)) == {"addr": "0x1000", "len": 8192}
    assert decode_args("brk", (0x5000, 0, 0, 0, 0, 0)) == {"brk": "0x5000"}
    assert decode_args("mremap", (0x1000, 4096, 8192, 3, 0x9000, 0)) == {
        "old_addr": "0x1000",
        "old_len": 4096,
        "new_len": 8192,
        "flags": "maymove|fixed",
        "new_addr": "0x9000",
    }
    assert decode_args("shmat", (7, 0, 0o10000, 0, 0, 0)) == {
        "shmid": 7,
        "addr": "0x0",
        "flags": "0x1000",
    }
    assert decode_args("shmdt", (0x7000, 0, 0, 0, 0, 0)) == {"addr": "0x7000"}
    assert decode_args("execve", (0,) * 6) is None
    assert decode_args(None, (0,) * 6) is None


def test_tgid_of_a_thread_is_its_process() -> None:
    import threading

    started = threading.Event()
    done = threading.Event()
    tids: list[int] = []

    def body() -> None:
        tids.append(threading.get_native_id())
        started.set()
        done.wait(10)

    t = threading.Thread(target=body)
    t.start()
    try:
        assert started.wait(10)
        assert tids[0] != os.getpid()
        assert procfs.tgid_of(tids[0]) == os.getpid()
        assert procfs.tgid_of(os.getpid()) == os.getpid()
    finally:
        done.set()
        t.join()


def test_tgid_of_no_such_task(tmp_path: Path) -> None:
    assert procfs.tgid_of(4242, proc=str(tmp_path)) is None


def test_started_monotonic_is_the_process_start() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        spawned = time.monotonic()
        time.sleep(0.5)
        started = procfs.started_monotonic(child.pid)
        tick = 1 / os.sysconf("SC_CLK_TCK")
        assert spawned - 2 * tick - 0.05 <= started <= spawned + 2 * tick
        # this process started before its child
        assert procfs.started_monotonic(os.getpid()) < started
    finally:
        child.kill()
        child.wait()


def test_started_monotonic_without_proc_is_now(tmp_path: Path) -> None:
    before = time.monotonic()
    assert before <= procfs.started_monotonic(4242, proc=str(tmp_path)) <= time.monotonic()
