"""Facts that hold until the next boot, kept in /run (tmpfs: gone at reboot) so that each start
does not pay again for what the last one found: a backend that cannot load, the kernel's
struct offsets. Only an optimisation: whatever cannot be read or written is found anew."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

RUN_DIR = "/run/vmtrace"


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return "unknown-boot"


def read(path: str) -> dict[str, Any]:
    """The cache at `path` as a dict; empty when absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write(path: str, data: dict[str, Any]) -> None:
    """Replace the cache at `path` whole (readers never see half a file); root's only."""
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
