"""A set of seqs held as ranges: what ``read_audit`` returns for the seqs the spool cap dropped.

One ``drop`` record names the whole excess when ``max_readings`` (up to 10**9) is lowered, so the
dropped seqs cannot be listed one by one. :class:`SeqRanges` keeps each record's inclusive range,
merged, and answers as a read-only set of ints: ``in`` (a binary search), ``len``, iteration in
order, comparison and ``set(...) - ranges``. Its memory grows with the number of ranges, not seqs.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator, Set

__all__ = ["SeqRanges"]


class SeqRanges(Set[int]):
    """The union of inclusive ``(first, last)`` seq ranges (an empty one, ``last < first``, adds nothing)."""

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        merged: list[list[int]] = []
        for first, last in sorted(r for r in ranges if r[0] <= r[1]):
            if merged and first <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
        self._firsts = [first for first, _ in merged]
        self._lasts = [last for _, last in merged]
        self._len = sum(last - first + 1 for first, last in merged)

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """The merged, sorted, disjoint inclusive ranges."""
        return list(zip(self._firsts, self._lasts))

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        i = bisect_right(self._firsts, seq) - 1
        return i >= 0 and seq <= self._lasts[i]

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[int]:
        for first, last in zip(self._firsts, self._lasts):
            yield from range(first, last + 1)

    def __repr__(self) -> str:
        return f"SeqRanges({self.ranges!r})"

    @classmethod
    def _from_iterable(cls, values: Iterable[int]) -> frozenset[int]:  # type: ignore[override]
        """Set operations (``-``, ``&``, ``|``) give a plain frozenset: their operands are listed anyway."""
        return frozenset(values)
