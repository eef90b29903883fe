"""The event log's record definitions, the one place they are written: every record type,
its fields, their kinds and their meaning. The reader's checks (vmtrace.logread), the tables
of docs/log-schema.md (`python -m vmtrace.logformat` prints them; a unit test keeps the file
in step) and a test of what the writer (vmtrace.schema) emits all come from here."""

from __future__ import annotations

import sys
from dataclasses import dataclass

SCHEMA_VERSION = 5
# 2: `stack` is a list of frame objects (version 1: a list of strings)
# 3: change records carry the kernel's `kernel_peak_kb_before` and the engine's `new_high`;
#    `end.summary[].set_by.delta_kb` is the change's size (as in every record), `rise_kb`
#    VmPeak's rise (version 2 had the rise in `delta_kb`)
# 4: the exit record's final VmHWM is `hwm_kb`, as in every other record (3: `vm_hwm_kb`)
# 5: `tally` records, and `tallied` in `end` and its summary (older logs have none)

# What the reader checks a value against (vmtrace.logread has one check per kind); "any" is
# documented and passed through unchecked, as the offline tools do not read it.
KINDS = frozenset(
    {
        "int", "str", "bool", "number", "any", "addr", "ret", "mapping", "mappings", "status",
        "args", "stack", "by_pid", "targets", "page_size",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Field:
    """One field, or several alike (`names`), of a record: `kind` is what the reader checks,
    `doc_type` and `meaning` what the docs say; `required`: a record without it is refused;
    `null`: null is allowed."""

    names: tuple[str, ...]
    kind: str
    meaning: str = ""
    doc_type: str = ""
    required: bool = False
    null: bool = True

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind


def f(
    names: str,
    kind: str,
    meaning: str = "",
    doc_type: str = "",
    *,
    required: bool = False,
    null: bool = True,
) -> Field:
    """A Field; `names` comma-separated."""
    split = tuple(n.strip() for n in names.split(","))
    return Field(split, kind, meaning, doc_type, required, null)


def req(names: str, kind: str, meaning: str = "", doc_type: str = "") -> Field:
    """A field every record of its type has, never null."""
    return f(names, kind, meaning, doc_type, required=True, null=False)


@dataclass(frozen=True)
class RecordType:
    names: tuple[str, ...]
    when: str
    fields: tuple[Field, ...] = ()
    note: str = ""  # what the docs say before the fields
    change: bool = False  # a change record: the change fields too


# -- fields every record has ----------------------------------------------------------------------

COMMON = (
    req("type", "str", "one of the types below", "string"),
    req("ts_ns", "int", "monotonic time of the record", "int"),
    f("time", "str", "ISO 8601 wall time", "string"),
    f("pid", "int", "process (tgid); null for records about the whole session (`lost`, "
      "`tally`, `end`)", "int or null"),
    f("tid", "int", "thread that made the change", "int or null"),
    f("comm", "str", "that thread's name at that moment", "string or null"),
    f("total_vm_kb_before, total_vm_kb_after", "int", "mm->total_vm around the change",
      "int or null"),
    f("vm_peak_kb", "int", "VmPeak right after the record: max(hiwater_vm, total_vm)",
      "int or null"),
    f("hiwater_vm_kb", "int", "mm->hiwater_vm right after the record", "int or null"),
)  # fmt: skip

# -- change fields (`peak`, `latch`, `grow`, `shrink`, `exec`, and `baseline`, `fork`, `hwm`) ----

CHANGE = (
    req("pid, tid, total_vm_kb_before, total_vm_kb_after, vm_peak_kb, hiwater_vm_kb", "int",
        "as in every record, never null in a change", "int"),
    req("cause", "str",
        "`mmap`, `munmap`, `brk`, `mremap`, `shmat`, `shmdt`, `execve`, `stack-growth`, `fault` "
        "(a page fault that changed total_vm other than by stack growth), `syscall:NAME` (an "
        "untraced syscall, e.g. `syscall:io_setup`)", "string"),
    f("syscall", "str", "the syscall in progress, null in a page fault", "string or null"),
    f("args", "args",
      "decoded arguments: `mmap` {`addr`, `len`, `prot`, `flags`, `fd`, `offset`}; `munmap` "
      "{`addr`, `len`}; `brk` {`brk`}; `mremap` {`old_addr`, `old_len`, `new_len`, `flags`, "
      "`new_addr`}; `shmat` {`shmid`, `addr`, `flags`}; `shmdt` {`addr`}; `prot` as `rwx` "
      "letters, `flags` as `private\\|anon\\|fixed...`", "object or null"),
    f("ret", "ret",
      "return value: an address (hex) for mmap/mremap/shmat/brk, an int otherwise",
      "string or int or null"),
    f("delta_kb", "int", "total_vm_kb_after - total_vm_kb_before", "int"),
    req("vm_peak_kb_before", "int", "VmPeak before the change (the engine's judgement)", "int"),
    f("kernel_peak_kb_before", "int",
      "the kernel side's own per-mm peak before the change (0: not known yet, e.g. a "
      "`baseline`): what an offline replay judges from, as the live engine did (version 2 "
      "logs: `vm_peak_kb_before` stands for it)", "int"),
    f("new_high", "bool",
      "the engine's verdict: a `peak` at or above every earlier one (it set VmPeak then); a "
      "`peak` that arrived after a higher one (two threads' records out of order) is false",
      "bool"),
    req("hiwater_vm_kb_before", "int", "hiwater_vm before the change", "int"),
    f("stack_vm_kb_before, stack_vm_kb_after", "int", "mm->stack_vm (VmStk) around the change",
      "int"),
    f("mm_id", "str",
      "identity of the address space (hex): records of two images of one pid (before and "
      "after an exec) have different ones", "string or null"),
    f("rises_covered", "int",
      "`peak` under `--min-delta`: the smaller VmPeak rises since the previous reported peak "
      "that this one covers (absent when 0)", "int"),
    f("stack_unread", "bool",
      "the record was to carry a user stack, but the kernel side could not read it: `stack` "
      "is what the registers alone gave (absent when false)", "bool"),
    f("mapping", "mapping",
      "the region the change is about: {`start`, `end`, `perms`, `offset`, `path`}; `path` is "
      "a file, `[anon]`, `[heap]`, `[stack]`, `[shm]` or a kernel name like `[vdso]`; for "
      "unmaps, the name the region had when it was mapped (shadow map). A file mmap's `path` "
      "is the file as the kernel named it at the mmap (it may end in ` (deleted)`), never "
      "looked up later through the fd or /proc; `[file]` if the kernel sent no name",
      "object or null"),
    f("stack", "stack",
      "the user call chain, innermost frame first, for the records worth explaining (`peak`, "
      "`latch`, `hwm`; null where the kernel sent no stack snapshot). Each frame is an object "
      "(see *Frames*)", "list of frames or null"),
    f("rss_kb, hwm_kb", "int",
      "RSS (file + anon + shmem pages, the counters /proc reads) and VmHWM = max(hiwater_rss, "
      "RSS) right after the change. Kernels up to 6.1 cache a task's own RSS changes and "
      "flush them every 64 page faults; /proc reads the same counters, so both lag alike",
      "int"),
)  # fmt: skip

# -- frames (the elements of `stack`) -------------------------------------------------------------

FRAME = (
    req("address", "addr", "the frame's instruction address (hex), as mapped in that process",
        "string"),
    f("function", "str", "the symbol it is in, null if the module has none for it",
      "string or null"),
    f("offset", "int", "`address` - the start of `function`", "int or null"),
    f("module", "str",
      "the path of the mapped file the address is in (as in `mapping.path`)", "string or null"),
    f("module_offset", "int",
      "`address` in the ELF file's own address space (what `addr2line -e MODULE` takes), the "
      "same in every process and run wherever the file was loaded", "int or null"),
    f("file, line", "any",
      "the source line, present only where debug line information was found", "string, int"),
)  # fmt: skip

# -- record types ---------------------------------------------------------------------------------

_STATUS = "{`VmPeak`, `VmSize`, `VmHWM`, `VmRSS`}"

TYPES = (
    RecordType(
        ("start",),
        "first line, written once the probes are attached (with `--rotate`, also the first "
        "line of each later file, with `part` and `previous`)",
        (
            req("version", "int", f"({SCHEMA_VERSION})"),
            f("vmtrace, kernel, backend", "str"),
            f("backend_reason", "str"),
            f("page_size", "page_size"),
            f("attach_seconds", "number", "(from the vmtrace process's start, interpreter and "
              "imports included, to probes attached, bcc compile included; to the kernel's "
              "clock tick)"),
            f("interval", "number"),
            f("filters", "any", "{`follow`, `all`, `comms`, `cgroup`, `min_delta_kb`, "
              "`all_events`, `hwm_step_kb`}"),
            f("clock", "any", "{`monotonic_ns`, `wall_ns`, `wall_time`}"),
            f("user", "any", "{`uid`, `name`, `sudo_user`, `run_as` ({`name`, `uid`, `gid`} "
              "the command of `run -u` or of sudo's `SUDO_USER` runs as, else null)}"),
            f("argv", "any"),
            f("targets", "targets", f": [{{`pid`, `comm`, `cmdline`, `threads` {{tid: name}}, "
              "`ns_pids` (NSpid: its PID in vmtrace's PID namespace, then in each namespace "
              f"nested below, e.g. a container's), `status`: {_STATUS} in kB, null for `run`}}]"),
            f("part", "int"),
            f("previous", "str"),
        ),
    ),
    RecordType(
        ("maps",),
        "at attach, per process",
        (
            req("pid", "int"),
            req("mappings", "mappings", ": [{`start`, `end`, `perms`, `offset` (int, file "
                "offset), `path`}] as read from /proc/PID/maps"),
        ),
    ),
    RecordType(
        ("baseline",),
        "the probes first see a process's mm",
        (f("host_pid", "int", "when vmtrace runs in a PID namespace of its own (every `pid` is "
           "that namespace's)"),),
        note="the kernel's values at that moment; `vm_peak_kb_before` is what /proc said at "
        "attach",
        change=True,
    ),
    RecordType(("peak",), "VmPeak went up", note="see *change fields*", change=True),
    RecordType(
        ("latch",),
        "hiwater_vm was recorded (the kernel latches it just before lowering total_vm)",
        note="see *change fields*",
        change=True,
    ),
    RecordType(
        ("grow", "shrink"),
        "total_vm changed without moving VmPeak or hiwater_vm",
        note="see *change fields*",
        change=True,
    ),
    RecordType(
        ("exec",),
        "an exec (execve, or execveat/fexecve: `syscall` says which; from any thread) "
        "replaced the mm: VmPeak starts over",
        (f("exec_tid", "int", "(the thread that called it, now the leader)"),),
        note="change fields; `total_vm_kb_before` is the old mm's",
        change=True,
    ),
    RecordType(
        ("fork",),
        "`--follow`: a traced process forked; the child is traced from its first instruction",
        (f("parent_pid", "int", "; the child's counters come with its `baseline`"),),
        change=True,
    ),
    RecordType(
        ("hwm",),
        "`--hwm-step SIZE`: VmHWM grew by at least SIZE since the previous `hwm` record",
        (
            f("hwm_kb_before, hwm_kb, rss_kb", "int"),
            f("rss_member", "str", "(`anon`, `file`, `shmem`: the counter that grew)"),
            f("cause", "str", "(`anon-pages`, or `anon-pages:read` when a syscall faulted them "
              "in)"),
            f("stack", "stack"),
        ),
        note="change fields (VM counters unchanged)",
        change=True,
    ),
    RecordType(
        ("sample",),
        "every `--interval` (default 1 s) per process",
        (
            req("pid", "int"),
            req("status", "status", f"{_STATUS} read from /proc"),
            f("expected_vm_peak_kb", "int", "(from events; with `--min-delta`, the kernel "
              "side's per-mm peak)"),
            f("kernel_peak_kb", "int", "(`--min-delta`: that per-mm peak, read from the BPF "
              "map: the rises it kept back are a cause of VmPeak of their own)"),
            f("match", "bool", "(bool)"),
            f("taskstats", "any", "{`hiwater_vm_kb`, `hiwater_rss_kb`, `vm_peak_match`, "
              "`vm_hwm_delta_kb`} when taskstats answers (hiwater_vm is VmPeak exactly; "
              "hiwater_rss misses the per-CPU RSS deltas /proc adds up, so it is a few hundred "
              "kB below VmHWM)"),
            f("detail", "str"),
        ),
    ),
    RecordType(
        ("hwm-reset",),
        "with `--hwm-step`: a sample, or the kernel's final VmHWM at exit (taskstats), found "
        "VmHWM lower than recorded (someone wrote 5 to /proc/PID/clear_refs, which resets "
        "hiwater_rss to the current RSS, or pages were reclaimed before an unmap latched "
        "hiwater_rss); HWM records start again from there",
        (
            f("hwm_kb_before, hwm_kb", "int"),
            f("seen_at", "str", "(`sample` or `exit`)"),
            f("status", "status", "(the sample's; null at exit)"),
            f("detail", "str"),
        ),
    ),
    RecordType(
        ("mismatch",),
        "a sample disagreed with the events twice in a row",
        (
            req("pid", "int"),
            req("status", "status"),
            f("expected_vm_peak_kb", "int"),
            f("match", "bool"),
            f("detail", "str"),
        ),
    ),
    RecordType(
        ("lost",),
        "the kernel dropped records (ring buffer full)",
        (
            req("count", "int", "(new)"),
            f("total", "int"),
            f("by_kind", "any", "(totals so far: `changes` grow/shrink records (0 from version "
              "5 on: see `tally`), `vital` peak/latch/lifecycle records, `stacks` user stacks "
              "not read, `targets_full` processes the targets map had no room for, "
              "`calls_full` (kprobe/fentry) calls in flight the `inflight` map had no room for: "
              "their changes were judged one by one, not merged per call)"),
            f("by_pid", "by_pid", "{pid (a string): records of that process dropped so far}"),
        ),
    ),
    RecordType(
        ("tally",),
        "the reader was behind: the kernel counted grow/shrink changes instead of sending "
        "them one by one (peaks and latches are always sent)",
        (
            req("count", "int", "(new)"),
            f("total", "int"),
            f("by_pid", "any", "{pid (a string): {`changes`, `grown_kb`, `shrunk_kb`}: that "
              "process's changes counted so far, and the kB they mapped and unmapped}"),
        ),
    ),
    RecordType(
        ("oom",),
        "the OOM killer chose a traced process (`oom:mark_victim`); written and flushed at "
        "once, before its `exit`",
        (
            f("cgroup", "str", "(its memory cgroup)"),
            f("trigger_pid", "int", "(the task whose allocation failed)"),
            f("total_vm_kb_after, rss_kb", "int"),
            f("rss_kb_by_kind", "any", "{`anon`, `file`, `shmem`} (the kernel's counters at "
              "the kill)"),
            f("vm_peak_kb, hwm_kb", "int"),
            f("last_rises", "any", "(up to 5 `peak` records, oldest first, with their stacks)"),
            f("largest_mappings", "any", "(up to 5: `start`, `end`, `perms`, `offset`, `path`, "
              "`size_kb`)"),
            f("mm_id", "str"),
        ),
    ),
    RecordType(
        ("exit",),
        "a traced process exited",
        (
            req("pid", "int"),
            f("vm_peak_kb", "int", "(the kernel's final value from taskstats when it came, "
              "else the one rebuilt from events)"),
            f("expected_vm_peak_kb", "int", "(from events)"),
            f("match", "bool"),
            f("hwm_kb", "int", "(VmHWM: the kernel's final value from taskstats when it came)"),
            f("taskstats", "any", "{`hiwater_vm_kb`, `hiwater_rss_kb`, `exit_code`} or null"),
            f("source", "str", "(`bpf`: its last thread exited, `taskstats`, `proc`, `wait`)"),
            f("exit_status", "int", ": its exit code, or minus the signal that killed it (as "
              "Python's `Popen.returncode`), null if unknown"),
            f("ended", "any", ": how it ended, {`how`: `exit`, `code`} or {`how`: `signal` or "
              "`oom-kill`, `signal`, `name`}, null if unknown"),
        ),
    ),
    RecordType(
        ("end",),
        "last line",
        (
            f("reason", "str", "(`interrupted`, `terminated`, `duration`, `targets-exited`, "
              "`error`)"),
            f("events, lost", "int"),
            f("lost_by_kind", "any", "(as in `lost`)"),
            f("filtered", "int", "(changes the kernel kept to itself under `--min-delta`)"),
            f("tallied", "int", "(grow/shrink changes counted, not sent: see `tally`)"),
            f("summary", "any", "(per pid: `vm_peak_kb` (the kernel's at exit when taskstats "
              "gave it), `vm_hwm_kb` (likewise), `set_by` {`time`,`ts_ns`,`tid`,`comm`,`cause`,"
              "`type`,`delta_kb` (the change's size),`rise_kb` (VmPeak's rise),`mapping`}, "
              "`hwm_set_by` {…, `rise_kb`}, `peaks`, `latches`, `lost` (its records the kernel "
              "side had no room for), `tallied` {`changes`, `grown_kb`, `shrunk_kb`} (as in "
              "`tally`), `stacks_unread` (its records whose user stack could not "
              "be read), `top_causes` [{`cause`, `mapping`, `kb`}])"),
            f("untraced_children", "any", "{`count`, `largest` {`pid`, `comm`, `vm_peak_kb`} or "
              "null}: without `--follow`, `-a`, `--comm` or `--cgroup`, the descendants of "
              "traced processes that were not traced, as seen in /proc at the samples (a lower "
              "bound: one that lived less than an interval may be missed)"),
        ),
    ),
)  # fmt: skip

BY_NAME: dict[str, RecordType] = {n: t for t in TYPES for n in t.names}
CHANGE_TYPES = frozenset(n for t in TYPES if t.change for n in t.names)
KNOWN_TYPES = frozenset(BY_NAME)


def fields_of(rtype: str) -> tuple[Field, ...]:
    """Every field a record of `rtype` may have, every record's first; where a name is
    defined again, the later definition is the one that holds (a change record's `pid` is
    required where the common one is not)."""
    t = BY_NAME[rtype]
    return COMMON + (CHANGE if t.change else ()) + t.fields


def undeclared(rec: dict[str, object]) -> list[str]:
    """The fields of `rec` its type's definition does not have (the writer's own check)."""
    t = rec.get("type")
    if not isinstance(t, str) or t not in BY_NAME:
        return ["type"]
    names = {n for fl in fields_of(t) for n in fl.names}
    return [k for k in rec if k not in names]


# -- the docs' tables ------------------------------------------------------------------------------


def _names(fl: Field) -> str:
    return ", ".join(f"`{n}`" for n in fl.names)


def _field_table(fields: tuple[Field, ...]) -> list[str]:
    rows = ["| field | type | meaning |", "|---|---|---|"]
    rows += [f"| {_names(fl)} | {fl.doc_type} | {fl.meaning} |" for fl in fields]
    return rows


def _extra(t: RecordType) -> str:
    parts = []
    for fl in t.fields:
        m = fl.meaning
        parts.append(_names(fl) + (m if m[:1] in (":", ";") else f" {m}" if m else ""))
    listed = ", ".join(parts)
    return "; ".join(p for p in (t.note, listed) if p)


def doc_tables() -> dict[str, list[str]]:
    """The tables of docs/log-schema.md, by the name of the marker they stand between."""
    types = ["| type | when | extra fields |", "|---|---|---|"]
    for t in TYPES:
        types.append(f"| {', '.join(f'`{n}`' for n in t.names)} | {t.when} | {_extra(t)} |")
    return {
        "common": _field_table(COMMON),
        "types": types,
        "change": _field_table(CHANGE),
        "frame": _field_table(FRAME),
    }


def render_doc(text: str) -> str:
    """`text` (docs/log-schema.md) with each `<!-- table:NAME -->` ... `<!-- /table -->`
    section replaced by the table generated here."""
    out: list[str] = []
    lines = iter(text.splitlines())
    tables = doc_tables()
    for line in lines:
        out.append(line)
        if line.startswith("<!-- table:") and line.endswith(" -->"):
            out += tables[line[len("<!-- table:") : -len(" -->")]]
            for rest in lines:
                if rest == "<!-- /table -->":
                    out.append(rest)
                    break
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    # python -m vmtrace.logformat docs/log-schema.md: rewrite the file's tables in place
    path = sys.argv[1] if len(sys.argv) > 1 else "docs/log-schema.md"
    with open(path, encoding="utf-8") as fh:
        new = render_doc(fh.read())
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(new)
