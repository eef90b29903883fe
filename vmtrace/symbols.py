"""User stack addresses → "func+0x12 [module]", from the ELF files the process mapped.

bcc's own symbolizer (BPF.sym, libbcc's ProcSyms) is not used: in libbcc 0.26 the helper
object it builds for the global /tmp/perf-PID.map (ProcSyms::ModulePath, made without
entering the target's mount namespace) leaves its fd member unset, and its destructor
closes that member when it is > 0. The member holds whatever the heap chunk held before:
typically the fd of an earlier module, long closed, whose number vmtrace has since reused
for stdout, the log or a perf event. It happens each time a symbol cache is made for a
process whose /proc/PID/root can no longer be read (one that is exiting), which is just
when vmtrace symbolizes a target's last records.

Here every file is opened, read and closed within one call (pyelftools parses it), so
nothing outlives a lookup and nothing closes a descriptor it did not open.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection, SymbolTableSection

from vmtrace.records import Mapping

DEBUG_DIR = "/usr/lib/debug"
_FUNC_TYPES = ("STT_FUNC", "STT_GNU_IFUNC", "STT_LOOS")  # pyelftools names IFUNC LOOS
# nested symbols (a local alias inside a larger function): how far back to look
_NESTED_LOOKBACK = 8

StackWalker = Callable[[int], list[int]]  # stack id -> addresses, innermost first
MappingFinder = Callable[[int, int], Mapping | None]  # (pid, address) -> its mapping


@dataclass(frozen=True, slots=True)
class ElfImage:
    """What symbolizing needs from one ELF file: its loadable segments and functions."""

    segments: tuple[tuple[int, int, int], ...]  # PT_LOAD (p_offset, p_filesz, p_vaddr)
    starts: tuple[int, ...]  # function start addresses, sorted
    functions: tuple[tuple[int, int, str], ...]  # (start, size, name), same order

    def vaddr_of(self, file_offset: int) -> int | None:
        for off, size, vaddr in self.segments:
            if off <= file_offset < off + size:
                return vaddr + file_offset - off
        return None

    def function_at(self, vaddr: int) -> tuple[str, int] | None:
        """(name, offset into it) of the function containing VADDR."""
        i = bisect.bisect_right(self.starts, vaddr) - 1
        for j in range(i, max(-1, i - _NESTED_LOOKBACK), -1):
            start, size, _ = self.functions[j]
            if start <= vaddr < start + max(size, 1):
                # the preferred alias is the first one at this address that contains VADDR
                for k in range(bisect.bisect_left(self.starts, start), j + 1):
                    _, alias_size, name = self.functions[k]
                    if vaddr < start + max(alias_size, 1):
                        return name, vaddr - start
        return None


def _functions(elf: ELFFile) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for section in elf.iter_sections():
        if isinstance(section, SymbolTableSection):
            if elf.elfclass == 64 and elf.little_endian:
                out += _functions_fast(section)
            else:
                out += _functions_generic(section)
    return out


_SYM64 = struct.Struct("<IBBHQQ")  # Elf64_Sym
_STT_FUNC, _STT_GNU_IFUNC = 2, 10


def _functions_fast(section: SymbolTableSection) -> list[tuple[int, int, str]]:
    """Elf64_Sym records unpacked in bulk: pyelftools' per-symbol objects take ~0.5 s for
    libc's tables, which would stall the first stack of every new library."""
    data = section.data()
    strtab = section.stringtable.data()
    out = []
    for name_off, info, _other, shndx, value, size in _SYM64.iter_unpack(
        data[: len(data) - len(data) % _SYM64.size]
    ):
        if info & 0xF not in (_STT_FUNC, _STT_GNU_IFUNC) or not value or not shndx:
            continue
        end = strtab.find(b"\0", name_off)
        name = strtab[name_off : end if end >= 0 else len(strtab)]
        if name:
            out.append((value, size, name.decode("utf-8", "replace")))
    return out


def _functions_generic(section: SymbolTableSection) -> list[tuple[int, int, str]]:
    return [
        (int(sym["st_value"]), int(sym["st_size"]), str(sym.name))
        for sym in section.iter_symbols()
        if sym["st_info"]["type"] in _FUNC_TYPES
        and sym["st_value"]
        and sym["st_shndx"] != "SHN_UNDEF"
        and sym.name
    ]


def _build_id(elf: ELFFile) -> str | None:
    for section in elf.iter_sections():
        if isinstance(section, NoteSection):
            for note in section.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID":
                    return str(note["n_desc"])
    return None


def load_image(path: str, debug_dir: str = DEBUG_DIR) -> ElfImage | None:
    """The segments and functions of the ELF file at PATH (and of its separate debug file,
    /usr/lib/debug/.build-id/xx/yyyy.debug, when installed); None if it is not ELF."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            segments = tuple(
                (int(s["p_offset"]), int(s["p_filesz"]), int(s["p_vaddr"]))
                for s in elf.iter_segments()
                if s["p_type"] == "PT_LOAD"
            )
            functions = _functions(elf)
            build_id = _build_id(elf)
    except (OSError, ELFError, ValueError):
        return None
    if build_id and len(build_id) > 2:
        debug = os.path.join(debug_dir, ".build-id", build_id[:2], f"{build_id[2:]}.debug")
        try:
            with open(debug, "rb") as f:
                functions += _functions(ELFFile(f))
        except (OSError, ELFError, ValueError):
            pass
    # Aliases (mmap and __mmap64 at one address): the public, shortest name wins.
    functions.sort(key=lambda f: (f[0], f[2].startswith("_"), len(f[2]), f[2]))
    return ElfImage(segments, tuple(s for s, _, _ in functions), tuple(functions))


def _containing(maps: list[Mapping], addr: int) -> Mapping | None:
    return next((m for m in maps if m.start <= addr < m.end and m.path.startswith("/")), None)


class StackSymbolizer:
    """(pid, stack id) → [(address, "func+0x12 [module]" or None)], innermost first.

    Addresses are placed with the mappings vmtrace keeps for each process (FIND_MAPPING,
    which knows the target's mappings even after it exited); an address outside every
    file mapping there is looked up in /proc/PID/maps (READ_MAPS), read again at most once
    per stack, and kept: the target may be gone by the time its last stacks are read."""

    def __init__(
        self,
        walk: StackWalker,
        find_mapping: MappingFinder,
        read_maps: Callable[[int], list[Mapping]],
        load: Callable[[str], ElfImage | None] = load_image,
    ) -> None:
        self._walk = walk
        self._find = find_mapping
        self._read_maps = read_maps
        self._load = load
        self._images: dict[tuple[int, int, int, int], ElfImage | None] = {}
        self._files: dict[tuple[int, str], tuple[int, int, int, int] | None] = {}
        self._procmaps: dict[int, list[Mapping]] = {}

    def __call__(self, pid: int, stack_id: int) -> list[tuple[int, str | None]]:
        reread = False
        frames: list[tuple[int, str | None]] = []
        for addr in self._walk(stack_id):
            m = self._find(pid, addr)
            if m is None or not m.path.startswith("/"):
                found = _containing(self._procmaps.get(pid, []), addr)
                if found is None and not reread:
                    reread = True
                    fresh = self._read_maps(pid)
                    if fresh:  # an exited process has none: keep what was read before
                        self._procmaps[pid] = fresh
                    found = _containing(fresh, addr)
                m = found or m
            frames.append((addr, self._name(pid, m, addr) if m is not None else None))
        return frames

    def forget(self, pid: int) -> None:
        """Drop what is kept for PID (its maps and files; parsed images are shared by inode
        and stay)."""
        self._procmaps.pop(pid, None)
        for key in [k for k in self._files if k[0] == pid]:
            del self._files[key]

    def _name(self, pid: int, m: Mapping, addr: int) -> str | None:
        if not m.path.startswith("/"):
            return None
        image = self._image(pid, m.path)
        if image is None:
            return None
        vaddr = image.vaddr_of(m.offset + addr - m.start)
        found = image.function_at(vaddr) if vaddr is not None else None
        if found is None:
            return None
        name, off = found
        return f"{name}+0x{off:x} [{os.path.basename(m.path)}]"

    def _image(self, pid: int, path: str) -> ElfImage | None:
        key = (pid, path)
        if key not in self._files:
            self._files[key] = None
            # The path as the process sees it (its mount namespace, its root) first.
            for candidate in (f"/proc/{pid}/root{path}", path):
                try:
                    st = os.stat(candidate)
                except OSError:
                    continue
                ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                if ident not in self._images:
                    self._images[ident] = self._load(candidate)
                self._files[key] = ident
                break
        known = self._files[key]
        return self._images.get(known) if known is not None else None
