"""The address space of a traced process, as the records say it changes, and what it is
made of (its groups). One model, fed the same changes live (enrich, to name what a change
maps or unmaps and what a stack runs in) and offline (report, for the composition)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vmtrace.records import UNNAMED_FILE, Change, Mapping
from vmtrace.shadow import ShadowMap
from vmtrace.syscalls import page_align

# Groups of the address space, in the order reports list them.
HEAP = "heap"
ANON = "anonymous"
FILE = "file-backed"
STACK = "stack"
THREAD_STACKS = "thread stacks"
SHARED = "shared memory"
RESERVED = "reservations"
EXEC_IMAGE = "exec image"
BEFORE = "before tracing"
OTHER = "other"
UNATTRIBUTED = "unattributed"
GROUPS = (HEAP, ANON, FILE, STACK, THREAD_STACKS, SHARED, RESERVED, EXEC_IMAGE, BEFORE, OTHER)
GROUP_HELP = {
    HEAP: "[heap]: the brk area",
    ANON: "private anonymous mappings (malloc arenas, large allocations)",
    FILE: "mapped files (executables, libraries, data files)",
    STACK: "[stack], the main thread's stack",
    THREAD_STACKS: "mmaps made with MAP_STACK (pthread stacks)",
    SHARED: "SysV shm, shared anonymous, /dev/shm and memfd mappings",
    RESERVED: "mapped PROT_NONE (---) when created: reserved address space",
    EXEC_IMAGE: "what execve mapped (executable, ld.so, stack, vdso): not itemised in the log",
    BEFORE: "mapped before the first record, not itemised in the log",
    OTHER: "kernel-named mappings ([vdso], [vvar]...) and changes the log gives no mapping for",
    UNATTRIBUTED: "what the replay of the log could not place",
}
THREAD_STACK_PATH = "[thread stack]"
_SHARED_PREFIXES = ("/dev/shm/", "/memfd:", "/SYSV", "/dev/zero")


def group_of(m: Mapping) -> str:
    """The composition group of a mapping, from its name and its permissions when created."""
    path, perms = m.path, m.perms
    if path == "[heap]":
        return HEAP
    if path == "[stack]":
        return STACK
    if path == THREAD_STACK_PATH:
        return THREAD_STACKS
    shared = perms.endswith("s")
    if path == "[shm]" or path.startswith(_SHARED_PREFIXES) or (shared and path == "[anon]"):
        return SHARED
    if perms.startswith("---"):
        return RESERVED
    if path.startswith("/") or path == UNNAMED_FILE:
        return FILE
    if path in ("[anon]", ""):
        return ANON
    return OTHER


def kb_of(nbytes: int) -> int:
    return nbytes // 1024


@dataclass(frozen=True)
class Snapshot:
    """The address space right after one record."""

    groups: dict[str, int]  # kB per group, unattributed excluded
    mappings: list[Mapping]
    base_label: str
    other_causes: dict[str, int]


class AddressSpace:
    """A process's mappings, kept with vmtrace.shadow.ShadowMap from its change records.

    It starts from the mappings at attach (the `maps` record), from its parent's at fork (the
    child's mm is a copy), or at exec from the new image's mappings where they are known
    (live: read from /proc) and otherwise as one *base*, the exec record's whole total_vm
    (the log does not itemise the exec image). For a process whose first record is none of
    these, the base is what total_vm was before that record. Each change's `mapping` (and,
    for mremap, the old range in its `args`) is then applied. Where an unmap or a MAP_FIXED
    mapping removes more than the shadow knew of, the difference came out of the base.
    Changes the log gives no mapping for (an untraced syscall, a fault) are kept by cause.
    After every record the replayed total is compared with the logged total_vm: `offset` is the
    difference, `lost_track` counts how often it changed.
    """

    def __init__(self, page_size: int = 4096) -> None:
        self.page = page_size
        self.shadow = ShadowMap()
        self.kb: dict[str, int] = dict.fromkeys(GROUPS, 0)
        self.base_kb = 0
        self.base_label = BEFORE
        self.other_causes: dict[str, int] = {}
        self._itemised_kb = 0  # sum(kb) + sum(other_causes), kept as they change
        self.known = False
        self.offset = 0
        self.lost_track = 0
        self.first_lost_track: str | None = None

    # -- starting points
    def seed(self, mappings: Iterable[Mapping]) -> None:
        self._reset(EXEC_IMAGE, 0)
        for m in mappings:
            if m.path == "[vsyscall]":  # the gate page: in maps, not in total_vm
                continue
            self._insert(m)
        self.known = True

    def exec(self, total_kb: int) -> None:
        self._reset(EXEC_IMAGE, total_kb)
        self.known = True

    def _reset(self, label: str, base_kb: int) -> None:
        self.shadow = ShadowMap()
        self.kb = dict.fromkeys(GROUPS, 0)
        self.other_causes = {}
        self._itemised_kb = 0
        self.base_label = label
        self.base_kb = base_kb
        self.offset = 0

    # -- bookkeeping
    def total_kb(self) -> int:
        return self._itemised_kb + self.base_kb

    def _insert(self, m: Mapping) -> int:
        """Map m (replacing what it overlaps); returns the kB it replaced that the shadow knew."""
        removed = self._remove(m.start, m.end)
        if m.end > m.start:
            self.shadow.insert(m)
            self.kb[group_of(m)] += kb_of(m.size)
            self._itemised_kb += kb_of(m.size)
        return removed

    def _remove(self, start: int, end: int) -> int:
        gone = 0
        for piece in self.shadow.remove(start, end):
            self.kb[group_of(piece)] -= kb_of(piece.size)
            self._itemised_kb -= kb_of(piece.size)
            gone += kb_of(piece.size)
        return gone

    def clone(self) -> AddressSpace:
        other = AddressSpace(self.page)
        other.shadow = ShadowMap(self.shadow.mappings())
        other.kb = dict(self.kb)
        other.base_kb = self.base_kb
        other.base_label = self.base_label
        other.other_causes = dict(self.other_causes)
        other._itemised_kb = self._itemised_kb
        other.known = self.known
        other.offset = self.offset
        return other

    def snapshot(self) -> Snapshot:
        groups = dict(self.kb)
        groups[self.base_label] += self.base_kb
        groups[OTHER] += sum(self.other_causes.values())
        return Snapshot(groups, self.shadow.mappings(), self.base_label, dict(self.other_causes))

    # -- replay
    def apply(self, c: Change, where: str = "") -> None:
        """The change `c` made, in the order of the records; `where` names it in the first
        disagreement with the logged total_vm."""
        if c.kind == "exec":
            self.exec(c.total_vm_kb_after)
            return
        if not self.known:
            # Nothing itemised yet: what was there before this record is the base.
            self._reset(BEFORE, c.total_vm_kb_before)
            self.known = True
        if c.kind in ("baseline", "exit", "fork", "hwm"):
            self._check(c, where)
            return
        before = self.total_kb()
        span_kb = self._replay(c)
        if span_kb is None:
            if c.delta_kb:
                self.other_causes[c.cause] = self.other_causes.get(c.cause, 0) + c.delta_kb
                self._itemised_kb += c.delta_kb
        else:
            # The kernel removed more than the shadow knew of: that part was in the base.
            missing = c.delta_kb - (self.total_kb() - before)
            if missing < 0 and self.base_kb > 0:
                take = min(-missing, self.base_kb, span_kb)
                self.base_kb -= take
        self._check(c, where)

    def _check(self, c: Change, where: str) -> None:
        offset = c.total_vm_kb_after - self.total_kb()
        if offset != self.offset:
            self.lost_track += 1
            if self.first_lost_track is None:
                self.first_lost_track = (
                    f"{where}: after {c.cause} total_vm is {c.total_vm_kb_after} kB, the replay "
                    f"has {self.total_kb()} kB"
                )
            self.offset = offset

    def _replay(self, c: Change) -> int | None:
        """Apply one change; the kB of address range it touched outside the shadow, or None
        when the log says nothing of where it happened."""
        m = c.mapping
        if m is None:
            return None
        sc = c.syscall
        args = c.args or {}
        if c.cause == "stack-growth":
            return kb_of(m.size) - self._insert(m)
        if sc == "mmap":
            flags = str(args.get("flags", ""))
            if "stack" in flags.split("|") and m.path == "[anon]":
                m = dataclasses.replace(m, path=THREAD_STACK_PATH)
            return kb_of(m.size) - self._insert(m)
        if sc in ("munmap", "shmdt"):
            return kb_of(m.size) - self._remove(m.start, m.end)
        if sc == "brk":
            if c.delta_kb >= 0:
                return kb_of(m.size) - self._insert(dataclasses.replace(m, path="[heap]"))
            return kb_of(m.size) - self._remove(m.start, m.end)
        if sc == "mremap":
            old = _int_arg(args.get("old_addr"))
            old_len = page_align(_int_arg(args.get("old_len")), self.page)
            outside = 0
            if old_len > 0:
                outside += kb_of(old_len) - self._remove(old, old + old_len)
            return outside + kb_of(m.size) - self._insert(m)
        if sc == "shmat":
            return kb_of(m.size) - self._insert(m)
        return None


def _int_arg(v: Any) -> int:
    if isinstance(v, str):
        return int(v, 16)
    return int(v) if isinstance(v, int) else 0


class AddressSpaces:
    """Every traced process's AddressSpace, by pid, kept from its records in their order:
    the one place where a fork's child starts as a copy of its parent's."""

    def __init__(self, page_size: int = 4096) -> None:
        self.page = page_size
        self._by_pid: dict[int, AddressSpace] = {}

    def of(self, pid: int) -> AddressSpace:
        space = self._by_pid.get(pid)
        if space is None:
            space = self._by_pid[pid] = AddressSpace(self.page)
        return space

    def seed(self, pid: int, mappings: Iterable[Mapping]) -> AddressSpace:
        """`pid`'s mappings as read at one moment (attach, or an exec read live)."""
        space = self._by_pid[pid] = AddressSpace(self.page)
        space.seed(mappings)
        return space

    def apply(self, c: Change, where: str = "") -> AddressSpace:
        """The change `c` applied to its process's space, which it returns."""
        if c.kind == "fork":
            parent = self._by_pid.get(c.parent_pid) if c.parent_pid is not None else None
            fresh = parent.clone() if parent is not None and parent.known else None
            self._by_pid[c.pid] = fresh or AddressSpace(self.page)
        space = self.of(c.pid)
        space.apply(c, where)
        return space

    def forget(self, pid: int) -> None:
        self._by_pid.pop(pid, None)
