"""The samples: each interval, a traced process's /proc/PID/status, read when the records
can agree with it and checked against the engine; and VmHWM's falls, at a sample or at
exit, which only a reading can show."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from vmtrace import procfs, schema
from vmtrace.engine import PeakEngine
from vmtrace.lifecycle import KernelAccounts
from vmtrace.records import ProcStatus
from vmtrace.session import BccSession
from vmtrace.taskstats import TaskStat
from vmtrace.units import WallClock

Emit = Callable[[schema.Record], None]

# The longest a reading waits for a writer to finish the change it may show: far longer than
# any lock hold of a running writer, short enough that a mark left set by a writer the
# kernel side could not see release delays a sample by no more than this.
IN_FLIGHT_WAIT_S = 0.5


@dataclass(frozen=True)
class Reading:
    status: ProcStatus
    ts_ns: int
    kernel_peak_kb: int | None  # the kernel side's per-mm peak, where it filters (--min-delta)
    # when the read of /proc began: the kernel made its figures between this and ts_ns (taken
    # after the read), so a record made after read_ns may be newer than the reading
    read_ns: int


class Sampler:
    def __init__(
        self,
        session: BccSession,
        engine: PeakEngine,
        accounts: KernelAccounts,
        clock: WallClock,
        *,
        kernel_filters: bool,
        hwm_step: int,
        drain: Callable[[], None],
        emit: Emit,
    ) -> None:
        self._session = session
        self._engine = engine
        self._accounts = accounts
        self._clock = clock
        self._kernel_filters = kernel_filters
        self._hwm_step = hwm_step
        self._drain = drain
        self._emit = emit
        self._page_kb = os.sysconf("SC_PAGE_SIZE") // 1024

    def read(self, pid: int) -> Reading | None:
        """/proc/PID/status, read when the events can agree with it: a change made before
        the reading is in the ring buffer once drained, unless its mmap_lock was still held
        (or its syscall had not returned). A reading taken while the kernel side marks a
        writer of the process mid-change is taken again once it is done; any other
        disagreement is retried a few times, briefly, before it counts as one (and two of
        those as a mismatch). Where the kernel side filters (--min-delta), also its per-mm
        peak the reading is checked against. None: the process has gone."""
        status, ts, read_ns, kernel_kb = None, 0, 0, None
        deadline = time.monotonic() + IN_FLIGHT_WAIT_S  # one wait for the whole reading
        for attempt in range(4):
            status, read_ns, ts = self._settled_status(pid, deadline)
            self._drain()
            if self._kernel_filters:
                pages = self._session.kernel_peak_pages(pid)
                kernel_kb = pages * self._page_kb if pages is not None else None
            expected = max(self._engine.expected_vm_peak_kb(pid) or 0, kernel_kb or 0)
            if status is None or status.vm_peak_kb == expected:
                break
            time.sleep(0.005 * (attempt + 1))
        return Reading(status, ts, kernel_kb, read_ns) if status is not None else None

    def _settled_status(self, pid: int, deadline: float) -> tuple[ProcStatus | None, int, int]:
        """(status, read_ns, ts_ns) of a reading no writer was changing: the kernel has
        already counted a change it shows while the record of it waits for the writer's
        lock release, which can be arbitrarily late (a writer preempted mid-fault, direct
        reclaim). Waits for such a writer until `deadline` (time.monotonic), draining
        meanwhile, and then takes the reading as it is."""
        while True:
            read_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            status = procfs.read_status(pid)
            ts = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            # asked after the read: a mark cleared by then means every change begun before
            # it has been sent (the mark is cleared after the record is submitted)
            if status is None or not self._session.change_in_flight(pid):
                return status, read_ns, ts
            if time.monotonic() >= deadline:
                return status, read_ns, ts
            self._drain()
            time.sleep(0.002)

    def record(self, pid: int, comm: str, r: Reading) -> schema.Record:
        """The sample record of a reading, once the engine has checked it (a VmHWM fall
        is written first)."""
        if r.kernel_peak_kb is not None:  # noted only with a sample that says so: as replayed
            self._engine.note_kernel_peak(pid, r.kernel_peak_kb)
        check = self._engine.check_sample(r.ts_ns, pid, r.status)
        rec = schema.sample_record(check, self._clock, comm)
        if r.kernel_peak_kb is not None:
            rec["kernel_peak_kb"] = r.kernel_peak_kb
        if self._hwm_step:
            self._check_hwm_reset(r, pid, comm)
        kernel = self._accounts.view(pid, r.status)
        if kernel is not None:
            rec["taskstats"] = kernel
        return rec

    def at_exit(self, ts: int, pid: int, comm: str, final: TaskStat) -> None:
        """The kernel's VmPeak and VmHWM at exit end the engine's; VmHWM lower than the
        records said fell after the last sample (or none was taken: a short run, a reader
        behind)."""
        if self._hwm_step:
            before = self._engine.hwm_fall(pid, ts, final.hiwater_rss_kb, self._tolerance_kb())
            if before is not None:
                self._emit(
                    schema.hwm_reset_record(
                        self._clock, ts, pid, comm, before, final.hiwater_rss_kb, None
                    )
                )
        self._engine.final(pid, final.hiwater_vm_kb, final.hiwater_rss_kb)

    def _check_hwm_reset(self, r: Reading, pid: int, comm: str) -> None:
        """VmHWM only goes down when someone writes 5 to /proc/PID/clear_refs (hiwater_rss
        is reset to the current RSS), or when pages were reclaimed before any unmap
        latched hiwater_rss. Say so, and let HWM records start again from there. A record
        made while /proc was being read (after read_ns) may be newer than the reading, which
        is then only older than it, not lower (a process touching memory during the read)."""
        ts, status = r.ts_ns, r.status
        before = self._engine.hwm_fall(pid, r.read_ns, status.vm_hwm_kb, self._tolerance_kb())
        if before is None:
            return
        self._engine.reset_hwm(pid, status.vm_hwm_kb, ts)
        self._session.reset_hwm(pid, status.vm_hwm_kb // self._page_kb)
        self._emit(
            schema.hwm_reset_record(self._clock, ts, pid, comm, before, status.vm_hwm_kb, status)
        )

    def _tolerance_kb(self) -> int:
        return max(1024, self._hwm_step // 1024)
