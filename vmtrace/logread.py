"""Reading a vmtrace event log (docs/log-schema.md) back, for the offline tools.

The reader streams: one line at a time, never the whole file, so a log of any length is read in
constant memory. Every record it yields has been checked against the fields the offline tools
use (types, ranges, address strings), so that they can trust what they get; anything else in a
record is passed through untouched and never looked at (readers must ignore unknown fields).

What it forgives and what it refuses (docs/offline.md):
- a last line without its newline that is not a complete JSON object: the writer was killed
  mid-record; a warning, and the records before it are used;
- a record of an unknown `type`: skipped, with one warning per type;
- anything else that is wrong is a `LogFormatError` naming the line: not JSON, not an object,
  a field of the wrong type, a `start.version` newer than `SCHEMA_VERSION`.

Older logs are read too. Version 1's `stack` of change records is a list of symbolised strings,
which the reader turns into frame objects (`function` the string, no module); version 2 has no
`kernel_peak_kb_before`, for which its `vm_peak_kb_before` stands. Up to version 3 the exit
record's `hwm_kb` was named `vm_hwm_kb`; the reader renames it.

`change_from_record` turns a change record back into the `records.Change` the live tracer fed
the engine, so `vmtrace.engine.PeakEngine` explains a log offline exactly as it did live.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from typing import Any, cast

from vmtrace import logformat
from vmtrace.errors import LogFormatError
from vmtrace.frames import frame_record, legacy_frame
from vmtrace.logformat import SCHEMA_VERSION
from vmtrace.records import Change, ChangeKind, Frame, Mapping, ProcStatus

Record = dict[str, Any]
Warn = Callable[[str], None]

CHANGE_TYPES = logformat.CHANGE_TYPES
KNOWN_TYPES = logformat.KNOWN_TYPES

# Kernel counters and addresses are 64-bit: anything larger is not from vmtrace (and would
# overflow the float conversions of plots and exports).
_LIMIT = 1 << 64


class _Bad(Exception):
    """A record that does not fit the schema; the reader adds the line number."""


# -- field checks ---------------------------------------------------------------------------------


def _int(v: object, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"field {name!r} is not an integer ({_show(v)})")
    if not -_LIMIT < v < _LIMIT:
        raise _Bad(f"field {name!r} is out of range ({_show(v)})")
    return v


def _str(v: object, name: str) -> str:
    if not isinstance(v, str):
        raise _Bad(f"field {name!r} is not a string ({_show(v)})")
    return v


def _addr(v: object, name: str) -> int:
    """An address: a hex string as the log writes it (an int is accepted too)."""
    if isinstance(v, str):
        try:
            n = int(v, 16)
        except ValueError:
            raise _Bad(f"field {name!r} is not a hex address ({_show(v)})") from None
        if not 0 <= n < _LIMIT:
            raise _Bad(f"field {name!r} is out of range ({_show(v)})")
        return n
    n = _int(v, name)
    if n < 0:
        raise _Bad(f"field {name!r} is not an address ({_show(v)})")
    return n


def _show(v: object) -> str:
    text = json.dumps(v) if not isinstance(v, float) or v == v else "NaN"
    return text if len(text) <= 40 else text[:37] + "..."


def _get(rec: MappingABC[str, Any], key: str, required: bool) -> Any:
    if key not in rec:
        if required:
            raise _Bad(f"field {key!r} is missing")
        return None
    return rec[key]


def _check_int(rec: MappingABC[str, Any], key: str, *, required: bool, null: bool) -> None:
    v = _get(rec, key, required)
    if v is None:
        if key in rec and not null:
            raise _Bad(f"field {key!r} is null")
        return
    _int(v, key)


def _check_str(rec: MappingABC[str, Any], key: str, *, required: bool, null: bool) -> None:
    v = _get(rec, key, required)
    if v is None:
        if key in rec and not null:
            raise _Bad(f"field {key!r} is null")
        return
    _str(v, key)


def _check_dict(v: object, name: str) -> MappingABC[str, Any]:
    if not isinstance(v, dict):
        raise _Bad(f"field {name!r} is not an object ({_show(v)})")
    return v


def _check_list(v: object, name: str) -> list[Any]:
    if not isinstance(v, list):
        raise _Bad(f"field {name!r} is not a list ({_show(v)})")
    return v


def parse_mapping(v: object, name: str = "mapping") -> Mapping:
    """A mapping object of the log ({start, end, perms, offset, path}) as a `records.Mapping`."""
    try:
        return _mapping(v, name)
    except _Bad as e:
        raise LogFormatError(f"failed to read the record: {e}") from None


def _mapping(v: object, name: str) -> Mapping:
    d = _check_dict(v, name)
    start = _addr(_get(d, "start", True), f"{name}.start")
    end = _addr(_get(d, "end", True), f"{name}.end")
    if end < start:
        raise _Bad(f"{name} ends before it starts ({d['start']}-{d['end']})")
    perms = _str(_get(d, "perms", True), f"{name}.perms")
    path = _str(_get(d, "path", True), f"{name}.path")
    off = d.get("offset")
    offset = 0 if off is None else _int(off, f"{name}.offset")
    return Mapping(start, end, perms, path, offset)


def _status(v: object, name: str) -> ProcStatus:
    d = _check_dict(v, name)
    return ProcStatus(
        vm_peak_kb=_int(_get(d, "VmPeak", True), f"{name}.VmPeak"),
        vm_size_kb=_int(_get(d, "VmSize", True), f"{name}.VmSize"),
        vm_hwm_kb=_int(_get(d, "VmHWM", True), f"{name}.VmHWM"),
        vm_rss_kb=_int(_get(d, "VmRSS", True), f"{name}.VmRSS"),
    )


# Arguments the offline tools read, per syscall: (key, kind).
_ARGS: dict[str, tuple[tuple[str, str], ...]] = {
    "mmap": (("addr", "addr"), ("len", "int"), ("prot", "str"), ("flags", "str"), ("fd", "int")),
    "munmap": (("addr", "addr"), ("len", "int")),
    "brk": (("brk", "addr"),),
    "mremap": (("old_addr", "addr"), ("old_len", "int"), ("new_len", "int"), ("flags", "str")),
    "shmat": (("shmid", "int"), ("addr", "addr"), ("flags", "str")),
    "shmdt": (("addr", "addr"),),
}


def _args(rec: MappingABC[str, Any]) -> None:
    a = rec.get("args")
    if a is None:
        return
    d = _check_dict(a, "args")
    sc = rec.get("syscall")
    for key, kind in _ARGS.get(sc, ()) if isinstance(sc, str) else ():
        v = _get(d, key, True)
        if kind == "addr":
            _addr(v, f"args.{key}")
        elif kind == "int":
            _int(v, f"args.{key}")
        else:
            _str(v, f"args.{key}")


def _ret(v: object) -> int | None:
    if v is None:
        return None
    if isinstance(v, str):
        return _addr(v, "ret")
    return _int(v, "ret")


def _stack(v: object) -> tuple[Frame, ...] | None:
    if v is None:
        return None
    return tuple(_frame(f, f"stack[{i}]") for i, f in enumerate(_check_list(v, "stack")))


def _opt(v: object, name: str, check: Callable[[object, str], Any]) -> Any:
    return None if v is None else check(v, name)


def _frame(v: object, name: str) -> Frame:
    """A frame object (version 2), or the symbolised string of a version 1 log."""
    if isinstance(v, str):
        return legacy_frame(v)
    d = _check_dict(v, name)
    frame = Frame(
        address=_addr(_get(d, "address", True), f"{name}.address"),
        function=_opt(d.get("function"), f"{name}.function", _str),
        offset=_opt(d.get("offset"), f"{name}.offset", _int),
        module=_opt(d.get("module"), f"{name}.module", _str),
        module_offset=_opt(d.get("module_offset"), f"{name}.module_offset", _int),
        file=_opt(d.get("file"), f"{name}.file", _str),
        line=_opt(d.get("line"), f"{name}.line", _int),
    )
    for key in ("offset", "module_offset", "line"):
        n = getattr(frame, key)
        if n is not None and n < 0:
            raise _Bad(f"field '{name}.{key}' is negative ({n})")
    return frame


def _normalise_stack(rec: Record) -> None:
    """Version 1 frames (strings) become frame objects, so the offline tools read one form."""
    stack = rec.get("stack")
    if isinstance(stack, list) and any(isinstance(f, str) for f in stack):
        rec["stack"] = [frame_record(legacy_frame(f)) if isinstance(f, str) else f for f in stack]


def _bool(v: object, name: str) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"field {name!r} is not a boolean ({_show(v)})")
    return v


def _number(v: object, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Bad(f"field {name!r} is not a number ({_show(v)})")
    return v


def _page_size(v: object, name: str) -> int:
    ps = _int(v, name)
    if ps < 1024 or ps & (ps - 1):
        raise _Bad(f"field {name!r} is not a page size ({ps})")
    return ps


def _mappings(v: object, name: str) -> list[Mapping]:
    return [_mapping(m, f"{name}[{i}]") for i, m in enumerate(_check_list(v, name))]


def _by_pid(v: object, name: str) -> None:
    if not (
        isinstance(v, dict) and all(k.isdigit() and type(n) is int for k, n in v.items())
    ):
        raise _Bad(f"field {name!r} is not an object of pid -> count")


def _targets(v: object, name: str) -> None:
    for i, t in enumerate(_check_list(v, name)):
        d = _check_dict(t, f"{name}[{i}]")
        _int(_get(d, "pid", True), f"{name}[{i}].pid")
        comm = d.get("comm")
        if comm is not None:
            _str(comm, f"{name}[{i}].comm")
        if d.get("status") is not None:
            _status(d["status"], f"{name}[{i}].status")


_KIND_CHECKS: dict[str, Callable[[object, str], object]] = {
    "int": _int,
    "str": _str,
    "bool": _bool,
    "number": _number,
    "addr": _addr,
    "ret": lambda v, _name: _ret(v),
    "mapping": _mapping,
    "mappings": _mappings,
    "status": _status,
    "stack": lambda v, _name: _stack(v),
    "by_pid": _by_pid,
    "targets": _targets,
    "page_size": _page_size,
}


def _specs(fields: tuple[logformat.Field, ...]) -> tuple[tuple[str, logformat.Field], ...]:
    """Each field name once, in the order of its first definition, with its last one."""
    by_name: dict[str, logformat.Field] = {}
    for fl in fields:
        for n in fl.names:
            by_name[n] = fl  # a redefinition keeps the name's place
    return tuple(by_name.items())


_SPECS = {t: _specs(logformat.fields_of(t)) for t in logformat.KNOWN_TYPES}
_COMMON_SPECS = _specs(logformat.COMMON)


def check_record(rec: MappingABC[str, Any]) -> None:
    """Raise LogFormatError if `rec` lacks a field the offline tools use, or has a bad one."""
    try:
        _check(rec)
    except _Bad as e:
        raise LogFormatError(f"failed to read the record: {e}") from None


def _check(rec: MappingABC[str, Any]) -> None:
    """`rec` against its type's definition (vmtrace.logformat); a type not defined there
    against the fields every record has."""
    t = rec.get("type")
    if not isinstance(t, str):
        raise _Bad("it has no string field 'type'")
    for name, fl in _SPECS.get(t, _COMMON_SPECS):
        if name not in rec:
            if fl.required:
                raise _Bad(f"field {name!r} is missing")
            continue
        v = rec[name]
        if v is None:
            if not fl.null:
                raise _Bad(f"field {name!r} is null")
            continue
        if fl.kind == "args":
            _args(rec)
        elif fl.kind != "any":
            _KIND_CHECKS[fl.kind](v, name)


# -- records → engine input -----------------------------------------------------------------------


def change_from_record(rec: MappingABC[str, Any]) -> Change:
    """A change record (`peak`, `latch`, `grow`, `shrink`, `exec`, `baseline`, `fork`, `hwm`)
    as the `Change` the live tracer gave the engine. `vm_peak_kb_before` stands for the
    kernel's peak before the change, so PeakEngine re-explains the record as it did live."""
    t = rec.get("type")
    if t not in CHANGE_TYPES:
        raise LogFormatError(f"failed to read the record: a {t!r} record is not a change")
    try:
        _check(rec)
        return _change(rec)
    except _Bad as e:
        raise LogFormatError(f"failed to read the record: {e}") from None


_KINDS: dict[str, str] = {"exec": "exec", "baseline": "baseline", "fork": "fork", "hwm": "hwm"}
# Fields of newer Change versions, filled only where records.Change has them.
_EXTRA = ("rss_kb", "hwm_kb", "hwm_kb_before", "rss_member", "parent_pid", "exec_tid")
_CHANGE_FIELDS = frozenset(f.name for f in dataclasses.fields(Change))


def _change(rec: MappingABC[str, Any]) -> Change:
    kind = cast(ChangeKind, _KINDS.get(rec["type"], "change"))
    args = rec.get("args")
    mapping = rec.get("mapping")
    change = Change(
        kind=kind,
        ts_ns=rec["ts_ns"],
        pid=rec["pid"],
        tid=rec["tid"],
        comm=rec.get("comm") or "?",
        cause=rec["cause"],
        syscall=rec.get("syscall"),
        args=dict(args) if args is not None else None,
        ret=_ret(rec.get("ret")),
        total_vm_kb_before=rec["total_vm_kb_before"],
        total_vm_kb_after=rec["total_vm_kb_after"],
        hiwater_vm_kb_before=rec["hiwater_vm_kb_before"],
        hiwater_vm_kb_after=rec["hiwater_vm_kb"],
        stack_vm_kb_before=rec.get("stack_vm_kb_before") or 0,
        stack_vm_kb_after=rec.get("stack_vm_kb_after") or 0,
        # the kernel's fact where the log has it; older logs only the engine's judgement
        kernel_peak_kb_before=rec.get("kernel_peak_kb_before", rec["vm_peak_kb_before"]),
        mapping=_mapping(mapping, "mapping") if mapping is not None else None,
        stack=_stack(rec.get("stack")),
    )
    extra: dict[str, Any] = {
        k: rec[k] for k in _EXTRA if k in _CHANGE_FIELDS and rec.get(k) is not None
    }
    mm_id = rec.get("mm_id")
    if isinstance(mm_id, str):
        try:
            extra["mm_id"] = int(mm_id, 16)
        except ValueError:
            raise _Bad(f"field 'mm_id' is not a hex number ({_show(mm_id)})") from None
    if isinstance(rec.get("rises_covered"), int):
        extra["folded_rises"] = rec["rises_covered"]
    if rec.get("stack_unread") is True:
        extra["stack_unread"] = True
    return dataclasses.replace(change, **extra) if extra else change


def status_from_record(rec: MappingABC[str, Any]) -> ProcStatus:
    """The /proc/PID/status reading of a `sample` or `mismatch` record (or a start target)."""
    try:
        return _status(rec.get("status"), "status")
    except _Bad as e:
        raise LogFormatError(f"failed to read the record: {e}") from None


# -- the reader -----------------------------------------------------------------------------------


@dataclass
class LogReader:
    """Iterate over the records of a log file, checked, in file order.

    The first record yielded is always `start` (`self.start` once iteration began).
    `line_no` is the line of the record last yielded, for messages about it.
    """

    path: str | os.PathLike[str]
    warn: Warn = field(default=lambda _msg: None)
    start: Record | None = None
    line_no: int = 0
    records: int = 0
    complete: bool = False  # an `end` record was read
    truncated: bool = False
    bytes_read: int = 0  # of the file, up to the record last yielded (for progress)
    _unknown: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return os.fspath(self.path)

    def fail(self, what: str) -> LogFormatError:
        return LogFormatError(f"failed to read {self.name}: {what}")

    def __iter__(self) -> Iterator[Record]:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 (closed in the finally below)
        except OSError as e:
            raise self.fail(e.strerror or str(e)) from None
        try:
            yield from self._records(f)
        finally:
            f.close()

    def _records(self, f: Any) -> Iterator[Record]:
        n = 0
        try:
            for raw in f:
                n += 1
                self.bytes_read += len(raw)
                self.line_no = n
                rec = self._parse(raw, n)
                if rec is None:
                    continue
                t = rec["type"]
                if self.start is None:
                    self.start = rec
                elif t == "start":
                    raise self.fail(f"line {n} is a second start record (two logs in one file?)")
                elif t not in KNOWN_TYPES:
                    if t not in self._unknown:
                        self._unknown.add(t)
                        self.warn(f"{self.name}: ignoring records of unknown type {t!r}")
                    continue
                if t == "end":
                    self.complete = True
                self.records += 1
                yield rec
        except OSError as e:
            raise self.fail(f"line {n + 1}: {e.strerror or e}") from None
        if self.start is None:
            raise self.fail("it is empty" if n == 0 else "it has no records")

    def _parse(self, raw: bytes, n: int) -> Record | None:
        last_unterminated = not raw.endswith(b"\n")
        if not raw.strip():
            return None
        try:
            text = raw.decode("utf-8")
            obj = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:
            if last_unterminated:
                self._truncated(n)
                return None
            raise self.fail(f"line {n} is not JSON ({_reason(e)})") from None
        if not isinstance(obj, dict):
            if last_unterminated:
                self._truncated(n)
                return None
            raise self.fail(f"line {n} is not a JSON object (it is {type(obj).__name__})")
        if self.start is None:
            self._check_start(obj, n)  # before the fields: a newer version may change them
        if obj.get("type") == "exit" and "vm_hwm_kb" in obj and "hwm_kb" not in obj:
            obj["hwm_kb"] = obj.pop("vm_hwm_kb")  # its name up to version 3
        try:
            _check(obj)
        except _Bad as e:
            t = obj.get("type")
            what = f"{t:.20} record" if isinstance(t, str) else "record"
            raise self.fail(f"line {n}: {what}: {e}") from None
        if obj["type"] in CHANGE_TYPES:
            _normalise_stack(obj)
        return obj

    def _truncated(self, n: int) -> None:
        self.truncated = True
        self.warn(
            f"{self.name}: line {n} is incomplete (the log ends mid-record: was vmtrace "
            "killed?); ignoring it"
        )

    def _check_start(self, rec: Record, n: int) -> None:
        t = rec.get("type")
        if t != "start":
            what = f"a {t:.20} record" if isinstance(t, str) else "not a record"
            raise self.fail(f"line {n} is {what}, not `start` (is this a vmtrace log?)")
        v = rec.get("version")
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(f"line {n}: the start record has no integer `version`")
        if v > SCHEMA_VERSION:
            raise self.fail(
                f"it is a version {v} log and this vmtrace reads version {SCHEMA_VERSION} at "
                "most (fix: read it with a newer vmtrace)"
            )
        if v < 1:
            raise self.fail(f"line {n}: the start record has an invalid version {v}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _reason(e: BaseException) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at column {e.colno}"
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 at byte {e.start}"
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return str(e)


def read_log(path: str | os.PathLike[str], warn: Warn | None = None) -> Iterator[Record]:
    """The checked records of the log at `path`, streamed; see LogReader."""
    return iter(LogReader(path, warn or (lambda _m: None)))


def numbered(reader: LogReader) -> Iterator[tuple[int, Record]]:
    """(line number, record) pairs of a reader, for messages that name the line."""
    for rec in reader:
        yield reader.line_no, rec
