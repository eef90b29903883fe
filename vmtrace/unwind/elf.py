"""Loading the objects a stack runs through, once each: what is decoded, how it is cached.

What an unwind needs from an ELF file is decoded once into an ObjectInfo: its PT_LOAD segments
(for the load bias), an index of its FDEs by pc (from .eh_frame_hdr's sorted table when there is
one, else from a full pyelftools parse of .eh_frame / .debug_frame, including a separate debug
file's), its function symbols, and where its DWARF line info lives. Single FDEs are parsed and
run into rows only when a pc needs them (an unwind touches a few dozen FDEs out of tens of
thousands), source lines looked up only for the frames shown.

Everything is cached in memory and in the cache directory, one set of pickles per object keyed
by build-id (else path + size + mtime), each written atomically:
  KEY.object.vN.pickle   the ObjectInfo
  KEY.seen.vN.pickle     the FDE rows and source lines looked up so far
  s-HASH.alias.vN.pickle the KEY of the file with that path, inode, size and mtime, so that a
                         later run finds the cache without parsing the ELF headers
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import io
import os
import pickle
import struct
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.dwarf.aranges import ARanges
from elftools.dwarf.callframe import FDE, CallFrameInfo
from elftools.dwarf.dwarfinfo import DWARFInfo
from elftools.dwarf.structs import DWARFStructs
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection

from vmtrace.records import Mapping
from vmtrace.unwind.cfi import BAD_FILE, FdeRules, decode_fde
from vmtrace.unwind.symbols import LineTable, SymbolTable, build_symbols, line_table_for

# Bump when ObjectInfo or anything it holds changes shape or meaning: older pickles are ignored.
CACHE_VERSION = 1
DEBUG_ROOT = Path("/usr/lib/debug")
PAGE = 4096

# .eh_frame_hdr's encodings as GNU ld and lld write them: pcrel|sdata4 for the .eh_frame
# pointer, udata4 for the count, datarel|sdata4 for the table. Others use the full parse.
_HDR_ENCODINGS = (0x1B, 0x03, 0x3B)


@dataclass(frozen=True, slots=True)
class Segment:
    vaddr: int
    offset: int
    filesz: int
    executable: bool


@dataclass(frozen=True, slots=True)
class CfiIndex:
    """The FDEs of one CFI section, by initial location."""

    path: str  # the file holding the section (the object or its debug file)
    section: str  # ".eh_frame" or ".debug_frame"
    starts: tuple[int, ...]
    ends: tuple[int, ...] | None  # None: from .eh_frame_hdr, the FDE itself gives its end
    offsets: tuple[int, ...]  # each FDE's offset in the section

    def candidate(self, pc: int) -> int | None:
        i = bisect.bisect_right(self.starts, pc) - 1
        if i < 0 or (self.ends is not None and pc >= self.ends[i]):
            return None
        return self.offsets[i]


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    path: str
    key: str
    build_id: str | None
    segments: tuple[Segment, ...]
    cfi: tuple[CfiIndex, ...]
    symbols: SymbolTable
    line_path: str | None  # the file with .debug_line for this object, if any
    debug_path: str | None

    def bias(self, mapping: Mapping) -> int | None:
        """Load bias of mapping's file: runtime address - ELF address (0 for non-PIE code)."""
        code = len(mapping.perms) > 2 and mapping.perms[2] == "x"
        # Without -z separate-code, segments can share a page: an executable mapping's offset
        # belongs to the executable segment.
        for seg in sorted(self.segments, key=lambda s: s.executable != code):
            lo = seg.offset - seg.offset % PAGE
            if lo <= mapping.offset < seg.offset + seg.filesz:
                return mapping.start - mapping.offset - (seg.vaddr - seg.offset)
        return None


# ---------------------------------------------------------------------------- decoding


def read_build_id(elf: ELFFile) -> str | None:
    for sec in elf.iter_sections():
        if not isinstance(sec, NoteSection):
            continue
        for note in sec.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                desc = note["n_desc"]
                return desc if isinstance(desc, str) else bytes(desc).hex()
    return None


def _debuglink(elf: ELFFile) -> tuple[str, int] | None:
    sec = elf.get_section_by_name(".gnu_debuglink")
    if sec is None:
        return None
    data: bytes = sec.data()
    name = data.partition(b"\0")[0]
    crc_at = (len(name) + 4) & ~3
    if not name or len(data) < crc_at + 4:
        return None
    return name.decode(errors="replace"), struct.unpack_from("<I", data, crc_at)[0]


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def find_debug_file(
    path: Path, elf: ELFFile, build_id: str | None, roots: Sequence[Path]
) -> Path | None:
    """The separate debug file: by build-id under each root's .build-id/, else through
    .gnu_debuglink next to the file, in its .debug/ directory, or under each root."""
    if build_id and len(build_id) > 2:
        for root in roots:
            candidate = root / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
            if candidate.is_file():
                return candidate
    link = _debuglink(elf)
    if link is None:
        return None
    name, crc = link
    real = path.resolve()
    candidates = [real.parent / name, real.parent / ".debug" / name]
    candidates += [root / str(real.parent).lstrip("/") / name for root in roots]
    for candidate in candidates:
        try:
            if not candidate.is_file() or candidate.samefile(real):
                continue
            with candidate.open("rb") as f:
                debug_id = read_build_id(ELFFile(f))
            if build_id is not None and debug_id is not None:
                if debug_id == build_id:
                    return candidate
            elif _crc32(candidate) == crc:
                return candidate
        except BAD_FILE:
            continue
    return None


def _structs(elf: ELFFile) -> DWARFStructs:
    return DWARFStructs(
        little_endian=elf.little_endian, dwarf_format=32, address_size=elf.elfclass // 8
    )


def _hdr_index(elf: ELFFile, path: str) -> CfiIndex | None:
    """The FDE index from .eh_frame_hdr's binary-search table (sorted by initial location)."""
    hdr = elf.get_section_by_name(".eh_frame_hdr")
    eh = elf.get_section_by_name(".eh_frame")
    if hdr is None or eh is None or eh["sh_type"] == "SHT_NOBITS":
        return None
    data: bytes = hdr.data()
    if len(data) < 12 or data[0] != 1 or tuple(data[1:4]) != _HDR_ENCODINGS:
        return None
    base: int = hdr["sh_addr"]
    eh_ptr = base + 4 + struct.unpack_from("<i", data, 4)[0]
    count = struct.unpack_from("<I", data, 8)[0]
    if eh_ptr != eh["sh_addr"] or len(data) < 12 + 8 * count:
        return None
    pairs = struct.unpack_from(f"<{2 * count}i", data, 12)
    eh_addr: int = eh["sh_addr"]
    return CfiIndex(
        path=path,
        section=".eh_frame",
        starts=tuple(base + pairs[i] for i in range(0, 2 * count, 2)),
        ends=None,
        offsets=tuple(base + pairs[i] - eh_addr for i in range(1, 2 * count, 2)),
    )


def _full_index(elf: ELFFile, path: str, section: str) -> CfiIndex | None:
    sec = elf.get_section_by_name(section)
    if sec is None or sec["sh_type"] == "SHT_NOBITS" or sec["sh_size"] == 0:
        return None
    cfi = CallFrameInfo(io.BytesIO(sec.data()), sec["sh_size"], sec["sh_addr"], _structs(elf),
                        for_eh_frame=section == ".eh_frame")
    try:
        entries = cfi.get_entries()
    except BAD_FILE:
        return None
    rows = sorted(
        (e["initial_location"], e["initial_location"] + e["address_range"], e.offset)
        for e in entries
        if isinstance(e, FDE) and e["address_range"] > 0
    )
    if not rows:
        return None
    return CfiIndex(
        path=path,
        section=section,
        starts=tuple(r[0] for r in rows),
        ends=tuple(r[1] for r in rows),
        offsets=tuple(r[2] for r in rows),
    )


def decode_object(path: Path, key: str, roots: Sequence[Path]) -> ObjectInfo:
    with path.open("rb") as f:
        elf = ELFFile(f)
        build_id = read_build_id(elf)
        segments = tuple(
            Segment(s["p_vaddr"], s["p_offset"], s["p_filesz"], bool(s["p_flags"] & 1))
            for s in elf.iter_segments()
            if s["p_type"] == "PT_LOAD"
        )
        debug = find_debug_file(path, elf, build_id, roots)
        cfi: list[CfiIndex] = []
        eh = _hdr_index(elf, str(path)) or _full_index(elf, str(path), ".eh_frame")
        if eh is not None:
            cfi.append(eh)
        own = _full_index(elf, str(path), ".debug_frame")
        if own is not None:
            cfi.append(own)
        line_path = str(path) if elf.get_section_by_name(".debug_line") is not None else None
        if debug is None:
            symbols = build_symbols([elf])
        else:
            with debug.open("rb") as g:
                delf = ELFFile(g)
                symbols = build_symbols([elf, delf])
                theirs = _full_index(delf, str(debug), ".debug_frame")
                if theirs is not None:
                    cfi.append(theirs)
                if line_path is None and delf.get_section_by_name(".debug_line") is not None:
                    line_path = str(debug)
    return ObjectInfo(
        path=str(path),
        key=key,
        build_id=build_id,
        segments=segments,
        cfi=tuple(cfi),
        symbols=symbols,
        line_path=line_path,
        debug_path=None if debug is None else str(debug),
    )


# ---------------------------------------------------------------------------- runtime object


@dataclass(slots=True)
class _Section:
    cfi: CallFrameInfo
    structs: DWARFStructs


@dataclass(slots=True)
class _Seen:
    fdes: dict[tuple[int, int], FdeRules | None] = field(default_factory=dict)
    lines: dict[int, tuple[str, int] | None] = field(default_factory=dict)


@dataclass(slots=True)
class LoadedObject:
    """An ObjectInfo plus what this process has parsed from the file on demand."""

    info: ObjectInfo
    path: str  # where the object is now (the cache may have been filled from another path)
    _sections: dict[int, _Section | None] = field(default_factory=dict)
    _dwarf: DWARFInfo | None = None
    _aranges: ARanges | None = None  # get_aranges() parses the section anew at each call
    _dwarf_tried: bool = False
    _lines: list[LineTable] = field(default_factory=list)
    # What earlier lookups found, kept on disk too (seen_store) so that the next run starts
    # with it: FDE rows by (CFI section, FDE offset), and source lines by ELF address (finding
    # one loads the object's DWARF, about half a second for libc's debug file).
    seen_store: Path | None = None
    _seen: _Seen | None = None
    dirty: bool = False
    _after_call: dict[int, bool] = field(default_factory=dict)

    def follows_call(self, addr: int) -> bool:
        """Whether the code before ELF address addr ends with a call instruction, as the code
        before a return address does: e8 rel32, or ff /2 (call through a register or memory)
        in its 2-7 byte forms, whatever prefixes come first."""
        if addr not in self._after_call:
            code = self._code(addr - 8, 8)
            self._after_call[addr] = code is not None and (
                code[3] == 0xE8
                or any(code[8 - n] == 0xFF and (code[9 - n] >> 3) & 7 == 2 for n in range(2, 8))
            )
        return self._after_call[addr]

    def _code(self, addr: int, size: int) -> bytes | None:
        for seg in self.info.segments:
            if seg.executable and seg.vaddr <= addr and addr + size <= seg.vaddr + seg.filesz:
                try:
                    with open(self.path, "rb") as f:
                        f.seek(seg.offset + addr - seg.vaddr)
                        data = f.read(size)
                except OSError:
                    return None
                return data if len(data) == size else None
        return None

    def _section(self, i: int) -> _Section | None:
        if i not in self._sections:
            index = self.info.cfi[i]
            source = self.path if index.path == self.info.path else index.path
            try:
                with open(source, "rb") as f:
                    elf = ELFFile(f)
                    sec = elf.get_section_by_name(index.section)
                    if sec is None:
                        raise ELFError(f"no {index.section}")
                    structs = _structs(elf)
                    cfi = CallFrameInfo(io.BytesIO(sec.data()), sec["sh_size"], sec["sh_addr"],
                                        structs, for_eh_frame=index.section == ".eh_frame")
                self._sections[i] = _Section(cfi, structs)
            except BAD_FILE:
                self._sections[i] = None
        return self._sections[i]

    def rules_at(self, pc: int) -> FdeRules | None:
        """The FDE rows covering ELF address pc, from the first CFI section that has them."""
        for i, index in enumerate(self.info.cfi):
            offset = index.candidate(pc)
            if offset is None:
                continue
            key = (i, offset)
            fdes = self.seen().fdes
            if key not in fdes:
                fdes[key] = self._decode(i, offset)
                self.dirty = True
            rules = fdes[key]
            if rules is not None and rules.start <= pc < rules.end:
                return rules
        return None

    def _decode(self, i: int, offset: int) -> FdeRules | None:
        sec = self._section(i)
        if sec is None:
            return None
        try:
            entry = sec.cfi._parse_entry_at(offset)  # one FDE: pyelftools has no public call
            if not isinstance(entry, FDE):
                return None
            return decode_fde(entry, sec.structs)
        except BAD_FILE:
            return None

    def line_at(self, pc: int) -> tuple[str, int] | None:
        """Source file and line of ELF address pc, where DWARF line info exists."""
        if self.info.line_path is None:
            return None
        lines = self.seen().lines
        if pc not in lines:
            lines[pc] = self._find_line(pc)
            self.dirty = True
        return lines[pc]

    def seen(self) -> _Seen:
        if self._seen is None:
            self._seen = _read_seen(self.seen_store)
        return self._seen

    def save(self) -> None:
        if self.dirty and self.seen_store is not None and self._seen is not None:
            _write_atomically(self.seen_store, (CACHE_VERSION, self._seen))
        self.dirty = False

    def _find_line(self, pc: int) -> tuple[str, int] | None:
        for known in self._lines:
            found = known.lookup(pc)
            if found is not None:
                return found
        if not self._dwarf_tried and self.info.line_path is not None:
            self._dwarf_tried = True
            try:
                # get_dwarf_info() copies the debug sections into memory: the file can close.
                with open(self.info.line_path, "rb") as f:
                    elf = ELFFile(f)
                    self._dwarf = elf.get_dwarf_info() if elf.has_dwarf_info() else None
                    if self._dwarf is not None:
                        self._aranges = self._dwarf.get_aranges()
            except BAD_FILE:
                self._dwarf = None
        if self._dwarf is None:
            return None
        try:
            table = line_table_for(self._dwarf, pc, self._aranges)
        except BAD_FILE:
            return None
        if table is None:
            return None
        self._lines.append(table)
        return table.lookup(pc)


# ---------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/cache/vmtrace/unwind")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmtrace" / "unwind"


class ObjectCache:
    """ObjectInfo per file, in memory and in cache_dir (None: memory only)."""

    def __init__(self, cache_dir: Path | None, debug_roots: Sequence[Path]) -> None:
        self.cache_dir = cache_dir
        self.debug_roots = tuple(debug_roots)
        self._by_stat: dict[tuple[str, int, int, int, int], LoadedObject | None] = {}
        self._by_key: dict[str, LoadedObject] = {}

    def get(self, path: str) -> LoadedObject | None:
        """The object at path, or None when it is not there or not an ELF file."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        stat_key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if stat_key in self._by_stat:
            return self._by_stat[stat_key]
        obj = self._load(Path(path), st)
        self._by_stat[stat_key] = obj
        return obj

    def _load(self, path: Path, st: os.stat_result) -> LoadedObject | None:
        # The file's identity (path, inode, size, mtime) names its cache key without opening it
        # as ELF: pyelftools' ELFFile() alone costs a few ms per object.
        ident = f"{path}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}".encode()
        alias = self._file("s-" + hashlib.sha256(ident).hexdigest()[:32], "alias")
        obj = self._load_by_alias(path, alias)
        if obj is not None:
            return obj
        try:
            with path.open("rb") as f:
                elf = ELFFile(f)
                build_id = read_build_id(elf)
                debug = find_debug_file(path, elf, build_id, self.debug_roots)
        except BAD_FILE:
            return None
        if build_id:
            key = f"b-{build_id}"
        else:
            ident = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()
            key = "p-" + hashlib.sha256(ident).hexdigest()[:32]
        if key in self._by_key:
            return self._by_key[key]
        info = self._read_disk(key)
        if info is not None and info.debug_path is None and debug is not None:
            info = None  # a debug file was installed since: decode again to use it
        if info is None:
            try:
                info = decode_object(path, key, self.debug_roots)
            except BAD_FILE:
                return None
            self._write_disk(info)
        if alias is not None:
            _write_atomically(alias, (CACHE_VERSION, key))
        return self._loaded(info, path)

    def _load_by_alias(self, path: Path, alias: Path | None) -> LoadedObject | None:
        if alias is None:
            return None
        try:
            with alias.open("rb") as f:
                version, key = pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
                ImportError):
            return None
        if version != CACHE_VERSION or not isinstance(key, str):
            return None
        if key in self._by_key:
            return self._by_key[key]
        info = self._read_disk(key)
        if info is None:
            return None
        if info.debug_path is None and info.build_id and any(
            (root / ".build-id" / info.build_id[:2] / f"{info.build_id[2:]}.debug").is_file()
            for root in self.debug_roots
        ):
            return None  # a debug file was installed since: the slow path decodes again
        return self._loaded(info, path)

    def _loaded(self, info: ObjectInfo, path: Path) -> LoadedObject:
        obj = LoadedObject(info, str(path), seen_store=self._file(info.key, "seen"))
        self._by_key[info.key] = obj
        return obj

    def _file(self, key: str, kind: str = "object") -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{key}.{kind}.v{CACHE_VERSION}.pickle"

    def save(self) -> None:
        """Write what lookups found since the last save (each unwind calls this)."""
        for obj in self._by_key.values():
            if obj.dirty:
                obj.save()

    def _read_disk(self, key: str) -> ObjectInfo | None:
        target = self._file(key)
        if target is None:
            return None
        try:
            with target.open("rb") as f:
                version, info = pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
                ImportError):
            return None
        if version != CACHE_VERSION or not isinstance(info, ObjectInfo) or info.key != key:
            return None
        return info

    def _write_disk(self, info: ObjectInfo) -> None:
        target = self._file(info.key)
        if target is not None:
            _write_atomically(target, (CACHE_VERSION, info))


def _write_atomically(target: Path, value: object) -> None:
    """A temporary file renamed over the target: a reader never sees half a pickle. A cache
    that cannot be written only costs the next run a decode."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".pickle")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _read_seen(store: Path | None) -> _Seen:
    if store is not None:
        try:
            with store.open("rb") as f:
                version, seen = pickle.load(f)
            if version == CACHE_VERSION and isinstance(seen, _Seen):
                return seen
        except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
                ImportError):
            pass
    return _Seen()
