"""Hardening: bad input is refused with one line and exit status 2, and no string from the
command line reaches the BPF C text (no root needed).

The CLI cases run `python -m vmtrace` for real (the same path as a user: click, then
vmtrace.cli.main.main), so a traceback anywhere on the way would show. Where a bad value
might slip through, the target is a PID that cannot exist, so a value that is wrongly
accepted ends in a quick "no such process" (exit 1) instead of tracing.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vmtrace.abi import COMM_LEN, TraceConfig, comm_key
from vmtrace.errors import ProbeError
from vmtrace.kernel.offsets import KernelOffsets
from vmtrace.kernel.probesites import ProbePlan
from vmtrace.session import BACKENDS, BccSession, load_source
from vmtrace.tracer import TraceOptions, Tracer

REPO = Path(__file__).resolve().parents[2]
NO_PID = "4194304"  # PID_MAX_LIMIT: never a process


def vmtrace(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "vmtrace", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_usage_error(res: subprocess.CompletedProcess[str], mentions: str) -> None:
    out = res.stdout + res.stderr
    assert "Traceback" not in out, out
    assert res.returncode == 2, f"exit {res.returncode}: {out}"
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, res.stderr
    # click's usage error: the usage line, a hint, the one error line; nothing else
    others = [
        ln
        for ln in res.stderr.splitlines()
        if ln.strip() and not ln.startswith(("Error:", "Usage:", "Try "))
    ]
    assert not others, res.stderr
    assert mentions in errors[0], errors[0]
    assert res.stdout == ""


BAD_INPUTS = [
    pytest.param(["-p", "0"], "--pid", id="pid-0"),
    pytest.param(["-p", "-1"], "--pid", id="pid-negative"),
    pytest.param(["-p", "abc"], "--pid", id="pid-not-a-number"),
    pytest.param(["-p", "1.5"], "--pid", id="pid-fraction"),
    pytest.param(["-p", NO_PID, "--min-delta", "12Q"], "--min-delta", id="size-unit"),
    pytest.param(["-p", NO_PID, "--min-delta", "-5M"], "--min-delta", id="size-negative"),
    pytest.param(["-p", NO_PID, "--hwm-step", "12Q"], "--hwm-step", id="hwm-step-unit"),
    pytest.param(["-p", NO_PID, "--rotate", "-5M"], "--rotate", id="rotate-negative"),
    pytest.param(["-p", NO_PID, "--min-delta", ""], "--min-delta", id="size-empty"),
    pytest.param(["-p", NO_PID, "-d", "0"], "--duration", id="duration-0"),
    pytest.param(["-p", NO_PID, "-d", "-1"], "--duration", id="duration-negative"),
    pytest.param(["-p", NO_PID, "-d", "x"], "--duration", id="duration-not-a-number"),
    pytest.param(["-p", NO_PID, "--interval", "0"], "--interval", id="interval-0"),
    pytest.param(["-p", NO_PID, "--interval", "-0.5"], "--interval", id="interval-negative"),
    pytest.param(["--cgroup", "/sys/fs/cgroup/no/such/vmtrace"], "--cgroup", id="cgroup-missing"),
    pytest.param(["--cgroup", "/etc/hostname"], "--cgroup", id="cgroup-a-file"),
    pytest.param(["-p", NO_PID, "--backend", "bogus"], "--backend", id="backend-unknown"),
    pytest.param(["-p", NO_PID, "--backend", ""], "--backend", id="backend-empty"),
    pytest.param(["-a", "-p", "1"], "-a/--all", id="all-with-pid"),
    pytest.param(["-a", "--comm", "bash"], "-a/--all", id="all-with-comm"),
    pytest.param(["-p", "1", "run", "--", "true"], "without a subcommand", id="pid-with-run"),
    pytest.param(["run"], "COMMAND", id="run-without-command"),
    pytest.param(["run", "-o", "x.jsonl"], "COMMAND", id="run-options-without-command"),
    pytest.param([], "nothing to trace", id="nothing-to-trace"),
    pytest.param(["--comm", "a" * 20], "--comm", id="comm-20-chars"),
    pytest.param(["--comm", "ééééééééé"], "--comm", id="comm-16-bytes-utf8"),
    pytest.param(["--comm", "a/b"], "--comm", id="comm-slash"),
    pytest.param(["--comm", ""], "--comm", id="comm-empty"),
    pytest.param(["-p", NO_PID, "--frobnicate"], "--frobnicate", id="unknown-option"),
]


@pytest.mark.parametrize(("args", "mentions"), BAD_INPUTS)
def test_bad_input_is_a_one_line_usage_error(args: list[str], mentions: str) -> None:
    assert_usage_error(vmtrace(*args), mentions)


# Values that parse as numbers but are no PID, size or duration.
def test_pid_beyond_pid_max_is_a_usage_error() -> None:
    assert_usage_error(vmtrace("-p", str(2**40)), "--pid")


@pytest.mark.parametrize("value", ["inf", "1e400"])
def test_infinite_size_is_a_usage_error(value: str) -> None:
    assert_usage_error(vmtrace("-p", NO_PID, "--min-delta", value), "--min-delta")


def test_nan_size_is_a_usage_error() -> None:
    assert_usage_error(vmtrace("-p", NO_PID, "--rotate", "nan"), "--rotate")


@pytest.mark.parametrize("opt", ["--duration", "--interval"])
def test_nan_duration_is_a_usage_error(opt: str) -> None:
    assert_usage_error(vmtrace("-p", NO_PID, opt, "nan"), opt)


# ---- no string from the command line reaches BPF C text --------------------------------

HOSTILE = (
    'a"b',
    "x\ny",
    "#include </etc/shadow>",
    '"); system("id',
    "$(reboot)",
    "\\",
    "*/ int x; /*",
    "-DVMT_X=1",
)

OFFSETS = KernelOffsets(
    **{name: 8 * (i + 1) for i, name in enumerate(KernelOffsets.__annotations__)}
)


def _texts(session: BccSession) -> str:
    """Everything that becomes C text or compiler arguments for this session."""
    return "\n".join([*session._cflags(), load_source(f"{session.backend}.c")])


@pytest.mark.parametrize("backend", BACKENDS)
def test_hostile_comms_never_reach_the_c_text(backend: str) -> None:
    plan = ProbePlan(after_write=("do_mmap", "do_vmi_munmap"), before_unmap=(), exit_mmap=None)
    config = TraceConfig(comms=HOSTILE, cgroup_id=123456789, min_delta_pages=7)
    session = BccSession(backend, OFFSETS, None, True, plan=plan, config=config)
    text = _texts(session)
    for s in HOSTILE:
        assert s not in text, f"{s!r} reached the BPF text or cflags"
    for part in ("system(", "reboot", "/etc/shadow", "VMT_X"):
        assert part not in text
    assert not any("123456789" in f for f in session._cflags())


def test_comms_from_the_cli_go_to_the_config_map_only() -> None:
    """The tracer turns --comm into TraceConfig.comms; the session writes them into the
    `comms` BPF map as fixed 16-byte keys (truncated, NUL padded), never into text."""
    names = ('a"b', "x\ny", "$(reboot)", "0123456789abcdefXYZ")
    tracer = Tracer(TraceOptions(comms=names), [], lambda _m: None)
    config = tracer._config()
    assert config.comms == names and config.encode().comm_filter == 1

    session = BccSession("tracepoint", OFFSETS, None, True, config=config)
    assert all(n not in "\n".join(session._cflags()) for n in names)

    class Table:
        """A BPF table as bcc gives it: ctypes keys and values (unhashable)."""

        Key = ctypes.c_char * COMM_LEN

        def __init__(self) -> None:
            self.items: list[tuple[bytes, Any]] = []

        def __setitem__(self, key: Any, value: Any) -> None:
            self.items.append((bytes(key), value))

    tables = {"config": Table(), "comms": Table()}

    class FakeBpf:
        def __getitem__(self, name: str) -> Table:
            return tables[name]

    session._bpf = FakeBpf()
    session._configure()
    keys = {k for k, _v in tables["comms"].items}
    assert keys == {comm_key(n) for n in names}
    assert all(len(k) == COMM_LEN and k.endswith(b"\0") for k in keys)
    assert comm_key("0123456789abcdefXYZ") == b"0123456789abcde\0"
    ((_key, cfg),) = tables["config"].items
    assert cfg.comm_filter == 1
    session._bpf = None


@pytest.mark.parametrize(
    "name",
    [
        'do_mmap"); system("id',
        "do_mmap\n#include </etc/shadow>",
        "do_mmap\n",
        "do mmap",
        "1do_mmap",
        "do_mmap(x)",
        "-Dfoo",
        "",
        "vm_munmap;",
    ],
)
@pytest.mark.parametrize("slot", ["after_write", "before_unmap"])
def test_fentry_function_names_must_be_identifiers(name: str, slot: str) -> None:
    sites: dict[str, Any] = {"after_write": ("do_mmap",), "before_unmap": ("do_vmi_munmap",)}
    sites[slot] = (name,)
    plan = ProbePlan(exit_mmap=None, **sites)
    session = BccSession("fentry", OFFSETS, None, True, plan=plan)
    with pytest.raises(ProbeError, match="not a C identifier"):
        session._cflags()


def test_fentry_identifiers_pass_as_macros() -> None:
    plan = ProbePlan(("do_mmap", "vm_brk_flags"), ("do_vmi_munmap",), None)
    flags = BccSession("fentry", OFFSETS, None, True, plan=plan)._cflags()
    assert "-DVMT_FEXIT_0=do_mmap" in flags and "-DVMT_FEXIT_1=vm_brk_flags" in flags
    assert "-DVMT_FENTRY_UNMAP=do_vmi_munmap" in flags


def test_unknown_backend_is_refused_by_the_session() -> None:
    with pytest.raises(ProbeError):
        BccSession("tracepoint.c; rm", OFFSETS, None, True)
