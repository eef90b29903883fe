"""`vmtrace export --format folded`: what raised VmPeak, as folded stacks (pure).

One line per distinct call chain: its frames outermost first, separated by `;`, then the
cause of the change (`mmap`, `brk`, `stack-growth`...) as the last frame, a space and the kB
that the new peaks of that chain added to VmPeak (each `peak` record's rise,
`vm_peak_kb - vm_peak_kb_before`):

    main;build_index;malloc;sysmalloc;__mmap64;mmap 65536

flamegraph.pl, inferno-flamegraph and speedscope read this as it is; the widths of a flame
graph of it are VmPeak's kB. A frame is its function (without the offset, so that the calls of
one function merge) or `module+0xoffset` where the module has no symbol for it (vmtrace.frames).
A peak without a stack is its cause alone. Exec records are not rises: VmPeak starts over.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO

from vmtrace.frames import folded_frame, frames_of
from vmtrace.logread import Record


def folded_line_key(rec: Record) -> str:
    """The folded stack of one change record, without its count."""
    frames = [folded_frame(f) for f in reversed(frames_of(rec.get("stack")))]
    cause = str(rec.get("cause") or "unknown").replace(";", ":")
    return ";".join([*frames, cause])


def folded_stacks(records: Iterable[tuple[int, Record]]) -> dict[str, int]:
    """kB added to VmPeak per folded stack, over the `peak` records."""
    out: dict[str, int] = {}
    for _line, rec in records:
        if rec["type"] != "peak":
            continue
        rise = rec["vm_peak_kb"] - rec["vm_peak_kb_before"]
        if rise <= 0:
            continue
        key = folded_line_key(rec)
        out[key] = out.get(key, 0) + rise
    return out


def write_folded(records: Iterable[tuple[int, Record]], out: IO[str]) -> int:
    """The folded stacks, sorted (as stackcollapse tools write them); returns the lines."""
    stacks = folded_stacks(records)
    for key in sorted(stacks):
        out.write(f"{key} {stacks[key]}\n")
    return len(stacks)
