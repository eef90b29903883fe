"""vmtrace.plot (`vmtrace plot`): series, peak labels, and the PNG / SVG / HTML produced."""

from __future__ import annotations

import html
import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vmtrace.errors import OutputError, UsageError
from vmtrace.logread import LogReader, numbered
from vmtrace.plot import (
    PeakMark,
    PlotData,
    ProcessSeries,
    Series,
    clusters_of,
    collect,
    format_of,
    panels_of,
    render,
    write,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RUN = FIXTURES / "run_small.jsonl"
ATTACH = FIXTURES / "attach_small.jsonl"


def data_of(path: Path, pid: int | None = None) -> PlotData:
    return collect(numbered(LogReader(path)), f"vmtrace: {path.name}", pid)


def svg_texts_present(svg: str, texts: list[str]) -> list[str]:
    """The label lines missing from the SVG (text is kept as <text>, XML-escaped)."""
    return [
        line for t in texts for line in t.split("\n") if html.escape(line, quote=False) not in svg
    ]


def test_series_of_the_run_log() -> None:
    data = data_of(RUN)
    ps = data.processes[100]
    assert ps.comm == "job" and ps.final_vm_peak_kb == 13028
    # VmSize: every change record's total_vm after, and every sample's VmSize, in log order
    assert ps.vm_size.v == [
        30000,
        400,
        1424,
        1624,
        1756,
        1756,
        732,
        724,
        8916,
        10964,
        10980,
        10980,
        13028,
        12828,
        12828,
    ]
    assert ps.rss.v == [900, 2900, 2000]
    assert [round(t, 3) for t in ps.rss.t] == [0.5, 0.9, 1.5]
    assert [(p.cause, p.where, p.rise_kb) for p in ps.peaks] == [
        ("mmap", "[anon]", 1024),
        ("mmap", "input.bin", 200),
        ("brk", "[heap]", 132),
        ("mmap", "[anon]", 7160),
        ("mmap", "[anon]", 2048),
        ("syscall:io_setup", "", 16),
        ("mremap", "[anon]", 2048),
    ]


def test_every_peak_is_in_a_label_of_its_cause() -> None:
    data = data_of(RUN)
    overview = data.panels[0]
    assert overview.pid == 100 and not overview.zoom
    texts = [lab.text for lab in overview.labels]
    # the span is 0.1-2.5 s: peaks within 2.4/80 = 0.03 s of each other are one cluster,
    # so the three at 0.21-0.23 s, and not those at 0.80 and 0.85 s
    assert texts == [
        "mmap [anon] +1.00 MiB\nmmap input.bin +200 kB\nbrk [heap] +132 kB",
        "mmap [anon] +6.99 MiB",
        "mmap [anon] +2.00 MiB",
        "syscall:io_setup +16 kB",
        "mremap [anon] +2.00 MiB",
    ]
    assert sum(lab.peaks for lab in overview.labels) == 7
    assert sum(lab.rise_kb for lab in overview.labels) == 13028 - 400
    # a burst with three causes gets a zoomed panel, whose labels tell them apart
    zoom = data.panels[1]
    assert zoom.zoom and zoom.t_lo is not None and zoom.t_lo < 0.21 and zoom.t_hi is not None
    assert zoom.t_hi > 0.23
    assert [lab.text for lab in zoom.labels] == [
        "mmap [anon] +1.00 MiB",
        "mmap input.bin +200 kB",
        "brk [heap] +132 kB",
    ]


def test_clusters_and_label_limits() -> None:
    peaks = [
        PeakMark(t, 100 + i, 1, "stack-growth", "[stack]")
        for i, t in enumerate([0.0, 0.001, 0.002, 5.0, 9.0])
    ]
    assert [len(c) for c in clusters_of(peaks, 0.1)] == [3, 1, 1]
    ps = ProcessSeries(1, "x")
    for i in range(40):
        ps.add_peak(PeakMark(float(i), 100 + i, 10 + i, f"cause{i}", ""))
        ps.vm_peak.add(float(i), 100 + i)
    panels = panels_of(ps)
    assert len(panels) == 1 and len(panels[0].labels) == 10  # MAX_LABELS: the largest rises
    assert panels[0].labels[0].text == "cause30 +40 kB"
    merged = ProcessSeries(1, "x")
    for i in range(95):
        merged.add_peak(PeakMark(1 + i * 1e-5, 100 + 64 * i, 64, "stack-growth", "[stack]"))
    merged.vm_peak.add(0.0, 100)
    merged.vm_peak.add(10.0, 6180)
    assert [lab.text for lab in panels_of(merged)[0].labels] == [
        "stack-growth [stack] ×95 +5.94 MiB"
    ]


def test_series_decimation_keeps_extremes() -> None:
    s = Series(limit=100)
    for i in range(10_000):
        s.add(float(i), float(i % 97) if i != 5_000 else 1e6)
    assert len(s) < 200
    assert max(s.v) == 1e6 and min(s.v) == 0.0
    assert s.t == sorted(s.t)


def test_svg_has_the_annotations() -> None:
    data = data_of(RUN)
    svg = render(data, "svg").decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert svg_texts_present(svg, data.label_texts()) == []
    for legend in ("VmPeak", "VmSize (total_vm)", "VmRSS (samples)", "new peak"):
        assert legend in svg
    assert "pid 100 job: final VmPeak 12.72 MiB" in svg
    assert "zoom on 3 peaks" in svg


def test_html_is_self_contained_and_has_the_annotations() -> None:
    data = data_of(ATTACH)
    page = render(data, "html").decode()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    assert "<script" not in page and "src=" not in page and "<link" not in page
    assert svg_texts_present(page, data.label_texts()) == []
    assert "mmap [anon] +536 kB" in page and "stack-growth [stack] +64 kB" in page
    # the table of peaks
    assert "<td>200 server</td>" in page and "<td>5600</td>" in page


def test_png_is_a_picture() -> None:
    png = render(data_of(RUN), "png")
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG"
    assert img.size[0] >= 1200 and img.size[1] >= 900  # two panels, 12 x 9.2 in at 110 dpi


def test_format_and_output_rules(tmp_path: Path) -> None:
    assert format_of("a.PNG") == "png" and format_of("b.svg") == "svg"
    assert format_of("c.htm") == "html"
    with pytest.raises(UsageError, match=r"cannot tell the format from '\.pdf'"):
        format_of("x.pdf")
    with pytest.raises(UsageError, match="no extension"):
        format_of("x")
    data = data_of(ATTACH)
    out = tmp_path / "p.svg"
    write(data, str(out), "svg")
    with pytest.raises(OutputError, match="it exists"):
        write(data, str(out), "svg")
    write(data, str(out), "svg", force=True)
    link = tmp_path / "link.svg"
    link.symlink_to(tmp_path / "elsewhere.svg")
    with pytest.raises(OutputError, match="failed to create"):
        write(data, str(link), "svg", force=True)
    assert not (tmp_path / "elsewhere.svg").exists()
    with pytest.raises(UsageError, match=r"pid 7: it is not in the log"):
        data_of(RUN, pid=7)


def test_cli_plot(tmp_path: Path) -> None:
    out = tmp_path / "run.svg"
    res = subprocess.run(
        [sys.executable, "-m", "vmtrace", "plot", str(RUN), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert svg_texts_present(out.read_text(), data_of(RUN).label_texts()) == []
