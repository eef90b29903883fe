"""One log, one story: the live summary, `vmtrace report` (text and JSON), `vmtrace plot` and
`vmtrace export` agree on each process's final VmPeak, the record that set it and its top
causes, on logs the real tracer wrote: an execveat mid-trace, and a --min-delta run.

The final VmPeak is also the one the workload read from its own /proc/self/status.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import build_c, read_jsonl, run_traced
from vmtrace import logformat
from vmtrace.export import write_csv
from vmtrace.logread import LogReader, numbered
from vmtrace.plot import collect
from vmtrace.report import build_report, render_text, report_json

pytestmark = pytest.mark.bpf

SRC = Path(__file__).resolve().parent / "kernelload.c"


@pytest.fixture(scope="module")
def kernelload(bpf_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_c(SRC, tmp_path_factory.mktemp("kernelload"), "-pthread")


def _agree(log: Path, pid: int, own_vm_peak_kb: int) -> None:
    records = read_jsonl(log)
    undefined = {r["type"]: logformat.undeclared(r) for r in records if logformat.undeclared(r)}
    assert not undefined, f"fields vmtrace.logformat does not define: {undefined}"
    end = records[-1]
    assert end["type"] == "end"
    (live,) = [s for s in end["summary"] if s["pid"] == pid]
    assert live["vm_peak_kb"] == own_vm_peak_kb
    (exit_rec,) = [r for r in records if r["type"] == "exit" and r["pid"] == pid]
    assert exit_rec["exit_status"] == 0 and exit_rec["ended"] == {"how": "exit", "code": 0}

    rep = build_report(numbered(LogReader(log)), str(log))
    assert rep.engine_disagreements == 0, rep.first_disagreement
    (p,) = [p for p in rep.processes if p.pid == pid]
    assert p.final_vm_peak_kb == live["vm_peak_kb"]
    assert p.set_by is not None and p.set_by.ts_ns == live["set_by"]["ts_ns"]
    assert p.set_by.vm_peak_kb - p.set_by.vm_peak_kb_before == live["set_by"]["rise_kb"]
    causes = [(c.cause, c.where, c.kb) for c in p.by_mapping]
    top = [(c["cause"], c["mapping"], c["kb"]) for c in live["top_causes"]]
    assert causes[: len(top)] == top
    as_json = json.loads(report_json(rep))
    (pj,) = [x for x in as_json["processes"] if x["pid"] == pid]
    assert pj["final_vm_peak_kb"] == live["vm_peak_kb"]
    assert f"[{live['vm_peak_kb']} kB]" in render_text(rep)

    plotted = collect(numbered(LogReader(log)), str(log), pid=pid)
    assert plotted.processes[pid].final_vm_peak_kb == live["vm_peak_kb"]

    out = io.StringIO()
    write_csv(numbered(LogReader(log)), out)
    rows: list[dict[str, Any]] = list(csv.DictReader(io.StringIO(out.getvalue())))
    set_by_rows = [r for r in rows if r["ts_ns"] == str(live["set_by"]["ts_ns"])]
    assert any(r["type"] == live["set_by"]["type"] for r in set_by_rows), set_by_rows
    peaks = [int(r["vm_peak_kb"]) for r in rows if r["pid"] == str(pid) and r["vm_peak_kb"]]
    assert peaks and peaks[-1] <= live["vm_peak_kb"]


def test_the_tools_agree_after_an_execveat(kernelload: Path, tmp_path: Path) -> None:
    """GIVEN `vmtrace run` of a process that maps 300 MiB then fexecve()s itself into a
    small image THEN every tool gives the new image's VmPeak, set by the same record."""
    _, reports, _ = run_traced(tmp_path, command=[str(kernelload), "execveat", "300"])
    new = next(r for r in reports if r["what"] == "new-image")
    _agree(tmp_path / "log.jsonl", new["pid"], new["vm_peak_kb"])


def test_the_tools_agree_under_min_delta(kernelload: Path, tmp_path: Path) -> None:
    """GIVEN `vmtrace run --min-delta 64M` of a heap growing in 128 KiB steps to 320 MiB
    (most rises kept back in the kernel) THEN every tool gives the workload's own VmPeak,
    set by the same record, with the same top causes."""
    _, reports, _ = run_traced(
        tmp_path, "--min-delta", "64M", command=[str(kernelload), "brk", "128", "2560"]
    )
    done = next(r for r in reports if r["what"] == "brk-done")
    _agree(tmp_path / "log.jsonl", done["pid"], done["vm_peak_kb"])
