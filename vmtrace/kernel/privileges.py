"""Whether this process may load tracing BPF programs."""

from __future__ import annotations

import os

from vmtrace.errors import EnvironmentProblem

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

# Since 5.8 CAP_BPF + CAP_PERFMON are enough for tracing programs; CAP_SYS_ADMIN implies both.
_NEEDED = (("CAP_BPF", CAP_BPF), ("CAP_PERFMON", CAP_PERFMON))


def effective_capabilities(status_path: str = "/proc/self/status") -> int:
    """The CapEff bit mask from a /proc/PID/status file."""
    try:
        with open(status_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == "CapEff":
                    return int(value.strip(), 16)
    except OSError as e:
        raise EnvironmentProblem(
            f"failed to check privileges: cannot read {status_path}: {e.strerror or e}"
        ) from e
    except ValueError as e:
        raise EnvironmentProblem(
            f"failed to check privileges: malformed CapEff in {status_path}"
        ) from e
    raise EnvironmentProblem(f"failed to check privileges: no CapEff line in {status_path}")


def check_tracing_privileges(
    status_path: str = "/proc/self/status", euid: int | None = None
) -> None:
    """Raise EnvironmentProblem unless we are root or hold the capabilities tracing needs."""
    if (os.geteuid() if euid is None else euid) == 0:
        return
    caps = effective_capabilities(status_path)
    if caps >> CAP_SYS_ADMIN & 1:
        return
    missing = [name for name, bit in _NEEDED if not caps >> bit & 1]
    if missing:
        raise EnvironmentProblem(
            "failed to trace: needs root or CAP_BPF and CAP_PERFMON "
            f"(missing: {', '.join(missing)}) (fix: run with sudo)"
        )
