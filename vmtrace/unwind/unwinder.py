"""Turning a captured user stack (registers + bytes from sp up) into a symbolised call chain.

Each step finds the CFI row for the frame's pc in the mapped file, computes the CFA and the
caller's registers from the rows, reading saved values only from the snapshot; an object
without CFI for that pc is stepped through its frame-pointer chain instead, every step checked.
The walk stops at the first frame it cannot prove: memory outside the snapshot, a pc outside an
executable file mapping, a stack pointer that does not move up, a "return address" that does
not follow a call instruction in its file, an undefined return address (the outermost frame).
A frame that is not proven is not returned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from vmtrace.records import Frame, Mapping, UserStack
from vmtrace.unwind.cfi import MASK64, NREGS, RBP, RIP, RSP, step
from vmtrace.unwind.elf import DEBUG_ROOT, LoadedObject, ObjectCache, default_cache_dir


class _Snapshot:
    def __init__(self, stack: UserStack) -> None:
        self.lo = stack.sp
        self.hi = stack.sp + len(stack.data)
        self.data = stack.data

    def read(self, addr: int) -> int | None:
        if self.lo <= addr and addr + 8 <= self.hi:
            i = addr - self.lo
            return int.from_bytes(self.data[i : i + 8], "little")
        return None


class Unwinder:
    """Unwinds and symbolises user stacks; keeps what it decodes per object across calls (and,
    through cache_dir, across runs)."""

    def __init__(
        self,
        cache_dir: Path | None = None,
        *,
        debug_roots: Sequence[Path] = (DEBUG_ROOT,),
        use_disk_cache: bool = True,
        lines: bool = True,
    ) -> None:
        """cache_dir: where decoded objects persist (default: /var/cache/vmtrace/unwind for root,
        else $XDG_CACHE_HOME/vmtrace/unwind); debug_roots: where separate debug files live;
        lines: look up file:line in DWARF line info (the first lookup in an object with a big
        debug file loads its DWARF sections)."""
        directory = (cache_dir or default_cache_dir()) if use_disk_cache else None
        self.objects = ObjectCache(directory, debug_roots)
        self.lines = lines

    def _object(self, mapping: Mapping | None) -> LoadedObject | None:
        if mapping is None or len(mapping.perms) < 3 or mapping.perms[2] != "x":
            return None
        if not mapping.path.startswith("/"):
            return None  # [vdso], anonymous JIT code: no file to read CFI or symbols from
        return self.objects.get(mapping.path)

    def _frame(
        self, address: int, lookup: int, mapping: Mapping, obj: LoadedObject, bias: int
    ) -> Frame:
        elf_lookup = lookup - bias
        found = obj.info.symbols.lookup(elf_lookup)
        where = obj.line_at(elf_lookup) if self.lines else None
        return Frame(
            address=address,
            function=None if found is None else found[0],
            offset=None if found is None else address - bias - found[1],
            module=mapping.path,
            module_offset=address - bias,
            file=None if where is None else where[0],
            line=None if where is None else where[1],
        )

    def unwind(
        self,
        stack: UserStack,
        find_mapping: Callable[[int], Mapping | None],
        max_frames: int = 64,
    ) -> list[Frame]:
        snap = _Snapshot(stack)
        regs: list[int | None] = [None] * NREGS
        regs[RIP], regs[RSP], regs[RBP] = stack.ip, stack.sp, stack.bp
        frames: list[Frame] = []
        # Frame 0's ip, and the pc a signal interrupted, are exact; other pcs are return addresses.
        exact = True
        while len(frames) < max_frames:
            pc = regs[RIP]
            sp = regs[RSP]
            if pc is None or sp is None or pc == 0:
                break
            mapping = find_mapping(pc)
            obj = self._object(mapping)
            if obj is None or mapping is None:
                break
            bias = obj.info.bias(mapping)
            if bias is None:
                break
            # A return address points after the call; the call itself (and the CFI row and
            # symbol that describe it) is one byte earlier, which matters for noreturn calls.
            lookup = pc if exact else pc - 1
            rules = obj.rules_at((lookup - bias) & MASK64)
            # A signal trampoline's FDE starts one byte early for the pc - 1 lookup; its symbol
            # starts at the return address itself.
            trampoline = rules is not None and rules.signal_frame and not exact
            symbol_at = pc if trampoline else lookup
            if not exact and not trampoline and not obj.follows_call((pc - bias) & MASK64):
                break  # not a return address: whatever led here was not a real frame
            frames.append(self._frame(pc, symbol_at, mapping, obj, bias))
            if rules is not None:
                row = rules.row_at((lookup - bias) & MASK64)
                caller = None if row is None else step(rules, row, regs, snap.read)
                exact = rules.signal_frame
            else:
                caller = _frame_pointer_step(regs, snap)
                exact = False
            if caller is None:
                break
            new_sp = caller[RSP]
            if new_sp is None or new_sp <= sp or not snap.lo <= new_sp <= snap.hi:
                break
            regs = caller
        self.objects.save()
        return frames


def _frame_pointer_step(regs: Sequence[int | None], snap: _Snapshot) -> list[int | None] | None:
    """Caller registers through the rbp chain: [rbp] is the saved rbp, [rbp+8] the return
    address, the caller's rsp is rbp+16. Only for code with no CFI, and only as far as the
    chain stays inside the snapshot and above the current sp."""
    bp, sp = regs[RBP], regs[RSP]
    if bp is None or sp is None or bp < sp or bp % 8:
        return None
    saved_bp = snap.read(bp)
    ra = snap.read(bp + 8)
    if saved_bp is None or ra is None:
        return None
    out: list[int | None] = [None] * NREGS
    out[RBP], out[RIP], out[RSP] = saved_bp, ra, bp + 16
    return out

