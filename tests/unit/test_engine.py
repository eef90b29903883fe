"""The explanation engine (vmtrace.engine.PeakEngine) on synthetic `Change` sequences.

Every test names its GIVEN / WHEN / THEN in its docstring. Sizes are kB; the kernel facts the
engine encodes: VmPeak = max(hiwater_vm, total_vm), hiwater_vm is latched just before total_vm
is lowered, and exec starts a new mm whose peak starts over.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmtrace.engine import ATTACHED, EXIT_FIX, MISMATCH_FIX, PeakEngine
from vmtrace.records import Change, ChangeKind, Contributor, Mapping, ProcStatus

PID = 4242
TID = 4243


@dataclass
class Mm:
    """A toy mm: the counters the kernel would report, updated by the builder's steps."""

    total: int = 0
    hiwater: int = 0
    stack: int = 132
    kernel_peak: int = 0  # what the BPF side believes the peak was before the change


class Timeline:
    """Builds a consistent `Change` sequence for one process, like the kernel would report it."""

    def __init__(self, total: int, hiwater: int = 0, pid: int = PID, comm: str = "job") -> None:
        self.pid = pid
        self.comm = comm
        self.ts = 1_000_000_000
        self.mm = Mm(total=total, hiwater=hiwater, kernel_peak=max(total, hiwater))

    def _change(
        self,
        *,
        kind: ChangeKind,
        cause: str,
        total_after: int,
        hiwater_after: int,
        mapping: Mapping | None,
        syscall: str | None,
        kernel_peak_before: int | None = None,
        comm: str | None = None,
    ) -> Change:
        self.ts += 1000
        mm = self.mm
        c = Change(
            kind=kind,
            ts_ns=self.ts,
            pid=self.pid,
            tid=TID,
            comm=comm or self.comm,
            cause=cause,
            syscall=syscall,
            args=None,
            ret=None,
            total_vm_kb_before=mm.total,
            total_vm_kb_after=total_after,
            hiwater_vm_kb_before=mm.hiwater,
            hiwater_vm_kb_after=hiwater_after,
            stack_vm_kb_before=mm.stack,
            stack_vm_kb_after=mm.stack,
            kernel_peak_kb_before=(
                mm.kernel_peak if kernel_peak_before is None else kernel_peak_before
            ),
            mapping=mapping,
        )
        mm.total, mm.hiwater = total_after, hiwater_after
        mm.kernel_peak = max(mm.kernel_peak, total_after, hiwater_after)
        return c

    def grow(
        self,
        kb: int,
        cause: str = "mmap",
        path: str = "[anon]",
        *,
        kernel_peak_before: int | None = None,
    ) -> Change:
        """total_vm += kb (mmap, brk...): no latch."""
        return self._change(
            kind="change",
            cause=cause,
            total_after=self.mm.total + kb,
            hiwater_after=self.mm.hiwater,
            mapping=Mapping(0x7F0000000000, 0x7F0000000000 + kb * 1024, "rw-p", path),
            syscall=cause if not cause.startswith(("stack", "syscall:", "fault")) else None,
            kernel_peak_before=kernel_peak_before,
        )

    def unmap(self, kb: int, cause: str = "munmap", path: str = "[anon]") -> Change:
        """total_vm -= kb; the kernel latches hiwater_vm = max(hiwater, total) first."""
        return self._change(
            kind="change",
            cause=cause,
            total_after=self.mm.total - kb,
            hiwater_after=max(self.mm.hiwater, self.mm.total),
            mapping=Mapping(0x7F0000000000, 0x7F0000000000 + kb * 1024, "rw-p", path),
            syscall=cause,
        )

    def shrink_no_latch(self, kb: int) -> Change:
        """total_vm -= kb with hiwater_vm already at least total_vm (no new latch)."""
        assert self.mm.hiwater >= self.mm.total
        return self._change(
            kind="change",
            cause="munmap",
            total_after=self.mm.total - kb,
            hiwater_after=self.mm.hiwater,
            mapping=None,
            syscall="munmap",
        )

    def fixed_map(self, unmapped_kb: int, mapped_kb: int) -> Change:
        """mmap(MAP_FIXED) over an existing region: unmap (latch) then map, one lock hold."""
        return self._change(
            kind="change",
            cause="mmap",
            total_after=self.mm.total - unmapped_kb + mapped_kb,
            hiwater_after=max(self.mm.hiwater, self.mm.total),
            mapping=Mapping(0x7F0000000000, 0x7F0000000000 + mapped_kb * 1024, "rw-p", "[anon]"),
            syscall="mmap",
        )

    def exec(self, total: int, hiwater: int = 0, comm: str = "newprog") -> Change:
        """execve: a new mm with `total` (and `hiwater`, normally 0)."""
        c = self._change(
            kind="exec",
            cause="execve",
            total_after=total,
            hiwater_after=hiwater,
            mapping=None,
            syscall="execve",
            comm=comm,
        )
        self.comm = comm
        self.mm.kernel_peak = max(total, hiwater)
        return c


def status(peak: int, size: int = 0) -> ProcStatus:
    return ProcStatus(vm_peak_kb=peak, vm_size_kb=size or peak, vm_hwm_kb=100, vm_rss_kb=100)


def started(
    total: int, hiwater: int = 0, proc_peak: int | None = None
) -> tuple[PeakEngine, Timeline]:
    eng = PeakEngine()
    tl = Timeline(total, hiwater)
    peak = max(total, hiwater) if proc_peak is None else proc_peak
    eng.start(PID, "job", status(peak, total))
    return eng, tl


# -- explain ----------------------------------------------------------------------------


def test_growth_past_the_peak_is_a_peak_with_exact_before_and_after() -> None:
    """GIVEN a process at total_vm 10000 kB whose VmPeak is 10000 kB
    WHEN an mmap adds 65536 kB
    THEN the record is `peak`, VmPeak goes from exactly 10000 to 75536 kB."""
    eng, tl = started(10_000)
    e = eng.explain(tl.grow(65_536))
    assert e.type == "peak"
    assert e.vm_peak_kb_before == 10_000
    assert e.vm_peak_kb == 75_536
    assert e.rise_kb == 65_536
    assert eng.expected_vm_peak_kb(PID) == 75_536


def test_munmap_after_a_peak_is_a_latch_and_keeps_vm_peak() -> None:
    """GIVEN a process that just peaked at 75536 kB (hiwater_vm still 0)
    WHEN it munmaps 65536 kB (the kernel latches hiwater_vm = 75536 first)
    THEN the record is `latch` and VmPeak stays 75536 kB."""
    eng, tl = started(10_000)
    eng.explain(tl.grow(65_536))
    c = tl.unmap(65_536)
    assert (c.hiwater_vm_kb_before, c.hiwater_vm_kb_after) == (0, 75_536)
    e = eng.explain(c)
    assert e.type == "latch"
    assert e.vm_peak_kb_before == 75_536
    assert e.vm_peak_kb == 75_536
    assert eng.expected_vm_peak_kb(PID) == 75_536


def test_growth_below_the_peak_is_grow() -> None:
    """GIVEN VmPeak 75536 kB after a peak and an munmap down to 10000 kB
    WHEN an mmap adds 4096 kB (total_vm 14096 < 75536)
    THEN the record is `grow` and VmPeak stays 75536 kB."""
    eng, tl = started(10_000)
    eng.explain(tl.grow(65_536))
    eng.explain(tl.unmap(65_536))
    e = eng.explain(tl.grow(4096))
    assert e.type == "grow"
    assert (e.vm_peak_kb_before, e.vm_peak_kb) == (75_536, 75_536)


def test_shrink_without_latch_is_shrink() -> None:
    """GIVEN hiwater_vm already latched at 75536 kB and total_vm 14096 kB
    WHEN an munmap removes 4096 kB without changing hiwater_vm
    THEN the record is `shrink` and VmPeak stays 75536 kB."""
    eng, tl = started(10_000)
    eng.explain(tl.grow(65_536))
    eng.explain(tl.unmap(65_536))
    eng.explain(tl.grow(4096))
    e = eng.explain(tl.shrink_no_latch(4096))
    assert e.type == "shrink"
    assert e.change.delta_kb == -4096
    assert (e.vm_peak_kb_before, e.vm_peak_kb) == (75_536, 75_536)


def test_exec_resets_the_peak_to_the_new_mm() -> None:
    """GIVEN a process whose VmPeak is 75536 kB
    WHEN it execs into a new mm with total_vm 2000 kB and hiwater_vm 2500 kB
    THEN the record is `exec`, vm_peak_kb_before 75536, vm_peak_kb = max(2000, 2500) = 2500,
    and a later growth to 3000 kB is a new peak from 2500."""
    eng, tl = started(10_000)
    eng.explain(tl.grow(65_536))
    e = eng.explain(tl.exec(total=2000, hiwater=2500))
    assert e.type == "exec"
    assert e.vm_peak_kb_before == 75_536
    assert e.vm_peak_kb == 2500
    assert eng.expected_vm_peak_kb(PID) == 2500
    nxt = eng.explain(tl.grow(1000))
    assert nxt.type == "peak"
    assert (nxt.vm_peak_kb_before, nxt.vm_peak_kb) == (2500, 3000)


def test_attach_time_proc_peak_is_used_when_the_kernel_peak_is_unknown() -> None:
    """GIVEN /proc said VmPeak 50000 kB at attach, and a change whose record carries no
    kernel peak (0: not seen by the probes yet)
    WHEN it grows total_vm to 30000 kB
    THEN it is `grow`, not a peak, and VmPeak stays 50000 kB."""
    eng, tl = started(10_000, proc_peak=50_000)
    e = eng.explain(tl.grow(20_000, kernel_peak_before=0))
    assert e.type == "grow"
    assert (e.vm_peak_kb_before, e.vm_peak_kb) == (50_000, 50_000)
    assert eng.expected_vm_peak_kb(PID) == 50_000


def test_records_of_two_threads_arriving_out_of_order_keep_their_own_peaks() -> None:
    """GIVEN VmPeak 10000 kB; thread A maps 100000 kB (kernel peak before: 10000), then
    thread B maps 5000 kB (kernel peak before: 110000), and B's syscall exits first
    WHEN B's record is explained before A's
    THEN B is a peak 110000 -> 115000 and A a peak 10000 -> 110000; VmPeak ends at 115000,
    set by B."""
    eng, tl = started(10_000)
    a = tl.grow(100_000)
    b = tl.grow(5_000)
    assert (a.kernel_peak_kb_before, b.kernel_peak_kb_before) == (10_000, 110_000)
    eb = eng.explain(b)
    ea = eng.explain(a)
    assert (eb.type, eb.vm_peak_kb_before, eb.vm_peak_kb) == ("peak", 110_000, 115_000)
    assert (ea.type, ea.vm_peak_kb_before, ea.vm_peak_kb) == ("peak", 10_000, 110_000)
    assert eng.expected_vm_peak_kb(PID) == 115_000
    (s,) = eng.summary()
    assert s.set_by is eb


def test_kernel_peak_before_higher_than_engines_is_respected() -> None:
    """GIVEN the engine believes VmPeak is 10000 kB, but events were lost and the kernel side
    says the peak before the next change was 40000 kB
    WHEN an mmap grows total_vm to 45000 kB
    THEN it is a peak from 40000 to 45000 kB (not from 10000)."""
    eng, tl = started(10_000)
    tl.mm.total = 20_000  # lost events moved total_vm to 20000 after a peak of 40000
    e = eng.explain(tl.grow(25_000, kernel_peak_before=40_000))
    assert e.type == "peak"
    assert (e.vm_peak_kb_before, e.vm_peak_kb) == (40_000, 45_000)
    assert e.rise_kb == 5000


def test_kernel_peak_before_higher_without_growth_past_it_is_not_a_peak() -> None:
    """GIVEN the engine believes VmPeak is 10000 kB; the kernel says 40000 kB (lost events)
    WHEN an mmap grows total_vm to 30000 kB
    THEN it is `grow` and VmPeak becomes 40000 kB."""
    eng, tl = started(10_000)
    e = eng.explain(tl.grow(20_000, kernel_peak_before=40_000))
    assert e.type == "grow"
    assert (e.vm_peak_kb_before, e.vm_peak_kb) == (40_000, 40_000)
    assert eng.expected_vm_peak_kb(PID) == 40_000


def test_map_fixed_that_latches_and_grows_past_the_peak_is_peak() -> None:
    """GIVEN total_vm 10000 kB = VmPeak, hiwater_vm 0
    WHEN mmap(MAP_FIXED) replaces 1000 kB with 5000 kB (latch to 10000, then total 14000)
    THEN the record is `peak` from 10000 to 14000 kB, not `latch`."""
    eng, tl = started(10_000)
    c = tl.fixed_map(unmapped_kb=1000, mapped_kb=5000)
    assert (c.hiwater_vm_kb_before, c.hiwater_vm_kb_after) == (0, 10_000)
    e = eng.explain(c)
    assert e.type == "peak"
    assert (e.vm_peak_kb_before, e.vm_peak_kb) == (10_000, 14_000)


def test_map_fixed_that_latches_below_the_peak_is_latch() -> None:
    """GIVEN total_vm 10000 kB = VmPeak, hiwater_vm 0
    WHEN mmap(MAP_FIXED) replaces 5000 kB with 1000 kB
    THEN the record is `latch` and VmPeak stays 10000 kB."""
    eng, tl = started(10_000)
    e = eng.explain(tl.fixed_map(unmapped_kb=5000, mapped_kb=1000))
    assert e.type == "latch"
    assert (e.vm_peak_kb_before, e.vm_peak_kb) == (10_000, 10_000)


def test_baseline_and_exit_keep_their_types() -> None:
    """GIVEN a started process at 10000 kB
    WHEN a `baseline` change and then an `exit` change arrive
    THEN their types are `baseline` and `exit`, and neither counts as a peak."""
    eng, tl = started(10_000)
    base = tl._change(
        kind="baseline",
        cause="baseline",
        total_after=10_000,
        hiwater_after=0,
        mapping=None,
        syscall=None,
    )
    assert eng.explain(base).type == "baseline"
    ex = tl._change(
        kind="exit",
        cause="exit",
        total_after=10_000,
        hiwater_after=0,
        mapping=None,
        syscall=None,
    )
    e = eng.explain(ex)
    assert e.type == "exit"
    assert e.vm_peak_kb == 10_000
    (s,) = eng.summary()
    assert (s.peaks, s.latches, s.set_by) == (0, 0, None)


def test_unknown_pid_is_followed_from_its_first_change() -> None:
    """GIVEN an engine that was never told about PID 77
    WHEN a change of PID 77 grows total_vm from 100 to 300 kB (kernel peak before 100)
    THEN it is a peak from 100 to 300 kB and PID 77 is now followed."""
    eng = PeakEngine()
    tl = Timeline(100, pid=77)
    e = eng.explain(tl.grow(200))
    assert e.type == "peak"
    assert (e.vm_peak_kb_before, e.vm_peak_kb) == (100, 300)
    assert eng.pids() == [77]


# -- check_sample -----------------------------------------------------------------------


def test_sample_that_matches() -> None:
    """GIVEN an engine whose VmPeak for the process is 75536 kB
    WHEN /proc says VmPeak 75536 kB
    THEN the check matches and is no mismatch."""
    eng, tl = started(10_000)
    eng.explain(tl.grow(65_536))
    chk = eng.check_sample(5, PID, status(75_536))
    assert (chk.match, chk.mismatch, chk.expected_vm_peak_kb) == (True, False, 75_536)
    assert (chk.ts_ns, chk.pid) == (5, PID)


def test_one_disagreement_is_noted_not_reported() -> None:
    """GIVEN an engine at 10000 kB
    WHEN /proc says 12000 kB once
    THEN match is False but mismatch is False, and the engine keeps 10000 kB."""
    eng, _ = started(10_000)
    chk = eng.check_sample(1, PID, status(12_000))
    assert (chk.match, chk.mismatch, chk.expected_vm_peak_kb) == (False, False, 10_000)
    assert eng.expected_vm_peak_kb(PID) == 10_000


def test_two_disagreements_in_a_row_are_a_mismatch_then_the_kernel_value_is_adopted() -> None:
    """GIVEN an engine at 10000 kB
    WHEN /proc says 12000 kB twice in a row
    THEN the second check is a mismatch (expected 10000), the engine then expects 12000 kB,
    and the next sample at 12000 matches."""
    eng, _ = started(10_000)
    eng.check_sample(1, PID, status(12_000))
    chk = eng.check_sample(2, PID, status(12_000))
    assert (chk.match, chk.mismatch, chk.expected_vm_peak_kb) == (False, True, 10_000)
    assert eng.expected_vm_peak_kb(PID) == 12_000
    nxt = eng.check_sample(3, PID, status(12_000))
    assert (nxt.match, nxt.mismatch) == (True, False)


def test_mismatch_adopts_a_lower_kernel_value_too() -> None:
    """GIVEN an engine that believes VmPeak is 75536 kB (it over-counted)
    WHEN /proc says 70000 kB twice in a row
    THEN the second check is a mismatch and the engine then expects 70000 kB (the kernel's)."""
    eng, tl = started(10_000)
    eng.explain(tl.grow(65_536))
    eng.check_sample(1, PID, status(70_000))
    chk = eng.check_sample(2, PID, status(70_000))
    assert chk.mismatch is True
    assert eng.expected_vm_peak_kb(PID) == 70_000


def test_agreement_resets_the_disagreement() -> None:
    """GIVEN an engine at 10000 kB
    WHEN /proc says 12000, then 10000, then 12000 kB
    THEN none of the three checks is a mismatch and the engine still expects 10000 kB."""
    eng, _ = started(10_000)
    a = eng.check_sample(1, PID, status(12_000))
    b = eng.check_sample(2, PID, status(10_000))
    c = eng.check_sample(3, PID, status(12_000))
    assert [(x.match, x.mismatch) for x in (a, b, c)] == [
        (False, False),
        (True, False),
        (False, False),
    ]
    assert eng.expected_vm_peak_kb(PID) == 10_000


def test_mismatch_after_mismatch_needs_two_more_disagreements() -> None:
    """GIVEN a reported mismatch (engine 10000, kernel 12000 twice)
    WHEN /proc then says 13000 kB once
    THEN that is only a disagreement (match False, mismatch False)."""
    eng, _ = started(10_000)
    eng.check_sample(1, PID, status(12_000))
    eng.check_sample(2, PID, status(12_000))
    chk = eng.check_sample(3, PID, status(13_000))
    assert (chk.match, chk.mismatch, chk.expected_vm_peak_kb) == (False, False, 12_000)


# -- summary ----------------------------------------------------------------------------


def test_summary_set_by_is_the_last_peak_and_top_causes_sum_increments() -> None:
    """GIVEN a process at 10000 kB
    WHEN it peaks by mmap [anon] +1000, brk [heap] +5000, unmaps 6000 (latch), regrows below the
    peak by mmap [anon] +6000 (grow), then peaks by mmap [anon] +3000 (total 19000; the
    increment over 16000 is 3000) and by mmap /data.bin +100
    THEN set_by is the last peak (/data.bin, +100), peaks 4, latches 1, and top causes are
    the VmPeak at attach (10000), (brk, [heap], 5000), (mmap, [anon], 4000), (mmap, /data.bin,
    100), largest first: they add up to VmPeak."""
    eng, tl = started(10_000)
    eng.explain(tl.grow(1000, "mmap", "[anon]"))
    eng.explain(tl.grow(5000, "brk", "[heap]"))
    assert eng.explain(tl.unmap(6000)).type == "latch"
    assert eng.explain(tl.grow(6000, "mmap", "[anon]")).type == "grow"
    third = eng.explain(tl.grow(3000, "mmap", "[anon]"))
    assert (third.type, third.vm_peak_kb_before, third.vm_peak_kb) == ("peak", 16_000, 19_000)
    last = eng.explain(tl.grow(100, "mmap", "/data.bin"))
    (s,) = eng.summary()
    assert s.pid == PID
    assert s.comm == "job"
    assert s.vm_peak_kb == 19_100
    assert s.set_by is last
    assert (s.peaks, s.latches) == (4, 1)
    assert s.top_causes == (
        Contributor(*ATTACHED, 10_000),
        Contributor("brk", "[heap]", 5000, peaks=1),
        Contributor("mmap", "[anon]", 4000, peaks=2),
        Contributor("mmap", "/data.bin", 100, peaks=1),
    )
    assert sum(c.kb for c in eng.causes(PID)) == s.vm_peak_kb


def test_summary_contributions_are_reset_by_exec() -> None:
    """GIVEN a process that peaked by brk [heap] +5000 kB
    WHEN it execs into a new mm of 2000 kB and then peaks by mmap [anon] +700 kB
    THEN the summary no longer lists the brk; its causes are the exec image (2000 kB) and the
    mmap (700 kB), set_by is the mmap, and comm is the new program's."""
    eng, tl = started(10_000)
    eng.explain(tl.grow(5000, "brk", "[heap]"))
    eng.explain(tl.exec(total=2000))
    last = eng.explain(tl.grow(700, "mmap", "[anon]"))
    (s,) = eng.summary()
    assert s.vm_peak_kb == 2700
    assert s.set_by is last
    assert s.comm == "newprog"
    assert s.top_causes == (
        Contributor("execve", "[exec image]", 2000, peaks=1),
        Contributor("mmap", "[anon]", 700, peaks=1),
    )
    assert all(c.cause != "brk" for c in s.top_causes)


def test_summary_set_by_is_exec_until_the_next_peak() -> None:
    """GIVEN a process that peaked by brk
    WHEN it execs and nothing else happens
    THEN set_by is the exec record, with its peak delta (new peak - old peak)."""
    eng, tl = started(10_000)
    eng.explain(tl.grow(5000, "brk", "[heap]"))
    ex = eng.explain(tl.exec(total=2000))
    (s,) = eng.summary()
    assert s.set_by is ex
    assert s.set_by.type == "exec"
    assert s.vm_peak_kb == 2000


def test_summary_keeps_only_the_five_largest_causes() -> None:
    """GIVEN six peaks from six distinct files of 100..600 kB
    WHEN the summary is taken
    THEN it lists the five largest, largest first (the VmPeak at attach among them)."""
    eng, tl = started(1000)
    for i in range(1, 7):
        eng.explain(tl.grow(i * 100, "mmap", f"/f{i}"))
    (s,) = eng.summary()
    assert [(c.mapping, c.kb) for c in s.top_causes] == [
        ("", 1000),
        ("/f6", 600),
        ("/f5", 500),
        ("/f4", 400),
        ("/f3", 300),
    ]


def test_summary_names_an_unmapped_cause_with_a_question_mark() -> None:
    """GIVEN a peak whose change has no mapping (e.g. an untraced syscall)
    WHEN the summary is taken
    THEN its contribution is listed under mapping "?"."""
    eng, tl = started(1000)
    c = tl._change(
        kind="change",
        cause="syscall:io_setup",
        total_after=1500,
        hiwater_after=0,
        mapping=None,
        syscall="io_setup",
    )
    eng.explain(c)
    (s,) = eng.summary()
    io_setup = Contributor("syscall:io_setup", "?", 500, peaks=1)
    assert s.top_causes == (Contributor(*ATTACHED, 1000), io_setup)


# -- VmHWM falls ------------------------------------------------------------------------


def hwm_record(tl: Timeline, hwm: int) -> Change:
    tl.ts += 1000
    return Change(
        kind="hwm",
        ts_ns=tl.ts,
        pid=tl.pid,
        tid=TID,
        comm=tl.comm,
        cause="fault",
        syscall=None,
        args=None,
        ret=None,
        total_vm_kb_before=tl.mm.total,
        total_vm_kb_after=tl.mm.total,
        hiwater_vm_kb_before=tl.mm.hiwater,
        hiwater_vm_kb_after=tl.mm.hiwater,
        stack_vm_kb_before=tl.mm.stack,
        stack_vm_kb_after=tl.mm.stack,
        kernel_peak_kb_before=None,
        mapping=None,
        hwm_kb=hwm,
    )


def test_vmhwm_below_the_records_made_before_the_reading_is_a_fall() -> None:
    """GIVEN HWM records up to 66,000 kB, then /proc read at 2,000 kB (clear_refs)
    WHEN the fall is judged
    THEN it is one, from 66,000 kB; within the tolerance it is not."""
    eng, tl = started(1000)
    for hwm in (10_000, 40_000, 66_000):
        eng.explain(hwm_record(tl, hwm))
    assert eng.hwm_fall(PID, tl.ts + 1, 2_000, tolerance_kb=1024) == 66_000
    assert eng.hwm_fall(PID, tl.ts + 1, 65_500, tolerance_kb=1024) is None


def test_a_reading_older_than_the_records_that_raised_vmhwm_is_not_a_fall() -> None:
    """GIVEN /proc read at 40,000 kB while the process was still touching memory, and the
    drain that followed brought HWM records made after the reading, up to 48,000 kB
    WHEN the fall is judged
    THEN there is none: the reading is only older, not lower."""
    eng, tl = started(1000)
    eng.explain(hwm_record(tl, 40_000))
    read_at = tl.ts + 1
    eng.explain(hwm_record(tl, 48_000))
    assert eng.hwm_fall(PID, read_at, 40_000, tolerance_kb=1024) is None
    assert eng.hwm_fall(PID, tl.ts + 1, 40_000, tolerance_kb=1024) == 48_000


def test_the_kernels_vmhwm_at_exit_ends_the_engines() -> None:
    """GIVEN change records that read RSS only at address-space changes (10,000 kB)
    WHEN the exit brings the kernel's final VmHWM (300,000 kB: memory touched since)
    THEN the summary says the kernel's, and a later (lower) one after a reset too."""
    eng, tl = started(1000)
    eng.explain(hwm_record(tl, 10_000))
    eng.final(PID, 1000, 300_000)
    (s,) = eng.summary()
    assert s.vm_hwm_kb == 300_000 and s.hwm_set_by is None
    eng.final(PID, 1000, 2_000)
    assert eng.vm_hwm_kb(PID) == 2_000


def test_the_kernels_vmpeak_at_exit_and_a_mismatch_are_causes_of_their_own() -> None:
    """GIVEN a process at 1000 kB that peaks by mmap +500
    WHEN a mismatch sample says 1700 and the exit's kernel VmPeak says 1800
    THEN VmPeak is 1800 and its causes say where the 300 kB came from: they add up to it."""
    eng, tl = started(1000)
    eng.explain(tl.grow(500, "mmap", "[anon]"))
    high = ProcStatus(vm_peak_kb=1700, vm_size_kb=1700, vm_hwm_kb=100, vm_rss_kb=100)
    eng.check_sample(tl.ts + 1, PID, high)
    assert eng.check_sample(tl.ts + 2, PID, high).mismatch
    eng.final(PID, 1800, 900)
    assert eng.expected_vm_peak_kb(PID) == 1800 and eng.vm_hwm_kb(PID) == 900
    assert eng.causes(PID) == [
        Contributor(*ATTACHED, 1000),
        Contributor("mmap", "[anon]", 500, peaks=1),
        Contributor(*MISMATCH_FIX, 200),
        Contributor(*EXIT_FIX, 100),
    ]
