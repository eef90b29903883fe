"""The `vmtrace` command line: options, usage errors and one-line failures (no root needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from vmtrace import __version__, session
from vmtrace.cli.main import cli, main
from vmtrace.errors import EnvironmentProblem, OutputError
from vmtrace.tracer import Tracer

REPO = Path(__file__).resolve().parents[2]
MISSING_PID = 4_194_304  # above the largest possible pid_max: never a process


def run_main(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "vmtrace", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_help_shows_examples(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["--help"])
    assert res.exit_code == 0
    assert "Examples:" in res.output
    assert "sudo vmtrace -p 4242 " in res.output
    assert "sudo vmtrace run -- ./myjob --big" in res.output
    assert "-p, --pid PID" in res.output
    assert "--force" in res.output


def test_short_help_option(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["-h"])
    assert res.exit_code == 0
    assert "Examples:" in res.output


def test_run_help_shows_an_example(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["run", "--help"])
    assert res.exit_code == 0
    assert "sudo vmtrace run -o job.jsonl -- python3 job.py --input big.csv" in res.output


def test_version(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["--version"])
    assert res.exit_code == 0
    assert res.output == f"vmtrace, version {__version__}\n"


def test_nothing_to_trace(runner: CliRunner) -> None:
    res = runner.invoke(cli, [])
    assert res.exit_code == 2
    assert "nothing to trace" in res.output


def test_pid_0_is_a_usage_error(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["-p", "0"])
    assert res.exit_code == 2
    assert "--pid" in res.output
    assert "0 is not in the range 1<=x<=4194304" in res.output


def test_pid_not_a_number(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["-p", "abc"])
    assert res.exit_code == 2
    assert "'abc' is not a valid integer" in res.output


@pytest.mark.parametrize("opt", [["-d", "0"], ["-d", "-1"], ["--interval", "0"]])
def test_non_positive_durations_are_usage_errors(runner: CliRunner, opt: list[str]) -> None:
    res = runner.invoke(cli, ["-p", "1", *opt])
    assert res.exit_code == 2
    assert "greater than 0" in res.output


def test_run_without_a_command(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["run"])
    assert res.exit_code == 2
    assert "Missing argument 'COMMAND...'" in res.output


def test_pid_before_subcommand_is_refused(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["-p", "1", "run", "--", "true"])
    assert res.exit_code == 2
    assert "-p, --comm, --cgroup and -a go without a subcommand" in res.output


def test_nonexistent_pid_one_line_error() -> None:
    res = run_main("-p", str(MISSING_PID))
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"vmtrace: failed to trace PID {MISSING_PID}: no such process")
    assert res.stdout == ""


@pytest.fixture
def no_kernel_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pass the kernel/privilege part of preflight (it needs root), keep the target checks."""
    monkeypatch.setattr(Tracer, "_prepare", lambda self: object())


def test_existing_output_without_force_one_line_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_kernel_checks: None,
) -> None:
    out = tmp_path / "peak.jsonl"
    out.write_text("earlier run\n")
    before = out.stat()
    monkeypatch.setattr(sys, "argv", ["vmtrace", "-p", str(os.getpid()), "-o", str(out)])
    with pytest.raises(SystemExit) as ei:
        main()
    assert ei.value.code == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0] == (
        f"vmtrace: failed to create {out}: it exists (fix: choose another -o, or add --force)"
    )
    assert captured.out == ""
    assert out.read_text() == "earlier run\n"
    after = out.stat()
    assert (after.st_mtime_ns, after.st_size, after.st_ino) == (
        before.st_mtime_ns,
        before.st_size,
        before.st_ino,
    )


def test_existing_output_without_force_via_cli_runner(
    runner: CliRunner, tmp_path: Path, no_kernel_checks: None
) -> None:
    out = tmp_path / "peak.jsonl"
    out.write_text("earlier run\n")
    res = runner.invoke(cli, ["-p", str(os.getpid()), "-o", str(out)])
    assert isinstance(res.exception, OutputError)
    assert "--force" in str(res.exception)
    assert out.read_text() == "earlier run\n"


def test_failed_target_leaves_no_log_file(tmp_path: Path) -> None:
    """A refused target creates no log: a later `-o` with the same name must not need --force."""
    out = tmp_path / "new.jsonl"
    res = run_main("-p", str(MISSING_PID), "-o", str(out))
    assert res.returncode == 1
    assert "no such process" in res.stderr
    assert not out.exists()


def test_import_bcc_without_bcc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bcc", None)
    with pytest.raises(EnvironmentProblem) as ei:
        session.import_bcc()
    msg = str(ei.value)
    assert msg.startswith("failed to import bcc: ")
    assert "python3-bpfcc" in msg
    assert "--system-site-packages" in msg
    assert "\n" not in msg
    assert ei.value.exit_code == 1


@pytest.mark.parametrize(
    ("args", "depth"),
    [
        (["-p", str(os.getpid())], 8),
        (["-p", str(os.getpid()), "--stack-depth", "3"], 3),
        (["run", "--stack-depth", "0", "--", "true"], 0),
    ],
)
def test_stack_depth_reaches_the_tracer_and_the_console(
    runner: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    no_kernel_checks: None,
    args: list[str],
    depth: int,
) -> None:
    from tests.unit.test_output import deep_peak

    seen: list[int] = []

    def fake_run(self: Tracer, started: float) -> int:
        seen.append(self.opts.stack_depth)
        for sink in self.sinks:
            sink.write(deep_peak(20))
            sink.flush()
        return 0

    monkeypatch.setattr(Tracer, "run", fake_run)
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert seen == [depth]
    frames = [line.strip() for line in res.output.splitlines() if line.startswith("      ")]
    assert frames == [f"#{i} f{i}+0x{i:x} (/opt/job/bin/job)" for i in range(depth)] + (
        [f"... {20 - depth} more"] if depth else []
    )


def test_stack_depth_is_a_count(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["-p", "1", "--stack-depth", "-1"])
    assert res.exit_code == 2
    assert "--stack-depth" in res.output
    assert "--stack-depth N" in runner.invoke(cli, ["--help"]).output
def test_run_as_an_unknown_user_is_one_line_error() -> None:
    res = run_main("run", "-u", "no-such-user-vmtrace", "--", "true")
    assert res.returncode == 2
    assert res.stderr.startswith(
        "vmtrace: failed to run the command as no-such-user-vmtrace: no such user (fix: "
    )
    assert res.stderr.count("\n") == 1


def test_unknown_sudo_user_is_one_line_error() -> None:
    env = {**os.environ, "SUDO_USER": "no-such-user-vmtrace"}
    res = subprocess.run(
        [sys.executable, "-m", "vmtrace", "run", "--", "true"],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 2
    assert res.stderr.startswith("vmtrace: failed to run the command as no-such-user-vmtrace:")


@pytest.mark.parametrize("spec", ["nonsense", "1.2.3.4", "[::1", "host:99999"])
def test_bad_metrics_address_is_one_line_usage_error(spec: str) -> None:
    res = run_main("-p", "1", "--metrics", spec)
    assert res.returncode == 2
    assert res.stderr.startswith(f"vmtrace: failed to serve metrics on {spec}: ")
    assert "(fix: " in res.stderr and res.stderr.count("\n") == 1


def test_metrics_port_in_use_is_refused_before_tracing(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the port is tried once tracing is possible: needs root")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        spec = f"127.0.0.1:{s.getsockname()[1]}"
        log = tmp_path / "t.jsonl"
        res = run_main("-p", str(os.getpid()), "--metrics", spec, "-o", str(log))
    assert res.returncode == 2
    assert res.stderr.startswith(
        f"vmtrace: failed to serve metrics on {spec}: Address already in use (fix: "
    ), res.stderr
    assert not log.exists()  # refused before anything was created or attached


def test_tracing_loads_none_of_the_offline_tools() -> None:
    """The subcommands' modules load when named: attach time does not pay for them."""
    code = (
        "import sys; import vmtrace.cli.main as m; "
        "m.cli.get_command(None, 'run'); "
        "print(sorted(n for n in sys.modules if n.startswith(('vmtrace.report', "
        "'vmtrace.cli.report', 'vmtrace.cli.export', 'vmtrace.cli.plot', 'vmtrace.cli.doctor'))))"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
    assert cli.list_commands(click.Context(cli)) == ["doctor", "export", "plot", "report", "run"]
    report = cli.get_command(click.Context(cli), "report")
    assert report is not None and report.name == "report"
