"""`--metrics`: a real Prometheus server (Debian's `prometheus`) scrapes a live vmtrace on the
loopback, and what it stored is read back through its HTTP API."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration._require import require
from tests.integration.conftest import START_TIMEOUT_S, start_vmtrace, tail, wait_for_start

pytestmark = pytest.mark.bpf

MIB = 1024 * 1024
GROW = 64 * MIB
SERIES_TIMEOUT_S = 90.0  # a few scrapes, plus Prometheus's own start
# Waits for a line on stdin, maps GROW bytes (a new VmPeak, cause mmap), says so, then idles.
WORKLOAD = f"""
import mmap, sys, time
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
m = mmap.mmap(-1, {GROW})
sys.stdout.write("mapped\\n"); sys.stdout.flush()
time.sleep(600)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vm_peak_kb(pid: int) -> int:
    m = re.search(r"^VmPeak:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert m is not None
    return int(m.group(1))


def query(api: str, promql: str) -> list[dict[str, Any]]:
    url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.fixture
def workload() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKLOAD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    yield proc
    proc.kill()
    proc.wait()


def test_prometheus_scrapes_the_peak_rises_of_a_live_trace(
    bpf_ready: None, workload: subprocess.Popen[str], tmp_path: Path
) -> None:
    prometheus = shutil.which("prometheus")
    require(prometheus is not None, "Debian's prometheus package is not installed")
    assert prometheus is not None and workload.stdin and workload.stdout
    pid = workload.pid
    log = tmp_path / "trace.jsonl"
    vmt = start_vmtrace(
        ["-p", str(pid), "--metrics", "127.0.0.1:0", "--interval", "0.5", "-o", str(log)],
        tmp_path,
    )
    prom: subprocess.Popen[bytes] | None = None
    try:
        start = wait_for_start(log, vmt, START_TIMEOUT_S)
        attach_peak = int(start["targets"][0]["status"]["VmPeak"]) * 1024
        m = re.search(
            r"serving Prometheus metrics on (http://127\.0\.0\.1:(\d+)/metrics)", vmt.stderr()
        )
        assert m is not None, f"no metrics address in vmtrace's stderr:\n{tail(vmt.stderr())}"
        target = f"127.0.0.1:{m.group(2)}"

        prom_port = free_port()
        api = f"http://127.0.0.1:{prom_port}"
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            f"  - job_name: vmtrace\n    static_configs:\n      - targets: ['{target}']\n"
        )
        with (tmp_path / "prometheus.log").open("wb") as out:
            prom = subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )

        workload.stdin.write("go\n")
        workload.stdin.flush()
        assert workload.stdout.readline() == "mapped\n"

        # Every rise since the attach, whatever its cause (the mmap, and anything the
        # interpreter maps on the way).
        rise = f'sum(vmtrace_peak_rise_bytes_total{{pid="{pid}",job="vmtrace"}})'
        peak = f'vmtrace_vm_peak_bytes{{pid="{pid}",job="vmtrace"}}'
        deadline = time.monotonic() + SERIES_TIMEOUT_S
        last: tuple[object, ...] = ()
        while True:
            assert vmt.proc.poll() is None, f"vmtrace exited:\n{tail(vmt.stderr())}"
            assert prom.poll() is None, tail((tmp_path / "prometheus.log").read_text())
            expected_peak = vm_peak_kb(pid) * 1024  # now (the interpreter may map more)
            try:
                rises, peaks = query(api, rise), query(api, peak)
                up = query(api, 'up{job="vmtrace"}')
            except OSError as e:  # Prometheus not listening yet
                last = (repr(e),)
            else:
                last = (rises, peaks, up)
                if (
                    rises
                    and peaks
                    and float(rises[0]["value"][1]) == expected_peak - attach_peak
                    and float(peaks[0]["value"][1]) == expected_peak
                ):
                    break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"Prometheus did not get the series within {SERIES_TIMEOUT_S:.0f} s: "
                    f"last answers {last!r}\nprometheus:\n"
                    f"{tail((tmp_path / 'prometheus.log').read_text())}\n"
                    f"vmtrace:\n{tail(vmt.stderr())}"
                )
            time.sleep(0.5)

        assert [float(u["value"][1]) for u in up] == [1.0]
        # The trace is exact: the rises add up to VmPeak's rise since the attach, and the
        # mmap of GROW bytes is the rise that took VmPeak where /proc says it is now.
        comm = Path(f"/proc/{pid}/comm").read_text().strip()  # python or python3: as exec'd
        assert peaks[0]["metric"]["comm"] == comm
        mmap = query(api, f'vmtrace_peak_rise_bytes_total{{pid="{pid}",cause="mmap"}}')
        assert len(mmap) == 1 and mmap[0]["metric"]["comm"] == comm
        assert expected_peak - GROW < float(mmap[0]["value"][1]) + attach_peak <= expected_peak
        n = query(api, f'vmtrace_peak_rises_total{{pid="{pid}",cause="mmap"}}')
        assert [float(x["value"][1]) for x in n] == [1.0]
        hwm = query(api, f'vmtrace_vm_hwm_bytes{{pid="{pid}"}}')
        assert hwm and float(hwm[0]["value"][1]) > 0
        lost = query(api, "vmtrace_lost_records_total")
        assert [float(x["value"][1]) for x in lost] == [0.0]
        assert query(api, "vmtrace_oom_kills_total") == []  # defined, no kill yet: no series
    finally:
        if prom is not None:
            prom.terminate()
            try:
                prom.wait(timeout=30)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait()
        if vmt.proc.poll() is None:
            vmt.proc.send_signal(signal.SIGINT)
        rc = vmt.wait()
    assert rc == 0, tail(vmt.stderr())
