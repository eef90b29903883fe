"""The merge of the two rings' records into one stream (vmtrace.ringorder)."""

from __future__ import annotations

from vmtrace.abi import EventKind, KernelEvent
from vmtrace.ringorder import merge_rings


def ev(ts: int, name: str, pid: int = 10) -> KernelEvent:
    return KernelEvent(
        ts_ns=ts,
        pid=pid,
        tid=pid,
        kind=EventKind.SYSCALL,
        syscall_nr=9,
        ret_raw=0,
        args_raw=(0,) * 6,
        total_vm_before_pages=0,
        total_vm_after_pages=0,
        hiwater_vm_before_pages=0,
        hiwater_vm_after_pages=0,
        stack_vm_before_pages=0,
        stack_vm_after_pages=0,
        peak_before_pages=0,
        flags=0,
        comm=name,
    )


def names(evs: list[KernelEvent]) -> list[str]:
    return [e.comm for e in evs]


def test_records_stamped_before_the_read_go_in_time_order() -> None:
    ready, wait = merge_rings([], [ev(20, "peak")], [ev(10, "grow"), ev(30, "shrink")], 100, False)
    assert names(ready) == ["grow", "peak", "shrink"]
    assert wait == []


def test_a_change_stamped_after_the_read_began_waits_for_the_next_read() -> None:
    # The `vital` ring was empty when read; then the process peaked (vital) and made a
    # change (events), which the `events` pass read: the change waits for the peak.
    ready, wait = merge_rings([], [], [ev(10, "grow"), ev(60, "shrink")], 50, False)
    assert names(ready) == ["grow"]
    assert names(wait) == ["shrink"]
    ready, wait = merge_rings(wait, [ev(55, "peak")], [], 70, False)
    assert names(ready) == ["peak", "shrink"]
    assert wait == []


def test_with_the_events_ring_left_unread_nothing_newer_than_its_last_read_record_goes() -> None:
    ready, wait = merge_rings(
        [ev(5, "held")],
        [ev(15, "latch"), ev(40, "exit")],
        [ev(10, "grow"), ev(20, "grow2")],
        100,
        True,
    )
    assert names(ready) == ["held", "grow", "latch", "grow2"]
    assert names(wait) == ["exit"]
