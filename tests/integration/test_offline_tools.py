"""The offline tools (report, export, plot) on logs recorded by the real tracer.

The C workload (tests/integration/workload.c) is traced both ways, `vmtrace run` and
`vmtrace -p`; it writes its own /proc/self/status readings around each step, which are the
ground truth the report is checked against. Then, without root and without bcc: the report's
final VmPeak is the log's and the workload's, the composition of the address space at the final
peak adds up to it to the kB with nothing unattributed, the engine re-explains every record as
logged, the Perfetto trace validates, the CSV has one row per record, and the plots carry the
annotations.
"""

from __future__ import annotations

import html
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration._require import require
from tests.integration.conftest import (
    REPO_ROOT,
    RUN_TIMEOUT_S,
    Record,
    read_jsonl,
    start_vmtrace,
    tail,
    wait_for_start,
)
from tests.unit.test_export import check_trace
from tests.unit.test_pftrace import annotations, check_proto_trace
from vmtrace import logformat
from vmtrace.export import CSV_COLUMNS, write_csv, write_perfetto
from vmtrace.logread import LogReader, numbered
from vmtrace.pftrace import write_perfetto_proto
from vmtrace.plot import collect, render
from vmtrace.report import (
    ANON,
    EXEC_IMAGE,
    RESERVED,
    STACK,
    THREAD_STACKS,
    ProcessReport,
    Report,
    build_report,
    render_text,
)

pytestmark = pytest.mark.bpf

MiB = 1024


@dataclass
class Recorded:
    mode: str
    log: Path
    records: list[Record]
    steps: list[dict[str, Any]]
    pid: int

    def step(self, name: str) -> dict[str, Any]:
        return next(s for s in self.steps if s["step"] == name)


def _record_run(workload: Path, workdir: Path) -> None:
    vmt = start_vmtrace(
        [
            "run",
            "--interval",
            "0.05",
            "-o",
            str(workdir / "vmtrace.jsonl"),
            "--",
            str(workload),
            "--out",
            str(workdir / "steps.jsonl"),
        ],
        workdir,
    )
    rc = vmt.wait()
    if rc != 0:
        pytest.fail(f"vmtrace run exited with {rc}\n{tail(vmt.stderr())}", pytrace=False)


def _record_attach(workload: Path, workdir: Path) -> None:
    wl = subprocess.Popen(
        [str(workload), "--wait-stdin", "--out", str(workdir / "steps.jsonl")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    vmt = None
    try:
        assert wl.stdout is not None and wl.stdin is not None
        ready = json.loads(wl.stdout.readline())["ready"]
        log = workdir / "vmtrace.jsonl"
        vmt = start_vmtrace(["-p", str(ready), "--interval", "0.05", "-o", str(log)], workdir)
        wait_for_start(log, vmt)
        wl.stdin.write(b"go\n")
        wl.stdin.close()
        assert wl.wait(timeout=RUN_TIMEOUT_S) == 0, "the workload failed"
        rc = vmt.wait()
        if rc != 0:
            pytest.fail(f"vmtrace -p exited with {rc}\n{tail(vmt.stderr())}", pytrace=False)
    finally:
        if wl.poll() is None:
            wl.kill()
            wl.wait()
        if vmt is not None:
            vmt.kill()


@pytest.fixture(scope="module", params=["run", "attach"])
def recorded(
    request: pytest.FixtureRequest,
    bpf_ready: None,
    workload_bin: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Recorded:
    mode: str = request.param
    workdir = tmp_path_factory.mktemp(f"offline-{mode}")
    (_record_run if mode == "run" else _record_attach)(workload_bin, workdir)
    steps = read_jsonl(workdir / "steps.jsonl")
    log = workdir / "vmtrace.jsonl"
    return Recorded(mode, log, read_jsonl(log), steps, steps[0]["pid"])


def _report(rec: Recorded) -> tuple[Report, ProcessReport]:
    warnings: list[str] = []
    rep = build_report(numbered(LogReader(rec.log, warnings.append)), str(rec.log))
    assert warnings == []
    procs = [p for p in rep.processes if p.pid == rec.pid]
    assert len(procs) == 1, [p.pid for p in rep.processes]
    return rep, procs[0]


def test_report_agrees_with_the_log_and_the_workload(recorded: Recorded) -> None:
    rep, p = _report(recorded)
    end = recorded.records[-1]
    assert end["type"] == "end"
    logged = next(s for s in end["summary"] if s["pid"] == recorded.pid)
    assert rep.engine_disagreements == 0, rep.first_disagreement
    assert rep.change_records == sum(
        1
        for r in recorded.records
        if r["type"] in ("baseline", "peak", "latch", "grow", "shrink", "exec", "fork", "hwm")
    )
    assert p.final_vm_peak_kb == logged["vm_peak_kb"] == p.logged_final_vm_peak_kb
    workload_peak = max(s["peak_after_kb"] for s in recorded.steps)
    assert p.final_vm_peak_kb >= workload_peak
    last = recorded.step("thread-3-mmap-200m")
    assert p.set_by is not None and p.set_by.cause == "mmap"
    assert last["t0_ns"] <= p.set_by.ts_ns <= last["t1_ns"]
    assert p.set_by.vm_peak_kb == last["peak_after_kb"] == p.final_vm_peak_kb
    causes = {e.cause for e in p.timeline}
    assert {"brk", "shmat", "mmap", "mremap", "stack-growth"} <= causes
    # the top causes plus the rest ("... and N kB more") add up to VmPeak
    more_sites, more_maps = p.causes_more_kb
    assert sum(c.kb for c in p.by_call_site) + more_sites == p.final_vm_peak_kb
    assert sum(c.kb for c in p.by_mapping) + more_maps == p.final_vm_peak_kb
    # VmHWM ends with the kernel's own at exit (samples may all have missed the short run)
    exit_rec = next(r for r in recorded.records if r["type"] == "exit" and r["pid"] == recorded.pid)
    assert p.hwm and p.hwm[-1].vm_hwm_kb == exit_rec["hwm_kb"] == logged["vm_hwm_kb"]
    assert (p.execs == 1) == (recorded.mode == "run")
    text = render_text(rep)
    assert "final VmPeak" in text and f"[{p.final_vm_peak_kb} kB]" in text


def _changes(recorded: Recorded) -> str:
    """The log's changes, one line each: what a failed replay check needs to be read."""
    undefined = {
        r["type"]: logformat.undeclared(r) for r in recorded.records if logformat.undeclared(r)
    }
    assert not undefined, f"fields vmtrace.logformat does not define: {undefined}"
    rows = []
    for n, r in enumerate(recorded.records, 1):
        if r.get("syscall") is not None or r["type"] in ("maps", "baseline"):
            rows.append(
                f"line {n}: {r['type']} {r.get('syscall')} {r.get('args')} = {r.get('ret')} "
                f"total_vm {r.get('total_vm_kb_before')} -> {r.get('total_vm_kb_after')} kB"
            )
    return "\n".join(rows)


def test_composition_at_the_final_peak_adds_up_exactly(recorded: Recorded) -> None:
    _, p = _report(recorded)
    comp = p.composition
    assert comp is not None and comp.at == "peak"
    assert comp.unattributed_kb == 0, (comp.note, p.replay_first_problem, _changes(recorded))
    assert comp.total_kb == comp.vm_peak_kb == p.final_vm_peak_kb
    assert p.replay_lost_track == 0, (p.replay_first_problem, _changes(recorded))
    groups = {g.group: g.kb for g in comp.groups}
    # what the workload left mapped at its last step, from its own steps
    reserve = recorded.step("reserve-1g")["len_kb"]
    fixed = recorded.step("mmap-fixed-16m")["len_kb"]
    assert groups[RESERVED] >= reserve - fixed
    thread_maps = sum(recorded.step(f"thread-{i}-mmap-200m")["len_kb"] for i in (1, 2, 3))
    assert groups[ANON] >= thread_maps + fixed
    assert groups[THREAD_STACKS] >= 8 * MiB
    assert groups[STACK] >= recorded.step("stack-growth")["len_kb"] // 2
    if recorded.mode == "run":
        assert 0 < groups[EXEC_IMAGE] <= 4 * MiB  # what execve mapped: the binary, ld.so, stack
    else:
        assert EXEC_IMAGE not in groups  # -p: all itemised from the maps record


def test_perfetto_trace_of_a_real_log(recorded: Recorded) -> None:
    out = io.StringIO()
    stats = write_perfetto(numbered(LogReader(recorded.log)), out)
    assert stats.late == 0
    events = check_trace(json.loads(out.getvalue()))
    peaks = [r for r in recorded.records if r["type"] == "peak"]
    instants = [e for e in events if e["ph"] == "i" and e["name"].startswith("peak: ")]
    assert len(instants) == len(peaks)
    assert sorted(e["ts"] for e in instants) == sorted(r["ts_ns"] / 1000 for r in peaks)
    vm_peak = [e["args"]["kB"] for e in events if e["ph"] == "C" and e["name"] == "VmPeak"]
    assert max(vm_peak[-10:]) == recorded.records[-1]["summary"][0]["vm_peak_kb"]
    assert any(e["name"] == "VmRSS" for e in events)
    with_stack = [e for e in instants if e["args"]["stack"]]
    assert with_stack, "no peak with a user stack"


def test_perfetto_protobuf_trace_of_a_real_log(recorded: Recorded) -> None:
    out = io.BytesIO()
    assert write_perfetto_proto(numbered(LogReader(recorded.log)), out).late == 0
    t = check_proto_trace(out.getvalue())
    peaks = [r for r in recorded.records if r["type"] == "peak"]
    instants = t.instants("peak: ")
    assert sorted(ts for ts, _ in instants) == sorted(r["ts_ns"] for r in peaks)
    vm_peak = t.counters()[(recorded.pid, "VmPeak")]
    assert max(vm_peak[-10:]) == recorded.records[-1]["summary"][0]["vm_peak_kb"] * 1024
    assert t.counters()[(recorded.pid, "VmRSS")]
    assert any(annotations(e).get("stack") for _ts, e in instants), "no peak with a stack"


def test_csv_of_a_real_log(recorded: Recorded) -> None:
    out = io.StringIO()
    n = write_csv(numbered(LogReader(recorded.log)), out)
    lines = out.getvalue().splitlines()
    assert n == len(recorded.records)
    assert lines[0] == ",".join(CSV_COLUMNS)


def test_plots_of_a_real_log(recorded: Recorded, tmp_path: Path) -> None:
    data = collect(numbered(LogReader(recorded.log)), "real")
    assert recorded.pid in data.processes
    texts = data.label_texts()
    assert any("+200.00 MiB" in t for t in texts)
    svg = render(data, "svg").decode()
    page = render(data, "html").decode()
    for text in texts:
        for line in text.split("\n"):
            assert html.escape(line, quote=False) in svg, line
            assert html.escape(line, quote=False) in page, line
    png = render(data, "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / f"{recorded.mode}.png").write_bytes(png)


@pytest.fixture
def public_copy(recorded: Recorded) -> Iterator[Path]:
    """The log (0600, root's) copied where uid 65534 can read it and write beside it."""
    with tempfile.TemporaryDirectory(prefix="vmtrace-offline-") as d:
        os.chmod(d, 0o777)
        log = Path(d) / "log.jsonl"
        shutil.copy(recorded.log, log)
        os.chmod(log, 0o644)
        yield log


def test_offline_tools_as_nobody_without_bcc(public_copy: Path) -> None:
    """Each command as uid 65534 with `import bcc` made to fail."""
    setpriv = shutil.which("setpriv")
    require(setpriv is not None, "setpriv (util-linux) is needed to drop privileges")
    assert setpriv is not None
    d = public_copy.parent
    no_bcc = (
        "import sys; sys.modules['bcc'] = None; sys.argv = ['vmtrace', *sys.argv[1:]]; "
        "from vmtrace.cli.main import main; main()"
    )
    for args in (
        ["report", "--format", "json", "-o", str(d / "r.json")],
        ["export", "--format", "perfetto-json", "-o", str(d / "t.json")],
        ["export", "--format", "perfetto", "-o", str(d / "t.pftrace")],
        ["export", "--format", "csv", "-o", str(d / "t.csv")],
        ["plot", "-o", str(d / "p.svg")],
    ):
        res = subprocess.run(
            [
                setpriv,
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                sys.executable,
                "-c",
                no_bcc,
                *args,
                str(public_copy),
            ],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env={**os.environ, "HOME": str(d), "MPLCONFIGDIR": str(d / "mpl")},
            check=False,
            timeout=RUN_TIMEOUT_S,
        )
        assert res.returncode == 0, (args, res.stderr)
    rep = json.loads((d / "r.json").read_text())
    comp = rep["processes"][-1]["composition"]
    assert comp["total_kb"] == comp["vm_peak_kb"] and comp["unattributed_kb"] == 0
    check_trace(json.loads((d / "t.json").read_text()))
    check_proto_trace((d / "t.pftrace").read_bytes())
