"""Progress of the offline commands on large logs (vmtrace.cli.report.with_progress): a bar on
a terminal, nothing at all otherwise."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tqdm import tqdm

from vmtrace.cli.report import with_progress
from vmtrace.logread import LogReader, numbered

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RUN = FIXTURES / "run_small.jsonl"
REPO = Path(__file__).resolve().parents[2]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_bar_counts_the_bytes_read_then_goes() -> None:
    term = Terminal()
    reader = LogReader(RUN)
    pairs = list(with_progress(reader, numbered(reader), term, delay=0))
    assert pairs == list(numbered(LogReader(RUN)))
    out = term.getvalue()
    assert "reading run_small.jsonl" in out
    size = RUN.stat().st_size
    assert f"/{tqdm.format_sizeof(size, divisor=1024)}" in out, out  # out of the file's size
    assert reader.bytes_read == size  # what the bar is fed: every byte, at the end
    assert out.endswith("\r") or out.rstrip(" ").endswith("\r"), repr(out[-80:])  # erased


def test_not_a_terminal_writes_nothing() -> None:
    pipe = io.StringIO()
    reader = LogReader(RUN)
    assert len(list(with_progress(reader, numbered(reader), pipe, delay=0))) > 0
    assert pipe.getvalue() == ""


@pytest.mark.parametrize(
    "args",
    [
        ["report"],
        ["report", "--format", "json"],
        ["export", "--format", "csv"],
        ["export", "--format", "perfetto"],
        ["export", "--format", "perfetto-json"],
        ["plot", "-o", "{tmp}/p.svg"],
    ],
    ids=lambda a: "-".join(a[:3]).replace("{tmp}/", ""),
)
def test_offline_commands_not_on_a_terminal_print_nothing_extra(
    tmp_path: Path, args: list[str]
) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmtrace",
            *[a.replace("{tmp}", str(tmp_path)) for a in args],
            str(RUN),
        ],
        capture_output=True,
        cwd=REPO,
        env={**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl")},
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr == b""
    assert b"reading run_small" not in res.stdout
