"""The kernel's offsets are read from BTF once per boot, then from /run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from vmtrace.kernel.offsets import KernelOffsets, boot_offsets

FIELDS = [f.name for f in dataclasses.fields(KernelOffsets)]


def _offsets(base: int) -> KernelOffsets:
    return KernelOffsets(**{name: base + i for i, name in enumerate(FIELDS)})


def test_read_once_then_from_the_cache(tmp_path: Path) -> None:
    cache = str(tmp_path / "run" / "offsets.json")
    loads: list[int] = []

    def load() -> KernelOffsets:
        loads.append(1)
        return _offsets(100)

    assert boot_offsets("/btf", load, cache) == _offsets(100)
    assert boot_offsets("/btf", load, cache) == _offsets(100)
    assert len(loads) == 1
    assert (Path(cache).stat().st_mode & 0o777) == 0o600


def test_another_btf_file_is_read_anew(tmp_path: Path) -> None:
    cache = str(tmp_path / "offsets.json")
    boot_offsets("/btf", lambda: _offsets(100), cache)
    assert boot_offsets("/other-btf", lambda: _offsets(200), cache) == _offsets(200)


def test_a_damaged_or_foreign_cache_is_read_anew(tmp_path: Path) -> None:
    cache = tmp_path / "offsets.json"
    boot_offsets("/btf", lambda: _offsets(100), str(cache))
    (key,) = json.loads(cache.read_text())
    for bad in (
        "{not json",
        json.dumps({key: {"task_mm": 1}}),  # fields missing
        json.dumps({key: {**dict.fromkeys(FIELDS, 1), "extra": 2}}),  # a field it does not know
        json.dumps({key: dict.fromkeys(FIELDS, "1")}),  # not numbers
        json.dumps({key: dict.fromkeys(FIELDS, True)}),
        json.dumps([1, 2]),
    ):
        cache.write_text(bad)
        assert boot_offsets("/btf", lambda: _offsets(300), str(cache)) == _offsets(300), bad
    assert json.loads(cache.read_text()) == {key: dataclasses.asdict(_offsets(300))}


def test_an_unwritable_cache_only_costs_a_reread(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = str(blocker / "offsets.json")  # its directory is a file
    assert boot_offsets("/btf", lambda: _offsets(100), cache) == _offsets(100)
    assert boot_offsets("/btf", lambda: _offsets(200), cache) == _offsets(200)
