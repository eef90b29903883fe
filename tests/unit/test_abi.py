"""abi.py against bpf/vmtrace_events.h itself: layout, enum values, flags, decoding.

The header is parsed with a small regex parser and laid out with C natural alignment
(every __uN/__sN aligned to its size, char arrays to 1, the struct to its largest member),
then compared field by field with ctypes' layout of abi.EventStruct.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmtrace import abi
from vmtrace.records import MappedFile
from vmtrace.unwind import UserStack

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "vmtrace_events.h"

_SCALARS = {
    "__u64": 8,
    "__s64": 8,
    "__u32": 4,
    "__s32": 4,
    "__u16": 2,
    "__s16": 2,
    "__u8": 1,
    "__s8": 1,
    "char": 1,
}


@dataclass(frozen=True)
class CField:
    name: str
    ctype: str
    elem_size: int
    count: int  # 1 for scalars

    @property
    def size(self) -> int:
        return self.elem_size * self.count

    @property
    def align(self) -> int:
        return self.elem_size


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def header_text() -> str:
    return _strip_comments(HEADER.read_text())


def defines(text: str) -> dict[str, str]:
    return dict(re.findall(r"^[ \t]*#define[ \t]+(\w+)[ \t]+(\S.*?)[ \t]*$", text, flags=re.M))


def _int_define(defs: dict[str, str], token: str) -> int:
    seen = 0
    while not re.fullmatch(r"\d+", token):
        token = defs[token]
        seen += 1
        assert seen < 10, f"define loop at {token}"
    return int(token)


def parse_struct(text: str, name: str) -> list[CField]:
    body = re.search(rf"struct\s+{name}\s*\{{(.*?)\}}\s*;", text, flags=re.S)
    assert body, f"struct {name} not found in {HEADER}"
    defs = defines(text)
    fields = []
    for decl in body.group(1).split(";"):
        decl = " ".join(decl.split())
        if not decl:
            continue
        mt = re.fullmatch(
            r"(__[us]\d+|char)\s+(\w+)\s*(?:\[\s*(\w+)\s*\])?\s*(?:\[\s*(\w+)\s*\])?", decl
        )
        assert mt, f"unparsed declaration in struct {name}: {decl!r}"
        ctype, fname, dim, dim2 = mt.groups()
        count = _int_define(defs, dim) if dim else 1
        count *= _int_define(defs, dim2) if dim2 else 1
        fields.append(CField(fname, ctype, _SCALARS[ctype], count))
    return fields


def c_layout(fields: list[CField]) -> tuple[dict[str, int], int]:
    off = 0
    offsets = {}
    for f in fields:
        off = (off + f.align - 1) // f.align * f.align
        offsets[f.name] = off
        off += f.size
    struct_align = max(f.align for f in fields)
    return offsets, (off + struct_align - 1) // struct_align * struct_align


def parse_enum(text: str, name: str) -> dict[str, int]:
    body = re.search(rf"enum\s+{name}\s*\{{(.*?)\}}\s*;", text, flags=re.S)
    assert body, f"enum {name} not found"
    out = {}
    nxt = 0
    for item in body.group(1).split(","):
        item = item.strip()
        if not item:
            continue
        k, _, v = item.partition("=")
        nxt = int(v.strip(), 0) if v.strip() else nxt
        out[k.strip()] = nxt
        nxt += 1
    return out


def parse_flags(text: str) -> dict[str, int]:
    return {
        name: 1 << int(shift)
        for name, shift in re.findall(
            r"#define\s+(VMT_FLAG_\w+)\s+\(\s*1u?\s*<<\s*(\d+)\s*\)", text
        )
    }


# -- the parser itself, on a made-up header (so that it can fail) --------------------------


def test_parser_on_a_padded_struct() -> None:
    text = _strip_comments(
        "#define N 3\n#define M N\n"
        "struct t {\n __u32 a; /* pad 4 */\n __u64 b;\n char c[M];\n __s32 d;\n __u8 e; };\n"
    )
    fields = parse_struct(text, "t")
    assert [(f.name, f.size) for f in fields] == [("a", 4), ("b", 8), ("c", 3), ("d", 4), ("e", 1)]
    offsets, size = c_layout(fields)
    assert offsets == {"a": 0, "b": 8, "c": 16, "d": 20, "e": 24}
    assert size == 32


# -- the real header ----------------------------------------------------------------------


def test_header_defines_match() -> None:
    defs = defines(header_text())
    assert int(defs["VMT_COMM_LEN"]) == abi.COMM_LEN
    assert int(defs["VMT_NARGS"]) == abi.NARGS
    assert int(defs["VMT_PATH_DEPTH"]) == abi.PATH_DEPTH
    assert int(defs["VMT_NAME_LEN"]) == abi.NAME_LEN
    assert int(defs["VMT_STACK_CHUNK"]) == abi.STACK_CHUNK


@pytest.mark.parametrize(
    ("c_name", "mirror"),
    [("vmt_event", abi.EventStruct), ("vmt_file", abi.FileStruct)],
)
def test_struct_layout_matches_ctypes_field_by_field(
    c_name: str, mirror: type[ctypes.Structure]
) -> None:
    fields = parse_struct(header_text(), c_name)
    offsets, size = c_layout(fields)
    ct_fields = mirror._fields_
    assert [f.name for f in fields] == [name for name, *_ in ct_fields]
    for f in fields:
        ct = getattr(mirror, f.name)
        assert (f.name, ct.offset, ct.size) == (f.name, offsets[f.name], f.size)
    assert ctypes.sizeof(mirror) == size


def test_user_stack_header_matches() -> None:
    """struct vmt_user_stack: the fixed part its mirror decodes, then data[] at its end."""
    fields = parse_struct(header_text(), "vmt_user_stack")
    offsets, _size = c_layout(fields)
    assert [f.name for f in fields] == [n for n, *_ in abi.StackHeaderStruct._fields_] + ["data"]
    for name, *_ in abi.StackHeaderStruct._fields_:
        assert getattr(abi.StackHeaderStruct, name).offset == offsets[name]
    assert offsets["data"] == abi.STACK_HEADER_SIZE


def test_struct_layout_expected_numbers() -> None:
    """The layout written out, so that a change to both sides at once is still noticed."""
    offsets, size = c_layout(parse_struct(header_text(), "vmt_event"))
    assert size == 272 == abi.EVENT_SIZE
    assert offsets["mm_id"] == 8
    assert offsets["ret"] == 32
    assert offsets["args"] == 40
    assert offsets["total_vm_before"] == 88
    assert offsets["area_addr"] == 152
    assert offsets["aux"] == 208
    assert offsets["tallied"] == 216
    assert offsets["tallied_shrunk"] == 232
    assert offsets["flags"] == 248
    assert offsets["comm"] == 256
    assert abi.FILE_SIZE == 24 + 16 * 64


def test_signedness_matches() -> None:
    fields = {f.name: f.ctype for f in parse_struct(header_text(), "vmt_event")}
    signed = {name for name, t in fields.items() if t.startswith("__s")}
    assert signed == {"syscall_nr", "ret", "rss_member"}
    for name, ctype, *_ in abi.EventStruct._fields_:
        if name in signed:
            assert ctype in (ctypes.c_int32, ctypes.c_int64), name
        elif fields[name] != "char":
            base = ctype._type_ if issubclass(ctype, ctypes.Array) else ctype
            assert base in (ctypes.c_uint32, ctypes.c_uint64), name


def test_enum_kind_matches() -> None:
    kinds = parse_enum(header_text(), "vmt_kind")
    assert {k.removeprefix("VMT_KIND_"): v for k, v in kinds.items()} == {
        k.name: k.value for k in abi.EventKind
    }


def test_counters_match() -> None:
    counters = parse_enum(header_text(), "vmt_counter")
    assert counters["VMT_CNT_LOST_CHANGES"] == abi.COUNTER_LOST_CHANGES
    assert counters["VMT_CNT_LOST_VITAL"] == abi.COUNTER_LOST_VITAL
    assert counters["VMT_CNT_STACK_ERR"] == abi.COUNTER_STACK_ERR
    assert counters["VMT_CNT_FILTERED"] == abi.COUNTER_FILTERED
    assert counters["VMT_CNT_TARGETS_FULL"] == abi.COUNTER_TARGETS_FULL
    assert counters["VMT_CNT_CALLS_FULL"] == abi.COUNTER_CALLS_FULL


def test_flags_match() -> None:
    flags = parse_flags(header_text())
    assert flags == {
        "VMT_FLAG_HAS_RET": abi.FLAG_HAS_RET,
        "VMT_FLAG_HAS_AREA": abi.FLAG_HAS_AREA,
        "VMT_FLAG_HAS_FILE": abi.FLAG_HAS_FILE,
        "VMT_FLAG_HAS_STACK": abi.FLAG_HAS_STACK,
        "VMT_FLAG_NO_REGS": abi.FLAG_NO_REGS,
        "VMT_FLAG_VITAL": abi.FLAG_VITAL,
    }


# -- decoding -----------------------------------------------------------------------------


def packed(**overrides: object) -> bytes:
    s = abi.EventStruct()
    values: dict[str, object] = dict(
        ts_ns=0x1122_3344_5566_7788,
        mm_id=0xFFFF_8880_1234_5678,
        pid=4242,
        tid=4243,
        kind=abi.EventKind.SYSCALL,
        syscall_nr=-1,
        ret=-12,
        total_vm_before=1000,
        total_vm_after=17385,
        hiwater_vm_before=900,
        hiwater_vm_after=950,
        stack_vm_before=33,
        stack_vm_after=35,
        peak_before=1001,
        flags=abi.FLAG_HAS_RET,
        comm=b"my worker",
        rss_file=100,
        rss_anon=200,
        rss_shmem=10,
        hiwater_rss=305,
        hwm_before=300,
        rss_member=1,
        aux=77,
        folded_rises=3,
        lost=2,
        tallied=123_456,
        tallied_grown=40_000,
        tallied_shrunk=41_000,
    )
    values.update(overrides)
    for k, v in values.items():
        setattr(s, k, v)
    for i, a in enumerate((0, 1 << 26, 3, 0x22, (1 << 64) - 1, 0x1000)):
        s.args[i] = a
    return bytes(s)


def file_part(*names: bytes, ino: int = 99, dev: int = (8 << 20) | 1, truncated: int = 0) -> bytes:
    f = abi.FileStruct(ino=ino, dev=dev, depth=len(names), truncated=truncated)
    for i, n in enumerate(names):
        f.names[i].value = n
    return bytes(f)


def test_round_trip() -> None:
    ev = abi.decode_event(packed())
    assert ev == abi.KernelEvent(
        ts_ns=0x1122_3344_5566_7788,
        mm_id=0xFFFF_8880_1234_5678,
        pid=4242,
        tid=4243,
        kind=abi.EventKind.SYSCALL,
        syscall_nr=-1,
        ret_raw=-12,
        args_raw=(0, 1 << 26, 3, 0x22, (1 << 64) - 1, 0x1000),
        total_vm_before_pages=1000,
        total_vm_after_pages=17385,
        hiwater_vm_before_pages=900,
        hiwater_vm_after_pages=950,
        stack_vm_before_pages=33,
        stack_vm_after_pages=35,
        peak_before_pages=1001,
        flags=abi.FLAG_HAS_RET,
        comm="my worker",
        rss_after_pages=310,
        rss_file_pages=100,
        rss_anon_pages=200,
        rss_shmem_pages=10,
        hiwater_rss_pages=305,
        hwm_before_pages=300,
        rss_member=1,
        aux=77,
        folded_rises=3,
        lost=2,
        tallied=123_456,
        tallied_grown_pages=40_000,
        tallied_shrunk_pages=41_000,
    )
    assert ev.has_ret is True
    assert isinstance(ev.kind, abi.EventKind)


def test_file_part_is_the_path_outermost_first() -> None:
    data = packed(flags=abi.FLAG_HAS_FILE) + file_part(b"libc.so.6", b"lib", b"usr")
    ev = abi.decode_event(data)
    assert ev.file == MappedFile(path="/usr/lib/libc.so.6", ino=99, dev=os.makedev(8, 1))
    trunc = abi.decode_event(packed(flags=abi.FLAG_HAS_FILE) + file_part(b"f", truncated=1))
    assert trunc.file is not None and trunc.file.path == ".../f"
    with pytest.raises(abi.DecodeError, match="file part"):
        abi.decode_event(data[:-1])


def test_stack_part_keeps_the_bytes_read() -> None:
    head = abi.StackHeaderStruct(ip=0x401000, sp=0x7FFC_0000_0000, bp=7, len=1024)
    body = bytes(range(256)) * 4 + b"\xee" * 512  # 512 bytes past `len`: not kept
    data = packed(flags=abi.FLAG_HAS_FILE | abi.FLAG_HAS_STACK) + file_part() + bytes(head) + body
    ev = abi.decode_event(data)
    assert ev.file is None  # a stack record's file part, empty
    assert ev.user_stack == UserStack(ip=0x401000, sp=0x7FFC_0000_0000, bp=7, data=body[:1024])


_MMAP, _MUNMAP, _BRK, _MREMAP, _SHMAT = 9, 11, 12, 25, 30


def _call(nr: int, args: tuple[int, ...], flags: int = 0, **kw: int) -> abi.KernelEvent:
    kw.setdefault("ret", 0)
    raw = packed(syscall_nr=nr, flags=flags, **kw)
    full = (*args, *(0,) * (6 - len(args)))
    return abi.decode_event(raw[:40] + b"".join(a.to_bytes(8, "little") for a in full) + raw[88:])


def test_results_the_tracepoint_backend_infers() -> None:
    anon = 0x22  # MAP_PRIVATE | MAP_ANONYMOUS
    area = abi.FLAG_HAS_AREA
    # the free range the kernel found is the mapping
    ev = _call(
        _MMAP, (0, 8192, 3, anon, 2**64 - 1, 0), area, area_addr=0x7F00_0000_1000, area_len=8192
    )
    assert (ev.has_ret, ev.ret_raw) == (True, 0x7F00_0000_1000)
    # a 2 MiB-multiple anonymous mapping: searched with 2 MiB more, aligned up
    two = 2 << 20
    ev = _call(
        _MMAP, (0, two, 3, anon, 2**64 - 1, 0), area, area_addr=0x7F00_0010_0000, area_len=2 * two
    )
    assert ev.ret_raw == 0x7F00_0020_0000
    ev = _call(
        _MMAP, (0, two, 3, anon, 2**64 - 1, 0), area, area_addr=0x7F00_0020_0000, area_len=2 * two
    )
    assert ev.ret_raw == 0x7F00_0040_0000  # already aligned: top-down takes the upper one
    # MAP_FIXED, or a free hint: where it was asked to go
    ev = _call(_MMAP, (0x5000_0000, 4096, 3, anon | 0x10, 2**64 - 1, 0))
    assert ev.ret_raw == 0x5000_0000
    assert _call(_BRK, (0,), brk_after=0x5555_6000).ret_raw == 0x5555_6000
    assert _call(_MUNMAP, (0x1000, 4096)).ret_raw == 0
    assert _call(_MREMAP, (0x1000, 4096, 8192, 0, 0)).ret_raw == 0x1000  # grown in place
    assert _call(_MREMAP, (0x1000, 4096, 8192, 3, 0x9000)).ret_raw == 0x9000  # FIXED
    assert _call(_SHMAT, (5, 0, 0), area, area_addr=0x7000).ret_raw == 0x7000
    assert not _call(39, (0,)).has_ret  # not a decoded call: nothing to infer
    # the kernel's own return value wins
    assert _call(_MMAP, (0, 4096, 3, anon, 0, 0), abi.FLAG_HAS_RET | area, ret=-12).ret_raw == -12


def test_full_comm_without_nul() -> None:
    ev = abi.decode_event(packed(comm=b"0123456789abcdef"))
    assert ev.comm == "0123456789abcdef"


def test_longer_buffer_is_accepted() -> None:
    """The ring buffer may round records up; extra bytes are ignored."""
    ev = abi.decode_event(packed() + b"\xff" * 8)
    assert ev.pid == 4242


def test_short_buffer_raises() -> None:
    short = abi.EVENT_SIZE - 1
    with pytest.raises(
        abi.DecodeError, match=f"record of {short} bytes, expected at least {abi.EVENT_SIZE}"
    ):
        abi.decode_event(packed()[:-1])
    with pytest.raises(abi.DecodeError):
        abi.decode_event(b"")


@pytest.mark.parametrize("kind", [0, 9, 0xFFFFFFFF])
def test_unknown_kind_raises(kind: int) -> None:
    with pytest.raises(abi.DecodeError, match=f"unknown record kind {kind}"):
        abi.decode_event(packed(kind=kind))


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(abi.DecodeError, ValueError)


def test_decode_counters() -> None:
    assert abi.decode_counters([1, 2, 3, 0]) == 6
    assert abi.decode_counters([]) == 0


def test_config_struct_matches_header() -> None:
    """struct vmt_config (filters written by user space) against its ctypes mirror."""
    fields = parse_struct(header_text(), "vmt_config")
    offsets, size = c_layout(fields)
    assert [f.name for f in fields] == [name for name, *_ in abi.ConfigStruct._fields_]
    for f in fields:
        ct = getattr(abi.ConfigStruct, f.name)
        assert (f.name, ct.offset, ct.size) == (f.name, offsets[f.name], f.size)
    assert ctypes.sizeof(abi.ConfigStruct) == size


def test_trace_config_encodes_every_filter() -> None:
    cfg = abi.TraceConfig(
        min_delta_pages=16384, hwm_step_pages=256, cgroup_id=77, cgroup_path="/sys/fs/cgroup/x",
        follow=True, all=False, comms=("nginx",),
    )  # fmt: skip
    c = cfg.encode()
    assert (c.min_delta_pages, c.hwm_step_pages, c.cgroup_id) == (16384, 256, 77)
    assert (c.follow, c.all, c.comm_filter) == (1, 0, 1)
    assert abi.comm_key("nginx") == b"nginx" + b"\0" * 11
    assert abi.comm_key("a-very-long-process-name") == b"a-very-long-pro\0"
