"""Where records go: a JSONL file or stream, and the console. Both take schema dicts."""

from __future__ import annotations

import json
import os
from typing import IO, Any, Protocol

from vmtrace.errors import OutputError
from vmtrace.frames import describe_frame, frames_of
from vmtrace.units import WallClock, human_bytes, human_kb

Record = dict[str, Any]


_KERNEL_MISSES = (
    ("stacks", "user stacks not read (those records have no call chain)"),
    ("targets_full", "processes not traced (the targets map was full)"),
    ("calls_full", "calls judged change by change (the calls-in-flight map was full)"),
)


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


def describe_end(ended: dict[str, Any] | None) -> str:
    """`, killed by SIGKILL (OOM killer)`, `, exit status 3`, or nothing when unknown."""
    if not ended:
        return ""
    if ended["how"] == "exit":
        return f", exit status {ended['code']}"
    oom = " (OOM killer)" if ended["how"] == "oom-kill" else ""
    return f", killed by {ended['name']}{oom}"


def describe_mapping(rec: Record) -> str:
    m = rec.get("mapping")
    if not m:
        return ""
    return f"  {m['path']} {m['start']}-{m['end']} {m['perms']}"


DEFAULT_STACK_DEPTH = 8


def describe_stack(rec: Record, depth: int) -> list[str]:
    """The first `depth` frames of a record's user stack, innermost first, as the console
    shows them (`#0 func+0x13 (/usr/lib/x86_64-linux-gnu/libc.so.6)`), and how many are cut."""
    frames = frames_of(rec.get("stack"))
    lines = [f"#{i} {describe_frame(f)}" for i, f in enumerate(frames[: max(depth, 0)])]
    if lines and len(frames) > depth:
        lines.append(f"... {len(frames) - depth} more")
    return lines


_LOADERS = ("ld-linux", "ld.so", "ld64.so", "ld-musl")


def by_the_loader(rec: Record) -> bool:
    """Whether the innermost frame that has a file is in the dynamic loader."""
    for frame in rec.get("stack") or []:
        module = frame.get("module") if isinstance(frame, dict) else None
        if isinstance(module, str) and module:
            return os.path.basename(module).startswith(_LOADERS)
    return False


def _covers(rec: Record) -> str:
    n = rec.get("rises_covered")
    return f"  (covers {n} smaller rises since the last one shown)" if n else ""


class _LoaderRun:
    """The dynamic loader's start-up records of one process, summed for one console line."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.first: Record | None = None
        self.paths: set[str] = set()
        self.rise_kb = 0
        self.vm_peak_kb = 0
        self.peaks = 0
        self.latches = 0

    def add(self, rec: Record) -> None:
        self.first = self.first or rec
        m = rec.get("mapping")
        if m and str(m.get("path", "")).startswith("/"):
            self.paths.add(m["path"])
        if rec["type"] == "peak":
            self.peaks += 1
            self.rise_kb += rec["vm_peak_kb"] - rec["vm_peak_kb_before"]
            self.vm_peak_kb = rec["vm_peak_kb"]
        else:
            self.latches += 1

    def objects(self) -> int:
        return len(self.paths)


class ConsoleSink:
    """Human lines: every new peak and latch; grow/shrink/samples only with -v. Peaks,
    latches and VmHWM records show up to `stack_depth` frames of their user stack."""

    def __init__(
        self,
        stream: IO[str],
        clock: WallClock,
        verbose: int = 0,
        min_delta_kb: int = 0,
        stack_depth: int = DEFAULT_STACK_DEPTH,
    ) -> None:
        self._out = stream
        self._clock = clock
        self._verbose = verbose
        self._min_delta_kb = min_delta_kb
        self._stack_depth = stack_depth
        # per pid, from its exec until its first record not made by the dynamic loader: the
        # loader's start-up peaks and latches, shown as one line (all of them with -v)
        self._loading: dict[int, _LoaderRun] = {}

    def _loader_line(self, run: _LoaderRun) -> list[str]:
        if run.first is None:
            return []
        return [
            f"{self._t(run.first)} LOAD  ld.so mapped {run.objects()} objects: "
            f"+{human_kb(run.rise_kb)} to {human_kb(run.vm_peak_kb)} in {run.peaks} peaks, "
            f"{run.latches} latches  pid {run.pid} {run.first['comm']}  (-v shows each)"
        ]

    def _stack(self, rec: Record) -> list[str]:
        return [f"      {line}" for line in describe_stack(rec, self._stack_depth)]

    def _who(self, rec: Record) -> str:
        return f"pid {rec['pid']} tid {rec['tid']} {rec['comm']}"

    def _t(self, rec: Record) -> str:
        return self._clock.clock_of_day(rec["ts_ns"])

    def write(self, rec: Record) -> None:
        t = rec["type"]
        lines: list[str] = []
        pid = rec.get("pid")
        run = self._loading.get(pid) if isinstance(pid, int) else None
        if run is not None:
            if t in ("peak", "latch") and by_the_loader(rec):
                run.add(rec)
                return
            if t in ("peak", "latch", "exec", "exit", "oom", "hwm", "end"):
                lines += self._loader_line(self._loading.pop(run.pid))
        if t == "end":
            for pending in list(self._loading.values()):
                lines += self._loader_line(pending)
            self._loading.clear()
        if t == "exec" and not self._verbose and isinstance(pid, int):
            self._loading[pid] = _LoaderRun(pid)
        if t == "peak" and rec["vm_peak_kb"] - rec["vm_peak_kb_before"] < self._min_delta_kb:
            pass  # --min-delta with --all-events: logged, not shown
        elif t == "peak":
            before, after = rec["vm_peak_kb_before"], rec["vm_peak_kb"]
            lines.append(
                f"{self._t(rec)} PEAK  VmPeak {human_kb(before)} -> {human_kb(after)} "
                f"(+{human_kb(after - before)}) [{after} kB]  {self._who(rec)}"
            )
            lines.append(f"    {describe_call(rec)}{describe_mapping(rec)}{_covers(rec)}")
            lines += self._stack(rec)
        elif t == "latch":
            lines.append(
                f"{self._t(rec)} LATCH hiwater_vm {human_kb(rec['hiwater_vm_kb'])} recorded "
                f"[{rec['hiwater_vm_kb']} kB]  {self._who(rec)}"
            )
            lines.append(
                f"    {describe_call(rec)}  total_vm {human_kb(rec['total_vm_kb_before'])} -> "
                f"{human_kb(rec['total_vm_kb_after'])}{describe_mapping(rec)}"
            )
            lines += self._stack(rec)
        elif t == "hwm":
            before, after = rec["hwm_kb_before"], rec["hwm_kb"]
            lines.append(
                f"{self._t(rec)} HWM   VmHWM {human_kb(before)} -> {human_kb(after)} "
                f"(+{human_kb(after - before)}) [{after} kB]  {self._who(rec)}"
            )
            where = f"during {rec['syscall']}()" if rec.get("syscall") else "by page faults"
            lines.append(f"    {rec.get('rss_member') or 'rss'} pages brought in {where}")
            lines += self._stack(rec)
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
            by_pid = rec.get("by_pid") or {}
            whose = "".join(f", pid {pid}: {n}" for pid, n in by_pid.items())
            lines.append(
                f"{self._t(rec)} LOST  {rec['count']} records dropped by the kernel "
                f"(ring buffer full; {rec['total']} in all{whose}): the address space shown "
                "may miss mappings; VmPeak stays exact"
            )
        elif t == "exit":
            peak = rec["vm_peak_kb"]
            shown = f"{human_kb(peak)} [{peak} kB]" if peak is not None else "unknown"
            lines.append(
                f"{self._t(rec)} EXIT  pid {rec['pid']} {rec['comm']}: final VmPeak {shown}"
                f"{describe_end(rec.get('ended'))}"
            )
        elif t == "oom":
            lines += self._oom(rec)
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

    def _oom(self, rec: Record) -> list[str]:
        by = rec["rss_kb_by_kind"]
        lines = [
            f"{self._t(rec)} OOM   pid {rec['pid']} {rec['comm']} killed by the OOM killer"
            + (f" in cgroup {rec['cgroup']}" if rec.get("cgroup") else ""),
            f"    at the kill: RSS {human_kb(rec['rss_kb'])} (anon {human_kb(by['anon'])}, "
            f"file {human_kb(by['file'])}, shmem {human_kb(by['shmem'])}), total_vm "
            f"{human_kb(rec['total_vm_kb_after'])}; VmPeak {human_kb(rec['vm_peak_kb'] or 0)}, "
            f"VmHWM {human_kb(rec['hwm_kb'])}",
        ]
        if rec["last_rises"]:
            lines.append("    its last VmPeak rises:")
            for r in rec["last_rises"]:
                rise = r["vm_peak_kb"] - r["vm_peak_kb_before"]
                lines.append(
                    f"      +{human_kb(rise)} to {human_kb(r['vm_peak_kb'])}  "
                    f"{describe_call(r)}{describe_mapping(r)}  tid {r['tid']}"
                )
                lines += [f"          {line}" for line in describe_stack(r, 3)]
        if rec["largest_mappings"]:
            lines.append("    its largest mappings:")
            lines += [
                f"      {human_kb(m['size_kb']):>10}  {m['path']} {m['start']}-{m['end']} "
                f"{m['perms']}"
                for m in rec["largest_mappings"]
            ]
        return lines

    def _summary(self, rec: Record) -> list[str]:
        counted = f", {rec['tallied']} tallied" if rec.get("tallied") else ""
        lines = [
            f"--- vmtrace summary ({rec['reason']}; {rec['events']} events{counted}, "
            f"{rec['lost']} lost)"
        ]
        # what the kernel side could not do without losing a record: said once, here
        by_kind = rec.get("lost_by_kind") or {}
        missed = [f"{n} {what}" for key, what in _KERNEL_MISSES if (n := by_kind.get(key))]
        if missed:
            lines.append(f"kernel side: {', '.join(missed)}")
        for s in rec["summary"]:
            if not s["vm_peak_kb"]:
                lines.append(
                    f"pid {s['pid']} {s['comm']}: VmPeak unknown (it exited before tracing began)"
                )
                continue
            lines.append(
                f"pid {s['pid']} {s['comm']}: VmPeak {human_kb(s['vm_peak_kb'])} "
                f"[{s['vm_peak_kb']} kB], {s['peaks']} new peaks, {s['latches']} latches"
            )
            if s.get("lost"):
                lines.append(
                    f"  {s['lost']} of its records lost (ring buffer full): its shadow address "
                    "space may miss mappings; VmPeak stays exact"
                )
            tallied = s.get("tallied") or {}
            if tallied.get("changes"):
                lines.append(
                    f"  {tallied['changes']} of its grow/shrink changes counted, not logged one "
                    f"by one (the reader was behind): they mapped "
                    f"{human_kb(tallied['grown_kb'])} and unmapped "
                    f"{human_kb(tallied['shrunk_kb'])}; peaks and latches are all logged"
                )
            if s.get("stacks_unread"):
                lines.append(
                    f"  {s['stacks_unread']} of its records have no call chain: its user "
                    "stack could not be read"
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
                    f"{sb['time']} (+{human_kb(sb['rise_kb'])})"
                )
            if s["top_causes"]:
                lines.append("  largest contributors to the peak:")
                lines += [
                    f"    {human_kb(c['kb']):>10}  {c['cause']}  {c['mapping']}".rstrip()
                    for c in s["top_causes"]
                ]
        untraced = rec.get("untraced_children")
        if untraced and untraced.get("count"):
            n = untraced["count"]
            top = untraced.get("largest")
            largest = (
                f"; largest VmPeak seen {human_kb(top['vm_peak_kb'])} (pid {top['pid']} "
                f"{top['comm']})"
                if top
                else ""
            )
            lines.append(
                f"{n} {'child' if n == 1 else 'children'} not traced{largest}: use --follow"
            )
        return lines

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        self.flush()
