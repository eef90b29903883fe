"""What unwinding costs, on a real stack of Debian's python3 (no frame pointers) through libc.

    python -m vmtrace.unwind.bench [--python /usr/bin/python3] [--repeat 200]

Builds tests/fixtures/unwind/stackshot.c as a library, has python3 call it through ctypes (the
library records its own registers, stack bytes and maps, as the kernel side would), then times:
the first decode of each large object (libc, the python3 executable) into an empty cache; the
same objects loaded from the disk cache by a new process-like Unwinder; a whole unwind with
nothing cached, with only the disk cache, and with everything in memory (the steady state).
Needs gcc.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmtrace.procfs import parse_maps
from vmtrace.records import Frame, Mapping, UserStack
from vmtrace.unwind.elf import DEBUG_ROOT, ObjectCache
from vmtrace.unwind.unwinder import Unwinder

SOURCE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "unwind" / "stackshot.c"


def take_python_snapshot(workdir: Path, python: str) -> tuple[UserStack, list[Mapping]]:
    """A snapshot taken inside python3: ctypes -> libffi -> stackshot() -> f1 -> ... -> snap."""
    if shutil.which("gcc") is None:
        raise RuntimeError("failed to build the snapshot library: gcc is not installed "
                           "(fix: apt-get install gcc)")
    lib = workdir / "libstackshot.so"
    subprocess.run(["gcc", "-O2", "-fomit-frame-pointer", "-shared", "-fPIC", "-DSTACKSHOT_LIB",
                    "-o", str(lib), str(SOURCE)], check=True)
    out = workdir / "python.snap"
    code = f"import ctypes; ctypes.CDLL({str(lib)!r}).stackshot({str(out).encode()!r})"
    subprocess.run([python, "-c", code], check=True, timeout=60)
    return read_snapshot(out)


def read_snapshot(path: Path) -> tuple[UserStack, list[Mapping]]:
    raw = path.read_bytes()
    if raw[:8] != b"VMTSNAP1":
        raise ValueError(f"{path}: not a stackshot snapshot")
    ip, sp, bp, length = struct.unpack_from("<4Q", raw, 8)
    maps = parse_maps(raw[40 + length :].decode())
    return UserStack(ip=ip, sp=sp, bp=bp, data=raw[40 : 40 + length]), maps


def finder(maps: list[Mapping]) -> Callable[[int], Mapping | None]:
    starts = [m.start for m in maps]

    def find(addr: int) -> Mapping | None:
        i = bisect.bisect_right(starts, addr) - 1
        return maps[i] if i >= 0 and addr < maps[i].end else None

    return find


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def measure(python: str = "/usr/bin/python3", repeat: int = 200) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vmtrace-unwind-bench-") as tmp:
        work = Path(tmp)
        stack, maps = take_python_snapshot(work, python)
        find = finder(maps)
        python_path = os.path.realpath(python)
        libc = next(m.path for m in maps if Path(m.path).name.startswith("libc.so"))

        objects: dict[str, dict[str, float | int | str | None]] = {}
        for path in (libc, python_path):
            cache_dir = work / f"decode-{Path(path).name}"
            t0 = time.perf_counter()
            obj = ObjectCache(cache_dir, [DEBUG_ROOT]).get(path)
            t1 = time.perf_counter()
            again = ObjectCache(cache_dir, [DEBUG_ROOT]).get(path)
            t2 = time.perf_counter()
            assert obj is not None and again is not None
            objects[path] = {
                "first_decode_ms": _ms(t1 - t0),
                "from_disk_cache_ms": _ms(t2 - t1),
                "fdes": sum(len(c.starts) for c in obj.info.cfi),
                "symbols": len(obj.info.symbols),
                "debug_file": obj.info.debug_path,
            }

        cache_dir = work / "cache"
        t0 = time.perf_counter()
        cold = Unwinder(cache_dir)
        frames = cold.unwind(stack, find)
        t1 = time.perf_counter()
        warm = Unwinder(cache_dir)
        warm_frames = warm.unwind(stack, find)
        t2 = time.perf_counter()
        assert warm_frames == frames
        t3 = time.perf_counter()
        for _ in range(repeat):
            warm.unwind(stack, find)
        t4 = time.perf_counter()
        plain = Unwinder(cache_dir, lines=False)
        plain.unwind(stack, find)
        t5 = time.perf_counter()
    return {
        "snapshot_bytes": len(stack.data),
        "frames": [format_frame(f) for f in frames],
        "objects": objects,
        "unwind_nothing_cached_ms": _ms(t1 - t0),
        "unwind_disk_cached_ms": _ms(t2 - t1),
        "unwind_cached_ms": _ms((t4 - t3) / repeat),
        "unwind_disk_cached_without_lines_ms": _ms(t5 - t4),
    }


def format_frame(f: Frame) -> str:
    where = f"{f.function}+{f.offset:#x}" if f.function is not None else f"{f.module_offset:#x}"
    line = f" ({f.file}:{f.line})" if f.file else ""
    return f"{where} [{Path(f.module or '?').name}]{line}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmtrace.unwind.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default="/usr/bin/python3")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    result = measure(args.python, args.repeat)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"python3 snapshot: {result['snapshot_bytes']} bytes of stack")
    for i, frame in enumerate(result["frames"]):
        print(f"  #{i:<2} {frame}")
    for path, o in result["objects"].items():
        print(f"{path}: first decode {o['first_decode_ms']} ms, from the disk cache "
              f"{o['from_disk_cache_ms']} ms ({o['fdes']} FDEs, {o['symbols']} symbols, "
              f"debug file {o['debug_file']})")
    print(f"unwind + symbolise, nothing cached:        {result['unwind_nothing_cached_ms']} ms")
    print(f"unwind + symbolise, objects on disk cache: {result['unwind_disk_cached_ms']} ms")
    print(f"  the same without file:line:              "
          f"{result['unwind_disk_cached_without_lines_ms']} ms")
    print(f"unwind + symbolise, cached (steady state): {result['unwind_cached_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
