"""Call frame information: the rule rows of one FDE, and how to step one frame with them.

pyelftools parses the CIE/FDE headers, the CFA instructions and the DWARF expressions; this module
runs those instructions into rows (one per pc range: how to find the CFA and each saved register)
and evaluates a row against the registers an unwinder knows. pyelftools' own row decoder is not
used: it rejects DW_CFA_GNU_args_size (glibc's libc.so.6 has it) and scales DW_CFA_def_cfa_sf by
the wrong factor.

Registers are DWARF x86_64 numbers: 0 rax, 1 rdx, 2 rcx, 3 rbx, 4 rsi, 5 rdi, 6 rbp, 7 rsp,
8-15 r8-r15, 16 the return address (rip).
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from elftools.common.exceptions import DWARFError, ELFError
from elftools.construct.core import ConstructError
from elftools.dwarf.callframe import CIE, FDE, CallFrameInstruction
from elftools.dwarf.constants import DW_CFA
from elftools.dwarf.dwarf_expr import DWARFExprOp, DWARFExprParser
from elftools.dwarf.structs import DWARFStructs

RBP = 6
RSP = 7
RIP = 16
NREGS = 17
# The System V ABI's callee-saved registers keep their value across a call when the CFI says
# nothing about them; the others are unknown in the caller.
CALLEE_SAVED = frozenset({3, 6, 12, 13, 14, 15})
MASK64 = (1 << 64) - 1


class RuleKind(Enum):
    UNDEFINED = "undefined"
    SAME = "same"
    OFFSET = "offset"  # saved at CFA + value
    VAL_OFFSET = "val_offset"  # the value is CFA + value
    REGISTER = "register"  # the value is in register `value`
    EXPRESSION = "expression"  # saved at the address the expression computes (CFA pushed first)
    VAL_EXPRESSION = "val_expression"  # the value is what the expression computes


Expr = tuple[tuple[str, tuple[int, ...]], ...]  # (op name, int args) per DWARF operation


@dataclass(frozen=True, slots=True)
class RegRule:
    kind: RuleKind
    value: int = 0
    expr: Expr | None = None


@dataclass(frozen=True, slots=True)
class CfaRule:
    reg: int | None  # None with an expression
    offset: int = 0
    expr: Expr | None = None


@dataclass(frozen=True, slots=True)
class Row:
    pc: int  # first pc (ELF address) the row applies to
    cfa: CfaRule
    regs: tuple[tuple[int, RegRule], ...]


@dataclass(frozen=True, slots=True)
class FdeRules:
    """The rows of one FDE, sorted by pc, covering [start, end)."""

    start: int
    end: int
    return_register: int
    signal_frame: bool  # 'S' augmentation: the caller's pc is exact, not a return address
    rows: tuple[Row, ...]
    row_pcs: tuple[int, ...]

    def row_at(self, pc: int) -> Row | None:
        if not self.start <= pc < self.end or not self.rows:
            return None
        i = bisect.bisect_right(self.row_pcs, pc) - 1
        return self.rows[i] if i >= 0 else None


class CfiError(Exception):
    """CFI that this module cannot run (an unknown opcode or DWARF operation)."""


# What reading a damaged or unexpected file can raise, from pyelftools and its construct parser
# down to struct: such a file is treated as one without the information, never as a crash.
BAD_FILE: tuple[type[Exception], ...] = (
    OSError, ELFError, DWARFError, ConstructError, CfiError, struct.error, ValueError, KeyError,
    IndexError, AssertionError, TypeError, EOFError,
)


_ADVANCE = (DW_CFA.advance_loc, DW_CFA.advance_loc1, DW_CFA.advance_loc2, DW_CFA.advance_loc4)


def _expr(parser: DWARFExprParser, raw: Sequence[int]) -> Expr:
    ops: list[DWARFExprOp] = parser.parse_expr(bytes(raw))
    out: list[tuple[str, tuple[int, ...]]] = []
    for op in ops:
        if not all(isinstance(a, int) for a in op.args):
            raise CfiError(f"unsupported DWARF operation {op.op_name}")
        out.append((op.op_name, tuple(op.args)))
    return tuple(out)


def _run(
    instructions: list[CallFrameInstruction],
    cie: CIE,
    parser: DWARFExprParser,
    start_pc: int,
    initial: tuple[CfaRule, dict[int, RegRule]] | None,
    rows: list[Row],
) -> tuple[CfaRule, dict[int, RegRule], int]:
    caf: int = cie["code_alignment_factor"]
    daf: int = cie["data_alignment_factor"]
    cfa, regs = (initial[0], dict(initial[1])) if initial else (CfaRule(None), {})
    init_regs = dict(initial[1]) if initial else {}
    stack: list[tuple[CfaRule, dict[int, RegRule]]] = []
    pc = start_pc
    for ins in instructions:
        op = ins.opcode
        a: list[Any] = list(ins.args)
        if op in _ADVANCE:
            rows.append(Row(pc, cfa, tuple(sorted(regs.items()))))
            pc += a[0] * caf
        elif op == DW_CFA.set_loc:
            rows.append(Row(pc, cfa, tuple(sorted(regs.items()))))
            pc = a[0]
        elif op == DW_CFA.def_cfa:
            cfa = CfaRule(a[0], a[1])
        elif op == DW_CFA.def_cfa_sf:
            cfa = CfaRule(a[0], a[1] * daf)
        elif op == DW_CFA.def_cfa_register:
            cfa = CfaRule(a[0], cfa.offset)
        elif op == DW_CFA.def_cfa_offset:
            cfa = CfaRule(cfa.reg, a[0])
        elif op == DW_CFA.def_cfa_offset_sf:
            cfa = CfaRule(cfa.reg, a[0] * daf)
        elif op == DW_CFA.def_cfa_expression:
            cfa = CfaRule(None, 0, _expr(parser, a[0]))
        elif op in (DW_CFA.offset, DW_CFA.offset_extended, DW_CFA.offset_extended_sf):
            regs[a[0]] = RegRule(RuleKind.OFFSET, a[1] * daf)
        elif op in (DW_CFA.val_offset, DW_CFA.val_offset_sf):
            regs[a[0]] = RegRule(RuleKind.VAL_OFFSET, a[1] * daf)
        elif op == DW_CFA.undefined:
            regs[a[0]] = RegRule(RuleKind.UNDEFINED)
        elif op == DW_CFA.same_value:
            regs[a[0]] = RegRule(RuleKind.SAME)
        elif op == DW_CFA.register:
            regs[a[0]] = RegRule(RuleKind.REGISTER, a[1])
        elif op == DW_CFA.expression:
            regs[a[0]] = RegRule(RuleKind.EXPRESSION, 0, _expr(parser, a[1]))
        elif op == DW_CFA.val_expression:
            regs[a[0]] = RegRule(RuleKind.VAL_EXPRESSION, 0, _expr(parser, a[1]))
        elif op in (DW_CFA.restore, DW_CFA.restore_extended):
            if a[0] in init_regs:
                regs[a[0]] = init_regs[a[0]]
            else:
                regs.pop(a[0], None)
        elif op == DW_CFA.remember_state:
            stack.append((cfa, dict(regs)))
        elif op == DW_CFA.restore_state:
            if not stack:
                raise CfiError("DW_CFA_restore_state without a remembered state")
            cfa, regs = stack.pop()
        elif op in (DW_CFA.nop, DW_CFA.GNU_args_size):
            pass
        else:
            raise CfiError(f"unsupported CFA instruction {op!r}")
    return cfa, regs, pc


def decode_fde(fde: FDE, structs: DWARFStructs) -> FdeRules:
    """Run the CIE's initial instructions, then the FDE's, into rows."""
    cie = fde.cie
    if cie is None:
        raise CfiError("FDE without a CIE")
    parser = DWARFExprParser(structs)
    start: int = fde["initial_location"] & MASK64
    end = (start + fde["address_range"]) & MASK64
    scratch: list[Row] = []
    cie_cfa, cie_regs, _ = _run(cie.instructions, cie, parser, start, None, scratch)
    rows: list[Row] = []
    cfa, regs, pc = _run(fde.instructions, cie, parser, start, (cie_cfa, cie_regs), rows)
    rows.append(Row(pc, cfa, tuple(sorted(regs.items()))))
    # Rows that start at the same pc: the last one wins (advance_loc by 0 is legal).
    dedup: dict[int, Row] = {}
    for row in rows:
        dedup[row.pc] = row
    ordered = tuple(sorted(dedup.values(), key=lambda r: r.pc))
    raw_aug = cie.header.get("augmentation", b"")
    augmentation = raw_aug.decode("ascii", "replace") if isinstance(raw_aug, bytes) else raw_aug
    return_register: int = cie.header.get("return_address_register", RIP)
    return FdeRules(
        start=start,
        end=end,
        return_register=return_register,
        signal_frame="S" in augmentation,
        rows=ordered,
        row_pcs=tuple(r.pc for r in ordered),
    )


# ---------------------------------------------------------------------------- evaluation

ReadWord = Callable[[int], int | None]  # 8 bytes at an address, None outside the snapshot


def _signed(v: int) -> int:
    v &= MASK64
    return v - (1 << 64) if v >> 63 else v


_BINARY: dict[str, Callable[[int, int], int]] = {
    "DW_OP_plus": lambda a, b: a + b,
    "DW_OP_minus": lambda a, b: a - b,
    "DW_OP_mul": lambda a, b: a * b,
    "DW_OP_and": lambda a, b: a & b,
    "DW_OP_or": lambda a, b: a | b,
    "DW_OP_xor": lambda a, b: a ^ b,
    "DW_OP_shl": lambda a, b: a << b if b < 64 else 0,
    "DW_OP_shr": lambda a, b: a >> b,
    "DW_OP_shra": lambda a, b: _signed(a) >> b,
    "DW_OP_ge": lambda a, b: int(_signed(a) >= _signed(b)),
    "DW_OP_gt": lambda a, b: int(_signed(a) > _signed(b)),
    "DW_OP_le": lambda a, b: int(_signed(a) <= _signed(b)),
    "DW_OP_lt": lambda a, b: int(_signed(a) < _signed(b)),
    "DW_OP_eq": lambda a, b: int(a == b),
    "DW_OP_ne": lambda a, b: int(a != b),
}


def evaluate(
    expr: Expr, regs: Sequence[int | None], read: ReadWord, push: int | None = None
) -> int | None:
    """Run a DWARF expression; None when it needs a register or memory the snapshot lacks."""
    stack: list[int] = [] if push is None else [push]
    for name, args in expr:
        if name.startswith("DW_OP_lit"):
            stack.append(int(name[9:]))
        elif name.startswith("DW_OP_breg") and name != "DW_OP_bregx":
            reg = int(name[10:])
            value = regs[reg] if reg < len(regs) else None
            if value is None:
                return None
            stack.append((value + args[0]) & MASK64)
        elif name == "DW_OP_bregx":
            value = regs[args[0]] if args[0] < len(regs) else None
            if value is None:
                return None
            stack.append((value + args[1]) & MASK64)
        elif name.startswith("DW_OP_const"):
            stack.append(args[0] & MASK64)
        elif name in _BINARY:
            if len(stack) < 2:
                return None
            b, a = stack.pop(), stack.pop()
            stack.append(_BINARY[name](a, b) & MASK64)
        elif name == "DW_OP_plus_uconst":
            if not stack:
                return None
            stack.append((stack.pop() + args[0]) & MASK64)
        elif name == "DW_OP_deref":
            if not stack:
                return None
            word = read(stack.pop())
            if word is None:
                return None
            stack.append(word)
        elif name == "DW_OP_dup" and stack:
            stack.append(stack[-1])
        elif name == "DW_OP_drop" and stack:
            stack.pop()
        elif name == "DW_OP_swap" and len(stack) >= 2:
            stack[-1], stack[-2] = stack[-2], stack[-1]
        elif name == "DW_OP_over" and len(stack) >= 2:
            stack.append(stack[-2])
        elif name == "DW_OP_neg" and stack:
            stack.append(-stack.pop() & MASK64)
        elif name == "DW_OP_not" and stack:
            stack.append(~stack.pop() & MASK64)
        elif name == "DW_OP_nop":
            pass
        else:
            return None
    return stack[-1] if stack else None


def step(
    rules: FdeRules, row: Row, regs: Sequence[int | None], read: ReadWord
) -> list[int | None] | None:
    """The caller's registers, or None where the unwind ends: the return address is undefined
    (the outermost frame) or the row cannot be followed from this snapshot.

    The caller's rsp is the CFA, its rip the return address. A register the snapshot cannot
    provide becomes unknown, except rip and rbp, which the next frames need: not finding them
    ends the unwind.
    """
    if row.cfa.expr is not None:
        cfa = evaluate(row.cfa.expr, regs, read)
    elif row.cfa.reg is not None and row.cfa.reg < len(regs) and regs[row.cfa.reg] is not None:
        base = regs[row.cfa.reg]
        assert base is not None
        cfa = (base + row.cfa.offset) & MASK64
    else:
        cfa = None
    if cfa is None:
        return None
    out: list[int | None] = [regs[r] if r in CALLEE_SAVED else None for r in range(NREGS)]
    rules_by_reg = dict(row.regs)
    for reg, rule in rules_by_reg.items():
        if reg >= NREGS:
            continue
        value: int | None
        if rule.kind is RuleKind.UNDEFINED:
            value = None
        elif rule.kind is RuleKind.SAME:
            value = regs[reg]
        elif rule.kind is RuleKind.OFFSET:
            value = read((cfa + rule.value) & MASK64)
        elif rule.kind is RuleKind.VAL_OFFSET:
            value = (cfa + rule.value) & MASK64
        elif rule.kind is RuleKind.REGISTER:
            value = regs[rule.value] if rule.value < NREGS else None
        elif rule.kind is RuleKind.EXPRESSION:
            assert rule.expr is not None
            addr = evaluate(rule.expr, regs, read, push=cfa)
            value = None if addr is None else read(addr)
        else:
            assert rule.expr is not None
            value = evaluate(rule.expr, regs, read, push=cfa)
        if value is None and rule.kind is not RuleKind.UNDEFINED and reg in (RBP, RIP):
            return None  # needed further up, and not in the snapshot
        out[reg] = value
    ra_rule = rules_by_reg.get(rules.return_register)
    if ra_rule is None or ra_rule.kind is RuleKind.UNDEFINED:
        return None  # the outermost frame (_start, a thread's start), or no way to the caller
    out[RIP] = out[rules.return_register]
    if out[RIP] is None:
        return None
    if RSP not in rules_by_reg:
        out[RSP] = cfa
    return out
