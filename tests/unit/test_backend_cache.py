"""`--backend auto` remembers, per boot, a backend that failed to load."""

from __future__ import annotations

from pathlib import Path

from vmtrace.backends import forget_failure, remember_failure, remembered_failure
from vmtrace.kernel.probesites import ProbePlan

PLAN = ProbePlan(("vm_stat_account",), ("do_vmi_munmap",), None)


def test_a_failure_is_remembered_for_the_same_sites(tmp_path: Path) -> None:
    cache = str(tmp_path / "sub" / "failures.json")
    assert remembered_failure("fentry", PLAN, cache) is None
    remember_failure("fentry", PLAN, "bpf: Operation not permitted", cache)
    assert remembered_failure("fentry", PLAN, cache) == "bpf: Operation not permitted"
    assert (Path(cache).stat().st_mode & 0o777) == 0o600


def test_other_sites_or_backends_are_not_covered(tmp_path: Path) -> None:
    cache = str(tmp_path / "failures.json")
    remember_failure("fentry", PLAN, "no", cache)
    other = ProbePlan(("mmap_region",), (), None)
    assert remembered_failure("fentry", other, cache) is None
    assert remembered_failure("kprobe", PLAN, cache) is None


def test_forget_and_garbage(tmp_path: Path) -> None:
    cache = tmp_path / "failures.json"
    remember_failure("fentry", PLAN, "no", str(cache))
    forget_failure("fentry", PLAN, str(cache))
    assert remembered_failure("fentry", PLAN, str(cache)) is None
    cache.write_text("{not json")
    assert remembered_failure("fentry", PLAN, str(cache)) is None
    remember_failure("fentry", PLAN, "again", str(cache))
    assert remembered_failure("fentry", PLAN, str(cache)) == "again"
