"""``ReadingBatch``: the readings of one device read, the edge agent's unit of work.

One poll of one device becomes one batch: the poller fills it (decode,
calibrate, report by exception), ``Spool.append(batch)`` gives it a seq range
and returns the sequenced batch, which the twin takes and which the spool
stores as one row with one audit record; the drain publishes it. The readings
are columns (one list per field, one entry per reading, the same order in
each), so a batch moves as one object and nothing is rebuilt per reading.
The column lists may be shared between batches (the poller hands every batch
of one block the same asset, point, unit and sensor lists): once a batch has
left the poller, its lists are read-only — build new ones, never mutate them.

``seq_first`` is 0 until the spool sequenced the batch; then reading ``i`` has
seq ``seq_first + i`` (a batch's seqs are consecutive).

A batch's measurement times are stored (spool row ``t``, audit record ``ts_ms``)
in one of three forms (:func:`time_column`): one integer when every reading
shares it (a one-block device read), runs ``[[ts_ms, count], ...]`` in reading
order when there are at most half as many runs as readings (a device read as
several blocks: each block's answer has its own time; with epoch milliseconds
the runs are then the shorter text), else one integer per reading.
:func:`expand_times` reads any of them back, checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, Iterator

from ems_contract.config_file import shorten
from ems_contract.telemetry import Reading

__all__ = ["ReadingBatch", "time_column", "expand_times"]

_INT64 = (-2**63, 2**63 - 1)


def _is_time(value: Any) -> bool:
    return type(value) is int and _INT64[0] <= value <= _INT64[1]


def time_column(ts_ms: list[int]) -> "int | list[int] | list[list[int]]":
    """``ts_ms`` (not empty) in its stored form: the shared value, runs ``[[t, count], ...]`` when there are
    at most half as many runs as readings, else the list itself."""
    first = ts_ms[0]
    if ts_ms.count(first) == len(ts_ms):
        return first
    runs = [[t, len(list(group))] for t, group in groupby(ts_ms)]
    return runs if 2 * len(runs) <= len(ts_ms) else ts_ms


def expand_times(stored: Any, n: int) -> list[int]:
    """The ``n`` times of a stored time column (:func:`time_column`'s three forms); ValueError saying what
    is wrong: not a 64-bit integer, a list of another length, runs that are not ``[integer, count ≥ 1]``
    pairs or whose counts do not add up to ``n`` (checked before anything is expanded)."""
    if type(stored) is not list:
        if not _is_time(stored):
            raise ValueError(f"must be a 64-bit integer or a list (got {shorten(stored)})")
        return [stored] * n
    if not stored or type(stored[0]) is not list:
        if len(stored) != n:
            raise ValueError(f"must hold {n} times (got {len(stored)})")
        if not set(map(type, stored)) <= {int} or min(stored) < _INT64[0] or max(stored) > _INT64[1]:
            index, item = next((i, t) for i, t in enumerate(stored) if not _is_time(t))
            raise ValueError(f"item {index} must be a 64-bit integer (got {shorten(item)})")
        return stored
    total = 0
    for index, run in enumerate(stored):
        if type(run) is not list or len(run) != 2 or not _is_time(run[0]) or type(run[1]) is not int or run[1] < 1:
            raise ValueError(f"run {index} must be [a 64-bit integer time, a count of at least 1] (got {shorten(run)})")
        total += run[1]
        if total > n:
            raise ValueError(f"runs must count {n} readings (runs 0..{index} count {total})")
    if total != n:
        raise ValueError(f"runs must count {n} readings (got {total})")
    out: list[int] = []
    for t, count in stored:
        out += [t] * count
    return out


@dataclass(slots=True)
class ReadingBatch:
    """Columns of readings; ``sensor`` is the sensor id of each reading (audited, not published)."""

    ts_ms: list[int] = field(default_factory=list)
    asset: list[str] = field(default_factory=list)
    point: list[str] = field(default_factory=list)
    value: list[float | None] = field(default_factory=list)
    unit: list[str] = field(default_factory=list)
    quality: list[str] = field(default_factory=list)
    sensor: list[str] = field(default_factory=list)
    seq_first: int = 0
    accepted_ms: int = 0

    def __len__(self) -> int:
        return len(self.ts_ms)

    @property
    def seq_last(self) -> int:
        return self.seq_first + len(self.ts_ms) - 1

    def add(self, ts_ms: int, asset: str, point: str, value: float | None, unit: str, quality: str,
            sensor: str) -> None:
        """Append one reading (while the poller fills the batch)."""
        self.ts_ms.append(ts_ms)
        self.asset.append(asset)
        self.point.append(point)
        self.value.append(value)
        self.unit.append(unit)
        self.quality.append(quality)
        self.sensor.append(sensor)

    def sequenced(self, seq_first: int, accepted_ms: int) -> "ReadingBatch":
        """The same readings (shared, not copied) with their seq range and acceptance time."""
        return ReadingBatch(self.ts_ms, self.asset, self.point, self.value, self.unit, self.quality, self.sensor,
                            seq_first, accepted_ms)

    def columns(self) -> list[list]:
        """``[ts_ms, asset, point, value, unit, quality, sensor]``: the stored form (``from_columns``)."""
        return [self.ts_ms, self.asset, self.point, self.value, self.unit, self.quality, self.sensor]

    @classmethod
    def from_columns(cls, columns: list[list], seq_first: int, accepted_ms: int) -> "ReadingBatch":
        """Rebuild a stored batch; raises ValueError when the columns are not 7 lists of one length."""
        if not isinstance(columns, list) or len(columns) != 7 or not all(isinstance(c, list) for c in columns) \
                or len({len(c) for c in columns}) != 1 or not columns[0]:
            raise ValueError("stored batch is not 7 non-empty columns of one length")
        return cls(*columns, seq_first=seq_first, accepted_ms=accepted_ms)

    def readings(self) -> Iterator[Reading]:
        """Each reading as the contract's ``Reading`` (for v1 payloads and for tests)."""
        for i, (ts, asset, point, value, unit, quality) in enumerate(
                zip(self.ts_ms, self.asset, self.point, self.value, self.unit, self.quality)):
            yield Reading(self.seq_first + i, ts, asset, point, value, unit, quality)

    def slice(self, start: int, stop: int) -> "ReadingBatch":
        """Readings ``start:stop`` as a batch (its seq range follows)."""
        return ReadingBatch(self.ts_ms[start:stop], self.asset[start:stop], self.point[start:stop],
                            self.value[start:stop], self.unit[start:stop], self.quality[start:stop],
                            self.sensor[start:stop], self.seq_first + start if self.seq_first else 0,
                            self.accepted_ms)

    @classmethod
    def concat(cls, batches: list["ReadingBatch"]) -> "ReadingBatch":
        """Sequenced batches with consecutive seq ranges as one batch."""
        out = cls(seq_first=batches[0].seq_first, accepted_ms=batches[0].accepted_ms)
        for b in batches:
            if out.ts_ms and b.seq_first != out.seq_last + 1:
                raise ValueError(f"batch {b.seq_first}..{b.seq_last} does not follow {out.seq_first}..{out.seq_last}")
            for mine, theirs in zip(out.columns(), b.columns()):
                mine.extend(theirs)
        return out
