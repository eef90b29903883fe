"""The bcc session: compile the backend, attach, poll the ring buffer, detach.

The only module that imports bcc; everything downstream gets decoded `KernelEvent`s.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path
from typing import Any

from vmtrace.abi import COUNTER_LOST, COUNTER_STACK_ERR, DecodeError, KernelEvent, decode_event
from vmtrace.errors import EnvironmentProblem, ProbeError
from vmtrace.kernel.offsets import KernelOffsets

BPF_DIR = Path(os.environ.get("VMTRACE_BPF_DIR", Path(__file__).resolve().parent.parent / "bpf"))

# Tracepoints the tracepoint backend attaches; mmap:exit_mmap is optional (6.1+).
TRACEPOINTS = (
    "mmap_lock:mmap_lock_released",
    *(
        f"syscalls:sys_{d}_{s}"
        for s in ("mmap", "munmap", "brk", "mremap", "shmat", "shmdt", "execve")
        for d in ("enter", "exit")
    ),
)
OPTIONAL_TRACEPOINTS = ("mmap:exit_mmap",)

# Records that fit the ring buffer before the kernel drops them: at ~5 µs a record for the
# Python reader, 16 MiB (~95k records) absorbs a storm of several hundred ms.
DEFAULT_RING_PAGES = 4096
WAKEUP_EVERY = 512


def import_bcc() -> Any:
    try:
        import bcc
    except ImportError as e:
        raise EnvironmentProblem(
            f"failed to import bcc: {e} (fix: apt-get install python3-bpfcc, and run vmtrace "
            "from /usr/bin/python3 or a venv made with --system-site-packages)"
        ) from None
    return bcc


class TracepointSession:
    backend = "tracepoint"

    def __init__(
        self,
        offsets: KernelOffsets,
        kernel_source: str | None,
        have_exit_mmap: bool,
        ring_pages: int = DEFAULT_RING_PAGES,
    ) -> None:
        self._offsets = offsets
        self._kernel_source = kernel_source
        self._have_exit_mmap = have_exit_mmap
        self._ring_pages = ring_pages
        self._bpf: Any = None
        self._batch: list[KernelEvent] = []
        self.decode_errors = 0

    def open(self) -> None:
        bcc = import_bcc()
        if self._kernel_source:
            os.environ["BCC_KERNEL_SOURCE"] = self._kernel_source
        cflags = [
            f"-I{BPF_DIR}",
            *self._offsets.cflags(),
            f"-DVMT_RINGBUF_PAGES={self._ring_pages}",
            f"-DVMT_WAKEUP_EVERY={WAKEUP_EVERY}",
            "-Wno-macro-redefined",
        ]
        if self._have_exit_mmap:
            cflags.append("-DVMT_HAVE_EXIT_MMAP=1")
        src = BPF_DIR / "tracepoint.c"
        if not src.exists():
            raise ProbeError(f"failed to load BPF source: {src} is missing (set VMTRACE_BPF_DIR)")
        try:
            self._bpf = bcc.BPF(src_file=str(src).encode(), cflags=cflags)
        except Exception as e:
            raise ProbeError(
                f"failed to compile or attach the tracepoint backend: {str(e).strip()} "
                "(rerun with -v for the headers used)"
            ) from None
        self._bpf["events"].open_ring_buffer(self._on_record)

    def _on_record(self, _ctx: Any, data: Any, size: int) -> None:
        try:
            self._batch.append(decode_event(ctypes.string_at(data, size)))
        except DecodeError:
            self.decode_errors += 1

    def add_target(self, pid: int) -> None:
        table = self._bpf["targets"]
        table[ctypes.c_uint32(pid)] = table.Leaf()

    def remove_target(self, pid: int) -> None:
        with contextlib.suppress(KeyError):
            del self._bpf["targets"][ctypes.c_uint32(pid)]

    def poll(self, timeout_ms: int) -> list[KernelEvent]:
        """Wait up to timeout_ms for records, then return every record available."""
        self._bpf.ring_buffer_poll(timeout_ms)
        return self.drain()

    def drain(self) -> list[KernelEvent]:
        self._bpf.ring_buffer_consume()
        batch, self._batch = self._batch, []
        return batch

    def _counter(self, idx: int) -> int:
        values = self._bpf["counters"][ctypes.c_int(idx)]
        return sum(int(v) for v in values)

    def lost(self) -> int:
        return self._counter(COUNTER_LOST)

    def stack_errors(self) -> int:
        return self._counter(COUNTER_STACK_ERR)

    def symbolize(self, pid: int, stack_id: int) -> list[tuple[int, str | None]]:
        """The user stack `stack_id` as (address, "func+0x12 [module]" or None)."""
        frames: list[tuple[int, str | None]] = []
        try:
            for addr in self._bpf["stacks"].walk(stack_id):
                sym = self._bpf.sym(addr, pid, show_module=True, show_offset=True)
                name = sym.decode("utf-8", "replace") if isinstance(sym, bytes) else str(sym)
                frames.append((addr, None if name.startswith("[unknown]") else name))
        except KeyError:
            return []
        return frames

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
