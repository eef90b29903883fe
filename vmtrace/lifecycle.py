"""How a traced process ends, whichever source says so first: its last thread's exit record
from the kernel side, taskstats' exit notification, /proc, or waitpid for `run`'s command;
and the kernel's own final numbers (taskstats) for its exit record."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from vmtrace import procfs
from vmtrace.child import HeldChild
from vmtrace.errors import VmtraceError
from vmtrace.records import ProcStatus
from vmtrace.taskstats import ExitListener, TaskStat, TaskstatsClient


class KernelAccounts:
    """taskstats: VmPeak/VmHWM queried per process for the samples' cross-check, and each
    process's final values, sent from do_exit before its mm goes (so they outlive /proc)."""

    def __init__(self, traced: Callable[[int], bool]) -> None:
        self._traced = traced  # whose notifications to keep: the host's every exit arrives
        self._client: TaskstatsClient | None = None
        self._exits: ExitListener | None = None
        self._final: dict[int, TaskStat] = {}

    def open(self, log: Callable[[str], None]) -> None:
        """Tracing goes on without taskstats (e.g. inside a container, where registering
        is refused), with one warning."""
        try:
            self._client = TaskstatsClient()
            self._exits = ExitListener()
            self._exits.drain()  # what arrived while registering
        except VmtraceError as e:
            log(f"warning: no taskstats cross-checks: {e}")

    def close(self) -> None:
        for closable in (self._exits, self._client):
            if closable is not None:
                closable.close()

    def view(self, pid: int, status: ProcStatus | None) -> dict[str, object] | None:
        """taskstats' hiwater_vm/hiwater_rss for `pid`, compared with /proc's VmPeak/VmHWM.
        hiwater_vm is VmPeak exactly; hiwater_rss misses the per-CPU RSS deltas /proc adds
        up (6.2+), so it is within RSS_SLACK_KB of VmHWM, not equal."""
        if self._client is None:
            return None
        try:
            st = self._client.query(pid)
        except VmtraceError:
            return None
        view: dict[str, object] = {
            "hiwater_vm_kb": st.hiwater_vm_kb,
            "hiwater_rss_kb": st.hiwater_rss_kb,
        }
        if status is not None:
            view["vm_peak_match"] = st.hiwater_vm_kb == status.vm_peak_kb
            view["vm_hwm_delta_kb"] = status.vm_hwm_kb - st.hiwater_rss_kb
        return view

    def exited(self) -> Iterator[int]:
        """The traced processes whose exit notification has arrived, one at a time and in
        order: each is to be ended (`final` takes its values) before the next is read, since
        a later notification under the same pid is another process's."""
        if self._exits is None:
            return
        for st in self._exits.drain():
            if st.aggregate == "tgid" and self._traced(st.pid):
                self._final.setdefault(st.pid, st)
                yield st.pid

    def final(self, pid: int) -> TaskStat | None:
        """The final values of `pid`, which has exited: its notification was sent before
        the exit could be seen any other way, so it has arrived by now if at all."""
        if pid not in self._final:
            for _ in self.exited():
                pass
        return self._final.pop(pid, None)


def gone(pid: int, info: procfs.ProcessInfo, child: HeldChild | None) -> str | None:
    """How a traced process that is no longer there was found gone ("wait": `run`'s
    command reaped; "proc": /proc has no process of that pid and start time), else None."""
    if child is not None and child.pid == pid:
        return "wait" if child.poll() is not None else None
    start = procfs.read_start_time(pid)
    if start is None or start != info.start_time or procfs.read_status(pid) is None:
        return "proc"
    return None


def exit_status_of(code: int) -> int:
    """The kernel's exit code (status << 8 | signal) as waitpid's caller would say it
    (Popen.returncode): the status, or minus the signal."""
    return -(code & 0x7F) if code & 0x7F else (code >> 8) & 0xFF
