"""The explanation engine: is this change a new peak, a latch, or neither, and why.

Pure: `Change`s in, `Explained` records, sample checks and summaries out. Live tracing and
`vmtrace report` feed it the same way, so it is tested without root or a kernel.

The kernel facts it encodes (fs/proc/task_mmu.c, include/linux/mm.h):
- VmPeak = max(hiwater_vm, total_vm). hiwater_vm is only latched (raised to total_vm)
  just before total_vm is lowered, so while total_vm grows VmPeak follows it, and a
  decrease never lowers VmPeak. A new peak is total_vm growing past every earlier value.
- execve gives the process a new mm: its peak starts over.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from vmtrace.records import (
    NO_TALLY,
    Change,
    Contributor,
    Explained,
    ProcessSummary,
    ProcStatus,
    RecordType,
    SampleCheck,
    Tally,
)

TOP_CAUSES = 5
# (cause, mapping) keys of what VmPeak is made of besides its rises
ATTACHED = ("(VmPeak when vmtrace attached)", "")
MISMATCH_FIX = ("(corrected by a mismatch sample)", "")
EXIT_FIX = ("(corrected by the kernel's VmPeak at exit)", "")
# what VmPeak rose by that no record shows (rises kept back by --min-delta, records lost,
# a log cut short): the other causes add up to less
UNSEEN = ("(not in the records)", "")


@dataclass
class _Process:
    comm: str
    vm_peak_kb: int = 0
    set_by: Explained | None = None
    peaks: int = 0
    latches: int = 0
    contributions: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    rises: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    disagreed_last_sample: bool = False
    vm_hwm_kb: int = 0
    hwm_set_by: Explained | None = None
    mm_id: int = 0  # the image being followed (0: not known yet)
    lost: int = 0  # the kernel side's count of this process's dropped records
    tally: Tally = NO_TALLY  # its changes the kernel side counted instead of sending
    stacks_unread: int = 0  # records whose user stack the kernel side could not read
    hwm_reset_ns: int = 0  # VmHWM was reset then: records made before say nothing of it
    hwm_raised_ns: int = 0  # when the record that last raised vm_hwm_kb was made
    # --min-delta: the kernel side's per-mm peak, read at the samples: above vm_peak_kb by
    # the rises it kept back since the last peak it sent
    kernel_peak_kb: int = 0


class PeakEngine:
    def __init__(self) -> None:
        self._procs: dict[int, _Process] = {}

    def start(self, pid: int, comm: str, status: ProcStatus | None) -> None:
        """Begin following `pid`; `status` is /proc/PID/status read once the probes were on."""
        p = self._procs[pid] = _Process(comm=comm, vm_peak_kb=status.vm_peak_kb if status else 0)
        if status is not None:
            p.contributions[ATTACHED] = status.vm_peak_kb

    def pids(self) -> list[int]:
        return list(self._procs)

    def tally(self, pid: int) -> Tally:
        """Changes of `pid` the kernel side counted instead of sending, as its latest
        record said."""
        p = self._procs.get(pid)
        return p.tally if p else NO_TALLY

    def lost(self, pid: int) -> int:
        """Records of `pid` the kernel side had no room for, as its latest record said."""
        p = self._procs.get(pid)
        return p.lost if p else 0

    def expected_vm_peak_kb(self, pid: int) -> int | None:
        """None until something said (every process with an address space has VmPeak > 0:
        0 is a process that exited before /proc or a record could tell)."""
        p = self._procs.get(pid)
        return max(p.vm_peak_kb, p.kernel_peak_kb) or None if p else None

    def explain(self, change: Change) -> Explained:
        p = self._procs.get(change.pid)
        if p is None:
            p = self._procs[change.pid] = _Process(comm=change.comm)
        p.lost = max(p.lost, change.lost)
        p.tally = p.tally.latest(change.tally)
        p.stacks_unread += change.stack_unread
        now = max(change.total_vm_kb_after, change.hiwater_vm_kb_after)
        kind = change.kind

        if kind == "oom":
            # the victim's counters at the kill: facts about the end, not a change
            return Explained("oom", change, p.vm_peak_kb, p.vm_peak_kb)
        if kind == "exit":
            # the kernel's counters as the last thread left: what VmPeak ended at
            before = p.vm_peak_kb
            self.exit_counters(change.pid, now)
            return Explained("exit", change, before, p.vm_peak_kb)
        if kind == "fork":
            # The child's own counters come with its baseline; this only says where it
            # came from.
            p.comm = change.comm
            return Explained("fork", change, p.vm_peak_kb, p.vm_peak_kb)
        if kind == "hwm":
            explained = Explained("hwm", change, p.vm_peak_kb, p.vm_peak_kb)
            if change.hwm_kb >= p.vm_hwm_kb and change.ts_ns >= p.hwm_reset_ns:
                self._raise_hwm(p, change)
                p.hwm_set_by = explained
            return explained
        if kind == "exec":
            p.mm_id = change.mm_id
            before = p.vm_peak_kb
            p.vm_peak_kb = now
            p.contributions.clear()
            p.rises.clear()
            p.comm = change.comm
            p.disagreed_last_sample = False
            p.vm_hwm_kb = 0
            self._raise_hwm(p, change)
            p.hwm_set_by = None
            explained = Explained("exec", change, before, now, new_high=True)
            p.set_by = explained
            p.kernel_peak_kb = 0  # the old mm's
            p.contributions[("execve", "[exec image]")] = now
            p.rises[("execve", "[exec image]")] = 1
            return explained

        # The kernel side tracks the peak per mm while holding mmap_lock, so its
        # peak-before is exact for this change even when records arrive out of order (a
        # change is sent at its syscall's exit, and threads exit in any order). Only
        # without it (a baseline) does the engine's own running maximum decide.
        before = change.kernel_peak_kb_before or p.vm_peak_kb
        if change.folded_rises and p.vm_peak_kb and before > p.vm_peak_kb:
            # --min-delta: this peak stands for the rises the kernel kept back since the
            # last one it sent, and is credited with them all
            before = p.vm_peak_kb
        after = max(before, now)
        if kind == "baseline" and change.mm_id:
            p.mm_id = change.mm_id
        elif change.mm_id and p.mm_id and change.mm_id != p.mm_id:
            # read after the exec that replaced its image: it says nothing of this one
            return Explained(_classify(change, before, after), change, before, after)
        if change.ts_ns >= p.hwm_reset_ns and change.hwm_kb > p.vm_hwm_kb:
            self._raise_hwm(p, change)
        rtype = _classify(change, before, after)
        # A peak that arrives after a higher one (records of two threads can come out of
        # order) is a rise of its own, but not the one that set VmPeak.
        new_high = rtype == "peak" and after >= p.vm_peak_kb
        p.vm_peak_kb = max(p.vm_peak_kb, after)
        explained = Explained(rtype, change, before, after, new_high)
        if rtype == "peak":
            p.peaks += 1
            if new_high:
                p.set_by = explained
            where = change.mapping.path if change.mapping else "?"
            p.contributions[(change.cause, where)] += after - before
            p.rises[(change.cause, where)] += 1
        elif rtype == "latch":
            p.latches += 1
        return explained

    @staticmethod
    def _raise_hwm(p: _Process, change: Change) -> None:
        p.vm_hwm_kb = change.hwm_kb
        p.hwm_raised_ns = max(p.hwm_raised_ns, change.ts_ns)

    def hwm_fall(self, pid: int, ts_ns: int, vm_hwm_kb: int, tolerance_kb: int) -> int | None:
        """The VmHWM the records say, if the kernel's (read at ts_ns) is more than
        tolerance_kb below it: VmHWM fell (clear_refs, or pages reclaimed before hiwater_rss
        was latched). None otherwise, and when a record made after the reading raised it:
        the reading is then only older than that record, not lower."""
        p = self._procs.get(pid)
        if p is None or p.hwm_raised_ns > ts_ns:
            return None
        if vm_hwm_kb >= p.vm_hwm_kb - tolerance_kb:
            return None
        return p.vm_hwm_kb


    def vm_hwm_kb(self, pid: int) -> int | None:
        p = self._procs.get(pid)
        return p.vm_hwm_kb if p else None

    def reset_hwm(self, pid: int, vm_hwm_kb: int, ts_ns: int = 0) -> None:
        """VmHWM was reset (clear_refs) or fell, as read at ts_ns: later HWM records count
        from here, and records made before it (read late) do not raise it again."""
        p = self._procs.get(pid)
        if p is not None:
            p.vm_hwm_kb = vm_hwm_kb
            p.hwm_set_by = None
            p.hwm_reset_ns = max(p.hwm_reset_ns, ts_ns)

    def note_kernel_peak(self, pid: int, vm_peak_kb: int) -> None:
        """With --min-delta the kernel keeps small peaks to itself; its per-mm peak (read
        from the BPF map, logged with the sample) is then what the samples are checked
        against, and the rises it kept back are a cause of their own."""
        p = self._procs.get(pid)
        if p is not None:
            p.kernel_peak_kb = max(p.kernel_peak_kb, vm_peak_kb)

    def check_sample(self, ts_ns: int, pid: int, status: ProcStatus) -> SampleCheck:
        """Compare the kernel's VmPeak with the one rebuilt from events.

        A reading may land while a change is being made (its event is sent when the mmap
        lock is released), so one disagreement is only noted; two in a row are a mismatch,
        reported, after which the kernel's value is taken as the new truth.
        """
        p = self._procs.get(pid)
        if p is None:
            p = self._procs[pid] = _Process(comm="?", vm_peak_kb=status.vm_peak_kb)
        expected = max(p.vm_peak_kb, p.kernel_peak_kb)
        match = status.vm_peak_kb == expected
        mismatch = not match and p.disagreed_last_sample
        p.disagreed_last_sample = not match and not mismatch
        if mismatch:
            p.vm_peak_kb = max(p.vm_peak_kb, p.kernel_peak_kb)
            self._correct(p, status.vm_peak_kb, MISMATCH_FIX)
        return SampleCheck(ts_ns, pid, status, expected, match, mismatch)

    def exit_counters(self, pid: int, vm_peak_kb: int) -> None:
        """max(total_vm, hiwater_vm) as the process's last thread exited: above the records,
        the kernel's correction."""
        p = self._procs.get(pid)
        if p is not None:
            p.vm_peak_kb = max(p.vm_peak_kb, p.kernel_peak_kb)
            if vm_peak_kb > p.vm_peak_kb:
                self._correct(p, vm_peak_kb, EXIT_FIX)

    def final(self, pid: int, vm_peak_kb: int, vm_hwm_kb: int) -> None:
        """The kernel's final VmPeak and VmHWM at exit (taskstats): the process's last
        word. Above the records (a change they missed) or below, it is what VmPeak was."""
        p = self._procs.get(pid)
        if p is None:
            return
        p.vm_peak_kb = max(p.vm_peak_kb, p.kernel_peak_kb)
        self._correct(p, vm_peak_kb, EXIT_FIX)
        if vm_hwm_kb != p.vm_hwm_kb:
            p.vm_hwm_kb = vm_hwm_kb
            p.hwm_set_by = None

    @staticmethod
    def _correct(p: _Process, vm_peak_kb: int, why: tuple[str, str]) -> None:
        """The kernel's own VmPeak replaces the rebuilt one; the causes say by how much."""
        fix = vm_peak_kb - p.vm_peak_kb
        if fix:
            p.contributions[why] += fix
            p.vm_peak_kb = vm_peak_kb

    def causes(self, pid: int) -> list[Contributor]:
        """What the final VmPeak is made of: each rise by (cause, mapping), the VmPeak at
        attach, the kernel's corrections and what no record shows, largest first; they add
        up to VmPeak."""
        p = self._procs.get(pid)
        if p is None:
            return []
        items = dict(p.contributions)
        unseen = max(p.vm_peak_kb, p.kernel_peak_kb) - sum(items.values())
        if unseen:
            items[UNSEEN] = unseen
        ranked = sorted(items.items(), key=lambda kv: (-kv[1], kv[0]))
        return [Contributor(c, m, kb, p.rises.get((c, m), 0)) for (c, m), kb in ranked if kb]

    def summary(self) -> list[ProcessSummary]:
        out = []
        for pid, p in self._procs.items():
            top = [c for c in self.causes(pid) if c.kb > 0][:TOP_CAUSES]
            out.append(
                ProcessSummary(
                    pid=pid,
                    comm=p.comm,
                    vm_peak_kb=max(p.vm_peak_kb, p.kernel_peak_kb),
                    set_by=p.set_by,
                    peaks=p.peaks,
                    latches=p.latches,
                    top_causes=tuple(top),
                    vm_hwm_kb=p.vm_hwm_kb,
                    hwm_set_by=p.hwm_set_by,
                    lost=p.lost,
                    tally=p.tally,
                    stacks_unread=p.stacks_unread,
                )
            )
        return out


def _classify(change: Change, before: int, after: int) -> RecordType:
    """What a change is for VmPeak, given VmPeak before it and after it."""
    if change.kind in ("baseline", "exit"):
        return change.kind
    if after > before:
        return "peak"
    if change.hiwater_vm_kb_after != change.hiwater_vm_kb_before:
        return "latch"
    if change.delta_kb >= 0:
        return "grow"
    return "shrink"
