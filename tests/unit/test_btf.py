"""The BTF reader against small blobs made by a tiny encoder written from the format spec."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from vmtrace.errors import EnvironmentProblem
from vmtrace.kernel.btf import Btf

INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST = range(1, 11)
FUNC_PROTO = 13

Member = tuple[str, int, int]  # name ("" for anonymous), type id, bit offset


class BtfBuilder:
    """Encodes types one by one; add_* return the new type id (ids start at 1)."""

    def __init__(self, big_endian: bool = False) -> None:
        self.order = ">" if big_endian else "<"
        self.strings = bytearray(b"\0")
        self.offsets: dict[str, int] = {"": 0}
        self.types = bytearray()
        self.count = 0

    def name(self, s: str) -> int:
        if s not in self.offsets:
            self.offsets[s] = len(self.strings)
            self.strings += s.encode() + b"\0"
        return self.offsets[s]

    def _words(self, *words: int) -> None:
        self.types += struct.pack(f"{self.order}{len(words)}I", *words)

    def _record(self, name: str, kind: int, vlen: int, size_or_type: int, kflag: bool) -> int:
        info = (kind << 24) | vlen | (1 << 31 if kflag else 0)
        self._words(self.name(name), info, size_or_type)
        self.count += 1
        return self.count

    def add_int(self, name: str, size: int) -> int:
        tid = self._record(name, INT, 0, size, False)
        self._words(size * 8)
        return tid

    def add_ref(self, kind: int, name: str, target: int) -> int:
        return self._record(name, kind, 0, target, False)

    def add_array(self, elem: int, index: int, n: int) -> int:
        tid = self._record("", ARRAY, 0, 0, False)
        self._words(elem, index, n)
        return tid

    def add_enum(self, name: str, values: dict[str, int]) -> int:
        tid = self._record(name, ENUM, len(values), 4, False)
        for k, v in values.items():
            self._words(self.name(k), v)
        return tid

    def add_func_proto(self, ret: int, params: list[int]) -> int:
        tid = self._record("", FUNC_PROTO, len(params), ret, False)
        for p in params:
            self._words(0, p)
        return tid

    def add_composite(
        self,
        kind: int,
        name: str,
        size: int,
        members: list[Member],
        bitfields: dict[str, int] | None = None,
    ) -> int:
        bitfields = bitfields or {}
        tid = self._record(name, kind, len(members), size, bool(bitfields))
        for m_name, m_type, bits in members:
            self._words(self.name(m_name), m_type, (bitfields.get(m_name, 0) << 24) | bits)
        return tid

    def blob(self) -> bytes:
        o = self.order
        header = struct.pack(
            f"{o}HBBIIIII",
            0xEB9F,
            1,
            0,
            24,
            0,
            len(self.types),
            len(self.types),
            len(self.strings),
        )
        return header + bytes(self.types) + bytes(self.strings)


def sample(big_endian: bool = False) -> bytes:
    """A layout shaped like 6.18's mm_struct: the counters inside an anonymous struct."""
    b = BtfBuilder(big_endian)
    ulong = b.add_int("long unsigned int", 8)
    u32 = b.add_int("unsigned int", 4)
    char = b.add_int("char", 1)
    b.add_enum("colour", {"RED": 0, "GREEN": 1})
    b.add_func_proto(u32, [ulong, ulong])
    name_arr = b.add_array(char, u32, 16)
    u64 = b.add_ref(TYPEDEF, "u64", ulong)
    const_u64 = b.add_ref(CONST, "", u64)
    pair = b.add_composite(STRUCT, "pair", 16, [("lo", u64, 0), ("hi", const_u64, 64)])
    pair_t = b.add_ref(TYPEDEF, "pair_t", pair)
    vol_pair = b.add_ref(VOLATILE, "", pair_t)
    counters = b.add_composite(
        STRUCT,
        "",
        24,
        [("hiwater_rss", ulong, 0), ("hiwater_vm", ulong, 64), ("total_vm", ulong, 128)],
    )
    either = b.add_composite(UNION, "", 8, [("as_long", ulong, 0), ("as_int", u32, 0)])
    inner = b.add_composite(
        STRUCT,
        "",
        64,
        [("count", u32, 0), ("", counters, 64), ("", either, 256), ("range", vol_pair, 320)],
    )
    mm = b.add_composite(STRUCT, "mm_struct", 96, [("", inner, 0), ("name", name_arr, 512)])
    b.add_ref(PTR, "", mm)
    b.add_composite(
        STRUCT,
        "flags",
        4,
        [("a", u32, 0), ("b", u32, 3), ("c", u32, 8)],
        bitfields={"a": 3, "b": 5},
    )
    b.add_composite(UNION, "value", 8, [("l", ulong, 0), ("i", u32, 0)])
    b.add_ref(FWD, "only_declared", 0)
    b.add_composite(STRUCT, "odd", 8, [("nibble", u32, 4)])
    return b.blob()


@pytest.fixture(scope="module")
def btf() -> Btf:
    return Btf(sample())


def test_struct_and_union_sizes(btf: Btf) -> None:
    assert btf.struct_size("mm_struct") == 96
    assert btf.struct_size("pair") == 16
    assert btf.struct_size("value") == 8


def test_direct_members(btf: Btf) -> None:
    assert btf.member_offset("mm_struct", "name") == 64
    assert btf.member_offset("pair", "hi") == 8
    assert btf.member_offset("value", "i") == 0


def test_members_of_anonymous_structs_and_unions_are_found(btf: Btf) -> None:
    assert btf.member_offset("mm_struct", "count") == 0
    assert btf.member_offset("mm_struct", "hiwater_rss") == 8
    assert btf.member_offset("mm_struct", "hiwater_vm") == 16
    assert btf.member_offset("mm_struct", "total_vm") == 24
    assert btf.member_offset("mm_struct", "as_int") == 32


def test_dotted_path_follows_typedef_const_volatile(btf: Btf) -> None:
    assert btf.member_offset("mm_struct", "range") == 40
    assert btf.member_offset("mm_struct", "range.hi") == 48


def test_big_endian_blob_reads_the_same() -> None:
    be = Btf(sample(big_endian=True))
    assert be.member_offset("mm_struct", "total_vm") == 24
    assert be.struct_size("mm_struct") == 96


@pytest.mark.parametrize(
    ("struct_name", "member", "needle"),
    [
        ("mm_struct", "no_such", "no member no_such in struct mm_struct"),
        ("no_such_struct", "x", "no struct or union named no_such_struct"),
        ("only_declared", "x", "no struct or union named only_declared"),
        ("mm_struct", "total_vm.x", "total_vm is not a struct or union"),
        ("mm_struct", "range.nope", "no member nope in struct pair"),
        ("flags", "b", "bitfield"),
        ("odd", "nibble", "not byte-aligned"),
        ("mm_struct", "range..hi", "empty member name"),
    ],
)
def test_lookup_errors_name_what_was_looked_for(
    btf: Btf, struct_name: str, member: str, needle: str
) -> None:
    with pytest.raises(EnvironmentProblem) as e:
        btf.member_offset(struct_name, member)
    assert str(e.value).startswith(f"failed to find {struct_name}.{member} in BTF: ")
    assert needle in str(e.value)


def test_non_bitfield_member_of_kind_flag_struct_is_fine(btf: Btf) -> None:
    assert btf.member_offset("flags", "c") == 1


def test_struct_size_of_unknown_name(btf: Btf) -> None:
    with pytest.raises(EnvironmentProblem, match="failed to find struct nope in BTF"):
        btf.struct_size("nope")


def test_every_truncation_is_an_environment_problem() -> None:
    blob = sample()
    for n in range(len(blob)):
        with pytest.raises(EnvironmentProblem, match="failed to parse BTF"):
            Btf(blob[:n])


def test_corrupted_bytes_never_escape_as_other_exceptions() -> None:
    blob = sample()
    for i in range(len(blob)):
        for value in (0x00, 0xFF, 0x7F):
            corrupt = blob[:i] + bytes([value]) + blob[i + 1 :]
            try:
                btf = Btf(corrupt)
                btf.member_offset("mm_struct", "range.hi")
                btf.struct_size("pair")
            except EnvironmentProblem:
                pass


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x9f\xeb",
        b"\0" * 64,
        b"garbage that is long enough to hold a header",
        struct.pack("<HBBIIIII", 0xEB9F, 2, 0, 24, 0, 0, 0, 1) + b"\0",  # version 2
        struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 400, 0, 1) + b"\0",  # past the end
        struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 6, 8, 1) + b"\0" * 9,  # misaligned
        struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 12, 12, 1)
        + struct.pack("<III", 0, 31 << 24, 0)
        + b"\0",  # unknown kind
        struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 12, 12, 1)
        + struct.pack("<III", 0, (STRUCT << 24) | 5, 8)
        + b"\0",  # members missing
        struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 0, 0, 2) + b"\0x",  # unterminated
    ],
)
def test_garbage_is_an_environment_problem(blob: bytes) -> None:
    with pytest.raises(EnvironmentProblem, match="failed to parse BTF from <bytes>"):
        Btf(blob)


def test_dangling_and_cyclic_references_are_environment_problems() -> None:
    b = BtfBuilder()
    loop = b.add_ref(TYPEDEF, "loop", 2)  # id 1 -> id 2
    b.add_ref(TYPEDEF, "loop2", loop)  # id 2 -> id 1
    b.add_composite(STRUCT, "s", 16, [("", loop, 0), ("x", 99, 64)])
    self_anon = b.count + 1
    b.add_composite(STRUCT, "", 8, [("", self_anon, 0)])
    b.add_composite(STRUCT, "t", 8, [("", self_anon, 0)])
    btf = Btf(b.blob())
    with pytest.raises(EnvironmentProblem, match=re.escape("failed to find s.y in BTF")):
        btf.member_offset("s", "y")
    with pytest.raises(EnvironmentProblem, match=re.escape("failed to find s.x.y in BTF")):
        btf.member_offset("s", "x.y")
    with pytest.raises(EnvironmentProblem, match=re.escape("failed to find t.y in BTF")):
        btf.member_offset("t", "y")


def test_from_file_errors(tmp_path: Path) -> None:
    missing = f"{tmp_path}/vmlinux"
    expected = re.escape(f"failed to read BTF from {missing}: No such")
    with pytest.raises(EnvironmentProblem, match=expected):
        Btf.from_file(missing)
    path = f"{tmp_path}/blob"
    with open(path, "wb") as f:
        f.write(sample())
    assert Btf.from_file(path).member_offset("mm_struct", "total_vm") == 24


@pytest.mark.parametrize("params", [2, 3])
def test_tracepoint_arguments_from_its_btf_trace_prototype(params: int) -> None:
    b = BtfBuilder()
    ptr = b.add_ref(PTR, "", 0)
    proto = b.add_func_proto(0, [ptr] * (params + 1))  # the context pointer comes first
    b.add_ref(TYPEDEF, "btf_trace_mmap_lock_released", b.add_ref(PTR, "", proto))
    btf = Btf(b.blob())
    assert btf.tracepoint_arg_count("mmap_lock_released") == params
    assert btf.tracepoint_arg_count("mmap_lock_acquire_returned") is None


def test_tracepoint_typedef_not_to_a_prototype_is_absent() -> None:
    b = BtfBuilder()
    b.add_ref(TYPEDEF, "btf_trace_x", b.add_int("int", 4))
    assert Btf(b.blob()).tracepoint_arg_count("x") is None
