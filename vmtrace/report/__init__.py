"""`vmtrace report`: what an event log says about each process's VmPeak (pure).

`build_report(records)` streams the records of a log (vmtrace.logread) through the same
`PeakEngine` that explained them live, and through an `AddressSpace` rebuilt from the log, and
returns a `Report`: per process, the timeline of new peaks (each with its cause and what is new
since the previous high), VmHWM (samples, HWM records, the exit), the causes of the final
VmPeak by call site (the innermost frames), by whole call chain and by mapping, and the
composition of the address space at the final peak. `render_text`, `render_markdown` and
`report_json` turn it into text.

Invariants the tests hold it to:
- the contributions by call site (and by call chain, and by mapping) add up to the final
  VmPeak: the starting
  value (the exec image, or VmPeak at attach) + each new peak's rise + any correction a
  `mismatch` made;
- the groups of the composition add up to the final VmPeak, with whatever the replay cannot
  place shown as its own `unattributed` line.
Memory is bounded: the timelines keep their first and last `max_peaks // 2` entries and count
the rest; the address space holds the mappings alive, not the history.
"""

from vmtrace.report.build import (
    ReportBuilder,
    build_report,
    call_chain,
    call_site,
    coalesce,
)
from vmtrace.report.model import (
    DEFAULT_MAX_PEAKS,
    UNEXPLAINED,
    Cause,
    Composition,
    HwmEntry,
    OomKill,
    PeakEntry,
    ProcessReport,
    Report,
)
from vmtrace.report.render import merge_runs, render_markdown, render_text, report_dict, report_json
from vmtrace.space import (
    ANON,
    BEFORE,
    EXEC_IMAGE,
    FILE,
    GROUPS,
    HEAP,
    OTHER,
    RESERVED,
    SHARED,
    STACK,
    THREAD_STACKS,
    UNATTRIBUTED,
    AddressSpace,
    group_of,
)

__all__ = [
    "ANON", "BEFORE", "DEFAULT_MAX_PEAKS", "EXEC_IMAGE", "FILE", "GROUPS", "HEAP", "OTHER",
    "RESERVED", "SHARED", "STACK", "THREAD_STACKS", "UNATTRIBUTED", "UNEXPLAINED",
    "AddressSpace", "Cause", "Composition", "HwmEntry", "OomKill", "PeakEntry",
    "ProcessReport", "Report", "ReportBuilder", "build_report", "call_chain", "call_site",
    "coalesce", "group_of", "merge_runs", "render_markdown", "render_text", "report_dict",
    "report_json",
]  # fmt: skip
