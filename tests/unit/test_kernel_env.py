"""Headers choice, tracefs, privileges and offsets, on temporary trees and fake /proc files."""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import os
import re
from pathlib import Path
from types import ModuleType

import pytest

from vmtrace.errors import EnvironmentProblem
from vmtrace.kernel import headers, tracefs
from vmtrace.kernel.headers import choose_headers
from vmtrace.kernel.offsets import KernelOffsets, read_kernel_config, read_offsets
from vmtrace.kernel.privileges import check_tracing_privileges
from vmtrace.kernel.tracefs import find_tracefs, missing_tracepoints, tracefs_root


def _load_btf_test_module() -> ModuleType:
    # By path, so that it works whatever pytest's import mode and package layout.
    path = Path(__file__).with_name("test_btf.py")
    spec = importlib.util.spec_from_file_location("_vmtrace_test_btf", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------ headers


def _write(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _debian_trees(src: Path, version: str) -> None:
    arch = src / f"linux-headers-{version}-amd64"
    common = src / f"linux-headers-{version}-common"
    _write(arch / ".config", "CONFIG_X=y\n")
    _write(arch / "Makefile", "arch makefile\n")
    _write(arch / "include/generated/autoconf.h", "generated\n")
    _write(arch / "arch/x86/include/generated/asm/foo.h", "arch generated\n")
    _write(common / "Makefile", "common makefile\n")
    _write(common / "include/linux/sched.h", "sched\n")
    _write(common / "arch/x86/include/asm/ptrace.h", "ptrace\n")
    _write(common / "arch/arm64/include/asm/ptrace.h", "arm\n")
    kbuild = src.parent / "lib/kbuild/scripts"
    kbuild.mkdir(parents=True, exist_ok=True)
    for tree in (arch, common):
        (tree / "scripts").symlink_to(os.path.relpath(kbuild, tree))


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path, Path]:
    src = tmp_path / "usr/src"
    modules = tmp_path / "lib/modules"
    modules.mkdir(parents=True)
    _debian_trees(src, "6.1.0-56")
    return src, modules, tmp_path / "cache"


def test_own_build_tree_is_left_to_bcc(trees: tuple[Path, Path, Path]) -> None:
    src, modules, cache = trees
    (modules / "6.18.44/build").mkdir(parents=True)
    choice = choose_headers(
        "6.18.44", str(cache), src_root=str(src), modules_root=str(modules), machine="x86_64"
    )
    assert choice.kernel_source is None
    assert str(modules / "6.18.44/build") in choice.description
    assert not cache.exists()


def test_generic_trees_are_merged(trees: tuple[Path, Path, Path]) -> None:
    src, modules, cache = trees
    choice = choose_headers(
        "6.18.44", str(cache), src_root=str(src), modules_root=str(modules), machine="x86_64"
    )
    merged = cache / "linux-headers-6.1.0-56"
    assert choice.kernel_source == str(merged)
    assert choice.description == (
        f"no headers for 6.18.44; using Debian's 6.1.0-56 generic headers merged at {merged} "
        "(struct layouts come from BTF)"
    )
    # Present in both as files: the -amd64 one wins.
    assert (merged / "Makefile").read_text() == "arch makefile\n"
    # Directories present in both are real directories, merged.
    for d in ("include", "arch", "arch/x86", "arch/x86/include"):
        assert (merged / d).is_dir() and not (merged / d).is_symlink()
    assert (merged / "include/generated/autoconf.h").read_text() == "generated\n"
    assert (merged / "include/linux").is_symlink()
    assert (merged / "include/linux/sched.h").read_text() == "sched\n"
    assert (merged / "arch/x86/include/asm/ptrace.h").read_text() == "ptrace\n"
    assert (merged / "arch/x86/include/generated/asm/foo.h").read_text() == "arch generated\n"
    assert (merged / "arch/arm64").is_symlink()
    assert (merged / ".config").read_text() == "CONFIG_X=y\n"
    # Debian's relative symlinks keep resolving through the farm.
    assert (merged / "scripts").is_dir()
    # Nothing left behind but the tree itself.
    assert os.listdir(cache) == ["linux-headers-6.1.0-56"]
    assert not list(modules.iterdir())


def test_merge_is_idempotent(trees: tuple[Path, Path, Path]) -> None:
    src, modules, cache = trees
    kw = {"src_root": str(src), "modules_root": str(modules), "machine": "x86_64"}
    first = choose_headers("6.18.44", str(cache), **kw)
    marker = cache / "linux-headers-6.1.0-56" / "include" / "marker"
    marker.write_text("kept")
    second = choose_headers("6.18.44", str(cache), **kw)
    assert first == second
    assert marker.read_text() == "kept"
    assert os.listdir(cache) == ["linux-headers-6.1.0-56"]


def test_lost_race_uses_the_other_tree(
    trees: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, modules, cache = trees
    real_merge = headers._merge

    other = cache / "linux-headers-6.1.0-56"

    def merge_then_someone_else_finishes(dst: str, a: str, c: str) -> None:
        real_merge(dst, a, c)  # recurses through this wrapper
        if not other.exists():
            other.mkdir()
            (other / "theirs").write_text("")

    monkeypatch.setattr(headers, "_merge", merge_then_someone_else_finishes)
    choice = choose_headers(
        "6.18.44", str(cache), src_root=str(src), modules_root=str(modules), machine="x86_64"
    )
    assert choice.kernel_source == str(cache / "linux-headers-6.1.0-56")
    assert os.listdir(cache) == ["linux-headers-6.1.0-56"]
    assert (cache / "linux-headers-6.1.0-56" / "theirs").exists()


def test_newest_complete_generic_version_is_chosen(trees: tuple[Path, Path, Path]) -> None:
    src, modules, cache = trees
    _debian_trees(src, "6.1.0-9")
    _debian_trees(src, "6.12.12+bpo")
    _debian_trees(src, "6.13.0-1-cloud")  # not generic
    (src / "linux-headers-6.14.0-1-amd64").mkdir()  # no -common sibling
    choice = choose_headers(
        "6.18.44", str(cache), src_root=str(src), modules_root=str(modules), machine="x86_64"
    )
    assert choice.kernel_source == str(cache / "linux-headers-6.12.12+bpo")


def test_no_tree_is_an_environment_problem(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "linux-headers-6.1.0-56-common").mkdir()
    with pytest.raises(EnvironmentProblem) as e:
        choose_headers(
            "6.18.44",
            str(tmp_path / "cache"),
            src_root=str(src),
            modules_root=str(tmp_path / "modules"),
            machine="x86_64",
        )
    assert str(e.value) == (
        f"failed to find kernel headers for bcc: none for 6.18.44 and no generic tree under "
        f"{src} (fix: apt-get install linux-headers-amd64)"
    )


def test_unwritable_cache_is_an_environment_problem(trees: tuple[Path, Path, Path]) -> None:
    src, modules, _ = trees
    blocker = src.parent / "file"
    blocker.write_text("")
    with pytest.raises(EnvironmentProblem, match="failed to prepare kernel headers for bcc"):
        choose_headers(
            "6.18.44",
            str(blocker / "cache"),
            src_root=str(src),
            modules_root=str(modules),
            machine="x86_64",
        )


# ------------------------------------------------------------------------ tracefs

MOUNTS = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
nodev /sys/kernel/debug debugfs rw,relatime 0 0
tracefs /sys/kernel/debug/tracing tracefs rw,relatime 0 0
nodev /sys/kernel/tracing tracefs rw,relatime 0 0
"""


def test_tracefs_prefers_sys_kernel_tracing(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    assert tracefs_root(mounts_path=str(mounts)) == "/sys/kernel/tracing"


def test_tracefs_under_debugfs_and_elsewhere(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("\n".join(MOUNTS.splitlines()[:4]) + "\n")
    assert find_tracefs(str(mounts)) == "/sys/kernel/debug/tracing"
    mounts.write_text("none /my\\040traces tracefs rw 0 0\n")
    assert find_tracefs(str(mounts)) == "/my traces"


def test_tracefs_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS.splitlines()[0] + "\n")
    expected = re.escape(
        "failed to find tracefs: not mounted (fix: mount -t tracefs nodev /sys/kernel/tracing)"
    )
    with pytest.raises(EnvironmentProblem, match=expected):
        tracefs_root(mount_if_missing=False, mounts_path=str(mounts), euid=0)
    with pytest.raises(EnvironmentProblem, match=expected):
        tracefs_root(mounts_path=str(mounts), euid=1000)

    mounted: list[str] = []
    monkeypatch.setattr(tracefs, "_mount_tracefs", mounted.append)
    target = str(tmp_path / "tracing")
    assert tracefs_root(mounts_path=str(mounts), mount_point=target, euid=0) == target
    assert mounted == [target]


def test_unreadable_mounts(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentProblem, match="failed to find tracefs: cannot read"):
        find_tracefs(str(tmp_path / "nope"))


def test_missing_tracepoints(tmp_path: Path) -> None:
    for tp in ("syscalls/sys_enter_mmap", "mmap_lock/mmap_lock_released"):
        (tmp_path / "events" / tp).mkdir(parents=True)
    names = [
        "syscalls:sys_enter_mmap",
        "syscalls:sys_exit_mmap",
        "mmap_lock:mmap_lock_released",
        "kmem:rss_stat",
    ]
    assert missing_tracepoints(str(tmp_path), names) == ["syscalls:sys_exit_mmap", "kmem:rss_stat"]
    assert missing_tracepoints(str(tmp_path), iter(["syscalls:sys_enter_mmap"])) == []
    with pytest.raises(ValueError, match="category:event"):
        missing_tracepoints(str(tmp_path), ["sys_enter_mmap"])


# ------------------------------------------------------------------------ privileges


def _status(tmp_path: Path, cap_eff: int) -> str:
    path = tmp_path / "status"
    path.write_text(f"Name:\tpython3\nUid:\t1000\t1000\t1000\t1000\nCapEff:\t{cap_eff:016x}\n")
    return str(path)


def test_root_needs_no_capabilities(tmp_path: Path) -> None:
    check_tracing_privileges(_status(tmp_path, 0), euid=0)
    check_tracing_privileges(str(tmp_path / "unread"), euid=0)


@pytest.mark.parametrize("caps", [(1 << 38) | (1 << 39), 1 << 21, 0x1FFFFFFFFFF])
def test_capabilities_suffice(tmp_path: Path, caps: int) -> None:
    check_tracing_privileges(_status(tmp_path, caps), euid=1000)


@pytest.mark.parametrize(
    ("caps", "missing"),
    [(1 << 38, "CAP_BPF"), (1 << 39, "CAP_PERFMON"), (0, "CAP_BPF, CAP_PERFMON")],
)
def test_missing_capabilities_are_named(tmp_path: Path, caps: int, missing: str) -> None:
    with pytest.raises(EnvironmentProblem) as e:
        check_tracing_privileges(_status(tmp_path, caps), euid=1000)
    assert str(e.value) == (
        "failed to trace: needs root or CAP_BPF and CAP_PERFMON "
        f"(missing: {missing}) (fix: run with sudo)"
    )


def test_bad_status_file(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentProblem, match="failed to check privileges: cannot read"):
        check_tracing_privileges(str(tmp_path / "nope"), euid=1000)
    path = tmp_path / "status"
    path.write_text("Name:\tx\n")
    with pytest.raises(EnvironmentProblem, match="no CapEff"):
        check_tracing_privileges(str(path), euid=1000)
    path.write_text("CapEff:\tzz\n")
    with pytest.raises(EnvironmentProblem, match="malformed CapEff"):
        check_tracing_privileges(str(path), euid=1000)


# ------------------------------------------------------------------------ offsets


def test_cflags_naming() -> None:
    names = [f.name for f in dataclasses.fields(KernelOffsets)]
    offsets = KernelOffsets(**{n: i for i, n in enumerate(names)})
    flags = offsets.cflags()
    assert flags[0] == "-DVMT_OFF_TASK_MM=0"
    assert f"-DVMT_OFF_MM_TOTAL_VM={names.index('mm_total_vm')}" in flags
    assert f"-DVMT_OFF_PT_REGS_ORIG_AX={names.index('pt_regs_orig_ax')}" in flags
    assert f"-DVMT_OFF_DENTRY_PARENT={names.index('dentry_parent')}" in flags
    assert flags[-1] == f"-DVMT_OFF_STACK_TOP_PADDING={len(names) - 1}"
    assert len(flags) == len(names)
    # every offset the BPF sources read is one of these
    used = set()
    for src in (Path(__file__).resolve().parents[2] / "bpf").glob("*.[ch]"):
        used |= set(re.findall(r"VMT_OFF_([A-Z0-9_]+)", src.read_text()))
    assert used <= {n.upper() for n in names}


def _kernel_btf(path: Path) -> None:
    t = _load_btf_test_module()
    b = t.BtfBuilder()
    ulong = b.add_int("long unsigned int", 8)
    ptr = b.add_ref(t.PTR, "", ulong)
    pid_t = b.add_int("int", 4)
    b.add_composite(
        t.STRUCT,
        "task_struct",
        2048,
        [("stack", ptr, 256), ("mm", ptr, 9088), ("pid", pid_t, 10112), ("tgid", pid_t, 10144),
         ("comm", ulong, 1500 * 8), ("exit_code", pid_t, 1200 * 8),
         ("files", ptr, 1824 * 8), ("signal", ptr, 1848 * 8), ("fs", ptr, 1816 * 8),
         ("group_leader", ptr, 1328 * 8), ("thread_pid", ptr, 1368 * 8)],
    )  # fmt: skip
    uint = b.add_int("unsigned int", 4)
    upid = b.add_composite(t.STRUCT, "upid", 16, [("nr", pid_t, 0), ("ns", ptr, 64)])
    b.add_composite(t.STRUCT, "pid", 160, [("level", uint, 32), ("numbers", upid, 144 * 8)])
    ns_common = b.add_composite(t.STRUCT, "ns", 24, [("stashed", ptr, 0), ("inum", uint, 128)])
    b.add_composite(t.STRUCT, "pid_namespace", 200, [("level", uint, 0), ("ns", ns_common, 960)])
    b.add_composite(t.STRUCT, "linux_binprm", 256, [("filename", ptr, 96 * 8)])
    b.add_composite(t.STRUCT, "signal_struct", 64, [("sigcnt", pid_t, 0), ("live", pid_t, 32)])
    b.add_composite(t.STRUCT, "files_struct", 64, [("count", pid_t, 0), ("fdt", ptr, 256)])
    b.add_composite(t.STRUCT, "fdtable", 64, [("max_fds", pid_t, 0), ("fd", ptr, 64)])
    path_t = b.add_composite(t.STRUCT, "path", 16, [("mnt", ptr, 0), ("dentry", ptr, 64)])
    b.add_composite(t.STRUCT, "fs_struct", 64, [("users", pid_t, 0), ("root", path_t, 24 * 8)])
    b.add_composite(t.STRUCT, "file", 256, [("f_inode", ptr, 256), ("f_path", path_t, 512)])
    qstr = b.add_composite(t.STRUCT, "qstr", 16, [("hash_len", ulong, 0), ("name", ptr, 64)])
    b.add_composite(t.STRUCT, "dentry", 256, [("d_parent", ptr, 192), ("d_name", qstr, 256)])
    b.add_composite(t.STRUCT, "inode", 256, [("i_sb", ptr, 320), ("i_ino", ulong, 512)])
    b.add_composite(t.STRUCT, "super_block", 256, [("s_dev", pid_t, 128)])
    vfsmount = b.add_composite(t.STRUCT, "vfsmount", 32, [("mnt_root", ptr, 0)])
    b.add_composite(
        t.STRUCT,
        "mount",
        256,
        [("mnt_parent", ptr, 128), ("mnt_mountpoint", ptr, 192), ("mnt", vfsmount, 256)],
    )
    s64 = b.add_int("long long int", 8)
    b.add_composite(t.STRUCT, "percpu_counter", 40, [("lock", ulong, 0), ("count", s64, 64)])
    anon = b.add_composite(
        t.STRUCT,
        "",
        512,
        [("hiwater_rss", ulong, 2752), ("hiwater_vm", ulong, 2816), ("total_vm", ulong, 2880),
         ("stack_vm", ulong, 3200), ("brk", ulong, 464 * 8),
         ("rss_stat", ulong, 7680)],
    )  # fmt: skip
    b.add_composite(t.STRUCT, "mm_struct", 1472, [("", anon, 0)])
    b.add_composite(
        t.STRUCT, "vm_unmapped_area_info", 64, [("flags", ulong, 0), ("length", ulong, 64)]
    )
    # the 6.1 prototype: (ctx, mm, memcg_path, write)
    released = b.add_func_proto(0, [ptr, ptr, ptr, pid_t])
    b.add_ref(t.TYPEDEF, "btf_trace_mmap_lock_released", b.add_ref(t.PTR, "", released))
    regs = ["r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx",
            "si", "di", "orig_ax", "ip", "cs", "flags", "sp", "ss"]  # fmt: skip
    b.add_composite(t.STRUCT, "pt_regs", 168, [(r, ulong, 64 * i) for i, r in enumerate(regs)])
    path.write_bytes(b.blob())


def test_read_offsets_from_synthetic_btf(tmp_path: Path) -> None:
    btf = tmp_path / "vmlinux"
    _kernel_btf(btf)
    offsets = read_offsets(str(btf), str(tmp_path / "no-config"), machine="x86_64")
    assert offsets == KernelOffsets(
        task_mm=1136, task_stack=32, task_tgid=1268, task_pid=1264, task_comm=1500,
        task_exit_code=1200, mm_rss_stat=960, rss_stride=40,
        rss_count=8, mm_total_vm=360, mm_hiwater_vm=352, mm_stack_vm=400,
        mm_hiwater_rss=344, pt_regs_size=168, pt_regs_orig_ax=120, pt_regs_di=112,
        pt_regs_si=104, pt_regs_dx=96, pt_regs_r10=56, pt_regs_r8=72, pt_regs_r9=64,
        pt_regs_sp=152, pt_regs_ip=128, pt_regs_bp=32, mm_brk=464,
        binprm_filename=96,
        task_files=1824, task_signal=1848, task_fs=1816, fs_root_dentry=32, fs_root_mnt=24,
        signal_live=4, files_fdt=32, fdtable_fd=8,
        fdtable_max_fds=0, file_dentry=72, file_mnt=64, file_inode=32, dentry_name=40,
        dentry_parent=24, inode_ino=64, inode_sb=40, sb_dev=16, mount_mnt=32, mount_parent=16,
        mount_mountpoint=24, vfsmount_root=0, task_group_leader=1328, task_thread_pid=1368,
        pid_level=4, pid_numbers=144, upid_nr=0, upid_ns=8, upid_size=16, pidns_inum=136,
        unmapped_info_length=8, lock_tp_args=3, thread_size=16384, stack_top_padding=0,
    )  # fmt: skip


@pytest.mark.parametrize("compress", [True, False])
def test_kasan_and_fred_from_config(tmp_path: Path, compress: bool) -> None:
    btf = tmp_path / "vmlinux"
    _kernel_btf(btf)
    text = b"# CONFIG_FOO is not set\nCONFIG_KASAN=y\nCONFIG_X86_FRED=y\n"
    config = tmp_path / "config"
    config.write_bytes(gzip.compress(text) if compress else text)
    offsets = read_offsets(str(btf), str(config), machine="x86_64")
    assert offsets.thread_size == 32768
    assert offsets.stack_top_padding == 16
    config.write_bytes(b"# CONFIG_KASAN is not set\n# CONFIG_X86_FRED is not set\n")
    offsets = read_offsets(str(btf), str(config), machine="x86_64")
    assert (offsets.thread_size, offsets.stack_top_padding) == (16384, 0)


def test_broken_config(tmp_path: Path) -> None:
    config = tmp_path / "config.gz"
    config.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(EnvironmentProblem, match="failed to read the kernel config"):
        read_kernel_config(str(config))
    assert read_kernel_config(str(tmp_path / "none")) is None


def test_other_architectures_are_refused(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentProblem, match="architecture aarch64 is not supported"):
        read_offsets(str(tmp_path / "never-read"), machine="aarch64")


def test_missing_member_names_the_field(tmp_path: Path) -> None:
    t = _load_btf_test_module()
    b = t.BtfBuilder()
    ulong = b.add_int("long unsigned int", 8)
    b.add_composite(t.STRUCT, "task_struct", 16, [("stack", ulong, 0), ("mm", ulong, 64)])
    btf = tmp_path / "vmlinux"
    btf.write_bytes(b.blob())
    with pytest.raises(EnvironmentProblem, match=r"failed to find task_struct\.tgid in BTF"):
        read_offsets(str(btf), machine="x86_64")
