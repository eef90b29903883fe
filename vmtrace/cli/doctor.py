"""`vmtrace doctor`: what this kernel offers, and whether tracing can work here."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import click

from vmtrace.errors import VmtraceError


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    backends: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))


def _try(report: Report, name: str, fn: Any) -> Any:
    try:
        value = fn()
    except VmtraceError as e:
        report.add(name, False, str(e))
        return None
    except OSError as e:
        report.add(name, False, f"{e.strerror or e}")
        return None
    return value


def diagnose(load: bool) -> Report:
    from vmtrace.backends import KernelSurvey, candidates, forget_failure, remember_failure
    from vmtrace.kernel.headers import choose_headers
    from vmtrace.kernel.offsets import read_offsets
    from vmtrace.kernel.privileges import check_tracing_privileges
    from vmtrace.kernel.tracefs import tracefs_root
    from vmtrace.session import BccSession, import_bcc

    r = Report()
    u = os.uname()
    r.add("kernel", u.machine == "x86_64", f"{u.release} ({u.machine})")
    privileged = _try(r, "privileges", check_tracing_privileges) is None and not any(
        c.name == "privileges" for c in r.checks
    )
    if privileged:
        r.add("privileges", True, "root or CAP_BPF+CAP_PERFMON")
    offsets = _try(r, "BTF", read_offsets)
    if offsets is not None:
        r.add(
            "BTF",
            True,
            f"/sys/kernel/btf/vmlinux: task_struct.mm={offsets.task_mm} mm_struct.total_vm="
            f"{offsets.mm_total_vm} hiwater_vm={offsets.mm_hiwater_vm} "
            f"hiwater_rss={offsets.mm_hiwater_rss}",
        )
    root = _try(r, "tracefs", lambda: tracefs_root(mount_if_missing=privileged))
    survey = None
    if root is not None:
        r.add("tracefs", True, root)
        survey = KernelSurvey(root)
        missing = survey.missing_tracepoints
        r.add(
            "tracepoints",
            not missing,
            "all present (mmap_lock acquire/release, vm_unmapped_area, sched exec/exit/fork)"
            if not missing
            else f"missing: {', '.join(missing)}",
        )
        r.add(
            "bpf_task_pt_regs",
            survey.have_task_pt_regs,
            "5.15+; before it the syscall registers are found from the kernel stack layout",
        )
        kprobes = "kprobe_events" if survey.kprobes else "CONFIG_KPROBES off"
        r.add("kprobes", survey.kprobes, kprobes)
    try:
        with open("/sys/kernel/security/lockdown") as f:
            mode = f.read().strip()
        r.add("lockdown", "[none]" in mode, mode)
    except OSError:
        r.add("lockdown", True, "no lockdown LSM interface (not locked down)")
    bcc = _try(r, "bcc", import_bcc)
    if bcc is not None:
        r.add("bcc", True, getattr(bcc, "__version__", "?"))
    headers = _try(r, "headers", choose_headers)
    if headers is not None:
        r.add("headers", True, headers.description)

    if survey is None or offsets is None:
        return r
    for cand in candidates("auto", survey):
        entry: dict[str, Any] = {
            "backend": cand.name,
            "sites": cand.plan.describe() if cand.plan else None,
            "cost": backend_cost(cand.name, survey.have_task_pt_regs),
        }
        if not cand.usable:
            entry.update(status="unavailable", detail=cand.reason)
        elif not load or bcc is None or headers is None or not privileged:
            entry.update(status="not loaded", detail="(--no-load, or bcc/headers/privileges)")
        else:
            session = BccSession(
                cand.name, offsets, headers.kernel_source, survey.have_task_pt_regs, cand.plan
            )
            t0 = time.monotonic()
            try:
                session.open()
                entry.update(
                    status="ok", detail=f"loaded and detached in {time.monotonic() - t0:.2f} s"
                )
                forget_failure(cand.name, cand.plan)
            except VmtraceError as e:
                entry.update(status="failed", detail=str(e))
                remember_failure(cand.name, cand.plan, str(e))
            finally:
                session.close()
        r.backends.append(entry)
    return r


def backend_cost(backend: str, have_task_pt_regs: bool) -> str:
    """Who pays for a backend's probes while it traces, in words."""
    if backend == "tracepoint":
        what = (
            "every task's mmap_lock acquire/release and free-range search runs a map lookup "
            "(mm syscalls and slow-path faults only); no syscall is slowed"
        )
    else:
        probe = "a BPF trampoline" if backend == "fentry" else "a kprobe"
        what = (
            f"{probe} on the total_vm writers and on the mmap, munmap, brk, mremap, shmat and "
            "shmdt syscall functions: only tasks making those calls pay; other syscalls are "
            "not slowed"
        )
    if not have_task_pt_regs:
        what += "; syscall registers found from the kernel stack layout (no bpf_task_pt_regs)"
    return what


@click.command("doctor")
@click.option("--no-load", is_flag=True, help="Do not try to load each backend's programs.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def doctor_cmd(ctx: click.Context, /, no_load: bool, as_json: bool) -> None:
    """Say what this kernel offers and which backend would trace; exit 0 if one can.

    \b
    Example:
      sudo vmtrace doctor
    """
    r = diagnose(load=not no_load)
    working = [b["backend"] for b in r.backends if b["status"] == "ok"]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "checks": [c.__dict__ for c in r.checks],
                    "backends": r.backends,
                    "working": working,
                }
            )
        )
    else:
        for c in r.checks:
            click.echo(f"{c.name:<22} {'ok ' if c.ok else 'NO '} {c.detail}")
        for b in r.backends:
            sites = f"  [{b['sites']}]" if b["sites"] else ""
            click.echo(f"backend {b['backend']:<14} {b['status']}: {b['detail']}{sites}")
            click.echo(f"  {'':<20} cost: {b['cost']}")
        if working:
            click.echo(f"=> tracing works here; --backend auto uses {working[0]}")
        elif no_load:
            click.echo("=> backends not loaded (--no-load): run without it to know")
        else:
            click.echo("=> no backend can trace on this machine (see above)")
    ctx.exit(0 if working or (no_load and r.backends) else 1)
