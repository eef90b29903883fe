"""Decoding of the records the BPF programs send: the only module that sees ctypes.

Keep aligned with bpf/vmtrace_events.h (struct vmt_event, enum vmt_kind, VMT_FLAG_*);
tests/unit/test_abi.py checks sizes and offsets against that header.
"""

from __future__ import annotations

import ctypes
import enum
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vmtrace.records import MappedFile
    from vmtrace.unwind import UserStack

COMM_LEN = 16
NARGS = 6


class EventKind(enum.IntEnum):
    SYSCALL = 1
    OTHER = 2
    EXEC = 3
    EXIT = 4
    BASELINE = 5
    FORK = 6
    HWM = 7


FLAG_NEW_PEAK = 1 << 0
FLAG_HAS_RET = 1 << 1
FLAG_MERGED = 1 << 2

COUNTER_EMITTED = 0
COUNTER_LOST = 1
COUNTER_STACK_ERR = 2
COUNTER_FILTERED = 3


class EventStruct(ctypes.Structure):
    """struct vmt_event; keep aligned with bpf/vmtrace_events.h."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("kind", ctypes.c_uint32),
        ("syscall_nr", ctypes.c_int32),
        ("ret", ctypes.c_int64),
        ("args", ctypes.c_uint64 * NARGS),
        ("total_vm_before", ctypes.c_uint64),
        ("total_vm_after", ctypes.c_uint64),
        ("hiwater_vm_before", ctypes.c_uint64),
        ("hiwater_vm_after", ctypes.c_uint64),
        ("stack_vm_before", ctypes.c_uint64),
        ("stack_vm_after", ctypes.c_uint64),
        ("peak_before", ctypes.c_uint64),
        ("user_sp", ctypes.c_uint64),
        ("user_ip", ctypes.c_uint64),
        ("stack_id", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
        ("comm", ctypes.c_char * COMM_LEN),
        ("rss_before", ctypes.c_uint64),
        ("rss_after", ctypes.c_uint64),
        ("hiwater_rss", ctypes.c_uint64),
        ("rss_member", ctypes.c_int32),
        ("cpu", ctypes.c_uint32),
    ]


class ConfigStruct(ctypes.Structure):
    """struct vmt_config; keep aligned with bpf/vmtrace_events.h."""

    _fields_ = [
        ("min_delta_pages", ctypes.c_uint64),
        ("hwm_step_pages", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("cgroup_level", ctypes.c_uint32),
        ("follow", ctypes.c_uint32),
        ("all", ctypes.c_uint32),
        ("comm_filter", ctypes.c_uint32),
        ("self_tgid", ctypes.c_uint32),
        ("stopped", ctypes.c_uint32),
    ]


@dataclass(frozen=True, slots=True)
class TraceConfig:
    """What user space asks of the kernel side (encoded into ConfigStruct at the edge)."""

    min_delta_pages: int = 0
    hwm_step_pages: int = 0
    cgroup_id: int = 0
    cgroup_level: int = 0
    follow: bool = False
    all: bool = False
    comms: tuple[str, ...] = ()
    self_tgid: int = 0
    stopped: bool = False

    def encode(self) -> ConfigStruct:
        return ConfigStruct(
            min_delta_pages=self.min_delta_pages,
            hwm_step_pages=self.hwm_step_pages,
            cgroup_id=self.cgroup_id,
            cgroup_level=self.cgroup_level,
            follow=int(self.follow),
            all=int(self.all),
            comm_filter=int(bool(self.comms)),
            self_tgid=self.self_tgid,
            stopped=int(self.stopped),
        )


def comm_key(comm: str) -> bytes:
    """A task name as the kernel stores it: at most 15 bytes and a NUL, zero-padded."""
    raw = comm.encode("utf-8")[: COMM_LEN - 1]
    return raw + b"\0" * (COMM_LEN - len(raw))


EVENT_SIZE = ctypes.sizeof(EventStruct)

_STRUCT_CODES: dict[type, str] = {
    ctypes.c_uint64: "Q",
    ctypes.c_int64: "q",
    ctypes.c_uint32: "I",
    ctypes.c_int32: "i",
}


def _struct_format(cls: type[ctypes.Structure]) -> str:
    """The struct-module layout of a ctypes mirror (struct.unpack is ~3x faster than
    from_buffer_copy, and the reader decodes every record of an mmap storm)."""
    fmt = "="
    for field in cls._fields_:
        ctype: Any = field[1]
        length = getattr(ctype, "_length_", None)
        if length is None:
            fmt += _STRUCT_CODES[ctype]
        elif ctype._type_ is ctypes.c_char:
            fmt += f"{length}s"
        else:
            fmt += _STRUCT_CODES[ctype._type_] * length
    return fmt


_EVENT = struct.Struct(_struct_format(EventStruct))
# The C struct has no padding; if a new field brought some, the unpacking would be wrong.
assert _EVENT.size == EVENT_SIZE, "struct vmt_event has padding: keep fields naturally aligned"
_KINDS = {k.value: k for k in EventKind}


class DecodeError(ValueError):
    """A record of the wrong size: the BPF object and this module disagree."""


@dataclass(frozen=True, slots=True)
class KernelEvent:
    """One record from the kernel, counters still in pages (the `_pages` fields)."""

    ts_ns: int
    pid: int
    tid: int
    kind: EventKind
    syscall_nr: int
    ret_raw: int
    args_raw: tuple[int, ...]
    total_vm_before_pages: int
    total_vm_after_pages: int
    hiwater_vm_before_pages: int
    hiwater_vm_after_pages: int
    stack_vm_before_pages: int
    stack_vm_after_pages: int
    peak_before_pages: int
    user_sp: int
    user_ip: int
    flags: int
    comm: str
    rss_before_pages: int = 0
    rss_after_pages: int = 0
    hiwater_rss_pages: int = 0
    rss_member: int = -1
    cpu: int = 0
    mm_id: int = 0  # identity of the address space (two images of one pid differ)
    file: MappedFile | None = None  # file mmaps: the file as the kernel saw it at the change
    user_stack: UserStack | None = None  # records worth explaining

    @property
    def has_ret(self) -> bool:
        return bool(self.flags & FLAG_HAS_RET)

    @property
    def new_peak(self) -> bool:
        return bool(self.flags & FLAG_NEW_PEAK)


def decode_event(data: bytes) -> KernelEvent:
    if len(data) < EVENT_SIZE:
        raise DecodeError(f"record of {len(data)} bytes, expected {EVENT_SIZE}")
    v = _EVENT.unpack_from(data)
    kind = _KINDS.get(v[3])
    if kind is None:
        raise DecodeError(f"unknown record kind {v[3]}")
    return KernelEvent(
        ts_ns=v[0],
        pid=v[1],
        tid=v[2],
        kind=kind,
        syscall_nr=v[4],
        ret_raw=v[5],
        args_raw=v[6:12],
        total_vm_before_pages=v[12],
        total_vm_after_pages=v[13],
        hiwater_vm_before_pages=v[14],
        hiwater_vm_after_pages=v[15],
        stack_vm_before_pages=v[16],
        stack_vm_after_pages=v[17],
        peak_before_pages=v[18],
        user_sp=v[19],
        user_ip=v[20],
        flags=v[22],
        comm=v[23].split(b"\0", 1)[0].decode("utf-8", "replace"),
        rss_before_pages=v[24],
        rss_after_pages=v[25],
        hiwater_rss_pages=v[26],
        rss_member=v[27],
        cpu=v[28],
    )


def decode_counters(per_cpu_values: list[int]) -> int:
    """Sum of a per-CPU counter (bcc gives one value per possible CPU)."""
    return sum(int(v) for v in per_cpu_values)
