"""Decoding of the records the BPF programs send: the only module that sees ctypes.

Keep aligned with bpf/vmtrace_events.h (struct vmt_event, struct vmt_file, struct
vmt_user_stack, enum vmt_kind, VMT_FLAG_*); tests/unit/test_abi.py checks sizes and offsets
against that header.
"""

from __future__ import annotations

import ctypes
import enum
import os
import struct
from dataclasses import dataclass
from typing import Any

from vmtrace.records import MappedFile, UserStack

COMM_LEN = 16
NARGS = 6
PATH_DEPTH = 16
NAME_LEN = 64
STACK_CHUNK = 512
MAX_STACK_BYTES = 65536


class EventKind(enum.IntEnum):
    SYSCALL = 1
    OTHER = 2
    EXEC = 3
    EXIT = 4
    BASELINE = 5
    FORK = 6
    HWM = 7
    OOM = 8


FLAG_HAS_RET = 1 << 1
FLAG_HAS_AREA = 1 << 2
FLAG_HAS_FILE = 1 << 3
FLAG_HAS_STACK = 1 << 4
FLAG_NO_REGS = 1 << 5
FLAG_VITAL = 1 << 6

COUNTER_LOST_CHANGES = 0
COUNTER_LOST_VITAL = 1
COUNTER_STACK_ERR = 2
COUNTER_FILTERED = 3
COUNTER_TARGETS_FULL = 4
COUNTER_CALLS_FULL = 6
COUNTER_TALLIED = 7


class EventStruct(ctypes.Structure):
    """struct vmt_event; keep aligned with bpf/vmtrace_events.h."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("mm_id", ctypes.c_uint64),
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
        ("brk_after", ctypes.c_uint64),
        ("area_addr", ctypes.c_uint64),
        ("area_len", ctypes.c_uint64),
        ("rss_file", ctypes.c_uint64),
        ("rss_anon", ctypes.c_uint64),
        ("rss_shmem", ctypes.c_uint64),
        ("hiwater_rss", ctypes.c_uint64),
        ("hwm_before", ctypes.c_uint64),
        ("aux", ctypes.c_uint64),
        ("tallied", ctypes.c_uint64),
        ("tallied_grown", ctypes.c_uint64),
        ("tallied_shrunk", ctypes.c_uint64),
        ("folded_rises", ctypes.c_uint32),
        ("rss_member", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
        ("lost", ctypes.c_uint32),
        ("comm", ctypes.c_char * COMM_LEN),
    ]


class FileStruct(ctypes.Structure):
    """struct vmt_file; keep aligned with bpf/vmtrace_events.h."""

    _fields_ = [
        ("ino", ctypes.c_uint64),
        ("dev", ctypes.c_uint32),
        ("depth", ctypes.c_uint32),
        ("truncated", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("names", (ctypes.c_char * NAME_LEN) * PATH_DEPTH),
    ]


class StackHeaderStruct(ctypes.Structure):
    """The fixed part of struct vmt_user_stack (data[] follows); keep aligned with
    bpf/vmtrace_events.h."""

    _fields_ = [
        ("ip", ctypes.c_uint64),
        ("sp", ctypes.c_uint64),
        ("bp", ctypes.c_uint64),
        ("len", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class ConfigStruct(ctypes.Structure):
    """struct vmt_config; keep aligned with bpf/vmtrace_events.h."""

    _fields_ = [
        ("min_delta_pages", ctypes.c_uint64),
        ("hwm_step_pages", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
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
    cgroup_path: str | None = None  # --cgroup's directory: the kernel side holds it by fd
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
FILE_SIZE = ctypes.sizeof(FileStruct)
STACK_HEADER_SIZE = ctypes.sizeof(StackHeaderStruct)

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
_FILE_HEAD = struct.Struct("=QIII")
_STACK_HEAD = struct.Struct(_struct_format(StackHeaderStruct))
# The C struct has no padding; if a new field brought some, the unpacking would be wrong.
assert _EVENT.size == EVENT_SIZE, "struct vmt_event has padding: keep fields naturally aligned"
assert _STACK_HEAD.size == STACK_HEADER_SIZE
_KINDS = {k.value: k for k in EventKind}

# x86_64 <asm-generic/mman-common.h>, <linux/mman.h>
_MAP_FIXED = 0x10
_MAP_ANONYMOUS = 0x20
_MAP_FIXED_NOREPLACE = 0x100000
_MREMAP_FIXED = 2
_PMD_SIZE = 2 << 20
_NR_MMAP, _NR_BRK, _NR_MREMAP, _NR_SHMAT = 9, 12, 25, 30


class DecodeError(ValueError):
    """A record of the wrong size: the BPF object and this module disagree."""


@dataclass(frozen=True, slots=True)
class Losses:
    """What the kernel side could not send or capture, by kind."""

    changes: int = 0  # grow/shrink records; 0 since they are tallied instead (log version 5)
    vital: int = 0  # peaks, latches, lifecycle records: the `vital` ring was full
    stacks: int = 0  # user stacks that could not be read
    targets_full: int = 0  # processes to trace that did not fit the targets map
    calls_full: int = 0  # kprobe/fentry: calls in flight that did not fit their map


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
    flags: int
    comm: str
    mm_id: int = 0
    rss_after_pages: int = 0  # VmRSS: file + anon + shmem
    rss_file_pages: int = 0
    rss_anon_pages: int = 0
    rss_shmem_pages: int = 0
    hiwater_rss_pages: int = 0
    hwm_before_pages: int = 0  # HWM records: VmHWM of the previous one
    rss_member: int = -1
    aux: int = 0  # FORK: the parent; EXEC: the thread that called exec; EXIT: the exit code;
    # OOM: the task whose allocation failed; BASELINE: the host's tgid
    folded_rises: int = 0  # --min-delta: VmPeak rises this record's peak covers
    lost: int = 0  # records of this process that found no room, so far
    # grow/shrink changes of this process counted, not sent, while the reader was behind
    # (so far), and the pages they mapped and unmapped
    tallied: int = 0
    tallied_grown_pages: int = 0
    tallied_shrunk_pages: int = 0
    file: MappedFile | None = None
    user_stack: UserStack | None = None

    @property
    def has_ret(self) -> bool:
        return bool(self.flags & FLAG_HAS_RET)


def _call_result(
    nr: int, flags: int, ret: int, args: tuple[int, ...], brk: int, area: tuple[int, int]
) -> int | None:
    """The call's result where the kernel side could not read it (the tracepoint backend
    commits a change before the call returns): a new mapping's address from the free range
    the kernel found for it, the new break from the mm."""
    if flags & FLAG_HAS_RET:
        return ret
    area_addr, area_len = area
    has_area = bool(flags & FLAG_HAS_AREA)

    def placed(length: int, file_offset: int = 0) -> int:
        if area_len == _page_up(length) + _PMD_SIZE:
            # a huge-page-sized mapping is put where its file offset (0 when anonymous)
            # falls on a huge-page boundary: the kernel searched for PMD_SIZE more and
            # moved the start up (top-down layout)
            off = (file_offset - area_addr) & (_PMD_SIZE - 1)
            return area_addr + (off if off else _PMD_SIZE)
        return area_addr

    if nr == _NR_BRK:
        return brk
    if nr == _NR_MMAP:
        if args[3] & (_MAP_FIXED | _MAP_FIXED_NOREPLACE) or not has_area:
            return args[0]  # where it was asked to go (a free hint is taken as it is)
        return placed(args[1], 0 if args[3] & _MAP_ANONYMOUS else args[5])
    if nr == _NR_MREMAP:
        if args[3] & _MREMAP_FIXED:
            return args[4]
        return placed(args[2]) if has_area else args[0]
    if nr == _NR_SHMAT:
        return area_addr if has_area else args[1]
    if nr in (11, 67):  # munmap, shmdt
        return 0
    return None


def _page_up(n: int) -> int:
    return -(-n // 4096) * 4096


def _decode_file(data: bytes, at: int) -> MappedFile | None:
    ino, dev, depth, truncated = _FILE_HEAD.unpack_from(data, at)
    if depth == 0:
        return None
    names = at + _FILE_HEAD.size + 4  # the pad word
    parts = []
    for i in range(min(depth, PATH_DEPTH) - 1, -1, -1):
        raw = data[names + i * NAME_LEN : names + (i + 1) * NAME_LEN]
        parts.append(raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"))
    path = "/" + "/".join(parts)
    if truncated:
        path = ".../" + path.lstrip("/")
    # the kernel's dev_t is major << 20 | minor; stat() gives the userspace encoding
    return MappedFile(path=path, ino=ino, dev=os.makedev(dev >> 20, dev & 0xFFFFF))


def decode_event(data: bytes) -> KernelEvent:
    if len(data) < EVENT_SIZE:
        raise DecodeError(f"record of {len(data)} bytes, expected at least {EVENT_SIZE}")
    v = _EVENT.unpack_from(data)
    kind = _KINDS.get(v[4])
    if kind is None:
        raise DecodeError(f"unknown record kind {v[4]}")
    flags = v[34]
    args = v[7:13]
    file = None
    stack = None
    if flags & FLAG_HAS_FILE:
        if len(data) < EVENT_SIZE + FILE_SIZE:
            raise DecodeError(f"record of {len(data)} bytes is too short for its file part")
        file = _decode_file(data, EVENT_SIZE)
    if flags & FLAG_HAS_STACK:
        at = EVENT_SIZE + FILE_SIZE
        if len(data) < at + STACK_HEADER_SIZE:
            raise DecodeError(f"record of {len(data)} bytes is too short for its stack part")
        ip, sp, bp, n, _pad = _STACK_HEAD.unpack_from(data, at)
        body = at + STACK_HEADER_SIZE
        stack = UserStack(ip=ip, sp=sp, bp=bp, data=bytes(data[body : body + n]))
    ret = _call_result(v[5], flags, v[6], args, v[20], (v[21], v[22]))
    if ret is not None:
        flags |= FLAG_HAS_RET
    return KernelEvent(
        ts_ns=v[0],
        mm_id=v[1],
        pid=v[2],
        tid=v[3],
        kind=kind,
        syscall_nr=v[5],
        ret_raw=v[6] if ret is None else ret,
        args_raw=args,
        total_vm_before_pages=v[13],
        total_vm_after_pages=v[14],
        hiwater_vm_before_pages=v[15],
        hiwater_vm_after_pages=v[16],
        stack_vm_before_pages=v[17],
        stack_vm_after_pages=v[18],
        peak_before_pages=v[19],
        rss_after_pages=v[23] + v[24] + v[25],
        rss_file_pages=v[23],
        rss_anon_pages=v[24],
        rss_shmem_pages=v[25],
        hiwater_rss_pages=v[26],
        hwm_before_pages=v[27],
        aux=v[28],
        tallied=v[29],
        tallied_grown_pages=v[30],
        tallied_shrunk_pages=v[31],
        folded_rises=v[32],
        rss_member=v[33],
        flags=flags,
        lost=v[35],
        comm=v[36].split(b"\0", 1)[0].decode("utf-8", "replace"),
        file=file,
        user_stack=stack,
    )


def decode_counters(per_cpu_values: list[int]) -> int:
    """Sum of a per-CPU counter (bcc gives one value per possible CPU)."""
    return sum(int(v) for v in per_cpu_values)
