"""abi.py against bpf/vmtrace_events.h itself: layout, enum values, flags, decoding.

The header is parsed with a small regex parser and laid out with C natural alignment
(every __uN/__sN aligned to its size, char arrays to 1, the struct to its largest member),
then compared field by field with ctypes' layout of abi.EventStruct.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmtrace import abi

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
        mt = re.fullmatch(r"(__[us]\d+|char)\s+(\w+)\s*(?:\[\s*(\w+)\s*\])?", decl)
        assert mt, f"unparsed declaration in struct {name}: {decl!r}"
        ctype, fname, dim = mt.groups()
        count = _int_define(defs, dim) if dim else 1
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


def test_struct_layout_matches_ctypes_field_by_field() -> None:
    fields = parse_struct(header_text(), "vmt_event")
    offsets, size = c_layout(fields)
    ct_fields = abi.EventStruct._fields_
    assert [f.name for f in fields] == [name for name, *_ in ct_fields]
    for f in fields:
        ct = getattr(abi.EventStruct, f.name)
        assert (f.name, ct.offset, ct.size) == (f.name, offsets[f.name], f.size)
    assert ctypes.sizeof(abi.EventStruct) == size == abi.EVENT_SIZE


def test_struct_layout_expected_numbers() -> None:
    """The layout written out, so that a change to both sides at once is still noticed."""
    offsets, size = c_layout(parse_struct(header_text(), "vmt_event"))
    assert size == 208
    assert offsets["ret"] == 24
    assert offsets["args"] == 32
    assert offsets["total_vm_before"] == 80
    assert offsets["stack_id"] == 152
    assert offsets["comm"] == 160
    assert offsets["rss_before"] == 176
    assert offsets["rss_member"] == 200
    assert offsets["cpu"] == 204


def test_signedness_matches() -> None:
    fields = {f.name: f.ctype for f in parse_struct(header_text(), "vmt_event")}
    signed = {name for name, t in fields.items() if t.startswith("__s")}
    assert signed == {"syscall_nr", "ret", "stack_id", "rss_member"}
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
    assert counters["VMT_CNT_EMITTED"] == abi.COUNTER_EMITTED
    assert counters["VMT_CNT_LOST"] == abi.COUNTER_LOST
    assert counters["VMT_CNT_STACK_ERR"] == abi.COUNTER_STACK_ERR


def test_flags_match() -> None:
    flags = parse_flags(header_text())
    assert flags == {
        "VMT_FLAG_NEW_PEAK": abi.FLAG_NEW_PEAK,
        "VMT_FLAG_HAS_RET": abi.FLAG_HAS_RET,
        "VMT_FLAG_MERGED": abi.FLAG_MERGED,
    }
    assert (abi.FLAG_NEW_PEAK, abi.FLAG_HAS_RET, abi.FLAG_MERGED) == (1, 2, 4)


# -- decoding -----------------------------------------------------------------------------


def packed(**overrides: object) -> bytes:
    s = abi.EventStruct()
    values: dict[str, object] = dict(
        ts_ns=0x1122_3344_5566_7788,
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
        user_sp=0x7FFF_FFFF_E000,
        user_ip=0x5555_5555_1234,
        stack_id=-14,
        flags=abi.FLAG_HAS_RET | abi.FLAG_NEW_PEAK,
        comm=b"my worker",
        rss_before=300,
        rss_after=310,
        hiwater_rss=305,
        rss_member=1,
        cpu=1,
    )
    values.update(overrides)
    for k, v in values.items():
        setattr(s, k, v)
    for i, a in enumerate((0, 1 << 26, 3, 0x22, (1 << 64) - 1, 0x1000)):
        s.args[i] = a
    return bytes(s)


def test_round_trip() -> None:
    ev = abi.decode_event(packed())
    assert ev == abi.KernelEvent(
        ts_ns=0x1122_3344_5566_7788,
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
        user_sp=0x7FFF_FFFF_E000,
        user_ip=0x5555_5555_1234,
        flags=abi.FLAG_HAS_RET | abi.FLAG_NEW_PEAK,
        comm="my worker",
        rss_before_pages=300,
        rss_after_pages=310,
        hiwater_rss_pages=305,
        rss_member=1,
        cpu=1,
    )
    assert ev.has_ret is True
    assert ev.new_peak is True
    assert isinstance(ev.kind, abi.EventKind)


def test_round_trip_at_header_offsets() -> None:
    """Bytes put at the header's offsets (not through ctypes) decode to the right fields."""
    offsets, size = c_layout(parse_struct(header_text(), "vmt_event"))
    buf = bytearray(size)
    buf[offsets["pid"] : offsets["pid"] + 4] = (77).to_bytes(4, "little")
    buf[offsets["kind"] : offsets["kind"] + 4] = (5).to_bytes(4, "little")
    buf[offsets["syscall_nr"] : offsets["syscall_nr"] + 4] = (-1).to_bytes(4, "little", signed=True)
    buf[offsets["total_vm_after"] : offsets["total_vm_after"] + 8] = (123).to_bytes(8, "little")
    buf[offsets["flags"] : offsets["flags"] + 4] = (2).to_bytes(4, "little")
    buf[offsets["comm"] : offsets["comm"] + 3] = b"abc"
    ev = abi.decode_event(bytes(buf))
    assert (ev.pid, ev.kind, ev.syscall_nr, ev.total_vm_after_pages, ev.flags, ev.comm) == (
        77,
        abi.EventKind.BASELINE,
        -1,
        123,
        2,
        "abc",
    )
    assert ev.has_ret and not ev.new_peak


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
        abi.DecodeError, match=f"record of {short} bytes, expected {abi.EVENT_SIZE}"
    ):
        abi.decode_event(packed()[:-1])
    with pytest.raises(abi.DecodeError):
        abi.decode_event(b"")


@pytest.mark.parametrize("kind", [0, 8, 0xFFFFFFFF])
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
        min_delta_pages=16384, hwm_step_pages=256, cgroup_id=77, cgroup_level=3,
        follow=True, all=False, comms=("nginx",),
    )  # fmt: skip
    c = cfg.encode()
    assert (c.min_delta_pages, c.hwm_step_pages, c.cgroup_id, c.cgroup_level) == (
        16384, 256, 77, 3,
    )  # fmt: skip
    assert (c.follow, c.all, c.comm_filter) == (1, 0, 1)
    assert abi.comm_key("nginx") == b"nginx" + b"\0" * 11
    assert abi.comm_key("a-very-long-process-name") == b"a-very-long-pro\0"
