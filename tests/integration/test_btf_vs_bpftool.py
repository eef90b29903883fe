"""vmtrace's BTF reader against bpftool's reading of the running kernel's BTF."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmtrace.kernel.btf import DEFAULT_PATH, Btf
from vmtrace.kernel.offsets import MEMBERS, read_offsets

# Whatever pytest's import mode, the helper next to this file is importable.
sys.path.insert(0, str(Path(__file__).parent))
from _require import require

BPFTOOL_CANDIDATES = ("bpftool", "/usr/sbin/bpftool", "/sbin/bpftool")

_TYPE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_MEMBER = re.compile(r"^\s+'([^']*)' type_id=(\d+) bits_offset=(\d+)(?: bitfield_size=(\d+))?")


@dataclasses.dataclass
class RawType:
    kind: str
    name: str
    attrs: dict[str, str]
    members: list[tuple[str, int, int, int]]  # name, type id, bit offset, bitfield size


def _bpftool() -> str | None:
    for candidate in BPFTOOL_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def raw_types() -> dict[int, RawType]:
    require(os.path.exists(DEFAULT_PATH), f"no {DEFAULT_PATH} (kernel without BTF)")
    bpftool = _bpftool()
    require(bpftool is not None, "bpftool is not installed")
    assert bpftool is not None
    out = subprocess.run(
        [bpftool, "btf", "dump", "file", DEFAULT_PATH, "format", "raw"],
        capture_output=True,
        text=True,
        check=False,
    )
    require(out.returncode == 0, f"bpftool btf dump failed: {out.stderr.strip()}")
    types: dict[int, RawType] = {}
    current: RawType | None = None
    for line in out.stdout.splitlines():
        m = _TYPE.match(line)
        if m:
            attrs = dict(re.findall(r"(\w+)=(\S+)", m.group(4)))
            current = RawType(m.group(2), m.group(3), attrs, [])
            types[int(m.group(1))] = current
            continue
        mm = _MEMBER.match(line)
        if mm and current is not None and current.kind in ("STRUCT", "UNION"):
            bitfield = int(mm.group(4) or 0)
            current.members.append((mm.group(1), int(mm.group(2)), int(mm.group(3)), bitfield))
    return types


def _strip(types: dict[int, RawType], tid: int) -> int:
    while types[tid].kind in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
        tid = int(types[tid].attrs["type_id"])
    return tid


def _bits_of(types: dict[int, RawType], tid: int, member: str) -> int | None:
    for name, _, bits, bitfield in types[tid].members:
        if name == member:
            assert bitfield == 0, f"{member} is a bitfield"
            return bits
    for name, m_type, bits, _ in types[tid].members:
        if name == "(anon)":
            inner = _strip(types, m_type)
            if types[inner].kind in ("STRUCT", "UNION"):
                found = _bits_of(types, inner, member)
                if found is not None:
                    return bits + found
    return None


def _find(types: dict[int, RawType], tid: int, member: str) -> tuple[int, int] | None:
    """(bit offset, type id) of `member`, looking into anonymous members too."""
    for name, m_type, bits, bitfield in types[tid].members:
        if name == member:
            assert bitfield == 0, f"{member} is a bitfield"
            return bits, m_type
    for name, m_type, bits, _ in types[tid].members:
        if name == "(anon)":
            inner = _strip(types, m_type)
            if types[inner].kind in ("STRUCT", "UNION"):
                found = _find(types, inner, member)
                if found is not None:
                    return bits + found[0], found[1]
    return None


def _dotted_bits(types: dict[int, RawType], tid: int, path: str) -> int | None:
    """Bit offset of a dotted member path (f_path.dentry): nested structs, not pointers."""
    total = 0
    for part in path.split("."):
        found = _find(types, tid, part)
        if found is None:
            return None
        total += found[0]
        tid = _strip(types, found[1])
    return total


def _struct(types: dict[int, RawType], name: str) -> int:
    ids = [t for t, r in types.items() if r.kind == "STRUCT" and r.name == name]
    assert ids, f"bpftool shows no struct {name}"
    return min(ids)


# The same table as the BPF programs get, checked here against bpftool, not against itself.
EXPECTED_MEMBERS = MEMBERS


def _require_x86_64() -> None:
    require(os.uname().machine == "x86_64", "vmtrace's offsets are x86_64 only")


def test_every_btf_offset_matches_bpftool(raw_types: dict[int, RawType]) -> None:
    _require_x86_64()
    offsets = read_offsets()
    for field, (struct_name, member) in EXPECTED_MEMBERS.items():
        bits = _dotted_bits(raw_types, _struct(raw_types, struct_name), member)
        assert bits is not None, f"bpftool shows no {struct_name}.{member}"
        assert bits % 8 == 0
        assert getattr(offsets, field) == bits // 8, f"{field} ({struct_name}.{member})"
    pt_regs = raw_types[_struct(raw_types, "pt_regs")]
    assert offsets.pt_regs_size == int(pt_regs.attrs["size"])
    assert offsets.upid_size == int(raw_types[_struct(raw_types, "upid")].attrs["size"])
    # The RSS counter layout: percpu_counter array (6.2+) or mm_rss_stat's atomic_long_t array.
    if any(r.kind == "STRUCT" and r.name == "mm_rss_stat" for r in raw_types.values()):
        assert (offsets.rss_stride, offsets.rss_count) == (8, 0)
    else:
        pcpu = _struct(raw_types, "percpu_counter")
        assert offsets.rss_stride == int(raw_types[pcpu].attrs["size"])
        count_bits = _bits_of(raw_types, pcpu, "count")
        assert count_bits is not None and offsets.rss_count == count_bits // 8
    # The raw lock tracepoints' arguments: btf_trace_<name> -> PTR -> FUNC_PROTO, whose
    # parameters start with the context pointer.
    typedef = next(
        r for r in raw_types.values()
        if r.kind == "TYPEDEF" and r.name == "btf_trace_mmap_lock_released"
    )  # fmt: skip
    proto = raw_types[int(raw_types[int(typedef.attrs["type_id"])].attrs["type_id"])]
    assert proto.kind == "FUNC_PROTO"
    assert offsets.lock_tp_args == int(proto.attrs["vlen"]) - 1
    # Every field is checked: the BTF ones above, the config-derived ones by their range.
    checked = set(EXPECTED_MEMBERS) | {
        "lock_tp_args",
        "pt_regs_size",
        "upid_size",
        "thread_size",
        "stack_top_padding",
        "rss_stride",
        "rss_count",
    }
    assert checked == {f.name for f in dataclasses.fields(offsets)}
    assert offsets.thread_size in (16384, 32768)
    assert offsets.stack_top_padding in (0, 16)


def test_struct_sizes_match_bpftool(raw_types: dict[int, RawType]) -> None:
    btf = Btf.from_file()
    for name in ("task_struct", "mm_struct", "pt_regs"):
        expected = int(raw_types[_struct(raw_types, name)].attrs["size"])
        assert btf.struct_size(name) == expected, name


def test_read_offsets_is_fast() -> None:
    _require_x86_64()
    require(os.path.exists(DEFAULT_PATH), f"no {DEFAULT_PATH} (kernel without BTF)")
    # Under scripts/kernel-vm the CPU is emulated (TCG, ~30x slower than the host).
    limit = 5.0 if os.environ.get("VMTRACE_KERNEL_VM") == "1" else 1.0
    start = time.perf_counter()
    read_offsets()
    elapsed = time.perf_counter() - start
    assert elapsed < limit, f"read_offsets took {elapsed:.3f} s"
