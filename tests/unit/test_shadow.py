"""ShadowMap: the names regions had when they were mapped, kept through unmaps."""

from __future__ import annotations

from vmtrace.records import Mapping
from vmtrace.shadow import ShadowMap

K = 0x1000


def m(start: int, end: int, path: str = "[anon]", perms: str = "rw-p", offset: int = 0) -> Mapping:
    return Mapping(start * K, end * K, perms, path, offset)


def spans(s: ShadowMap) -> list[tuple[int, int, str, int]]:
    return [(x.start // K, x.end // K, x.path, x.offset) for x in s.mappings()]


def test_insert_keeps_mappings_sorted() -> None:
    s = ShadowMap([m(30, 40, "c"), m(10, 20, "a")])
    s.insert(m(20, 30, "b"))
    assert spans(s) == [(10, 20, "a", 0), (20, 30, "b", 0), (30, 40, "c", 0)]
    assert len(s) == 3


def test_insert_empty_mapping_is_ignored() -> None:
    s = ShadowMap([m(10, 20, "a")])
    s.insert(m(15, 15, "x"))
    s.insert(Mapping(16 * K, 15 * K, "rw-p", "y"))
    assert spans(s) == [(10, 20, "a", 0)]


def test_insert_replaces_the_middle_like_map_fixed() -> None:
    s = ShadowMap([m(10, 20, "/lib/a.so", offset=0x5000)])
    s.insert(m(12, 14, "[anon]"))
    assert spans(s) == [
        (10, 12, "/lib/a.so", 0x5000),
        (12, 14, "[anon]", 0),
        (14, 20, "/lib/a.so", 0x5000 + 4 * K),
    ]


def test_insert_replaces_several_whole_and_partial_mappings() -> None:
    s = ShadowMap([m(10, 20, "a"), m(20, 30, "b"), m(30, 40, "c")])
    s.insert(m(15, 35, "new"))
    assert spans(s) == [(10, 15, "a", 0), (15, 35, "new", 0), (35, 40, "c", 5 * K)]


def test_insert_exactly_over_a_mapping_replaces_it() -> None:
    s = ShadowMap([m(10, 20, "old")])
    s.insert(m(10, 20, "new", perms="r--p"))
    assert s.mappings() == [m(10, 20, "new", perms="r--p")]


def test_remove_splits_a_mapping_and_keeps_file_offsets() -> None:
    s = ShadowMap([m(10, 20, "/lib/x.so", perms="r-xp", offset=0x2000)])
    removed = s.remove(13 * K, 16 * K)
    assert removed == [m(13, 16, "/lib/x.so", perms="r-xp", offset=0x2000 + 3 * K)]
    assert spans(s) == [(10, 13, "/lib/x.so", 0x2000), (16, 20, "/lib/x.so", 0x2000 + 6 * K)]
    assert [x.perms for x in s.mappings()] == ["r-xp", "r-xp"]


def test_remove_head_and_tail() -> None:
    s = ShadowMap([m(10, 20, "f", offset=0x1000)])
    assert s.remove(10 * K, 12 * K) == [m(10, 12, "f", offset=0x1000)]
    assert s.remove(18 * K, 25 * K) == [m(18, 20, "f", offset=0x1000 + 8 * K)]
    assert spans(s) == [(12, 18, "f", 0x1000 + 2 * K)]


def test_remove_across_mappings_and_holes() -> None:
    s = ShadowMap([m(10, 20, "a"), m(25, 30, "b"), m(40, 50, "c")])
    removed = s.remove(15 * K, 45 * K)
    assert removed == [m(15, 20, "a", offset=5 * K), m(25, 30, "b"), m(40, 45, "c")]
    assert spans(s) == [(10, 15, "a", 0), (45, 50, "c", 5 * K)]


def test_remove_nothing_there() -> None:
    s = ShadowMap([m(10, 20, "a")])
    assert s.remove(30 * K, 40 * K) == []
    assert s.remove(0, 10 * K) == []  # ends exactly where the mapping starts
    assert s.remove(20 * K, 21 * K) == []  # starts exactly where it ends
    assert spans(s) == [(10, 20, "a", 0)]


def test_overlapping() -> None:
    s = ShadowMap([m(10, 20, "a"), m(20, 30, "b"), m(40, 50, "c")])
    assert s.overlapping(0, 10 * K) == []
    assert s.overlapping(19 * K, 21 * K) == [m(10, 20, "a"), m(20, 30, "b")]
    assert s.overlapping(20 * K, 20 * K + 1) == [m(20, 30, "b")]
    assert s.overlapping(30 * K, 40 * K) == []
    assert s.overlapping(0, 100 * K) == s.mappings()
    assert s.overlapping(49 * K, 60 * K) == [m(40, 50, "c")]


def test_name_of_several_mappings() -> None:
    s = ShadowMap(
        [m(10, 20, "/lib/x.so"), m(20, 30, "[heap]"), m(30, 40, "/lib/x.so"), m(50, 60, "[anon]")]
    )
    assert s.name_of(10 * K, 11 * K) == "/lib/x.so"
    assert s.name_of(15 * K, 35 * K) == "/lib/x.so, [heap]"  # each name once, in address order
    assert s.name_of(25 * K, 55 * K) == "[heap], /lib/x.so, [anon]"
    assert s.name_of(40 * K, 50 * K) is None


def test_find_at_boundaries() -> None:
    s = ShadowMap([m(10, 20, "a"), m(20, 30, "b"), m(40, 50, "c")])
    assert s.find(10 * K - 1) is None
    assert s.find(10 * K) == m(10, 20, "a")
    assert s.find(20 * K - 1) == m(10, 20, "a")
    assert s.find(20 * K) == m(20, 30, "b")
    assert s.find(30 * K) is None  # end is exclusive, and 30..40 is a hole
    assert s.find(40 * K) == m(40, 50, "c")
    assert s.find(50 * K - 1) == m(40, 50, "c")
    assert s.find(50 * K) is None
    assert ShadowMap().find(0) is None


def test_by_path_gives_the_lowest() -> None:
    s = ShadowMap([m(40, 50, "[heap]"), m(10, 20, "[heap]"), m(20, 30, "x")])
    assert s.by_path("[heap]") == m(10, 20, "[heap]")
    assert s.by_path("[stack]") is None


def test_constructor_with_overlapping_input_keeps_the_later_start() -> None:
    s = ShadowMap([m(10, 30, "a"), m(20, 40, "b")])
    assert spans(s) == [(10, 20, "a", 0), (20, 40, "b", 0)]


def test_mappings_returns_a_copy() -> None:
    s = ShadowMap([m(10, 20, "a")])
    s.mappings().clear()
    assert len(s) == 1
