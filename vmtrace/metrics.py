"""`--metrics HOST:PORT`: the trace as Prometheus metrics, served on /metrics.

A Sink like the console: it sees every record the tracer emits and keeps, per traced process,
`vmtrace_vm_peak_bytes` and `vmtrace_vm_hwm_bytes` (gauges) and, per process and cause, the
number and bytes of VmPeak rises (`peak` records: `vm_peak_kb - vm_peak_kb_before`), plus
`vmtrace_lost_records_total`, `vmtrace_tallied_changes_total` and
`vmtrace_oom_kills_total{comm}`. The text format and the HTTP
server are prometheus_client's, on a registry of our own (nothing but these metrics).

Label cardinality is bounded: a process that exited (or exec'd into another comm) keeps its
series for `retention` seconds, so that scrapes see its last values, then they are removed;
at most `max_processes` processes have series at once (the oldest exited go first, then the
least recently active), and `vmtrace_metrics_evicted_total` counts those dropped early.

The sink is written to from the tracer's thread and read by the server's; prometheus_client's
metrics lock themselves, and the bookkeeping here is only touched by the tracer's thread.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIServer

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge

from vmtrace import logformat
from vmtrace.errors import UsageError

Record = dict[str, Any]

DEFAULT_RETENTION_S = 300.0  # five scrapes at Prometheus's default 1 min interval
DEFAULT_MAX_PROCESSES = 1000
EXPIRE_EVERY_S = 1.0  # how often exited processes are looked for (not at every record)
MAX_OOM_COMMS = 256
OTHER_COMM = "(other)"  # the OOM counter's label once MAX_OOM_COMMS names were seen
_COUNTED_TYPES = logformat.CHANGE_TYPES | {"exit"}  # the records whose counters are exported


@dataclass
class _Series:
    """The label sets of one process (pid, comm) that exist in the registry."""

    # cause -> the (rises, rise bytes) counters of that label set, looked up once
    causes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    peak_kb: int | None = None  # the gauges' values: most records leave them as they are
    hwm_kb: int | None = None
    retired_at: float | None = None  # exited (or exec'd away from this comm) at


class MetricsSink:
    def __init__(
        self,
        *,
        retention: float = DEFAULT_RETENTION_S,
        max_processes: int = DEFAULT_MAX_PROCESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # A counter's `_created` series would double the series for no use here.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.vm_peak = Gauge(
            "vmtrace_vm_peak_bytes", "VmPeak of a traced process.", ["pid", "comm"], registry=r
        )
        self.vm_hwm = Gauge(
            "vmtrace_vm_hwm_bytes",
            "VmHWM (peak RSS) of a traced process, from /proc samples and RSS records.",
            ["pid", "comm"],
            registry=r,
        )
        self.rises = Counter(
            "vmtrace_peak_rises",
            "New VmPeak values of a traced process, by cause (mmap, brk, stack-growth...).",
            ["pid", "comm", "cause"],
            registry=r,
        )
        self.rise_bytes = Counter(
            "vmtrace_peak_rise_bytes",
            "Bytes VmPeak rose by, by cause.",
            ["pid", "comm", "cause"],
            registry=r,
        )
        self.lost = Counter(
            "vmtrace_lost_records", "Records the kernel dropped (ring buffer full).", registry=r
        )
        self.tallied = Counter(
            "vmtrace_tallied_changes",
            "Grow/shrink changes the kernel counted instead of sending (the reader was behind).",
            registry=r,
        )
        self.oom_kills = Counter(
            "vmtrace_oom_kills", "Traced processes killed by the OOM killer.", ["comm"], registry=r
        )
        self.evicted = Counter(
            "vmtrace_metrics_evicted",
            "Processes whose series were removed early to keep at most the maximum number.",
            registry=r,
        )
        self._retention = retention
        self._max = max(1, max_processes)
        self._clock = clock
        self._comm: dict[int, str] = {}  # the process comm each live pid is labelled with
        # (pid, comm) -> series, least recently active first
        self._series: OrderedDict[tuple[int, str], _Series] = OrderedDict()
        self._oom_comms: set[str] = set()
        self._next_expiry = 0.0

    # -- Sink --------------------------------------------------------------------------
    def write(self, rec: Record) -> None:
        t = rec.get("type")
        pid = rec.get("pid")
        if t == "lost":
            self.lost.inc(int(rec.get("count") or 0))
        elif t == "tally":
            self.tallied.inc(int(rec.get("count") or 0))
        elif t == "oom":
            self.oom_kill(str(rec.get("comm") or "?"))
        elif t == "start":
            for target in rec.get("targets") or []:
                self._comm.setdefault(int(target["pid"]), str(target.get("comm") or "?"))
        if not isinstance(pid, int):
            self._expire_now_and_then()
            return
        comm = self._process_comm(pid, t, rec.get("comm"))
        if t in _COUNTED_TYPES:
            if isinstance(rec.get("vm_peak_kb"), int):
                self._set_peak(pid, comm, rec["vm_peak_kb"])
            hwm = rec.get("hwm_kb")
            if isinstance(hwm, int) and hwm > 0:
                self._set_hwm(pid, comm, hwm)
            if t == "peak":
                rise_kb = rec["vm_peak_kb"] - rec["vm_peak_kb_before"]
                cause = str(rec.get("cause") or "?")
                s = self._touch(pid, comm)
                counters = s.causes.get(cause)
                if counters is None:
                    labels = (str(pid), comm, cause)
                    counters = s.causes[cause] = (
                        self.rises.labels(*labels),
                        self.rise_bytes.labels(*labels),
                    )
                counters[0].inc()
                counters[1].inc(rise_kb * 1024)
            if t == "exit":
                self._retire(pid, comm)
                self._comm.pop(pid, None)
        elif t in ("sample", "mismatch"):
            st = rec.get("status") or {}
            self._set_peak(pid, comm, int(st["VmPeak"]))
            self._set_hwm(pid, comm, int(st["VmHWM"]))
        self._expire_now_and_then()

    def flush(self) -> None:
        self._expire_now_and_then()

    def close(self) -> None:
        pass

    # -- for the tracer ----------------------------------------------------------------
    def oom_kill(self, comm: str) -> None:
        """One more traced process `comm` was killed by the OOM killer."""
        if comm not in self._oom_comms and len(self._oom_comms) >= MAX_OOM_COMMS:
            comm = OTHER_COMM
        self._oom_comms.add(comm)
        self.oom_kills.labels(comm).inc()

    # -- bookkeeping -------------------------------------------------------------------
    def _process_comm(self, pid: int, rtype: object, comm: object) -> str:
        """Change records carry the comm of the thread that made the change; a process is
        labelled with its own name, which only an exec (or the tracer's own view, in
        samples and exits) changes."""
        name = str(comm) if comm else "?"
        known = self._comm.get(pid)
        if known is None:
            self._comm[pid] = name
            return name
        if name != known and rtype in ("exec", "sample", "mismatch", "exit"):
            # Another image (or the tracer learnt the real name late): the old name's
            # series age out like an exited process's.
            self._retire(pid, known)
            self._comm[pid] = name
            return name
        return known

    def _touch(self, pid: int, comm: str) -> _Series:
        key = (pid, comm)
        s = self._series.get(key)
        if s is None:
            self._make_room()
            s = self._series[key] = _Series()
        else:
            s.retired_at = None  # the same pid and name again (a reused pid): live again
            self._series.move_to_end(key)
        return s

    def _set_peak(self, pid: int, comm: str, kb: int) -> None:
        s = self._touch(pid, comm)
        if s.peak_kb != kb:
            s.peak_kb = kb
            self.vm_peak.labels(str(pid), comm).set(kb * 1024)

    def _set_hwm(self, pid: int, comm: str, kb: int) -> None:
        s = self._touch(pid, comm)
        if s.hwm_kb != kb:
            s.hwm_kb = kb
            self.vm_hwm.labels(str(pid), comm).set(kb * 1024)

    def _retire(self, pid: int, comm: str) -> None:
        s = self._series.get((pid, comm))
        if s is not None and s.retired_at is None:
            s.retired_at = self._clock()

    def _remove(self, key: tuple[int, str]) -> None:
        s = self._series.pop(key)
        labels = (str(key[0]), key[1])
        if s.peak_kb is not None:
            self.vm_peak.remove(*labels)
        if s.hwm_kb is not None:
            self.vm_hwm.remove(*labels)
        for cause in s.causes:
            self.rises.remove(*labels, cause)
            self.rise_bytes.remove(*labels, cause)

    def _make_room(self) -> None:
        while len(self._series) >= self._max:
            retired = [k for k, s in self._series.items() if s.retired_at is not None]
            if retired:
                oldest = min(retired, key=lambda k: self._series[k].retired_at or 0.0)
                self._remove(oldest)
            else:
                self._remove(next(iter(self._series)))  # least recently active
            self.evicted.inc()

    def _expire_now_and_then(self) -> None:
        now = self._clock()
        if now >= self._next_expiry:
            self._next_expiry = now + EXPIRE_EVERY_S
            self._expire(now)

    def _expire(self, now: float) -> None:
        for key in [
            k
            for k, s in self._series.items()
            if s.retired_at is not None and now - s.retired_at >= self._retention
        ]:
            self._remove(key)

    def label_sets(self) -> int:
        """How many processes have series now."""
        return len(self._series)


# -- the server ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(spec: str) -> ListenAddress:
    """HOST:PORT, [IPV6]:PORT, or :PORT (every interface)."""
    fix = "fix: give HOST:PORT, e.g. 127.0.0.1:9792, [::1]:9792 or :9792"
    host, sep, port_s = spec.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise UsageError(f"failed to serve metrics on {spec}: not HOST:PORT ({fix})")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UsageError(
            f"failed to serve metrics on {spec}: an IPv6 address goes in brackets ({fix})"
        )
    return ListenAddress(host or "0.0.0.0", int(port_s))


class MetricsServer:
    """/metrics of `sink`'s registry, served from a daemon thread until closed."""

    def __init__(self, sink: MetricsSink, spec: str) -> None:
        addr = parse_listen(spec)
        try:
            self._httpd: WSGIServer = prometheus_client.start_http_server(
                addr.port, addr.host, registry=sink.registry
            )[0]
        except OSError as e:
            reason = e.strerror or str(e)
            if e.errno == 98:  # EADDRINUSE
                fix = "another program listens there: choose another port"
            elif e.errno == 13:  # EACCES
                fix = "choose a port above 1023, or run as root"
            else:
                fix = "give an address of this machine, e.g. 127.0.0.1:9792"
            raise UsageError(f"failed to serve metrics on {spec}: {reason} (fix: {fix})") from None
        host, port = self._httpd.server_address[:2]
        self.address = ListenAddress(str(host), int(port))

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._httpd.shutdown()
            self._httpd.server_close()
