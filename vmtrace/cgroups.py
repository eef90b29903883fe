"""cgroup v2 directories as --cgroup names them: the real path (the BPF side holds the
cgroup by an fd of it, which means the same cgroup under any cgroup namespace) and its id
(the directory's inode, as the kernel names the cgroup)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from vmtrace.errors import UsageError

CGROUP2_SUPER_MAGIC = 0x63677270


@dataclass(frozen=True)
class CgroupTarget:
    path: str
    cgroup_id: int


def cgroup2_mounts(mounts_path: str = "/proc/mounts") -> list[str]:
    with open(mounts_path, encoding="utf-8") as f:
        return [
            line.split()[1] for line in f if len(line.split()) > 2 and line.split()[2] == "cgroup2"
        ]


def resolve_cgroup(path: str, mounts_path: str = "/proc/mounts") -> CgroupTarget:
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise UsageError(f"failed to use cgroup {path}: not a directory")
    roots = sorted(cgroup2_mounts(mounts_path), key=len, reverse=True)
    root = next((r for r in roots if real == r or real.startswith(r.rstrip("/") + "/")), None)
    if root is None:
        raise UsageError(
            f"failed to use cgroup {path}: not under a cgroup v2 mount "
            f"({', '.join(roots) or 'none mounted'}); give e.g. /sys/fs/cgroup/system.slice/x"
        )
    return CgroupTarget(path=real, cgroup_id=os.stat(real).st_ino)
