"""The tracepoint backend's writer mark: set while a thread of the process holds mmap_lock
for writing (and across its downgrade), cleared once the change's record is sent. For as long
as it is set, a /proc/PID/status reading may show a change the records do not yet; the
sampler takes such a reading again (vmtrace.sampling).

munmap lowers total_vm under the write lock, downgrades it and then frees the pages under
the read lock: for 512 MiB of small pages that takes long enough to see the mark set from
another process, and to see it cleared once the unmap's record has arrived.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.integration.conftest import answer
from vmtrace.abi import KernelEvent
from vmtrace.session import BccSession

pytestmark = pytest.mark.filterwarnings("ignore:not a bytes object:DeprecationWarning")

SIZE = 512 << 20

WORKLOAD = f"""
import mmap, sys
m = mmap.mmap(-1, {SIZE})
m.madvise(mmap.MADV_NOHUGEPAGE)  # 131,072 pages for munmap to free
for off in range(0, {SIZE}, 4096):
    m[off] = 1
sys.stdout.write("touched\\n"); sys.stdout.flush()
sys.stdin.readline()
m.close()
sys.stdout.write("unmapped\\n"); sys.stdout.flush()
sys.stdin.readline()
"""


@pytest.mark.parametrize("bcc_session", ["tracepoint"], indirect=True)
def test_the_mark_lasts_from_the_write_lock_to_the_record(bcc_session: BccSession) -> None:
    session = bcc_session
    wl = subprocess.Popen(
        [sys.executable, "-c", WORKLOAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert wl.stdin is not None
        session.open()
        session.add_target(wl.pid)
        assert answer(wl, 60.0) == b"touched\n"
        session.drain()
        assert not session.change_in_flight(wl.pid), "marked while the process only waits"

        wl.stdin.write(b"unmap\n")
        wl.stdin.flush()
        assert wl.stdout is not None
        seen_marked = 0
        unmap_records: list[KernelEvent] = []
        deadline = time.monotonic() + 60
        while not unmap_records and time.monotonic() < deadline:
            seen_marked += session.change_in_flight(wl.pid)
            unmap_records += [
                ev
                for ev in session.drain()
                if ev.pid == wl.pid
                and ev.total_vm_before_pages - ev.total_vm_after_pages == SIZE // 4096
            ]
        assert answer(wl, 60.0) == b"unmapped\n"
        assert len(unmap_records) == 1, f"the 512 MiB unmap's records: {unmap_records}"
        assert seen_marked > 0, "never saw the mark while munmap freed 512 MiB of pages"
        # the process now waits on stdin: any mark left would stay
        deadline = time.monotonic() + 5
        while session.change_in_flight(wl.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not session.change_in_flight(wl.pid), "the mark outlived the unmap"
    finally:
        if wl.stdin is not None:
            wl.stdin.close()
        try:
            wl.wait(timeout=10)
        except subprocess.TimeoutExpired:
            wl.kill()
            wl.wait()
