"""User stack symbols from the ELF files a process mapped (vmtrace.symbols).

The process symbolized is this test's own (its libc) or a zombie child: real files, real
/proc, no root needed."""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator

import pytest

from vmtrace import procfs
from vmtrace.records import Mapping
from vmtrace.symbols import StackSymbolizer, load_image


def _libc_function(name: str) -> tuple[int, Mapping]:
    libc = ctypes.CDLL(None)
    addr = ctypes.cast(getattr(libc, name), ctypes.c_void_p).value
    assert addr
    m = next(m for m in procfs.read_maps(os.getpid()) if m.start <= addr < m.end)
    return addr, m


def _no_mappings(_pid: int, _addr: int) -> Mapping | None:
    return None


def test_libc_function_named_with_offset_and_module() -> None:
    addr, m = _libc_function("getpid")
    walk = {7: [addr, addr + 3]}
    sym = StackSymbolizer(lambda sid: walk[sid], _no_mappings, procfs.read_maps)
    frames = sym(os.getpid(), 7)
    module = os.path.basename(m.path)
    assert frames == [(addr, f"getpid+0x0 [{module}]"), (addr + 3, f"getpid+0x3 [{module}]")]


def test_known_mapping_used_without_reading_proc() -> None:
    """The tracer's own view of the mappings places the address: /proc is not read."""
    addr, m = _libc_function("getpid")

    def no_proc(_pid: int) -> list[Mapping]:
        raise AssertionError("/proc/PID/maps read although the mapping was known")

    sym = StackSymbolizer(lambda _sid: [addr], lambda _p, _a: m, no_proc)
    assert sym(os.getpid(), 1)[0][1] == f"getpid+0x0 [{os.path.basename(m.path)}]"


def test_unknown_addresses_have_no_name() -> None:
    sym = StackSymbolizer(lambda _sid: [0x10, 0xFFFFFFFF0000], _no_mappings, procfs.read_maps)
    assert sym(os.getpid(), 1) == [(0x10, None), (0xFFFFFFFF0000, None)]


def test_non_elf_file_is_not_an_image(tmp_path: pytest.TempPathFactory) -> None:
    path = os.path.join(str(tmp_path), "not-elf")
    with open(path, "wb") as f:
        f.write(b"#!/bin/sh\n" * 100)
    assert load_image(path) is None
    assert load_image(path + ".missing") is None


@pytest.fixture
def zombie() -> Iterator[int]:
    """A child that has exited and is not reaped: /proc/PID/maps empty, /proc/PID/root
    unreadable, as a traced process is while vmtrace reads its last records."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.01)
    yield pid
    os.waitpid(pid, 0)


def test_symbolizing_an_exiting_process_closes_no_fd_of_ours(zombie: int) -> None:
    """GIVEN the fd numbers that symbolizing a live process used are reused by the caller
    WHEN a zombie's stacks are symbolized THEN every fd of the caller is still open.

    This is the interleaving in which bcc's symbolizer closed a stale fd number (stdout,
    the log, a perf event) in the attach/exit race."""
    addr, m = _libc_function("getpid")
    live = StackSymbolizer(lambda _sid: [addr], _no_mappings, procfs.read_maps)
    assert live(os.getpid(), 1)[0][1] is not None
    live.forget(os.getpid())
    ours = [os.open(os.devnull, os.O_RDONLY) for _ in range(64)]
    try:
        before = {fd: os.fstat(fd).st_ino for fd in ours}
        for _ in range(20):
            sym = StackSymbolizer(lambda _sid: [addr, addr + 1], _no_mappings, procfs.read_maps)
            assert sym(zombie, 1) == [(addr, None), (addr + 1, None)]
            sym = StackSymbolizer(lambda _sid: [addr], lambda _p, _a: m, procfs.read_maps)
            assert sym(zombie, 1)[0][1] is not None  # the file is still there to read
        assert {fd: os.fstat(fd).st_ino for fd in ours} == before
    finally:
        for fd in ours:
            os.close(fd)
