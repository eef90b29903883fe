"""`vmtrace export --format folded` (vmtrace.folded) on the fixture logs.

stacks_small (version 2) is described in tests/unit/test_report.py: three new peaks of malloc's
mmap (two from parse_a, one from parse_b) and one brk from a frame without a symbol, on top of
VmPeak 10000 kB at attach.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from vmtrace.folded import folded_line_key, folded_stacks, write_folded
from vmtrace.logread import LogReader, numbered, read_log

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
STACKS = FIXTURES / "stacks_small.jsonl"
RUN = FIXTURES / "run_small.jsonl"
ATTACH = FIXTURES / "attach_small.jsonl"
# How flamegraph.pl reads a line: the count after the last whitespace, frames split on ";".
FLAMEGRAPH_LINE = re.compile(r"^(.*)\s+?(\d+(?:\.\d*)?)$")

MALLOC = "malloc;_int_malloc;sysmalloc;__mmap64;mmap"


def folded(path: Path) -> str:
    out = io.StringIO()
    write_folded(numbered(LogReader(path)), out)
    return out.getvalue()


def parse(text: str) -> dict[tuple[str, ...], int]:
    stacks: dict[tuple[str, ...], int] = {}
    for line in text.splitlines():
        m = FLAMEGRAPH_LINE.match(line)
        assert m is not None, line
        stacks[tuple(m.group(1).split(";"))] = int(m.group(2))
    return stacks


def test_folded_stacks_outermost_first_weighted_by_the_rise_of_vm_peak() -> None:
    text = folded(STACKS)
    assert text.splitlines() == [
        "__libc_start_call_main;main;index+0x5a10;brk;brk 132",
        f"__libc_start_call_main;main;parse_a;grow_buffer;xalloc;{MALLOC} {2008 + 1024}",
        f"__libc_start_call_main;main;parse_b;grow_buffer;xalloc;{MALLOC} 2048",
    ]
    # what the flame graph adds up to: the rises while traced, not VmPeak at attach
    recs = list(read_log(STACKS))
    final = next(r for r in recs if r["type"] == "exit")["vm_peak_kb"]
    assert sum(parse(text).values()) == final - 10000


def test_each_peak_counts_once_and_only_peaks_count() -> None:
    for path in (RUN, ATTACH, STACKS):
        recs = list(read_log(path))
        rises = [r["vm_peak_kb"] - r["vm_peak_kb_before"] for r in recs if r["type"] == "peak"]
        stacks = folded_stacks(numbered(LogReader(path)))
        assert sum(stacks.values()) == sum(rises), path.name
        assert all(kb > 0 for kb in stacks.values())


def test_version_1_frames_are_written_as_they_were_logged() -> None:
    stacks = parse(folded(RUN))
    mremap = (
        "start_thread+0x305 [libc.so.6]",
        "worker_main+0x40 [job]",
        "__GI___mremap+0x30 [libc.so.6]",
        "mremap",
    )
    assert stacks[mremap] == 2048
    assert all(len(k) > 1 for k in stacks)  # every peak of this log has a stack


def _peak(stack: Any, cause: str = "mmap") -> dict[str, Any]:
    return {
        "type": "peak",
        "cause": cause,
        "stack": stack,
        "vm_peak_kb": 10,
        "vm_peak_kb_before": 4,
    }


def test_frame_names_cannot_break_the_format() -> None:
    frame = {
        "address": "0x1000",
        "function": "std::vector<int>::push_back(int const&);x",
        "offset": 3,
        "module": "/opt/a b/lib.so",
        "module_offset": 0x1000,
    }
    key = folded_line_key(_peak([frame]))
    assert key == "std::vector<int>::push_back(int const&):x;mmap"
    assert folded_line_key(_peak(None, cause="stack-growth")) == "stack-growth"
    bare = {
        "address": "0x7f00",
        "function": None,
        "offset": None,
        "module": None,
        "module_offset": None,
    }
    assert folded_line_key(_peak([bare])) == "?? (at 0x7f00);mmap"
    out = io.StringIO()
    write_folded([(1, _peak([frame])), (2, _peak(None)), (3, _peak([frame]))], out)
    assert parse(out.getvalue()) == {
        ("mmap",): 6,
        ("std::vector<int>::push_back(int const&):x", "mmap"): 12,
    }


def test_cli_export_folded(tmp_path: Path) -> None:
    out = tmp_path / "peak.folded"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmtrace",
            "export",
            "--format",
            "folded",
            "-o",
            str(out),
            str(STACKS),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert out.read_text() == folded(STACKS)
    for pid, lines in (("300", 3), ("301", 0)):
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "vmtrace",
                "export",
                "--format",
                "folded",
                "--pid",
                pid,
                str(STACKS),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        assert len(parse(res.stdout)) == lines
