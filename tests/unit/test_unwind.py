"""The user-space unwinder on real stack snapshots of programs built here (no root, no BPF).

tests/fixtures/unwind/stackshot.c records its own registers, stack bytes and /proc/self/maps
at a known point of a known call chain, exactly what the kernel side captures; each test unwinds
that snapshot offline and checks the chain against the source and against binutils' view of the
binary (nm, objdump, readelf, addr2line).
"""

from __future__ import annotations

import bisect
import random
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from vmtrace.procfs import parse_maps
from vmtrace.records import Mapping
from vmtrace.unwind import Frame, Unwinder, UserStack
from vmtrace.unwind import elf as unwind_elf
from vmtrace.unwind.cfi import RIP, RSP, RuleKind

SOURCE = Path(__file__).resolve().parents[1] / "fixtures" / "unwind" / "stackshot.c"
CHAIN = ["snap", "leaf", "f3", "f2", "f1", "main"]
# What may follow main: glibc's start code (named when libc's symbols or debug file name it)
# and the executable's _start.
START_CODE = {None, "__libc_start_call_main", "__libc_start_main", "__libc_start_main_impl",
              "_start"}

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")

NO_CFI = ["-fno-asynchronous-unwind-tables", "-fno-unwind-tables"]
BUILDS: dict[str, list[str]] = {
    "pie": ["-O2", "-fomit-frame-pointer", "-g"],
    "nopie": ["-O2", "-fomit-frame-pointer", "-no-pie", "-fno-pie"],
    "fp": ["-O2", "-fno-omit-frame-pointer", *NO_CFI],
    # Code and read-only data share pages: the text mapping's offset lies in two segments.
    "noseparate": ["-O2", "-fomit-frame-pointer", "-Wl,-z,noseparate-code"],
    "debugframe": ["-O2", "-fomit-frame-pointer", "-g", "-fno-asynchronous-unwind-tables"],
}


@dataclass(frozen=True)
class Shot:
    binary: Path
    stack: UserStack
    maps: list[Mapping]

    def find(self, addr: int) -> Mapping | None:
        starts = [m.start for m in self.maps]
        i = bisect.bisect_right(starts, addr) - 1
        return self.maps[i] if i >= 0 and addr < self.maps[i].end else None


def _run(args: list[str]) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stackshot")
    out: dict[str, Path] = {}
    for name, flags in BUILDS.items():
        binary = root / name / "stackshot"
        binary.parent.mkdir()
        _run(["gcc", *flags, "-o", str(binary), str(SOURCE)])
        out[name] = binary
    # The .debug_frame build split the way distributions ship it: the CFI and symbols only in a
    # separate file that .gnu_debuglink names.
    split = root / "split" / "stackshot"
    split.parent.mkdir()
    shutil.copy(out["debugframe"], split)
    _run(["objcopy", "--only-keep-debug", str(split), str(split) + ".debug"])
    _run(["strip", "--strip-all", str(split)])
    _run(["objcopy", f"--add-gnu-debuglink={split}.debug", str(split)])
    out["split"] = split
    return out


def snapshot(binary: Path, mode: str, tmp_path: Path) -> Shot:
    out = tmp_path / f"{binary.parent.name}-{mode}.snap"
    subprocess.run([str(binary), str(out), mode], check=True, timeout=30)
    raw = out.read_bytes()
    assert raw[:8] == b"VMTSNAP1"
    ip, sp, bp, length = struct.unpack_from("<4Q", raw, 8)
    data = raw[40 : 40 + length]
    maps = parse_maps(raw[40 + length :].decode())
    return Shot(binary, UserStack(ip=ip, sp=sp, bp=bp, data=data), maps)


@pytest.fixture
def unwinder(tmp_path: Path) -> Unwinder:
    return Unwinder(tmp_path / "cache")


def names(frames: list[Frame]) -> list[str | None]:
    return [f.function for f in frames]


def nm(binary: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in _run(["nm", "--defined-only", str(binary)]).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            out[parts[2]] = int(parts[0], 16)
    return out


def is_libc(frame: Frame) -> bool:
    return frame.module is not None and Path(frame.module).name.startswith("libc.so")


def check_tail(frames: list[Frame], binary: Path) -> None:
    """After main: glibc's start code, then possibly the executable's _start, nothing else."""
    assert frames, "the chain stops at main"
    for f in frames:
        assert f.function in START_CODE, f
        assert is_libc(f) or (f.function == "_start" and f.module == str(binary)), f


def follows_call(frame: Frame) -> bool:
    """objdump's view: disassembled from its symbol's start, the instruction that ends at the
    return address is a call. Unnamed frames: the bytes before it end a call (e8 rel32, or
    ff /2 in its 2-7 byte forms)."""
    assert frame.module is not None and frame.module_offset is not None
    if frame.function is not None and frame.offset is not None:
        start = frame.module_offset - frame.offset
        text = _run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={start:#x}",
                     f"--stop-address={frame.module_offset:#x}", frame.module])
        last = [ln for ln in text.splitlines() if re.match(r"\s+[0-9a-f]+:", ln)][-1]
        return "call" in last.split(":", 1)[1]
    with open(frame.module, "rb") as f:
        code = f.read()
    elf_to_file = {  # PT_LOAD vaddr -> offset, from readelf
        int(v, 16): int(o, 16)
        for o, v in re.findall(r"LOAD\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)",
                               _run(["readelf", "-lW", frame.module]))
    }
    vaddr = max(v for v in elf_to_file if v <= frame.module_offset)
    at = elf_to_file[vaddr] + frame.module_offset - vaddr
    before = code[at - 8 : at]
    return before[3] == 0xE8 or any(
        before[8 - n] == 0xFF and (before[9 - n] >> 3) & 7 == 2 for n in range(2, 8))


def check_return_addresses(frames: list[Frame], exact: frozenset[int] = frozenset()) -> None:
    """Every frame after the first is a return address (or an exact pc a signal interrupted)."""
    for i, f in enumerate(frames[1:], 1):
        if i not in exact:
            assert follows_call(f), f


def check_against_binutils(frames: list[Frame], binary: Path, symbols_from: Path) -> None:
    """module_offset is what addr2line takes, and function+offset agrees with nm."""
    table = nm(symbols_from)
    own = [f for f in frames if f.module == str(binary)]
    assert own
    for f in own:
        assert f.function is not None and f.offset is not None and f.module_offset is not None
        assert f.module_offset - table[f.function] == f.offset, f
        lookup = f.module_offset - (0 if f is frames[0] else 1)
        named = _run(["addr2line", "-f", "-e", str(symbols_from), hex(lookup)]).splitlines()[0]
        assert named == f.function


# ---------------------------------------------------------------------------- whole chains


@pytest.mark.parametrize("build", ["pie", "nopie", "debugframe", "noseparate"])
def test_chain_through_cfi(build: str, builds: dict[str, Path], tmp_path: Path,
                           unwinder: Unwinder) -> None:
    shot = snapshot(builds[build], "chain", tmp_path)
    frames = unwinder.unwind(shot.stack, shot.find)
    assert names(frames)[:6] == CHAIN
    check_tail(frames[6:], shot.binary)
    check_against_binutils(frames, shot.binary, shot.binary)
    check_return_addresses(frames)
    assert frames[0].address == shot.stack.ip


def test_source_lines_where_dwarf_has_them(builds: dict[str, Path], tmp_path: Path,
                                           unwinder: Unwinder) -> None:
    shot = snapshot(builds["pie"], "chain", tmp_path)
    frames = unwinder.unwind(shot.stack, shot.find)
    text = SOURCE.read_text().splitlines()
    for f in frames[1:6]:
        assert f.file is not None and f.file.endswith("stackshot.c") and f.line is not None
        # A return address's line is the line of the call: it names the callee.
        callee = CHAIN[frames.index(f) - 1]
        assert re.search(rf"\b{callee}\(", text[f.line - 1]), (f, text[f.line - 1])


def test_separate_debug_file_via_debuglink(builds: dict[str, Path], tmp_path: Path,
                                           unwinder: Unwinder) -> None:
    """No .symtab and no CFI for the program's own code in the binary: both come from the file
    .gnu_debuglink names."""
    split = builds["split"]
    assert "f1" not in nm_or_empty(split)
    shot = snapshot(split, "chain", tmp_path)
    frames = unwinder.unwind(shot.stack, shot.find)
    assert names(frames)[:6] == CHAIN
    check_tail(frames[6:], shot.binary)
    check_against_binutils(frames, shot.binary, Path(str(split) + ".debug"))
    check_return_addresses(frames)


def test_debug_file_by_build_id_installed_later(builds: dict[str, Path], tmp_path: Path) -> None:
    """The debug file under ROOT/.build-id/xx/rest.debug; installed after a first run, it is
    used by the next one although that run finds the object in the disk cache."""
    binary = tmp_path / "bin" / "stackshot"
    binary.parent.mkdir()
    shutil.copy(builds["split"], binary)
    _run(["objcopy", "--remove-section=.gnu_debuglink", str(binary)])
    found = re.search(r"Build ID: ([0-9a-f]+)", _run(["readelf", "-n", str(binary)]))
    assert found
    build_id = found.group(1)
    root, cache = tmp_path / "debug", tmp_path / "cache"
    shot = snapshot(binary, "chain", tmp_path)
    before = Unwinder(cache, debug_roots=[root]).unwind(shot.stack, shot.find)
    assert before[0].function is None and before[0].module == str(binary)
    target = root / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
    target.parent.mkdir(parents=True)
    shutil.copy(str(builds["split"]) + ".debug", target)
    after = Unwinder(cache, debug_roots=[root]).unwind(shot.stack, shot.find)
    assert names(after)[:6] == CHAIN


def nm_or_empty(binary: Path) -> dict[str, int]:
    done = subprocess.run(["nm", "--defined-only", str(binary)], capture_output=True, text=True)
    return nm(binary) if done.returncode == 0 else {}


def test_frame_pointer_fallback_without_cfi(builds: dict[str, Path], tmp_path: Path,
                                            unwinder: Unwinder) -> None:
    binary = builds["fp"]
    f1 = nm(binary)["f1"]
    fde_ranges = [
        (int(lo, 16), int(hi, 16))
        for lo, hi in re.findall(r"FDE .* pc=([0-9a-f]+)\.\.([0-9a-f]+)", _run(
            ["readelf", "--debug-dump=frames", str(binary)]))
    ]
    assert fde_ranges and not any(lo <= f1 < hi for lo, hi in fde_ranges), "f1 has CFI"
    shot = snapshot(binary, "chain", tmp_path)
    frames = unwinder.unwind(shot.stack, shot.find)
    assert names(frames)[:6] == CHAIN
    check_tail(frames[6:], shot.binary)
    check_against_binutils(frames, shot.binary, shot.binary)
    check_return_addresses(frames)


def test_libc_frames_in_the_middle(builds: dict[str, Path], tmp_path: Path,
                                   unwinder: Unwinder) -> None:
    """compare() is called back by libc's qsort: the chain crosses libc and comes back."""
    shot = snapshot(builds["pie"], "qsort", tmp_path)
    frames = unwinder.unwind(shot.stack, shot.find)
    got = names(frames)
    assert got[:2] == ["snap", "compare"]
    back = got.index("sort_some")
    middle = frames[2:back]
    assert middle and all(is_libc(f) for f in middle)
    assert all(f.module_offset is not None for f in middle)
    named = [f.function for f in middle if f.function is not None]
    assert named and all(n.startswith(("qsort", "msort", "__qsort")) for n in named), named
    assert got[back : back + 5] == ["sort_some", "f3", "f2", "f1", "main"]
    check_tail(frames[back + 5 :], shot.binary)
    check_return_addresses(frames)


def test_signal_frame(builds: dict[str, Path], tmp_path: Path, unwinder: Unwinder) -> None:
    """A snapshot in a SIGSEGV handler: through __restore_rt's rt_sigframe back to the
    faulting instruction, which is not a return address."""
    shot = snapshot(builds["pie"], "signal", tmp_path)
    frames = unwinder.unwind(shot.stack, shot.find)
    got = names(frames)
    assert got[:2] == ["snap", "on_fault"]
    trampoline = frames[2]
    assert is_libc(trampoline) and trampoline.function in (None, "__restore_rt")
    assert got[3:8] == ["fault", "f3", "f2", "f1", "main"]
    check_tail(frames[8:], shot.binary)
    # Frame 3 is the faulting store itself: the exact pc, inside fault().
    store = frames[3]
    assert store.module_offset is not None
    disasm = _run(["objdump", "-d", f"--start-address={store.module_offset:#x}",
                   f"--stop-address={store.module_offset + 16:#x}", str(shot.binary)])
    first = next(ln for ln in disasm.splitlines() if re.match(r"\s+[0-9a-f]+:", ln))
    assert "mov" in first, first
    # __restore_rt is entered by the kernel, not called; the others are return addresses.
    check_return_addresses(frames, exact=frozenset({2, 3}))


def test_python3_through_ctypes(tmp_path: Path, unwinder: Unwinder) -> None:
    """A snapshot inside Debian's python3 (no frame pointers): python3 calls the library build
    of stackshot.c through ctypes and libffi. The chain goes from the library through libffi,
    _ctypes and the interpreter down to _start, every frame a return address."""
    python = Path("/usr/bin/python3")
    if not python.exists():
        pytest.skip("/usr/bin/python3 is not installed")
    lib = tmp_path / "libstackshot.so"
    _run(["gcc", "-O2", "-fomit-frame-pointer", "-shared", "-fPIC", "-DSTACKSHOT_LIB", "-o",
          str(lib), str(SOURCE)])
    out = tmp_path / "python.snap"
    _run([str(python), "-c", f"import ctypes; ctypes.CDLL({str(lib)!r}).stackshot({str(out)!r}"
          ".encode())"])
    raw = out.read_bytes()
    ip, sp, bp, length = struct.unpack_from("<4Q", raw, 8)
    shot = Shot(lib, UserStack(ip, sp, bp, raw[40 : 40 + length]),
                parse_maps(raw[40 + length :].decode()))
    frames = unwinder.unwind(shot.stack, shot.find)
    assert names(frames)[:6] == ["snap", "leaf", "f3", "f2", "f1", "stackshot"]
    modules = [Path(f.module or "").name for f in frames]
    interpreter = [f for f in frames if f.module == str(python.resolve())]
    assert len(interpreter) >= 5
    assert "_PyEval_EvalFrameDefault" in names(interpreter)
    assert any(m.startswith("libffi") for m in modules) and any("_ctypes" in m for m in modules)
    assert frames[-1].function == "_start" and frames[-1].module == str(python.resolve())
    check_return_addresses(frames)


def test_thread_stack(builds: dict[str, Path], tmp_path: Path, unwinder: Unwinder) -> None:
    """A thread's stack ends in libc's thread start (clone3 marks the return address undefined),
    not in main."""
    shot = snapshot(builds["pie"], "thread", tmp_path)
    stack_map = shot.find(shot.stack.sp)
    assert stack_map is not None and stack_map.path != "[stack]"
    frames = unwinder.unwind(shot.stack, shot.find)
    assert names(frames)[:6] == ["snap", "leaf", "f3", "f2", "f1", "thread_main"]
    rest = frames[6:]
    assert rest and all(is_libc(f) for f in rest)
    assert {f.function for f in rest} <= {None, "start_thread", "clone3", "__clone3"}
    check_return_addresses(frames)


# ---------------------------------------------------------------------------- PLT


def plt_entry(binary: Path, symbol: str) -> int:
    found = re.search(rf"^([0-9a-f]+) <{re.escape(symbol)}@plt>:", _run(
        ["objdump", "-d", "-j", ".plt", "-j", ".plt.sec", str(binary)]), re.M)
    assert found, f"no {symbol}@plt"
    return int(found.group(1), 16)


@pytest.mark.parametrize("into_entry", [0, 11])
def test_plt_frame(into_entry: int, builds: dict[str, Path], tmp_path: Path,
                   unwinder: Unwinder) -> None:
    """The state right after sort_some's `call qsort@plt`: the PLT slot is frame 0. 11 bytes in,
    the slot has pushed its relocation index, and the CFI's expression puts the CFA 8 bytes
    further up; a plain rsp+8 rule would take that index for the return address."""
    shot = snapshot(builds["pie"], "qsort", tmp_path)
    full = unwinder.unwind(shot.stack, shot.find)
    caller = next(f for f in full if f.function == "sort_some")
    ret = struct.pack("<Q", caller.address)
    at = next(i for i in range(0, len(shot.stack.data) - 7, 8)
              if shot.stack.data[i : i + 8] == ret)
    slot_sp = shot.stack.sp + at - (8 if into_entry >= 11 else 0)
    text = next(m for m in shot.maps if m.path == str(shot.binary) and m.perms[2] == "x")
    # A PIE's first PT_LOAD has vaddr 0 at file offset 0: its mapping's start is the bias.
    bias = next(m.start for m in shot.maps if m.path == str(shot.binary) and m.offset == 0)
    ip = bias + plt_entry(shot.binary, "qsort") + into_entry
    assert shot.find(ip) == text
    stack = UserStack(ip=ip, sp=slot_sp, bp=0, data=shot.stack.data[slot_sp - shot.stack.sp :])
    frames = unwinder.unwind(stack, shot.find)
    assert names(frames)[:6] == ["qsort@plt", "sort_some", "f3", "f2", "f1", "main"]
    assert frames[0].offset == into_entry
    assert frames[1:] == full[full.index(caller) :]


# ---------------------------------------------------------------------------- stop rules


def test_truncated_snapshots_stop_cleanly(builds: dict[str, Path], tmp_path: Path,
                                          unwinder: Unwinder) -> None:
    """However little of the stack was captured, the chain is a prefix of the whole one."""
    shot = snapshot(builds["pie"], "qsort", tmp_path)
    full = unwinder.unwind(shot.stack, shot.find)
    lengths = []
    for cut in range(0, len(shot.stack.data) + 8, 8):
        stack = replace(shot.stack, data=shot.stack.data[:cut])
        frames = unwinder.unwind(stack, shot.find)
        assert frames == full[: len(frames)], cut
        lengths.append(len(frames))
    assert lengths[0] == 1 and lengths[-1] == len(full)
    assert lengths == sorted(lengths) and len(set(lengths)) > 5


def test_garbage_above_the_leaf_frame_is_not_followed(builds: dict[str, Path], tmp_path: Path,
                                                      unwinder: Unwinder) -> None:
    shot = snapshot(builds["pie"], "chain", tmp_path)
    full = unwinder.unwind(shot.stack, shot.find)
    rng = random.Random(7)
    for _ in range(20):
        noise = bytes(rng.getrandbits(8) for _ in range(len(shot.stack.data)))
        frames = unwinder.unwind(replace(shot.stack, data=noise), shot.find)
        assert frames == full[:1]


def test_frame_pointer_chain_that_leaves_the_snapshot_stops(
    builds: dict[str, Path], tmp_path: Path, unwinder: Unwinder
) -> None:
    shot = snapshot(builds["fp"], "chain", tmp_path)
    full = unwinder.unwind(shot.stack, shot.find)
    for bp in (0, shot.stack.sp - 64, shot.stack.sp + len(shot.stack.data), shot.stack.bp + 4):
        frames = unwinder.unwind(replace(shot.stack, bp=bp), shot.find)
        assert frames == full[:1], hex(bp)


def test_ip_outside_executable_file_mappings(builds: dict[str, Path], tmp_path: Path,
                                             unwinder: Unwinder) -> None:
    shot = snapshot(builds["pie"], "chain", tmp_path)
    data_map = next(m for m in shot.maps if m.path == str(shot.binary) and m.perms[2] != "x")
    anon = Mapping(0x10000, 0x20000, "r-xp", "")
    gone = Mapping(0x30000, 0x40000, "r-xp", str(tmp_path / "deleted.so"))
    for ip, find in (
        (data_map.start, shot.find),
        (0x10010, lambda a: anon if anon.start <= a < anon.end else None),
        (0x30010, lambda a: gone if gone.start <= a < gone.end else None),
        (0x10010, lambda a: None),
    ):
        assert unwinder.unwind(replace(shot.stack, ip=ip), find) == []


def test_files_that_are_not_elf_or_are_damaged(builds: dict[str, Path], tmp_path: Path,
                                               unwinder: Unwinder) -> None:
    """A mapped file that is not ELF, cut short or garbled gives fewer frames, never an
    exception (a tracer must not die on one odd file)."""
    shot = snapshot(builds["pie"], "chain", tmp_path)
    text = tmp_path / "text"
    text.write_text("not an ELF file\n" * 1000)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(shot.binary.read_bytes()[:0x1400])
    garbled = tmp_path / "garbled"
    raw = bytearray(shot.binary.read_bytes())
    rng = random.Random(3)
    for i in range(64, len(raw), 7):
        raw[i] = rng.getrandbits(8)
    garbled.write_bytes(bytes(raw))
    for path in (text, truncated, garbled):
        maps = [replace(m, path=str(path)) if m.path == str(shot.binary) else m
                for m in shot.maps]
        moved = Shot(path, shot.stack, maps)
        frames = unwinder.unwind(shot.stack, moved.find)
        if path == text:
            assert frames == []
        assert all(isinstance(f, Frame) and f.module is not None for f in frames)


def test_max_frames(builds: dict[str, Path], tmp_path: Path, unwinder: Unwinder) -> None:
    shot = snapshot(builds["pie"], "chain", tmp_path)
    assert names(unwinder.unwind(shot.stack, shot.find, max_frames=3)) == CHAIN[:3]


# ---------------------------------------------------------------------------- cache


def test_decoded_objects_are_cached_on_disk(builds: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    shot = snapshot(builds["pie"], "qsort", tmp_path)
    cache = tmp_path / "disk"
    first = Unwinder(cache).unwind(shot.stack, shot.find)
    pickles = sorted(p.name for p in cache.iterdir() if ".object." in p.name)
    assert len(pickles) == 2 and all(p.startswith("b-") for p in pickles), pickles
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]

    decoded: list[object] = []
    real_decode = unwind_elf.decode_object
    real_lines = unwind_elf.line_table_for

    def counting_decode(*args: Any) -> unwind_elf.ObjectInfo:
        decoded.append(args[0])
        return real_decode(*args)

    monkeypatch.setattr(unwind_elf, "decode_object", counting_decode)
    assert Unwinder(cache).unwind(shot.stack, shot.find) == first
    assert decoded == []
    # Source lines come from the disk cache as well: no DWARF is read for them.
    monkeypatch.setattr(unwind_elf, "line_table_for", counting_decode)
    lines = [(f.file, f.line) for f in Unwinder(cache).unwind(shot.stack, shot.find)]
    assert decoded == [] and lines == [(f.file, f.line) for f in first]
    assert any(line is not None for _, line in lines)
    monkeypatch.setattr(unwind_elf, "line_table_for", real_lines)
    # A pickle from another cache version is ignored, not trusted.
    monkeypatch.setattr(unwind_elf, "CACHE_VERSION", unwind_elf.CACHE_VERSION + 1)
    assert Unwinder(cache).unwind(shot.stack, shot.find) == first
    assert len(decoded) == 2


def test_unwritable_cache_dir_still_unwinds(builds: dict[str, Path], tmp_path: Path) -> None:
    shot = snapshot(builds["pie"], "chain", tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    frames = Unwinder(blocker / "cache").unwind(shot.stack, shot.find)
    assert names(frames)[:6] == CHAIN


# ---------------------------------------------------------------------------- big objects

SYSTEM_OBJECTS = [Path("/usr/bin/python3.11"), Path("/lib/x86_64-linux-gnu/libc.so.6")]


@pytest.mark.parametrize("path", SYSTEM_OBJECTS, ids=lambda p: p.name)
def test_system_objects_cfi_decodes(path: Path, tmp_path: Path) -> None:
    """Debian's python3.11 and libc (built without frame pointers): their FDEs run into rows,
    and at each exported function's first instruction the CFA is rsp+8 with the return address
    at CFA-8, as the call instruction left it. (FDEs of split-off .cold parts start inside their
    parent's frame, so only FDEs that start where a function does are held to that.)"""
    if not path.exists():
        pytest.skip(f"{path} is not installed")
    cache = unwind_elf.ObjectCache(tmp_path, [unwind_elf.DEBUG_ROOT])
    obj = cache.get(str(path))
    assert obj is not None
    eh = obj.info.cfi[0]
    assert eh.section == ".eh_frame" and len(eh.starts) > 1000
    plt = [s for s in _section_ranges(path) if s[0] in (".plt", ".plt.sec", ".plt.got")]
    exported = set()
    for line in _run(["nm", "-D", "--defined-only", str(path)]).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "Tti":
            exported.add(int(parts[0], 16))
    checked = 0
    for start in eh.starts:
        if start not in exported or any(lo <= start < hi for _, lo, hi in plt):
            continue
        rules = obj.rules_at(start)
        assert rules is not None and rules.start == start
        row = rules.row_at(start)
        assert row is not None
        assert (row.cfa.reg, row.cfa.offset, row.cfa.expr) == (RSP, 8, None), hex(start)
        ra = dict(row.regs)[RIP]
        if ra.kind is RuleKind.UNDEFINED:  # the outermost frame: _start
            assert start == elf_entry(path), hex(start)
            continue
        assert (ra.kind, ra.value) == (RuleKind.OFFSET, -8)
        checked += 1
    assert checked > 1000
    assert len(obj.info.symbols) > 1000


def _section_ranges(path: Path) -> list[tuple[str, int, int]]:
    out = []
    for m in re.finditer(r"\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)",
                         _run(["readelf", "-SW", str(path)])):
        out.append((m.group(1), int(m.group(2), 16), int(m.group(2), 16) + int(m.group(3), 16)))
    return out



def elf_entry(path: Path) -> int:
    found = re.search(r"Entry point address:\s+0x([0-9a-f]+)", _run(["readelf", "-h", str(path)]))
    assert found
    return int(found.group(1), 16)
