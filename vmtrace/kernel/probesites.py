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
growth path (do_brk_flags, or vm_brk_flags), and from 6.12 vms_complete_munmap_vmas, which
lowers total_vm itself. vm_stat_account is a global function, yet Debian's 6.1 build inlines
it into its callers in mm/mmap.c (a kprobe on it saw none of 10 mmaps in the 6.1 VM), so
the callers that matter outside a traced syscall are observed too: mmap_region (mappings
made by the kernel for untraced calls, e.g. io_setup), expand_downwards (stack growth in a
page fault), and the unmap entry on return (unmaps by untraced calls). Inside a traced
syscall the exit sees whatever these missed.

The backends observe the counters on return from every writer found, and at the entry of
the unmap path (before the latch). Static functions may be inlined, or cloned under a
suffixed name (`.isra.0`, `.constprop.0`, `.part.0`): every name is checked against
/proc/kallsyms and tracefs (kprobes) or BTF (fentry), never assumed. BPF trampolines take
at most 6 arguments before 6.6 (error 524 on 6.1 for the 7-argument do_mas_align_munmap),
so fentry skips longer functions. Pure functions of the symbol lists, so they test on
recorded copies (tests/fixtures/kernels/: Debian's 5.10, where remove_vma_list is inlined
and __do_munmap is the probed entry, 6.1 and 6.12, and a 6.18 build).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

WRITERS: tuple[str, ...] = (
    "vm_stat_account",
    "mmap_region",
    "expand_downwards",
    "vms_complete_munmap_vmas",
    "do_brk_flags",
    "vm_brk_flags",
)
BRK_WRITERS = ("do_brk_flags", "vm_brk_flags")
# Best first: the first that exists is the entry observed before the latch.
UNMAP_ENTRIES: tuple[str, ...] = (
    "do_vmi_align_munmap",  # 6.6+ (6.12+: the single path to vms_complete_munmap_vmas)
    "do_vmi_munmap",  # 6.6 – 6.11 (6 arguments: fentry's fallback there)
    "do_mas_align_munmap",  # 6.1: munmap and brk shrink both reach it
    "do_mas_munmap",  # 6.1 (6 arguments; brk shrink goes around it)
    "__do_munmap",  # 5.4 – 6.0
    "do_munmap",  # 4.14 – 4.19 (later kernels keep it, but munmap(2) bypasses it)
)
EXIT_MMAP = "exit_mmap"
# The calls whose changes are merged and judged at their return; their syscall functions
# (x86_64 wrappers taking the user pt_regs) are probed, which only tasks making those
# calls pay for.
CALLS: tuple[str, ...] = tuple(
    f"__x64_sys_{c}" for c in ("mmap", "munmap", "brk", "mremap", "shmat", "shmdt")
)
MAX_TRAMPOLINE_ARGS = 6
MAX_FENTRY_WRITERS = 6  # VMT_FEXIT_0..5 in bpf/fentry.c

_CLONE = re.compile(r"^(?P<base>[A-Za-z_][A-Za-z0-9_]*)\.(?:isra|constprop|part|llvm)\.\d+$")


@dataclass(frozen=True)
class ProbePlan:
    """Symbols to attach: kretprobe/fexit after each writer, kprobe/fentry at unmap entries."""

    after_write: tuple[str, ...]
    before_unmap: tuple[str, ...]
    exit_mmap: str | None
    calls: tuple[str, ...] = CALLS

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


def _base(symbol: str) -> str:
    return symbol.split(".", 1)[0]


def resolve_kprobe_sites(symbols: Iterable[str], traceable: set[str] | None = None) -> ProbePlan:
    """Sites for the kprobe backend; `traceable` (available_filter_functions), when known,
    excludes functions that exist but cannot be probed (notrace, or only a symbol left by
    an inlined static). None means unknown (the file cannot be read), not "nothing"."""
    syms = set(symbols)
    if traceable is not None:
        syms &= traceable
    writers: list[str] = []
    for name in WRITERS:
        if name in BRK_WRITERS and any(_base(w) in BRK_WRITERS for w in writers):
            continue  # one brk path is enough; do_brk_flags is the inner one
        writers += _variants(name, syms)
    if not any(_base(w) in ("vm_stat_account", "mmap_region") for w in writers):
        raise NoSites(
            "neither vm_stat_account nor mmap_region can be probed on this kernel "
            "(they account every new mapping)"
        )
    entries: list[str] = []
    for name in UNMAP_ENTRIES:
        entries = _variants(name, syms)
        if entries:
            break
    # Unmaps by untraced calls lower total_vm: observe the entry's return too.
    after = writers + [e for e in entries if e not in writers]
    missing = [c for c in CALLS if c not in syms]
    if missing:
        raise NoSites(f"the syscall functions {', '.join(missing)} cannot be probed")
    exit_mmap = EXIT_MMAP if EXIT_MMAP in syms else None
    return ProbePlan(tuple(after), tuple(entries), exit_mmap, CALLS)


def resolve_fentry_sites(
    has_function: Callable[[str], bool],
    arg_count: Callable[[str], int | None] = lambda _n: 0,
) -> ProbePlan:
    """Sites for the fentry backend: functions described in BTF (clones never are) that a
    trampoline can take (at most MAX_TRAMPOLINE_ARGS arguments)."""

    def usable(name: str) -> bool:
        n = arg_count(name)
        return has_function(name) and (n is None or n <= MAX_TRAMPOLINE_ARGS)

    writers = [n for n in WRITERS if usable(n)]
    if "do_brk_flags" in writers and "vm_brk_flags" in writers:
        writers.remove("vm_brk_flags")
    if not {"vm_stat_account", "mmap_region"} & set(writers):
        raise NoSites("neither vm_stat_account nor mmap_region is in BTF (fentry needs BTF)")
    entry = next((n for n in UNMAP_ENTRIES if usable(n)), None)
    after = writers + ([entry] if entry and entry not in writers else [])
    missing = [c for c in CALLS if not has_function(c)]
    if missing:
        raise NoSites(f"the syscall functions {', '.join(missing)} are not in BTF")
    return ProbePlan(tuple(after[:MAX_FENTRY_WRITERS]), (entry,) if entry else (), None, CALLS)
