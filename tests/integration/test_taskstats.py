"""vmtrace.taskstats against the running kernel (root): queries and exit records of a child that
reads its own VmPeak / VmHWM from /proc/self/status while it is quiescent.

The child (C, built here) maps and touches memory, reports, waits for a byte on stdin, grows,
reports again and _exit(3)s. THP is off in it (PR_SET_THP_DISABLE: khugepaged could otherwise
raise its RSS while it waits) and it reads its status twice per report, so that the first-time
faults of snprintf/write happen before the reading that is reported.

hiwater_vm must equal VmPeak exactly. hiwater_rss is compared with VmHWM within the per-CPU slack
of the mm's RSS counters: the kernel's taskstats reads them without their per-CPU deltas, while
/proc/PID/status sums them (Linux 6.16+); they then differ by up to 3 counters x CPUs x batch
pages.

No assertion is timed: a child's exit records are queued on the listener before wait() returns
for it (the kernel sends them in do_exit, before the parent is notified).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration._require import require
from vmtrace import taskstats
from vmtrace.errors import TargetError
from vmtrace.taskstats import ExitListener, TaskStat, TaskstatsClient, query, records_for

REPO_ROOT = Path(__file__).resolve().parents[2]

CHILD_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

static char status[16384];

static long field(const char *name)
{
    const char *p = strstr(status, name);
    return p ? strtol(p + strlen(name), NULL, 10) : -1;
}

/* Print "VmPeak VmHWM" (kB) as read from /proc/self/status. The first pass only warms up the
 * code and data it touches, so that the reported reading is not followed by new faults. */
static void report(void)
{
    for (int pass = 0; pass < 2; pass++) {
        int fd = open("/proc/self/status", O_RDONLY);
        ssize_t n = read(fd, status, sizeof status - 1);
        close(fd);
        status[n > 0 ? n : 0] = '\0';
        char line[128];
        int len = snprintf(line, sizeof line, "%ld %ld\n", field("\nVmPeak:"), field("\nVmHWM:"));
        if (pass == 1 && write(1, line, len) != len)
            _exit(99);
    }
}

static void grow(size_t mib)
{
    size_t len = mib << 20;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        _exit(98);
    memset(p, 1, len);
}

static void *idle(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

int main(int argc, char **argv)
{
    prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
    int threads = argc > 1 ? atoi(argv[1]) : 0;
    for (int i = 0; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, idle, NULL) != 0)
            _exit(97);
    }
    grow(32);
    report();
    char c;
    if (read(0, &c, 1) != 1)
        _exit(96);
    grow(16);
    report();
    _exit(3);
}
"""


@pytest.fixture(scope="module")
def root() -> None:
    require(os.geteuid() == 0, "taskstats needs CAP_NET_ADMIN: these tests need root")


@pytest.fixture(scope="module")
def child_bin(tmp_path_factory: pytest.TempPathFactory, root: None) -> Path:
    gcc = shutil.which("gcc")
    require(gcc is not None, "gcc is needed to build the taskstats test child")
    assert gcc is not None
    workdir = tmp_path_factory.mktemp("taskstats")
    src = workdir / "tschild.c"
    src.write_text(CHILD_C)
    out = workdir / "tschild"
    cmd = [gcc, "-O1", "-pthread", "-Wall", "-Wl,-z,now", "-o", str(out), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.fail(f"building the test child failed: {' '.join(cmd)}\n{res.stderr}")
    return out


@dataclass(frozen=True)
class Reading:
    vm_peak_kb: int
    vm_hwm_kb: int


class Child:
    """The C child: report() after each step, proceed() to its last step and exit."""

    def __init__(self, binary: Path, threads: int) -> None:
        self.proc = subprocess.Popen(
            [str(binary), str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.pid = self.proc.pid

    def report(self) -> Reading:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line:
            self.proc.wait()
            pytest.fail(f"the child exited with {self.proc.returncode} before reporting")
        peak, hwm = (int(v) for v in line.split())
        return Reading(peak, hwm)

    def proceed(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"x")
        self.proc.stdin.flush()

    def tids(self) -> list[int]:
        return sorted(int(t) for t in os.listdir(f"/proc/{self.pid}/task"))

    def wait(self) -> int:
        return self.proc.wait()

    def finish(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def spawn(child_bin: Path) -> Iterator[Callable[[int], Child]]:
    """Start children with N extra threads; kill and reap them after the test."""
    children: list[Child] = []

    def start(threads: int) -> Child:
        child = Child(child_bin, threads)
        children.append(child)
        return child

    yield start
    for child in children:
        child.finish()


def _cpu_count(path: str) -> int:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return os.cpu_count() or 1
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def rss_slack_kb() -> int:
    """How far taskstats' hiwater_rss may be from VmHWM: the per-CPU deltas of the file, anon
    and shmem RSS counters (each under the counter batch, max(32, 2 x online CPUs) pages)."""
    cpus = max(_cpu_count("/sys/devices/system/cpu/possible"), 1)
    batch = max(32, 2 * (os.cpu_count() or 1))
    return 3 * cpus * batch * (os.sysconf("SC_PAGE_SIZE") // 1024)


def assert_matches(record: TaskStat, reading: Reading) -> None:
    assert record.hiwater_vm_kb == reading.vm_peak_kb, (record, reading)
    assert abs(record.hiwater_rss_kb - reading.vm_hwm_kb) <= rss_slack_kb(), (record, reading)


def drain_all(listener: ExitListener) -> list[TaskStat]:
    """Everything queued on LISTENER now (drain is bounded per call)."""
    records: list[TaskStat] = []
    while batch := listener.drain():
        records.extend(batch)
    return records


# --- queries -----------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [0, 1])
def test_query_matches_proc_status_of_quiescent_child(
    spawn: Callable[[int], Child], threads: int
) -> None:
    child = spawn(threads)
    reading = child.report()
    record = query(child.pid)
    assert_matches(record, reading)
    assert (record.pid, record.tgid, record.aggregate) == (child.pid, child.pid, "pid")
    assert record.exit_code is None
    assert not record.group_exit
    assert record.comm == "tschild"
    # Every thread reports the marks of the shared mm; one client serves several queries.
    with TaskstatsClient() as client:
        tids = child.tids()
        assert len(tids) == threads + 1
        for tid in tids:
            thread_record = client.query(tid)
            assert (thread_record.pid, thread_record.tgid) == (tid, child.pid)
            assert_matches(thread_record, reading)


def test_query_own_process(root: None) -> None:
    record = query(os.getpid())
    assert record.pid == record.tgid == os.getpid()
    assert record.hiwater_vm_kb > 0 and record.hiwater_rss_kb > 0


def test_query_of_missing_process_is_a_target_error(root: None) -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())  # PIDs stay below it
    with pytest.raises(TargetError) as info:
        query(pid_max)
    assert str(info.value) == (
        f"failed to query taskstats for PID {pid_max}: no such process "
        f"(fix: check the PID with ps -p {pid_max})"
    )


def test_query_of_zombie_is_a_target_error(root: None) -> None:
    proc = subprocess.Popen(["true"])
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
        with pytest.raises(TargetError, match=f"PID {proc.pid}: it has no user address space"):
            query(proc.pid)
    finally:
        proc.wait()


def test_query_of_kernel_thread_is_a_target_error(root: None) -> None:
    pf_kthread = 0x00200000
    flags = int(Path("/proc/2/stat").read_text().rsplit(")", 1)[1].split()[6])
    require(bool(flags & pf_kthread), "PID 2 is not a kernel thread here (a PID namespace?)")
    with pytest.raises(TargetError, match="PID 2: it has no user address space"):
        query(2)


def _run_as_nobody(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd="/",
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        check=False,
        user=65534,
        group=65534,
        extra_groups=[],
    )


PROBE = """
import os
from vmtrace import taskstats
for call in (lambda: taskstats.query(os.getpid()), lambda: taskstats.ExitListener().close()):
    try:
        call()
        print("ok")
    except Exception as e:
        print(type(e).__name__, e)
"""


def test_without_cap_net_admin_is_an_environment_problem(root: None) -> None:
    res = _run_as_nobody(PROBE)
    require(
        "ModuleNotFoundError" not in res.stderr and "Permission denied" not in res.stderr,
        f"user nobody cannot run this Python or import vmtrace: {res.stderr.strip()[-200:]}",
    )
    lines = res.stdout.splitlines()
    assert lines[0].startswith("EnvironmentProblem failed to query taskstats for PID "), res
    assert lines[1].startswith(
        "EnvironmentProblem failed to register for taskstats exit notifications"
    ), res
    for line in lines:
        assert "needs CAP_NET_ADMIN (fix: " in line


def test_listener_in_a_pid_namespace_is_refused(root: None) -> None:
    unshare = shutil.which("unshare")
    require(unshare is not None, "unshare(1) is needed to make a PID namespace")
    assert unshare is not None
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    res = subprocess.run(
        [unshare, "--pid", "--fork", sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    require(res.returncode == 0 and bool(res.stdout), f"unshare --pid failed: {res.stderr}")
    query_line, listen_line = res.stdout.splitlines()
    assert query_line == "ok"  # queries work in any PID namespace
    assert listen_line.startswith(
        "EnvironmentProblem failed to register for taskstats exit notifications: "
        "the kernel refused the listener"
    )
    assert "(fix: run vmtrace on the host" in listen_line


# --- exit notifications ------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [0, 1])
def test_exit_records_carry_the_final_peaks(spawn: Callable[[int], Child], threads: int) -> None:
    with ExitListener() as listener:
        assert listener.fileno() >= 0
        child = spawn(threads)
        child.report()
        tids = child.tids()
        child.proceed()
        final = child.report()  # read just before _exit(3)
        assert child.wait() == 3
        records = records_for(drain_all(listener), child.pid)
        overruns = listener.overruns

    where = f"records {records}, overruns {overruns}"
    processes = [r for r in records if r.aggregate == "tgid"]
    threads_seen = [r for r in records if r.aggregate == "pid"]
    assert len(processes) == 1, where
    (process,) = processes
    assert (process.pid, process.tgid, process.group_exit) == (child.pid, child.pid, True)
    assert_matches(process, final)
    assert process.exit_code == 3 << 8

    # One record per thread, all with the mm's final marks; the last one ended the group.
    assert sorted(r.pid for r in threads_seen) == tids, where
    assert all(r.tgid == child.pid for r in threads_seen), where
    assert sum(r.group_exit for r in threads_seen) == 1, where
    for record in threads_seen:
        assert_matches(record, final)
        assert record.exit_code == 3 << 8


def test_overruns_are_counted_and_the_listener_recovers(root: None) -> None:
    true = shutil.which("true")
    assert true is not None
    # The smallest receive buffer the kernel allows holds about two exit messages.
    with ExitListener(rcvbuf_bytes=1) as listener:
        for _ in range(64):
            subprocess.run([true], check=True)
        drain_all(listener)
        assert listener.overruns >= 1

        # Records arrive again once drained. Other exits on a busy machine can overrun such a
        # small buffer again before ours lands, so give it a few children.
        for _ in range(50):
            last = subprocess.Popen([true])
            last.wait()
            records = records_for(drain_all(listener), last.pid)
            if records:
                break
        assert [r.aggregate for r in records] == ["pid", "tgid"], records


def test_closed_listener_is_inert(root: None) -> None:
    listener = ExitListener()
    listener.close()
    listener.close()
    assert listener.fileno() == -1
    assert listener.drain() == []


def test_listener_registers_the_online_cpus(root: None) -> None:
    with ExitListener() as listener:
        assert listener.cpus == taskstats.online_cpus()
        assert listener.malformed == 0
