"""One time-ordered stream from the kernel side's two rings.

The reader empties `vital` and `events` one after the other, so a record can reach the
second ring after the first was emptied while a *later* record of the same process is
already read from the second: emitted at once, the two would swap. A process's records
are made one after the other (its changes under its mm's write lock, each submitted before
the next is reserved, and each stamped after its reservation), so a record stamped no later
than the moment both rings began to be read (`since_ns`) has every earlier record of its
process already read. Later ones wait for the next read, which releases them. When the
`events` ring could not be emptied (the batch is bounded), its unread records are newer
than the last one read: nothing newer than that waits either.
"""

from __future__ import annotations

from collections.abc import Sequence

from vmtrace.abi import KernelEvent


def ts_of(ev: KernelEvent) -> int:
    return ev.ts_ns


def merge_rings(
    held: Sequence[KernelEvent],
    vital: Sequence[KernelEvent],
    changes: Sequence[KernelEvent],
    since_ns: int,
    changes_left: bool,
) -> tuple[list[KernelEvent], list[KernelEvent]]:
    """(the records that can go now, in time order; those that wait for the next read).

    `held` is what waited last time; `vital` and `changes` were read from the rings starting
    at `since_ns` (CLOCK_MONOTONIC, the clock of the records' stamps); `changes_left`: the
    `events` ring still holds records."""
    limit = since_ns
    if changes_left and changes:
        limit = min(limit, max(ev.ts_ns for ev in changes))
    ready: list[KernelEvent] = []
    wait: list[KernelEvent] = []
    for group in (held, vital, changes):
        for ev in group:
            (ready if ev.ts_ns <= limit else wait).append(ev)
    # bpf_ktime_get_ns is one clock for every CPU; the sort is stable
    ready.sort(key=ts_of)
    wait.sort(key=ts_of)
    return ready, wait
