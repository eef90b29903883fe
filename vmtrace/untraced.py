"""Without --follow: the processes a traced process started that vmtrace did not trace.

The tracer looks at the process table at each sample (/proc/*/stat: every child, grandchild...
of a traced process that is not itself traced) and keeps, per process (pid and start time),
its name and the largest VmPeak seen. A child that lives less than one sample interval may
be missed: the count is what the samples saw, a lower bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmtrace import procfs


@dataclass
class _Seen:
    pid: int
    comm: str
    vm_peak_kb: int | None = None


class UntracedChildren:
    def __init__(self, proc: str = procfs.PROC) -> None:
        self._proc = proc
        self._seen: dict[tuple[int, int], _Seen] = {}

    def observe(self, traced: set[int]) -> None:
        """One look at the process table: the descendants of `traced` that are not traced."""
        if not traced:
            return
        table = procfs.read_process_table(self._proc)
        for e in procfs.descendants(table, traced):
            s = self._seen.setdefault((e.pid, e.start_time), _Seen(e.pid, e.comm))
            s.comm = e.comm  # an exec renames it
            status = procfs.read_status(e.pid, self._proc)
            if status is not None and (s.vm_peak_kb is None or status.vm_peak_kb > s.vm_peak_kb):
                s.vm_peak_kb = status.vm_peak_kb

    @property
    def count(self) -> int:
        return len(self._seen)

    def summary(self) -> dict[str, Any]:
        """For the `end` record: how many, and the one with the largest VmPeak seen."""
        known = [s for s in self._seen.values() if s.vm_peak_kb is not None]
        top = max(known, key=lambda s: s.vm_peak_kb or 0) if known else None
        return {
            "count": self.count,
            "largest": (
                {"pid": top.pid, "comm": top.comm, "vm_peak_kb": top.vm_peak_kb} if top else None
            ),
        }
