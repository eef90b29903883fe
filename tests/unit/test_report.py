"""vmtrace.report (`vmtrace report`) on the hand-checked fixture logs, and the offline CLI.

The numbers asserted here were worked out by hand from the fixtures (tests/fixtures/*.jsonl):
- run_small: `vmtrace run -- job`. exec image 400 kB; +1024 anon, +200 file, +132 heap (peaks);
  munmap of the 1024 (latch); munmap of 8 kB of the exec image; a MAP_STACK ---p 8192 (peak to
  8916); tid 101 maps 2048 (peak); io_setup +16 with no mapping (peak); mremap moves the 2048
  to a new 4096 (peak to 13028, the final VmPeak); munmap of the file (latch).
  At the final peak: exec image 392, anonymous 4096, file-backed 200, heap 132, thread stacks
  8192, other 16 (io_setup) = 13028.
- attach_small: `vmtrace -p 200`, VmPeak 5000 at attach with 3000 mapped (maps record);
  grow +1000 anon; peak +1536 shared anon (to 5536); stack growth +64 (to 5600).
- mismatch_small: 3 records lost; /proc says 1700 where the events say 1500, twice.
- stacks_small (version 2, whole stacks): `vmtrace -p 300`, VmPeak 10000 at attach. mmap +4096
  from malloc ← xalloc ← grow_buffer ← parse_a ← main (peak +2008 to 12008); its munmap
  (latch); mmap +6144 by the same innermost six frames from parse_b (peak +2048 to 14056);
  mmap +1024 from parse_a again (peak +1024 to 15080); brk +132 from a frame without a symbol
  (peak to 15212, the final VmPeak).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmtrace.errors import LogFormatError, UsageError
from vmtrace.frames import describe_frame
from vmtrace.logread import LogReader, numbered
from vmtrace.records import Change, Mapping
from vmtrace.report import (
    ANON,
    EXEC_IMAGE,
    FILE,
    HEAP,
    OTHER,
    RESERVED,
    SHARED,
    STACK,
    THREAD_STACKS,
    UNEXPLAINED,
    AddressSpace,
    ProcessReport,
    Report,
    build_report,
    call_chain,
    call_site,
    coalesce,
    group_of,
    merge_runs,
    render_markdown,
    render_text,
    report_dict,
)
from vmtrace.unwind import Frame

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
RUN = FIXTURES / "run_small.jsonl"
STACKS = FIXTURES / "stacks_small.jsonl"
ATTACH = FIXTURES / "attach_small.jsonl"
MISMATCH = FIXTURES / "mismatch_small.jsonl"


def report_of(path: Path, **kw: Any) -> Report:
    warnings: list[str] = []
    return build_report(
        numbered(LogReader(path, warnings.append)), str(path), warnings=warnings, **kw
    )


def only(rep: Report) -> ProcessReport:
    assert len(rep.processes) == 1
    return rep.processes[0]


def groups(p: ProcessReport) -> dict[str, int]:
    assert p.composition is not None
    return {g.group: g.kb for g in p.composition.groups}


# -- run_small ----------------------------------------------------------------------------------


def test_run_log_final_peak_and_counts() -> None:
    rep = report_of(RUN)
    assert rep.engine_disagreements == 0 and rep.change_records == 12
    assert rep.complete and rep.end_reason == "targets-exited" and rep.lost == 0
    p = only(rep)
    assert (p.pid, p.comm, p.final_vm_peak_kb) == (100, "job", 13028)
    assert (p.peaks, p.latches, p.execs, p.samples, p.mismatches) == (7, 2, 1, 3, 0)
    assert p.logged_final_vm_peak_kb == 13028 and p.exited
    assert p.set_by is not None
    assert (p.set_by.cause, p.set_by.line, p.set_by.tid) == ("mremap", 14, 101)
    assert p.start_vm_peak_kb is None  # traced from exec


def test_run_log_composition_adds_up_to_vm_peak() -> None:
    p = only(report_of(RUN))
    assert groups(p) == {
        HEAP: 132,
        ANON: 4096,
        FILE: 200,
        THREAD_STACKS: 8192,
        EXEC_IMAGE: 392,
        OTHER: 16,
    }
    comp = p.composition
    assert comp is not None
    assert comp.unattributed_kb == 0 and comp.total_kb == comp.vm_peak_kb == 13028
    assert (comp.at, comp.line) == ("peak", 14)
    items = {g.group: [(i.label, i.kb) for i in g.items] for g in comp.groups}
    assert items[EXEC_IMAGE] == [("(as execve mapped it)", 392)]
    assert items[OTHER] == [("(syscall:io_setup: no mapping in the log)", 16)]
    assert items[THREAD_STACKS] == [("[thread stack]", 8192)]
    assert items[FILE] == [("/data/input.bin", 200)]


def test_run_log_timeline_and_what_is_new_since_the_previous_high() -> None:
    p = only(report_of(RUN))
    assert [(e.type, e.cause, e.vm_peak_kb) for e in p.timeline] == [
        ("exec", "execve", 400),
        ("peak", "mmap", 1424),
        ("peak", "mmap", 1624),
        ("peak", "brk", 1756),
        ("peak", "mmap", 8916),
        ("peak", "mmap", 10964),
        ("peak", "syscall:io_setup", 10980),
        ("peak", "mremap", 13028),
    ]
    thread_stack = p.timeline[4]
    # between 1756 and 8916: the 1 MiB anon went, 8 kB of the exec image went, 8 MiB came
    assert thread_stack.new_since_previous == {ANON: -1024, THREAD_STACKS: 8192, EXEC_IMAGE: -8}
    assert sum(thread_stack.new_since_previous.values()) == 8916 - 1756
    assert thread_stack.records_since_previous == 2  # the latch and the shrink (not samples)
    assert p.timeline[6].new_since_previous == {OTHER: 16}
    assert p.timeline[7].call == (
        "mremap(0x7f3000000000, 2.00 MiB -> 4.00 MiB, maymove) = 0x7f4000000000"
    )


def test_run_log_causes_add_up_to_vm_peak() -> None:
    p = only(report_of(RUN))
    by_map = {(c.cause, c.where): (c.kb, c.peaks) for c in p.by_mapping}
    assert by_map == {
        ("mmap", "[anon]"): (1024 + 7160 + 2048, 3),
        ("mremap", "[anon]"): (2048, 1),
        ("execve", "[exec image]"): (400, 1),
        ("mmap", "/data/input.bin"): (200, 1),
        ("brk", "[heap]"): (132, 1),
        ("syscall:io_setup", "?"): (16, 1),
    }
    assert sum(c.kb for c in p.by_call_site) == 13028
    assert sum(c.kb for c in p.by_mapping) == 13028
    top = p.by_call_site[0]
    assert (top.cause, top.kb) == ("mmap", 7160)
    assert top.where == (
        "__mmap64+0x13 [libc.so.6] ← pthread_create+0x1a0 [libc.so.6] ← main+0x40 [job]"
    )


def test_run_log_hwm_from_samples() -> None:
    p = only(report_of(RUN))
    assert [(h.vm_hwm_kb_before, h.vm_hwm_kb) for h in p.hwm] == [
        (None, 900),
        (900, 3000),
        (3000, 3100),
    ]
    assert p.max_rss_kb == 2900


# -- attach_small -------------------------------------------------------------------------------


def test_attach_log_starts_from_the_maps_record() -> None:
    rep = report_of(ATTACH)
    assert rep.warnings == [f"{ATTACH}: ignoring records of unknown type 'future_thing'"]
    p = only(rep)
    assert (p.final_vm_peak_kb, p.start_vm_peak_kb, p.peaks) == (5600, 5000, 2)
    assert groups(p) == {
        HEAP: 1004,
        ANON: 1024 + 1000,
        FILE: 16 + 48,
        STACK: 132 + 64,
        SHARED: 256 + 1536,
        RESERVED: 512,
        OTHER: 8,  # [vdso]; [vsyscall] is not in total_vm
    }
    assert p.composition is not None and p.composition.unattributed_kb == 0
    assert p.composition.total_kb == 5600
    stack = next(g for g in p.composition.groups if g.group == STACK)
    assert stack.mappings == 1  # the grown piece and the stack are one region
    assert [(c.cause, c.kb) for c in p.by_mapping] == [
        ("(VmPeak when vmtrace attached)", 5000),
        ("mmap", 536),
        ("stack-growth", 64),
    ]
    assert p.timeline[1].new_since_previous == {STACK: 64}
    assert p.timeline[0].new_since_previous == {ANON: 1000, SHARED: 1536}
    assert p.replay_lost_track == 0


# -- mismatch_small: what the log cannot explain is shown, not hidden ---------------------------


def test_mismatch_log_shows_the_unattributed_remainder() -> None:
    rep = report_of(MISMATCH)
    p = only(rep)
    assert rep.lost == 3 and p.mismatches == 1 and p.final_vm_peak_kb == 1700
    assert p.composition is not None
    assert p.composition.unattributed_kb == 200
    assert p.composition.total_kb == 1700
    assert p.composition.note is not None and "dropped 3 records" in p.composition.note
    assert ("(corrected by a mismatch sample)", 200) in [(c.cause, c.kb) for c in p.by_mapping]
    assert sum(c.kb for c in p.by_mapping) == 1700
    text = render_text(rep)
    assert "200 kB  unattributed" in text
    assert "= VmPeak 1700 kB" in text
    assert not p.exited


# -- options ------------------------------------------------------------------------------------


def test_changes_the_kernel_tallied_are_said_in_the_report(tmp_path: Path) -> None:
    """A log whose reader fell behind: the `tally` records' counts are summed, named
    among the reasons the replay cannot account for all of VmPeak, and shown."""
    lines = MISMATCH.read_text().splitlines()
    tally = {"type": "tally", "ts_ns": 1, "pid": None, "count": 700, "total": 700,
             "by_pid": {}}  # fmt: skip
    log = tmp_path / "tallied.jsonl"
    log.write_text("\n".join([*lines[:-1], json.dumps(tally), lines[-1]]) + "\n")
    rep = report_of(log)
    p = only(rep)
    assert rep.tallied == 700
    assert p.composition is not None and p.composition.note is not None
    assert "tallied 700 changes without logging them" in p.composition.note
    assert "700 changes tallied (not logged one by one)" in render_text(rep)
    assert "700 changes tallied (not logged one by one)." in render_markdown(rep)
    assert report_dict(rep)["tallied"] == 700
    assert report_of(MISMATCH).tallied == 0


def test_pid_filter() -> None:
    assert only(report_of(RUN, pid=100)).pid == 100
    with pytest.raises(UsageError, match=r"pid 4: it is not in .*\(pids in the log: 100\)"):
        report_of(RUN, pid=4)


def test_timeline_keeps_the_first_and_last_entries(tmp_path: Path) -> None:
    from tests.unit.test_logread import synthetic_log

    log = synthetic_log(tmp_path / "many.jsonl", 300)
    p = only(report_of(log, max_peaks=10))
    assert p.peaks == 300 and len(p.timeline) == 10 and p.timeline_omitted == 290
    assert [e.vm_peak_kb for e in p.timeline[:5]] == [10_000 + 4 * i for i in range(1, 6)]
    assert p.timeline[-1].vm_peak_kb == 10_000 + 4 * 300
    assert sum(c.kb for c in p.by_call_site) == p.final_vm_peak_kb
    assert "290 more peaks in the middle of the log not shown" in render_text(
        report_of(log, max_peaks=10)
    )


def test_disagreement_with_the_log_is_reported(tmp_path: Path) -> None:
    lines = RUN.read_text().splitlines()
    rec = json.loads(lines[4])
    rec["type"] = "grow"  # the log claims a peak was not one
    log = tmp_path / "tampered.jsonl"
    log.write_text("\n".join([*lines[:4], json.dumps(rec), *lines[5:]]) + "\n")
    rep = report_of(log)
    assert rep.engine_disagreements == 1
    assert rep.first_disagreement is not None and rep.first_disagreement.startswith("line 5:")
    assert "1 of 12 change records DISAGREE" in render_text(rep)


def test_records_without_end_are_reported_as_incomplete(tmp_path: Path) -> None:
    lines = RUN.read_text().splitlines()
    log = tmp_path / "killed.jsonl"
    log.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:30])
    rep = report_of(log)
    assert not rep.complete
    assert any("line 18 is incomplete" in w for w in rep.warnings)
    assert "no end record (vmtrace was killed?)" in render_text(rep)
    assert only(rep).final_vm_peak_kb == 13028


# -- pieces -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("perms", "path", "group"),
    [
        ("rw-p", "[heap]", HEAP),
        ("rw-p", "[stack]", STACK),
        ("---p", "[thread stack]", THREAD_STACKS),
        ("rw-s", "[shm]", SHARED),
        ("rw-s", "[anon]", SHARED),
        ("rw-s", "/dev/shm/x", SHARED),
        ("rw-p", "/memfd:arena (deleted)", SHARED),
        ("---p", "[anon]", RESERVED),
        ("---p", "/usr/lib/libc.so.6", RESERVED),
        ("r-xp", "/usr/lib/libc.so.6", FILE),
        ("rw-p", "[anon]", ANON),
        ("r-xp", "[vdso]", OTHER),
        ("rw-p", "[fd 3]", OTHER),  # version 1 logs: a file mapping named too late
        ("r--p", "[file]", FILE),  # a file the kernel side sent no name for
    ],
)
def test_group_of(perms: str, path: str, group: str) -> None:
    assert group_of(Mapping(0x1000, 0x2000, perms, path)) == group


def _change(cause: str, before: int, after: int, mapping: Mapping | None, **kw: Any) -> Change:
    return Change(
        kind="change",
        ts_ns=1,
        pid=1,
        tid=1,
        comm="x",
        cause=cause,
        syscall=kw.pop("syscall", cause),
        args=kw.pop("args", None),
        ret=None,
        total_vm_kb_before=before,
        total_vm_kb_after=after,
        hiwater_vm_kb_before=0,
        hiwater_vm_kb_after=0,
        stack_vm_kb_before=0,
        stack_vm_kb_after=0,
        kernel_peak_kb_before=0,
        mapping=mapping,
    )


def test_address_space_map_fixed_over_the_exec_image_shrinks_the_image() -> None:
    """MAP_FIXED over 8 kB of what execve mapped (not itemised): total_vm grows by 0 for a
    16 kB mapping; the replay takes the other 8 kB out of the exec image, exactly."""
    a = AddressSpace()
    a.exec(400)
    m = Mapping(0x400000, 0x404000, "rw-p", "[anon]")
    c = _change("mmap", 400, 408, m, args={"flags": "private|anon|fixed"})
    a.apply(c, "line 2")
    snap = a.snapshot()
    assert snap.groups[EXEC_IMAGE] == 392 and snap.groups[ANON] == 16
    assert a.total_kb() == 408 and a.lost_track == 0


def test_address_space_mremap_and_unknown_start() -> None:
    a = AddressSpace()
    grow = _change("brk", 1000, 1132, Mapping(0x5000_0000, 0x5002_1000, "rw-p", "[heap]"))
    a.apply(grow, "line 1")  # nothing known yet: 1000 kB from before tracing
    assert a.snapshot().groups == {**a.snapshot().groups, "before tracing": 1000, HEAP: 132}
    move = _change(
        "mremap",
        1132,
        1164,
        Mapping(0x6000_0000, 0x6004_1000, "rw-p", "[heap]"),
        args={"old_addr": "0x50000000", "old_len": 135168, "new_len": 266240},
    )
    a.apply(move, "line 2")
    assert a.snapshot().groups[HEAP] == 260 and a.total_kb() == 1164 and a.lost_track == 0
    # a record the replay cannot follow is counted, not hidden
    a.apply(_change("munmap", 1164, 1100, None), "line 3")
    assert a.total_kb() == 1100 and a.other_causes == {"munmap": -64}


def test_coalesce_and_call_site() -> None:
    pieces = [
        Mapping(0x3000, 0x4000, "rw-p", "[stack]"),
        Mapping(0x1000, 0x3000, "rw-p", "[stack]"),
        Mapping(0x4000, 0x5000, "r--p", "/lib/a.so", 0),
        Mapping(0x5000, 0x6000, "r--p", "/lib/a.so", 0x9000),  # not the next file page
    ]
    assert coalesce(pieces) == [
        Mapping(0x1000, 0x4000, "rw-p", "[stack]"),
        pieces[2],
        pieces[3],
    ]


def fr(function: str | None, module_offset: int, address: int = 0x5555_0000_0000) -> Frame:
    off = None if function is None else module_offset & 0xFF
    return Frame(address + module_offset, function, off, "/opt/job", module_offset)


def test_call_site_and_call_chain_keys() -> None:
    f, r, m = fr("f", 0x101), fr("r", 0x202), fr("main", 0x303)
    recursive = [f, r, r, r, m]
    site = call_site(recursive)
    assert [x.function for x in site] == ["f", "r", "main"]  # recursion collapsed
    assert [x.function for x in call_chain(recursive)] == ["f", "r", "r", "r", "main"]
    assert all(x.address == 0 for x in site)  # where in the file, not where it was mapped
    deep = [fr(f"g{i}", i) for i in range(10)]
    assert len(call_site(deep)) == 6 and len(call_chain(deep)) == 10
    assert [describe_frame(x) for x in call_site(None)] == ["(no stack)"]
    assert call_chain(None) == call_chain([]) == call_site(None)
    # a frame with neither symbol nor module keeps its address: it is all there is
    bare = Frame(0x1234, None, None, None, None)
    assert call_chain([bare]) == (bare,)


def test_stacks_log_causes_by_call_site_and_by_whole_chain() -> None:
    p = only(report_of(STACKS))
    assert p.final_vm_peak_kb == 15212
    sites = [(c.cause, c.kb, c.peaks) for c in p.by_call_site]
    assert sites == [
        ("(VmPeak when vmtrace attached)", 10000, 0),
        ("mmap", 2008 + 2048 + 1024, 3),  # parse_a's and parse_b's: the same innermost frames
        ("brk", 132, 1),
    ]
    chains = [(c.cause, c.kb, c.peaks) for c in p.by_call_chain]
    assert chains == [
        ("(VmPeak when vmtrace attached)", 10000, 0),
        ("mmap", 2008 + 1024, 2),  # parse_a, twice: one chain
        ("mmap", 2048, 1),  # parse_b
        ("brk", 132, 1),
    ]
    assert sum(c.kb for c in p.by_call_chain) == p.final_vm_peak_kb
    assert sum(c.kb for c in p.by_call_site) == p.final_vm_peak_kb
    a, b = p.by_call_chain[1], p.by_call_chain[2]
    libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    assert a.frames[0] == f"__mmap64+0x13 ({libc})"
    assert a.frames[6:] == [
        "parse_a+0x57 (/opt/index/bin/index) at index.c:70",
        "main+0x20 (/opt/index/bin/index) at index.c:101",
        f"__libc_start_call_main+0x7a ({libc})",
    ]
    assert b.frames[6] == "parse_b+0x33 (/opt/index/bin/index) at index.c:88"
    assert a.where.split(" ← ")[4:7] == [
        "xalloc+0x11 [index]",
        "grow_buffer+0x2a [index]",
        "parse_a+0x57 [index]",
    ]
    brk = p.by_call_chain[3]
    assert brk.frames[1] == "/opt/index/bin/index+0x5a10"  # no symbol: never a bare address
    assert p.by_call_chain[0].frames == [] and p.by_call_chain[0].where == ""


def _shift_stack(rec: dict[str, Any], by: int) -> dict[str, Any]:
    stack = [dict(f, address=hex(int(f["address"], 16) + by)) for f in rec["stack"]]
    return dict(rec, stack=stack)


def test_chains_group_exactly_wherever_the_objects_were_loaded(tmp_path: Path) -> None:
    """The same chain loaded elsewhere (another run, another process: ASLR) is one group; a
    chain that differs in one frame is another."""
    lines = [json.loads(line) for line in STACKS.read_text().splitlines()]
    peaks = [i for i, r in enumerate(lines) if r["type"] == "peak"]
    lines[peaks[2]] = _shift_stack(lines[peaks[2]], 0x10_0000_0000)  # parse_a's second peak
    log = tmp_path / "aslr.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in lines))
    p = only(report_of(log))
    assert [(c.cause, c.kb, c.peaks) for c in p.by_call_chain][1] == ("mmap", 3032, 2)

    moved = lines[peaks[2]]
    moved["stack"][6] = dict(moved["stack"][6], offset=0x58, module_offset=0x1B18)
    log.write_text("".join(json.dumps(r) + "\n" for r in lines))
    p = only(report_of(log))
    assert [(c.kb, c.peaks) for c in p.by_call_chain if c.cause == "mmap"] == [
        (2048, 1),
        (2008, 1),
        (1024, 1),
    ]


def test_version_1_log_has_call_chains_too() -> None:
    p = only(report_of(RUN))
    assert sum(c.kb for c in p.by_call_chain) == p.final_vm_peak_kb == 13028
    chain = next(c for c in p.by_call_chain if c.cause == "mremap")
    assert chain.frames == [
        "__GI___mremap+0x30 [libc.so.6]",
        "worker_main+0x40 [job]",
        "start_thread+0x305 [libc.so.6]",
    ]
    assert chain.where == " ← ".join(chain.frames)


def test_merge_runs_of_consecutive_peaks_of_one_call(tmp_path: Path) -> None:
    from tests.unit.test_logread import synthetic_log

    p = only(report_of(synthetic_log(tmp_path / "l.jsonl", 20)))
    runs = merge_runs(p.timeline)
    assert len(runs) == 1 and runs[0].n == 20
    assert runs[0].last.vm_peak_kb - runs[0].first.vm_peak_kb_before == 80


# -- rendering ----------------------------------------------------------------------------------


def test_text_markdown_and_json_say_the_same() -> None:
    rep = report_of(RUN)
    text = render_text(rep)
    assert "final VmPeak 12.72 MiB [13028 kB], set by mremap [anon] (+2.00 MiB) in tid 101" in (
        text
    )
    assert "stack growth" not in text
    assert "8.00 MiB  thread stacks" in text
    assert "392 kB  (as execve mapped it)" in text
    assert "new since the previous high: -1.00 MiB anonymous, +8.00 MiB thread stacks" in text
    assert "= VmPeak 13028 kB" in text
    md = render_markdown(rep)
    assert "| thread stacks | 8192 | 1 |" in md
    assert "| **total** | **13028** | | = VmPeak 13028 kB |" in md
    d = json.loads(json.dumps(report_dict(rep)))
    comp = d["processes"][0]["composition"]
    assert comp["total_kb"] == comp["vm_peak_kb"] == 13028
    assert sum(g["kb"] for g in comp["groups"]) + comp["unattributed_kb"] == 13028


def test_call_chains_in_text_markdown_and_json() -> None:
    rep = report_of(STACKS)
    text = render_text(rep)
    section = text[text.index("  by call chain") : text.index("  by mapping:")]
    assert "      #6 parse_a+0x57 (/opt/index/bin/index) at index.c:70" in section
    assert "      #6 parse_b+0x33 (/opt/index/bin/index) at index.c:88" in section
    assert "#1 /opt/index/bin/index+0x5a10" in section
    md = render_markdown(rep)
    assert "| kB | cause | call chain | peaks |" in md
    assert "parse_b+0x33 [index] ← main+0x2c [index]" in md
    d = json.loads(json.dumps(report_dict(rep)))
    chains = d["processes"][0]["by_call_chain"]
    assert [c["kb"] for c in chains] == [10000, 3032, 2048, 132]
    assert chains[1]["frames"][6] == "parse_a+0x57 (/opt/index/bin/index) at index.c:70"


def test_unexplained_part_of_vm_peak_is_its_own_cause(tmp_path: Path) -> None:
    """A process whose VmPeak the records never explain (here: the run child before exec,
    whose log ends there) still gets causes that add up, the remainder named."""
    lines = RUN.read_text().splitlines()
    log = tmp_path / "pre-exec.jsonl"
    log.write_text("\n".join(lines[:2]) + "\n")
    p = only(report_of(log))
    assert p.final_vm_peak_kb == 30000
    assert [(c.cause, c.kb) for c in p.by_call_site] == [(UNEXPLAINED, 30000)]
    assert [(c.cause, c.kb) for c in p.by_call_chain] == [(UNEXPLAINED, 30000)]


# -- the command line, without root and without bcc ----------------------------------------------


def run_vmtrace(
    *args: str, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "vmtrace", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        check=False,
    )


def test_cli_report_formats(tmp_path: Path) -> None:
    res = run_vmtrace("report", str(RUN))
    assert res.returncode == 0, res.stderr
    assert "final VmPeak 12.72 MiB [13028 kB]" in res.stdout
    res = run_vmtrace("report", "--format", "json", "--pid", "100", str(RUN))
    assert json.loads(res.stdout)["processes"][0]["final_vm_peak_kb"] == 13028
    out = tmp_path / "r.md"
    res = run_vmtrace("report", "--format", "markdown", "-o", str(out), str(ATTACH))
    assert res.returncode == 0 and res.stdout == ""
    assert (
        res.stderr
        == f"vmtrace: warning: {ATTACH}: ignoring records of unknown type 'future_thing'\n"
    )
    assert out.read_text().startswith("# vmtrace report")
    res = run_vmtrace("report", "-o", str(out), str(ATTACH))
    assert res.returncode == 1 and "it exists (fix: choose another -o, or add --force)" in (
        res.stderr
    )


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = RUN.read_text().splitlines()
    bad.write_text("\n".join([*lines[:11], "not json", *lines[11:]]) + "\n")
    for cmd in (["report"], ["export", "--format", "csv"], ["plot", "-o", str(tmp_path / "p.svg")]):
        res = run_vmtrace(*cmd, str(bad))
        assert res.returncode == 1
        assert res.stderr == (
            f"vmtrace: failed to read {bad}: line 12 is not JSON (Expecting value at column 1)\n"
        ), cmd
    res = run_vmtrace("report", "--pid", "9", str(RUN))
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    res = run_vmtrace("plot", "-o", str(tmp_path / "x.jpeg"), str(RUN))
    assert res.returncode == 2
    assert "cannot tell the format from '.jpeg' (use .png, .svg or .html)" in res.stderr


_NO_BCC = """
import sys
sys.modules["bcc"] = None  # any `import bcc` now fails
sys.argv = ["vmtrace", *sys.argv[1:]]
from vmtrace.cli.main import main
try:
    main()
finally:
    assert "bcc" not in [m for m in sys.modules if sys.modules[m] is not None]
"""


@pytest.mark.parametrize(
    "cmd",
    [
        ["report", "--format", "json"],
        ["export", "--format", "csv"],
        ["export", "--format", "perfetto", "--force", "-o", "{tmp}/t.pftrace"],
        ["export", "--format", "perfetto-json"],
        ["export", "--format", "folded"],
        ["plot", "-o", "{tmp}/p.svg"],
    ],
    ids=lambda c: "-".join(c[:3]).replace("{tmp}/", ""),
)
def test_offline_commands_never_import_bcc(tmp_path: Path, cmd: list[str]) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in cmd]
    res = subprocess.run(
        [sys.executable, "-c", _NO_BCC, *args, str(RUN)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    again = [a.replace("p.svg", "p2.svg") for a in args]
    imp = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "vmtrace", *again, str(RUN)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert imp.returncode == 0, imp.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in imp.stderr.splitlines() if "|" in line}
    assert "vmtrace.logread" in imported
    assert not {m for m in imported if m == "bcc" or m.startswith("bcc.")}
    assert "vmtrace.session" not in imported and "vmtrace.tracer" not in imported


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory that uid 65534 can reach and write (pytest's tmp_path is 0700 root's)."""
    with tempfile.TemporaryDirectory(prefix="vmtrace-offline-") as d:
        os.chmod(d, 0o777)
        yield Path(d)


def test_offline_commands_run_unprivileged(nobody_dir: Path) -> None:
    """As nobody (uid 65534), with a copy of the log it may read."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to switch to an unprivileged user")
    work = nobody_dir
    log = work / "run.jsonl"
    shutil.copy(RUN, log)
    os.chmod(log, 0o644)
    outputs = {"report": work / "r.txt", "perfetto": work / "t.pftrace", "plot": work / "p.html"}
    for args in (
        ["report", "-o", str(outputs["report"]), str(log)],
        ["export", "--format", "perfetto", "-o", str(outputs["perfetto"]), str(log)],
        ["plot", "-o", str(outputs["plot"]), str(log)],
    ):
        res = subprocess.run(
            [
                setpriv,
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                sys.executable,
                "-m",
                "vmtrace",
                *args,
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "HOME": str(work), "MPLCONFIGDIR": str(work / "mpl")},
            check=False,
        )
        assert res.returncode == 0, (args, res.stderr)
    for path in outputs.values():
        assert path.stat().st_uid == 65534 and path.stat().st_size > 0
    assert "13028 kB" in outputs["report"].read_text()


def test_report_of_a_file_that_is_not_a_log(tmp_path: Path) -> None:
    with pytest.raises(LogFormatError, match="line 1 is a peak record, not `start`"):
        p = tmp_path / "x.jsonl"
        p.write_text('{"type":"peak","ts_ns":1}\n')
        report_of(p)


def _with_fork_and_hwm(tmp_path: Path) -> Path:
    """attach_small plus what --follow and the RSS-tracking backends add: after the shared
    mmap (5536 kB), pid 200 forks pid 250, which maps 100 kB more (a peak of its own, 5636);
    after the stack growth (5600), an `hwm` record says VmHWM rose 1200 -> 1500 kB."""
    lines = ATTACH.read_text().splitlines()
    peak = json.loads(lines[5])
    common = {k: peak[k] for k in ("time", "stack_vm_kb_before", "stack_vm_kb_after")}
    change = {**common, "syscall": None, "args": None, "ret": None, "mapping": None, "stack": None}

    def rec(**kw: Any) -> str:
        r = {**change, **kw}
        r["delta_kb"] = r["total_vm_kb_after"] - r["total_vm_kb_before"]
        return json.dumps(r)

    child = {"pid": 250, "tid": 250, "comm": "server"}
    fork = rec(
        type="fork",
        ts_ns=10_250_000_000,
        **child,
        cause="fork",
        parent_pid=200,
        total_vm_kb_before=5536,
        total_vm_kb_after=5536,
        vm_peak_kb=0,
        hiwater_vm_kb=5000,
        vm_peak_kb_before=0,
        hiwater_vm_kb_before=5000,
    )
    base = rec(
        type="baseline",
        ts_ns=10_250_000_100,
        **child,
        cause="baseline",
        total_vm_kb_before=5536,
        total_vm_kb_after=5536,
        vm_peak_kb=5536,
        hiwater_vm_kb=5000,
        vm_peak_kb_before=5536,
        hiwater_vm_kb_before=5000,
    )
    m = {
        "start": "0x7f5000000000",
        "end": "0x7f5000019000",
        "perms": "rw-p",
        "offset": 0,
        "path": "[anon]",
    }
    grow = rec(
        type="peak",
        ts_ns=10_260_000_000,
        **child,
        cause="mmap",
        syscall="mmap",
        args={
            "addr": "0x0",
            "len": 102400,
            "prot": "rw-",
            "flags": "private|anon",
            "fd": -1,
            "offset": 0,
        },
        ret="0x7f5000000000",
        mapping=m,
        total_vm_kb_before=5536,
        total_vm_kb_after=5636,
        vm_peak_kb=5636,
        hiwater_vm_kb=5000,
        vm_peak_kb_before=5536,
        hiwater_vm_kb_before=5000,
    )
    hwm = rec(
        type="hwm",
        ts_ns=10_450_000_000,
        pid=200,
        tid=201,
        comm="io",
        cause="anon-pages",
        total_vm_kb_before=5600,
        total_vm_kb_after=5600,
        vm_peak_kb=5600,
        hiwater_vm_kb=5000,
        vm_peak_kb_before=5600,
        hiwater_vm_kb_before=5000,
        rss_kb=1500,
        hwm_kb=1500,
        hwm_kb_before=1200,
        rss_member="anon",
    )
    out = [*lines[:6], fork, base, grow, *lines[6:8], hwm, *lines[8:]]
    log = tmp_path / "follow.jsonl"
    log.write_text("\n".join(out) + "\n")
    return log


def test_fork_and_hwm_records(tmp_path: Path) -> None:
    from vmtrace.records import Change as _Change

    if "parent_pid" not in _Change.__dataclass_fields__:
        pytest.skip("records.Change has no fork/hwm fields in this tree")
    log = _with_fork_and_hwm(tmp_path)
    rep = report_of(log)
    assert rep.engine_disagreements == 0, rep.first_disagreement
    parent = next(p for p in rep.processes if p.pid == 200)
    child = next(p for p in rep.processes if p.pid == 250)
    assert child.final_vm_peak_kb == 5636 and parent.final_vm_peak_kb == 5600
    assert groups(child) == {
        HEAP: 1004,
        ANON: 1024 + 1000 + 100,
        FILE: 64,
        STACK: 132,
        SHARED: 256 + 1536,
        RESERVED: 512,
        OTHER: 8,
    }
    assert child.composition is not None and child.composition.unattributed_kb == 0
    assert groups(parent)[STACK] == 196  # the parent's stack growth is not the child's
    hwm = [(h.source, h.vm_hwm_kb_before, h.vm_hwm_kb) for h in parent.hwm]
    assert hwm == [("sample", None, 1200), ("anon-pages", 1200, 1500)]
    from vmtrace.export import CSV_COLUMNS, write_csv

    out = io.StringIO()
    write_csv(numbered(LogReader(log)), out)
    rows = [dict(zip(CSV_COLUMNS, r, strict=True)) for r in csv.reader(io.StringIO(out.getvalue()))]
    fork = next(r for r in rows if r["type"] == "fork")
    assert (fork["pid"], fork["parent_pid"], fork["line"]) == ("250", "200", "7")
    h = next(r for r in rows if r["type"] == "hwm")
    assert (h["vm_rss_kb"], h["vm_hwm_kb"], h["vm_hwm_kb_before"], h["rss_member"]) == (
        "1500",
        "1500",
        "1200",
        "anon",
    )
