"""Function symbols and source lines of one object, sorted for bisect.

Symbols come from .symtab, .dynsym and a separate debug file's .symtab, merged; PLT slots are
named `<symbol>@plt` from .rela.plt. A symbol only names the addresses it covers (its st_size;
a zero-sized one up to the next symbol within its section), so a static function that no table
lists stays unnamed instead of taking the name of the exported function before it.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from elftools.dwarf.aranges import ARanges
from elftools.dwarf.dwarfinfo import DWARFInfo
from elftools.dwarf.lineprogram import LineProgram
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from vmtrace.unwind.cfi import BAD_FILE

PLT_ENTRY = 16  # x86_64 .plt / .plt.sec slot size


@dataclass(frozen=True, slots=True)
class SymbolTable:
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    names: tuple[str, ...]

    def lookup(self, addr: int) -> tuple[str, int] | None:
        """(name, start) of the symbol whose range holds the ELF address addr."""
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and addr < self.ends[i]:
            return self.names[i], self.starts[i]
        return None

    def __len__(self) -> int:
        return len(self.starts)


# Elf64_Sym: st_name, st_info, st_other, st_shndx, st_value, st_size.
_SYM64 = struct.Struct("<IBBHQQ")
_STT_FUNC, _STT_GNU_IFUNC = 2, 10
_BINDS = {0: 2, 1: 0, 2: 1, 10: 1}  # STB_LOCAL, STB_GLOBAL, STB_WEAK, STB_GNU_UNIQUE -> rank
_SHN_LORESERVE = 0xFF00


def _functions(elf: ELFFile) -> Iterable[tuple[int, int, int, str, int]]:
    """(start, size, rank, name, section index) of each defined function symbol (x86_64 objects:
    ELF64, little-endian). The table is unpacked with struct: pyelftools parses each symbol
    through construct, about 60 us each, most of a second for libc's debug symbols alone."""
    if elf.elfclass != 64 or not elf.little_endian:
        return
    for secname in (".symtab", ".dynsym"):
        sec = elf.get_section_by_name(secname)
        if not isinstance(sec, SymbolTableSection) or sec["sh_type"] == "SHT_NOBITS":
            continue
        if sec["sh_entsize"] != _SYM64.size:
            continue
        strings: bytes = elf.get_section(sec["sh_link"]).data()
        for name_at, info, _other, shndx, value, size in _SYM64.iter_unpack(sec.data()):
            kind = info & 0xF
            if kind not in (_STT_FUNC, _STT_GNU_IFUNC) or shndx == 0 or shndx >= _SHN_LORESERVE:
                continue
            if value == 0 or name_at == 0:
                continue
            end = strings.find(b"\0", name_at)
            name = strings[name_at : end if end >= 0 else len(strings)].decode(errors="replace")
            if name:
                yield value, size, _BINDS.get(info >> 4, 3), name, shndx


def _plt_symbols(elf: ELFFile) -> list[tuple[int, int, str]]:
    """(start, end, "name@plt") for each PLT slot whose relocation names a symbol."""
    rela = elf.get_section_by_name(".rela.plt")
    if not isinstance(rela, RelocationSection):
        return []
    symtab = elf.get_section(rela["sh_link"])
    if not isinstance(symtab, SymbolTableSection):
        return []
    sec = elf.get_section_by_name(".plt.sec")
    first = 0
    if sec is None:
        sec = elf.get_section_by_name(".plt")
        first = 1  # .plt's slot 0 is the lazy-binding resolver stub
    if sec is None or sec["sh_entsize"] not in (0, PLT_ENTRY):
        return []
    out: list[tuple[int, int, str]] = []
    base: int = sec["sh_addr"]
    for i, rel in enumerate(rela.iter_relocations()):
        symbol_index = rel["r_info_sym"]
        if symbol_index == 0:
            continue
        name = symtab.get_symbol(symbol_index).name
        start = base + (first + i) * PLT_ENTRY
        if name and start + PLT_ENTRY <= base + sec["sh_size"]:
            out.append((start, start + PLT_ENTRY, f"{name}@plt"))
    return out


def build_symbols(elves: Iterable[ELFFile]) -> SymbolTable:
    """Merge the function symbols of an object and its debug file into one sorted table."""
    best: dict[int, tuple[int, int, str]] = {}  # start -> (rank, end, name)
    unsized: list[tuple[int, int, str, int]] = []  # (start, rank, name, section end)
    for elf in elves:
        try:
            sections = {i: (s["sh_addr"], s["sh_addr"] + s["sh_size"])
                        for i, s in enumerate(elf.iter_sections())}
            for start, size, rank, name, shndx in _functions(elf):
                if size > 0:
                    old = best.get(start)
                    if old is None or (rank, len(name)) < (old[0], len(old[2])):
                        best[start] = (rank, start + size, name)
                else:
                    sec_end = sections.get(shndx, (0, start))[1]
                    unsized.append((start, rank, name, sec_end))
            for start, end, name in _plt_symbols(elf):
                best.setdefault(start, (0, end, name))
        except BAD_FILE:
            continue  # a damaged debug file: the object's own symbols still count
    starts = sorted(best)
    for start, rank, name, sec_end in sorted(unsized):
        if start in best:
            continue
        # A zero-sized symbol (hand-written assembly) reaches to the next symbol in its section.
        i = bisect.bisect_right(starts, start)
        end = min(sec_end, starts[i]) if i < len(starts) else sec_end
        prev = i - 1
        if prev >= 0 and best[starts[prev]][1] > start:
            continue  # inside a sized symbol: that one names it
        if end > start:
            best[start] = (rank, end, name)
            starts.insert(i, start)
    return SymbolTable(
        starts=tuple(starts),
        ends=tuple(best[s][1] for s in starts),
        names=tuple(best[s][2] for s in starts),
    )


@dataclass(frozen=True, slots=True)
class LineTable:
    """Rows of one compilation unit's line program: address -> (file, line)."""

    addrs: tuple[int, ...]
    ends: tuple[int, ...]  # the end of each row's range (the next row or the sequence end)
    files: tuple[str, ...]
    lines: tuple[int, ...]

    def lookup(self, addr: int) -> tuple[str, int] | None:
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i >= 0 and addr < self.ends[i] and self.lines[i] > 0:
            return self.files[i], self.lines[i]
        return None


def _file_name(lineprog: LineProgram, index: int, version: int) -> str | None:
    entries = lineprog["file_entry"]
    dirs = lineprog["include_directory"]
    i = index if version >= 5 else index - 1
    if not 0 <= i < len(entries):
        return None
    entry = entries[i]
    name = str(entry.name.decode(errors="replace"))
    if name.startswith("/"):
        return name
    d = entry.dir_index if version >= 5 else entry.dir_index - 1
    if 0 <= d < len(dirs):
        return f"{dirs[d].decode(errors='replace')}/{name}"
    return name


def line_table_for(dwarf: DWARFInfo, addr: int, aranges: ARanges | None) -> LineTable | None:
    """The line rows of the compilation unit that holds addr (found through `aranges`, the
    file's parsed .debug_aranges, or by scanning the CUs' ranges when there is none)."""
    cu = None
    if aranges is not None:
        offset = aranges.cu_offset_at_addr(addr)
        if offset is not None:
            cu = dwarf.get_CU_at(offset)
    if cu is None:
        for candidate in dwarf.iter_CUs():
            top = candidate.get_top_DIE()
            low = top.attributes.get("DW_AT_low_pc")
            high = top.attributes.get("DW_AT_high_pc")
            if low is None or high is None:
                continue
            hi = high.value if high.form == "DW_FORM_addr" else low.value + high.value
            if low.value <= addr < hi:
                cu = candidate
                break
    if cu is None:
        return None
    lineprog = dwarf.line_program_for_CU(cu)
    if lineprog is None:
        return None
    version: int = lineprog["version"]
    rows: list[tuple[int, int, str, int]] = []
    prev: tuple[int, str, int] | None = None
    for entry in lineprog.get_entries():
        state = entry.state
        if state is None:
            continue
        if prev is not None and state.address > prev[0]:
            rows.append((prev[0], state.address, prev[1], prev[2]))
        if state.end_sequence:
            prev = None
            continue
        name = _file_name(lineprog, state.file, version) or "?"
        prev = (state.address, name, state.line)
    rows.sort()
    return LineTable(
        addrs=tuple(r[0] for r in rows),
        ends=tuple(r[1] for r in rows),
        files=tuple(r[2] for r in rows),
        lines=tuple(r[3] for r in rows),
    )
