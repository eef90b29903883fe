"""The log's one definition (vmtrace.logformat): the docs' tables come from it, and the
records the writer emits have no field it does not define (checked on the real tracer's
logs in tests/integration: test_offline_tools, test_tools_agree)."""

from __future__ import annotations

from pathlib import Path

from vmtrace import logformat

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
