"""Namespaces, as in containers: -p takes the PID as the caller sees it, inside a PID
namespace or outside; --cgroup names the cgroup as the caller sees it, inside a cgroup
namespace too.

The workload maps 64 MiB once told to go and reports its own PID, NSpid and VmPeak read from
its own /proc/self/status; the expectations are those numbers.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration._require import require
from tests.integration.conftest import (
    REPO_ROOT,
    RUN_TIMEOUT_S,
    VmtraceProc,
    build_c,
    max_peak,
    of,
    read_jsonl,
    rmdir_when_empty,
    start_vmtrace,
    tail,
    vmtrace_env,
    wait_for_start,
)

pytestmark = pytest.mark.bpf

PRODLOAD_SRC = Path(__file__).resolve().parent / "prodload.c"

# Waits for GO to exist, maps and touches 64 MiB, reports itself, unmaps, exits.
WORKLOAD = """
import json, mmap, os, sys, time
go, out = sys.argv[1], sys.argv[2]
deadline = time.monotonic() + 240
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.02)
m = mmap.mmap(-1, 64 << 20)
m[::4096] = b"x" * (64 << 20 >> 12)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
with open(out, "w") as f:
    json.dump({
        "pid": os.getpid(),
        "nspid": [int(x) for x in status["NSpid"].split()],
        "vm_peak_kb": int(status["VmPeak"].split()[0]),
    }, f)
m.close()
"""


def _unshare() -> str:
    path = shutil.which("unshare")
    require(path is not None, "unshare (util-linux) is not installed")
    assert path is not None
    return path


def _wait_for(path: Path, what: str, proc: subprocess.Popen[bytes], stderr: Path) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not path.exists() or path.stat().st_size == 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            why = "timed out" if proc.poll() is None else f"vmtrace ended first ({proc.poll()})"
            pytest.fail(f"{what}: {why}\n{tail(stderr.read_text())}", pytrace=False)
        time.sleep(0.05)


def _start_record(log: Path) -> dict[str, Any] | None:
    try:
        first = log.read_text().split("\n", 1)[0]
        rec: dict[str, Any] = json.loads(first) if first else {}
    except (OSError, ValueError):
        return None
    return rec if rec.get("type") == "start" else None


def _start(cmd: list[str], tmp_path: Path) -> subprocess.Popen[bytes]:
    """CMD, whose last process is vmtrace: its stderr goes to TMP/vmtrace.stderr."""
    with (tmp_path / "vmtrace.stderr").open("wb") as err:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=REPO_ROOT,
            env=vmtrace_env(),
        )


def _release_once_started(
    log: Path, go: Path, proc: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """Wait for vmtrace's start record in LOG, then tell the workload to go."""
    _wait_for(log, "vmtrace's start record", proc, tmp_path / "vmtrace.stderr")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while _start_record(log) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()


def test_minus_p_inside_a_pid_namespace_traces_the_namespaces_pid(tmp_path: Path) -> None:
    """GIVEN vmtrace and a workload inside one new PID namespace (unshare --pid --fork
    --mount-proc, as in a container), vmtrace given the PID the namespace sees
    WHEN the workload maps 64 MiB
    THEN its peak is traced under that PID, the final VmPeak is the one it read itself,
    and its baseline record names its host PID (another number)."""
    unshare = _unshare()
    (tmp_path / "load.py").write_text(WORKLOAD)
    go, out, log = tmp_path / "go", tmp_path / "out.json", tmp_path / "log.jsonl"
    script = '"$0" "$1" "$2" "$3" & exec "$0" -m vmtrace -p $! -o "$4"'
    args = [sys.executable, str(tmp_path / "load.py"), str(go), str(out), str(log)]
    proc = _start(
        [unshare, "--pid", "--fork", "--mount-proc", "/bin/sh", "-c", script, *args], tmp_path
    )
    try:
        _release_once_started(log, go, proc, tmp_path)
        rc = proc.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = (tmp_path / "vmtrace.stderr").read_text()
    assert rc == 0, tail(stderr)
    assert "PIDs are that namespace's" in stderr
    me = json.loads(out.read_text())
    assert me["nspid"] == [me["pid"]], "the workload sees only its own namespace"
    records = read_jsonl(log)
    (target,) = records[0]["targets"]
    assert target["pid"] == me["pid"]
    peaks = of(records, "peak", me["pid"])
    assert peaks and max(p["vm_peak_kb"] for p in peaks) == me["vm_peak_kb"]
    (baseline,) = of(records, "baseline", me["pid"])
    assert baseline["host_pid"] > 0 and baseline["host_pid"] != me["pid"]
    (exit_rec,) = of(records, "exit", me["pid"])
    assert exit_rec["vm_peak_kb"] == me["vm_peak_kb"]


def test_minus_p_from_the_host_names_a_containers_process_both_ways(tmp_path: Path) -> None:
    """GIVEN a workload inside a new PID namespace, vmtrace on the host given its host PID
    WHEN the workload maps 64 MiB
    THEN it is traced under the host PID, the start record's ns_pids and the console give
    its number in its own namespace too, and the final VmPeak is the one it read itself."""
    unshare = _unshare()
    (tmp_path / "load.py").write_text(WORKLOAD)
    go, out, log = tmp_path / "go", tmp_path / "out.json", tmp_path / "log.jsonl"
    container = subprocess.Popen(
        [unshare, "--pid", "--fork", "--mount-proc", sys.executable, str(tmp_path / "load.py"),
         str(go), str(out)],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    vmt = None
    try:
        host_pid = _workload_under(container.pid)
        vmt = start_vmtrace(["-p", str(host_pid), "-o", str(log)], tmp_path)
        wait_for_start(log, vmt)
        go.touch()
        assert container.wait(timeout=RUN_TIMEOUT_S) == 0
        rc = vmt.wait()
        assert rc == 0, tail(vmt.stderr())
    finally:
        for p in (container, vmt.proc if vmt else None):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    me = json.loads(out.read_text())
    records = read_jsonl(log)
    (target,) = records[0]["targets"]
    assert target["pid"] == host_pid
    assert target["ns_pids"] == [host_pid, me["pid"]]
    assert f"PID {me['pid']} in its namespace" in vmt.stderr()
    peaks = of(records, "peak", host_pid)
    assert peaks and max(p["vm_peak_kb"] for p in peaks) == me["vm_peak_kb"]
    assert "host_pid" not in of(records, "baseline", host_pid)[0]


def _workload_under(unshare_pid: int) -> int:
    """unshare --fork's child: the workload, PID 1 of its namespace (host PID here)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text()
        except OSError:
            children = ""
        for pid in children.split():
            status = Path(f"/proc/{pid}/status").read_text()
            if "python" in Path(f"/proc/{pid}/comm").read_text() or "NSpid" in status:
                return int(pid)
        time.sleep(0.02)
    pytest.fail("the namespace's workload did not start", pytrace=False)


@pytest.fixture
def outer_cgroup(cgroup_dir: Path) -> Iterator[Path]:
    """A fresh cgroup v2 directory with a child `inner`, to root a cgroup namespace at."""
    (cgroup_dir / "inner").mkdir()
    try:
        yield cgroup_dir
    finally:
        rmdir_when_empty(cgroup_dir / "inner")


def test_cgroup_inside_a_cgroup_namespace_traces_its_members(
    outer_cgroup: Path, tmp_path: Path
) -> None:
    """GIVEN vmtrace in a cgroup namespace rooted at OUTER (unshare --cgroup --mount, cgroup2
    mounted in it on a fresh directory CG: CG is OUTER there), a workload in OUTER/inner, and
    vmtrace given --cgroup CG/inner (one level down as the namespace sees it, more from the
    real root)
    WHEN the workload maps 64 MiB
    THEN it is traced, its peak ending at its own VmPeak reading, and vmtrace (in OUTER,
    not inner) is not."""
    unshare = _unshare()
    (tmp_path / "load.py").write_text(WORKLOAD)
    go, out, log = tmp_path / "go", tmp_path / "out.json", tmp_path / "log.jsonl"
    # a directory of its own: over /sys/fs/cgroup, where the same cgroup2 may already be
    # mounted, 5.10 refuses a second mount (EBUSY)
    cg = tmp_path / "cg"
    cg.mkdir()
    inner = (
        f"mount -t cgroup2 none {cg} || exit 9; "
        f'/bin/sh -c \'echo $$ > {cg}/inner/cgroup.procs && exec "$0" "$1" "$2" "$3"\' '
        f'"$0" "$1" "$2" "$3" & exec "$0" -m vmtrace --cgroup {cg}/inner -o "$4"'
    )
    outer = f'echo $$ > {outer_cgroup}/cgroup.procs && exec "$@"'
    args = [sys.executable, str(tmp_path / "load.py"), str(go), str(out), str(log)]
    cmd = ["/bin/sh", "-c", outer, "sh", unshare, "--cgroup", "--mount", "/bin/sh", "-c", inner]
    proc = _start([*cmd, *args], tmp_path)
    try:
        _release_once_started(log, go, proc, tmp_path)
        _wait_for(out, "the workload's report", proc, tmp_path / "vmtrace.stderr")
        time.sleep(0.5)  # its exit, traced
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = (tmp_path / "vmtrace.stderr").read_text()
    assert rc == 0, tail(stderr)
    me = json.loads(out.read_text())
    records = read_jsonl(log)
    assert max_peak(records, me["pid"]) == me["vm_peak_kb"], tail(stderr)
    assert proc.pid not in {r.get("pid") for r in records}


# Runs `prodload big 100`, then has the next fork take the PID it had (ns_last_pid: the
# PID namespace is new, so nothing else forks there but this shell and vmtrace's threads,
# hence the retries) and runs `prodload big 40` under it.
# $0 prodload, $1 the test's directory. vmtrace is stopped until the second process exists
# and is traced, so that it reads the first one's exit only then: that exit must not make
# it forget the process the kernel side now has under the same pid. The second waits on
# the fifo `go` (its shell's open blocks) until the test, outside the traced tree, has read
# the first's exit in the log: a wait inside it would trace every `grep` and `sleep` of the
# wait, whose records can fill the ring for peaks where the reader is slow (under TCG).
REUSE = r"""
mkfifo "$1/go" || exit 3
kill -STOP $PPID || exit 4
"$0" big 100 > "$1/a.json" || exit 1
pid=$(sed -n 's/.*"pid":\([0-9]*\),.*/\1/p' "$1/a.json")
reused=
for attempt in 1 2 3 4 5; do
    echo $((pid - 1)) > /proc/sys/kernel/ns_last_pid || exit 2
    "$0" wait big 40 < "$1/go" > "$1/b.json" &
    [ $! = "$pid" ] && reused=1 && break
    echo go > "$1/go"; wait $!
done
kill -CONT $PPID
[ "$reused" ] || exit 7
wait $! || exit 1
"""


def _release_when_logged(proc: subprocess.Popen[bytes], directory: Path) -> None:
    """Once the log has the first process's exit, let the second go on (open `go` for
    writing: its shell's open for reading returns); return early if the run has ended."""
    log, first, go = directory / "log.jsonl", directory / "a.json", directory / "go"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    pid = None
    while proc.poll() is None and time.monotonic() < deadline:
        report = first.read_text() if pid is None and first.exists() else ""
        if report.endswith("\n"):
            pid = json.loads(report)["pid"]
        if pid is not None and log.exists():
            lines = log.read_text().split("\n")[:-1]  # whole lines: the last may be half written
            if any('"type":"exit"' in x and json.loads(x).get("pid") == pid for x in lines):
                break
        time.sleep(0.05)
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            fd = os.open(go, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:  # ENXIO: no reader yet, ENOENT: no fifo yet
            if e.errno not in (errno.ENXIO, errno.ENOENT):
                raise
            time.sleep(0.05)
            continue
        try:
            os.write(fd, b"go\n")
        finally:
            os.close(fd)
        return


@pytest.fixture(scope="module")
def prodload(bpf_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_c(PRODLOAD_SRC, tmp_path_factory.mktemp("prodload"))


def test_a_reused_pid_is_a_new_process(prodload: Path, tmp_path: Path) -> None:
    """GIVEN `vmtrace run --follow` inside a new PID namespace, of a script that runs a
    workload mapping 100 MiB, then another mapping 40 MiB under the same PID (really
    reused: ns_last_pid), vmtrace stopped (SIGSTOP) until the second is traced and reading
    the first's exit before the second maps anything
    WHEN both have exited
    THEN that PID has an exit record for each, each with the final VmPeak its own process
    read, and the second's peaks are its own, not judged against the first's."""
    unshare = _unshare()
    log = tmp_path / "log.jsonl"
    vmt = [sys.executable, "-m", "vmtrace", "run", "--follow", "-o", str(log), "--"]
    # vmtrace is not the namespace's init, which cannot be stopped from inside it
    init = ["/bin/sh", "-c", '"$@"; exit $?', "init"]
    cmd = [unshare, "--pid", "--fork", "--mount-proc", *init, *vmt, "/bin/sh", "-c", REUSE]
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [*cmd, str(prodload), str(tmp_path)],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=REPO_ROOT,
            env=vmtrace_env(),
        )
    run = VmtraceProc(proc, out, err)
    try:
        _release_when_logged(proc, tmp_path)
        returncode = run.wait()
    finally:
        run.kill()
    assert returncode == 0, tail(run.stderr())
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text().splitlines()[-1])
    assert a["pid"] == b["pid"], "the PID was not reused"
    records = read_jsonl(log)
    exits = of(records, "exit", a["pid"])
    assert exits[0]["vm_peak_kb"] == a["vm_peak_kb"]
    assert exits[-1]["vm_peak_kb"] == b["vm_peak_kb"] < a["vm_peak_kb"], [
        (r["type"], r.get("source"), r["vm_peak_kb"]) for r in of(records, "exit", a["pid"])
    ]
    first_exit = records.index(exits[0])
    later_peaks = [r for r in of(records[first_exit:], "peak", a["pid"])]
    if not later_peaks or max(r["vm_peak_kb"] for r in later_peaks) != b["vm_peak_kb"]:
        # pytest.fail prints its message whole, where an assertion's would be cut short
        lines = [
            repr(r)
            if r["type"] in ("lost", "tally", "end")
            else repr((r["type"], r.get("cause"), r.get("vm_peak_kb"), r.get("ts_ns")))
            for r in records
            if r.get("pid") == a["pid"] or r["type"] in ("lost", "tally", "end")
        ]
        pytest.fail(
            f"the second process's peaks ({b['vm_peak_kb']} kB) are not its own; the pid's "
            "records (type, cause, vm_peak_kb, ts_ns), and lost/tally/end in full:\n"
            + "\n".join(lines)
        )
