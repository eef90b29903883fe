"""Whole user call chains without frame pointers, symbolised from the files, and every file
mapping named by the path the kernel saw at the change.

tests/integration/stackload.c is built -O2 -fomit-frame-pointer with a known chain of
functions; Debian's own python3 and xz have no frame pointers either.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration._require import require
from tests.integration.conftest import (
    Record,
    build_c,
    of,
    read_jsonl,
    run_traced,
    start_vmtrace,
    tail,
    wait_for_start,
)

pytestmark = pytest.mark.bpf

SRC = Path(__file__).resolve().parent / "stackload.c"
CHAIN = ["outer", "main"]  # below the leaf, innermost first


@pytest.fixture(scope="module")
def stackload(bpf_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_c(SRC, tmp_path_factory.mktemp("stackload"), "-O2", "-fomit-frame-pointer")


def files(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "file-a.bin", tmp_path / "file-b.bin"
    a.write_bytes(b"a" * 4096)
    b.write_bytes(b"b" * 4096)
    return a, b


def functions(rec: Record) -> list[str | None]:
    return [f["function"] for f in rec.get("stack") or []]


def biggest_rise(records: list[Record], pid: int) -> Record:
    return max(of(records, "peak", pid), key=lambda r: r["vm_peak_kb"] - r["vm_peak_kb_before"])


def assert_chain(rec: Record, leaf: str, binary: Path) -> None:
    """`leaf`, middle, outer, main in that order, each in the binary, and nothing that is
    not a real frame (every frame has its module)."""
    names = functions(rec)
    want = [leaf, "middle", *CHAIN]
    found = [n for n in names if n in want]
    assert found[: len(want)] == want, names
    for f in rec["stack"]:
        assert f["module"] and Path(f["module"]).exists(), ("a frame without its file", f)
    ours = [f for f in rec["stack"] if f["function"] in want]
    assert all(f["module"] == str(binary) for f in ours), ours


def check_stackload(records: list[Record], reports: list[dict[str, Any]], binary: Path) -> None:
    pid = next(r["pid"] for r in reports if r["what"] == "done")
    peaks = of(records, "peak", pid)
    mmap_peak = next(p for p in peaks if p["vm_peak_kb"] - p["vm_peak_kb_before"] >= 250 << 10)
    assert_chain(mmap_peak, "map_big", binary)
    assert functions(mmap_peak)[0] is not None  # the libc mmap wrapper
    malloc_peak = next(p for p in peaks if p["vm_peak_kb"] - p["vm_peak_kb_before"] >= 290 << 10)
    assert_chain(malloc_peak, "malloc_big", binary)
    assert "malloc" in functions(malloc_peak), functions(malloc_peak)


def test_run_gets_the_whole_chain_after_exit(stackload: Path, tmp_path: Path) -> None:
    """`vmtrace run`: the process has exited by the time most records are read; its frames
    still resolve (from the files its mappings named)."""
    a, b = files(tmp_path)
    records, reports, _ = run_traced(tmp_path, command=[str(stackload), str(a), str(b)])
    check_stackload(records, reports, stackload)


def test_attach_gets_the_whole_chain(stackload: Path, tmp_path: Path) -> None:
    a, b = files(tmp_path)
    proc = subprocess.Popen(
        [str(stackload), "wait", str(a), str(b)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    reports = [json.loads(proc.stdout.readline())]
    log = tmp_path / "log.jsonl"
    vmt = start_vmtrace(["-p", str(proc.pid), "-o", str(log)], tmp_path)
    try:
        wait_for_start(log, vmt)
        proc.stdin.write(b"g")
        proc.stdin.close()
        reports += [json.loads(ln) for ln in proc.stdout.read().splitlines()]
        assert proc.wait(timeout=120) == 0
        assert vmt.wait() == 0, tail(vmt.stderr())
    finally:
        proc.kill()
        vmt.kill()
    check_stackload(read_jsonl(log), reports, stackload)


def test_every_file_mapping_is_named_by_its_path(stackload: Path, tmp_path: Path) -> None:
    """ld.so's mappings of every library, a file mapped and closed at once, and a file
    mapped under an fd number the first one had: each named by its own path."""
    a, b = files(tmp_path)
    records, reports, _ = run_traced(tmp_path, command=[str(stackload), str(a), str(b)])
    fa = next(r for r in reports if r["what"] == "file-a")
    fb = next(r for r in reports if r["what"] == "file-b")
    assert fa["fd"] == fb["fd"], "the second file should reuse the first one's fd number"
    pid = next(r["pid"] for r in reports if r["what"] == "done")
    mine = [r for r in records if r["pid"] == pid and r.get("syscall") == "mmap"]
    named = {r["mapping"]["start"]: r["mapping"]["path"] for r in mine if r.get("mapping")}
    assert named[hex(int(fa["addr"], 16))] == str(a)
    assert named[hex(int(fb["addr"], 16))] == str(b)
    file_maps = [r for r in mine if r["args"]["fd"] >= 0]
    assert any("libc.so.6" in r["mapping"]["path"] for r in file_maps)
    for r in file_maps:
        path = r["mapping"]["path"]
        assert path.startswith("/") and Path(path).exists(), r


@pytest.mark.parametrize("program", ["python3", "xz"])
def test_debian_binaries_without_frame_pointers(program: str, tmp_path: Path) -> None:
    """The biggest rise of Debian's python3 (a 400 MiB bytearray) and of xz -9 shows the
    allocator's frames in libc and the program's own, at least 5 frames, every one real."""
    if program == "python3":
        exe = Path("/usr/bin/python3")
        require(exe.exists(), "Debian's /usr/bin/python3 is not installed")
        command = [str(exe), "-c", "b = bytearray(400 << 20)"]
        own = ("python3", "libpython")
    else:
        xz = shutil.which("xz")
        require(xz is not None, "xz is not installed")
        assert xz is not None
        src = tmp_path / "input"
        src.write_bytes(bytes(range(256)) * 4096)
        command = [xz, "-9", "-T1", "-c", "-k", str(src)]
        own = ("xz", "liblzma")
    records, _, _ = run_traced(tmp_path, command=command)
    pid = next(r["pid"] for r in of(records, "exec"))
    top = biggest_rise(records, pid)
    frames = top["stack"] or []
    assert len(frames) >= 5, frames
    for f in frames:
        assert f["module"] and Path(f["module"]).exists(), ("a frame without its file", f)
    modules = [Path(f["module"]).name for f in frames]
    assert any(m.startswith("libc.so") for m in modules), modules
    assert any(m.startswith(own) for m in modules), modules
    assert any((f["function"] or "").endswith("malloc") for f in frames), frames
