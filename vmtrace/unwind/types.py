"""What an unwinder is given (a user stack snapshot) and what it gives back (frames)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UserStack:
    """The registers and the stack bytes the kernel captured for one record."""

    ip: int
    sp: int
    bp: int
    data: bytes  # data[0] is the byte at sp


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of a user call chain, innermost first in a stack."""

    address: int
    function: str | None
    offset: int | None  # from the start of `function`
    module: str | None  # the mapped file's path
    module_offset: int | None  # `address` in the ELF file's address space (addr2line -e)
    file: str | None = None
    line: int | None = None
