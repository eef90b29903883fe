"""The bcc session: compile the backend, attach, poll the ring buffer, detach.

The only module that imports bcc; everything downstream gets decoded `KernelEvent`s.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vmtrace.abi import (
    COUNTER_CALLS_FULL,
    COUNTER_FILTERED,
    COUNTER_LOST_CHANGES,
    COUNTER_LOST_VITAL,
    COUNTER_STACK_ERR,
    COUNTER_TALLIED,
    COUNTER_TARGETS_FULL,
    MAX_STACK_BYTES,
    STACK_CHUNK,
    DecodeError,
    KernelEvent,
    Losses,
    TraceConfig,
    comm_key,
    decode_event,
)
from vmtrace.errors import EnvironmentProblem, ProbeError
from vmtrace.kernel.offsets import KernelOffsets
from vmtrace.kernel.probesites import MAX_FENTRY_WRITERS, ProbePlan
from vmtrace.pidns import PidNamespace
from vmtrace.records import NO_TALLY, Tally
from vmtrace.ringorder import merge_rings, ts_of

BPF_DIR = Path(os.environ.get("VMTRACE_BPF_DIR", Path(__file__).resolve().parent.parent / "bpf"))

BACKENDS = ("tracepoint", "fentry", "kprobe")  # best first: what `--backend auto` tries

# Raw tracepoints every backend attaches (exec, exit, --follow's forks), and the tracepoint
# backend's own. No syscalls:* tracepoint: enabling one puts every syscall of every task on
# the host on the slow path.
LIFECYCLE_TRACEPOINTS = (
    "sched:sched_process_exec",
    "sched:sched_process_exit",
    "sched:sched_process_fork",
)
LOCK_TRACEPOINTS = (
    "mmap_lock:mmap_lock_acquire_returned",
    "mmap_lock:mmap_lock_released",
    "mmap:vm_unmapped_area",
)

# Grow/shrink records that fit the ring before the kernel drops them: 16 MiB (~60k records)
# absorbs a storm of several hundred ms. The vital ring holds peaks, latches and lifecycle
# records with their user stacks (~17 KiB each with the default stack size).
DEFAULT_RING_PAGES = 4096
DEFAULT_VITAL_PAGES = 4096
DEFAULT_STACK_BYTES = 16384
WAKEUP_EVERY = 512
MAX_BATCH = 20_000  # records handed over per poll (~5 MB of Python objects)
_KB_PER_PAGE = os.sysconf("SC_PAGE_SIZE") // 1024


_LOCAL_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_.]+)"\s*$', re.M)


def load_source(name: str, bpf_dir: Path = BPF_DIR, _seen: frozenset[str] = frozenset()) -> str:
    """A backend's C source with our own quoted includes inlined.

    bcc generates the argument structs of TRACEPOINT_PROBE, and rewrites map calls, only in
    its main file; the probes shared by every backend live in headers, so they are pasted in
    (with #line markers, so compiler errors name the real file).
    """
    path = bpf_dir / name
    if name in _seen:
        return ""  # include guard
    try:
        text = path.read_text()
    except OSError as e:
        raise ProbeError(
            f"failed to load BPF source {path}: {e.strerror} (set VMTRACE_BPF_DIR)"
        ) from None

    def inline(m: re.Match[str]) -> str:
        body = load_source(m.group(1), bpf_dir, _seen | {name})
        line = text.count("\n", 0, m.end()) + 1
        return f'#line 1 "{bpf_dir / m.group(1)}"\n{body}\n#line {line} "{path}"'

    return _LOCAL_INCLUDE.sub(inline, text)


def _identifier(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ProbeError(f"failed to build the fentry backend: {name!r} is not a C identifier")
    return name


def import_bcc() -> Any:
    try:
        import bcc
    except ImportError as e:
        raise EnvironmentProblem(
            f"failed to import bcc: {e} (fix: apt-get install python3-bpfcc, and run vmtrace "
            "from /usr/bin/python3 or a venv made with --system-site-packages)"
        ) from None
    return bcc


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what libbcc and clang print on fd 2 (they bypass sys.stderr), so a failed
    attempt can be summed up in one line instead of a page of diagnostics."""
    out: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


def _last_error_line(text: str) -> str:
    # The verifier names a helper this kernel does not allow in the program type; that is the
    # reason, whatever bcc's last line says.
    refused = re.findall(r"unknown func (\w+)#(\d+)", text)
    if refused:
        name, number = refused[-1]
        return f"this kernel's verifier refuses helper {name} (#{number}) in these programs"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower() or "failed" in ln.lower() or "permission" in ln.lower():
            return ln
    return lines[-1] if lines else ""


class BccSession:
    """One backend's programs, compiled and attached; `backend` is tracepoint, kprobe or
    fentry (bpf/<backend>.c)."""

    def __init__(
        self,
        backend: str,
        offsets: KernelOffsets,
        kernel_source: str | None,
        have_task_pt_regs: bool,
        plan: ProbePlan | None = None,
        ring_pages: int = DEFAULT_RING_PAGES,
        config: TraceConfig | None = None,
        max_targets: int = 1024,
        stack_bytes: int = DEFAULT_STACK_BYTES,
        oom_victim: str | None = None,
        pidns: PidNamespace | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ProbeError(f"failed to build backend {backend}: unknown backend")
        if backend != "tracepoint" and plan is None:
            raise ProbeError(f"failed to build the {backend} backend: no probe sites resolved")
        self.backend = backend
        self.plan = plan
        self._offsets = offsets
        self._kernel_source = kernel_source
        self._have_task_pt_regs = have_task_pt_regs
        self._ring_pages = ring_pages
        if stack_bytes < 0 or stack_bytes % STACK_CHUNK or stack_bytes > MAX_STACK_BYTES:
            raise ProbeError(
                f"failed to build the {backend} backend: a stack snapshot of {stack_bytes} bytes "
                f"(fix: 0, or a multiple of {STACK_CHUNK} up to {MAX_STACK_BYTES})"
            )
        self._stack_bytes = stack_bytes
        self._pidns = pidns
        # Inside a PID namespace the victim is translated from its task; before 6.7 the
        # tracepoint names only the host's pid, which nothing there can translate.
        self._oom_victim = oom_victim if pidns is None or oom_victim == "task" else None
        self.config = config or TraceConfig()
        self._max_targets = max_targets
        self._bpf: Any = None
        self._changes: list[KernelEvent] = []  # from the `events` ring, at most MAX_BATCH
        self._vital: list[KernelEvent] = []
        self._held: list[KernelEvent] = []  # records read that wait for the next drain
        self.more = False  # the last drain left records in the `events` ring
        self.decode_errors = 0
        self.close_errors = 0
        self.diagnostics = ""

    def _cflags(self) -> list[str]:
        cflags = [
            *self._offsets.cflags(),
            f"-DVMT_RINGBUF_PAGES={self._ring_pages}",
            f"-DVMT_VITAL_PAGES={DEFAULT_VITAL_PAGES}",
            f"-DVMT_STACK_BYTES={self._stack_bytes or STACK_CHUNK}",
            f"-DVMT_WAKEUP_EVERY={WAKEUP_EVERY}",
            f"-DVMT_MAX_TARGETS={int(self._max_targets)}",
            "-Wno-macro-redefined",
        ]
        if self.config.hwm_step_pages:
            cflags.append("-DVMT_TRACE_RSS=1")
        if self._stack_bytes == 0:
            cflags.append("-DVMT_NO_STACKS=1")
        if self._oom_victim is not None:
            cflags.append("-DVMT_TRACE_OOM=1")
            if self._oom_victim == "task":
                cflags.append("-DVMT_OOM_TASK_ARG=1")
        if self._pidns is not None:
            cflags += self._pidns.cflags()
        if self._have_task_pt_regs:
            cflags.append("-DVMT_HAVE_TASK_PT_REGS=1")
        if self.config.cgroup_id:
            # only then: the cgroup array map and its helper cost nothing otherwise
            cflags.append("-DVMT_CGROUP_FILTER=1")
        if self.backend == "fentry" and self.plan is not None:
            # Names come from probesites' fixed tables, checked against BTF: identifiers only.
            for i, name in enumerate(self.plan.after_write[:MAX_FENTRY_WRITERS]):
                cflags.append(f"-DVMT_FEXIT_{i}={_identifier(name)}")
            if self.plan.before_unmap:
                cflags.append(f"-DVMT_FENTRY_UNMAP={_identifier(self.plan.before_unmap[0])}")
            for i, name in enumerate(self.plan.calls):
                cflags.append(f"-DVMT_CALL_{i}={_identifier(name)}")
        return cflags

    def open(self, quiet: bool = True) -> None:
        """Compile, load and attach. `quiet` keeps bcc's diagnostics out of the terminal
        (a page of clang output, or a bare "Need super-user privileges" for an EPERM);
        the error then carries their gist, and `diagnostics` all of it."""
        bcc = import_bcc()
        if self._kernel_source:
            os.environ["BCC_KERNEL_SOURCE"] = self._kernel_source
        text = load_source(f"{self.backend}.c")
        noise: list[str] = []
        capture: contextlib.AbstractContextManager[list[str]] = (
            _captured_stderr() if quiet else contextlib.nullcontext(noise)
        )
        try:
            with capture as noise:
                self._bpf = bcc.BPF(text=text.encode(), cflags=self._cflags())
                self._configure()
                self._attach_probes()
        except Exception as e:
            self.diagnostics = "".join(noise)
            detail = str(e).strip() or type(e).__name__
            if "super-user" in detail and os.geteuid() == 0:
                # bcc's wording for any EPERM; as root it means the kernel said no
                detail = "the kernel refused it although vmtrace runs as root"
            gist = _last_error_line(self.diagnostics)
            if gist and gist not in detail:
                detail = f"{gist} ({detail})"
            if self.config.cgroup_id and "current_task_under_cgroup" in gist:
                detail += " (fix: this kernel cannot filter by cgroup: use --comm or -p)"
            self.close()
            raise ProbeError(f"failed to load the {self.backend} backend: {detail}") from None
        self._bpf["vital"].open_ring_buffer(self._on_vital)
        self._bpf["events"].open_ring_buffer(self._on_change)

    def _configure(self) -> None:
        """Filters go into maps before anything fires; never into the C text."""
        self._bpf["config"][ctypes.c_int(0)] = self.config.encode()
        comms = self._bpf["comms"]
        for name in self.config.comms:
            comms[comms.Key.from_buffer_copy(comm_key(name))] = ctypes.c_uint8(1)
        if self.config.cgroup_path:
            # The map keeps its own reference to the cgroup; this fd is only the way in.
            fd = os.open(self.config.cgroup_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self._bpf["cgroup_filter"][ctypes.c_int(0)] = fd
            finally:
                os.close(fd)

    def _attach_probes(self) -> None:
        if self.backend != "kprobe" or self.plan is None:
            return  # tracepoints and fentry/fexit programs attach themselves when loaded
        for sym in self.plan.after_write:
            self._bpf.attach_kretprobe(event=sym, fn_name="vmt_after_write")
        for sym in self.plan.before_unmap:
            self._bpf.attach_kprobe(event=sym, fn_name="vmt_before_unmap")
        for sym in self.plan.calls:
            self._bpf.attach_kprobe(event=sym, fn_name="vmt_call_entry")
            self._bpf.attach_kretprobe(event=sym, fn_name="vmt_call_exit")

    def _decode(self, data: Any, size: int, into: list[KernelEvent]) -> None:
        try:
            into.append(decode_event(ctypes.string_at(data, size)))
        except DecodeError:
            self.decode_errors += 1

    def _on_vital(self, _ctx: Any, data: Any, size: int) -> int:
        self._decode(data, size, self._vital)
        return 0

    def _on_change(self, _ctx: Any, data: Any, size: int) -> int:
        self._decode(data, size, self._changes)
        # libbpf consumes for as long as records keep coming: under a flood faster than this
        # reader, one poll would never return (memory growing, Ctrl-C unheard). A negative
        # return ends the poll after this record (which is consumed, and kept here); the
        # kernel then drops, and counts, what does not fit the ring.
        return -1 if len(self._changes) >= MAX_BATCH else 0

    def add_target(self, pid: int) -> None:
        table = self._bpf["targets"]
        table[ctypes.c_uint32(pid)] = table.Leaf()

    def stop_sending(self) -> None:
        """The kernel side sends nothing more (records already in the ring stay): the reader
        can then drain the ring to the end instead of racing a flood."""
        self.config = dataclasses.replace(self.config, stopped=True)
        self._bpf["config"][ctypes.c_int(0)] = self.config.encode()

    def reset_hwm(self, pid: int, hwm_pages: int) -> None:
        """VmHWM went down (clear_refs, or reclaim before any latch): HWM records restart
        from the new value (the kernel side takes it at its next RSS change)."""
        if self.config.hwm_step_pages:
            self._bpf["hwm_resets"][ctypes.c_uint32(pid)] = ctypes.c_uint64(hwm_pages)

    def remove_target(self, pid: int) -> None:
        with contextlib.suppress(KeyError):
            del self._bpf["targets"][ctypes.c_uint32(pid)]

    def poll(self, timeout_ms: int) -> list[KernelEvent]:
        """Wait up to timeout_ms for records, then return every record available."""
        self._bpf.ring_buffer_poll(timeout_ms)
        return self.drain()

    def drain(self) -> list[KernelEvent]:
        """Every record stamped before this drain began, in time order; `more` says the
        `events` ring was left with records (the batch is bounded). A record whose process
        may have an earlier one still on its way to the other ring (vmtrace.ringorder) waits
        for a second read, which releases it."""
        batch: list[KernelEvent] = []
        for _ in range(2):
            since = time.monotonic_ns()
            self._bpf.ring_buffer_consume()
            changes, self._changes = self._changes, []
            vital, self._vital = self._vital, []
            self.more = len(changes) >= MAX_BATCH
            ready, self._held = merge_rings(self._held, vital, changes, since, self.more)
            batch.extend(ready)
            if self.more or not self._held:
                break
        batch.sort(key=ts_of)  # two sorted runs
        return batch

    def rest(self) -> list[KernelEvent]:
        """At the end, once the kernel side sends nothing more: what still waits."""
        rest, self._held = self._held, []
        return rest

    def _counter(self, idx: int) -> int:
        values = self._bpf["counters"][ctypes.c_int(idx)]
        return sum(int(v) for v in values)

    def lost(self) -> int:
        """Records the rings had no room for, of every kind."""
        return self._counter(COUNTER_LOST_CHANGES) + self._counter(COUNTER_LOST_VITAL)

    def losses(self) -> Losses:
        return Losses(
            changes=self._counter(COUNTER_LOST_CHANGES),
            vital=self._counter(COUNTER_LOST_VITAL),
            stacks=self._counter(COUNTER_STACK_ERR),
            targets_full=self._counter(COUNTER_TARGETS_FULL),
            calls_full=self._counter(COUNTER_CALLS_FULL),
        )

    def tallied(self) -> int:
        """Grow/shrink changes counted instead of sent, the reader being behind."""
        return self._counter(COUNTER_TALLIED)

    def _target_state(self, pid: int) -> Any | None:
        """The kernel side's `target_state` of `pid`; None once it is gone (or never was)."""
        try:
            return self._bpf["targets"][ctypes.c_uint32(pid)]
        except KeyError:
            return None

    def tally_of(self, pid: int) -> Tally:
        """`pid`'s changes counted instead of sent so far (none once it is gone)."""
        st = self._target_state(pid)
        if st is None:
            return NO_TALLY
        return Tally.of_pages(
            int(st.tallied), int(st.tallied_grown), int(st.tallied_shrunk), _KB_PER_PAGE
        )

    def filtered(self) -> int:
        return self._counter(COUNTER_FILTERED)

    def lost_of(self, pid: int) -> int | None:
        """Records of `pid` the kernel side had no room for so far; None once it is gone."""
        st = self._target_state(pid)
        if st is None:
            return None
        return int(st.lost)

    def change_in_flight(self, pid: int) -> bool:
        """A task of `pid` holds its mmap_lock for writing (or the read lock it downgraded
        to) and may have changed total_vm without the record being sent yet: the tracepoint
        backend's writer mark. The kprobe and fentry backends judge a change inside the
        writing function and never set it."""
        st = self._target_state(pid)
        if st is None:
            return False
        return bool(st.writer)

    def kernel_peak_pages(self, pid: int) -> int | None:
        """The kernel side's VmPeak for `pid` (max(total_vm, hiwater_vm) it has seen)."""
        st = self._target_state(pid)
        if st is None:
            return None
        return int(st.peak) if st.mm else None

    def close(self) -> None:
        """Detach every probe and close every fd bcc opened for this session, each once.

        bcc's own cleanup() is not called first: when a detach fails (after libbcc has
        closed the perf event fd anyway) it raises and leaves that fd in its bookkeeping, so
        any later cleanup closes the number again, by then perhaps stdout or the log. Each fd
        is taken out of bcc's tables before it is closed, and whatever fails is only
        counted in `close_errors`: no fd is retried."""
        bpf, self._bpf = self._bpf, None
        if bpf is None:
            return
        atexit.unregister(bpf.cleanup)
        errors = 0
        lib = import_bcc().lib
        for tp in list(getattr(bpf, "tracepoint_fds", {})):
            fd = bpf.tracepoint_fds.pop(tp)
            errors += lib.bpf_close_perf_event_fd(fd) < 0
        for event in list(getattr(bpf, "kprobe_fds", {})):
            fds = bpf.kprobe_fds.pop(event)
            for fd in fds.values():
                errors += lib.bpf_close_perf_event_fd(fd) < 0
            errors += lib.bpf_detach_kprobe(event) < 0
        for table in ("raw_tracepoint_fds", "kfunc_entry_fds", "kfunc_exit_fds", "lsm_fds"):
            fds = getattr(bpf, table, {})
            for name in list(fds):
                errors += not _close_once(fds.pop(name))
        funcs = getattr(bpf, "funcs", {})
        for name in list(funcs):
            errors += not _close_once(funcs.pop(name).fd)
        try:
            # Nothing is left in the tables above: this only frees the ring buffer manager
            # (its epoll fd) and the module (its map fds), which bcc alone holds.
            bpf.cleanup()
        except Exception:  # bcc raises bare Exception
            errors += 1
        self.close_errors = errors


def _close_once(fd: int) -> bool:
    try:
        os.close(fd)
    except OSError:
        return False
    return True
