"""What decides, per kernel, which backend may load and what its BPF text contains.

The tracepoint backend is gated on the kernel version (the order of mmap_lock_released and
the unlock changed in 5.15; the tracepoint exists before it), and the cgroup-ancestor helper,
refused by the 5.10 verifier in tracing programs, is compiled only for --cgroup.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vmtrace.abi import TraceConfig
from vmtrace.backends import (
    TRACEPOINT_MIN_KERNEL,
    Candidate,
    KernelSurvey,
    candidates,
    kernel_version,
)
from vmtrace.kernel.offsets import KernelOffsets
from vmtrace.kernel.probesites import ProbePlan
from vmtrace.session import BACKENDS, LIFECYCLE_TRACEPOINTS, LOCK_TRACEPOINTS, BccSession

TRACEPOINTS = LIFECYCLE_TRACEPOINTS + LOCK_TRACEPOINTS

BPF_DIR = Path(__file__).resolve().parent.parent.parent / "bpf"
OFFSETS = KernelOffsets(
    **{name: 8 * (i + 1) for i, name in enumerate(KernelOffsets.__annotations__)}
)


def tracefs_with(root: Path, tracepoints: tuple[str, ...]) -> str:
    for tp in tracepoints:
        category, _, event = tp.partition(":")
        (root / "events" / category / event).mkdir(parents=True)
    return str(root)


@pytest.mark.parametrize(
    ("release", "expected"),
    [
        ("5.10.0-46-amd64", (5, 10)),
        ("6.12.118+deb13-amd64", (6, 12)),
        ("6.1.0-57-amd64", (6, 1)),
        ("6.18.44-fc-v669", (6, 18)),
        ("weird", None),
    ],
)
def test_kernel_version_of_uname_release(release: str, expected: tuple[int, int] | None) -> None:
    assert kernel_version(release) == expected


@pytest.mark.parametrize("release", ["5.11.0", "5.14.21-150400.24-default"])
def test_tracepoint_backend_refused_before_5_15_even_with_the_tracepoint(
    tmp_path: Path, release: str
) -> None:
    """GIVEN a kernel that has every tracepoint (5.11 - 5.14 do) but fires
    mmap_lock_released after the unlock THEN the tracepoint backend is refused, saying why."""
    survey = KernelSurvey(tracefs_with(tmp_path, TRACEPOINTS), release=release)
    assert survey.missing_tracepoints == []
    cand = survey.candidate("tracepoint")
    assert not cand.usable
    assert cand.reason is not None
    assert "5.15" in cand.reason and release in cand.reason
    assert "after the lock is dropped" in cand.reason


@pytest.mark.parametrize("release", ["5.15.0-91-generic", "6.1.0-57-amd64", "6.12.118+deb13-amd64"])
def test_tracepoint_backend_allowed_from_5_15(tmp_path: Path, release: str) -> None:
    assert TRACEPOINT_MIN_KERNEL == (5, 15)
    survey = KernelSurvey(tracefs_with(tmp_path, TRACEPOINTS), release=release)
    assert survey.candidate("tracepoint").usable


def test_tracepoint_backend_on_5_10_names_the_version(tmp_path: Path) -> None:
    """5.10 has no mmap_lock tracepoints at all; the version is the reason given first."""
    no_lock = ("mmap:vm_unmapped_area", *LIFECYCLE_TRACEPOINTS)
    survey = KernelSurvey(tracefs_with(tmp_path, no_lock), release="5.10.0-46-amd64")
    assert survey.missing_tracepoints == [
        "mmap_lock:mmap_lock_acquire_returned",
        "mmap_lock:mmap_lock_released",
    ]
    reason = survey.candidate("tracepoint").reason
    assert reason is not None and "needs Linux 5.15+" in reason
    assert survey.candidate("kprobe").reason != reason  # the other backends are not refused


def test_missing_tracepoint_on_a_new_kernel_is_named(tmp_path: Path) -> None:
    without = tuple(t for t in TRACEPOINTS if t != "mmap_lock:mmap_lock_released")
    survey = KernelSurvey(tracefs_with(tmp_path, without), release="6.1.0-57-amd64")
    reason = survey.candidate("tracepoint").reason
    assert reason == "missing tracepoint mmap_lock:mmap_lock_released (5.15+)"


@pytest.mark.parametrize("backend", ["tracepoint", "kprobe", "fentry"])
def test_cgroup_helper_compiled_only_for_cgroup(backend: str) -> None:
    plan = ProbePlan(("mmap_region", "__do_munmap"), ("__do_munmap",), None)
    without = BccSession(backend, OFFSETS, None, True, plan=plan)._cflags()
    with_cgroup = BccSession(
        backend, OFFSETS, None, True, plan=plan, config=TraceConfig(cgroup_id=4242)
    )._cflags()
    assert "-DVMT_CGROUP_FILTER=1" not in without
    assert "-DVMT_CGROUP_FILTER=1" in with_cgroup


def test_the_cgroup_filter_is_compiled_only_inside_its_ifdef() -> None:
    """The BPF C text: the cgroup array and its check only under #ifdef VMT_CGROUP_FILTER,
    and no cgroup level anywhere (a level counted from the cgroup2 mount is wrong under a
    cgroup namespace; kernels before 5.11 refuse the ancestor helper it needs)."""
    uses = 0
    for path in sorted(BPF_DIR.glob("*.[ch]")):
        stack: list[bool] = []  # per open #if: does it require VMT_CGROUP_FILTER?
        for n, line in enumerate(path.read_text().splitlines(), 1):
            directive = re.match(r"\s*#\s*(ifdef|ifndef|if|else|elif|endif)\b\s*(.*)", line)
            if directive:
                kind, arg = directive.groups()
                if kind in ("ifdef", "if", "ifndef"):
                    stack.append(kind != "ifndef" and "VMT_CGROUP_FILTER" in arg)
                elif kind in ("else", "elif") and stack:
                    stack[-1] = False
                elif kind == "endif" and stack:
                    stack.pop()
                continue
            code = line.split("/*")[0]
            assert "ancestor_cgroup_id" not in code and "cgroup_level" not in code, (path, n)
            if "cgroup_filter" in code:
                uses += 1
                assert any(stack), f"{path.name}:{n} uses the cgroup filter outside its #ifdef"
    assert uses >= 2, "the --cgroup filter no longer uses the cgroup array: update this test"


def test_a_helper_the_verifier_refuses_is_the_reason_given() -> None:
    """The tail of bcc's output when the 5.10 verifier refuses a helper: the reason is the
    helper, not bcc's generic last line."""
    from vmtrace.session import _last_error_line

    log = (
        "bpf: Failed to load program: Invalid argument\n"
        "0: (bf) r6 = r1\n"
        "; covered = bpf_get_current_ancestor_cgroup_id(cfg->cgroup_level) == cfg->cgroup_id;\n"
        "27: (85) call bpf_get_current_ancestor_cgroup_id#123\n"
        "unknown func bpf_get_current_ancestor_cgroup_id#123\n"
        "processed 27 insns (limit 1000000) max_states_per_insn 0 total_states 2\n"
    )
    reason = _last_error_line(log)
    assert "refuses helper bpf_get_current_ancestor_cgroup_id (#123)" in reason
    assert _last_error_line("clang: error: no such file\nsomething else\n") == (
        "clang: error: no such file"
    )


def test_backends_are_surveyed_only_when_reached(tmp_path: Path) -> None:
    """`auto` looks at a backend only once those before it are ruled out: fentry's survey
    indexes the whole BTF, which a start that attaches with tracepoint never needs."""
    seen: list[str] = []

    class Survey(KernelSurvey):
        def candidate(self, name: str) -> Candidate:
            seen.append(name)
            return Candidate(name)

    found = candidates("auto", Survey(tracefs=str(tmp_path)))
    assert seen == []
    assert next(found).name == BACKENDS[0]
    assert seen == [BACKENDS[0]]
    assert [c.name for c in found] == list(BACKENDS[1:])
    assert seen == list(BACKENDS)
    assert [c.name for c in candidates("kprobe", Survey(tracefs=str(tmp_path)))] == ["kprobe"]
