"""Decoding of the records the BPF programs send: the only module that sees ctypes.

Keep aligned with bpf/vmtrace_events.h (struct vmt_event, enum vmt_kind, VMT_FLAG_*);
tests/unit/test_abi.py checks sizes and offsets against that header.
"""

from __future__ import annotations

import ctypes
import enum
from dataclasses import dataclass

COMM_LEN = 16
NARGS = 6


class EventKind(enum.IntEnum):
    SYSCALL = 1
    OTHER = 2
    EXEC = 3
    EXIT = 4
    BASELINE = 5


FLAG_NEW_PEAK = 1 << 0
FLAG_HAS_RET = 1 << 1
FLAG_MERGED = 1 << 2

COUNTER_EMITTED = 0
COUNTER_LOST = 1
COUNTER_STACK_ERR = 2


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
    ]


EVENT_SIZE = ctypes.sizeof(EventStruct)


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
    stack_id: int
    flags: int
    comm: str

    @property
    def has_ret(self) -> bool:
        return bool(self.flags & FLAG_HAS_RET)

    @property
    def new_peak(self) -> bool:
        return bool(self.flags & FLAG_NEW_PEAK)


def decode_event(data: bytes) -> KernelEvent:
    if len(data) < EVENT_SIZE:
        raise DecodeError(f"record of {len(data)} bytes, expected {EVENT_SIZE}")
    s = EventStruct.from_buffer_copy(data[:EVENT_SIZE])
    try:
        kind = EventKind(s.kind)
    except ValueError as e:
        raise DecodeError(f"unknown record kind {s.kind}") from e
    return KernelEvent(
        ts_ns=s.ts_ns,
        pid=s.pid,
        tid=s.tid,
        kind=kind,
        syscall_nr=s.syscall_nr,
        ret_raw=s.ret,
        args_raw=tuple(s.args),
        total_vm_before_pages=s.total_vm_before,
        total_vm_after_pages=s.total_vm_after,
        hiwater_vm_before_pages=s.hiwater_vm_before,
        hiwater_vm_after_pages=s.hiwater_vm_after,
        stack_vm_before_pages=s.stack_vm_before,
        stack_vm_after_pages=s.stack_vm_after,
        peak_before_pages=s.peak_before,
        user_sp=s.user_sp,
        user_ip=s.user_ip,
        stack_id=s.stack_id,
        flags=s.flags,
        comm=s.comm.decode("utf-8", "replace"),
    )


def decode_counters(per_cpu_values: list[int]) -> int:
    """Sum of a per-CPU counter (bcc gives one value per possible CPU)."""
    return sum(int(v) for v in per_cpu_values)
