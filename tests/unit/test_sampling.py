"""Sampler: a /proc reading against the records drained after it (no kernel: the reading,
the ring and the writer mark are fakes, the clock is the real CLOCK_MONOTONIC the sampler
reads)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from tests.unit.test_engine import PID, hwm_record, started
from vmtrace import procfs, sampling, schema
from vmtrace.engine import PeakEngine
from vmtrace.lifecycle import KernelAccounts
from vmtrace.records import Change, ProcStatus
from vmtrace.sampling import Sampler
from vmtrace.units import WallClock

PEAK = 264_480


class _Session:
    def __init__(self, writing_until_ns: int = 0) -> None:
        self.resets: list[tuple[int, int]] = []
        self.writing_until_ns = writing_until_ns  # the writer mark is set until then
        self.asked = 0

    def reset_hwm(self, pid: int, hwm_pages: int) -> None:
        self.resets.append((pid, hwm_pages))

    def change_in_flight(self, pid: int) -> bool:
        self.asked += 1
        return _now() < self.writing_until_ns


def _now() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def test_a_record_made_while_proc_was_read_is_newer_than_the_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GIVEN HWM records up to 183,904 kB, and /proc/PID/status read at 183,904 kB while the
    process goes on touching memory: a transparent huge page fault's record (185,952 kB) is
    made after the kernel wrote the figures but before the read returned (a slow machine)
    WHEN the sample is checked after the drain that brings that record
    THEN it is no hwm-reset: VmHWM did not fall, the reading is only older than the record
    (seen once in the 6.1 VM under TCG: a false reset from 185,952 to 183,904 kB)."""
    eng, tl = started(PEAK)
    tl.ts = _now() - 1_000_000  # a millisecond before the sample
    eng.explain(hwm_record(tl, 183_904))
    ring: list[Change] = []

    def read_status(pid: int) -> ProcStatus:
        reading = ProcStatus(vm_peak_kb=PEAK, vm_size_kb=PEAK, vm_hwm_kb=183_904, vm_rss_kb=183_904)
        ring.append(replace(hwm_record(tl, 185_952), ts_ns=_now()))  # the fault, meanwhile
        return reading

    def drain() -> None:
        while ring:
            eng.explain(ring.pop(0))

    monkeypatch.setattr(procfs, "read_status", read_status)
    emitted: list[schema.Record] = []
    session = _Session()
    sampler = _sampler(session, eng, drain, emitted)
    reading = sampler.read(PID)
    assert reading is not None and reading.read_ns < reading.ts_ns
    rec = sampler.record(PID, "job", reading)
    assert rec["type"] == "sample"
    assert not emitted and not session.resets
    assert eng.vm_hwm_kb(PID) == 185_952


def test_a_reading_taken_mid_change_waits_for_its_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN a writer that has grown total_vm by 64 MiB past the peak and holds mmap_lock
    for 150 ms more (preempted mid-fault), so that /proc already shows the new VmPeak while
    its record is sent only at the lock's release
    WHEN a sample is read meanwhile
    THEN the reading is taken again once the writer mark is cleared, and it matches the
    records: no disagreement (a short retry alone gave up after ~50 ms)."""
    eng, tl = started(PEAK)
    grown = PEAK + 65_536
    released_ns = _now() + 150_000_000
    ring = [tl.grow(65_536)]

    def read_status(pid: int) -> ProcStatus:
        return ProcStatus(vm_peak_kb=grown, vm_size_kb=grown, vm_hwm_kb=1_000, vm_rss_kb=1_000)

    def drain() -> None:
        while ring and _now() >= released_ns:  # sent at the release
            eng.explain(ring.pop(0))

    monkeypatch.setattr(procfs, "read_status", read_status)
    emitted: list[schema.Record] = []
    session = _Session(writing_until_ns=released_ns)
    sampler = _sampler(session, eng, drain, emitted)
    reading = sampler.read(PID)
    assert reading is not None and reading.read_ns >= released_ns
    rec = sampler.record(PID, "job", reading)
    assert rec["match"] is True and rec["expected_vm_peak_kb"] == grown
    assert session.asked > 1


def test_a_mark_never_cleared_delays_a_reading_by_a_bounded_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GIVEN a writer mark that stays set (a release the kernel side did not see)
    WHEN a sample is read
    THEN the reading is taken as it is after IN_FLIGHT_WAIT_S, and judged as any other."""
    eng, _ = started(PEAK)
    monkeypatch.setattr(sampling, "IN_FLIGHT_WAIT_S", 0.05)
    monkeypatch.setattr(
        procfs,
        "read_status",
        lambda pid: ProcStatus(vm_peak_kb=PEAK, vm_size_kb=PEAK, vm_hwm_kb=1, vm_rss_kb=1),
    )
    session = _Session(writing_until_ns=_now() + 3_600 * 10**9)
    sampler = _sampler(session, eng, lambda: None, [])
    t0 = time.monotonic()
    reading = sampler.read(PID)
    assert reading is not None and time.monotonic() - t0 < 1.0
    assert sampler.record(PID, "job", reading)["match"] is True


def _sampler(
    session: _Session,
    eng: PeakEngine,
    drain: Callable[[], None],
    emitted: list[schema.Record],
) -> Sampler:
    return Sampler(
        session,  # type: ignore[arg-type]
        eng,
        KernelAccounts(lambda pid: True),
        WallClock(0, 0),
        kernel_filters=False,
        hwm_step=1 << 20,
        drain=drain,
        emit=emitted.append,
    )
