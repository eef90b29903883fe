"""Sampler: a /proc reading against the HWM records drained after it (no kernel: the
reading and the ring are fakes, the clock is the real CLOCK_MONOTONIC the sampler reads)."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from tests.unit.test_engine import PID, hwm_record, started
from vmtrace import procfs, schema
from vmtrace.lifecycle import KernelAccounts
from vmtrace.records import Change, ProcStatus
from vmtrace.sampling import Sampler
from vmtrace.units import WallClock

PEAK = 264_480


class _Session:
    def __init__(self) -> None:
        self.resets: list[tuple[int, int]] = []

    def reset_hwm(self, pid: int, hwm_pages: int) -> None:
        self.resets.append((pid, hwm_pages))


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
    sampler = Sampler(
        session,  # type: ignore[arg-type]
        eng,
        KernelAccounts(lambda pid: True),
        WallClock(0, 0),
        kernel_filters=False,
        hwm_step=1 << 20,
        drain=drain,
        emit=emitted.append,
    )
    reading = sampler.read(PID)
    assert reading is not None and reading.read_ns < reading.ts_ns
    rec = sampler.record(PID, "job", reading)
    assert rec["type"] == "sample"
    assert not emitted and not session.resets
    assert eng.vm_hwm_kb(PID) == 185_952
