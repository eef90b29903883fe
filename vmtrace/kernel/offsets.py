"""Offsets of the kernel fields vmtrace's BPF programs read, for the running kernel.

The BPF C code is compiled against whatever headers are available (possibly another kernel's),
so every kernel struct it touches is read at an offset given here as a -D constant.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

from vmtrace import bootcache
from vmtrace.errors import EnvironmentProblem
from vmtrace.kernel.btf import DEFAULT_PATH, Btf

DEFAULT_CONFIG_PATH = "/proc/config.gz"

# x86_64 THREAD_SIZE is PAGE_SIZE << (2 + KASAN_STACK_ORDER) (arch/x86/include/asm/page_64_types.h).
_X86_64_THREAD_SIZE = 16384
# arch/x86/include/asm/thread_info.h (6.18): TOP_OF_KERNEL_STACK_PADDING is 2*8 on x86_64 with
# CONFIG_X86_FRED, 0 without; task_pt_regs() sits that far below the top of the stack.
_FRED_STACK_PADDING = 16

# The kernel fields the BPF programs read: VMT_OFF_<NAME> = offsetof(struct, member).
MEMBERS: dict[str, tuple[str, str]] = {
    "task_mm": ("task_struct", "mm"),
    "task_stack": ("task_struct", "stack"),
    "task_tgid": ("task_struct", "tgid"),
    "task_pid": ("task_struct", "pid"),
    "task_comm": ("task_struct", "comm"),
    "task_exit_code": ("task_struct", "exit_code"),
    "mm_rss_stat": ("mm_struct", "rss_stat"),
    "mm_total_vm": ("mm_struct", "total_vm"),
    "mm_hiwater_vm": ("mm_struct", "hiwater_vm"),
    "mm_stack_vm": ("mm_struct", "stack_vm"),
    "mm_hiwater_rss": ("mm_struct", "hiwater_rss"),
    "pt_regs_orig_ax": ("pt_regs", "orig_ax"),
    "pt_regs_di": ("pt_regs", "di"),
    "pt_regs_si": ("pt_regs", "si"),
    "pt_regs_dx": ("pt_regs", "dx"),
    "pt_regs_r10": ("pt_regs", "r10"),
    "pt_regs_r8": ("pt_regs", "r8"),
    "pt_regs_r9": ("pt_regs", "r9"),
    "pt_regs_sp": ("pt_regs", "sp"),
    "pt_regs_ip": ("pt_regs", "ip"),
    "pt_regs_bp": ("pt_regs", "bp"),
    "mm_brk": ("mm_struct", "brk"),
    "binprm_filename": ("linux_binprm", "filename"),
    # the file an mmap maps, named by the kernel at the change: fd -> file -> dentry walk
    "task_files": ("task_struct", "files"),
    "task_signal": ("task_struct", "signal"),
    "task_fs": ("task_struct", "fs"),
    "fs_root_dentry": ("fs_struct", "root.dentry"),
    "fs_root_mnt": ("fs_struct", "root.mnt"),
    "signal_live": ("signal_struct", "live"),
    "files_fdt": ("files_struct", "fdt"),
    "fdtable_fd": ("fdtable", "fd"),
    "fdtable_max_fds": ("fdtable", "max_fds"),
    "file_dentry": ("file", "f_path.dentry"),
    "file_mnt": ("file", "f_path.mnt"),
    "file_inode": ("file", "f_inode"),
    "dentry_name": ("dentry", "d_name.name"),
    "dentry_parent": ("dentry", "d_parent"),
    "inode_ino": ("inode", "i_ino"),
    "inode_sb": ("inode", "i_sb"),
    "sb_dev": ("super_block", "s_dev"),
    "mount_mnt": ("mount", "mnt"),
    "mount_parent": ("mount", "mnt_parent"),
    "mount_mountpoint": ("mount", "mnt_mountpoint"),
    "vfsmount_root": ("vfsmount", "mnt_root"),
    # a task's number in vmtrace's PID namespace: task -> struct pid -> numbers[level]
    "task_group_leader": ("task_struct", "group_leader"),
    "task_thread_pid": ("task_struct", "thread_pid"),
    "pid_level": ("pid", "level"),
    "pid_numbers": ("pid", "numbers"),
    "upid_nr": ("upid", "nr"),
    "upid_ns": ("upid", "ns"),
    "pidns_inum": ("pid_namespace", "ns.inum"),
    # the free range a new mapping gets, from the raw vm_unmapped_area tracepoint
    "unmapped_info_length": ("vm_unmapped_area_info", "length"),
}


@dataclass(frozen=True)
class KernelOffsets:
    """Byte offsets and sizes, as the BPF programs receive them (VMT_OFF_* constants)."""

    task_mm: int
    task_stack: int
    task_tgid: int
    task_pid: int
    task_comm: int
    task_exit_code: int
    mm_rss_stat: int
    rss_stride: int
    rss_count: int
    mm_total_vm: int
    mm_hiwater_vm: int
    mm_stack_vm: int
    mm_hiwater_rss: int
    pt_regs_size: int
    pt_regs_orig_ax: int
    pt_regs_di: int
    pt_regs_si: int
    pt_regs_dx: int
    pt_regs_r10: int
    pt_regs_r8: int
    pt_regs_r9: int
    pt_regs_sp: int
    pt_regs_ip: int
    pt_regs_bp: int
    mm_brk: int
    binprm_filename: int
    task_files: int
    task_signal: int
    task_fs: int
    fs_root_dentry: int
    fs_root_mnt: int
    signal_live: int
    files_fdt: int
    fdtable_fd: int
    fdtable_max_fds: int
    file_dentry: int
    file_mnt: int
    file_inode: int
    dentry_name: int
    dentry_parent: int
    inode_ino: int
    inode_sb: int
    sb_dev: int
    mount_mnt: int
    mount_parent: int
    mount_mountpoint: int
    vfsmount_root: int
    task_group_leader: int
    task_thread_pid: int
    pid_level: int
    pid_numbers: int
    upid_nr: int
    upid_ns: int
    upid_size: int
    pidns_inum: int
    unmapped_info_length: int
    lock_tp_args: int  # arguments of the raw mmap_lock tracepoints (their bools come last)
    thread_size: int
    stack_top_padding: int

    def cflags(self) -> list[str]:
        return [f"-DVMT_OFF_{f.name.upper()}={getattr(self, f.name)}" for f in fields(self)]


def read_kernel_config(path: str = DEFAULT_CONFIG_PATH) -> dict[str, str] | None:
    """CONFIG_* options of a kernel config file (gzip or plain), or None if it does not exist."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise EnvironmentProblem(
            f"failed to read the kernel config {path}: {e.strerror or e}"
        ) from e
    try:
        text = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as e:
        raise EnvironmentProblem(f"failed to read the kernel config {path}: {e}") from e
    config: dict[str, str] = {}
    for line in text.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("CONFIG_"):
            config[key] = value
    return config


def offsets_from_btf(btf: Btf, config: dict[str, str] | None) -> KernelOffsets:
    """The offsets for an x86_64 kernel described by `btf`, with `config` (None: unknown)."""
    cfg = config or {}
    # Without a config we cannot tell; the defaults are those of distribution kernels.
    kasan = cfg.get("CONFIG_KASAN") == "y"
    fred = cfg.get("CONFIG_X86_FRED") == "y"
    values = {name: btf.member_offset(s, m) for name, (s, m) in MEMBERS.items()}
    # RSS counters: an array of struct percpu_counter since 6.2 (read its shared `count`,
    # as /proc does), before that struct mm_rss_stat { atomic_long_t count[]; }.
    if btf.has_struct("mm_rss_stat"):
        values["rss_stride"] = 8
        values["rss_count"] = btf.member_offset("mm_rss_stat", "count")
    else:
        values["rss_stride"] = btf.struct_size("percpu_counter")
        values["rss_count"] = btf.member_offset("percpu_counter", "count")
    return KernelOffsets(
        pt_regs_size=btf.struct_size("pt_regs"),
        upid_size=btf.struct_size("upid"),
        # (mm, write) since the memcg path left the tracepoint; (mm, memcg_path, write) before
        lock_tp_args=btf.tracepoint_arg_count("mmap_lock_released") or 2,
        thread_size=_X86_64_THREAD_SIZE * (2 if kasan else 1),
        stack_top_padding=_FRED_STACK_PADDING if fred else 0,
        **values,
    )


def read_offsets(
    btf_path: str = DEFAULT_PATH,
    config_path: str = DEFAULT_CONFIG_PATH,
    *,
    machine: str | None = None,
    btf: Btf | None = None,
) -> KernelOffsets:
    """KernelOffsets of the running kernel; `machine` overrides `uname -m` for tests; `btf`:
    the kernel's BTF already read from `btf_path` (reading it again costs attach time)."""
    arch = machine if machine is not None else os.uname().machine
    if arch != "x86_64":
        raise EnvironmentProblem(
            f"failed to compute kernel offsets: architecture {arch} is not supported "
            "(vmtrace reads x86_64 registers and stack layout; it runs on x86_64 only)"
        )
    if btf is None:
        btf = Btf.from_file(btf_path)
    return offsets_from_btf(btf, read_kernel_config(config_path))


OFFSETS_CACHE = os.path.join(bootcache.RUN_DIR, "offsets.json")


def boot_offsets(
    btf_path: str = DEFAULT_PATH,
    load: Callable[[], KernelOffsets] | None = None,
    path: str = OFFSETS_CACHE,
) -> KernelOffsets:
    """The running kernel's offsets, as read_offsets() gives them (or `load`), read once per
    boot: the kernel's BTF and config cannot change before the next one, and indexing the
    BTF costs every start about a tenth of a second before compiling can begin. The key
    names the boot, this module's text (the members it asks for) and the BTF file."""
    key = f"{bootcache.boot_id()}|{_module_digest()}|{btf_path}"
    entry = bootcache.read(path).get(key)
    if isinstance(entry, dict):
        with contextlib.suppress(TypeError):
            cached = KernelOffsets(**entry)
            if all(type(getattr(cached, f.name)) is int for f in fields(cached)):
                return cached
    offsets = load() if load is not None else read_offsets(btf_path)
    # one kernel per boot: the previous boots' entries are dropped, not accumulated
    bootcache.write(path, {key: asdict(offsets)})
    return offsets


def _module_digest() -> str:
    with open(__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]
