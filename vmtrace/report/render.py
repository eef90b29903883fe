"""A `Report` as text, Markdown or JSON."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vmtrace.report.build import call_site, counted, where_of
from vmtrace.report.model import CHAIN_FRAMES, OomKill, PeakEntry, ProcessReport, Report
from vmtrace.space import UNATTRIBUTED
from vmtrace.units import human_kb

# -- rendering ----------------------------------------------------------------------------------


def report_dict(r: Report) -> dict[str, Any]:
    d = dataclasses.asdict(r)
    for pd, pr in zip(d["processes"], r.processes, strict=True):
        if pr.composition is not None:
            pd["composition"]["total_kb"] = pr.composition.total_kb
    return d


def report_json(r: Report) -> str:
    return json.dumps(report_dict(r), indent=2) + "\n"


def _clock(time: str | None) -> str:
    """HH:MM:SS.mmm of an ISO time (UTC, as logged)."""
    if time and len(time) >= 23 and time[10] == "T":
        return time[11:23]
    return time or "?"


def _size(kb: int) -> str:
    return f"{human_kb(kb)} [{kb} kB]"


def _signed(kb: int) -> str:
    return ("+" if kb >= 0 else "") + human_kb(kb)


def _news(new: dict[str, int]) -> str:
    return ", ".join(f"{_signed(kb)} {g}" for g, kb in new.items() if kb)


@dataclass
class _Run:
    """Consecutive peaks of one call (same thread, cause and mapping) shown as one line."""

    first: PeakEntry
    last: PeakEntry
    n: int
    new: dict[str, int]


def merge_runs(entries: Iterable[PeakEntry]) -> list[_Run]:
    runs: list[_Run] = []
    for e in entries:
        r = runs[-1] if runs else None
        if (
            r is not None
            and e.type == "peak"
            and r.last.type == "peak"
            and (e.tid, e.cause, e.mapping) == (r.last.tid, r.last.cause, r.last.mapping)
            and e.vm_peak_kb_before == r.last.vm_peak_kb
        ):
            r.last = e
            r.n += 1
            for g, kb in e.new_since_previous.items():
                r.new[g] = r.new.get(g, 0) + kb
        else:
            runs.append(_Run(e, e, 1, dict(e.new_since_previous)))
    return runs


def _run_text(r: _Run) -> tuple[str, str]:
    """(headline, call) of a timeline line."""
    f, last = r.first, r.last
    if f.type == "exec":
        return (
            f"EXEC  VmPeak starts over at {_size(f.vm_peak_kb)} "
            f"(was {human_kb(f.vm_peak_kb_before)})",
            f"tid {f.tid} {f.comm}",
        )
    rise = last.vm_peak_kb - f.vm_peak_kb_before
    where = f" {f.mapping}" if f.mapping else ""
    times = f" ×{r.n}" if r.n > 1 else ""
    head = (
        f"PEAK  {human_kb(f.vm_peak_kb_before)} -> {_size(last.vm_peak_kb)} (+{human_kb(rise)})"
        f"  {f.cause}{where}{times}"
    )
    call = f.call if r.n == 1 else f"{r.n} peaks of {f.cause}{where}, the last: {last.call}"
    return head, f"tid {f.tid} {f.comm}: {call}"


def _oom_text(o: OomKill, w: Any) -> None:
    kinds = ", ".join(f"{k} {human_kb(v)}" for k, v in o.rss_kb_by_kind.items())
    cg = f" in cgroup {o.cgroup}" if o.cgroup else ""
    w(f"OOM KILL: pid {o.pid} {o.comm} at {_clock(o.time)}{cg}")
    peak = human_kb(o.vm_peak_kb) if o.vm_peak_kb is not None else "?"
    w(f"  RSS at the kill {human_kb(o.rss_kb)} ({kinds}); VmPeak {peak}")
    if o.last_rises:
        w("  its last VmPeak rises:")
        for line in o.last_rises:
            w(f"    {line}")
    if o.largest_mappings:
        w("  its largest mappings:")
        for line in o.largest_mappings:
            w(f"    {line}")


def render_text(r: Report) -> str:
    out: list[str] = []
    w = out.append
    w(f"vmtrace report of {r.log}")
    w(
        f"  log version {r.version}, vmtrace {r.vmtrace or '?'}, kernel {r.kernel or '?'}, "
        f"{r.backend or '?'} backend"
    )
    dur = f", {r.duration_s:.3f} s" if r.duration_s is not None else ""
    ending = f"ended: {r.end_reason}" if r.complete else "no end record (vmtrace was killed?)"
    tallied = f", {r.tallied} changes tallied (not logged one by one)" if r.tallied else ""
    w(f"  started {r.started or '?'}{dur}; {ending}; {r.lost} records lost by the kernel{tallied}")
    agree = (
        f"all {r.change_records} change records agree with the log"
        if not r.engine_disagreements
        else f"{r.engine_disagreements} of {r.change_records} change records DISAGREE with the "
        f"log (first: {r.first_disagreement})"
    )
    w(f"  re-explained offline by the engine: {agree}")
    for msg in r.warnings:
        w(f"  warning: {msg}")
    for o in r.oom_kills:  # what an on-call engineer opens the report for, first
        w("")
        _oom_text(o, w)
    for p in r.processes:
        w("")
        _process_text(p, w)
    return "\n".join(out) + "\n"


def _process_text(p: ProcessReport, w: Any) -> None:
    w(f"== pid {p.pid} {p.comm} ==")
    final = f"final VmPeak {_size(p.final_vm_peak_kb)}"
    if p.set_by is not None:
        s = p.set_by
        where = f" {s.mapping}" if s.mapping else ""
        final += (
            f", set by {s.cause}{where} (+{human_kb(s.vm_peak_kb - s.vm_peak_kb_before)}) in "
            f"tid {s.tid} {s.comm} at {_clock(s.time)} (+{s.rel_s:.3f} s)"
        )
    elif p.start_vm_peak_kb is not None and p.final_vm_peak_kb == p.start_vm_peak_kb:
        final += ", reached before vmtrace attached (no new peak while traced)"
    w(final)
    if p.logged_final_vm_peak_kb is not None and p.logged_final_vm_peak_kb != p.final_vm_peak_kb:
        w(f"  WARNING: the log's own final VmPeak is {p.logged_final_vm_peak_kb} kB")
    w(
        f"{p.peaks} new peaks, {p.latches} latches, {p.execs} exec, {p.samples} samples, "
        f"{p.mismatches} mismatches" + ("" if p.exited else "; still running at the end")
    )
    w("")
    w("VmPeak timeline (new highs; consecutive peaks of one call merged):")
    if p.start_vm_peak_kb is not None:
        w(f"  {'attach':>10}  VmPeak {_size(p.start_vm_peak_kb)} when vmtrace attached")
    if not p.timeline:
        w("  (no new peak)")
    for r in merge_runs(p.timeline):
        head, call = _run_text(r)
        w(f"  {r.last.rel_s:>+9.3f}s {_clock(r.last.time)}  {head}")
        w(f"        {call}")
        if r.first.stack:
            w(f"        at {where_of(call_site(r.first.stack)[:3])}")
        news = _news(r.new)
        if news:
            w(f"        new since the previous high: {news}")
    if p.timeline_omitted:
        w(f"  ({p.timeline_omitted} more peaks in the middle of the log not shown)")
    if p.hwm:
        w("")
        w("VmHWM (resident set high-water mark, from the samples, HWM records and exit):")
        for h in p.hwm:
            was = f" (was {human_kb(h.vm_hwm_kb_before)})" if h.vm_hwm_kb_before is not None else ""
            rss = "at exit" if h.source == "exit" else f"VmRSS {human_kb(h.vm_rss_kb)}"
            w(f"  {h.rel_s:>+9.3f}s {_clock(h.time)}  VmHWM {_size(h.vm_hwm_kb)}{was}, {rss}")
        if p.hwm_omitted:
            w(f"  ({p.hwm_omitted} more changes not shown)")
    w("")
    w("What VmPeak is made of (each new high's rise, since the last exec):")
    w("  by call site:")
    for c in p.by_call_site:
        w(f"    {human_kb(c.kb):>10}  {c.cause:<14} {c.where}{_peaks(c.peaks)}")
    if p.causes_more_kb[0]:
        w(f"    {human_kb(p.causes_more_kb[0]):>10}  (the other call sites)")
    w("  by call chain (the whole user stack, innermost frame first):")
    for c in p.by_call_chain:
        where = "" if c.frames else f" {c.where}"
        w(f"    {human_kb(c.kb):>10}  {c.cause:<14}{where}{_peaks(c.peaks)}")
        for i, frame in enumerate(c.frames[:CHAIN_FRAMES]):
            w(f"    {'':>10}    #{i} {frame}")
        if len(c.frames) > CHAIN_FRAMES:
            w(f"    {'':>10}    ... {len(c.frames) - CHAIN_FRAMES} more")
    if p.chain_more_kb:
        w(f"    {human_kb(p.chain_more_kb):>10}  (the other call chains)")
    w("  by mapping:")
    for c in p.by_mapping:
        w(f"    {human_kb(c.kb):>10}  {c.cause:<14} {c.where}{_peaks(c.peaks)}")
    if p.causes_more_kb[1]:
        w(f"    {human_kb(p.causes_more_kb[1]):>10}  (the other mappings)")
    comp = p.composition
    w("")
    if comp is None:
        w("Address space at the final peak: not in the log")
        return
    when = f"{comp.rel_s:+.3f} s, line {comp.line}" if comp.rel_s is not None else "?"
    w(f"Address space at the final peak ({comp.at}, {when}), rebuilt from the log:")
    for g in comp.groups:
        n = f"{g.mappings} region{'s' if g.mappings != 1 else ''}" if g.mappings else ""
        w(f"  {human_kb(g.kb):>10}  {g.group:<14} {n}")
        for it in g.items:
            rng = f" {it.start}-{it.end} {it.perms}" if it.start else ""
            w(f"  {'':>10}    {human_kb(it.kb):>10}  {it.label}{rng}")
        if g.more:
            w(f"  {'':>10}    ... and {g.more} more")
    if comp.unattributed_kb:
        w(f"  {human_kb(comp.unattributed_kb):>10}  {UNATTRIBUTED}")
    w(f"  {'=' * 10}")
    w(f"  {human_kb(comp.total_kb):>10}  = VmPeak {comp.vm_peak_kb} kB")
    if comp.note:
        w(f"  note: {comp.note}")
    if p.replay_lost_track and p.replay_first_problem:
        w(
            f"  note: the replay lost track of total_vm {p.replay_lost_track} times, first at "
            f"{p.replay_first_problem}"
        )


def _peaks(n: int) -> str:
    return f"  ({counted(n, 'peak')})" if n else ""


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(r: Report) -> str:
    out: list[str] = []
    w = out.append
    w(f"# vmtrace report: `{_md(r.log)}`")
    w("")
    w(
        f"log version {r.version}, vmtrace {r.vmtrace or '?'}, kernel `{r.kernel or '?'}`, "
        f"{r.backend or '?'} backend; started {r.started or '?'}"
        + (f", {r.duration_s:.3f} s" if r.duration_s is not None else "")
        + (f"; ended: {r.end_reason}" if r.complete else "; **no end record**")
        + f"; {r.lost} records lost"
        + (f", {r.tallied} changes tallied (not logged one by one)." if r.tallied else ".")
    )
    w("")
    w(
        f"Re-explained offline by the engine: {r.change_records} change records, "
        f"{r.engine_disagreements} disagreements."
    )
    for msg in r.warnings:
        w(f"\n> warning: {_md(msg)}")
    for p in r.processes:
        w("")
        w(f"## pid {p.pid} `{_md(p.comm)}`: final VmPeak {_size(p.final_vm_peak_kb)}")
        w("")
        w(
            f"{p.peaks} new peaks, {p.latches} latches, {p.execs} exec, {p.samples} samples, "
            f"{p.mismatches} mismatches."
        )
        w("")
        w("### VmPeak timeline")
        w("")
        w("| t (s) | time (UTC) | VmPeak | rise | cause | call | new since previous high |")
        w("|---:|---|---:|---:|---|---|---|")
        if p.start_vm_peak_kb is not None:
            w(f"| attach | | {p.start_vm_peak_kb} kB | | | | |")
        for run in merge_runs(p.timeline):
            f, last = run.first, run.last
            rise = last.vm_peak_kb - f.vm_peak_kb_before if f.type == "peak" else 0
            cause = "exec" if f.type == "exec" else f"{f.cause} {f.mapping or ''}".strip()
            if run.n > 1:
                cause += f" ×{run.n}"
            call = f.call if run.n == 1 else f"last: {last.call}"
            w(
                f"| {last.rel_s:.3f} | {_clock(last.time)} | {last.vm_peak_kb} kB | "
                f"{_signed(rise) if f.type == 'peak' else 'starts over'} | {_md(cause)} | "
                f"`{_md(call)}` | {_md(_news(run.new))} |"
            )
        if p.timeline_omitted:
            w(f"\n{p.timeline_omitted} more peaks in the middle of the log are not shown.")
        if p.hwm:
            w("")
            w("### VmHWM (samples, HWM records, the exit)")
            w("")
            w("| t (s) | VmHWM | VmRSS |")
            w("|---:|---:|---:|")
            for h in p.hwm:
                rss = "(exit)" if h.source == "exit" else f"{h.vm_rss_kb} kB"
                w(f"| {h.rel_s:.3f} | {h.vm_hwm_kb} kB | {rss} |")
        w("")
        w("### Causes of the final VmPeak")
        for title, causes in (
            ("call site", p.by_call_site),
            ("call chain", p.by_call_chain),
            ("mapping", p.by_mapping),
        ):
            w("")
            w(f"| kB | cause | {title} | peaks |")
            w("|---:|---|---|---:|")
            for c in causes:
                w(f"| {c.kb} | {_md(c.cause)} | `{_md(c.where)}` | {c.peaks} |")
        comp = p.composition
        w("")
        w("### Address space at the final peak")
        w("")
        if comp is None:
            w("Not in the log.")
            continue
        w("| group | kB | mappings | largest |")
        w("|---|---:|---:|---|")
        for g in comp.groups:
            largest = "; ".join(f"{it.label} {it.kb} kB" for it in g.items[:3])
            w(f"| {g.group} | {g.kb} | {g.mappings} | {_md(largest)} |")
        if comp.unattributed_kb:
            w(f"| {UNATTRIBUTED} | {comp.unattributed_kb} | | |")
        w(f"| **total** | **{comp.total_kb}** | | = VmPeak {comp.vm_peak_kb} kB |")
        if comp.note:
            w(f"\nNote: {_md(comp.note)}")
    return "\n".join(out) + "\n"
