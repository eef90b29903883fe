"""x86_64 syscall numbers and the decoding of memory-syscall arguments (pure)."""

from __future__ import annotations

# Traced by the backends; names double as the `cause` of the changes they make.
TRACED: dict[int, str] = {
    9: "mmap",
    11: "munmap",
    12: "brk",
    25: "mremap",
    30: "shmat",
    59: "execve",
    67: "shmdt",
}

# Untraced syscalls that can still change total_vm (seen through mmap_lock releases);
# the rest are named by number.
_OTHER: dict[int, str] = {
    0: "read",
    1: "write",
    10: "mprotect",
    16: "ioctl",
    17: "pread64",
    26: "msync",
    27: "mincore",
    28: "madvise",
    56: "clone",
    57: "fork",
    58: "vfork",
    60: "exit",
    149: "mlock",
    150: "munlock",
    151: "mlockall",
    152: "munlockall",
    157: "prctl",
    206: "io_setup",
    207: "io_destroy",
    216: "remap_file_pages",
    231: "exit_group",
    237: "mbind",
    322: "execveat",
    323: "userfaultfd",
    325: "mlock2",
    329: "pkey_mprotect",
    425: "io_uring_setup",
    435: "clone3",
    440: "process_madvise",
}

PAGE_FAULT_NR = -1

PROT_READ, PROT_WRITE, PROT_EXEC = 0x1, 0x2, 0x4

_MAP_FLAGS: tuple[tuple[int, str], ...] = (
    (0x01, "shared"),
    (0x02, "private"),
    (0x03, "shared_validate"),
    (0x10, "fixed"),
    (0x20, "anon"),
    (0x100, "growsdown"),
    (0x2000, "locked"),
    (0x4000, "noreserve"),
    (0x8000, "populate"),
    (0x10000, "nonblock"),
    (0x20000, "stack"),
    (0x40000, "hugetlb"),
    (0x100000, "fixed_noreplace"),
)
MAP_ANONYMOUS = 0x20
MAP_FIXED = 0x10
MAP_SHARED = 0x01  # also set in MAP_SHARED_VALIDATE (0x03)
SHM_RDONLY = 0o10000

_MREMAP_FLAGS: tuple[tuple[int, str], ...] = ((1, "maymove"), (2, "fixed"), (4, "dontunmap"))


def syscall_name(nr: int) -> str | None:
    """The name of syscall `nr`, None in a page fault, `syscall_NR` if unknown."""
    if nr == PAGE_FAULT_NR or nr < 0:
        return None
    return TRACED.get(nr) or _OTHER.get(nr) or f"syscall_{nr}"


def prot_letters(prot: int) -> str:
    return (
        ("r" if prot & PROT_READ else "-")
        + ("w" if prot & PROT_WRITE else "-")
        + ("x" if prot & PROT_EXEC else "-")
    )


def map_flag_names(flags: int) -> str:
    kind = flags & 0x03
    names = [n for bit, n in _MAP_FLAGS[:3] if kind == bit]
    names += [n for bit, n in _MAP_FLAGS[3:] if flags & bit]
    return "|".join(names) if names else hex(flags)


def mremap_flag_names(flags: int) -> str:
    names = [n for bit, n in _MREMAP_FLAGS if flags & bit]
    return "|".join(names) if names else "0"


def page_align(n: int, page_size: int) -> int:
    return (n + page_size - 1) & ~(page_size - 1)


def decode_args(name: str | None, raw: tuple[int, ...]) -> dict[str, object] | None:
    """Arguments of a memory syscall as the log shows them (addresses hex, sizes in bytes)."""
    if name == "mmap":
        return {
            "addr": hex(raw[0]),
            "len": raw[1],
            "prot": prot_letters(raw[2]),
            "flags": map_flag_names(raw[3]),
            "fd": fd_of(raw[4]),
            "offset": raw[5],
        }
    if name == "munmap":
        return {"addr": hex(raw[0]), "len": raw[1]}
    if name == "brk":
        return {"brk": hex(raw[0])}
    if name == "mremap":
        return {
            "old_addr": hex(raw[0]),
            "old_len": raw[1],
            "new_len": raw[2],
            "flags": mremap_flag_names(raw[3]),
            "new_addr": hex(raw[4]),
        }
    if name == "shmat":
        return {"shmid": raw[0], "addr": hex(raw[1]), "flags": hex(raw[2])}
    if name == "shmdt":
        return {"addr": hex(raw[0])}
    return None


def fd_of(raw_fd: int) -> int:
    """mmap's fd argument as the int the caller passed (-1 for anonymous maps)."""
    v = raw_fd & 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def decode_ret(name: str | None, ret_raw: int) -> int:
    """Return values: -errno stays negative; addresses (mmap, mremap, shmat, brk) unsigned."""
    if ret_raw < 0 and ret_raw >= -4095:
        return ret_raw
    if name in ("mmap", "mremap", "shmat", "brk"):
        return ret_raw & 0xFFFFFFFFFFFFFFFF
    return ret_raw
