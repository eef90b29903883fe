"""The kernel's own memory high-water marks of a task, from the taskstats genetlink family.

- `query(pid)` / `TaskstatsClient.query`: a live task's record, to cross-check VmPeak and
  VmHWM against /proc at attach and at each sample.
- `ExitListener`: exit notifications for every task, so that a traced process that is gone
  (its /proc with it) still yields its final VmPeak and VmHWM.

Units: `hiwater_vm` and `hiwater_rss` are in KiB. `hiwater_vm` is VmPeak exactly; `hiwater_rss`
is VmHWM without the RSS counters' per-CPU deltas that /proc adds on 6.2+ (a few hundred KiB at
most). Both are mm-wide. A zombie or a kernel thread has no mm (both 0): `query` refuses it.
The per-process (TGID) records carry no memory fields, so a process's values are those of its
last thread's record in the same exit message, filled before the mm is released.

pyroute2 encodes and decodes the messages; the socket is a plain AF_NETLINK one because the
listener must count ENOBUFS overruns and keep reading, which pyroute2's own socket does not allow.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from vmtrace.errors import EnvironmentProblem, TargetError, VmtraceError

NETLINK_GENERIC = 16
TASKSTATS_GENL_NAME = "TASKSTATS"
TASKSTATS_GENL_VERSION = 1
TASKSTATS_CMD_GET = 1
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 2
CTRL_CMD_GETFAMILY = 3
GENL_ID_CTRL = 0x10

# ac_flag bits (<linux/acct.h>)
AXSIG = 0x10  # killed by a signal
AGROUP = 0x20  # this task's exit ended its thread group (taskstats v12+)

# ac_tgid: u32 at this offset of struct taskstats since v12, in every layout but v15's.
_AC_TGID_OFFSET = 368
_AC_TGID_SINCE_VERSION = 12
_RESHUFFLED_VERSION = 15

CPU_ONLINE_PATH = "/sys/devices/system/cpu/online"
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_RECV_BYTES = 65536

Aggregate = Literal["pid", "tgid"]


@dataclass(frozen=True, slots=True)
class TaskStat:
    """One taskstats record, decoded.

    pid: the thread (aggregate "pid") or the process (aggregate "tgid", pid == tgid).
    tgid: its process, or None if the kernel did not say (taskstats before v12).
    hiwater_vm_kb / hiwater_rss_kb: VmPeak / VmHWM of the task's mm in KiB ("kB" in /proc).
    exit_code: None for a live task; for an exit record the kernel's exit_code in wait(2)
        status form: exit status << 8, or the terminating signal in the low 7 bits.
    comm: the thread's name (for a "tgid" record: the name of its last thread).
    aggregate: "pid" for a TASKSTATS_TYPE_AGGR_PID record (one thread), "tgid" for the record
        of a whole process (TASKSTATS_TYPE_AGGR_TGID, or derived; see the module docstring).
    group_exit: this exit ended the process (AGROUP); always True for "tgid" records.
    """

    pid: int
    tgid: int | None
    hiwater_vm_kb: int
    hiwater_rss_kb: int
    exit_code: int | None
    comm: str
    aggregate: Aggregate = "pid"
    group_exit: bool = False


# --------------------------------------------------------------------------------------------
# pyroute2, imported on first use


@dataclass(frozen=True)
class _Pyroute2:
    Marshal: Any
    ctrlmsg: Any
    tcmd: Any
    taskstatsmsg: Any


@functools.cache
def _pyroute2() -> _Pyroute2:
    try:
        from pyroute2.netlink import ctrlmsg
        from pyroute2.netlink.taskstats import taskstatsmsg, tcmd

        try:
            from pyroute2.netlink.marshal import Marshal
        except ImportError:  # pyroute2 before 0.9
            from pyroute2.netlink.nlsocket import Marshal
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise EnvironmentProblem(
            f"failed to import pyroute2: {e} (fix: pip install 'pyroute2>=0.7')"
        ) from e
    return _Pyroute2(Marshal=Marshal, ctrlmsg=ctrlmsg, tcmd=tcmd, taskstatsmsg=taskstatsmsg)


def preload() -> None:
    """Import pyroute2 now, on a thread of its own: the tracer starts this while the BPF
    compile (which runs outside the interpreter lock) keeps the main thread waiting, so that
    the import (about a tenth of a second) is not added to the attach time. A failure is
    left to the first real use, which reports it."""
    with contextlib.suppress(Exception):
        _pyroute2()


def _marshal(family_id: int | None) -> Any:
    pr = _pyroute2()
    marshal = pr.Marshal()
    marshal.msg_map[GENL_ID_CTRL] = pr.ctrlmsg
    if family_id is not None:
        marshal.msg_map[family_id] = pr.taskstatsmsg
    return marshal


def parse_messages(data: bytes, family_id: int | None, marshal: Any = None) -> list[Any]:
    """The netlink messages in one datagram, as pyroute2 message objects (ctrlmsg for the
    genetlink controller, taskstatsmsg for the taskstats family, nlmsgerr for errors/acks)."""
    return list((marshal or _marshal(family_id)).parse(data))


def _encode_family_request(seq: int) -> bytes:
    msg = _pyroute2().ctrlmsg()
    msg["cmd"] = CTRL_CMD_GETFAMILY
    msg["version"] = 1
    msg["reserved"] = 0
    msg["attrs"].append(["CTRL_ATTR_FAMILY_NAME", TASKSTATS_GENL_NAME])
    msg["header"]["type"] = GENL_ID_CTRL
    msg["header"]["flags"] = NLM_F_REQUEST
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = 0
    msg.encode()
    return bytes(msg.data)


def _encode_get(family_id: int, seq: int, attr: str, value: int | str, flags: int) -> bytes:
    msg = _pyroute2().tcmd()
    msg["cmd"] = TASKSTATS_CMD_GET
    msg["version"] = TASKSTATS_GENL_VERSION
    msg["reserved"] = 0
    msg["attrs"].append([attr, value])
    msg["header"]["type"] = family_id
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = 0
    msg.encode()
    return bytes(msg.data)


# --------------------------------------------------------------------------------------------
# decoding: pure functions of pyroute2 message objects (or nested dicts shaped like them)


def _get(obj: Any, key: str) -> Any:
    try:
        return obj.get(key)
    except AttributeError:
        return None


def _attrs(obj: Any) -> list[tuple[str, Any]]:
    """The (name, value) pairs of a message or nested attribute."""
    return [(str(pair[0]), pair[1]) for pair in (_get(obj, "attrs") or ())]


def _attr(obj: Any, name: str) -> Any:
    for key, value in _attrs(obj):
        if key == name:
            return value
    return None


def _comm(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).split(b"\0", 1)[0].decode("utf-8", errors="replace")
    return str(value or "").split("\0", 1)[0]


def _raw_payload(stats: Any) -> bytes | None:
    """The struct taskstats bytes behind a decoded pyroute2 attribute (None for a dict)."""
    data, offset, length = (getattr(stats, k, None) for k in ("data", "offset", "length"))
    if not isinstance(data, bytes | bytearray | memoryview):
        return None
    if not isinstance(offset, int) or not isinstance(length, int) or length < 4:
        return None
    return bytes(data[offset + 4 : offset + length])  # after the 4-byte NLA header


def _ac_tgid(stats: Any, version: int) -> int | None:
    """The thread's process id; from the raw struct when the decoder stops short of it."""
    value = _get(stats, "ac_tgid")
    if value is None and version >= _AC_TGID_SINCE_VERSION and version != _RESHUFFLED_VERSION:
        raw = _raw_payload(stats)
        if raw is not None and len(raw) >= _AC_TGID_OFFSET + 4:
            value = int.from_bytes(raw[_AC_TGID_OFFSET : _AC_TGID_OFFSET + 4], sys.byteorder)
    return int(value) if value else None


class DecodeError(ValueError):
    """A taskstats message without the fields this module needs."""


def _stats_record(nest: Any, aggregate: Aggregate, id_attr: str, exited: bool) -> TaskStat:
    """A TaskStat from an AGGR_PID / AGGR_TGID nest, as the kernel filled it."""
    task_id = _attr(nest, id_attr)
    stats = _attr(nest, "TASKSTATS_TYPE_STATS")
    if task_id is None or stats is None:
        raise DecodeError(f"taskstats {aggregate} record without {id_attr} or stats")
    try:
        version = int(_get(stats, "version") or 0)
        hiwater_vm = int(_get(stats, "hiwater_vm"))
        hiwater_rss = int(_get(stats, "hiwater_rss"))
        flags = int(_get(stats, "ac_flag") or 0)
        exit_code = int(_get(stats, "ac_exitcode") or 0)
    except (TypeError, ValueError) as e:
        raise DecodeError(f"taskstats {aggregate} record with malformed stats: {e}") from e
    pid = int(task_id)
    if aggregate == "pid":
        tgid = _ac_tgid(stats, version)
        group_exit = bool(flags & AGROUP) and exited
    else:
        tgid = pid
        group_exit = exited
    return TaskStat(
        pid=pid,
        tgid=tgid,
        hiwater_vm_kb=hiwater_vm,
        hiwater_rss_kb=hiwater_rss,
        exit_code=exit_code if exited else None,
        comm=_comm(_get(stats, "ac_comm")),
        aggregate=aggregate,
        group_exit=group_exit,
    )


def _process_record(tgid: int, last_thread: TaskStat) -> TaskStat:
    """The record of a whole process, from the record of its last thread (same mm)."""
    return replace(last_thread, pid=tgid, tgid=tgid, aggregate="tgid", group_exit=True)


def decode_message(msg: Any, *, exited: bool) -> list[TaskStat]:
    """Every record of one TASKSTATS_CMD_NEW message: a query reply (exited=False) or an exit
    notification (exited=True).

    For an exit notification: the thread's "pid" record (its tgid filled from the message's
    TGID if the struct did not carry it), then, if this exit ended the process, one "tgid"
    record with the last thread's memory fields, exit code and comm (see the module docstring).
    """
    threads: list[TaskStat] = []
    groups: list[TaskStat] = []
    for name, nest in _attrs(msg):
        if name == "TASKSTATS_TYPE_AGGR_PID":
            threads.append(_stats_record(nest, "pid", "TASKSTATS_TYPE_PID", exited))
        elif name == "TASKSTATS_TYPE_AGGR_TGID":
            groups.append(_stats_record(nest, "tgid", "TASKSTATS_TYPE_TGID", exited))
        # TASKSTATS_TYPE_NULL (alignment padding on some architectures) carries nothing
    if len(threads) == 1 and groups and threads[0].tgid is None:
        threads[0] = replace(threads[0], tgid=groups[0].pid)
    if not exited:
        return threads + groups
    out = list(threads)
    last = next((t for t in threads if t.group_exit), threads[-1] if threads else None)
    if groups:
        out.extend(_process_record(g.pid, last) if last is not None else g for g in groups)
    elif last is not None and last.group_exit and last.tgid is not None:
        out.append(_process_record(last.tgid, last))
    return out


def decode_datagram(data: bytes, family_id: int, *, exited: bool) -> list[TaskStat]:
    """decode_message over every taskstats message of one datagram (others are skipped)."""
    out: list[TaskStat] = []
    for msg in parse_messages(data, family_id):
        header = msg["header"]
        if header.get("type") == family_id and header.get("error") is None:
            out.extend(decode_message(msg, exited=exited))
    return out


# --------------------------------------------------------------------------------------------
# errors


def query_what(pid: int) -> str:
    return f"failed to query taskstats for PID {pid}"


REGISTER_WHAT = "failed to register for taskstats exit notifications"


def error_for(
    what: str,
    code: int,
    *,
    pid: int | None = None,
    stage: Literal["socket", "family", "command", "register"] = "command",
) -> VmtraceError:
    """The vmtrace error for errno CODE from the kernel while doing WHAT (at STAGE: opening
    the socket, resolving the genetlink family, a query, registering a listener)."""
    reason = os.strerror(code)
    if stage == "family" and code == errno.ENOENT:
        return EnvironmentProblem(
            f"{what}: this kernel has no taskstats interface (CONFIG_TASKSTATS is off) "
            "(fix: boot a kernel built with CONFIG_TASKSTATS=y)"
        )
    if stage == "socket" and code in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
        return EnvironmentProblem(
            f"{what}: cannot open a generic netlink socket: {reason} "
            "(fix: boot a kernel with netlink support)"
        )
    if code in (errno.EPERM, errno.EACCES):
        return EnvironmentProblem(
            f"{what}: permission denied: taskstats needs CAP_NET_ADMIN "
            "(fix: run as root, e.g. with sudo)"
        )
    if code == errno.ESRCH and pid is not None:
        return TargetError(f"{what}: no such process (fix: check the PID with ps -p {pid})")
    if stage == "register" and code == errno.EINVAL:
        return EnvironmentProblem(
            f"{what}: the kernel refused the listener ({reason}): it accepts exit listeners only "
            "from the initial user and PID namespaces, for CPUs that exist "
            "(fix: run vmtrace on the host, not in a container)"
        )
    return EnvironmentProblem(f"{what}: {reason}")


def no_mm_error(pid: int) -> TargetError:
    return TargetError(
        f"{query_what(pid)}: it has no user address space: it has exited (zombie) or is a "
        "kernel thread (fix: trace a live user process; an exited one's final values come "
        "with its exit record)"
    )


def reply_to_taskstat(pid: int, msg: Any) -> TaskStat:
    """The TaskStat of PID from the kernel's reply to a TASKSTATS_CMD_ATTR_PID query."""
    try:
        records = decode_message(msg, exited=False)
    except DecodeError as e:
        raise EnvironmentProblem(f"{query_what(pid)}: unexpected reply: {e}") from e
    record = next((r for r in records if r.aggregate == "pid" and r.pid == pid), None)
    if record is None:
        raise EnvironmentProblem(f"{query_what(pid)}: the reply has no record for PID {pid}")
    if record.hiwater_vm_kb == 0:
        raise no_mm_error(pid)
    return record


def error_code(msg: Any) -> int | None:
    """The errno of an NLMSG_ERROR message (0 for an ack); None for any other message."""
    header = msg["header"]
    if header.get("type") != NLMSG_ERROR:
        return None
    error = header.get("error")
    if error is None:
        return 0
    code = getattr(error, "code", None)
    if code is None:
        code = getattr(error, "errno", None)
    return abs(int(code)) if code else errno.EPROTO


def online_cpus(path: str = CPU_ONLINE_PATH) -> str:
    """The online CPU list in the kernel's cpulist format ("0-3,8")."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise EnvironmentProblem(
            f"{REGISTER_WHAT}: cannot read {path}: {reason} (fix: mount sysfs on /sys)"
        ) from e
    if not text or set(text) - set("0123456789,-"):
        raise EnvironmentProblem(f"{REGISTER_WHAT}: {path} is not a CPU list: {text!r}")
    return text


# --------------------------------------------------------------------------------------------
# sockets


class _Socket:
    """A generic netlink socket bound to the taskstats family.

    `what` and `pid` say what the errors it raises are about ("failed to X", and the PID of
    a query, which makes ESRCH a TargetError)."""

    def __init__(self, what: str, *, timeout_s: float, pid: int | None = None) -> None:
        self.what = what
        self.pid = pid
        self._seq = 0
        self._timeout_s = timeout_s
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_GENERIC)
        except OSError as e:
            raise error_for(what, e.errno or errno.EIO, stage="socket") from e
        try:
            self.sock.bind((0, 0))
            self.sock.settimeout(timeout_s)
            self.family_id = self._resolve_family()
            self.marshal: Any = _marshal(self.family_id)
        except BaseException:
            self.sock.close()
            raise

    def next_seq(self) -> int:
        self._seq = self._seq % 0x7FFFFFFF + 1
        return self._seq

    def recv_datagram(self, on_overrun: Callable[[], None] | None = None) -> bytes:
        while True:
            try:
                return self.sock.recv(_RECV_BYTES)
            except OSError as e:
                if e.errno != errno.ENOBUFS or on_overrun is None:
                    raise
                on_overrun()  # lost notifications, on a listener: counted, and read on

    def _recv_answer(self, on_overrun: Callable[[], None] | None = None) -> bytes:
        try:
            return self.recv_datagram(on_overrun)
        except TimeoutError:
            raise EnvironmentProblem(
                f"{self.what}: no answer from the kernel within {self._timeout_s:g} s"
            ) from None
        except OSError as e:
            raise error_for(self.what, e.errno or errno.EIO, pid=self.pid) from e

    def _send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except OSError as e:
            raise error_for(self.what, e.errno or errno.EIO, pid=self.pid) from e

    def _resolve_family(self) -> int:
        seq = self.next_seq()
        self._send(_encode_family_request(seq))
        marshal = _marshal(None)
        while True:
            for msg in parse_messages(self._recv_answer(), None, marshal):
                if msg["header"].get("sequence_number") != seq:
                    continue
                code = error_code(msg)
                if code:
                    raise error_for(self.what, code, pid=self.pid, stage="family")
                family_id = msg.get_attr("CTRL_ATTR_FAMILY_ID")
                if not family_id:
                    raise EnvironmentProblem(f"{self.what}: no taskstats family id in reply")
                return int(family_id)

    def transact(
        self,
        data: bytes,
        seq: int,
        *,
        stage: Literal["command", "register"],
        stash: list[bytes] | None = None,
        on_overrun: Callable[[], None] | None = None,
    ) -> Any:
        """Send a request; return the taskstats reply to it, or None once it is acked.

        Other datagrams with taskstats messages (exit notifications, on a listener) go to STASH,
        ENOBUFS to ON_OVERRUN.
        """
        self._send(data)
        while True:
            datagram = self._recv_answer(on_overrun)
            messages = parse_messages(datagram, self.family_id, self.marshal)
            for msg in messages:
                header = msg["header"]
                if header.get("sequence_number") != seq:
                    continue
                code = error_code(msg)
                if code is not None:  # an ack (0) or an error
                    if code:
                        raise error_for(self.what, code, pid=self.pid, stage=stage)
                    return None
                if stage == "command" and header.get("type") == self.family_id:
                    if header.get("error") is not None:
                        raise EnvironmentProblem(
                            f"{self.what}: cannot decode the reply: {header['error']!r}"
                        )
                    return msg
            if stash is not None and any(
                m["header"].get("type") == self.family_id for m in messages
            ):
                stash.append(datagram)

    def close(self) -> None:
        self.sock.close()


class TaskstatsClient:
    """Taskstats queries over one netlink socket, opened on the first query.

    Not thread-safe. `query` raises EnvironmentProblem (no CAP_NET_ADMIN, no taskstats in this
    kernel, ...) or TargetError (no such process, a zombie, a kernel thread).
    """

    def __init__(self, *, timeout_s: float = 5.0) -> None:
        self._timeout_s = timeout_s
        self._sock: _Socket | None = None

    def query(self, pid: int) -> TaskStat:
        """The per-task record of thread or process PID (a thread ID works: same mm)."""
        what = query_what(pid)
        if not 0 < pid <= 0xFFFFFFFF:
            raise TargetError(f"{what}: not a valid process ID")
        if self._sock is None:
            self._sock = _Socket(what, timeout_s=self._timeout_s, pid=pid)
        sock = self._sock
        sock.what, sock.pid = what, pid
        seq = sock.next_seq()
        data = _encode_get(sock.family_id, seq, "TASKSTATS_CMD_ATTR_PID", pid, NLM_F_REQUEST)
        reply = sock.transact(data, seq, stage="command")
        if reply is None:
            raise EnvironmentProblem(f"{what}: the kernel acknowledged without a reply")
        return reply_to_taskstat(pid, reply)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> TaskstatsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def query(pid: int, *, timeout_s: float = 5.0) -> TaskStat:
    """The per-task record of thread or process PID, over a socket of its own."""
    with TaskstatsClient(timeout_s=timeout_s) as client:
        return client.query(pid)


class ExitListener:
    """Taskstats exit notifications of every task on the given CPUs (default: all online).

    The kernel unicasts one message per exiting thread to each registered socket, in do_exit
    before the parent can reap it: once wait() has returned for a child, its records are queued
    here (or were lost to an overrun). Poll `fileno()` for input, then `drain()`.

    Records of tasks of the whole system arrive, not only traced ones: filter by pid / tgid.
    Messages that did not fit the socket's receive buffer are lost; each ENOBUFS that reported
    such a loss (one or more records) is counted in `overruns`. Needs CAP_NET_ADMIN, and the
    initial user and PID namespaces. CPUs brought online later are not covered. Not thread-safe.
    """

    def __init__(
        self,
        cpus: str | None = None,
        *,
        rcvbuf_bytes: int = 8 << 20,
        timeout_s: float = 5.0,
    ) -> None:
        self.cpus = cpus if cpus is not None else online_cpus()
        self._overruns = 0
        self._malformed = 0
        self._stash: list[bytes] = []
        self._sock: _Socket | None = _Socket(REGISTER_WHAT, timeout_s=timeout_s)
        sock = self._sock
        try:
            self._set_rcvbuf(rcvbuf_bytes)
            seq = sock.next_seq()
            data = _encode_get(
                sock.family_id,
                seq,
                "TASKSTATS_CMD_ATTR_REGISTER_CPUMASK",
                self.cpus,
                NLM_F_REQUEST | NLM_F_ACK,
            )
            sock.transact(
                data, seq, stage="register", stash=self._stash, on_overrun=self._count_overrun
            )
            sock.sock.setblocking(False)
        except BaseException:
            sock.close()
            self._sock = None
            raise

    def _set_rcvbuf(self, size: int) -> None:
        assert self._sock is not None
        try:  # beyond net.core.rmem_max: needs CAP_NET_ADMIN, which registering needs anyway
            self._sock.sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
        except OSError:
            self._sock.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def _count_overrun(self) -> None:
        self._overruns += 1

    @property
    def overruns(self) -> int:
        """How many times the kernel reported lost notifications (ENOBUFS); each is >= 1 lost."""
        return self._overruns

    @property
    def malformed(self) -> int:
        """Messages skipped because they could not be decoded."""
        return self._malformed

    def fileno(self) -> int:
        """The socket to poll for readability (-1 once closed).

        Records that arrived while registering are already read: drain() once after creating
        the listener instead of waiting for the first poll."""
        return self._sock.sock.fileno() if self._sock is not None else -1

    def _decode(self, datagram: bytes) -> list[TaskStat]:
        assert self._sock is not None
        out: list[TaskStat] = []
        family_id = self._sock.family_id
        try:
            messages = parse_messages(datagram, family_id, self._sock.marshal)
        except Exception:  # pyroute2 raises struct.error and others on short messages
            self._malformed += 1
            return out
        for msg in messages:
            header = msg["header"]
            if header.get("type") != family_id:
                continue  # acks and errors of our own requests
            if header.get("error") is not None:
                self._malformed += 1
                continue
            try:
                out.extend(decode_message(msg, exited=True))
            except DecodeError:
                self._malformed += 1
        return out

    def drain(self, max_datagrams: int = 4096) -> list[TaskStat]:
        """The exit records queued now, without blocking (at most MAX_DATAGRAMS messages'
        worth, so that a storm of exits cannot starve the caller: the socket stays readable)."""
        if self._sock is None:
            return []
        records: list[TaskStat] = []
        stash, self._stash = self._stash, []
        for datagram in stash:
            records.extend(self._decode(datagram))
        for _ in range(max_datagrams):
            try:
                datagram = self._sock.recv_datagram(self._count_overrun)
            except BlockingIOError:
                break
            except OSError as e:
                raise EnvironmentProblem(
                    f"failed to read taskstats exit notifications: {e.strerror or e}"
                ) from e
            records.extend(self._decode(datagram))
        return records

    def close(self) -> None:
        """Deregister and close; records still queued are dropped."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            seq = sock.next_seq()
            data = _encode_get(
                sock.family_id,
                seq,
                "TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK",
                self.cpus,
                NLM_F_REQUEST,
            )
            sock.sock.send(data)  # handled synchronously by the kernel; no need to wait
        except OSError:
            pass  # the kernel drops listeners whose socket is gone on its own
        finally:
            sock.close()

    def __enter__(self) -> ExitListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def records_for(records: Iterable[TaskStat], tgid: int) -> list[TaskStat]:
    """The records of process TGID and its threads."""
    return [r for r in records if r.tgid == tgid or (r.tgid is None and r.pid == tgid)]
