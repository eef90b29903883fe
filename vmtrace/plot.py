"""`vmtrace plot`: a timeline picture of VmSize, VmPeak and RSS with each new peak's cause.

`collect(records)` streams a log into `PlotData` (bounded: long series are decimated keeping
their minima and maxima, and at most `MAX_PEAKS` peaks are kept, the largest); `render(data,
fmt)` draws it with matplotlib's Figure API (no pyplot: no display, no global state): PNG or
SVG, or a self-contained HTML page (the SVG inline, and a table of the peaks). One panel per
process.

Every new peak gets a marker on the VmPeak line. Peaks close together in time (within
1/`CLUSTER_FRACTION` of the plotted span) form one cluster, labelled with its causes, largest
first ("stack-growth [stack] ×95 +5.88 MiB"); the `MAX_LABELS` clusters that raised VmPeak
most are labelled, so the picture stays readable. `PlotData.labels` are exactly the texts drawn.
"""

from __future__ import annotations

import html
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from vmtrace.errors import OutputError, UsageError
from vmtrace.logread import Record
from vmtrace.records import Explained
from vmtrace.replay import Replay
from vmtrace.sinks import create_output
from vmtrace.units import human_kb

MAX_POINTS = 20_000  # per series, before decimation
MAX_PEAKS = 5_000  # per process
MAX_LABELS = 10  # per panel
LABEL_LINES = 3  # causes named in one label
CLUSTER_FRACTION = 80
FORMATS = {".png": "png", ".svg": "svg", ".html": "html", ".htm": "html"}


class Series:
    """(t, value) points, at most 2 * `limit`: when full, each run of four points is reduced
    to its minimum and maximum (in time order), so peaks and troughs survive decimation."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = max(limit or MAX_POINTS, 4)
        self.t: list[float] = []
        self.v: list[float] = []

    def add(self, t: float, v: float) -> None:
        self.t.append(t)
        self.v.append(v)
        if len(self.t) >= 2 * self.limit:
            self._halve()

    def _halve(self) -> None:
        nt: list[float] = []
        nv: list[float] = []
        for i in range(0, len(self.t), 4):
            ts, vs = self.t[i : i + 4], self.v[i : i + 4]
            lo = min(range(len(vs)), key=vs.__getitem__)
            hi = max(range(len(vs)), key=vs.__getitem__)
            for j in sorted({lo, hi}):
                nt.append(ts[j])
                nv.append(vs[j])
        self.t, self.v = nt, nv

    def __len__(self) -> int:
        return len(self.t)


@dataclass(frozen=True)
class PeakMark:
    t: float
    vm_peak_kb: int
    rise_kb: int
    cause: str
    where: str


@dataclass
class Label:
    t: float
    vm_peak_kb: int
    rise_kb: int
    text: str
    peaks: int


@dataclass
class ProcessSeries:
    pid: int
    comm: str
    vm_size: Series = field(default_factory=Series)
    vm_peak: Series = field(default_factory=Series)
    rss: Series = field(default_factory=Series)
    peaks: list[PeakMark] = field(default_factory=list)
    peaks_dropped: int = 0
    final_vm_peak_kb: int = 0

    def add_peak(self, p: PeakMark) -> None:
        self.peaks.append(p)
        if len(self.peaks) > 2 * MAX_PEAKS:
            keep = sorted(self.peaks, key=lambda x: -x.rise_kb)[:MAX_PEAKS]
            self.peaks_dropped += len(self.peaks) - len(keep)
            self.peaks = sorted(keep, key=lambda x: x.t)


@dataclass
class Panel:
    """One axes: a process over the whole trace, or zoomed on a burst of peaks."""

    pid: int
    t_lo: float | None  # None: the whole trace
    t_hi: float | None
    labels: list[Label]

    @property
    def zoom(self) -> bool:
        return self.t_lo is not None


@dataclass
class PlotData:
    title: str
    processes: dict[int, ProcessSeries] = field(default_factory=dict)
    panels: list[Panel] = field(default_factory=list)

    def label_texts(self) -> list[str]:
        return [lab.text for panel in self.panels for lab in panel.labels]


def _short(path: str | None) -> str:
    if not path:
        return ""
    if path.startswith("/"):
        return os.path.basename(path.split(" (deleted)")[0]) or path
    return path


def collect(records: Iterable[tuple[int, Record]], title: str, pid: int | None = None) -> PlotData:
    """Series and peaks per process from a log's (line, record) pairs, and the panels."""
    data = PlotData(title)
    t0: int | None = None
    replay = Replay()  # each record's meaning for VmPeak, as the report and the live summary

    def proc(p: int, comm: str | None) -> ProcessSeries:
        ps = data.processes.get(p)
        if ps is None:
            ps = data.processes[p] = ProcessSeries(p, comm or "?")
        return ps

    for _line, rec in records:
        judged = replay.feed(rec)
        t = rec["type"]
        if t == "start":
            t0 = rec["ts_ns"]
            for target in rec.get("targets") or []:
                if pid is None or target["pid"] == pid:
                    proc(target["pid"], target.get("comm"))
            continue
        p = rec.get("pid")
        if p is None or (pid is not None and p != pid):
            continue
        x = (rec["ts_ns"] - (t0 or 0)) / 1e9
        if isinstance(judged, Explained):
            ps = proc(p, rec.get("comm"))
            if rec.get("comm"):
                ps.comm = rec["comm"]
            ps.vm_size.add(x, rec["total_vm_kb_after"])
            ps.vm_peak.add(x, judged.vm_peak_kb)
            if judged.type == "peak":
                m = rec.get("mapping")
                ps.add_peak(
                    PeakMark(
                        x,
                        judged.vm_peak_kb,
                        judged.rise_kb,
                        rec["cause"],
                        _short(m["path"]) if m else "",
                    )
                )
        elif t in ("sample", "mismatch"):
            ps = proc(p, rec.get("comm"))
            st = rec["status"]
            ps.vm_size.add(x, st["VmSize"])
            ps.vm_peak.add(x, st["VmPeak"])
            ps.rss.add(x, st["VmRSS"])
    if pid is not None and pid not in data.processes:
        raise UsageError(f"failed to plot pid {pid}: it is not in the log")
    for ps in data.processes.values():
        ps.final_vm_peak_kb = replay.engine.expected_vm_peak_kb(ps.pid) or 0
        data.panels += panels_of(ps)
    return data


def _span(ps: ProcessSeries) -> tuple[float, float]:
    xs = [*ps.vm_size.t, *ps.vm_peak.t, *ps.rss.t, *(p.t for p in ps.peaks)]
    return (min(xs), max(xs)) if xs else (0.0, 1.0)


def clusters_of(peaks: Iterable[PeakMark], gap: float) -> list[list[PeakMark]]:
    """Peaks in time order, grouped while each is within `gap` seconds of the previous one."""
    out: list[list[PeakMark]] = []
    for p in sorted(peaks, key=lambda x: x.t):
        if out and p.t - out[-1][-1].t <= gap:
            out[-1].append(p)
        else:
            out.append([p])
    return out


def _top_labels(clusters: list[list[PeakMark]]) -> list[Label]:
    labels = [_label(c) for c in clusters]
    top = sorted(labels, key=lambda lab: -lab.rise_kb)[:MAX_LABELS]
    return sorted(top, key=lambda lab: lab.t)


def panels_of(ps: ProcessSeries) -> list[Panel]:
    """The overview panel of a process; and, when a burst of peaks of several causes is too
    dense to tell apart at that scale, a second panel zoomed on the burst."""
    lo, hi = _span(ps)
    span = hi - lo
    clusters = clusters_of(ps.peaks, span / CLUSTER_FRACTION)
    panels = [Panel(ps.pid, None, None, _top_labels(clusters))]
    dense = [c for c in clusters if len({(p.cause, p.where) for p in c}) >= 3]
    if dense and span > 0:
        burst = max(dense, key=lambda c: sum(p.rise_kb for p in c))
        b_lo, b_hi = burst[0].t, burst[-1].t
        pad = max((b_hi - b_lo) * 0.04, span * 1e-6, 1e-6)
        z_lo, z_hi = b_lo - pad, b_hi + pad
        sub = clusters_of(burst, (z_hi - z_lo) / CLUSTER_FRACTION)
        panels.append(Panel(ps.pid, z_lo, z_hi, _top_labels(sub)))
    return panels


def _label(cluster: list[PeakMark]) -> Label:
    by: dict[tuple[str, str], list[int]] = {}
    for p in cluster:
        acc = by.setdefault((p.cause, p.where), [0, 0])
        acc[0] += p.rise_kb
        acc[1] += 1
    parts = []
    for (cause, where), (kb, n) in sorted(by.items(), key=lambda kv: -kv[1][0]):
        times = f" ×{n}" if n > 1 else ""
        parts.append(f"{cause} {where}{times} +{human_kb(kb)}".replace("  ", " "))
    text = "\n".join(parts[:LABEL_LINES])
    if len(parts) > LABEL_LINES:
        text += f"\n(+{len(parts) - LABEL_LINES} more causes)"
    last = cluster[-1]
    return Label(last.t, last.vm_peak_kb, sum(p.rise_kb for p in cluster), text, len(cluster))


# -- drawing ------------------------------------------------------------------------------------


def _unit(max_kb: float) -> tuple[str, float]:
    if max_kb >= 4 * 1024 * 1024:
        return "GiB", 1024 * 1024
    if max_kb >= 4 * 1024:
        return "MiB", 1024
    return "kB", 1


def _window(s: Series, lo: float | None, hi: float | None) -> tuple[list[float], list[float]]:
    """The points of s in [lo, hi] in time order (records of two threads can come out of
    order in the log), starting with the value in force at lo."""
    points = sorted(zip(s.t, s.v, strict=True), key=lambda p: p[0])
    if lo is None or hi is None:
        return [t for t, _ in points], [v for _, v in points]
    ts: list[float] = []
    vs: list[float] = []
    before: float | None = None
    for t, v in points:
        if t < lo:
            before = v
        elif t <= hi:
            ts.append(t)
            vs.append(v)
    if before is not None:
        ts.insert(0, lo)
        vs.insert(0, before)
    if ts:  # hold the last value to the right edge
        ts.append(hi)
        vs.append(vs[-1])
    return ts, vs


def _draw(ax: Axes, ps: ProcessSeries, panel: Panel) -> None:
    lo, hi = panel.t_lo, panel.t_hi
    size_t, size_v = _window(ps.vm_size, lo, hi)
    peak_t, peak_v = _window(ps.vm_peak, lo, hi)
    rss_t, rss_v = _window(ps.rss, lo, hi)
    marks = [p for p in ps.peaks if lo is None or hi is None or lo <= p.t <= hi]
    top = max([*size_v, *peak_v, *rss_v, 1])
    unit, scale = _unit(top)
    ax.step(
        peak_t,
        [v / scale for v in peak_v],
        where="post",
        color="#d62728",
        lw=3.0,
        alpha=0.55,
        label="VmPeak",
    )
    ax.step(
        size_t,
        [v / scale for v in size_v],
        where="post",
        color="#1f4e9c",
        lw=1.1,
        label="VmSize (total_vm)",
    )
    if rss_t:
        ax.plot(
            rss_t,
            [v / scale for v in rss_v],
            color="#2ca02c",
            lw=1.2,
            marker=".",
            ms=3,
            label="VmRSS (samples)",
        )
    if marks:
        ax.scatter(
            [p.t for p in marks],
            [p.vm_peak_kb / scale for p in marks],
            s=16,
            color="#d62728",
            zorder=5,
            label="new peak",
        )
    ax.set_ylim(0, top / scale * 1.6)
    ax.set_ylabel(unit)
    ax.grid(True, alpha=0.3)
    if panel.zoom and lo is not None and hi is not None:
        ax.set_xlim(lo, hi)
        ms = (hi - lo) * 1000
        ax.set_xlabel("seconds since vmtrace started")
        title = f"pid {ps.pid} {ps.comm}: zoom on {len(marks)} peaks within {ms:.3g} ms"
    else:
        ax.set_xlabel("seconds since vmtrace started")
        title = f"pid {ps.pid} {ps.comm}: final VmPeak {human_kb(ps.final_vm_peak_kb)}"
    ax.set_title(title, loc="left", fontsize=11)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    x_lo, x_hi = ax.get_xlim()
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for lab, (y, ha) in zip(panel.labels, place_labels(panel.labels, x_lo, x_hi), strict=True):
        ax.annotate(
            lab.text,
            xy=(lab.t, lab.vm_peak_kb / scale),
            xycoords="data",
            xytext=(lab.t, y),
            textcoords=trans,
            ha=ha,
            va="top",
            fontsize=LABEL_PT,
            bbox={"boxstyle": "round,pad=0.25", "fc": "#fff8e6", "ec": "#d6a040", "lw": 0.6},
            arrowprops={"arrowstyle": "-", "color": "#b07d20", "lw": 0.6},
        )


# Label boxes are placed in the headroom above the data (the y axis goes to 1.6 x the highest
# value, so the data stays below 0.63 of the axes): each, in time order, at the highest level
# where its estimated box overlaps no box already placed.
LABEL_PT = 7.5
AXES_W_PT = 790.0  # the axes of a 12 in wide figure, less the y label
AXES_H_PT = 270.0  # a 4.6 in panel, less the title and the x label
_TOP, _BOTTOM, _STEP = 0.97, 0.66, 0.01


def label_box(text: str) -> tuple[float, float]:
    """(width, height) of a label's box in axes fractions, estimated from its text."""
    lines = text.split("\n")
    w_pt = max(len(line) for line in lines) * LABEL_PT * 0.62 + 8
    h_pt = len(lines) * LABEL_PT * 1.25 + 6
    return w_pt / AXES_W_PT, h_pt / AXES_H_PT


def place_labels(labels: list[Label], x_lo: float, x_hi: float) -> list[tuple[float, str]]:
    """(top y in axes fraction, horizontal alignment) for each label."""
    span = (x_hi - x_lo) or 1.0
    placed: list[tuple[float, float, float, float]] = []  # x0, x1, y0, y1
    out: list[tuple[float, str]] = []
    for lab in labels:
        x = (lab.t - x_lo) / span
        w, h = label_box(lab.text)
        ha = "right" if x > 0.6 else "left"
        x0, x1 = (x - w, x) if ha == "right" else (x, x + w)
        best, best_overlap = _TOP, float("inf")
        y = _TOP
        while y - h >= _BOTTOM - 0.3 - 1e-9:
            overlap = sum(
                max(0.0, min(x1, b[1]) - max(x0, b[0])) * max(0.0, min(y, b[3]) - max(y - h, b[2]))
                for b in placed
            )
            if overlap < best_overlap - 1e-12:
                best, best_overlap = y, overlap
            if overlap == 0 and y - h >= _BOTTOM:
                best = y
                break
            y -= _STEP
        placed.append((x0, x1, best - h, best))
        out.append((best, ha))
    return out


def figure(data: PlotData) -> Figure:
    n = max(len(data.panels), 1)
    fig = Figure(figsize=(12, 4.6 * n), layout="constrained")
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    if not data.panels:
        axes[0].text(0.5, 0.5, "no process in the log", ha="center", transform=axes[0].transAxes)
    for ax, panel in zip(axes, data.panels, strict=False):
        _draw(ax, data.processes[panel.pid], panel)
    fig.suptitle(data.title, fontsize=10, x=0.01, ha="left")
    return fig


def format_of(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    fmt = FORMATS.get(ext)
    if fmt is None:
        raise UsageError(
            f"failed to plot to {path}: cannot tell the format from {ext or 'no extension'!r} "
            "(use .png, .svg or .html)"
        )
    return fmt


def render(data: PlotData, fmt: str) -> bytes:
    """The picture as PNG or SVG bytes, or an HTML page."""
    with rc_context({"svg.fonttype": "none", "font.family": "DejaVu Sans"}):
        fig = figure(data)
        if fmt == "png":
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110)
            return buf.getvalue()
        svg = io.StringIO()
        fig.savefig(svg, format="svg")
    if fmt == "svg":
        return svg.getvalue().encode()
    return _html(data, svg.getvalue()).encode()


def _html(data: PlotData, svg: str) -> str:
    start = svg.find("<svg")
    inline = svg[start:] if start >= 0 else svg
    rows = []
    for panel in data.panels:
        if panel.zoom:
            continue
        ps = data.processes[panel.pid]
        pid = panel.pid
        for lab in panel.labels:
            text = html.escape(lab.text).replace("\n", "<br>")
            rows.append(
                f"<tr><td>{pid} {html.escape(ps.comm)}</td><td>{lab.t:.3f}</td>"
                f"<td>{lab.vm_peak_kb}</td><td>+{html.escape(human_kb(lab.rise_kb))}</td>"
                f"<td>{lab.peaks}</td><td>{text}</td></tr>"
            )
    title = html.escape(data.title)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1em 2em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: left; }}
svg {{ max-width: 100%; height: auto; }}
</style></head>
<body>
<h1>{title}</h1>
{inline}
<h2>Largest new peaks</h2>
<table><tr><th>process</th><th>t (s)</th><th>VmPeak (kB)</th><th>rise</th><th>peaks</th>
<th>cause</th></tr>
{chr(10).join(rows)}
</table>
</body></html>
"""


def write(data: PlotData, path: str, fmt: str, force: bool = False) -> None:
    """Write the picture to `path` (like every output: 0600, never through a symlink, never
    over a file unless `force`)."""
    blob = render(data, fmt)
    fd = create_output(path, force)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
    except OSError as e:
        raise OutputError(f"failed to write {path}: {e.strerror}") from None
