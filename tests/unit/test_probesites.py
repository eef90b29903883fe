"""The probe-site resolver on symbol lists recorded from real kernels.

tests/fixtures/kernels/<release>/ holds what scripts/capture-kernel-facts read from
/proc/kallsyms and tracefs on this project's 6.18 host and in the Debian 5.10, 6.1 and 6.12
VMs (scripts/kernel-vm --kernel ...); the expectations follow mm/mmap.c and mm/vma.c of
those versions.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vmtrace.kernel.probesites import (
    CALLS,
    NoSites,
    filter_functions,
    kallsyms_text_symbols,
    resolve_fentry_sites,
    resolve_kprobe_sites,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "kernels"
K510 = FIXTURES / "5.10.0-46-amd64"
K61 = FIXTURES / "6.1.0-57-amd64"
K612 = FIXTURES / "6.12.118+deb13-amd64"
K618 = FIXTURES / "6.18.44-fc-v669"


def symbols(kernel: Path) -> set[str]:
    return kallsyms_text_symbols((kernel / "kallsyms.txt").read_text())


def traceable(kernel: Path) -> set[str] | None:
    path = kernel / "available_filter_functions.txt"
    return filter_functions(path.read_text()) if path.exists() else None


def test_fixtures_are_the_recorded_kernels() -> None:
    assert "uname_r: 5.10.0-46-amd64" in (K510 / "features.txt").read_text()
    assert "6.1.0-57-amd64" in (K61 / "features.txt").read_text()
    assert "uname_r: 6.12.118+deb13-amd64" in (K612 / "features.txt").read_text()
    assert "6.18.44" in (K618 / "features.txt").read_text()


def test_kprobe_sites_on_5_10() -> None:
    """GIVEN Debian 11's 5.10 (remove_vma_list, the latch, inlined: not in kallsyms; munmap,
    brk shrink and mremap all reach __do_munmap; no maple tree names yet)
    THEN the unmap entry is __do_munmap, observed on entry (before the latch) and on return."""
    syms = symbols(K510)
    assert "remove_vma_list" not in syms
    assert not any(s.startswith("remove_vma_list.") for s in syms)
    assert "__do_munmap" in (traceable(K510) or set())
    plan = resolve_kprobe_sites(syms, traceable(K510))
    assert plan.after_write == (
        "vm_stat_account",
        "mmap_region",
        "expand_downwards",
        "do_brk_flags",
        "__do_munmap",
    )
    assert plan.before_unmap == ("__do_munmap",)
    assert plan.exit_mmap == "exit_mmap"


def test_fentry_sites_on_5_10() -> None:
    """__do_munmap takes 5 arguments on 5.10: a trampoline can take it."""
    args = {"__do_munmap": 5, "do_munmap": 4, "vm_stat_account": 3, "mmap_region": 6}
    plan = resolve_fentry_sites(symbols(K510).__contains__, args.get)
    assert plan.before_unmap == ("__do_munmap",)
    assert plan.after_write[-1] == "__do_munmap"
    assert "vms_complete_munmap_vmas" not in plan.after_write


def test_kprobe_sites_on_6_12() -> None:
    """GIVEN Debian 13's 6.12 (vms_complete_munmap_vmas latches and lowers total_vm itself;
    do_vmi_align_munmap is the single path to it; mmap_region wraps a static __mmap_region)
    THEN both are probed, and the unmap entry is do_vmi_align_munmap."""
    syms = symbols(K612)
    assert {"vms_complete_munmap_vmas", "do_vmi_align_munmap"} <= (traceable(K612) or set())
    assert "__do_munmap" not in syms
    plan = resolve_kprobe_sites(syms, traceable(K612))
    assert plan.after_write == (
        "vm_stat_account",
        "mmap_region",
        "expand_downwards",
        "vms_complete_munmap_vmas",
        "do_brk_flags",
        "do_vmi_align_munmap",
    )
    assert plan.before_unmap == ("do_vmi_align_munmap",)
    assert plan.exit_mmap == "exit_mmap"


def test_fentry_sites_on_6_12() -> None:
    """do_vmi_align_munmap has 7 arguments on 6.12 as on 6.18: fentry falls back on
    do_vmi_munmap (6), still before vms_complete_munmap_vmas."""
    args = {"do_vmi_align_munmap": 7, "do_vmi_munmap": 6, "vms_complete_munmap_vmas": 3}
    plan = resolve_fentry_sites(symbols(K612).__contains__, args.get)
    assert plan.before_unmap == ("do_vmi_munmap",)
    assert "vms_complete_munmap_vmas" in plan.after_write
    assert "do_vmi_align_munmap" not in plan.after_write
    assert len(plan.after_write) <= 6


def test_tracepoints_recorded_per_kernel() -> None:
    """mmap_lock_* appeared after 5.10; mmap:exit_mmap in 6.1."""

    def present(kernel: Path) -> set[str]:
        lines = (kernel / "tracepoints.txt").read_text().split("\n")
        return {ln.split()[0] for ln in lines if ln.endswith(" yes")}

    assert "mmap_lock:mmap_lock_released" not in present(K510)
    assert "mmap:exit_mmap" not in present(K510)
    assert {"mmap_lock:mmap_lock_released", "mmap:exit_mmap"} <= present(K612)


def test_kprobe_sites_on_6_1() -> None:
    """GIVEN Debian's 6.1 (remove_mt inlined, munmap and brk shrink through
    do_mas_align_munmap, vm_stat_account inlined into mm/mmap.c's callers)
    THEN the growth callers are observed too, and the unmap entry is do_mas_align_munmap."""
    plan = resolve_kprobe_sites(symbols(K61), traceable(K61))
    assert plan.after_write == (
        "vm_stat_account",
        "mmap_region",
        "expand_downwards",
        "do_brk_flags",
        "do_mas_align_munmap",
    )
    assert plan.before_unmap == ("do_mas_align_munmap",)
    assert plan.exit_mmap == "exit_mmap"


def test_kprobe_sites_on_6_18() -> None:
    """GIVEN 6.18 (vms_complete_munmap_vmas lowers total_vm itself, do_vmi_align_munmap is
    the single unmap path; available_filter_functions not readable: unknown, not empty)."""
    assert traceable(K618) is None
    plan = resolve_kprobe_sites(symbols(K618), None)
    assert plan.after_write == (
        "vm_stat_account",
        "mmap_region",
        "expand_downwards",
        "vms_complete_munmap_vmas",
        "do_brk_flags",
        "do_vmi_align_munmap",
    )
    assert plan.before_unmap == ("do_vmi_align_munmap",)


def test_traceable_list_excludes_what_cannot_be_probed() -> None:
    syms = {"vm_stat_account", "mmap_region", "do_mas_align_munmap", "do_brk_flags", *CALLS}
    plan = resolve_kprobe_sites(syms, traceable={"mmap_region", "do_mas_align_munmap", *CALLS})
    assert plan.after_write == ("mmap_region", "do_mas_align_munmap")


def test_compiler_clones_are_used_when_the_function_itself_is_gone() -> None:
    syms = {
        "vm_stat_account",
        "do_brk_flags.isra.0",
        "__do_munmap.constprop.0",
        "__do_munmap.cold",  # an outlined cold path, not an entry
        "remove_vma_list.part.0",
        *CALLS,
    }
    plan = resolve_kprobe_sites(syms)
    assert "do_brk_flags.isra.0" in plan.after_write
    assert plan.before_unmap == ("__do_munmap.constprop.0",)
    assert "__do_munmap.cold" not in plan.after_write


def test_old_kernel_do_munmap_only() -> None:
    """4.14-style: do_munmap is the unmap entry, vm_brk_flags the brk path."""
    plan = resolve_kprobe_sites(
        {"vm_stat_account", "do_munmap", "vm_brk_flags", "exit_mmap", *CALLS}
    )
    assert plan.before_unmap == ("do_munmap",)
    assert plan.after_write == ("vm_stat_account", "vm_brk_flags", "do_munmap")


def test_the_decoded_calls_must_be_probe_able() -> None:
    """Without the syscall functions a call's changes could not be merged and judged at
    its return (a moving mremap would show a false peak): refuse, naming them."""
    syms = {"vm_stat_account", "do_vmi_align_munmap", *CALLS} - {"__x64_sys_mremap"}
    with pytest.raises(NoSites, match="__x64_sys_mremap"):
        resolve_kprobe_sites(syms)
    with pytest.raises(NoSites, match="__x64_sys_mremap"):
        resolve_fentry_sites(syms.__contains__)
    plan = resolve_kprobe_sites(syms | {"__x64_sys_mremap"})
    assert plan.calls == CALLS


def test_no_accounting_function_is_a_clear_refusal() -> None:
    with pytest.raises(NoSites, match="vm_stat_account nor mmap_region"):
        resolve_kprobe_sites({"do_munmap", "exit_mmap"})


def test_fentry_skips_functions_a_trampoline_cannot_take() -> None:
    """GIVEN 6.1's BTF, where do_mas_align_munmap has 7 arguments (error 524 there)
    THEN fentry observes do_mas_munmap (6) before unmaps instead."""
    syms = symbols(K61) | set(CALLS)
    args = {"do_mas_align_munmap": 7, "do_mas_munmap": 6, "vm_stat_account": 3}
    plan = resolve_fentry_sites(syms.__contains__, args.get)
    assert plan.before_unmap == ("do_mas_munmap",)
    assert "do_mas_align_munmap" not in plan.after_write
    assert plan.after_write[0] == "vm_stat_account"
    assert plan.exit_mmap is None


def test_fentry_on_6_18() -> None:
    args = {"do_vmi_align_munmap": 7, "do_vmi_munmap": 6, "mmap_region": 6}
    plan = resolve_fentry_sites(symbols(K618).__contains__, args.get)
    assert plan.before_unmap == ("do_vmi_munmap",)
    assert "vms_complete_munmap_vmas" in plan.after_write
    assert len(plan.after_write) <= 6
