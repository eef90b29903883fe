"""Where tracefs is, and which tracepoints the running kernel has."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable

from vmtrace.errors import EnvironmentProblem

DEFAULT_MOUNT_POINT = "/sys/kernel/tracing"
# Preferred in this order; the debugfs one is an automount that may vanish with debugfs.
_USUAL_ROOTS = (DEFAULT_MOUNT_POINT, "/sys/kernel/debug/tracing")


def _unescape(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash in paths as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def find_tracefs(mounts_path: str = "/proc/mounts") -> str | None:
    """The tracefs mount point listed in mounts_path, or None."""
    try:
        with open(mounts_path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise EnvironmentProblem(
            f"failed to find tracefs: cannot read {mounts_path}: {e.strerror or e}"
        ) from e
    found: list[str] = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "tracefs":
            found.append(_unescape(fields[1]))
    if not found:
        return None
    for usual in _USUAL_ROOTS:
        if usual in found:
            return usual
    return found[0]


def _mount_tracefs(mount_point: str) -> None:
    try:
        os.makedirs(mount_point, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tracefs", "nodev", mount_point],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as e:
        raise EnvironmentProblem(
            f"failed to mount tracefs at {mount_point}: {e.strerror or e} "
            f"(fix: mount -t tracefs nodev {mount_point})"
        ) from e
    if result.returncode != 0:
        reason = result.stderr.strip() or f"mount exited with status {result.returncode}"
        raise EnvironmentProblem(
            f"failed to mount tracefs at {mount_point}: {reason} "
            f"(fix: mount -t tracefs nodev {mount_point})"
        )


def tracefs_root(
    mount_if_missing: bool = True,
    *,
    mounts_path: str = "/proc/mounts",
    mount_point: str = DEFAULT_MOUNT_POINT,
    euid: int | None = None,
) -> str:
    """The tracefs root, mounting it at mount_point when absent and we are root."""
    root = find_tracefs(mounts_path)
    if root is not None:
        return root
    euid = os.geteuid() if euid is None else euid
    if mount_if_missing and euid == 0:
        _mount_tracefs(mount_point)
        return mount_point
    raise EnvironmentProblem(
        f"failed to find tracefs: not mounted (fix: mount -t tracefs nodev {mount_point})"
    )


def missing_tracepoints(root: str, names: Iterable[str]) -> list[str]:
    """The "category:event" names, in the order given, that root/events does not have."""
    missing = []
    for name in names:
        category, sep, event = name.partition(":")
        if not sep or not category or not event or "/" in name:
            raise ValueError(f"tracepoint name {name!r} is not of the form category:event")
        if not os.path.isdir(os.path.join(root, "events", category, event)):
            missing.append(name)
    return missing
