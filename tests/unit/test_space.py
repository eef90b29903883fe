"""The address-space model (vmtrace.space), live and offline: the enricher keeps it from
kernel records, the report from the log those records became; both must end the same."""

from __future__ import annotations

import json

from tests.unit.test_enrich import HEAP, LIBC, MINUS_ONE_U64, PAGE, PID, STACK, ev
from vmtrace.abi import EventKind
from vmtrace.engine import PeakEngine
from vmtrace.enrich import Enricher
from vmtrace.logread import change_from_record
from vmtrace.records import Change, Mapping
from vmtrace.schema import explained_record, mapping_dict
from vmtrace.space import HEAP as HEAP_GROUP
from vmtrace.space import THREAD_STACKS, AddressSpaces
from vmtrace.units import WallClock

CHILD = PID + 7
ANON = 0x7F12_3400_0000


def _no_maps(pid: int) -> list[Mapping]:
    raise AssertionError(f"read /proc/{pid}/maps: the model should have known")


def _live_session() -> tuple[Enricher, list[Change]]:
    enr = Enricher(PAGE, _no_maps)
    enr.attach(PID, [HEAP, LIBC, STACK])
    n = (HEAP.size + LIBC.size + STACK.size) // PAGE  # total_vm at attach, in pages
    events = [
        # 64 MiB anonymous, then a 1 MiB MAP_STACK thread stack
        ev(nr=9, args=(0, 64 << 20, 3, 0x22, MINUS_ONE_U64, 0), ret=ANON, total=(n, n + 16384)),
        ev(
            nr=9,
            args=(0, 1 << 20, 3, 0x20022, MINUS_ONE_U64, 0),
            ret=ANON - (1 << 20),
            total=(n + 16384, n + 16640),
        ),
        # the heap grows by 132 kB, then half of the anonymous region moves, growing by 16 MiB
        ev(nr=12, args=(HEAP.end + 0x21000,), ret=HEAP.end + 0x21000, total=(n + 16640, n + 16673)),
        ev(
            nr=25,
            args=(ANON + (32 << 20), 32 << 20, 48 << 20, 1, 0),
            ret=ANON + (128 << 20),
            total=(n + 16673, n + 20769),
        ),
        # a child (a copy of the parent's space) unmaps the first half of the anonymous region
        ev(kind=EventKind.FORK, nr=57, total=(n + 20769, n + 20769), pid=CHILD, aux=PID),
        ev(nr=11, args=(ANON, 32 << 20), ret=0, total=(n + 20769, n + 12577), pid=CHILD),
        # the parent unmaps part of a library and shrinks its heap back
        ev(nr=11, args=(LIBC.start, 0x8000), ret=0, total=(n + 20769, n + 20761)),
        ev(nr=12, args=(HEAP.end,), ret=HEAP.end, total=(n + 20761, n + 20728)),
    ]
    return enr, [enr.enrich(e) for e in events]


def _offline(changes: list[Change]) -> AddressSpaces:
    """The log the live session would write, read back and replayed."""
    engine = PeakEngine()
    for pid in (PID, CHILD):
        engine.start(pid, "worker", None)
    spaces = AddressSpaces(PAGE)
    spaces.seed(PID, [HEAP, LIBC, STACK])
    for c in changes:
        rec = json.loads(json.dumps(explained_record(engine.explain(c), WallClock(0, 0))))
        spaces.apply(change_from_record(rec))
    return spaces


def test_live_and_offline_spaces_agree_mapping_by_mapping() -> None:
    """GIVEN mmaps, a thread stack, brk, mremap, a fork whose child unmaps, partial unmaps
    WHEN the enricher keeps the model live and the report replays the log of it
    THEN every process's mappings and groups are the same, the child's starting as its
    parent's (no /proc read), and each replayed total is the logged total_vm."""
    enr, changes = _live_session()
    offline = _offline(changes)
    for pid in (PID, CHILD):
        live, replayed = enr.spaces.of(pid), offline.of(pid)
        assert [mapping_dict(m) for m in live.shadow.mappings()] == [
            mapping_dict(m) for m in replayed.shadow.mappings()
        ]
        assert live.snapshot().groups == replayed.snapshot().groups
        assert replayed.lost_track == live.lost_track == 0, replayed.first_lost_track
        last = [c for c in changes if c.pid == pid][-1]
        assert replayed.total_kb() == last.total_vm_kb_after
    parent = offline.of(PID).snapshot().groups
    assert parent[THREAD_STACKS] == 1024 and parent[HEAP_GROUP] == HEAP.size // 1024
    child = enr.shadow(CHILD)
    assert child.find(ANON + (128 << 20)) is not None  # the moved half, inherited
    assert child.find(ANON) is None  # what it unmapped itself
    assert enr.shadow(PID).find(ANON) is not None  # still the parent's
