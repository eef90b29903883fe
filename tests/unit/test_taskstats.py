"""vmtrace.taskstats without a socket: decoding recorded and synthetic netlink messages through
pyroute2's codec, the records derived for a process exit, and the error wording."""

from __future__ import annotations

import base64
import errno
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from vmtrace import taskstats
from vmtrace.errors import EnvironmentProblem, TargetError
from vmtrace.taskstats import (
    AGROUP,
    AXSIG,
    DecodeError,
    TaskStat,
    decode_datagram,
    decode_message,
    error_code,
    error_for,
    online_cpus,
    parse_messages,
    records_for,
    reply_to_taskstat,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# Recorded on Linux 6.18 (x86_64, taskstats v16), where the family id was 31: zlib + base64 of
# whole datagrams as recv() returned them.
RECORDED_FAMILY = 31
# The reply to TASKSTATS_CMD_GET / TASKSTATS_CMD_ATTR_PID for a running python (PID 16862).
RECORDED_QUERY = (
    "eNoLYWJgkGdgYABSDPccgTQjA4MDEwsDBwMjmG/CxMwgwAABTFBaGUr/F+ZkIAq8MmIDUS2P3rCC6ILKkoz8PAaiAcgd"
    "t4F4TSp7NojvOYERLO4gCaEZaiFUuDiEhooyhJcrgGnXE1oQ9fUQ8ZzZUAUckQRsZsQqyg+lhaE0ujtg/iUEYP7B5l9k"
    "fzL8g1CnfzETFV7b2CH6TskxDAgAANkmHto="
)
# The exit notification of the last thread (TID 17861, not the leader) of a two-threaded python
# (PID 17860) that called os._exit(3) after reading VmPeak 154756 kB from /proc/self/status:
# TASKSTATS_TYPE_AGGR_PID (ac_flag AGROUP|AXSIG) + TASKSTATS_TYPE_AGGR_TGID (memory fields 0).
RECORDED_EXIT = (
    "eNqbwsLAIM/AwFDHAAFMjAwMDkwsDBwMjAxHXRkYTJiYGQRAEswMDAZQNcxQ2iKDgSRwOoERTBdUlmTk5xGvD+SOw0D8"
    "NZU9G8R/2cmIVR0zAXMUNCF0SwwTAyWAEY0mF8D8gw6OuEJo+ddQG/5Bw+8XM1HmXnGH0CkKDAMCHJhYgemHCewPePpB"
    "ApxQWkWQyBC0Xw1WuOVnLSM13FdaAgnHhNyBCR8WQukV6t+BAgOdfgAk8R+H"
)


def recorded(blob: str) -> bytes:
    return zlib.decompress(base64.b64decode(blob))


# --- synthetic messages: struct taskstats as the kernel lays it out (v12+ but v15) -------------

FAMILY = 0x1F
TASKSTATS_CMD_NEW = 2
TYPE_PID, TYPE_TGID, TYPE_STATS, TYPE_AGGR_PID, TYPE_AGGR_TGID, TYPE_NULL = 1, 2, 3, 4, 5, 6
V16_SIZE = 560


def stats_payload(
    *,
    pid: int = 0,
    tgid: int = 0,
    vm_kb: int = 0,
    rss_kb: int = 0,
    exit_code: int = 0,
    flag: int = 0,
    comm: bytes = b"",
    version: int = 16,
    size: int = V16_SIZE,
) -> bytes:
    buf = bytearray(size)
    struct.pack_into("=H", buf, 0, version)
    struct.pack_into("=I", buf, 4, exit_code)
    struct.pack_into("=B", buf, 8, flag)
    buf[80 : 80 + len(comm)] = comm  # ac_comm[32]
    struct.pack_into("=I", buf, 128, pid)  # ac_pid
    struct.pack_into("=QQ", buf, 200, rss_kb, vm_kb)  # hiwater_rss, hiwater_vm
    if size >= 372:
        struct.pack_into("=I", buf, 368, tgid)  # ac_tgid (v12+)
    return bytes(buf)


def nla(kind: int, payload: bytes) -> bytes:
    header = struct.pack("=HH", 4 + len(payload), kind)
    pad = b"\0" * (-len(payload) % 4)
    return header + payload + pad


def aggr(kind: int, id_type: int, task_id: int, stats: bytes) -> bytes:
    return nla(kind, nla(id_type, struct.pack("=I", task_id)) + nla(TYPE_STATS, stats))


def message(*attrs: bytes, seq: int = 7, msg_type: int = FAMILY) -> bytes:
    body = struct.pack("=BBH", TASKSTATS_CMD_NEW, 1, 0) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), msg_type, 0, seq, 0) + body


def nlmsg_error(code: int, seq: int = 7) -> bytes:
    """What the kernel answers to a request: the errno (0 for an ack) and the request itself."""
    request_body = struct.pack("=BBH", 1, 1, 0) + nla(TYPE_PID, struct.pack("=I", 77))
    request = struct.pack("=IHHII", 16 + len(request_body), FAMILY, 1, seq, 0) + request_body
    body = struct.pack("=i", -code) + request
    return struct.pack("=IHHII", 16 + len(body), 2, 0, seq, 0) + body


def only(data: bytes) -> Any:
    (msg,) = parse_messages(data, FAMILY)
    return msg


# --- recorded messages -------------------------------------------------------------------------


def test_recorded_query_reply() -> None:
    (msg,) = parse_messages(recorded(RECORDED_QUERY), RECORDED_FAMILY)
    assert reply_to_taskstat(16862, msg) == TaskStat(
        pid=16862,
        tgid=16862,
        hiwater_vm_kb=39788,
        hiwater_rss_kb=32576,
        exit_code=None,
        comm="python",
        aggregate="pid",
        group_exit=False,
    )


def test_recorded_exit_of_a_multithreaded_process() -> None:
    thread, process = decode_datagram(recorded(RECORDED_EXIT), RECORDED_FAMILY, exited=True)
    assert thread == TaskStat(
        pid=17861,
        tgid=17860,
        hiwater_vm_kb=154756,
        hiwater_rss_kb=10528,
        exit_code=3 << 8,
        comm="python",
        aggregate="pid",
        group_exit=True,
    )
    # The kernel's AGGR_TGID record has no memory fields: they come from the last thread (same mm).
    assert process == TaskStat(
        pid=17860,
        tgid=17860,
        hiwater_vm_kb=154756,
        hiwater_rss_kb=10528,
        exit_code=3 << 8,
        comm="python",
        aggregate="tgid",
        group_exit=True,
    )


def test_raw_aggr_tgid_record_really_has_no_memory_fields() -> None:
    (msg,) = parse_messages(recorded(RECORDED_EXIT), RECORDED_FAMILY)
    names = [name for name, _ in taskstats._attrs(msg)]
    assert names == ["TASKSTATS_TYPE_AGGR_PID", "TASKSTATS_TYPE_AGGR_TGID"]
    raw = decode_message(msg, exited=False)  # as the kernel sent them, nothing derived
    assert [(r.aggregate, r.pid, r.hiwater_vm_kb, r.hiwater_rss_kb) for r in raw] == [
        ("pid", 17861, 154756, 10528),
        ("tgid", 17860, 0, 0),
    ]


# --- synthetic messages ------------------------------------------------------------------------


def test_single_threaded_exit_yields_thread_and_derived_process_record() -> None:
    stats = stats_payload(
        pid=500, tgid=500, vm_kb=8000, rss_kb=3000, exit_code=7 << 8, flag=AGROUP, comm=b"sh"
    )
    records = decode_datagram(
        message(aggr(TYPE_AGGR_PID, TYPE_PID, 500, stats)), FAMILY, exited=True
    )
    assert records == [
        TaskStat(500, 500, 8000, 3000, 7 << 8, "sh", "pid", True),
        TaskStat(500, 500, 8000, 3000, 7 << 8, "sh", "tgid", True),
    ]


def test_thread_exit_that_does_not_end_the_process() -> None:
    stats = stats_payload(pid=601, tgid=600, vm_kb=9000, rss_kb=4000, comm=b"worker")
    msg = only(message(aggr(TYPE_AGGR_PID, TYPE_PID, 601, stats)))
    assert decode_message(msg, exited=True) == [
        TaskStat(601, 600, 9000, 4000, 0, "worker", "pid", False)
    ]


def test_last_thread_exit_with_kernel_tgid_record() -> None:
    thread = stats_payload(
        pid=702,
        tgid=700,
        vm_kb=120_000,
        rss_kb=50_000,
        exit_code=9,
        flag=AGROUP | AXSIG,
        comm=b"helper",
    )
    group = stats_payload()  # what the kernel sends: delay accounting only
    data = message(
        aggr(TYPE_AGGR_PID, TYPE_PID, 702, thread), aggr(TYPE_AGGR_TGID, TYPE_TGID, 700, group)
    )
    thread_rec, process_rec = decode_datagram(data, FAMILY, exited=True)
    assert thread_rec == TaskStat(702, 700, 120_000, 50_000, 9, "helper", "pid", True)
    assert process_rec == TaskStat(700, 700, 120_000, 50_000, 9, "helper", "tgid", True)


def test_padding_attribute_is_ignored() -> None:
    stats = stats_payload(pid=5, tgid=5, vm_kb=10, rss_kb=5, flag=AGROUP, comm=b"x")
    data = message(nla(TYPE_NULL, b""), aggr(TYPE_AGGR_PID, TYPE_PID, 5, stats))
    assert [r.aggregate for r in decode_datagram(data, FAMILY, exited=True)] == ["pid", "tgid"]


def test_query_reply_has_no_exit_code_and_no_group_exit() -> None:
    stats = stats_payload(pid=42, tgid=40, vm_kb=1000, rss_kb=500, flag=AGROUP, comm=b"t")
    record = reply_to_taskstat(42, only(message(aggr(TYPE_AGGR_PID, TYPE_PID, 42, stats))))
    assert record == TaskStat(42, 40, 1000, 500, None, "t", "pid", False)


def test_comm_is_cut_at_nul_and_decoded_leniently() -> None:
    stats = stats_payload(pid=1, tgid=1, vm_kb=1, comm=b"ab\xffc\0junk")
    record = reply_to_taskstat(1, only(message(aggr(TYPE_AGGR_PID, TYPE_PID, 1, stats))))
    assert record.comm == "ab\ufffdc"


def test_before_v12_there_is_no_tgid_and_no_agroup() -> None:
    # v10 struct: 352 bytes, no ac_tgid; a single-threaded exit is then only a thread record.
    stats = stats_payload(pid=9, vm_kb=100, rss_kb=50, version=10, size=352, tgid=123)
    msg = only(message(aggr(TYPE_AGGR_PID, TYPE_PID, 9, stats)))
    assert decode_message(msg, exited=True) == [TaskStat(9, None, 100, 50, 0, "", "pid", False)]


def test_before_v12_the_tgid_record_names_the_process() -> None:
    thread = stats_payload(pid=11, vm_kb=100, rss_kb=50, version=10, size=352)
    data = message(
        aggr(TYPE_AGGR_PID, TYPE_PID, 11, thread),
        aggr(TYPE_AGGR_TGID, TYPE_TGID, 10, stats_payload(version=10, size=352)),
    )
    assert decode_datagram(data, FAMILY, exited=True) == [
        TaskStat(11, 10, 100, 50, 0, "", "pid", False),
        TaskStat(10, 10, 100, 50, 0, "", "tgid", True),
    ]


def test_decodes_plain_dicts_shaped_like_pyroute2_messages() -> None:
    # pyroute2 decodes the reshuffled v15 layout by name, ac_tgid included, and comm may be str.
    stats = {
        "version": 15,
        "ac_exitcode": 0,
        "ac_flag": 0,
        "ac_comm": "bash",
        "ac_tgid": 77,
        "hiwater_vm": 2048,
        "hiwater_rss": 1024,
    }
    msg = {
        "attrs": [
            (
                "TASKSTATS_TYPE_AGGR_PID",
                {"attrs": [("TASKSTATS_TYPE_PID", 78), ("TASKSTATS_TYPE_STATS", stats)]},
            )
        ]
    }
    assert decode_message(msg, exited=False) == [TaskStat(78, 77, 2048, 1024, None, "bash")]


def test_record_without_stats_is_a_decode_error() -> None:
    msg = {"attrs": [("TASKSTATS_TYPE_AGGR_PID", {"attrs": [("TASKSTATS_TYPE_PID", 3)]})]}
    with pytest.raises(DecodeError):
        decode_message(msg, exited=True)
    with pytest.raises(EnvironmentProblem, match="failed to query taskstats for PID 3: unexpected"):
        reply_to_taskstat(3, msg)


def test_records_for_selects_a_process_and_its_threads() -> None:
    records = [
        TaskStat(5, 4, 1, 1, 0, "a"),
        TaskStat(4, 4, 1, 1, 0, "a", "tgid", True),
        TaskStat(6, 9, 1, 1, 0, "b"),
        TaskStat(4, None, 1, 1, 0, "a"),
    ]
    assert records_for(records, 4) == [records[0], records[1], records[3]]


# --- replies that are errors ------------------------------------------------------------------


def test_zombie_or_kernel_thread_reply_is_a_target_error() -> None:
    stats = stats_payload(pid=31, tgid=31, exit_code=3 << 8, comm=b"sh")  # no mm: marks are 0
    with pytest.raises(TargetError) as info:
        reply_to_taskstat(31, only(message(aggr(TYPE_AGGR_PID, TYPE_PID, 31, stats))))
    assert str(info.value).startswith(
        "failed to query taskstats for PID 31: it has no user address space"
    )
    assert "(fix: " in str(info.value)


def test_reply_about_another_pid_is_an_environment_problem() -> None:
    stats = stats_payload(pid=8, tgid=8, vm_kb=1, comm=b"x")
    with pytest.raises(EnvironmentProblem, match="the reply has no record for PID 9"):
        reply_to_taskstat(9, only(message(aggr(TYPE_AGGR_PID, TYPE_PID, 8, stats))))


def test_error_code_of_netlink_errors_and_acks() -> None:
    (esrch,) = parse_messages(nlmsg_error(errno.ESRCH), FAMILY)
    (ack,) = parse_messages(nlmsg_error(0), FAMILY)
    reply = only(message(aggr(TYPE_AGGR_PID, TYPE_PID, 1, stats_payload(pid=1, vm_kb=1))))
    assert error_code(esrch) == errno.ESRCH
    assert error_code(ack) == 0
    assert error_code(reply) is None


def test_decode_datagram_skips_errors() -> None:
    assert decode_datagram(nlmsg_error(errno.ESRCH), FAMILY, exited=True) == []


QUERY = "failed to query taskstats for PID 77"
REGISTER = "failed to register for taskstats exit notifications"


@pytest.mark.parametrize(
    ("what", "code", "stage", "pid", "kind", "reason"),
    [
        (QUERY, errno.EPERM, "command", 77, EnvironmentProblem, "needs CAP_NET_ADMIN"),
        (REGISTER, errno.EPERM, "register", None, EnvironmentProblem, "needs CAP_NET_ADMIN"),
        (QUERY, errno.ESRCH, "command", 77, TargetError, "no such process"),
        (QUERY, errno.ENOENT, "family", 77, EnvironmentProblem, "CONFIG_TASKSTATS is off"),
        (REGISTER, errno.ENOENT, "family", None, EnvironmentProblem, "CONFIG_TASKSTATS is off"),
        (REGISTER, errno.EINVAL, "register", None, EnvironmentProblem, "initial user and PID"),
        (QUERY, errno.EAFNOSUPPORT, "socket", 77, EnvironmentProblem, "generic netlink socket"),
    ],
)
def test_error_mapping(
    what: str, code: int, stage: Any, pid: int | None, kind: type[Exception], reason: str
) -> None:
    err = error_for(what, code, pid=pid, stage=stage)
    assert type(err) is kind
    assert str(err).startswith(f"{what}: ")
    assert reason in str(err)
    assert "(fix: " in str(err)


def test_unknown_errno_keeps_the_kernels_reason() -> None:
    err = error_for(QUERY, errno.ENOMEM, pid=77)
    assert isinstance(err, EnvironmentProblem)
    assert str(err) == f"{QUERY}: {os.strerror(errno.ENOMEM)}"


# --- CPU list, import -------------------------------------------------------------------------


def test_online_cpus(tmp_path: Path) -> None:
    path = tmp_path / "online"
    path.write_text("0-3,8\n")
    assert online_cpus(str(path)) == "0-3,8"
    path.write_text("garbage\n")
    with pytest.raises(EnvironmentProblem, match="is not a CPU list"):
        online_cpus(str(path))
    with pytest.raises(EnvironmentProblem, match=f"{REGISTER}: cannot read .*missing"):
        online_cpus(str(tmp_path / "missing"))


def test_import_does_no_io_and_leaves_pyroute2_alone() -> None:
    code = "import sys, vmtrace.taskstats; print('pyroute2' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    assert out.stdout.strip() == "False"
