"""--rotate: the JSONL log moves on to a new file at a size, losing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmtrace.errors import OutputError
from vmtrace.sinks import RotatingJsonlSink


def records(n: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = [{"type": "start", "version": 1, "ts_ns": 0}]
    out += [{"type": "grow", "ts_ns": i, "pad": "x" * 80} for i in range(1, n + 1)]
    out.append({"type": "end", "ts_ns": n + 1})
    return out


def test_rotation_keeps_every_record_in_order(tmp_path: Path) -> None:
    """GIVEN a 1 kB rotation size WHEN 100 records of ~120 bytes are written THEN FILE.1..N
    and FILE hold them all, in order, each file starting with the start record."""
    log = tmp_path / "trace.jsonl"
    sink = RotatingJsonlSink(str(log), force=False, max_bytes=1024)
    for rec in records(100):
        sink.write(rec)
    sink.close()
    parts = sorted(tmp_path.glob("trace.jsonl.*"), key=lambda p: int(p.suffix[1:]))
    assert len(parts) >= 9
    seen: list[int] = []
    for i, path in enumerate([*parts, log], start=1):
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        assert lines[0]["type"] == "start"
        if i > 1:
            assert lines[0]["part"] == i and lines[0]["previous"] == f"{log}.{i - 1}"
        assert path.stat().st_size <= 1024 + 200  # a record is never split
        assert (path.stat().st_mode & 0o777) == 0o600
        seen += [int(r["ts_ns"]) for r in lines[1:] if r["type"] == "grow"]
    assert seen == list(range(1, 101))
    assert json.loads(log.read_text().splitlines()[-1])["type"] == "end"


def test_rotation_refuses_an_existing_log_without_force(tmp_path: Path) -> None:
    log = tmp_path / "trace.jsonl"
    log.write_text("keep me\n")
    with pytest.raises(OutputError, match="--force"):
        RotatingJsonlSink(str(log), force=False, max_bytes=1024)
    assert log.read_text() == "keep me\n"


def test_rotation_never_replaces_an_earlier_part(tmp_path: Path) -> None:
    log = tmp_path / "trace.jsonl"
    (tmp_path / "trace.jsonl.1").write_text("old part\n")
    with pytest.raises(OutputError, match=r"trace\.jsonl\.1 exists"):
        RotatingJsonlSink(str(log), force=False, max_bytes=1024)
    assert (tmp_path / "trace.jsonl.1").read_text() == "old part\n"
