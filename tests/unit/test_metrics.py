"""The Prometheus sink (vmtrace/metrics.py): records from the real engine in, the text format
as prometheus_client serves it out (parsed back with its own parser)."""

from __future__ import annotations

import socket
import urllib.request
from dataclasses import replace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vmtrace import schema
from vmtrace.engine import PeakEngine
from vmtrace.errors import UsageError
from vmtrace.metrics import OTHER_COMM, MetricsServer, MetricsSink, parse_listen
from vmtrace.records import Change, ProcStatus, SampleCheck
from vmtrace.units import WallClock

CLOCK = WallClock(monotonic_ns=1_000_000_000, wall_ns=1_700_000_000_000_000_000)
PID = 4242
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def scrape(sink: MetricsSink) -> Samples:
    """Every sample of the exposition, by (name, sorted labels)."""
    text = generate_latest(sink.registry).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def change(
    pid: int,
    before_kb: int,
    after_kb: int,
    cause: str = "mmap",
    kind: str = "change",
    comm: str = "job",
    tid: int | None = None,
    hiwater_kb: int = 0,
) -> Change:
    return Change(
        kind=kind,  # type: ignore[arg-type]
        ts_ns=2_000_000_000,
        pid=pid,
        tid=tid if tid is not None else pid,
        comm=comm,
        cause=cause,
        syscall=cause if cause in ("mmap", "brk", "munmap") else None,
        args=None,
        ret=None,
        total_vm_kb_before=before_kb,
        total_vm_kb_after=after_kb,
        hiwater_vm_kb_before=hiwater_kb,
        hiwater_vm_kb_after=max(hiwater_kb, before_kb) if after_kb < before_kb else hiwater_kb,
        stack_vm_kb_before=132,
        stack_vm_kb_after=132,
        kernel_peak_kb_before=0,
    )


def feed(sink: MetricsSink, engine: PeakEngine, *changes: Change) -> None:
    for c in changes:
        sink.write(schema.explained_record(engine.explain(c), CLOCK))


def sample(sink: MetricsSink, pid: int, comm: str, peak_kb: int, hwm_kb: int) -> None:
    st = ProcStatus(vm_peak_kb=peak_kb, vm_size_kb=peak_kb, vm_hwm_kb=hwm_kb, vm_rss_kb=hwm_kb)
    check = SampleCheck(3_000_000_000, pid, st, peak_kb, True, False)
    sink.write(schema.sample_record(check, CLOCK, comm))


def exit_rec(sink: MetricsSink, engine: PeakEngine, pid: int, comm: str = "job") -> None:
    rec = schema.exit_record(
        CLOCK, 4_000_000_000, pid, comm, engine.expected_vm_peak_kb(pid), "proc", None
    )
    sink.write(rec)


def test_peak_rises_are_counted_by_cause_with_their_bytes() -> None:
    sink, engine = MetricsSink(), PeakEngine()
    engine.start(PID, "job", ProcStatus(10_000, 10_000, 2_000, 2_000))
    feed(
        sink,
        engine,
        change(PID, 10_000, 75_536),  # mmap 64 MiB: a new peak
        change(PID, 75_536, 10_000, cause="munmap"),  # latch: not a rise
        change(PID, 10_000, 11_024, cause="brk"),  # below the peak: not a rise
        change(PID, 11_024, 80_000, cause="brk"),  # past it: a rise of 4464 kB
        change(PID, 80_000, 80_132, cause="stack-growth"),
    )
    got = scrape(sink)
    labels = (("cause", "mmap"), ("comm", "job"), ("pid", str(PID)))
    assert got[("vmtrace_peak_rises_total", labels)] == 1
    assert got[("vmtrace_peak_rise_bytes_total", labels)] == 65_536 * 1024
    brk = (("cause", "brk"), ("comm", "job"), ("pid", str(PID)))
    assert got[("vmtrace_peak_rises_total", brk)] == 1
    assert got[("vmtrace_peak_rise_bytes_total", brk)] == (80_000 - 75_536) * 1024
    rises = series(got, "vmtrace_peak_rise_bytes_total")
    assert {dict(k)["cause"] for k in rises} == {"mmap", "brk", "stack-growth"}
    # What the rises add up to is how far VmPeak rose from where tracing found it.
    assert sum(rises.values()) == (engine.expected_vm_peak_kb(PID) or 0) * 1024 - 10_000 * 1024
    peak = series(got, "vmtrace_vm_peak_bytes")
    assert peak == {(("comm", "job"), ("pid", str(PID))): 80_132 * 1024}
    assert "vmtrace_peak_rises_created" not in {n for n, _ in got}


def test_samples_set_vm_peak_and_vm_hwm() -> None:
    sink = MetricsSink()
    sample(sink, PID, "job", 123_456, 7_890)
    got = scrape(sink)
    labels = (("comm", "job"), ("pid", str(PID)))
    assert got[("vmtrace_vm_peak_bytes", labels)] == 123_456 * 1024
    assert got[("vmtrace_vm_hwm_bytes", labels)] == 7_890 * 1024
    sample(sink, PID, "job", 123_460, 9_000)
    got = scrape(sink)
    assert got[("vmtrace_vm_hwm_bytes", labels)] == 9_000 * 1024


def test_lost_records_tallied_changes_and_oom_kills() -> None:
    sink = MetricsSink()
    sink.write(schema.lost_record(CLOCK, 1, 17, 17))
    sink.write(schema.lost_record(CLOCK, 2, 3, 20))
    sink.write(schema.tally_record(CLOCK, 2, 1_000, 1_000, {}))
    sink.write(schema.tally_record(CLOCK, 3, 500, 1_500, {}))
    sink.oom_kill("java")
    sink.write({"type": "oom", "ts_ns": 3, "pid": 99, "comm": "java"})
    got = scrape(sink)
    assert got[("vmtrace_lost_records_total", ())] == 20
    assert got[("vmtrace_tallied_changes_total", ())] == 1_500
    assert got[("vmtrace_oom_kills_total", (("comm", "java"),))] == 2


def test_oom_comm_labels_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vmtrace.metrics.MAX_OOM_COMMS", 2)
    sink = MetricsSink()
    for comm in ("a", "b", "c", "d", "a"):
        sink.oom_kill(comm)
    kills = series(scrape(sink), "vmtrace_oom_kills_total")
    assert kills == {
        (("comm", "a"),): 2,
        (("comm", "b"),): 1,
        (("comm", OTHER_COMM),): 2,
    }


def test_a_thread_name_does_not_make_new_series() -> None:
    t = FakeTime()
    sink, engine = MetricsSink(retention=10, clock=t), PeakEngine()
    engine.start(PID, "job", ProcStatus(10_000, 10_000, 0, 0))
    feed(
        sink,
        engine,
        change(PID, 10_000, 20_000, comm="worker-3", tid=PID + 3),
        change(PID, 20_000, 30_000, comm="worker-4", tid=PID + 4),
    )
    rises = series(scrape(sink), "vmtrace_peak_rises_total")
    assert rises == {(("cause", "mmap"), ("comm", "worker-3"), ("pid", str(PID))): 2}
    # The tracer's sample names the process: from then on that name labels it, and the
    # provisional one ages out.
    sample(sink, PID, "job", 30_000, 100)
    feed(sink, engine, change(PID, 30_000, 31_000, comm="worker-4", tid=PID + 4))
    t.now += 10
    sink.flush()
    got = scrape(sink)
    assert series(got, "vmtrace_peak_rises_total") == {
        (("cause", "mmap"), ("comm", "job"), ("pid", str(PID))): 1
    }
    assert series(got, "vmtrace_vm_peak_bytes") == {
        (("comm", "job"), ("pid", str(PID))): 31_000 * 1024
    }


def test_a_process_named_at_start_keeps_its_name_for_its_threads() -> None:
    sink, engine = MetricsSink(), PeakEngine()
    engine.start(PID, "job", ProcStatus(10_000, 10_000, 0, 0))
    sink.write({"type": "start", "ts_ns": 1, "pid": None, "targets": [{"pid": PID, "comm": "job"}]})
    feed(sink, engine, change(PID, 10_000, 20_000, comm="worker-3", tid=PID + 3))
    comms = {dict(k)["comm"] for k in series(scrape(sink), "vmtrace_peak_rises_total")}
    assert comms == {"job"}


def test_exited_processes_age_out() -> None:
    t = FakeTime()
    sink, engine = MetricsSink(retention=60, clock=t), PeakEngine()
    for pid in (PID, PID + 1):
        engine.start(pid, "job", ProcStatus(10_000, 10_000, 0, 0))
        feed(sink, engine, change(pid, 10_000, 30_000), change(pid, 30_000, 40_000, cause="brk"))
        sample(sink, pid, "job", 40_000, 5_000)
    exit_rec(sink, engine, PID)
    t.now += 59
    sink.flush()
    pids = {dict(k)["pid"] for k in series(scrape(sink), "vmtrace_peak_rises_total")}
    assert pids == {str(PID), str(PID + 1)}  # still scraped for a while after the exit
    t.now += 1
    sink.flush()
    got = scrape(sink)
    for name in (
        "vmtrace_vm_peak_bytes",
        "vmtrace_vm_hwm_bytes",
        "vmtrace_peak_rises_total",
        "vmtrace_peak_rise_bytes_total",
    ):
        assert {dict(k)["pid"] for k in series(got, name)} == {str(PID + 1)}, name
    assert sink.label_sets() == 1


def test_exec_retires_the_old_name() -> None:
    t = FakeTime()
    sink, engine = MetricsSink(retention=10, clock=t), PeakEngine()
    engine.start(PID, "sh", ProcStatus(10_000, 10_000, 0, 0))
    feed(sink, engine, change(PID, 10_000, 20_000, comm="sh"))
    exec_change = replace(
        change(PID, 20_000, 5_000, cause="execve", kind="exec", comm="make"), hiwater_vm_kb_after=0
    )
    feed(sink, engine, exec_change, change(PID, 5_000, 9_000, comm="make"))
    got = series(scrape(sink), "vmtrace_vm_peak_bytes")
    assert {dict(k)["comm"] for k in got} == {"sh", "make"}
    t.now += 10
    sink.flush()
    got = series(scrape(sink), "vmtrace_vm_peak_bytes")
    assert got == {(("comm", "make"), ("pid", str(PID))): 9_000 * 1024}


def test_live_label_sets_are_capped_exited_ones_go_first() -> None:
    t = FakeTime()
    sink, engine = MetricsSink(max_processes=3, clock=t), PeakEngine()

    def proc(pid: int) -> None:
        engine.start(pid, "p", ProcStatus(1_000, 1_000, 0, 0))
        feed(sink, engine, change(pid, 1_000, 2_000, comm="p"))
        t.now += 1

    for pid in (1, 2, 3):
        proc(pid)
    exit_rec(sink, engine, 2, "p")
    proc(4)  # the exited one makes room
    pids = {dict(k)["pid"] for k in series(scrape(sink), "vmtrace_peak_rises_total")}
    assert pids == {"1", "3", "4"}
    feed(sink, engine, change(1, 2_000, 3_000, comm="p"))  # 1 active again: 3 is the oldest
    proc(5)
    got = scrape(sink)
    assert {dict(k)["pid"] for k in series(got, "vmtrace_vm_peak_bytes")} == {"1", "4", "5"}
    assert got[("vmtrace_metrics_evicted_total", ())] == 2
    assert sink.label_sets() == 3


@pytest.mark.parametrize(
    ("spec", "host", "port"),
    [
        ("127.0.0.1:9792", "127.0.0.1", 9792),
        (":9792", "0.0.0.0", 9792),
        ("[::1]:0", "::1", 0),
        ("localhost:80", "localhost", 80),
    ],
)
def test_parse_listen(spec: str, host: str, port: int) -> None:
    addr = parse_listen(spec)
    assert (addr.host, addr.port) == (host, port)


@pytest.mark.parametrize("spec", ["9792", "127.0.0.1", "host:port", "1.2.3.4:65536", "::1:80"])
def test_parse_listen_refuses(spec: str) -> None:
    with pytest.raises(UsageError, match=rf"^failed to serve metrics on {spec}: .*\(fix: "):
        parse_listen(spec)


def test_server_serves_the_registry_on_the_loopback() -> None:
    sink = MetricsSink()
    sample(sink, PID, "job", 2_048, 1_024)
    server = MetricsServer(sink, "127.0.0.1:0")
    try:
        assert server.address.port > 0
        with urllib.request.urlopen(server.url, timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = resp.read().decode()
        assert f'vmtrace_vm_peak_bytes{{comm="job",pid="{PID}"}} 2.097152e+06' in text
    finally:
        server.close()


def test_a_port_in_use_is_one_line_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        spec = f"127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(UsageError) as e:
            MetricsServer(MetricsSink(), spec)
    msg = str(e.value)
    assert msg.startswith(f"failed to serve metrics on {spec}: Address already in use (fix: ")
    assert "\n" not in msg


def test_an_unknown_host_is_one_line_error() -> None:
    with pytest.raises(UsageError, match=r"^failed to serve metrics on no-such-host\.invalid:1"):
        MetricsServer(MetricsSink(), "no-such-host.invalid:1")
