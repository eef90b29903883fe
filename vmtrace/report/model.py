"""What `vmtrace report` finds: the report's data, built by `build`, rendered by `render`."""

from __future__ import annotations

from dataclasses import dataclass, field

from vmtrace.engine import ATTACHED, EXIT_FIX, MISMATCH_FIX, UNSEEN
from vmtrace.records import (
    Frame,
)

# What a report holds, and how much of it
UNEXPLAINED = UNSEEN[0]
# the engine's causes that are no rise of a call: no call site or chain of their own
NOT_RISES = frozenset(k[0] for k in (ATTACHED, MISMATCH_FIX, EXIT_FIX, UNSEEN))
TOP_ITEMS = 8
TOP_CAUSES = 10
STACK_FRAMES = 6
CHAIN_FRAMES = 16  # frames of a call chain the text shows (JSON and Markdown have them all)
DEFAULT_MAX_PEAKS = 400


# -- report data --------------------------------------------------------------------------------


@dataclass
class Item:
    label: str
    kb: int
    start: str | None = None
    end: str | None = None
    perms: str | None = None


@dataclass
class GroupLine:
    group: str
    kb: int
    mappings: int  # regions: adjacent pieces of one mapping counted once
    items: list[Item]
    more: int = 0  # regions not itemised


@dataclass
class Composition:
    at: str  # "peak", "exec", "attach"
    line: int | None
    ts_ns: int | None
    time: str | None
    rel_s: float | None
    vm_peak_kb: int
    groups: list[GroupLine]
    unattributed_kb: int
    note: str | None = None

    @property
    def total_kb(self) -> int:
        return sum(g.kb for g in self.groups) + self.unattributed_kb


@dataclass
class PeakEntry:
    type: str  # "peak" or "exec"
    line: int
    ts_ns: int
    time: str | None
    rel_s: float
    tid: int
    comm: str
    cause: str
    call: str
    mapping: str | None
    vm_peak_kb_before: int
    vm_peak_kb: int
    new_since_previous: dict[str, int]
    stack: list[Frame] | None = None
    records_since_previous: int = 0


@dataclass
class HwmEntry:
    line: int
    ts_ns: int
    time: str | None
    rel_s: float
    vm_hwm_kb_before: int | None
    vm_hwm_kb: int
    vm_rss_kb: int
    source: str = "sample"  # or the cause of an `hwm` record, or "exit"
    tid: int | None = None


@dataclass
class Cause:
    cause: str
    where: str  # the call site or chain (short frames joined by " ← ") or the mapping
    kb: int
    peaks: int
    frames: list[str] = field(default_factory=list)  # sites and chains: each frame in full


@dataclass
class ProcessReport:
    pid: int
    comm: str
    final_vm_peak_kb: int
    start_vm_peak_kb: int | None  # VmPeak at attach (-p), None if traced from exec or unknown
    set_by: PeakEntry | None
    peaks: int
    latches: int
    execs: int
    samples: int
    mismatches: int
    timeline: list[PeakEntry]
    timeline_omitted: int
    hwm: list[HwmEntry]
    hwm_omitted: int
    max_rss_kb: int | None
    by_call_site: list[Cause]
    by_mapping: list[Cause]
    causes_more_kb: tuple[int, int]  # kB of the causes past the top lists (site, mapping)
    composition: Composition | None
    replay_lost_track: int
    replay_first_problem: str | None
    logged_final_vm_peak_kb: int | None  # from the exit record or end summary
    exited: bool
    by_call_chain: list[Cause] = field(default_factory=list)
    chain_more_kb: int = 0  # kB of the call chains past the top list


@dataclass
class OomKill:
    """An `oom` record: the OOM killer's victim, what it had become and its last rises."""

    pid: int
    comm: str
    time: str | None
    cgroup: str | None
    rss_kb: int
    rss_kb_by_kind: dict[str, int]
    vm_peak_kb: int | None
    last_rises: list[str]  # "+SIZE to SIZE: call mapping", oldest first
    largest_mappings: list[str]


@dataclass
class Report:
    log: str
    version: int
    vmtrace: str | None
    kernel: str | None
    backend: str | None
    started: str | None
    duration_s: float | None
    end_reason: str | None
    complete: bool
    events: int | None
    lost: int
    tallied: int  # grow/shrink changes the kernel counted without logging them one by one
    change_records: int
    engine_disagreements: int
    first_disagreement: str | None
    warnings: list[str]
    processes: list[ProcessReport]
    oom_kills: list[OomKill] = field(default_factory=list)
