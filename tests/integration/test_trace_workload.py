"""vmtrace against a workload that knows what it did (tests/integration/workload.c).

The workload brackets every step with its own /proc/self/status readings and CLOCK_MONOTONIC
(the clock of the log's ts_ns), so each `peak` record can be checked against ground truth:
which step it falls in, which thread made it, what VmPeak it claims. Both ways of tracing are
covered: `vmtrace run -- workload` (traced from its first instruction) and `vmtrace -p PID`
(attached while the workload waits on stdin before its first step).
"""

from __future__ import annotations

import json
import re
import select
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    RUN_TIMEOUT_S,
    Record,
    backends_under_test,
    read_jsonl,
    start_vmtrace,
    tail,
    wait_for_start,
)
from vmtrace.schema import SCHEMA_VERSION
from vmtrace.sinks import by_the_loader

pytestmark = pytest.mark.bpf

EXPECTED_STEPS = [
    "brk-grow-32m",
    "brk-shrink-32m",
    "shmat-48m",
    "shmdt-48m",
    "mmap-64m",
    "munmap-64m",
    "mremap-setup-1m",
    "mremap-grow-96m",
    "mremap-shrink-16m",
    "mremap-cleanup",
    "reserve-1g",
    "mmap-fixed-16m",
    "stack-growth",
    "pthread-create-1",
    "thread-1-mmap-200m",
    "pthread-create-2",
    "thread-2-mmap-200m",
    "pthread-create-3",
    "thread-3-mmap-200m",
]

# Sample /proc often, so that the run (about a second) is checked by `sample` records too.
INTERVAL = ["--interval", "0.05"]

KB_RE = re.compile(r"\[(\d+) kB\]")
TID_RE = re.compile(r"\btid (\d+)\b")


@dataclass(frozen=True)
class Step:
    """One line of the workload's output: a bracketed operation and its own readings."""

    name: str
    pid: int
    tid: int
    t0_ns: int
    t1_ns: int
    peak_before_kb: int
    peak_after_kb: int
    size_before_kb: int
    size_after_kb: int
    cause: str
    len_kb: int
    expect: str
    expect_latch: bool

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Step:
        return cls(
            name=d["step"],
            pid=d["pid"],
            tid=d["tid"],
            t0_ns=d["t0_ns"],
            t1_ns=d["t1_ns"],
            peak_before_kb=d["peak_before_kb"],
            peak_after_kb=d["peak_after_kb"],
            size_before_kb=d["size_before_kb"],
            size_after_kb=d["size_after_kb"],
            cause=d["cause"],
            len_kb=d["len_kb"],
            expect=d["expect"],
            expect_latch=d["expect_latch"],
        )

    @property
    def raises_peak(self) -> bool:
        return self.peak_after_kb > self.peak_before_kb

    def contains(self, ts_ns: int) -> bool:
        return self.t0_ns <= ts_ns <= self.t1_ns

    def describe(self) -> str:
        return (
            f"step {self.name!r} (tid {self.tid}, window [{self.t0_ns}, {self.t1_ns}], "
            f"VmPeak {self.peak_before_kb} -> {self.peak_after_kb} kB, "
            f"VmSize {self.size_before_kb} -> {self.size_after_kb} kB, len {self.len_kb} kB)"
        )


@dataclass
class Trace:
    mode: str
    steps: list[Step]
    records: list[Record]
    stdout: str
    stderr: str
    workload_pid: int
    log: Path

    def of_type(self, rtype: str) -> list[Record]:
        return [r for r in self.records if r.get("type") == rtype]

    def of_workload(self, rtype: str) -> list[Record]:
        return [r for r in self.of_type(rtype) if r.get("pid") == self.workload_pid]

    def in_window(self, rtype: str, step: Step) -> list[Record]:
        return [r for r in self.of_workload(rtype) if step.contains(r["ts_ns"])]


def fmt(rec: Record) -> str:
    """A record in one line, with the fields these tests look at."""
    keys = (
        "type",
        "ts_ns",
        "pid",
        "tid",
        "cause",
        "syscall",
        "delta_kb",
        "total_vm_kb_before",
        "total_vm_kb_after",
        "vm_peak_kb_before",
        "vm_peak_kb",
        "hiwater_vm_kb_before",
        "hiwater_vm_kb",
    )
    return json.dumps({k: rec[k] for k in keys if k in rec})


def fmt_all(recs: list[Record]) -> str:
    return "\n".join("    " + fmt(r) for r in recs) if recs else "    (none)"


def report(trace: Trace, problems: list[str]) -> None:
    if problems:
        pytest.fail(
            f"[{trace.mode} mode, log {trace.log}] {len(problems)} problem(s):\n"
            + "\n".join(f"- {p}" for p in problems),
            pytrace=False,
        )


# ---- running the workload under vmtrace ------------------------------------------------------


def _read_ready(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        pytest.fail(f"workload printed no ready line within {timeout:.0f} s")
    line = proc.stdout.readline()
    try:
        pid = json.loads(line)["ready"]
    except (ValueError, KeyError, TypeError):
        pytest.fail(f'workload\'s first line is not {{"ready": PID}}: {line!r}')
    assert isinstance(pid, int)
    return pid


def _trace_run(workload: Path, workdir: Path, backend: str) -> tuple[int, str, str]:
    log = workdir / "vmtrace.jsonl"
    steps = workdir / "steps.jsonl"
    vmt = start_vmtrace(
        [
            "run",
            "--backend",
            backend,
            *INTERVAL,
            "-o",
            str(log),
            "--",
            str(workload),
            "--out",
            str(steps),
        ],
        workdir,
    )
    rc = vmt.wait()
    if rc != 0:
        pytest.fail(
            f"`vmtrace run -- workload` exited with {rc} (the workload's status, or vmtrace's)\n"
            f"stderr:\n{tail(vmt.stderr())}",
            pytrace=False,
        )
    return rc, vmt.stdout(), vmt.stderr()


def _trace_attach(workload: Path, workdir: Path, backend: str) -> tuple[int, str, str]:
    log = workdir / "vmtrace.jsonl"
    steps = workdir / "steps.jsonl"
    wl_err = workdir / "workload.stderr"
    with wl_err.open("wb") as err:
        wl = subprocess.Popen(
            [str(workload), "--wait-stdin", "--out", str(steps)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    vmt = None
    try:
        pid = _read_ready(wl)
        assert pid == wl.pid, f"workload says it is pid {pid}, Popen says {wl.pid}"
        vmt = start_vmtrace(
            ["-p", str(pid), "--backend", backend, *INTERVAL, "-o", str(log)], workdir
        )
        start = wait_for_start(log, vmt)
        assert start.get("version") == SCHEMA_VERSION, f"start record: {start!r}"
        assert wl.stdin is not None
        wl.stdin.write(b"go\n")
        wl.stdin.close()
        wl_rc = wl.wait(timeout=RUN_TIMEOUT_S)
        if wl_rc != 0:
            pytest.fail(
                f"workload (attached) exited with {wl_rc}: {wl_err.read_text(errors='replace')}",
                pytrace=False,
            )
        rc = vmt.wait()
        if rc != 0:
            pytest.fail(
                f"`vmtrace -p {pid}` exited with {rc}\nstderr:\n{tail(vmt.stderr())}",
                pytrace=False,
            )
        return rc, vmt.stdout(), vmt.stderr()
    finally:
        if wl.poll() is None:
            wl.kill()
            wl.wait()
        if vmt is not None:
            vmt.kill()


BACKEND_MODES = [(b, m) for b in backends_under_test() for m in ("run", "attach")]


@pytest.fixture(scope="module", params=BACKEND_MODES, ids=[f"{b}-{m}" for b, m in BACKEND_MODES])
def trace(
    request: pytest.FixtureRequest,
    bpf_ready: None,
    workload_bin: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Trace:
    backend, mode = request.param
    workdir = tmp_path_factory.mktemp(f"trace-{backend}-{mode}")
    if mode == "run":
        _, stdout, stderr = _trace_run(workload_bin, workdir, backend)
    else:
        _, stdout, stderr = _trace_attach(workload_bin, workdir, backend)
    log = workdir / "vmtrace.jsonl"
    if not log.exists():
        pytest.fail(f"vmtrace wrote no log at {log}\nstderr:\n{tail(stderr)}", pytrace=False)
    steps = [Step.from_json(d) for d in read_jsonl(workdir / "steps.jsonl")]
    if not steps:
        pytest.fail("the workload wrote no steps", pytrace=False)
    records = read_jsonl(log)
    if records and records[0].get("backend") != backend:
        pytest.fail(
            f"asked for --backend {backend}, the start record says {records[0].get('backend')}",
            pytrace=False,
        )
    return Trace(
        mode=f"{backend}/{mode}",
        steps=steps,
        records=records,
        stdout=stdout,
        stderr=stderr,
        workload_pid=steps[0].pid,
        log=log,
    )


# ---- tests -------------------------------------------------------------------------------------


def test_workload_ran_every_step(trace: Trace) -> None:
    """The workload exited 0 (its own readings met every step's expectation) and ran them all."""
    names = [s.name for s in trace.steps]
    assert names == EXPECTED_STEPS, f"[{trace.mode}] workload steps {names}"
    assert {s.pid for s in trace.steps} == {trace.workload_pid}


def test_log_framing(trace: Trace) -> None:
    """start (version 1) first, end last (reason targets-exited), every line parsed, every
    `sample` matched /proc, no `mismatch` or `lost` record."""
    recs = trace.records
    problems: list[str] = []
    if not recs:
        report(trace, ["the log is empty"])
    first, last = recs[0], recs[-1]
    if first.get("type") != "start":
        problems.append(f"first record is not `start`: {fmt(first)}")
    elif first.get("version") != SCHEMA_VERSION:
        problems.append(f"start.version is {first.get('version')!r}, expected {SCHEMA_VERSION}")
    else:
        target_pids = [t.get("pid") for t in first.get("targets") or []]
        if trace.workload_pid not in target_pids:
            problems.append(
                f"start.targets pids {target_pids} do not include the workload {trace.workload_pid}"
            )
    if last.get("type") != "end":
        problems.append(f"last record is not `end`: {fmt(last)}")
    elif last.get("reason") != "targets-exited":
        problems.append(f"end.reason is {last.get('reason')!r}, expected 'targets-exited'")
    for i, r in enumerate(recs):
        if "type" not in r or "ts_ns" not in r:
            problems.append(f"record {i} lacks type/ts_ns: {r!r}")
    starts = [i for i, r in enumerate(recs) if r.get("type") == "start"]
    ends = [i for i, r in enumerate(recs) if r.get("type") == "end"]
    if starts != [0] or ends != [len(recs) - 1]:
        problems.append(f"start at lines {starts}, end at lines {ends} (0-based)")
    samples = trace.of_type("sample")
    if trace.mode.endswith("/attach") and not samples:
        problems.append("no `sample` record, although --interval 0.05 and the run takes > 0.1 s")
    for r in samples:
        if r.get("match") is not True:
            problems.append(
                f"sample did not match /proc: status {r.get('status')} "
                f"expected_vm_peak_kb {r.get('expected_vm_peak_kb')}"
            )
    for r in trace.of_type("mismatch"):
        problems.append(f"mismatch record: {r!r}")
    for r in trace.of_type("lost"):
        problems.append(f"the kernel dropped records: {r!r}")
    report(trace, problems)


def test_peak_steps_have_exact_peak_records(trace: Trace) -> None:
    """Every step whose own readings show VmPeak rising has peak records inside its window:
    the last one at exactly the VmPeak read after the step, each from the step's thread, with
    the step's cause, never above the final VmPeak (no false intermediate peak), and their
    total_vm growth adds up to the growth the step made."""
    problems: list[str] = []
    for step in trace.steps:
        if not step.raises_peak:
            continue
        peaks = trace.in_window("peak", step)
        if not peaks:
            near = [
                r
                for r in trace.of_workload("peak")
                if step.t0_ns - 50_000_000 <= r["ts_ns"] <= step.t1_ns + 50_000_000
            ]
            problems.append(
                f"{step.describe()}: expected peak record(s) in the window, found none; "
                f"peak records within 50 ms of it:\n{fmt_all(near)}"
            )
            continue
        where = f"{step.describe()}; its peak records:\n{fmt_all(peaks)}"
        if peaks[-1].get("vm_peak_kb") != step.peak_after_kb:
            problems.append(
                f"last peak has vm_peak_kb {peaks[-1].get('vm_peak_kb')}, "
                f"expected {step.peak_after_kb} in {where}"
            )
        for r in peaks:
            if not step.peak_before_kb < r.get("vm_peak_kb", -1) <= step.peak_after_kb:
                problems.append(
                    f"peak vm_peak_kb {r.get('vm_peak_kb')} outside "
                    f"({step.peak_before_kb}, {step.peak_after_kb}] in {where}"
                )
            if r.get("cause") != step.cause:
                problems.append(
                    f"peak cause {r.get('cause')!r}, expected {step.cause!r} in {where}"
                )
            if r.get("tid") != step.tid:
                problems.append(f"peak tid {r.get('tid')}, expected {step.tid} in {where}")
        raw_deltas = [r.get("delta_kb") for r in peaks]
        deltas = [d for d in raw_deltas if isinstance(d, int) and d > 0]
        if len(deltas) != len(raw_deltas):
            problems.append(f"peak delta_kb {raw_deltas} not all positive in {where}")
            continue
        grown = step.size_after_kb - step.size_before_kb
        if sum(deltas) != grown:
            problems.append(
                f"peak delta_kb sum {sum(deltas)} (from {deltas}), expected {grown} "
                f"(VmSize growth; operation len_kb {step.len_kb}) in {where}"
            )
        if sum(deltas) < step.peak_after_kb - step.peak_before_kb:
            problems.append(
                f"peak delta_kb sum {sum(deltas)} is less than the VmPeak increase "
                f"{step.peak_after_kb - step.peak_before_kb} in {where}"
            )
    report(trace, problems)


def test_flat_steps_have_no_peak_and_latches_are_recorded(trace: Trace) -> None:
    """Steps whose readings show no VmPeak increase have no peak record in their window; a step
    that shrinks the address space while at its peak (munmap after the 64 MiB mmap, brk shrink,
    shmdt, mremap shrink) has a latch record whose hiwater_vm_kb is that VmPeak."""
    problems: list[str] = []
    for step in trace.steps:
        if not step.raises_peak:
            peaks = trace.in_window("peak", step)
            if peaks:
                problems.append(
                    f"{step.describe()}: expected no peak record (VmPeak unchanged), "
                    f"found:\n{fmt_all(peaks)}"
                )
        if step.expect_latch:
            latches = trace.in_window("latch", step)
            good = [
                r
                for r in latches
                if r.get("hiwater_vm_kb") == step.peak_before_kb
                and r.get("cause") == step.cause
                and r.get("tid") == step.tid
            ]
            if not good:
                problems.append(
                    f"{step.describe()}: expected a latch record with hiwater_vm_kb "
                    f"{step.peak_before_kb}, cause {step.cause!r}, tid {step.tid}; "
                    f"latch records in the window:\n{fmt_all(latches)}"
                )
    munmap = next((s for s in trace.steps if s.name == "munmap-64m"), None)
    if munmap is None or not munmap.expect_latch:
        problems.append(f"the munmap-64m step did not run at the peak: {munmap}")
    report(trace, problems)


def test_no_peak_contradicts_the_readings(trace: Trace) -> None:
    """Between steps (and after the last one) nothing raises VmPeak, and before the first step
    VmPeak never exceeded what the workload read then."""
    problems: list[str] = []
    first, last = trace.steps[0], trace.steps[-1]
    for r in trace.of_workload("peak"):
        ts = r["ts_ns"]
        if any(s.contains(ts) for s in trace.steps):
            continue  # checked per step
        if ts < first.t0_ns:
            if r.get("vm_peak_kb", 0) > first.peak_before_kb:
                problems.append(
                    f"peak before the first step claims vm_peak_kb {r.get('vm_peak_kb')}, "
                    f"but the workload read VmPeak {first.peak_before_kb} kB at its start: "
                    f"{fmt(r)}"
                )
            continue
        prev = [s for s in trace.steps if s.t1_ns < ts]
        after = prev[-1].name if prev else "?"
        nxt = next((s.name for s in trace.steps if s.t0_ns > ts), "(none: after the last step)")
        where = "after the last step" if ts > last.t1_ns else f"between {after!r} and {nxt!r}"
        problems.append(f"peak record outside every step window, {where}: {fmt(r)}")
    report(trace, problems)


def _text_lines(stdout: str, token: str) -> list[tuple[int | None, int | None, str]]:
    out: list[tuple[int | None, int | None, str]] = []
    for line in stdout.splitlines():
        if token in line and line[:1] not in (" ", "\t"):
            kb = KB_RE.search(line)
            tid = TID_RE.search(line)
            out.append((int(kb.group(1)) if kb else None, int(tid.group(1)) if tid else None, line))
    return out


def _loader_start_up(records: list[Record]) -> tuple[set[int], int]:
    """The peak/latch records the console sums in a LOAD line (after an exec, while the
    innermost frame is in ld.so), by index, and how many LOAD lines that makes."""
    summed: set[int] = set()
    loading: dict[int, int] = {}  # pid -> records summed since its exec
    runs = 0
    for i, r in enumerate(records):
        pid, t = r.get("pid"), r.get("type")
        if pid in loading:
            if t in ("peak", "latch") and by_the_loader(r):
                summed.add(i)
                loading[pid] += 1
                continue
            if t in ("peak", "latch", "exec", "exit", "oom", "hwm"):
                runs += loading.pop(pid) > 0
        if t == "exec":
            loading[pid] = 0
    return summed, runs + sum(n > 0 for n in loading.values())


def test_text_output_matches_log(trace: Trace) -> None:
    """The stdout text has one ` PEAK ` line per peak record and one ` LATCH ` line per latch
    record, in the same order, with the same kB ([vm_peak_kb kB] / [hiwater_vm_kb kB]) and tid
    (but for the dynamic loader's start-up after an exec: one ` LOAD ` line per exec)."""
    problems: list[str] = []
    summed, runs = _loader_start_up(trace.records)
    loads = len(_text_lines(trace.stdout, " LOAD "))
    if loads != runs:
        problems.append(f"{loads} LOAD lines on stdout, but {runs} loader start-ups in the log")
    for token, rtype, key in (
        (" PEAK ", "peak", "vm_peak_kb"),
        (" LATCH ", "latch", "hiwater_vm_kb"),
    ):
        lines = _text_lines(trace.stdout, token)
        recs = [
            r for i, r in enumerate(trace.records) if r.get("type") == rtype and i not in summed
        ]
        if len(lines) != len(recs):
            problems.append(
                f"{len(lines)} {token.strip()} lines on stdout but {len(recs)} {rtype} records"
            )
        for i, ((kb, tid, line), r) in enumerate(zip(lines, recs, strict=False)):
            if kb != r.get(key) or tid != r.get("tid"):
                problems.append(
                    f"{token.strip()} line {i}: [{kb} kB] tid {tid}, but {rtype} record {i} has "
                    f"{key} {r.get(key)} tid {r.get('tid')}\n    line: {line}\n"
                    f"    record: {fmt(r)}"
                )
                break
    report(trace, problems)
