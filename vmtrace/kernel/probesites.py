"""Where the kprobe and fentry backends attach, resolved against the running kernel.

The function that latches hiwater_vm, and the unmap path around it, moved across kernel
generations (read in mm/mmap.c and mm/vma.c of each version):

| kernels     | latches hiwater_vm              | unmap entry covering every path         |
|-------------|---------------------------------|-----------------------------------------|
| 4.14 – 4.19 | remove_vma_list (static)        | do_munmap                               |
| 5.4 – 6.0   | remove_vma_list (static)        | __do_munmap                             |
| 6.1         | remove_mt (static inline)       | do_mas_align_munmap (munmap, brk shrink) |
| 6.6 – 6.11  | remove_mt (static inline)       | do_vmi_align_munmap                     |
| 6.12 – 7.1  | vms_complete_munmap_vmas        | do_vmi_align_munmap                     |

Writers of total_vm: vm_stat_account (every version; decreases too up to 6.11), the brk
growth path (do_brk_flags, or vm_brk_flags where do_brk_flags is inlined), and from 6.12
vms_complete_munmap_vmas, which lowers total_vm itself. The backends observe the counters
on return from every writer and at the entry of the unmap path (before the latch).

Static functions may be inlined, or cloned under a suffixed name (`.isra.0`,
`.constprop.0`, `.part.0`): every name is checked against /proc/kallsyms (kprobes) or BTF
(fentry), never assumed. Pure functions of the symbol lists, so they test on recorded
copies (tests/fixtures/kernels/).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# Ordered: the first that exists wins within a role, except where all are wanted.
WRITERS: tuple[str, ...] = (
    "vm_stat_account",
    "vms_complete_munmap_vmas",
    "do_brk_flags",
    "vm_brk_flags",
)
UNMAP_ENTRIES: tuple[str, ...] = (
    "do_vmi_align_munmap",  # 6.6+ (6.12+: the single path)
    "do_mas_align_munmap",  # 6.1: munmap and brk shrink both reach it
    "__do_munmap",  # 5.4 – 6.0
    "do_munmap",  # 4.14 – 4.19 (later kernels keep it, but munmap(2) bypasses it)
)
BRK_WRITERS = ("do_brk_flags", "vm_brk_flags")
EXIT_MMAP = "exit_mmap"

_CLONE = re.compile(r"^(?P<base>[A-Za-z_][A-Za-z0-9_]*)\.(?:isra|constprop|part|llvm)\.\d+$")


@dataclass(frozen=True)
class ProbePlan:
    """Symbols to attach: kretprobe/fexit after each writer, kprobe/fentry at unmap entries."""

    after_write: tuple[str, ...]
    before_unmap: tuple[str, ...]
    exit_mmap: str | None

    def describe(self) -> str:
        parts = [f"after {', '.join(self.after_write)}"]
        if self.before_unmap:
            parts.append(f"before {', '.join(self.before_unmap)}")
        return "; ".join(parts)


class NoSites(Exception):
    """No usable set of sites on this kernel; the message says which is missing."""


def kallsyms_text_symbols(text: str) -> set[str]:
    """Names of the functions (text symbols) in /proc/kallsyms content, modules excluded."""
    names = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] in ("t", "T") and len(parts) == 3:
            names.add(parts[2])
    return names


def filter_functions(text: str) -> set[str]:
    """Names in tracefs available_filter_functions (what kprobes can attach to cleanly)."""
    return {line.split()[0] for line in text.splitlines() if line.strip()}


def _variants(name: str, symbols: set[str]) -> list[str]:
    """`name` itself if it exists, else its compiler clones (a static that was cloned is
    only reachable through them)."""
    if name in symbols:
        return [name]
    clones = []
    for s in symbols:
        m = _CLONE.match(s)
        if m and m.group("base") == name:
            clones.append(s)
    return sorted(clones)


def resolve_kprobe_sites(symbols: Iterable[str], traceable: set[str] | None = None) -> ProbePlan:
    """Sites for the kprobe backend; `traceable` (available_filter_functions), when known,
    excludes functions that exist but cannot be probed (notrace, or only a symbol left by
    an inlined static)."""
    syms = set(symbols)
    if traceable is not None:
        syms &= traceable
    writers: list[str] = []
    for name in WRITERS:
        if name in BRK_WRITERS and any(w.split(".")[0] in BRK_WRITERS for w in writers):
            continue  # one brk path is enough; do_brk_flags is the inner one
        writers += _variants(name, syms)
    if not any(w.split(".")[0] == "vm_stat_account" for w in writers):
        raise NoSites(
            "vm_stat_account is not probe-able on this kernel (it accounts every new mapping)"
        )
    entries: list[str] = []
    for name in UNMAP_ENTRIES:
        entries = _variants(name, syms)
        if entries:
            break
    exit_mmap = EXIT_MMAP if EXIT_MMAP in syms else None
    return ProbePlan(tuple(writers), tuple(entries), exit_mmap)


def resolve_fentry_sites(has_function: Callable[[str], bool]) -> ProbePlan:
    """Sites for the fentry backend: functions described in BTF (clones never are)."""
    writers = [n for n in WRITERS if has_function(n)]
    if "do_brk_flags" in writers and "vm_brk_flags" in writers:
        writers.remove("vm_brk_flags")
    if "vm_stat_account" not in writers:
        raise NoSites("vm_stat_account is not in BTF (fentry needs BTF for each function)")
    entry = next((n for n in UNMAP_ENTRIES if has_function(n)), None)
    return ProbePlan(tuple(writers[:4]), (entry,) if entry else (), None)
