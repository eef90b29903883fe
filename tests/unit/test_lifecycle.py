"""KernelAccounts: taskstats' exit notifications matched to the traced process they end,
when a pid is reused (no netlink: the listener is a list of decoded notifications)."""

from __future__ import annotations

from vmtrace.lifecycle import KernelAccounts, exit_status_of
from vmtrace.taskstats import TaskStat


def _stat(pid: int, peak_kb: int) -> TaskStat:
    return TaskStat(pid, pid, peak_kb, peak_kb // 2, 0, "job", "tgid", True)


class _Listener:
    def __init__(self, *batches: list[TaskStat]) -> None:
        self.batches = list(batches)

    def drain(self) -> list[TaskStat]:
        return self.batches.pop(0) if self.batches else []

    def close(self) -> None:
        pass


def test_a_later_notification_under_the_same_pid_is_not_the_ended_process() -> None:
    """GIVEN traced pid 50 exits and an untraced process given pid 50 next exits too, both
    notifications read in one batch WHEN the first is handled (pid 50 ended) before the
    next is read THEN pid 50's final values are its own, and the other is not kept."""
    alive = {50}
    accounts = KernelAccounts(lambda pid: pid in alive)
    accounts._exits = _Listener([_stat(50, 100_000), _stat(51, 7), _stat(50, 133_000)])  # type: ignore[assignment]
    seen = []
    for pid in accounts.exited():
        seen.append(pid)
        final = accounts.final(pid)
        assert final is not None and final.hiwater_vm_kb == 100_000
        alive.discard(pid)
    assert seen == [50]
    assert accounts.final(50) is None


def test_final_reads_a_notification_not_read_yet_and_keeps_the_first() -> None:
    """GIVEN an exit seen first another way (the kernel side's record) WHEN its values are
    asked for THEN the listener is read, and of two notifications for that pid the first
    (the process that was traced) is the answer."""
    accounts = KernelAccounts(lambda pid: pid == 60)
    accounts._exits = _Listener([_stat(60, 5000), _stat(60, 9000)])  # type: ignore[assignment]
    final = accounts.final(60)
    assert final is not None and final.hiwater_vm_kb == 5000


def test_exit_status_as_waitpid_says_it() -> None:
    assert exit_status_of(3 << 8) == 3 and exit_status_of(9) == -9 and exit_status_of(0) == 0
