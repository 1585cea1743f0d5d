"""The samples of a remote-write request: ``Sample`` rows, and a v2 message's samples kept as its columns.

A ``Sample`` is one reading's sample with the (site, seq) it came from. The worker
builds one per reading only where it must (v1 messages, and v2 messages that need
the per-reading path); a v2 message that is new and inside the clock window keeps
its validated columns as a ``SampleColumns``, and a ``SampleBatch`` joins a
request's parts in arrival order. ``ingest.remote_write.encode_write_request``
reads a batch's columns as they are (no tuple per reading, built and then taken
apart again). Everything else reads any of them as a sequence of ``Sample``:
bisecting a rejected request, dead-lettering its samples, tests. A
``SampleColumns`` builds those tuples the first time it is read so.
"""

from __future__ import annotations

import functools
import itertools
import operator
from itertools import repeat
from typing import Iterator, NamedTuple, Sequence, overload

__all__ = ["Labels", "Sample", "SampleColumns", "SampleBatch"]

Labels = tuple[tuple[str, str], ...]


class Sample(NamedTuple):
    """One sample to write, with the (site, seq) of the reading it came from (a tuple: one is built
    per reading, and a frozen dataclass costs several times as much to build)."""

    labels: Labels
    ts_ms: int
    value: float
    site: str
    seq: int


_SAMPLE_OF_ROW = functools.partial(tuple.__new__, Sample)   # Sample(*row) without a Python-level call


class SampleColumns(Sequence[Sample]):
    """The samples of one v2 message as columns: sample ``i`` has the label set
    ``table[p[i] * width + q[i]]``, time ``base_ms + dt[i]``, value ``values[i]``, site ``site``
    and seq ``seqs[i]``.

    The caller promises what the v2 decoder checked: every column has one entry per sample,
    every value is a float, every time an int64 and every table index in range (the
    encoder takes the columns without checking them again).
    """

    __slots__ = ("table", "width", "p", "q", "base_ms", "dt", "values", "site", "seqs", "_rows")

    def __init__(self, table: list[Labels], width: int, p: Sequence[int], q: Sequence[int], base_ms: int,
                 dt: Sequence[int], values: Sequence[float], site: str, seqs: Sequence[int]) -> None:
        self.table, self.width, self.p, self.q = table, width, p, q
        self.base_ms, self.dt, self.values, self.site, self.seqs = base_ms, dt, values, site, seqs
        self._rows: list[Sample] | None = None

    def __len__(self) -> int:
        return len(self.dt)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        return self.rows()[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.rows())

    def rows(self) -> list[Sample]:
        """The samples as ``Sample`` tuples (built once; map/zip, no bytecode per sample)."""
        if self._rows is None:
            keys = map(operator.add, map(operator.mul, self.p, repeat(self.width)), self.q)
            self._rows = list(map(_SAMPLE_OF_ROW, zip(map(self.table.__getitem__, keys),
                                                      map(self.base_ms.__add__, self.dt), self.values,
                                                      repeat(self.site), self.seqs)))
        return self._rows


class SampleBatch(Sequence[Sample]):
    """The samples of one write request: parts (lists of ``Sample``, ``SampleColumns``) in the
    order they were added, read as one sequence."""

    __slots__ = ("parts", "_count")

    def __init__(self, parts: Sequence[Sequence[Sample]] = ()) -> None:
        self.parts: list[Sequence[Sample]] = []
        self._count = 0
        for part in parts:
            self.extend(part)

    def extend(self, part: Sequence[Sample]) -> None:
        """Add ``part`` after the samples already in the batch (it is kept, not copied)."""
        if len(part):
            self.parts.append(part)
            self._count += len(part)

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        return list(self)[index]

    def __iter__(self) -> Iterator[Sample]:
        return itertools.chain.from_iterable(self.parts)
