"""PID namespaces: which numbers vmtrace's PIDs are.

Every PID vmtrace takes (-p), reads (/proc) and writes (the records) is a number of its own
PID namespace. On the host that is the kernel's own numbering; inside a container the
kernel side must translate (it is told this namespace's nsfs device and inode), and /proc
must be this namespace's too, or the numbers would mean other processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vmtrace.errors import EnvironmentProblem

# include/linux/proc_ns.h: PROC_PID_INIT_INO, the inode of the initial PID namespace
INIT_PID_NS_INO = 0xEFFFFFFC


@dataclass(frozen=True)
class PidNamespace:
    dev: int  # st_dev of /proc/self/ns/pid (the nsfs device)
    ino: int

    def cflags(self) -> list[str]:
        return [f"-DVMT_PIDNS_DEV={self.dev}", f"-DVMT_PIDNS_INO={self.ino}"]


def own_pid_namespace(proc: str = "/proc") -> PidNamespace | None:
    """vmtrace's PID namespace if it is not the initial one (None: the host's numbers),
    once /proc is checked to number processes the same way."""
    try:
        st = os.stat(f"{proc}/self/ns/pid")
        self_link = os.readlink(f"{proc}/self")
    except OSError as e:
        raise EnvironmentProblem(
            f"failed to read vmtrace's PID namespace: {e.strerror or e} (fix: mount procfs "
            "on /proc)"
        ) from e
    if self_link != str(os.getpid()):
        raise EnvironmentProblem(
            f"failed to use /proc: it numbers processes in another PID namespace (vmtrace "
            f"is {os.getpid()} here, {self_link} there) (fix: mount this namespace's procfs, "
            "e.g. unshare --pid --fork --mount-proc, or run vmtrace where /proc is its own)"
        )
    if st.st_ino == INIT_PID_NS_INO:
        return None
    return PidNamespace(dev=st.st_dev, ino=st.st_ino)


def nested_pids(status_text: str) -> tuple[int, ...]:
    """NSpid of /proc/PID/status: the process's number in vmtrace's namespace, then in each
    namespace nested below it (one number: no namespace of its own below vmtrace's)."""
    for line in status_text.splitlines():
        if line.startswith("NSpid:"):
            try:
                return tuple(int(x) for x in line.split()[1:])
            except ValueError:
                return ()
    return ()
