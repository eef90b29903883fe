"""The observations vmtrace reasons about, after decoding and enrichment.

A `Change` is what the kernel saw, in kB, with its cause named; the engine turns it into an
`Explained` record (peak, latch, grow, shrink, ...). Both live traces and logs read back by
`vmtrace report` produce these, so the engine never knows where they came from.
"""

from __future__ import annotations

from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from typing import Literal

ChangeKind = Literal["change", "exec", "exit", "baseline", "fork", "hwm", "oom"]
RecordType = Literal[
    "baseline", "peak", "latch", "grow", "shrink", "exec", "exit", "fork", "hwm", "oom"
]


@dataclass(frozen=True, slots=True)
class UserStack:
    """What the kernel captured: the user registers an unwinder starts from, and the user
    stack from sp upwards (data[0] is the byte at address sp)."""

    ip: int
    sp: int
    bp: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Frame:
    address: int  # the return address (or ip for frame 0)
    function: str | None  # symbol name
    offset: int | None  # address - symbol start
    module: str | None  # path of the mapped file
    module_offset: int | None  # `address` in the ELF file's address space (addr2line -e MODULE)
    file: str | None = None  # source file and line, where DWARF line info exists
    line: int | None = None


@dataclass(frozen=True, slots=True)
class Mapping:
    start: int
    end: int
    perms: str
    path: str
    offset: int = 0  # file offset of `start`, for file-backed mappings

    @property
    def size(self) -> int:
        return self.end - self.start


# The name of a file mapping whose record has no file: the kernel side always sends one, so
# this is a bug there; the name says "a file" without guessing which.
UNNAMED_FILE = "[file]"


@dataclass(frozen=True, slots=True)
class MappedFile:
    """The file of a file-backed mmap, as the kernel saw it at the change."""

    path: str  # absolute, from the root of the mount tree (the kernel's dentry walk)
    ino: int
    dev: int


@dataclass(frozen=True, slots=True)
class ProcStatus:
    """The Vm* lines of /proc/PID/status, in kB."""

    vm_peak_kb: int
    vm_size_kb: int
    vm_hwm_kb: int
    vm_rss_kb: int


@dataclass(frozen=True, slots=True)
class Tally:
    """Grow/shrink changes the kernel side counted instead of sending them one by one (the
    reader was behind), and what they mapped and unmapped; totals so far, per process."""

    changes: int = 0
    grown_kb: int = 0
    shrunk_kb: int = 0

    @classmethod
    def of_pages(cls, changes: int, grown_pages: int, shrunk_pages: int, kb_per_page: int) -> Tally:
        """The kernel side's totals, counted in pages; NO_TALLY when there are none."""
        if not changes:
            return NO_TALLY
        return cls(changes, grown_pages * kb_per_page, shrunk_pages * kb_per_page)

    def latest(self, other: Tally) -> Tally:
        """The later totals of two records (each total only grows; records of two rings and
        several CPUs arrive in any order)."""
        if other is NO_TALLY or other == self:  # every record, while nothing is tallied
            return self
        return Tally(
            max(self.changes, other.changes),
            max(self.grown_kb, other.grown_kb),
            max(self.shrunk_kb, other.shrunk_kb),
        )

    def as_dict(self) -> dict[str, int]:
        return {"changes": self.changes, "grown_kb": self.grown_kb, "shrunk_kb": self.shrunk_kb}


NO_TALLY = Tally()


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    ts_ns: int
    pid: int
    tid: int
    comm: str
    cause: str
    syscall: str | None
    args: MappingABC[str, object] | None
    ret: int | None
    total_vm_kb_before: int
    total_vm_kb_after: int
    hiwater_vm_kb_before: int
    hiwater_vm_kb_after: int
    stack_vm_kb_before: int
    stack_vm_kb_after: int
    kernel_peak_kb_before: int
    mapping: Mapping | None = None
    stack: tuple[Frame, ...] | None = None  # the user call chain, innermost first
    # RSS as /proc counts it (file + anon + shmem) and VmHWM = max(hiwater_rss, rss), both
    # right after the change; for `hwm` records, hwm_kb_before is the previous HWM record's.
    rss_kb: int = 0
    hwm_kb: int = 0
    hwm_kb_before: int = 0
    rss_member: str | None = None  # hwm: which counter grew (file, anon, shmem)
    parent_pid: int | None = None  # fork: the traced parent
    exec_tid: int | None = None  # exec: the thread that called it (now the leader)
    rss_file_kb: int = 0  # RSS by kind (rss_kb is their sum)
    rss_anon_kb: int = 0
    rss_shmem_kb: int = 0
    exit_code: int | None = None  # exit: the kernel's exit code (status << 8 | signal)
    oom_trigger_pid: int | None = None  # oom: whose allocation made the kernel kill
    host_pid: int | None = None  # baseline: the host's PID, when vmtrace's namespace has another
    mm_id: int = 0  # the address space: records of an earlier image have another one
    folded_rises: int = 0  # --min-delta: smaller VmPeak rises this peak covers
    lost: int = 0  # records of this process the kernel side had no room for, so far
    tally: Tally = NO_TALLY  # its changes counted, not sent, so far
    stack_unread: bool = False  # a stack was to be copied, but the user stack could not be read

    @property
    def delta_kb(self) -> int:
        return self.total_vm_kb_after - self.total_vm_kb_before


@dataclass(frozen=True, slots=True)
class Explained:
    """A change with its meaning for VmPeak."""

    type: RecordType
    change: Change
    vm_peak_kb_before: int
    vm_peak_kb: int
    new_high: bool = False  # a peak at or above every earlier one: it sets the final VmPeak

    @property
    def rise_kb(self) -> int:
        """How much VmPeak rose (a change's own size is `change.delta_kb`)."""
        return self.vm_peak_kb - self.vm_peak_kb_before


@dataclass(frozen=True, slots=True)
class SampleCheck:
    """A /proc/PID/status reading compared with the VmPeak rebuilt from events."""

    ts_ns: int
    pid: int
    status: ProcStatus
    expected_vm_peak_kb: int
    match: bool
    mismatch: bool  # disagreed twice in a row: reported, never hidden


@dataclass(frozen=True, slots=True)
class Contributor:
    cause: str
    mapping: str
    kb: int
    peaks: int = 0  # how many new peaks rose by this cause and mapping


@dataclass(frozen=True, slots=True)
class ProcessSummary:
    pid: int
    comm: str
    vm_peak_kb: int
    set_by: Explained | None
    peaks: int
    latches: int
    top_causes: tuple[Contributor, ...] = field(default_factory=tuple)
    vm_hwm_kb: int = 0
    hwm_set_by: Explained | None = None
    lost: int = 0  # records of this process the kernel side had no room for
    tally: Tally = NO_TALLY  # its grow/shrink changes counted, not sent one by one
    stacks_unread: int = 0  # its records whose user stack could not be read
