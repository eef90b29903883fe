"""The reader's two rings give one stream in the order the process made its changes.

The reader empties `vital` (peaks, latches, lifecycle) and then `events` (other changes).
Here the reader is held inside the `events` pass, at a marked change, while the process
peaks, latches and makes one more ordinary change: the ordinary change lands in the ring
being read, the peak and the latch in the ring already emptied. The drains must still
hand them over peak, latch, change.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.conftest import answer
from vmtrace.session import BccSession

# bcc names maps by str here, as vmtrace does; it would rather have bytes
pytestmark = pytest.mark.filterwarnings("ignore:not a bytes object:DeprecationWarning")

MiB = 1 << 20
MARK = 3 * MiB + 12 * 4096  # the held change's length: nothing else maps exactly this
LAST = 2 * MiB + 8 * 4096  # the ordinary change made while the reader is held

# Once traced, peaks at 512 MiB and falls back (a latch), maps MARK (below the peak: an ordinary
# change), then on "go": peaks at 600 MiB, unmaps it (a latch), maps LAST (ordinary).
WORKLOAD = f"""
import mmap, sys
sys.stdin.readline()
a = mmap.mmap(-1, 512 << 20); a.close()
m0 = mmap.mmap(-1, {MARK})
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
b = mmap.mmap(-1, 600 << 20); b.close()
m1 = mmap.mmap(-1, {LAST})
sys.stdout.write("done\\n"); sys.stdout.flush()
sys.stdin.readline()
"""


def test_a_change_read_before_an_earlier_peak_waits_for_it(bcc_session: BccSession) -> None:
    session = bcc_session
    wl = subprocess.Popen(
        [sys.executable, "-c", WORKLOAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    stdin = wl.stdin
    try:
        assert stdin is not None
        held_at: list[int] = []
        read_change = session._on_change

        def on_change(ctx: object, data: object, size: int) -> int:
            rc = read_change(ctx, data, size)
            ev = session._changes[-1]
            if ev.pid == wl.pid and ev.syscall_nr == 9 and ev.args_raw[1] == MARK:
                # still inside the `events` pass: the process peaks, latches and makes an
                # ordinary change before this pass goes on
                held_at.append(ev.ts_ns)
                stdin.write(b"go\n")
                stdin.flush()
                assert answer(wl) == b"done\n"
            return rc

        session._on_change = on_change  # type: ignore[method-assign,assignment]
        session.open()
        session.add_target(wl.pid)
        stdin.write(b"start\n")
        stdin.flush()
        assert answer(wl) == b"ready\n"
        got = []
        for _ in range(20):
            got += [ev for ev in session.drain() if ev.pid == wl.pid]
            if any(ev.args_raw[1] == LAST for ev in got if ev.syscall_nr == 9):
                break
        assert held_at, "the marked change was not read"
        after = [ev for ev in got if ev.ts_ns >= held_at[0]]
        kinds = []
        for ev in after:
            if ev.total_vm_after_pages > ev.peak_before_pages:
                kinds.append("peak")
            elif ev.hiwater_vm_after_pages != ev.hiwater_vm_before_pages:
                kinds.append("latch")
            elif ev.syscall_nr == 9 and ev.args_raw[1] in (MARK, LAST):
                kinds.append("mark" if ev.args_raw[1] == MARK else "last")
        assert [ev.ts_ns for ev in got] == sorted(ev.ts_ns for ev in got)
        assert kinds == ["mark", "peak", "latch", "last"], (
            f"records in the order the drains gave them: {kinds}"
        )
    finally:
        if stdin is not None:
            stdin.close()
        try:
            wl.wait(timeout=10)
        except subprocess.TimeoutExpired:
            wl.kill()
            wl.wait()
