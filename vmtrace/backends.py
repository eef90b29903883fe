"""Which backend can trace on this kernel, and with which probe sites.

Reads only files (tracefs, /proc/kallsyms, BTF); loading programs is the session's job.
`vmtrace doctor` and `--backend auto` both start from `survey()`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

from vmtrace import bootcache
from vmtrace.kernel.btf import Btf
from vmtrace.kernel.probesites import (
    NoSites,
    ProbePlan,
    filter_functions,
    kallsyms_text_symbols,
    resolve_fentry_sites,
    resolve_kprobe_sites,
)
from vmtrace.kernel.tracefs import missing_tracepoints
from vmtrace.session import BACKENDS, LIFECYCLE_TRACEPOINTS, LOCK_TRACEPOINTS

# bpf_task_pt_regs() came with 5.15; before it the registers are found from the layout of
# the task's kernel stack.
TASK_PT_REGS_SINCE = (5, 15)


CHOICES = ("auto", *BACKENDS)

# The tracepoint backend reads mm->total_vm and hiwater_vm in mmap_lock_released, trusting that
# the writer still holds the lock there. The tracepoint (5.11+) fired after up_write/up_read
# until mmap_lock.h was changed to trace before releasing (commit 10994316089c, in 5.15): on
# older kernels another thread may already have changed the counters when it fires. Gated on
# the version, since the tracepoint exists in both orders.
TRACEPOINT_MIN_KERNEL = (5, 15)


def kernel_version(release: str) -> tuple[int, int] | None:
    """(major, minor) of a `uname -r` string ("5.10.0-46-amd64" -> (5, 10)); None if unparsable."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True)
class Candidate:
    """A backend and its probe sites, or why it cannot run here (`reason` set)."""

    name: str
    plan: ProbePlan | None = None
    reason: str | None = None

    @property
    def usable(self) -> bool:
        return self.reason is None


@dataclass
class KernelSurvey:
    tracefs: str
    btf_path: str = "/sys/kernel/btf/vmlinux"
    kallsyms_path: str = "/proc/kallsyms"
    release: str = field(default_factory=lambda: os.uname().release)
    _btf: Btf | None = field(default=None, repr=False)

    @cached_property
    def missing_tracepoints(self) -> list[str]:
        return missing_tracepoints(self.tracefs, LIFECYCLE_TRACEPOINTS + LOCK_TRACEPOINTS)

    @cached_property
    def oom_victim(self) -> str | None:
        """What oom:mark_victim passes: "task" (6.7+: the victim's task_struct, whose
        format has its counters) or "pid" (before); None without the tracepoint."""
        fmt = os.path.join(self.tracefs, "events", "oom", "mark_victim", "format")
        try:
            with open(fmt, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            return None
        return "task" if "total_vm" in text else "pid"

    @property
    def have_task_pt_regs(self) -> bool:
        version = kernel_version(self.release)
        return version is not None and version >= TASK_PT_REGS_SINCE

    @cached_property
    def kprobes(self) -> bool:
        # CONFIG_KPROBES off removes the kprobe_events interface (and the PMU).
        return os.path.exists(os.path.join(self.tracefs, "kprobe_events")) or os.path.exists(
            "/sys/bus/event_source/devices/kprobe"
        )

    @cached_property
    def kallsyms(self) -> set[str]:
        with open(self.kallsyms_path, encoding="utf-8", errors="replace") as f:
            return kallsyms_text_symbols(f.read())

    @cached_property
    def traceable(self) -> set[str] | None:
        path = os.path.join(self.tracefs, "available_filter_functions")
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return filter_functions(f.read())
        except OSError:
            return None

    @property
    def btf(self) -> Btf:
        if self._btf is None:
            self._btf = Btf.from_file(self.btf_path)
        return self._btf

    def candidate(self, name: str) -> Candidate:
        missing_lifecycle = [t for t in self.missing_tracepoints if t in LIFECYCLE_TRACEPOINTS]
        if missing_lifecycle:
            return Candidate(name, reason=f"missing tracepoints {', '.join(missing_lifecycle)}")
        if name == "tracepoint":
            version = kernel_version(self.release)
            if version is not None and version < TRACEPOINT_MIN_KERNEL:
                need = ".".join(map(str, TRACEPOINT_MIN_KERNEL))
                return Candidate(
                    name,
                    reason=f"needs Linux {need}+ (this is {self.release}): before {need}, "
                    "mmap_lock_released fires after the lock is dropped, when another thread "
                    "may already have changed the counters (fix: --backend kprobe or fentry)",
                )
            missing_lock = [t for t in self.missing_tracepoints if t in LOCK_TRACEPOINTS]
            if missing_lock:
                return Candidate(
                    name, reason=f"missing tracepoint {', '.join(missing_lock)} (5.15+)"
                )
            if not self.have_task_pt_regs:
                return Candidate(name, reason="no bpf_task_pt_regs helper (5.15+)")
            return Candidate(name)
        if name == "kprobe":
            if not self.kprobes:
                return Candidate(
                    name,
                    reason="this kernel has no kprobes (CONFIG_KPROBES is off: no kprobe_events)",
                )
            try:
                return Candidate(name, resolve_kprobe_sites(self.kallsyms, self.traceable))
            except NoSites as e:
                return Candidate(name, reason=str(e))
        if name == "fentry":
            try:
                return Candidate(
                    name, resolve_fentry_sites(self.btf.has_function, self.btf.function_arg_count)
                )
            except NoSites as e:
                return Candidate(name, reason=str(e))
        return Candidate(name, reason=f"unknown backend {name!r}")


def candidates(requested: str, survey: KernelSurvey) -> Iterator[Candidate]:
    """The backends to try, best first: all of them for `auto`, else just the one asked;
    each surveyed when it is reached (the caller may start loading the first meanwhile)."""
    names = BACKENDS if requested == "auto" else (requested,)
    return (survey.candidate(n) for n in names)


# A backend that failed to load fails again until the next boot (an EPERM from the
# verifier, a trampoline limit). `--backend auto` remembers such failures per boot in
# /run (tmpfs: gone at reboot), so it does not pay a second of compiling for nothing on
# every start. An explicit --backend, and `vmtrace doctor`, always try for real.
FAILURE_CACHE = os.path.join(bootcache.RUN_DIR, "load-failures.json")


def _sources_digest() -> str:
    """A digest of the BPF sources: a failure to load remembered for one version of them
    says nothing about another (a checkout updated, a fix being tried)."""
    from vmtrace.session import BPF_DIR

    h = hashlib.sha256()
    for path in sorted(BPF_DIR.glob("*.[ch]")):
        with contextlib.suppress(OSError):
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _boot_key(backend: str, plan: ProbePlan | None) -> str:
    from vmtrace import __version__

    sites = plan.describe() if plan else ""
    return f"{bootcache.boot_id()}|{__version__}|{_sources_digest()}|{backend}|{sites}"


def _read_cache(path: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in bootcache.read(path).items()}


def remembered_failure(
    backend: str, plan: ProbePlan | None, path: str = FAILURE_CACHE
) -> str | None:
    return _read_cache(path).get(_boot_key(backend, plan))


def remember_failure(
    backend: str, plan: ProbePlan | None, reason: str, path: str = FAILURE_CACHE
) -> None:
    data = _read_cache(path)
    data[_boot_key(backend, plan)] = reason
    bootcache.write(path, data)


def forget_failure(backend: str, plan: ProbePlan | None, path: str = FAILURE_CACHE) -> None:
    data = _read_cache(path)
    if data.pop(_boot_key(backend, plan), None) is not None:
        bootcache.write(path, data)
