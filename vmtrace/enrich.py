"""Kernel records → `Change`s: units, causes, the mapping each change is about, stacks.

The I/O it needs (/proc/PID/maps after exec, a stack unwinder) is injected, so the logic runs
on recorded events in tests; the live session passes the real ones. File mappings are named
by the kernel's record alone (the file as it saw it at the change): neither an fd nor
/proc/PID/map_files can be trusted by the time a record is read (closed, reused, split).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

from vmtrace.abi import FLAG_NO_REGS, EventKind, KernelEvent
from vmtrace.records import (
    UNNAMED_FILE,
    Change,
    ChangeKind,
    Frame,
    Mapping,
    Tally,
    UserStack,
)
from vmtrace.shadow import ShadowMap, names_of
from vmtrace.space import AddressSpaces
from vmtrace.syscalls import (
    MAP_ANONYMOUS,
    MAP_SHARED,
    SHM_RDONLY,
    TRACED,
    decode_args,
    decode_ret,
    fd_of,
    page_align,
    prot_letters,
    syscall_name,
)

MapsReader = Callable[[int], list[Mapping]]
MAX_FRAMES = 64


class StackUnwinder(Protocol):
    """What vmtrace.unwind.Unwinder offers: frames, innermost first, of a stack snapshot,
    with `find_mapping` telling what is mapped at an address."""

    def unwind(
        self,
        stack: UserStack,
        find_mapping: Callable[[int], Mapping | None],
        max_frames: int = MAX_FRAMES,
    ) -> list[Frame]: ...


_KINDS: dict[EventKind, ChangeKind] = {
    EventKind.SYSCALL: "change",
    EventKind.OTHER: "change",
    EventKind.EXEC: "exec",
    EventKind.EXIT: "exit",
    EventKind.BASELINE: "baseline",
    EventKind.FORK: "fork",
    EventKind.HWM: "hwm",
    EventKind.OOM: "oom",
}
_RSS_MEMBERS = {0: "file", 1: "anon", 2: "swap", 3: "shmem"}


class Enricher:
    def __init__(
        self,
        page_size: int,
        read_maps: MapsReader,
        unwinder: StackUnwinder | None = None,
        max_frames: int = MAX_FRAMES,
    ) -> None:
        self._page = page_size
        self._kb_per_page = page_size // 1024
        self._read_maps = read_maps
        self._unwinder = unwinder
        self._max_frames = max_frames
        self.spaces = AddressSpaces(page_size)

    def attach(self, pid: int, mappings: list[Mapping]) -> None:
        self.spaces.seed(pid, mappings)

    def forget(self, pid: int) -> None:
        self.spaces.forget(pid)

    def shadow(self, pid: int) -> ShadowMap:
        return self.spaces.of(pid).shadow

    def enrich(self, ev: KernelEvent) -> Change:
        kp = self._kb_per_page
        kind = _KINDS[ev.kind]
        delta_bytes = (ev.total_vm_after_pages - ev.total_vm_before_pages) * self._page
        stack_grew = ev.stack_vm_after_pages > ev.stack_vm_before_pages
        name = syscall_name(ev.syscall_nr)
        ret = decode_ret(name, ev.ret_raw) if ev.has_ret else None
        args = decode_args(name, ev.args_raw) if name in TRACED.values() else None
        mapping: Mapping | None = None
        shadow = self.shadow(ev.pid)

        if ev.kind is EventKind.BASELINE:
            cause = "baseline"
        elif ev.kind is EventKind.FORK:
            cause = "fork"  # the child's space: a copy of its parent's (applied below)
        elif ev.kind is EventKind.HWM:
            member = _RSS_MEMBERS.get(ev.rss_member, "rss")
            cause = f"{member}-pages" if name is None else f"{member}-pages:{name}"
        elif ev.kind is EventKind.EXIT:
            cause = "exit"
        elif ev.kind is EventKind.OOM:
            cause = "oom-kill"
        elif ev.kind is EventKind.EXEC:
            cause = name if name in ("execve", "execveat") else "execve"
        elif ev.kind is EventKind.OTHER and stack_grew and delta_bytes > 0:
            cause = "stack-growth"
            mapping = self._stack_growth(shadow, ev, delta_bytes)
        elif ev.kind is EventKind.OTHER and ev.flags & FLAG_NO_REGS:
            cause = "unknown"  # the task's user registers could not be read
        elif ev.kind is EventKind.OTHER:
            cause = "fault" if name is None else f"syscall:{name}"
        else:
            cause = name or "unknown"
            if ret is None or ret >= 0:
                mapping = self._mapping_of(shadow, ev, name, ret, delta_bytes)

        change = Change(
            kind=kind,
            ts_ns=ev.ts_ns,
            pid=ev.pid,
            tid=ev.tid,
            comm=ev.comm,
            cause=cause,
            syscall=name,
            args=args,
            ret=ret,
            total_vm_kb_before=ev.total_vm_before_pages * kp,
            total_vm_kb_after=ev.total_vm_after_pages * kp,
            hiwater_vm_kb_before=ev.hiwater_vm_before_pages * kp,
            hiwater_vm_kb_after=ev.hiwater_vm_after_pages * kp,
            stack_vm_kb_before=ev.stack_vm_before_pages * kp,
            stack_vm_kb_after=ev.stack_vm_after_pages * kp,
            kernel_peak_kb_before=ev.peak_before_pages * kp,
            mapping=mapping,
            # A stack runs in code its change neither maps nor unmaps; an exec's registers
            # are the new image's, so its stack waits for the new image's files (below).
            stack=None if ev.kind is EventKind.EXEC else self._stack(ev),
            rss_kb=ev.rss_after_pages * kp,
            hwm_kb=max(ev.rss_after_pages, ev.hiwater_rss_pages) * kp,
            hwm_kb_before=ev.hwm_before_pages * kp if ev.kind is EventKind.HWM else 0,
            rss_member=_RSS_MEMBERS.get(ev.rss_member) if ev.kind is EventKind.HWM else None,
            parent_pid=ev.aux if ev.kind is EventKind.FORK else None,
            exec_tid=ev.aux if ev.kind is EventKind.EXEC else None,
            rss_file_kb=ev.rss_file_pages * kp,
            rss_anon_kb=ev.rss_anon_pages * kp,
            rss_shmem_kb=ev.rss_shmem_pages * kp,
            exit_code=ev.aux if ev.kind is EventKind.EXIT else None,
            oom_trigger_pid=ev.aux if ev.kind is EventKind.OOM else None,
            host_pid=ev.aux if ev.kind is EventKind.BASELINE and ev.aux != ev.pid else None,
            mm_id=ev.mm_id,
            folded_rises=ev.folded_rises,
            lost=ev.lost,
            tally=Tally.of_pages(
                ev.tallied, ev.tallied_grown_pages, ev.tallied_shrunk_pages, kp
            ),
            stack_unread=ev.user_stack is not None and not ev.user_stack.data,
        )
        space = self.spaces.apply(change)
        if ev.kind is EventKind.EXEC or (ev.kind is EventKind.FORK and not space.known):
            # the new image's files (or a child whose parent's space is not known), as /proc
            # shows them now: what its stacks run in
            self.spaces.seed(ev.pid, self._read_maps(ev.pid))
        if ev.kind is EventKind.EXEC and ev.user_stack is not None:
            return dataclasses.replace(change, stack=self._stack(ev))
        return change

    def unwind(self, pid: int, stack: UserStack) -> list[Frame]:
        """The frames of `stack`, resolved against what `pid`'s shadow address space says was
        mapped (the files it names), so that they resolve after the process has exited."""
        if self._unwinder is None:
            return []
        return self._unwinder.unwind(stack, self.shadow(pid).find, self._max_frames)

    def _stack(self, ev: KernelEvent) -> tuple[Frame, ...] | None:
        if ev.user_stack is None or self._unwinder is None:
            return None
        return tuple(self.unwind(ev.pid, ev.user_stack))

    def _stack_growth(self, shadow: ShadowMap, ev: KernelEvent, delta: int) -> Mapping:
        """The pages the main stack grew by: below its lowest, or at the stack pointer."""
        stack = shadow.by_path("[stack]")
        if stack is None:
            sp = ev.user_stack.sp if ev.user_stack is not None else 0
            lo = sp & ~(self._page - 1)
            return Mapping(lo, lo + delta, "rw-p", "[stack]")
        return Mapping(stack.start - delta, stack.start, stack.perms, "[stack]")

    def _mapping_of(
        self, shadow: ShadowMap, ev: KernelEvent, name: str | None, ret: int | None, delta: int
    ) -> Mapping | None:
        """What a traced call mapped (or, for an unmap, what it removed), named from what
        the shadow says was there before it; the space applies it afterwards."""
        a = ev.args_raw
        page = self._page
        if name == "mmap" and ret is not None:
            prot, flags, fd = a[2], a[3], fd_of(a[4])
            end = ret + page_align(a[1], page)
            if flags & MAP_ANONYMOUS or fd < 0:
                path = "[anon]"
            else:
                path = ev.file.path if ev.file is not None else UNNAMED_FILE
            perms = prot_letters(prot) + ("s" if flags & MAP_SHARED else "p")
            return Mapping(ret, end, perms, path, a[5] if path != "[anon]" else 0)
        if name == "munmap":
            return self._removed(shadow, a[0], a[0] + page_align(a[1], page))
        if name == "brk" and ret is not None:
            # The return value is the new break: the truth, where the shadow's heap may
            # already be ahead (re-read from /proc after an exec, later than the exec).
            new_end = page_align(ret, page)
            old_end = new_end - delta
            heap = shadow.by_path("[heap]")
            perms = heap.perms if heap is not None else "rw-p"
            if delta >= 0:
                return Mapping(old_end, new_end, perms, "[heap]")
            return Mapping(new_end, old_end, perms, "[heap]")
        if name == "mremap" and ret is not None:
            old, old_len, new_len = a[0], page_align(a[1], page), page_align(a[2], page)
            path = shadow.name_of(old, old + max(old_len, page)) or "[anon]"
            first = shadow.find(old)
            perms = first.perms if first else "rw-p"
            offset = first.offset + old - first.start if first else 0
            return Mapping(ret, ret + new_len, perms, path, offset)
        if name == "shmat" and ret is not None and delta > 0:
            perms = "r--s" if a[2] & SHM_RDONLY else "rw-s"
            return Mapping(ret, ret + delta, perms, "[shm]")
        if name == "shmdt" and delta < 0:
            return self._removed(shadow, a[0], a[0] - delta)
        return None

    @staticmethod
    def _removed(shadow: ShadowMap, start: int, end: int) -> Mapping:
        pieces = shadow.overlapping(start, end)
        perms = pieces[0].perms if pieces else "----"
        return Mapping(start, end, perms, names_of(pieces) or "[unknown]")
