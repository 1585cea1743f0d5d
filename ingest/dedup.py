"""De-duplication by (site, seq): which readings this worker has already written.

Per site the worker keeps the set of seqs it has written (or dead-lettered) as
sorted, disjoint, inclusive intervals. On an in-order stream that is a single
interval ``[first, high-water mark]``; replays, redeliveries and out-of-order
arrivals only add or fill intervals. The state lives in SQLite
(``<state dir>/dedup.sqlite3``, WAL, ``synchronous=FULL``) and is committed in one
transaction per batch, *after* the TSDB accepted that batch and *before* the
broker gets the PUBACKs, so:

* crash before the commit: the broker redelivers, the samples are written
  again, and Prometheus ignores identical samples (same series, timestamp and
  value) — nothing doubles;
* crash after the commit, before the acks: the redelivered readings are
  recognised and dropped here.

A commit has two halves so the worker can overlap the slow one with its next batch:
``stage()`` folds the pending seqs into the in-memory sets at once (the next batch
is de-duplicated against them) and returns the rows; ``persist(rows)`` makes them
durable (one SQLite transaction, an fsync; safe on another thread, one at a time).
Memory may run ahead of the file only until ``persist`` returns or raises; a worker
whose ``persist`` raised must stop without acknowledging, and the file is what a
restart reads. ``commit()`` is both halves in one call.

The window is bounded: beyond ``max_intervals`` per site the *oldest* intervals
are forgotten. Forgetting never loses data — a forgotten seq that arrives again
is simply written again, which Prometheus ignores as an identical duplicate.
So a seq is dropped only when this worker itself wrote it before; this is what
makes two workers sharing one subscription safe (docs/ingest.md).

Loss: ``account_losses(now_ms)`` counts, per site, the seqs in holes between the
intervals that the stream passed more than ``loss_horizon_ms`` ago (the edge's
replay horizon: a reading the spool still held would have arrived by then). The
time the high-water mark passed a seq is known from checkpoints (at most about
100 per horizon per site, so a gap is counted up to 1 % of the horizon late); the
seq up to which losses were counted is kept in SQLite, so a restart never counts a
gap twice (it only waits one horizon before counting new ones). A seq that arrives
after it was counted lost is still written; it is not taken back from the counter.
Holes below a site's lowest interval are not gaps: the worker did not see the
start of the stream (or forgot it).

Whose view is counted is ``losses``: ``"own"`` (one worker alone: its own intervals), ``"group"``
(the accountant of several workers, ``ingest.seq_share``: its own intervals merged with the
intervals the other workers publish, ``merge_peer``, kept in the table ``group_seen`` and
committed with the batch that brought them) or ``"none"`` (a worker of a group that is not the
accountant: it keeps no checkpoints and ``account_losses`` counts nothing).
"""

from __future__ import annotations

import array
import bisect
import os
import sqlite3
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ems_runtime.sqlite import transaction

__all__ = ["SeqIntervals", "SeenSeqs"]

_LOSS_VIEWS = ("own", "group", "none")
_UPSERTS = {
    "seen": "INSERT INTO seen (site, intervals, updated_ms) VALUES (?, ?, ?) "
            "ON CONFLICT(site) DO UPDATE SET intervals = excluded.intervals, updated_ms = excluded.updated_ms",
    "group_seen": "INSERT INTO group_seen (site, intervals, updated_ms) VALUES (?, ?, ?) "
                  "ON CONFLICT(site) DO UPDATE SET intervals = excluded.intervals, updated_ms = excluded.updated_ms",
}


class SeqIntervals:
    """A set of positive integers stored as sorted disjoint inclusive intervals."""

    __slots__ = ("los", "his")

    def __init__(self, pairs: list[tuple[int, int]] | None = None) -> None:
        self.los: list[int] = []
        self.his: list[int] = []
        for lo, hi in pairs or ():
            self.add_range(lo, hi)

    def __contains__(self, seq: int) -> bool:
        i = bisect.bisect_right(self.los, seq) - 1
        return i >= 0 and self.his[i] >= seq

    def __len__(self) -> int:
        return len(self.los)

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.los, self.his))

    @property
    def high_water_mark(self) -> int:
        return self.his[-1] if self.his else 0

    def overlaps(self, lo: int, hi: int) -> bool:
        """True when any seq in ``lo..hi`` (inclusive) is in the set."""
        i = bisect.bisect_left(self.his, lo)         # first interval ending at or after lo
        return i < len(self.los) and self.los[i] <= hi

    def add(self, seq: int) -> None:
        self.add_range(seq, seq)

    def add_range(self, lo: int, hi: int) -> None:
        """Add every seq in ``lo..hi`` (inclusive), merging touching intervals."""
        # first interval that could touch [lo, hi]: its hi >= lo - 1
        start = bisect.bisect_left(self.his, lo - 1)
        end = start
        while end < len(self.los) and self.los[end] <= hi + 1:
            end += 1
        if start < end:
            lo = min(lo, self.los[start])
            hi = max(hi, self.his[end - 1])
        self.los[start:end] = [lo]
        self.his[start:end] = [hi]

    def forget_oldest(self, keep: int) -> int:
        """Drop the lowest intervals so at most ``keep`` remain; returns how many were dropped."""
        drop = len(self.los) - keep
        if drop <= 0:
            return 0
        del self.los[:drop]
        del self.his[:drop]
        return drop

    def copy(self) -> "SeqIntervals":
        out = SeqIntervals()
        out.los, out.his = list(self.los), list(self.his)
        return out

    def to_blob(self) -> bytes:
        flat = array.array("q")
        for lo, hi in zip(self.los, self.his):
            flat.extend((lo, hi))
        return flat.tobytes()

    @classmethod
    def from_blob(cls, blob: bytes) -> "SeqIntervals":
        flat = array.array("q")
        flat.frombytes(blob)
        out = cls()
        out.los = list(flat[0::2])
        out.his = list(flat[1::2])
        return out


class SeenSeqs:
    """Durable per-site seen-seq sets with a pending (uncommitted) layer for the batch in hand."""

    def __init__(self, state_dir: str | os.PathLike[str], *, max_intervals_per_site: int = 1024,
                 loss_horizon_ms: int = 259_200_000, clock: Callable[[], float] = time.time,
                 losses: str = "own") -> None:
        if losses not in _LOSS_VIEWS:
            raise ValueError(f"losses must be one of {', '.join(_LOSS_VIEWS)} (got {losses!r})")
        self.losses = losses
        self.path = Path(state_dir) / "dedup.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_intervals = max_intervals_per_site
        # persist() may run on the worker's commit thread (one call at a time, never concurrently).
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (site TEXT PRIMARY KEY, intervals BLOB NOT NULL, "
                         "updated_ms INTEGER NOT NULL)")
        self._sites: dict[str, SeqIntervals] = {
            site: SeqIntervals.from_blob(blob) for site, blob in self._db.execute("SELECT site, intervals FROM seen")}
        self._pending: dict[str, set[int]] = {}
        self.forgotten = 0
        self.loss_horizon_ms = loss_horizon_ms
        self.clock = clock
        self._db.execute("CREATE TABLE IF NOT EXISTS loss (site TEXT PRIMARY KEY, counted_through INTEGER NOT NULL)")
        self._counted: dict[str, int] = dict(self._db.execute("SELECT site, counted_through FROM loss"))
        self._passed: dict[str, list[tuple[int, int]]] = {}     # site → [(high-water mark, when it was reached)]
        self._db.execute("CREATE TABLE IF NOT EXISTS group_seen (site TEXT PRIMARY KEY, intervals BLOB NOT NULL, "
                         "updated_ms INTEGER NOT NULL)")
        self._group: dict[str, SeqIntervals] = {}
        if losses == "group":
            self._group = {site: SeqIntervals.from_blob(blob)
                           for site, blob in self._db.execute("SELECT site, intervals FROM group_seen")}
        self._peer_pending: dict[str, list[tuple[int, int]]] = {}

    def seen(self, site: str, seq: int) -> bool:
        """True when (site, seq) was committed before or is pending in the batch in hand."""
        committed = self._sites.get(site)
        if committed is not None and seq in committed:
            return True
        pending = self._pending.get(site)
        return pending is not None and seq in pending

    def mark(self, site: str, seq: int) -> None:
        self._pending.setdefault(site, set()).add(seq)

    def mark_new_range(self, site: str, lo: int, hi: int) -> bool:
        """Mark every seq in ``lo..hi`` pending and return True when none of them was seen; else
        change nothing and return False (the caller then checks seq by seq)."""
        committed = self._sites.get(site)
        if committed is not None and committed.overlaps(lo, hi):
            return False
        span = range(lo, hi + 1)
        pending = self._pending.get(site)
        if pending is None:
            self._pending[site] = set(span)
            return True
        if not pending.isdisjoint(span):
            return False
        pending.update(span)
        return True

    def merge_peer(self, site: str, pairs: list[tuple[int, int]]) -> None:
        """Add another worker's intervals of ``site`` to the group view, pending like ``mark``
        (``losses="group"`` only; otherwise ignored)."""
        if self.losses == "group":
            self._peer_pending.setdefault(site, []).extend(pairs)

    def unmark(self, site: str, seqs: list[int]) -> None:
        """Take back pending marks (a message of the batch in hand is left for redelivery)."""
        pending = self._pending.get(site)
        if pending is not None:
            pending.difference_update(seqs)

    def commit(self, now_ms: int | None = None) -> None:
        """Persist the pending seqs in one transaction (call after the TSDB accepted them); ``now_ms``
        (default: the clock) is when, for the loss horizon."""
        rows = self.stage(now_ms)
        if rows:
            self.persist(rows)

    def stage(self, now_ms: int | None = None) -> list[tuple[str, str, bytes, int]]:
        """Fold the pending seqs (and peers' intervals) into the in-memory sets and return the rows
        ``persist`` writes (empty when nothing is pending); see the module docstring for the
        contract. ``now_ms`` (default: the clock) is when, for the loss horizon."""
        if not self._pending and not self._peer_pending:
            return []
        now_ms = int(self.clock() * 1000) if now_ms is None else now_ms
        rows = []
        group_new: dict[str, list[tuple[int, int]]] = {}
        for site, seqs in self._pending.items():
            if not seqs:
                continue
            runs = _runs(seqs)
            intervals = self._sites.get(site)
            intervals = intervals.copy() if intervals is not None else SeqIntervals()
            for lo, hi in runs:
                intervals.add_range(lo, hi)
            self.forgotten += intervals.forget_oldest(self.max_intervals)
            self._sites[site] = intervals
            rows.append(("seen", site, intervals.to_blob(), now_ms))
            if self.losses == "own":
                self._checkpoint(site, intervals.high_water_mark, now_ms)
            elif self.losses == "group":
                group_new.setdefault(site, []).extend(runs)
        for site, pairs in self._peer_pending.items():
            group_new.setdefault(site, []).extend(pairs)
        for site, pairs in group_new.items():
            view = self._group.get(site)
            view = view.copy() if view is not None else SeqIntervals()
            for lo, hi in pairs:
                view.add_range(lo, hi)
            view.forget_oldest(self.max_intervals)
            self._group[site] = view
            rows.append(("group_seen", site, view.to_blob(), now_ms))
            self._checkpoint(site, view.high_water_mark, now_ms)
        self._pending.clear()
        self._peer_pending.clear()
        return rows

    def _checkpoint(self, site: str, high_water_mark: int, now_ms: int) -> None:
        """Remember when the counted view's high-water mark reached ``high_water_mark`` (at most one
        mark per 1 % of the horizon)."""
        marks = self._passed.setdefault(site, [])
        step = max(self.loss_horizon_ms // 100, 1000)
        if not marks or (high_water_mark > marks[-1][0] and now_ms - marks[-1][1] >= step):
            marks.append((high_water_mark, now_ms))

    def persist(self, rows: list[tuple[str, str, bytes, int]]) -> None:
        """Write ``stage()``'s rows durably in one transaction (WAL, synchronous=FULL)."""
        with transaction(self._db):
            for table, upsert in _UPSERTS.items():
                self._db.executemany(upsert, [row[1:] for row in rows if row[0] == table])

    def account_losses(self, now_ms: int | None = None) -> dict[str, int]:
        """Seqs newly counted as lost, per site (holes the stream passed more than the horizon ago).
        Uses the database: call it only while no ``persist`` is running (one transaction at a time)."""
        now_ms = int(self.clock() * 1000) if now_ms is None else now_ms
        cutoff = now_ms - self.loss_horizon_ms
        lost: dict[str, int] = {}
        changed = False
        for site, marks in self._passed.items():
            due = [hwm for hwm, at in marks if at <= cutoff]
            if not due:
                continue
            del marks[:len(due) - 1]                        # keep the last due checkpoint: later ones build on it
            through = due[-1]
            start = self._counted.get(site, 0)
            if through <= start:
                continue
            missing = _holes((self._group if self.losses == "group" else self._sites)[site], start, through)
            self._counted[site] = through
            changed = True
            if missing:
                lost[site] = missing
        if changed:
            with transaction(self._db):
                self._db.executemany(
                    "INSERT INTO loss (site, counted_through) VALUES (?, ?) "
                    "ON CONFLICT(site) DO UPDATE SET counted_through = excluded.counted_through",
                    sorted(self._counted.items()))
        return lost

    def rollback(self) -> None:
        """Forget the pending seqs (the batch was not written; the broker will redeliver it)."""
        self._pending.clear()
        self._peer_pending.clear()

    def high_water_mark(self, site: str) -> int:
        intervals = self._sites.get(site)
        return intervals.high_water_mark if intervals else 0

    def intervals(self, site: str) -> list[tuple[int, int]]:
        intervals = self._sites.get(site)
        return intervals.pairs() if intervals else []

    @property
    def site_count(self) -> int:
        return len(self._sites)

    def close(self) -> None:
        self._db.close()


def _holes(intervals: SeqIntervals, after: int, through: int) -> int:
    """How many seqs in ``after+1 .. through`` lie in holes between ``intervals`` (not below the first one)."""
    missing = 0
    for (_, hi), (lo, _) in zip(intervals.pairs(), intervals.pairs()[1:]):
        first, last = max(hi + 1, after + 1), min(lo - 1, through)
        if first <= last:
            missing += last - first + 1
    return missing


def _runs(seqs: set[int]) -> list[tuple[int, int]]:
    """``(first, last)`` of each run of consecutive seqs in ``seqs`` (ascending), sorted and split by
    numpy: the set holds every seq of a batch, thousands, and seqs are int64 (the schema's bound)."""
    ordered = np.sort(np.fromiter(seqs, np.int64, len(seqs)))
    breaks = np.flatnonzero(np.diff(ordered) != 1)
    firsts = ordered[np.concatenate(([0], breaks + 1))].tolist()
    lasts = ordered[np.concatenate((breaks, [len(ordered) - 1]))].tolist()
    return list(zip(firsts, lasts))
