"""cgroup v2 directories as the kernel names them: an id (the directory's inode) and a
level (its depth below the cgroup2 root), which is what the BPF side compares with
bpf_get_current_ancestor_cgroup_id()."""

from __future__ import annotations

import os
from dataclasses import dataclass

from vmtrace.errors import UsageError

CGROUP2_SUPER_MAGIC = 0x63677270


@dataclass(frozen=True)
class CgroupTarget:
    path: str
    cgroup_id: int
    level: int


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
    rel = os.path.relpath(real, root)
    level = 0 if rel == "." else len(rel.split(os.sep))
    return CgroupTarget(path=real, cgroup_id=os.stat(real).st_ino, level=level)
