"""Human-readable sizes and times (pure)."""

from __future__ import annotations

import datetime as _dt
import math

_UNITS = (("GiB", 1024 * 1024), ("MiB", 1024), ("kB", 1))


def human_kb(kb: int) -> str:
    """1331200 -> '1.27 GiB'; exact kB stay available in the log."""
    sign = "-" if kb < 0 else ""
    kb = abs(kb)
    for name, scale in _UNITS[:-1]:
        if kb >= scale:
            return f"{sign}{kb / scale:.2f} {name}"
    return f"{sign}{kb} kB"


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for name, scale in _UNITS[:-1]:
        if n >= scale * 1024:
            return f"{n / (scale * 1024):.2f} {name}"
    return f"{n // 1024} kB" if n % 1024 == 0 else f"{n / 1024:.1f} kB"


class WallClock:
    """Maps the kernel's CLOCK_MONOTONIC timestamps to wall-clock time."""

    def __init__(self, monotonic_ns: int, wall_ns: int) -> None:
        self.monotonic_ns = monotonic_ns
        self.wall_ns = wall_ns
        # Formatting a datetime per record is a visible share of the reader's time in an
        # mmap storm; the part up to the second only changes once a second.
        self._second = -1
        self._prefix = ""

    def wall_ns_of(self, ts_ns: int) -> int:
        return self.wall_ns + (ts_ns - self.monotonic_ns)

    def iso(self, ts_ns: int) -> str:
        """ISO 8601 UTC with microseconds, e.g. 2026-11-25T22:31:00.660849+00:00."""
        second, ns = divmod(self.wall_ns_of(ts_ns), 1_000_000_000)
        if second != self._second:
            t = _dt.datetime.fromtimestamp(second, tz=_dt.UTC)
            self._prefix = t.strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._prefix}.{ns // 1000:06d}+00:00"

    def clock_of_day(self, ts_ns: int) -> str:
        """Local time of day with milliseconds, for console lines."""
        ns = self.wall_ns_of(ts_ns)
        t = _dt.datetime.fromtimestamp(ns / 1e9)
        return t.strftime("%H:%M:%S.") + f"{t.microsecond // 1000:03d}"


_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """'64M', '1G', '512k', '4096' -> bytes (binary units, as /proc's kB are)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    num, unit = t, ""
    if t and t[-1] in _SIZE_UNITS:
        num, unit = t[:-1], t[-1]
    try:
        value = float(num)
    except ValueError:
        raise ValueError(f"{text!r} is not a size (e.g. 64M, 1G, 4096)") from None
    if value != value or value in (math.inf, -math.inf):
        raise ValueError(f"{text!r} is not a size (e.g. 64M, 1G, 4096)")
    if value < 0:
        raise ValueError(f"{text!r}: a size cannot be negative")
    size = int(value * _SIZE_UNITS[unit])
    if size >= 1 << 63:
        raise ValueError(f"{text!r} is larger than any address space")
    return size
