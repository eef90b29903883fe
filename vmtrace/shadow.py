"""The shadow address space: what each region of a traced process was when it was mapped.

/proc/PID/maps only shows what is mapped now; an unmap, a moved mremap or an exited
process takes the names with it. The shadow keeps them, updated from the events, so an
event about a region that is already gone still says what that region was. Pure.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from vmtrace.records import Mapping

_ONE_AREA = ("[heap]", "[stack]")


def names_of(pieces: Iterable[Mapping]) -> str | None:
    """The distinct names of `pieces`, in order, e.g. "/lib/x.so, [heap]"; None for none."""
    names = list(dict.fromkeys(m.path for m in pieces))
    return ", ".join(names) if names else None


class ShadowMap:
    def __init__(self, mappings: Iterable[Mapping] = ()) -> None:
        self._starts: list[int] = []
        self._maps: list[Mapping] = []
        for m in sorted(mappings, key=lambda m: m.start):
            self.insert(m)

    def __len__(self) -> int:
        return len(self._maps)

    def mappings(self) -> list[Mapping]:
        return list(self._maps)

    def find(self, addr: int) -> Mapping | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and self._maps[i].start <= addr < self._maps[i].end:
            return self._maps[i]
        return None

    def overlapping(self, start: int, end: int) -> list[Mapping]:
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        out = []
        while i < len(self._maps) and self._maps[i].start < end:
            m = self._maps[i]
            if m.end > start:
                out.append(m)
            i += 1
        return out

    def remove(self, start: int, end: int) -> list[Mapping]:
        """Unmap [start, end); returns the removed pieces, clipped to the range."""
        removed: list[Mapping] = []
        for m in self.overlapping(start, end):
            self._delete(m)
            if m.start < start:
                self._add(Mapping(m.start, start, m.perms, m.path, m.offset))
            if m.end > end:
                self._add(Mapping(end, m.end, m.perms, m.path, m.offset + (end - m.start)))
            lo = max(m.start, start)
            removed.append(Mapping(lo, min(m.end, end), m.perms, m.path, m.offset + lo - m.start))
        return removed

    def insert(self, m: Mapping) -> None:
        """Map `m`, replacing whatever it overlaps (MAP_FIXED semantics). The heap and the
        main stack grow by pieces but stay one area (`by_path` finds all of it)."""
        if m.end <= m.start:
            return
        self.remove(m.start, m.end)
        if m.path in _ONE_AREA:
            for n in self.overlapping(m.start - 1, m.end + 1):
                if n.path == m.path and n.perms == m.perms:
                    self._delete(n)
                    m = Mapping(min(m.start, n.start), max(m.end, n.end), m.perms, m.path)
        self._add(m)

    def name_of(self, start: int, end: int) -> str | None:
        """The name(s) of what covers [start, end), e.g. "[anon]" or "/lib/x.so, [heap]"."""
        return names_of(self.overlapping(start, end))

    def by_path(self, path: str) -> Mapping | None:
        return next((m for m in self._maps if m.path == path), None)

    def _add(self, m: Mapping) -> None:
        i = bisect.bisect_left(self._starts, m.start)
        self._starts.insert(i, m.start)
        self._maps.insert(i, m)

    def _delete(self, m: Mapping) -> None:
        i = bisect.bisect_left(self._starts, m.start)
        while i < len(self._maps) and self._maps[i] is not m:
            i += 1
        if i < len(self._maps):
            del self._starts[i]
            del self._maps[i]
