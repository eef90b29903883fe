"""Session-wide pytest hooks for vmtrace's tests.

VMTRACE_REQUIRE_BPF=1 (set by .ci/run): a skipped integration test is a failure. Integration tests
skip themselves when BPF cannot be used (not root, no bcc, no tracefs...); in CI that would hide a
broken setup behind a green run, so there every skip under tests/integration fails the session and
is listed with its reason. Expected failures (xfail) are not skips and are left alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, lineno, "Skipped: why")
        return str(longrepr[2])
    return str(longrepr)


class RequireBpf:
    """Registered only when VMTRACE_REQUIRE_BPF=1: collects integration skips, fails the run."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.skips: list[tuple[str, str]] = []

    def _is_integration(self, nodeid: str, fspath: str) -> bool:
        path = Path(fspath)
        if not path.is_absolute():
            path = self.config.rootpath / path
        try:
            path.resolve().relative_to(INTEGRATION_DIR)
        except ValueError:
            return nodeid.replace("\\", "/").startswith("tests/integration/")
        return True

    def _check(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        if self._is_integration(report.nodeid, report.fspath):
            self.skips.append((report.nodeid or report.fspath, _skip_reason(report)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._check(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        # A module-level pytest.skip(allow_module_level=True) / importorskip skips a whole file.
        self._check(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.skips and session.exitstatus in (
            pytest.ExitCode.OK,
            pytest.ExitCode.NO_TESTS_COLLECTED,
        ):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.skips:
            return
        terminalreporter.section(
            "VMTRACE_REQUIRE_BPF=1: skipped integration tests", sep="=", red=True
        )
        for nodeid, reason in self.skips:
            terminalreporter.line(f"SKIPPED {nodeid}: {reason}", red=True)
        terminalreporter.line(
            f"{len(self.skips)} integration test(s) skipped while VMTRACE_REQUIRE_BPF=1: "
            "failing the session (BPF must work on this machine)",
            red=True,
            bold=True,
        )


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("VMTRACE_REQUIRE_BPF", "") == "1":
        config.pluginmanager.register(RequireBpf(config), "vmtrace-require-bpf")
