"""The log's one definition (vmtrace.logformat): the docs' tables come from it, and the
records the writer emits have no field it does not define (checked on the real tracer's
logs in tests/integration: test_offline_tools, test_tools_agree)."""

from __future__ import annotations

from pathlib import Path

from vmtrace import logformat
from vmtrace.logread import read_log

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "log-schema.md"


def test_the_docs_tables_are_the_definitions() -> None:
    """GIVEN docs/log-schema.md WHEN its tables are generated again from vmtrace.logformat
    THEN nothing changes (fix: python -m vmtrace.logformat docs/log-schema.md)."""
    text = DOC.read_text(encoding="utf-8")
    assert text.count("<!-- table:") == 4
    assert logformat.render_doc(text) == text


def test_every_record_type_is_in_the_docs_once() -> None:
    text = DOC.read_text(encoding="utf-8")
    for t in logformat.TYPES:
        row = f"| {', '.join(f'`{n}`' for n in t.names)} | {t.when} |"
        assert text.count(row) == 1, row


def test_undeclared_names_what_the_definition_lacks() -> None:
    rec = {"type": "lost", "ts_ns": 1, "count": 2, "surprise": 3}
    assert logformat.undeclared(rec) == ["surprise"]
    assert logformat.undeclared({"type": "nonsense"}) == ["type"]


def test_a_version_3_exit_record_is_read_with_its_hwm_under_todays_name(tmp_path: Path) -> None:
    """GIVEN a version 3 log, whose exit record names its final VmHWM `vm_hwm_kb`
    WHEN it is read THEN the record has `hwm_kb`, as version 4 writes it."""
    log = tmp_path / "v3.jsonl"
    log.write_text(
        '{"type":"start","ts_ns":1,"version":3,"page_size":4096}\n'
        '{"type":"exit","ts_ns":2,"pid":7,"vm_peak_kb":9000,"vm_hwm_kb":4000}\n'
        '{"type":"end","ts_ns":3}\n'
    )
    (exit_rec,) = [r for r in read_log(log) if r["type"] == "exit"]
    assert exit_rec["hwm_kb"] == 4000 and "vm_hwm_kb" not in exit_rec
