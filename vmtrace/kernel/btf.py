"""A small reader of the kernel's BTF (BPF Type Format), enough to find struct layouts.

Written from the format description in the kernel's Documentation/bpf/btf.rst. vmtrace reads
kernel structs at raw offsets from BPF, because the only headers bcc can compile against may
belong to another kernel; BTF describes the running kernel exactly.
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass

from vmtrace.errors import EnvironmentProblem

DEFAULT_PATH = "/sys/kernel/btf/vmlinux"

_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")
_HEADER_BE = struct.Struct(">HBBIIIII")

KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

# Words (u32) that follow the 3-word common header: a fixed part, plus a part per vlen item.
# Every record is a whole number of words, which is what lets the type section be read as
# one array of u32 instead of being unpacked record by record.
_EXTRA_FIXED = {KIND_INT: 1, KIND_ARRAY: 3, KIND_VAR: 1, KIND_DECL_TAG: 1}
_EXTRA_PER_ITEM = {
    KIND_STRUCT: 3,
    KIND_UNION: 3,
    KIND_ENUM: 2,
    KIND_FUNC_PROTO: 2,
    KIND_DATASEC: 3,
    KIND_ENUM64: 3,
}
_KNOWN_KINDS = frozenset(range(KIND_INT, KIND_ENUM64 + 1))
_MODIFIERS = frozenset({KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG})
_COMPOSITES = (KIND_STRUCT, KIND_UNION)

# Garbage input may contain typedef cycles or a struct nesting itself anonymously;
# real kernels stay far below these bounds.
_MAX_MODIFIER_CHAIN = 64
_MAX_ANON_DEPTH = 32


@dataclass(frozen=True)
class _Found:
    bit_offset: int
    type_id: int


class Btf:
    """Struct layouts of one BTF blob (vmlinux or a synthetic one)."""

    def __init__(self, data: bytes, source: str = "<bytes>") -> None:
        self._source = source
        self._offsets_of: dict[str, frozenset[int]] = {}
        try:
            self._parse_header(bytes(data))
            self._index()
        except EnvironmentProblem:
            raise
        except (struct.error, ValueError, IndexError, OverflowError) as e:
            raise self._bad(f"malformed data ({e})") from e

    @classmethod
    def from_file(cls, path: str = DEFAULT_PATH) -> Btf:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            reason = e.strerror or str(e)
            hint = ""
            if path == DEFAULT_PATH and isinstance(e, FileNotFoundError):
                hint = " (this kernel was built without CONFIG_DEBUG_INFO_BTF; vmtrace needs it)"
            raise EnvironmentProblem(f"failed to read BTF from {path}: {reason}{hint}") from e
        return cls(data, source=path)

    # ----------------------------------------------------------------- public API

    def struct_size(self, name: str) -> int:
        """Size in bytes of struct (or union) `name`."""
        try:
            tid = self._composite_named(name)
        except _Missing as e:
            raise EnvironmentProblem(f"failed to find struct {name} in BTF: {e}") from None
        return self._types[self._start(tid) + 2]

    def member_offset(self, struct_name: str, member: str) -> int:
        """Offset in bytes of `member` (dotted for nested members) from the start of the struct.

        Members of anonymous struct/union members are found as if they were direct members,
        the way C lets one name them.
        """
        what = f"{struct_name}.{member}"
        try:
            tid = self._composite_named(struct_name)
            bits = 0
            parts = member.split(".")
            for i, part in enumerate(parts):
                if not part:
                    raise _Missing(f"empty member name in {member!r}")
                found = self._find_member(tid, part, part.encode() + b"\0", 0)
                if found is None:
                    raise _Missing(f"no member {part} in {self._describe(tid)}")
                bits += found.bit_offset
                if i + 1 < len(parts):
                    tid = self._strip_modifiers(found.type_id)
                    if self._kind(tid) not in _COMPOSITES:
                        raise _Missing(f"{'.'.join(parts[: i + 1])} is not a struct or union")
        except _Missing as e:
            raise EnvironmentProblem(f"failed to find {what} in BTF: {e}") from None
        if bits % 8:
            raise EnvironmentProblem(
                f"failed to find {what} in BTF: it is not byte-aligned (bit offset {bits})"
            )
        return bits // 8

    # ----------------------------------------------------------------- parsing

    def has_struct(self, name: str) -> bool:
        try:
            self._composite_named(name)
        except _Missing:
            return False
        return True

    def has_function(self, name: str) -> bool:
        """Whether BTF describes function `name` (what fentry/fexit programs attach to)."""
        return any(off in self._funcs for off in self._name_offsets(name))

    def function_arg_count(self, name: str) -> int | None:
        """How many arguments function `name` takes (its FUNC_PROTO's vlen); None if absent.
        BPF trampolines before 6.6 take at most 6 on x86_64."""
        for off in self._name_offsets(name):
            tid = self._funcs.get(off)
            if tid is None:
                continue
            proto = self._types[self._start(tid) + 2]  # a FUNC's `type` is its FUNC_PROTO
            if self._kind(proto) != KIND_FUNC_PROTO:
                return None
            return int(self._types[self._start(proto) + 1] & 0xFFFF)
        return None

    def tracepoint_arg_count(self, name: str) -> int | None:
        """How many arguments tracepoint `name` passes a raw tracepoint program (its
        `btf_trace_<name>` prototype, less the leading context pointer); None if absent.
        Raw programs read the arguments by position, and some tracepoints changed theirs."""
        for off in self._name_offsets(f"btf_trace_{name}"):
            tid = self._typedefs.get(off)
            if tid is None:
                continue
            try:
                ptr = self._types[self._start(tid) + 2]
                proto = self._types[self._start(ptr) + 2] if self._kind(ptr) == KIND_PTR else 0
                if not proto or self._kind(proto) != KIND_FUNC_PROTO:
                    return None
            except _Missing:
                return None
            return max(0, int(self._types[self._start(proto) + 1] & 0xFFFF) - 1)
        return None

    def _bad(self, reason: str) -> EnvironmentProblem:
        return EnvironmentProblem(f"failed to parse BTF from {self._source}: {reason}")

    def _parse_header(self, data: bytes) -> None:
        if len(data) < _HEADER.size:
            raise self._bad(f"truncated header ({len(data)} bytes)")
        if int.from_bytes(data[:2], "little") == _MAGIC:
            header, order = _HEADER, "little"
        elif int.from_bytes(data[:2], "big") == _MAGIC:
            header, order = _HEADER_BE, "big"
        else:
            raise self._bad("bad magic (not a BTF blob)")
        _, version, _, hdr_len, type_off, type_len, str_off, str_len = header.unpack_from(data)
        if version != 1:
            raise self._bad(f"unsupported BTF version {version}")
        if hdr_len < _HEADER.size or hdr_len > len(data):
            raise self._bad(f"bad header length {hdr_len}")
        body = len(data) - hdr_len
        if type_off + type_len > body or str_off + str_len > body:
            raise self._bad("truncated: sections extend past the end of the data")
        if type_len % 4 or type_off % 4:
            raise self._bad("misaligned type section")
        types = array("I")
        if types.itemsize != 4:  # pragma: no cover - every Linux ABI has a 4-byte unsigned int
            types = array("L")
        types.frombytes(data[hdr_len + type_off : hdr_len + type_off + type_len])
        if order != sys.byteorder:
            types.byteswap()
        strs = data[hdr_len + str_off : hdr_len + str_off + str_len]
        if str_len == 0 or strs[0] != 0 or strs[-1] != 0:
            raise self._bad("malformed string section")
        self._types = types
        self._strs = strs

    def _index(self) -> None:
        """One pass over every record: the start of each type id, and each struct/union by name.

        Only the info word of a record is decoded; the rest is skipped by size arithmetic.
        """
        words = self._types
        n = len(words)
        starts = array("l", [0])  # type id 0 is void and has no record
        by_name: dict[int, list[int]] = {}
        funcs: dict[int, int] = {}  # name offset -> type id of the FUNC
        typedefs: dict[int, int] = {}  # name offset -> type id of the TYPEDEF
        fixed = _EXTRA_FIXED
        per_item = _EXTRA_PER_ITEM
        known = _KNOWN_KINDS
        append = starts.append
        pos = 0
        tid = 0
        while pos < n:
            if pos + 3 > n:
                raise self._bad(f"truncated type record (type id {tid + 1})")
            info = words[pos + 1]
            kind = (info >> 24) & 0x1F
            tid += 1
            append(pos)
            if kind == 4 or kind == 5:  # STRUCT, UNION: the only records looked up by name
                name_off = words[pos]
                if name_off:
                    by_name.setdefault(name_off, []).append(tid)
                pos += 3 + 3 * (info & 0xFFFF)
            elif kind == KIND_FUNC:
                funcs.setdefault(words[pos], tid)
                pos += 3
            elif kind == KIND_TYPEDEF:
                typedefs.setdefault(words[pos], tid)
                pos += 3
            elif kind in known:
                pos += 3 + fixed.get(kind, 0) + per_item.get(kind, 0) * (info & 0xFFFF)
            else:
                raise self._bad(f"unknown type kind {kind} (type id {tid}); newer BTF than vmtrace")
        if pos != n:
            raise self._bad(f"truncated type record (type id {tid})")
        # Type id -> word index of its record, and struct/union ids by name offset.
        self._starts = starts
        self._by_name = by_name
        self._funcs = funcs
        self._typedefs = typedefs

    # ----------------------------------------------------------------- lookups

    def _start(self, tid: int) -> int:
        if not 0 < tid < len(self._starts):
            raise _Missing(f"reference to type id {tid}, which does not exist")
        return int(self._starts[tid])

    def _kind(self, tid: int) -> int:
        return (self._types[self._start(tid) + 1] >> 24) & 0x1F

    def _name_offsets(self, name: str) -> frozenset[int]:
        """Every offset in the string section where exactly `name` is stored (one scan of
        the section per name: the same struct is looked up for each of its members)."""
        known = self._offsets_of.get(name)
        if known is not None:
            return known
        needle = b"\0" + name.encode() + b"\0"
        found = []
        i = self._strs.find(needle)
        while i >= 0:
            found.append(i + 1)
            i = self._strs.find(needle, i + 1)
        self._offsets_of[name] = frozenset(found)
        return self._offsets_of[name]

    def _name_at(self, off: int) -> str:
        end = self._strs.find(b"\0", off)
        if off >= len(self._strs) or end < 0:
            return f"<bad name offset {off}>"
        return self._strs[off:end].decode(errors="replace")

    def _describe(self, tid: int) -> str:
        words = self._types
        start = self._start(tid)
        kind = "union" if self._kind(tid) == KIND_UNION else "struct"
        name_off = words[start]
        return f"{kind} {self._name_at(name_off)}" if name_off else f"anonymous {kind}"

    def _composite_named(self, name: str) -> int:
        ids = [tid for off in self._name_offsets(name) for tid in self._by_name.get(off, ())]
        if not ids:
            raise _Missing(f"no struct or union named {name}")
        words = self._types
        # Prefer a struct over a union of the same name, then the lowest id (the order
        # pahole emits; duplicates of one name are rare in vmlinux).
        ids.sort(key=lambda t: (self._kind(t) != KIND_STRUCT, t))
        complete = [t for t in ids if words[self._starts[t] + 2] > 0]
        return (complete or ids)[0]

    def _strip_modifiers(self, tid: int) -> int:
        words = self._types
        for _ in range(_MAX_MODIFIER_CHAIN):
            if tid == 0:
                return 0
            start = self._start(tid)
            if (words[start + 1] >> 24) & 0x1F not in _MODIFIERS:
                return tid
            tid = words[start + 2]
        raise _Missing("typedef/modifier chain too long (corrupt BTF?)")

    def _find_member(self, tid: int, name: str, needle: bytes, depth: int) -> _Found | None:
        """`needle`: the name and its terminating NUL. A member's name is compared where it
        is stored (a struct has tens of members; the string section holds megabytes)."""
        if depth > _MAX_ANON_DEPTH:
            raise _Missing("anonymous members nested too deeply (corrupt BTF?)")
        words = self._types
        start = self._start(tid)
        info = words[start + 1]
        vlen = info & 0xFFFF
        kind_flag = bool(info >> 31)
        if start + 3 + 3 * vlen > len(words):
            raise _Missing(f"type id {tid} extends past the type section")
        strs = self._strs
        anonymous: list[tuple[int, int]] = []
        for m in range(start + 3, start + 3 + 3 * vlen, 3):
            m_name, m_type, m_off = words[m], words[m + 1], words[m + 2]
            if kind_flag:
                bitfield_size, m_off = m_off >> 24, m_off & 0xFFFFFF
            else:
                bitfield_size = 0
            if m_name and strs.startswith(needle, m_name):
                if bitfield_size:
                    raise _Missing(
                        f"{name} is a {bitfield_size}-bit bitfield; vmtrace reads whole members"
                    )
                return _Found(m_off, m_type)
            if m_name == 0:
                anonymous.append((m_type, m_off))
        # Named members are matched first so that a direct member wins over a nested one.
        for m_type, m_off in anonymous:
            inner = self._strip_modifiers(m_type)
            if inner and self._kind(inner) in _COMPOSITES:
                found = self._find_member(inner, name, needle, depth + 1)
                if found is not None:
                    return _Found(m_off + found.bit_offset, found.type_id)
        return None


class _Missing(Exception):
    """A lookup failed; turned into EnvironmentProblem naming what was looked for."""
