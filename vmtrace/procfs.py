"""Readers of /proc/PID: parsers are pure functions of text, readers add the I/O."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from vmtrace.errors import TargetError
from vmtrace.pidns import nested_pids
from vmtrace.records import Mapping, ProcStatus

PROC = "/proc"


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    comm: str
    cmdline: tuple[str, ...]
    start_time: int  # clock ticks after boot (/proc/PID/stat field 22): tells PID reuse apart
    threads: dict[int, str]
    # NSpid: its number here, then in the PID namespaces nested below (a container's)
    ns_pids: tuple[int, ...] = ()


def parse_status(text: str) -> ProcStatus | None:
    """The Vm* lines in kB; None for a task without an mm (kernel thread, zombie)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmPeak", "VmSize", "VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0])
    if "VmPeak" not in values or "VmSize" not in values:
        return None
    return ProcStatus(
        vm_peak_kb=values["VmPeak"],
        vm_size_kb=values["VmSize"],
        vm_hwm_kb=values.get("VmHWM", 0),
        vm_rss_kb=values.get("VmRSS", 0),
    )


def parse_maps(text: str) -> list[Mapping]:
    out: list[Mapping] = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, _, hi = parts[0].partition("-")
        path = parts[5].strip() if len(parts) > 5 else "[anon]"
        if path.startswith("/SYSV"):
            path = "[shm]"
        out.append(
            Mapping(
                start=int(lo, 16),
                end=int(hi, 16),
                perms=parts[1],
                path=path,
                offset=int(parts[2], 16),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class StatEntry:
    """What /proc/PID/stat says of who a process is and who made it."""

    pid: int
    comm: str
    ppid: int
    start_time: int


def parse_stat(pid: int, text: str) -> StatEntry:
    # comm (field 2) may hold spaces and parentheses: it ends at the last ')'
    close = text.rindex(")")
    comm = text[text.index("(") + 1 : close]
    rest = text[close + 2 :].split()
    return StatEntry(pid, comm, int(rest[1]), int(rest[19]))


def read_process_table(proc: str = PROC) -> dict[int, StatEntry]:
    """Every process of the machine (threads excepted), as /proc/*/stat lists them now."""
    table: dict[int, StatEntry] = {}
    try:
        names = os.listdir(proc)
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            table[int(name)] = parse_stat(int(name), _read(f"{proc}/{name}/stat"))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not readable
    return table


def descendants(table: dict[int, StatEntry], roots: set[int]) -> list[StatEntry]:
    """The processes below `roots` in `table` (children, their children...), roots excluded."""
    children: dict[int, list[int]] = {}
    for e in table.values():
        children.setdefault(e.ppid, []).append(e.pid)
    out: list[StatEntry] = []
    seen = set(roots)
    todo = [c for r in roots for c in children.get(r, ())]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        out.append(table[pid])
        todo.extend(children.get(pid, ()))
    return out


def parse_stat_start_time(text: str) -> int:
    # comm (field 2) may hold spaces and parentheses: split after the last ')'
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[19])


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def read_status(pid: int, proc: str = PROC) -> ProcStatus | None:
    """None when the process is gone or has no mm any more."""
    try:
        return parse_status(_read(f"{proc}/{pid}/status"))
    except (FileNotFoundError, ProcessLookupError):
        return None


def read_maps(pid: int, proc: str = PROC) -> list[Mapping]:
    try:
        return parse_maps(_read(f"{proc}/{pid}/maps"))
    except (FileNotFoundError, ProcessLookupError):
        return []


def read_comm(pid: int, tid: int | None = None, proc: str = PROC) -> str:
    path = f"{proc}/{pid}/task/{tid}/comm" if tid else f"{proc}/{pid}/comm"
    try:
        return _read(path).strip()
    except OSError:
        return "?"


def read_threads(pid: int, proc: str = PROC) -> dict[int, str]:
    try:
        tids = sorted(int(t) for t in os.listdir(f"{proc}/{pid}/task"))
    except OSError:
        return {}
    return {tid: read_comm(pid, tid, proc) for tid in tids}


def read_start_time(pid: int, proc: str = PROC) -> int | None:
    try:
        return parse_stat_start_time(_read(f"{proc}/{pid}/stat"))
    except (OSError, ValueError, IndexError):
        return None


def started_monotonic(pid: int, proc: str = PROC) -> float:
    """When `pid` started, on time.monotonic()'s clock, to the kernel's clock tick (the
    process's own start, interpreter and imports included); now if /proc cannot say."""
    now = time.monotonic()
    ticks = read_start_time(pid, proc)
    if ticks is None:
        return now
    # /proc's start time counts clock ticks since boot, suspended time included
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return now - max(0.0, age)


def inspect_target(pid: int, proc: str = PROC) -> ProcessInfo:
    """Everything vmtrace needs to know before tracing `pid`, or a TargetError saying why not."""
    if pid <= 0:
        raise TargetError(f"failed to trace PID {pid}: not a valid process ID")
    try:
        status_text = _read(f"{proc}/{pid}/status")
        cmdline_raw = _read(f"{proc}/{pid}/cmdline")
    except (FileNotFoundError, ProcessLookupError):
        # ESRCH: the process was there at open and had exited by the read
        raise TargetError(
            f"failed to trace PID {pid}: no such process (check the PID with ps -p {pid})"
        ) from None
    except PermissionError as e:
        raise TargetError(f"failed to trace PID {pid}: cannot read /proc/{pid}: {e}") from None
    if parse_status(status_text) is None:
        state = next((ln for ln in status_text.splitlines() if ln.startswith("State:")), "")
        if "zombie" in state:
            raise TargetError(f"failed to trace PID {pid}: it has exited (zombie)")
        raise TargetError(
            f"failed to trace PID {pid}: it is a kernel thread (no user address space to trace)"
        )
    start = read_start_time(pid, proc)
    return ProcessInfo(
        pid=pid,
        comm=read_comm(pid, proc=proc),
        cmdline=tuple(a for a in cmdline_raw.split("\0") if a),
        start_time=start if start is not None else 0,
        threads=read_threads(pid, proc),
        ns_pids=nested_pids(status_text),
    )


def tgid_of(pid: int, proc: str = PROC) -> int | None:
    """The process (thread group) that task `pid` belongs to: `pid` itself for a process,
    another number for one of its threads (/proc/TID exists, unlisted, for every thread);
    None if there is no such task."""
    try:
        text = _read(f"{proc}/{pid}/status")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Tgid:"):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def inspect_target_quietly(pid: int, fallback: ProcessInfo) -> ProcessInfo:
    """Re-read a target after exec (new comm and cmdline); keep what we had if it is gone."""
    try:
        return inspect_target(pid)
    except TargetError:
        return fallback


def read_cgroup(pid: int) -> str | None:
    """The memory cgroup of `pid` (the v1 memory controller's path, else the v2 path), None
    if it is gone."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    by_controller = {}
    for line in lines:
        _id, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        by_controller[controllers] = path
    memory = next((p for c, p in by_controller.items() if "memory" in c.split(",")), None)
    return memory or by_controller.get("") or None
