"""Where records go: a JSONL file or stream, and the console. Both take schema dicts."""

from __future__ import annotations

import json
import os
from typing import IO, Any, Protocol

from vmtrace.errors import OutputError
from vmtrace.units import WallClock, human_bytes, human_kb

Record = dict[str, Any]


class Sink(Protocol):
    def write(self, rec: Record) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def open_log(path: str, force: bool) -> IO[str]:
    """Create the log 0600, never through a symlink, never over a file unless `force`."""
    return os.fdopen(create_output(path, force), "w", encoding="utf-8")


def create_output(path: str, force: bool, truncate: bool = True) -> int:
    """The fd of a new output file (logs, reports, exports, plots): mode 0600, never through
    a symlink, never over an existing file unless `force` (and then emptied, unless not
    `truncate`: the caller empties it once it has something to write)."""
    return _create(path, force, truncate)[0]


def _create(path: str, force: bool, truncate: bool) -> tuple[int, bool]:
    """(fd, whether this call created the file)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            return os.open(path, flags | os.O_EXCL, 0o600), True
        except FileExistsError:
            if not force:
                raise
        fd = os.open(path, (flags & ~os.O_CREAT) | (os.O_TRUNC if truncate else 0))
    except FileExistsError:
        raise OutputError(
            f"failed to create {path}: it exists (fix: choose another -o, or add --force)"
        ) from None
    except OSError as e:
        if e.errno == 40:  # ELOOP: the last component is a symlink
            raise OutputError(f"failed to create {path}: it is a symlink (refused)") from None
        raise OutputError(f"failed to create {path}: {e.strerror}") from None
    os.fchmod(fd, 0o600)  # with --force the file existed: its old mode must not leak the log
    return fd, False


class LogFile:
    """The -o file of a trace, made before tracing starts so that an unwritable path is
    refused before any probe is loaded; but it only becomes the log with the first record:
    a file replaced with --force is emptied then, and a trace that never started removes
    the file it created (`abandon`), or leaves the one it would have replaced untouched."""

    def __init__(self, path: str, force: bool) -> None:
        self.path = path
        fd, self._created = _create(path, force, truncate=False)
        self._ident = _ident(os.fstat(fd))
        self.stream: IO[str] = os.fdopen(fd, "w", encoding="utf-8")
        self.used = False

    def use(self) -> None:
        if not self.used:
            self.used = True
            self.stream.truncate(0)

    def abandon(self) -> None:
        """Close the file unused; remove it if this trace created it (and it is still the
        file at `path`)."""
        if self.used:
            return
        self.stream.close()
        try:
            if self._created and _ident(os.lstat(self.path)) == self._ident:
                os.unlink(self.path)
        except OSError:
            pass


def _ident(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class JsonlSink:
    def __init__(self, stream: IO[str] | LogFile, name: str) -> None:
        self._file = stream if isinstance(stream, LogFile) else None
        self._f = stream.stream if isinstance(stream, LogFile) else stream
        self._name = name

    def abandon(self) -> None:
        """The trace never started: no log (see LogFile)."""
        if self._file is not None:
            self._file.abandon()

    def write(self, rec: Record) -> None:
        self._write_line(json.dumps(rec, separators=(",", ":")) + "\n")

    def _write_line(self, line: str) -> None:
        try:
            if self._file is not None and not self._file.used:
                self._file.use()
            self._f.write(line)
        except OSError as e:
            raise OutputError(f"failed to write {self._name}: {e.strerror}") from None

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            raise OutputError(f"failed to write {self._name}: {e.strerror}") from None

    def close(self) -> None:
        try:
            self._f.close()
        except OSError as e:
            raise OutputError(f"failed to close {self._name}: {e.strerror}") from None


class RotatingJsonlSink(JsonlSink):
    """A JSONL log that moves on to a new file at `max_bytes`: FILE is renamed FILE.1 (then
    .2, ...) once flushed and synced, and the new FILE starts with a copy of the `start`
    record (with `part`), so every file can be read on its own and none loses a record."""

    def __init__(self, path: str, force: bool, max_bytes: int) -> None:
        if not force and os.path.lexists(f"{path}.1"):
            raise OutputError(
                f"failed to create {path}: {path}.1 exists from an earlier rotated log "
                "(fix: choose another -o, or add --force)"
            )
        super().__init__(LogFile(path, force), path)
        self._path = path
        self._force = force
        self._max = max_bytes
        self._size = 0
        self._part = 1
        self._start: Record | None = None

    def write(self, rec: Record) -> None:
        if rec.get("type") == "start" and self._start is None:
            self._start = rec
        line = json.dumps(rec, separators=(",", ":")) + "\n"
        if self._size and self._size + len(line) > self._max and rec.get("type") != "end":
            self._rotate()
        self._write_line(line)
        self._size += len(line.encode())

    def _rotate(self) -> None:
        self.flush()
        target = f"{self._path}.{self._part}"
        if not self._force and os.path.lexists(target):
            raise OutputError(f"failed to rotate {self._path}: {target} exists (refused)")
        try:
            os.fsync(self._f.fileno())
            self._f.close()
            os.rename(self._path, target)
        except OSError as e:
            raise OutputError(f"failed to rotate {self._path}: {e.strerror}") from None
        self._part += 1
        self._f = open_log(self._path, force=False)
        self._size = 0
        if self._start is not None:
            header = dict(self._start, part=self._part, previous=f"{self._path}.{self._part - 1}")
            self._write_line(json.dumps(header, separators=(",", ":")) + "\n")


def _addr(v: Any) -> str:
    return "NULL" if v in (None, "0x0") else str(v)


def describe_call(rec: Record) -> str:
    """The syscall (or fault) behind a change, as the console shows it."""
    cause = rec.get("cause")
    a = rec.get("args") or {}
    ret = rec.get("ret")
    ret_s = f" = {ret}" if ret is not None else ""
    sc = rec.get("syscall")
    if cause == "stack-growth":
        where = f" in {sc}()" if sc else " (page fault)"
        return f"stack growth{where}"
    if sc == "mmap" and a:
        fd = f", fd {a['fd']}" if a.get("fd", -1) >= 0 else ""
        return (
            f"mmap({_addr(a['addr'])}, {human_bytes(a['len'])}, {a['prot']}, {a['flags']}"
            f"{fd}){ret_s}"
        )
    if sc == "munmap" and a:
        return f"munmap({a['addr']}, {human_bytes(a['len'])}){ret_s}"
    if sc == "brk" and a:
        return f"brk({a['brk']}){ret_s}"
    if sc == "mremap" and a:
        return (
            f"mremap({a['old_addr']}, {human_bytes(a['old_len'])} -> "
            f"{human_bytes(a['new_len'])}, {a['flags']}){ret_s}"
        )
    if sc == "shmat" and a:
        return f"shmat(shmid {a['shmid']}, {_addr(a['addr'])}, {a['flags']}){ret_s}"
    if sc == "shmdt" and a:
        return f"shmdt({a['addr']}){ret_s}"
    if cause == "fault":
        return "page fault (no syscall)"
    if cause and cause.startswith("syscall:"):
        return f"{cause[len('syscall:') :]}() (untraced syscall)"
    return f"{sc or cause}(){ret_s}"


def describe_mapping(rec: Record) -> str:
    m = rec.get("mapping")
    if not m:
        return ""
    return f"  {m['path']} {m['start']}-{m['end']} {m['perms']}"


class ConsoleSink:
    """Human lines: every new peak and latch; grow/shrink/samples only with -v."""

    def __init__(
        self, stream: IO[str], clock: WallClock, verbose: int = 0, min_delta_kb: int = 0
    ) -> None:
        self._out = stream
        self._clock = clock
        self._verbose = verbose
        self._min_delta_kb = min_delta_kb

    def _who(self, rec: Record) -> str:
        return f"pid {rec['pid']} tid {rec['tid']} {rec['comm']}"

    def _t(self, rec: Record) -> str:
        return self._clock.clock_of_day(rec["ts_ns"])

    def write(self, rec: Record) -> None:
        t = rec["type"]
        lines: list[str] = []
        if t == "peak" and rec["vm_peak_kb"] - rec["vm_peak_kb_before"] < self._min_delta_kb:
            pass  # --min-delta with --all-events: logged, not shown
        elif t == "peak":
            before, after = rec["vm_peak_kb_before"], rec["vm_peak_kb"]
            lines.append(
                f"{self._t(rec)} PEAK  VmPeak {human_kb(before)} -> {human_kb(after)} "
                f"(+{human_kb(after - before)}) [{after} kB]  {self._who(rec)}"
            )
            lines.append(f"    {describe_call(rec)}{describe_mapping(rec)}")
            lines += [f"      #{i} {frame}" for i, frame in enumerate(rec.get("stack") or [])]
        elif t == "latch":
            lines.append(
                f"{self._t(rec)} LATCH hiwater_vm {human_kb(rec['hiwater_vm_kb'])} recorded "
                f"[{rec['hiwater_vm_kb']} kB]  {self._who(rec)}"
            )
            lines.append(
                f"    {describe_call(rec)}  total_vm {human_kb(rec['total_vm_kb_before'])} -> "
                f"{human_kb(rec['total_vm_kb_after'])}{describe_mapping(rec)}"
            )
        elif t == "hwm":
            before, after = rec["hwm_kb_before"], rec["hwm_kb"]
            lines.append(
                f"{self._t(rec)} HWM   VmHWM {human_kb(before)} -> {human_kb(after)} "
                f"(+{human_kb(after - before)}) [{after} kB]  {self._who(rec)}"
            )
            where = f"during {rec['syscall']}()" if rec.get("syscall") else "by page faults"
            lines.append(f"    {rec.get('rss_member') or 'rss'} pages brought in {where}")
            lines += [f"      #{i} {frame}" for i, frame in enumerate(rec.get("stack") or [])]
        elif t == "hwm-reset":
            lines.append(
                f"{self._t(rec)} HWM-RESET pid {rec['pid']} {rec['comm']}: VmHWM "
                f"{human_kb(rec['hwm_kb_before'])} -> {human_kb(rec['hwm_kb'])} ({rec['detail']})"
            )
        elif t == "fork":
            lines.append(
                f"{self._t(rec)} FORK  pid {rec['pid']} {rec['comm']} forked from pid "
                f"{rec['parent_pid']}: traced from its first instruction"
            )
        elif t == "exec":
            lines.append(
                f"{self._t(rec)} EXEC  new address space, VmPeak starts over at "
                f"{human_kb(rec['vm_peak_kb'])} [{rec['vm_peak_kb']} kB] (was "
                f"{human_kb(rec['vm_peak_kb_before'])})  {self._who(rec)}"
            )
        elif t == "mismatch":
            lines.append(f"{self._t(rec)} MISMATCH pid {rec['pid']}: {rec['detail']}")
        elif t == "lost":
            lines.append(
                f"{self._t(rec)} LOST  {rec['count']} records dropped by the kernel "
                f"(ring buffer full; {rec['total']} in all): rebuilt VmPeak may be off"
            )
        elif t == "exit":
            peak = rec["vm_peak_kb"]
            shown = f"{human_kb(peak)} [{peak} kB]" if peak is not None else "unknown"
            lines.append(
                f"{self._t(rec)} EXIT  pid {rec['pid']} {rec['comm']}: final VmPeak {shown}"
            )
        elif t == "end":
            lines += self._summary(rec)
        elif self._verbose and t in ("grow", "shrink", "baseline"):
            lines.append(
                f"{self._t(rec)} {t.upper():5} total_vm {human_kb(rec['total_vm_kb_before'] or 0)}"
                f" -> {human_kb(rec['total_vm_kb_after'])}  {self._who(rec)}  "
                f"{describe_call(rec)}{describe_mapping(rec)}"
            )
        elif self._verbose and t == "sample":
            lines.append(
                f"{self._t(rec)} SAMPLE pid {rec['pid']} VmPeak {rec['vm_peak_kb']} kB "
                f"(events: {rec['expected_vm_peak_kb']} kB) {'ok' if rec['match'] else 'differs'}"
            )
        if lines:
            self._out.write("\n".join(lines) + "\n")

    def _summary(self, rec: Record) -> list[str]:
        lines = [
            f"--- vmtrace summary ({rec['reason']}; {rec['events']} events, {rec['lost']} lost)"
        ]
        for s in rec["summary"]:
            lines.append(
                f"pid {s['pid']} {s['comm']}: VmPeak {human_kb(s['vm_peak_kb'])} "
                f"[{s['vm_peak_kb']} kB], {s['peaks']} new peaks, {s['latches']} latches"
            )
            if s.get("vm_hwm_kb"):
                lines.append(f"  VmHWM {human_kb(s['vm_hwm_kb'])} [{s['vm_hwm_kb']} kB]")
                hb = s.get("hwm_set_by")
                if hb:
                    lines.append(
                        f"    last raised by {hb['cause']} in tid {hb['tid']} {hb['comm']} at "
                        f"{hb['time']}"
                    )
            sb = s.get("set_by")
            if sb:
                where = f" {sb['mapping']['path']}" if sb.get("mapping") else ""
                lines.append(
                    f"  set by {sb['cause']}{where} in tid {sb['tid']} {sb['comm']} at "
                    f"{sb['time']} (+{human_kb(sb['delta_kb'])})"
                )
            if s["top_causes"]:
                lines.append("  largest contributors to the peak:")
                lines += [
                    f"    {human_kb(c['kb']):>10}  {c['cause']}  {c['mapping']}"
                    for c in s["top_causes"]
                ]
        return lines

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        self.flush()
