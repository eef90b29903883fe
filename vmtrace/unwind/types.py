"""What an unwind starts from and what it produces."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UserStack:
    """What the kernel captured: the user registers an unwinder starts from, and the user
    stack from sp upwards (data[0] is the byte at address sp)."""

    ip: int
    sp: int
    bp: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Frame:
    address: int  # the return address (or ip for frame 0)
    function: str | None  # symbol name
    offset: int | None  # address - symbol start
    module: str | None  # path of the mapped file
    module_offset: int | None  # `address` in the ELF file's address space (addr2line -e MODULE)
    file: str | None = None  # source file and line, where DWARF line info exists
    line: int | None = None
