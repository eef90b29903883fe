"""Human-readable sizes and times (pure)."""

from __future__ import annotations

import datetime as _dt

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
    return human_kb(n // 1024) if n % 1024 == 0 else f"{n / 1024:.1f} kB"


class WallClock:
    """Maps the kernel's CLOCK_MONOTONIC timestamps to wall-clock time."""

    def __init__(self, monotonic_ns: int, wall_ns: int) -> None:
        self.monotonic_ns = monotonic_ns
        self.wall_ns = wall_ns

    def wall_ns_of(self, ts_ns: int) -> int:
        return self.wall_ns + (ts_ns - self.monotonic_ns)

    def iso(self, ts_ns: int) -> str:
        ns = self.wall_ns_of(ts_ns)
        t = _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.UTC)
        return t.isoformat(timespec="microseconds")

    def clock_of_day(self, ts_ns: int) -> str:
        """Local time of day with milliseconds, for console lines."""
        ns = self.wall_ns_of(ts_ns)
        t = _dt.datetime.fromtimestamp(ns / 1e9)
        return t.strftime("%H:%M:%S.") + f"{t.microsecond // 1000:03d}"
