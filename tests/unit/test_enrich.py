"""Enricher: kernel records (abi.KernelEvent) → `Change`s with causes, mappings and stacks.

Events are built directly (no BPF); the I/O callables are fakes that record their calls, and
the unwinder is a small one that reads return addresses off the stack snapshot (the real CFI
unwinder is tested on its own). Page size 4096, so 1 page = 4 kB.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest

from vmtrace.abi import FLAG_HAS_RET, EventKind, KernelEvent
from vmtrace.enrich import Enricher
from vmtrace.records import UNNAMED_FILE, MappedFile, Mapping
from vmtrace.unwind import Frame, UserStack

PAGE = 4096
PID = 1000
MINUS_ONE_U64 = (1 << 64) - 1

LIBC = Mapping(0x7F00_0000_0000, 0x7F00_0002_8000, "r-xp", "/usr/lib/libc.so.6", 0x28000)
HEAP = Mapping(0x5555_5555_9000, 0x5555_5557_A000, "rw-p", "[heap]")
STACK = Mapping(0x7FFF_FFDE_0000, 0x7FFF_FFFF_F000, "rw-p", "[stack]")


def ev(
    kind: EventKind = EventKind.SYSCALL,
    nr: int = 9,
    args: tuple[int, ...] = (0, 0, 0, 0, 0, 0),
    ret: int | None = None,
    total: tuple[int, int] = (1000, 1000),
    hiwater: tuple[int, int] = (0, 0),
    stack: tuple[int, int] = (33, 33),
    peak_before: int = 1000,
    user_sp: int = 0,
    pid: int = PID,
    file: MappedFile | None = None,
    user_stack: UserStack | None = None,
    aux: int = 0,
) -> KernelEvent:
    """A kernel record; counters in pages."""
    return KernelEvent(
        ts_ns=123_456_789,
        pid=pid,
        tid=pid + 1,
        kind=kind,
        syscall_nr=nr,
        ret_raw=ret if ret is not None else 0,
        args_raw=tuple(args) + (0,) * (6 - len(args)),
        total_vm_before_pages=total[0],
        total_vm_after_pages=total[1],
        hiwater_vm_before_pages=hiwater[0],
        hiwater_vm_after_pages=hiwater[1],
        stack_vm_before_pages=stack[0],
        stack_vm_after_pages=stack[1],
        peak_before_pages=peak_before,
        flags=FLAG_HAS_RET if ret is not None else 0,
        comm="worker",
        file=file,
        user_stack=user_stack
        if user_stack is not None or not user_sp
        else UserStack(ip=0x5555_5555_1234, sp=user_sp, bp=0, data=b""),
        aux=aux,
    )


def file_of(path: str, ino: int = 1234) -> MappedFile:
    return MappedFile(path, ino, 0x801)


class ReturnAddressUnwinder:
    """Frame 0 at ip, then one frame per 8-byte word of the snapshot, until a word that is not
    in an executable mapping; modules and offsets from `find_mapping` alone."""

    def __init__(self) -> None:
        self.calls: list[tuple[UserStack, int]] = []

    def unwind(
        self,
        stack: UserStack,
        find_mapping: Callable[[int], Mapping | None],
        max_frames: int = 64,
    ) -> list[Frame]:
        self.calls.append((stack, max_frames))
        words = [w for (w,) in struct.iter_unpack("<Q", stack.data)]
        frames: list[Frame] = []
        for addr in [stack.ip, *words][:max_frames]:
            m = find_mapping(addr)
            if m is None or "x" not in m.perms:
                break
            frames.append(Frame(addr, None, None, m.path, m.offset + addr - m.start))
        return frames


def snapshot(*addrs: int) -> UserStack:
    """A stack whose ip is addrs[0] and whose words are the rest (return addresses)."""
    return UserStack(
        addrs[0], 0x7FFF_FFFE_0000, 0, b"".join(struct.pack("<Q", a) for a in addrs[1:])
    )


class Fakes:
    def __init__(self) -> None:
        self.maps_read: list[int] = []
        self.maps_after_exec: list[Mapping] = []
        self.unwinder = ReturnAddressUnwinder()

    def read_maps(self, pid: int) -> list[Mapping]:
        self.maps_read.append(pid)
        return list(self.maps_after_exec)


@pytest.fixture
def fakes() -> Fakes:
    return Fakes()


@pytest.fixture
def enr(fakes: Fakes) -> Enricher:
    e = Enricher(PAGE, fakes.read_maps, fakes.unwinder)
    e.attach(PID, [HEAP, LIBC, STACK])
    return e


def test_anonymous_mmap(enr: Enricher, fakes: Fakes) -> None:
    addr = 0x7F12_3400_0000
    length = 64 * 1024 * 1024 + 100  # not page aligned: the mapping is rounded up
    c = enr.enrich(
        ev(
            nr=9,
            args=(0, length, 0x3, 0x22, MINUS_ONE_U64, 0),
            ret=addr,
            total=(1000, 1000 + 16385),
            peak_before=1000,
        )
    )
    assert c.kind == "change"
    assert c.cause == "mmap"
    assert c.syscall == "mmap"
    assert c.ret == addr
    assert isinstance(c.ret, int)
    assert c.args == {
        "addr": "0x0",
        "len": length,
        "prot": "rw-",
        "flags": "private|anon",
        "fd": -1,
        "offset": 0,
    }
    end = addr + 64 * 1024 * 1024 + PAGE
    assert c.mapping == Mapping(addr, end, "rw-p", "[anon]", 0)
    assert (c.total_vm_kb_before, c.total_vm_kb_after) == (4000, 4000 + 16385 * 4)
    assert c.kernel_peak_kb_before == 4000
    assert (c.stack_vm_kb_before, c.stack_vm_kb_after) == (132, 132)
    assert (c.pid, c.tid, c.comm, c.ts_ns) == (PID, PID + 1, "worker", 123_456_789)
    assert c.stack is None  # no snapshot in the record
    assert enr.shadow(PID).find(addr) == c.mapping


def test_file_mmap_is_named_by_the_kernels_file(enr: Enricher) -> None:
    addr = 0x7F55_0000_0000
    c = enr.enrich(
        ev(
            nr=9,
            args=(0, 8192, 0x1, 0x01, 3, 0x10000),
            ret=addr,
            total=(1000, 1002),
            file=file_of("/data/model.bin"),
        )
    )
    assert c.mapping == Mapping(addr, addr + 8192, "r--s", "/data/model.bin", 0x10000)
    assert c.args is not None
    assert (c.args["prot"], c.args["flags"], c.args["fd"]) == ("r--", "shared", 3)
    assert enr.shadow(PID).find(addr + 4096) == c.mapping


def test_file_mmap_without_a_file_is_not_named_by_its_fd(enr: Enricher) -> None:
    addr = 0x7F55_0000_0000
    c = enr.enrich(ev(nr=9, args=(0, 4096, 0x5, 0x12, 7, 0), ret=addr, total=(1000, 1001)))
    assert c.mapping == Mapping(addr, addr + 4096, "r-xp", UNNAMED_FILE, 0)
    assert UNNAMED_FILE == "[file]"
    assert c.args is not None
    assert c.args["flags"] == "private|fixed"


def test_deleted_file_keeps_the_kernels_name(enr: Enricher) -> None:
    addr = 0x7F55_0000_0000
    c = enr.enrich(
        ev(
            nr=9,
            args=(0, 4096, 0x1, 0x02, 5, 0),
            ret=addr,
            total=(1000, 1001),
            file=file_of("/tmp/scratch (deleted)"),
        )
    )
    assert c.mapping is not None and c.mapping.path == "/tmp/scratch (deleted)"


def test_one_fd_number_for_two_files_names_each_by_its_own(enr: Enricher) -> None:
    """ld.so maps a library, closes the fd, opens the next one on the same number: each
    mapping keeps the name the kernel gave it at its own mmap."""
    a, b = 0x7F55_0000_0000, 0x7F56_0000_0000
    libm = "/usr/lib/x86_64-linux-gnu/libm.so.6"
    libz = "/usr/lib/x86_64-linux-gnu/libz.so.1"
    enr.enrich(
        ev(nr=9, args=(0, 8192, 1, 0x02, 3, 0), ret=a, total=(1000, 1002), file=file_of(libm, 1))
    )
    enr.enrich(
        ev(nr=9, args=(0, 8192, 1, 0x02, 3, 0), ret=b, total=(1002, 1004), file=file_of(libz, 2))
    )
    sh = enr.shadow(PID)
    assert (sh.find(a).path, sh.find(b).path) == (libm, libz)  # type: ignore[union-attr]


def test_ld_so_split_of_a_library_keeps_its_name(enr: Enricher) -> None:
    """ld.so reserves the whole library with one mmap, then maps its segments over it with
    MAP_FIXED: every piece is named, none by an fd."""
    base = 0x7F60_0000_0000
    lib = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    enr.enrich(
        ev(nr=9, args=(0, 0x5000, 1, 0x802, 3, 0), ret=base, total=(1000, 1005), file=file_of(lib))
    )
    text = enr.enrich(
        ev(
            nr=9,
            args=(base + 0x1000, 0x2000, 5, 0x812, 3, 0x1000),
            ret=base + 0x1000,
            total=(1005, 1005),
            file=file_of(lib),
        )
    )
    assert text.mapping == Mapping(base + 0x1000, base + 0x3000, "r-xp", lib, 0x1000)
    assert [
        (m.perms, m.path, m.offset) for m in enr.shadow(PID).overlapping(base, base + 0x5000)
    ] == [
        ("r--p", lib, 0),
        ("r-xp", lib, 0x1000),
        ("r--p", lib, 0x3000),
    ]


def test_anonymous_mmap_stays_anonymous_whatever_file_the_kernel_names(enr: Enricher) -> None:
    """MAP_SHARED|MAP_ANONYMOUS is backed by a shmem file ("/dev/zero (deleted)"): still [anon]."""
    addr = 0x7F55_0000_0000
    c = enr.enrich(
        ev(
            nr=9,
            args=(0, 4096, 3, 0x21, MINUS_ONE_U64, 0),
            ret=addr,
            total=(1000, 1001),
            file=file_of("/dev/zero (deleted)"),
        )
    )
    assert c.mapping == Mapping(addr, addr + 4096, "rw-s", "[anon]", 0)


def test_munmap_names_the_region_from_the_shadow(enr: Enricher) -> None:
    addr = 0x7F12_3400_0000
    enr.enrich(ev(nr=9, args=(0, 1 << 20, 3, 0x22, MINUS_ONE_U64, 0), ret=addr, total=(1000, 1256)))
    c = enr.enrich(ev(nr=11, args=(addr, 1 << 20), ret=0, total=(1256, 1000), hiwater=(0, 1256)))
    assert c.cause == "munmap"
    assert c.ret == 0
    assert c.args == {"addr": hex(addr), "len": 1 << 20}
    assert c.mapping == Mapping(addr, addr + (1 << 20), "rw-p", "[anon]")
    assert c.hiwater_vm_kb_after == 1256 * 4
    # gone from the shadow afterwards
    assert enr.shadow(PID).find(addr) is None


def test_munmap_across_two_regions_names_both(enr: Enricher) -> None:
    a = 0x7F00_0000_0000 - 0x2000
    enr.enrich(ev(nr=9, args=(a, 0x2000, 3, 0x32, MINUS_ONE_U64, 0), ret=a, total=(1000, 1002)))
    c = enr.enrich(ev(nr=11, args=(a + 0x1000, 0x2000), ret=0, total=(1002, 1000)))
    assert c.mapping == Mapping(a + 0x1000, a + 0x3000, "rw-p", "[anon], /usr/lib/libc.so.6")


def test_munmap_of_unknown_region(enr: Enricher) -> None:
    c = enr.enrich(ev(nr=11, args=(0x1000_0000, 0x1000), ret=0, total=(1001, 1000)))
    assert c.mapping == Mapping(0x1000_0000, 0x1000_1000, "----", "[unknown]")


def test_brk_grow_and_shrink_use_the_shadow_heap(enr: Enricher) -> None:
    grow = enr.enrich(
        ev(nr=12, args=(HEAP.end + 0x21000,), ret=HEAP.end + 0x21000, total=(1000, 1033))
    )
    assert grow.cause == "brk"
    assert grow.args == {"brk": hex(HEAP.end + 0x21000)}
    assert grow.ret == HEAP.end + 0x21000
    assert grow.mapping == Mapping(HEAP.end, HEAP.end + 0x21000, "rw-p", "[heap]")
    assert enr.shadow(PID).by_path("[heap]") == Mapping(
        HEAP.start, HEAP.end + 0x21000, "rw-p", "[heap]"
    )
    shrink = enr.enrich(
        ev(
            nr=12,
            args=(HEAP.end + 0x1000,),
            ret=HEAP.end + 0x1000,
            total=(1033, 1001),
            hiwater=(0, 1033),
        )
    )
    assert shrink.mapping == Mapping(HEAP.end + 0x1000, HEAP.end + 0x21000, "rw-p", "[heap]")
    assert enr.shadow(PID).by_path("[heap]") == Mapping(
        HEAP.start, HEAP.end + 0x1000, "rw-p", "[heap]"
    )


def test_brk_without_a_known_heap_creates_one(fakes: Fakes) -> None:
    enr = Enricher(PAGE, fakes.read_maps, fakes.unwinder)
    enr.attach(PID, [])
    new_brk = 0x5555_6000_0100  # brk is not page aligned; the heap end is
    c = enr.enrich(ev(nr=12, args=(new_brk,), ret=new_brk, total=(1000, 1002)))
    assert c.mapping == Mapping(0x5555_5FFF_F000, 0x5555_6000_1000, "rw-p", "[heap]")
    assert enr.shadow(PID).by_path("[heap]") == c.mapping


def test_mremap_move_carries_the_old_name(enr: Enricher) -> None:
    old = 0x7F33_0000_0000
    new = 0x7F44_0000_0000
    enr.attach(PID, [Mapping(old, old + 0x4000, "rw-s", "/dev/shm/buf", 0x8000)])
    c = enr.enrich(ev(nr=25, args=(old, 0x4000, 0x10000, 1, 0), ret=new, total=(1000, 1012)))
    assert c.cause == "mremap"
    assert c.ret == new
    assert c.args == {
        "old_addr": hex(old),
        "old_len": 0x4000,
        "new_len": 0x10000,
        "flags": "maymove",
        "new_addr": "0x0",
    }
    assert c.mapping == Mapping(new, new + 0x10000, "rw-s", "/dev/shm/buf", 0x8000)
    sh = enr.shadow(PID)
    assert sh.find(old) is None
    assert sh.find(new + 0xFFFF) == c.mapping


def test_shmat_and_shmdt(enr: Enricher) -> None:
    at = 0x7F66_0000_0000
    c = enr.enrich(ev(nr=30, args=(42, 0, 0), ret=at, total=(1000, 1256)))
    assert c.cause == "shmat"
    assert c.args == {"shmid": 42, "addr": "0x0", "flags": "0x0"}
    assert c.ret == at
    assert c.mapping == Mapping(at, at + (1 << 20), "rw-s", "[shm]")
    d = enr.enrich(ev(nr=67, args=(at,), ret=0, total=(1256, 1000), hiwater=(0, 1256)))
    assert d.cause == "shmdt"
    assert d.args == {"addr": hex(at)}
    assert d.mapping == Mapping(at, at + (1 << 20), "rw-s", "[shm]")
    assert enr.shadow(PID).find(at) is None


def test_shmat_read_only_is_mapped_read_only(enr: Enricher) -> None:
    at = 0x7F66_0000_0000
    c = enr.enrich(ev(nr=30, args=(42, 0, 0o10000), ret=at, total=(1000, 1256)))
    assert c.args is not None
    assert c.args["flags"] == hex(0o10000)
    assert c.mapping == Mapping(at, at + (1 << 20), "r--s", "[shm]")


def test_map_shared_validate_is_shared(enr: Enricher) -> None:
    addr = 0x7F55_0000_0000
    c = enr.enrich(
        ev(
            nr=9,
            args=(0, 4096, 0x3, 0x03, 4, 0),
            ret=addr,
            total=(1000, 1001),
            file=file_of("/dev/shm/ring"),
        )
    )
    assert c.args is not None
    assert c.args["flags"] == "shared_validate"
    assert c.mapping == Mapping(addr, addr + 4096, "rw-s", "/dev/shm/ring", 0)


def test_stack_growth_in_a_page_fault_extends_the_stack_down(enr: Enricher) -> None:
    c = enr.enrich(ev(kind=EventKind.OTHER, nr=-1, total=(1000, 1002), stack=(33, 35)))
    assert c.kind == "change"
    assert c.cause == "stack-growth"
    assert c.syscall is None
    assert c.args is None
    assert c.ret is None
    assert c.mapping == Mapping(STACK.start - 0x2000, STACK.start, "rw-p", "[stack]")
    assert (c.stack_vm_kb_before, c.stack_vm_kb_after) == (132, 140)
    assert enr.shadow(PID).by_path("[stack]") == Mapping(
        STACK.start - 0x2000, STACK.end, "rw-p", "[stack]"
    )


def test_stack_growth_without_a_known_stack_uses_sp(fakes: Fakes) -> None:
    enr = Enricher(PAGE, fakes.read_maps, fakes.unwinder)
    c = enr.enrich(
        ev(kind=EventKind.OTHER, nr=-1, total=(10, 11), stack=(1, 2), user_sp=0x7FFF_0000_1234)
    )
    assert c.mapping == Mapping(0x7FFF_0000_1000, 0x7FFF_0000_2000, "rw-p", "[stack]")


def test_untraced_syscall(enr: Enricher) -> None:
    c = enr.enrich(ev(kind=EventKind.OTHER, nr=206, args=(128, 0x7FFF_0000), total=(1000, 1001)))
    assert c.cause == "syscall:io_setup"
    assert c.syscall == "io_setup"
    assert c.args is None
    assert c.mapping is None


def test_page_fault_that_is_no_stack_growth(enr: Enricher) -> None:
    c = enr.enrich(ev(kind=EventKind.OTHER, nr=-1, total=(1000, 1001)))
    assert (c.cause, c.syscall, c.mapping) == ("fault", None, None)


def test_unknown_syscall_number_is_named_by_number(enr: Enricher) -> None:
    c = enr.enrich(ev(kind=EventKind.OTHER, nr=999, total=(1000, 1001)))
    assert (c.cause, c.syscall) == ("syscall:syscall_999", "syscall_999")


def test_baseline_and_exit(enr: Enricher) -> None:
    b = enr.enrich(
        ev(kind=EventKind.BASELINE, nr=-1, total=(500, 500), hiwater=(600, 600), peak_before=600)
    )
    assert (b.kind, b.cause, b.mapping, b.syscall) == ("baseline", "baseline", None, None)
    assert (b.total_vm_kb_after, b.hiwater_vm_kb_after, b.kernel_peak_kb_before) == (
        2000,
        2400,
        2400,
    )
    x = enr.enrich(ev(kind=EventKind.EXIT, nr=-1, total=(500, 500)))
    assert (x.kind, x.cause, x.mapping) == ("exit", "exit", None)


def test_exec_rereads_the_maps(enr: Enricher, fakes: Fakes) -> None:
    new_bin = Mapping(0x5600_0000_0000, 0x5600_0000_4000, "r-xp", "/usr/bin/new", 0)
    fakes.maps_after_exec = [new_bin]
    c = enr.enrich(ev(kind=EventKind.EXEC, nr=59, args=(0x7FFF_1000,), ret=0, total=(5000, 600)))
    assert (c.kind, c.cause, c.syscall, c.ret, c.args) == ("exec", "execve", "execve", 0, None)
    assert fakes.maps_read == [PID]
    assert enr.shadow(PID).mappings() == [new_bin]


JOB = Mapping(0x5555_5555_0000, 0x5555_5555_8000, "r-xp", "/opt/job/bin/job", 0x1000)


def anon_mmap(**kw: Any) -> KernelEvent:
    return ev(
        nr=9,
        args=(0, 4096, 3, 0x22, MINUS_ONE_U64, 0),
        ret=0x7F00_1000_0000,
        total=(1000, 1001),
        **kw,
    )


def test_stack_is_unwound_against_the_shadow_address_space(enr: Enricher, fakes: Fakes) -> None:
    enr.shadow(PID).insert(JOB)
    data = Mapping(0x7F77_0000_0000, 0x7F77_0001_0000, "rw-p", "[anon]")
    enr.shadow(PID).insert(data)
    stack = snapshot(LIBC.start + 0x1A2B, JOB.start + 0x345, JOB.start + 0x10, data.start + 8)
    c = enr.enrich(anon_mmap(user_stack=stack))
    assert c.stack == (
        Frame(LIBC.start + 0x1A2B, None, None, LIBC.path, 0x28000 + 0x1A2B),
        Frame(JOB.start + 0x345, None, None, JOB.path, 0x1345),
        Frame(JOB.start + 0x10, None, None, JOB.path, 0x1010),
    )  # the data word is no frame: the unwinder stopped there
    assert fakes.unwinder.calls == [(stack, 64)]


def test_stack_resolves_after_the_process_is_gone(enr: Enricher, fakes: Fakes) -> None:
    """Nothing is read from /proc for a stack: what the shadow knows is enough."""
    enr.shadow(PID).insert(JOB)
    fakes.maps_after_exec = []  # /proc/PID/maps would be gone
    c = enr.enrich(anon_mmap(user_stack=snapshot(JOB.start + 0x20, LIBC.start + 0x30)))
    assert c.stack is not None
    assert [(f.module, f.module_offset) for f in c.stack] == [
        (JOB.path, 0x1020),
        (LIBC.path, 0x28030),
    ]
    assert fakes.maps_read == []


def test_stack_uses_the_address_space_of_its_own_process(enr: Enricher) -> None:
    other = 2000
    enr.attach(other, [Mapping(LIBC.start, LIBC.end, "r-xp", "/other/libc.so.6", 0)])
    stack = snapshot(LIBC.start + 0x10)
    mine = enr.enrich(anon_mmap(user_stack=stack))
    theirs = enr.enrich(anon_mmap(user_stack=stack, pid=other))
    assert mine.stack is not None and theirs.stack is not None
    assert (mine.stack[0].module, theirs.stack[0].module) == (LIBC.path, "/other/libc.so.6")
    assert enr.unwind(other, stack) == list(theirs.stack)


def test_a_library_mapped_by_a_record_resolves_the_next_stacks(enr: Enricher) -> None:
    lib = "/usr/lib/x86_64-linux-gnu/libz.so.1"
    at = 0x7F55_0000_0000
    enr.enrich(
        ev(
            nr=9,
            args=(0, 0x4000, 5, 0x02, 3, 0x2000),
            ret=at,
            total=(1000, 1004),
            file=file_of(lib),
        )
    )
    c = enr.enrich(anon_mmap(user_stack=snapshot(at + 0x100)))
    assert c.stack == (Frame(at + 0x100, None, None, lib, 0x2100),)


def test_exec_stack_is_unwound_in_the_new_image(enr: Enricher, fakes: Fakes) -> None:
    new_bin = Mapping(0x5600_0000_0000, 0x5600_0000_4000, "r-xp", "/usr/bin/new", 0)
    fakes.maps_after_exec = [new_bin]
    c = enr.enrich(
        ev(
            kind=EventKind.EXEC,
            nr=59,
            ret=0,
            total=(5000, 600),
            user_stack=snapshot(new_bin.start + 0x40),
        )
    )
    assert c.stack == (Frame(new_bin.start + 0x40, None, None, "/usr/bin/new", 0x40),)


def test_max_frames_is_passed_to_the_unwinder(fakes: Fakes) -> None:
    enr = Enricher(PAGE, fakes.read_maps, fakes.unwinder, max_frames=2)
    enr.attach(PID, [JOB])
    c = enr.enrich(anon_mmap(user_stack=snapshot(*(JOB.start + i for i in range(5)))))
    assert c.stack is not None and len(c.stack) == 2
    assert fakes.unwinder.calls[-1][1] == 2


def test_no_stack_without_a_snapshot_or_an_unwinder(fakes: Fakes) -> None:
    enr = Enricher(PAGE, fakes.read_maps)
    enr.attach(PID, [LIBC])
    assert enr.enrich(anon_mmap(user_stack=snapshot(LIBC.start))).stack is None
    assert enr.unwind(PID, snapshot(LIBC.start)) == []
    enr2 = Enricher(PAGE, fakes.read_maps, fakes.unwinder)
    assert enr2.enrich(anon_mmap()).stack is None
    assert fakes.unwinder.calls == []


def test_an_empty_unwind_is_an_empty_stack(enr: Enricher) -> None:
    """A snapshot whose ip is in no mapping: no garbage frame, and no frame at all."""
    c = enr.enrich(anon_mmap(user_stack=snapshot(0x1234)))
    assert c.stack == ()


def test_failed_mmap_has_no_mapping(enr: Enricher) -> None:
    before = enr.shadow(PID).mappings()
    c = enr.enrich(
        ev(nr=9, args=(0, 1 << 40, 3, 0x22, MINUS_ONE_U64, 0), ret=-12, total=(1000, 1000))
    )
    assert c.ret == -12
    assert c.mapping is None
    assert c.cause == "mmap"
    assert enr.shadow(PID).mappings() == before


def test_failed_munmap_leaves_the_shadow(enr: Enricher) -> None:
    c = enr.enrich(ev(nr=11, args=(LIBC.start, 0x1000), ret=-22, total=(1000, 1000)))
    assert (c.ret, c.mapping) == (-22, None)
    assert enr.shadow(PID).find(LIBC.start) == LIBC


def test_syscall_without_ret_yet(enr: Enricher) -> None:
    """A first part of a call sent before the exit (no FLAG_HAS_RET): ret None, no mmap mapping."""
    c = enr.enrich(
        ev(nr=9, args=(0, 4096, 3, 0x22, MINUS_ONE_U64, 0), ret=None, total=(1000, 1001))
    )
    assert c.ret is None
    assert c.mapping is None


def test_forget_drops_the_shadow(enr: Enricher) -> None:
    enr.forget(PID)
    assert len(enr.shadow(PID)) == 0


def _kb(c: Any) -> tuple[int, int]:
    return c.total_vm_kb_before, c.total_vm_kb_after


def test_units_follow_the_page_size(fakes: Fakes) -> None:
    enr = Enricher(16384, fakes.read_maps, fakes.unwinder)
    c = enr.enrich(ev(kind=EventKind.OTHER, nr=206, total=(10, 12)))
    assert _kb(c) == (160, 192)
