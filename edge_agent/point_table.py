"""The point table: each distinct (asset, point, unit, sensor) the spool has stored, by a small integer id.

A device read repeats the same names every poll; a spool row and an audit
batch record therefore name each reading's point by its id (the ``p`` column)
instead of carrying four strings per reading again. The spool keeps the table
in its database (table ``points``, written in the same transaction as the first
row that uses an id), the audit log defines the ids it uses in ``pt`` records
(``edge_agent.audit``). An id is never reused for another point, and ids are
never deleted (a quarantined row may still name them): the table grows only
with the configured points, new ones after a configuration change.

``PointTable.shape(batch)`` maps a batch's four name columns to its ids. It is
memoised by the columns themselves (the poller hands every batch of one block
the same four lists, read-only once they left it: ``edge_agent.batch``), so a
device read that repeats the previous one's points costs one dictionary lookup
and four identity tests; other columns are memoised by their contents (four
tuple builds and one lookup). A batch's ``p`` column is encoded to JSON once
(``Shape.p_json``).

A shape that repeats — a batch handed the same four lists as an earlier one
(a one-block device polled again), or the same points as an earlier batch
(a device read as several blocks, whose poll joins new lists; a site with more
blocks than the list cache holds) — also gets a small integer id of its own
(``Shape.sid``, table ``shapes``, written in the same transaction as the first
row that uses it, never deleted), and the spool row names it instead of its
``p`` list (about 290 of a 99-reading row's 1100 bytes). At most
:data:`MAX_STORED_SHAPES` shapes get one in the life of a spool file, so the
table stays bounded; shapes of fewer than :data:`MIN_STORED_POINTS` readings get
none. Report-by-exception subsets that repeat by content take ids too, so on a
site that filters heavily the ids may run out, after which new shapes (a
reconfiguration's blocks) stay inline: larger rows, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import orjson

from edge_agent.batch import ReadingBatch, time_column
from ems_contract.telemetry import check_finite

__all__ = ["PointTable", "Shape", "Point", "Columns", "shared_columns", "MAX_STORED_SHAPES", "MIN_STORED_POINTS"]

Point = tuple[str, str, str, str]
"""(asset, point, unit, sensor)"""

_MAX_SHAPES = 4096
_MAX_LISTS = 64         # batches whose column lists are held to be recognised by identity
MAX_STORED_SHAPES = 1024
"""The most shapes that get an id (``Shape.sid``) in one spool: a few per configured block, room for reconfigurations."""
MIN_STORED_POINTS = 8
"""Shapes of fewer readings keep their ``p`` list: an id would save little and use up the bound."""


@dataclass(slots=True, eq=False)
class Shape:
    """The point ids of one batch's readings (``ids``, one per reading), the distinct ones in order of
    appearance (``distinct``), ``ids`` as a JSON fragment (``p_json``) and the shape's own id once it
    repeated (``sid``; 0 while it has none). Compared by identity; only ``PointTable`` sets ``sid``."""

    ids: tuple[int, ...]
    distinct: tuple[int, ...]
    p_json: orjson.Fragment
    sid: int = 0


Columns = tuple["int | list[int] | list[list[int]]", orjson.Fragment, "str | list[str]"]
"""A batch's ``(ts_ms, value, quality)`` as its spool row and its audit record both write them."""


def shared_columns(batch: ReadingBatch) -> Columns:
    """``ts_ms`` in its stored form (``edge_agent.batch.time_column``: one value, runs or the list),
    ``quality`` as one value when every reading shares it (else the list), ``value`` as JSON encoded
    once for both the spool row and the audit record; ValueError for a NaN or infinite value (orjson
    would write it as null)."""
    check_finite(batch.value)
    quality = batch.quality
    return (time_column(batch.ts_ms), orjson.Fragment(orjson.dumps(batch.value)),
            quality[0] if quality.count(quality[0]) == len(quality) else quality)


class PointTable:
    """Point ids, assigned from 1 in order of first use. Not thread-safe for writing: the event loop
    assigns (``shape``); the spool's I/O thread only reads (``point``) ids committed or about to be."""

    def __init__(self) -> None:
        self._ids: dict[Point, int] = {}
        self._points: dict[int, Point] = {}
        self._next = 1
        self._unsaved: list[tuple[int, Point]] = []
        self._shapes: dict[tuple[tuple[str, ...], ...], Shape] = {}
        # id(asset list) → (asset, point, unit, sensor lists, their shape); holding the lists keeps their ids theirs
        self._lists: dict[int, tuple[list[str], list[str], list[str], list[str], Shape]] = {}
        self._shape_ids: dict[int, tuple[int, ...]] = {}     # sid → point ids, stored or about to be
        self._sids: dict[tuple[int, ...], int] = {}          # the reverse
        self._next_sid = 1
        self._unsaved_shapes: list[tuple[int, tuple[int, ...]]] = []

    def __len__(self) -> int:
        return len(self._points)

    def load(self, points: Iterable[tuple[int, Point]], highest: int = 0) -> None:
        """Add points read back from storage; ids up to ``highest`` (corrupt rows included) are taken."""
        for pid, point in points:
            self._ids[point] = pid
            self._points[pid] = point
        self._next = max(self._next, highest + 1, max(self._points, default=0) + 1)

    def point(self, pid: int) -> Point:
        """The point of id ``pid``; ValueError when there is none (a corrupt or foreign row)."""
        point = self._points.get(pid) if type(pid) is int else None
        if point is None:
            raise ValueError(f"point id {pid!r} is not in the point table")
        return point

    def load_shapes(self, shapes: Iterable[tuple[int, tuple[int, ...]]], highest: int = 0) -> None:
        """Add shapes read back from storage; shape ids up to ``highest`` (corrupt rows included) are taken."""
        for sid, ids in shapes:
            self._shape_ids[sid] = ids
            self._sids.setdefault(ids, sid)
        self._next_sid = max(self._next_sid, highest + 1, max(self._shape_ids, default=0) + 1)

    def shape_ids(self, sid: int) -> tuple[int, ...]:
        """The point ids of shape ``sid``; ValueError when there is none (a corrupt or foreign row)."""
        ids = self._shape_ids.get(sid) if type(sid) is int else None
        if ids is None:
            raise ValueError(f"shape id {sid!r} is not in the shape table")
        return ids

    def shape(self, batch: ReadingBatch) -> Shape:
        """The ids of ``batch``'s points, assigning new ids to points never seen (``take_unsaved``), and a
        shape id to a shape seen a second time, by its lists or by its points (``take_unsaved_shapes``)."""
        asset, point, unit, sensor = batch.asset, batch.point, batch.unit, batch.sensor
        held = self._lists.get(id(asset))
        if held is not None and held[0] is asset and held[1] is point and held[2] is unit and held[3] is sensor:
            shape = held[4]
            if not shape.sid:
                self._store(shape)
            return shape
        key = (tuple(asset), tuple(point), tuple(unit), tuple(sensor))
        shape = self._shapes.get(key)
        if shape is None:
            ids = tuple(map(self._id, zip(*key)))
            shape = Shape(ids, tuple(dict.fromkeys(ids)), orjson.Fragment(orjson.dumps(ids)), self._sids.get(ids, 0))
            if len(self._shapes) >= _MAX_SHAPES:
                self._shapes.clear()
            self._shapes[key] = shape
        elif not shape.sid:
            self._store(shape)
        if len(self._lists) >= _MAX_LISTS:      # lists made for one batch (filtered ones) come and go
            self._lists.clear()
        self._lists[id(asset)] = (asset, point, unit, sensor, shape)
        return shape

    def _id(self, point: Point) -> int:
        pid = self._ids.get(point)
        if pid is None:
            pid = self._ids[point] = self._next
            self._points[pid] = point
            self._next += 1
            self._unsaved.append((pid, point))
        return pid

    def _store(self, shape: Shape) -> None:
        """Give ``shape`` its id (the one its points already have, else a new one while the bound allows)."""
        if len(shape.ids) < MIN_STORED_POINTS or len(self._shape_ids) >= MAX_STORED_SHAPES:
            return          # (a shape whose points had an id at its creation took it then)
        shape.sid = self._sids.get(shape.ids, 0)
        if not shape.sid:
            shape.sid = self._sids[shape.ids] = self._next_sid
            self._shape_ids[shape.sid] = shape.ids
            self._next_sid += 1
            self._unsaved_shapes.append((shape.sid, shape.ids))

    def take_unsaved(self) -> list[tuple[int, Point]]:
        """The points assigned since the last call: the caller stores them with the rows that use them."""
        unsaved, self._unsaved = self._unsaved, []
        return unsaved

    def give_back(self, unsaved: list[tuple[int, Point]]) -> None:
        """Points whose storing failed: the next ``take_unsaved`` returns them again."""
        self._unsaved[:0] = unsaved

    def take_unsaved_shapes(self) -> list[tuple[int, tuple[int, ...]]]:
        """The shape ids assigned since the last call: the caller stores them with the rows that use them."""
        unsaved, self._unsaved_shapes = self._unsaved_shapes, []
        return unsaved

    def give_back_shapes(self, unsaved: list[tuple[int, tuple[int, ...]]]) -> None:
        """Shapes whose storing failed: the next ``take_unsaved_shapes`` returns them again."""
        self._unsaved_shapes[:0] = unsaved
