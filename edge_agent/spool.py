"""The durable spool: every accepted batch of readings, on disk, until the broker's PUBACK.

Why SQLite (WAL mode) rather than a hand-written segment log: SQLite gives
atomic multi-row commits, crash recovery of a half-written commit, ordered
range deletes and a persistent counter in one file, all well-tested; a segment
log would need its own compaction, index and torn-write recovery.

Durability: ``journal_mode=WAL`` with ``synchronous=FULL`` for appends — in WAL
mode FULL fsyncs the WAL on every commit, so a committed batch survives power
loss (``NORMAL`` would survive only a process crash). Acks ride on the next
append commit; alone they commit with ``synchronous=NORMAL``: losing an ack to
power loss only re-sends readings, which the ingest de-duplicates by (site,
seq); losing an append would lose data.

The audit log (``edge_agent.audit``) keeps one invariant with the spool: **no
row is deleted before its record is durable, and after a crash or power loss
every committed row not deleted has exactly one record.** A commit's records
are written right after it but not fsync'd (rows may be leased and published
before); the audit is fsync'd before a transaction that deletes rows whose
records may not be durable yet (acks; a quarantine; the size cap's drop, which
runs in a transaction of its own after the new rows' records and its ``drop``
record are fsync'd, since it may take rows of the same commit), for command and
write events, at close and reopen, and at the first commit 1 s after the last
fsync or before a write would leave 4 MiB unsynced (checked at commits only: an
idle spool's last records wait for the next commit or close). The deleting
transaction (and any commit's, when it moved) records in ``meta`` the audit
file's identity, the offset, the CRC of the record ending there and the highest
seq of that fsync (``AuditMark``): at open the audit checks every record after
that offset, cuts the file at the first one a power loss took or tore, and
``_reaudit_sync`` audits again every row above the last good record's seq. One
exception: rows that fail their checks at open (``quarantine_bad_rows``) move to
the ``quarantine`` table before the audit is opened and checked; their ``quar``
records follow. While the audit cannot be synced, new rows still commit (their
records stay buffered, written again after a back-off; past
``audit.MAX_BUFFERED_BYTES`` the audit lets go of the batch records,
``AuditLog.behind``, and ``_sync_audit`` audits those rows again from the table
once a sync succeeds) and the acks' deletes wait; close commits every buffered
row whatever the audit does.

The unit is the batch (``ReadingBatch``, one device read): one row, one seq
range, one audit record. Lifecycle::

    append(batch) ─ seq range assigned, buffered in memory; returns the sequenced batch
                    │ a group of about ``fsync_batch`` readings (whole batches, never past
                    │ it), or ``flush_interval_s`` after the oldest buffered batch arrived;
                    │ never sooner than ``min_commit_interval_s`` after the last commit
                    │ began (groups that fill faster commit together: fewer fsyncs)
    commit: [audit fsync, when rows leave] the acked rows' DELETE, new
            point-table and shape entries, INSERT one row per batch + next_seq (+ the
            audit mark) in one transaction (fsync), then one audit record per
            batch, written (fsync'd every 1 s / 4 MiB); over the cap: the
            ``drop`` record and an audit fsync, then the drop's DELETE
            (group commit: batches that arrive during an fsync go in the next
            group, committed when it is full or old, not the moment the fsync
            ends — that made one commit per batch when batches arrived one at a
            time; a commit of whole groups is whole messages for the drain when
            ``fsync_batch`` is a multiple of its ``batch_max_readings``;
            ``append`` waits for the disk only when ``max_buffered`` —
            16 × ``fsync_batch``, at least 1024 — readings are waiting)
    lease(n) ─ the next committed batches in seq order, about n readings: from
               memory while the committed, unacked batches after the lease
               cursor are all still held there (up to ``memory_readings``), else
               from the database (CRC checked; a bad row is moved to the
               ``quarantine`` table, audited and counted — never dropped)
    ack(first, last), ack_nowait(first, last) ─ after PUBACK: the rows inside seq
               first..last are not leased again, and are deleted in the
               transaction of the first group commit after ``ack_interval_s``
               (alone when nothing is buffered; ``ack()``: after
               ``flush_interval_s``). Acks need no fsync of their own (one
               lost to power loss only re-sends rows the ingest de-duplicates);
               gathered, they cost one DELETE per ``ack_interval_s``
    release_leases() ─ after a disconnect: leased, unacked rows are leased again

``seq`` is per site, starts at 1, and is stored in the ``meta`` table in the
same transaction as the rows, so it is never reused — not after dropped rows,
not after a restart or SIGKILL. (A seq assigned to a batch still in the memory
buffer when the process dies was never committed, audited or published, so
nothing ever saw it.) A SIGKILL during a commit leaves the row either whole or
absent (SQLite's journal), never half.

Size cap: when more than ``max_readings`` readings are spooled, the oldest
batches are deleted whole after the commit (never the newest one, so a batch
larger than the cap is kept whole), counted in ``ems_edge_spool_dropped_total`` and audited as one
``drop`` record with the seq range, fsync'd before the delete (a power loss
between the two leaves a ``drop`` record for rows still spooled: dropped again,
under another record, by the next commit that finds the spool over the cap, or
else delivered; the audit then names them both audited and dropped).

The stored row (``data``, its CRC32 in ``crc``) is compact JSON
``{"p": [point id, ...], "t": ts_ms, "v": [value, ...], "q": quality}`` — ``q``
a list instead when the readings differ, ``t`` runs ``[[ts_ms, count], ...]`` or a
list (``edge_agent.batch.time_column``: a device read as several blocks has a time per block), ``"s": shape id`` instead of
``p`` for a shape seen before (``Shape.sid``: the list stored once in table
``shapes``, in the same transaction as the first row naming it, never deleted,
bounded; a row naming an id the table lacks is quarantined) — and names each reading's
(asset, point, unit, sensor) by its id in the ``points`` table
(``edge_agent.point_table``; each entry with its CRC32, written in the same
transaction as the first row naming it, never deleted): about 11 bytes a
reading for a 99-reading device read, where four strings a reading took about
57. A row naming an id the table lacks (or whose entry fails its CRC) is
quarantined like any corrupt row. Rows written before the point table (a JSON
list of 7 columns: ts_ms, asset, point, value, unit, quality, sensor) are
still read as they are; a spool written by an older agent still (one row per
reading, table ``spool``) is converted at open, in one transaction, into
one-reading batches of that 7-column form.

Deleted rows are zeroed only where that costs no extra write (``secure_delete=FAST``;
Debian's SQLite zeroes every freed page and writes it again by default).

All SQLite and audit I/O runs on one dedicated thread (the connection is used
by no other), so the event loop never blocks on disk.

Defaults: ``max_readings=1_000_000``, ``fsync_batch=1000``, ``flush_interval_s=0.02``,
``min_commit_interval_s=0.02``, ``memory_readings=65_536``, ``ack_interval_s=0.1``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sqlite3
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import orjson

from edge_agent.audit import (MAX_BUFFERED_BYTES, MAX_HELD_RECORD_BYTES, SYNC_BYTES, AuditLog, AuditMark,
                              batch_record, held_record_ok)
from edge_agent.batch import ReadingBatch, expand_times
from edge_agent.errors import AuditError, SpoolCorrupt, SpoolError
from edge_agent.event_loop import TIMER_SLACK_S
from edge_agent.metrics import AgentMetrics
from edge_agent.point_table import Columns, Point, PointTable, Shape, shared_columns
from edge_agent.spool_integrity import quarantine_bad_rows, spool_problem
from ems_contract.config_file import shorten
from ems_runtime.sqlite import transaction

__all__ = ["Spool", "SPOOL_FILE"]

log = logging.getLogger(__name__)

SPOOL_FILE = "spool.db"
_REAUDIT_ROWS = 64      # rows audited again per write and fsync (column form: about 80 bytes a reading)
_MAX_HELD_RECORDS = 1_000_000   # audit event records taken back from ``audit_held`` at a start, at most

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS owner (site TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq_first INTEGER PRIMARY KEY, seq_last INTEGER NOT NULL, accepted_ms INTEGER NOT NULL,
    data BLOB NOT NULL, crc INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS points (id INTEGER PRIMARY KEY, data BLOB NOT NULL, crc INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS shapes (id INTEGER PRIMARY KEY, data BLOB NOT NULL, crc INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit_held (n INTEGER PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER NOT NULL, accepted_ms INTEGER, data BLOB, crc INTEGER, reason TEXT NOT NULL,
    quarantined_ms INTEGER NOT NULL, seq_last INTEGER);
"""


def _encode(batch: ReadingBatch, shape: Shape, columns: Columns | None = None) -> bytes:
    """The stored row: ``{"p": point ids, "t": ts_ms, "v": values, "q": qualities}`` as compact JSON, ``q``
    one value when every reading shares it and ``t`` one value or runs (``shared_columns``, or ``columns``
    it returned),
    ``"s": shape id`` instead of ``p`` when the shape has one; ValueError for a NaN or infinite value."""
    ts, value, quality = columns or shared_columns(batch)
    key, names = ("s", shape.sid) if shape.sid else ("p", shape.p_json)
    return orjson.dumps({key: names, "t": ts, "v": value, "q": quality})


def _row(batch: ReadingBatch, shape: Shape, columns: Columns | None = None) -> tuple[int, int, int, bytes, int]:
    """The stored row of a sequenced batch: seq_first, seq_last, accepted_ms, data, crc."""
    data = _encode(batch, shape, columns)
    return batch.seq_first, batch.seq_last, batch.accepted_ms, data, zlib.crc32(data)


def _log_orphan_failure(task: "asyncio.Task[None]") -> None:
    """The outcome of a commit whose caller was cancelled: a failure is logged (the batches stay buffered)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("spool commit failed after its caller left: %s; will retry", task.exception())


def _decode(seq_first: int, seq_last: int, accepted_ms: int, data: bytes, points: PointTable) -> ReadingBatch:
    """A stored row as a batch: the point form (``_encode``) or an older agent's 7 columns; ValueError
    saying what is wrong (not JSON, wrong shape, an unknown point id, a count unlike the seq range)."""
    try:
        stored = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"row {seq_first}..{seq_last} is not JSON ({exc})") from None
    if isinstance(stored, dict):
        ids, ts, value, quality = (stored.get(key) for key in ("p", "t", "v", "q"))
        if "s" in stored:
            if "p" in stored:
                raise ValueError(f"row {seq_first}..{seq_last}: both p and s")
            ids = list(points.shape_ids(stored["s"]))
            if not isinstance(value, list) or len(value) != len(ids):
                raise ValueError(f"row {seq_first}..{seq_last}: shape {stored['s']} has {len(ids)} points, "
                                 f"v must be a list of as many values")
        if not isinstance(ids, list) or not ids or not isinstance(value, list) or len(value) != len(ids):
            raise ValueError(f"row {seq_first}..{seq_last}: p and v must be lists of one length")
        n = len(ids)
        try:
            ts = expand_times(ts, n)
        except ValueError as exc:
            raise ValueError(f"row {seq_first}..{seq_last}: t {exc}") from None
        quality = quality if isinstance(quality, list) else [quality] * n
        if len(quality) != n:
            raise ValueError(f"row {seq_first}..{seq_last}: q must be one value or one per reading")
        asset, point, unit, sensor = map(list, zip(*map(points.point, ids)))
        batch = ReadingBatch(ts, asset, point, value, unit, quality, sensor, seq_first, accepted_ms)
    else:
        batch = ReadingBatch.from_columns(stored, seq_first, accepted_ms)
    if batch.seq_last != seq_last:
        raise ValueError(f"row {seq_first}..{seq_last} holds {len(batch)} readings")
    if not all(type(t) is int and -2**63 <= t < 2**63 for t in batch.ts_ms) or not all(v is None or type(v) in (float, int) for v in batch.value) \
            or not all(isinstance(x, str) for column in (batch.asset, batch.point, batch.unit, batch.quality,
                                                         batch.sensor) for x in column):
        raise ValueError(f"row {seq_first}..{seq_last}: times must be 64-bit integers, values numbers or null, "
                         f"names and qualities strings")
    return batch


def _point_row(pid: int, point: Point | tuple[int, ...]) -> tuple[int, bytes, int]:
    """A ``points`` or ``shapes`` row: id, the entry as JSON, its CRC32."""
    data = orjson.dumps(point)
    return pid, data, zlib.crc32(data)


class Spool:
    """An async context manager over the on-disk spool in ``directory`` (file ``spool.db``).

    ``audit`` (optional) receives one record per committed batch and per drop
    or quarantine event, durable before the rows they name leave the spool. ``metrics`` (optional)
    gets spool depth, oldest-unacked age, drops and quarantines.
    Raises SpoolError when the directory or database cannot be used.
    """

    def __init__(self, directory: str | os.PathLike[str], *, site: str, max_readings: int = 1_000_000,
                 fsync_batch: int = 1000, flush_interval_s: float = 0.02, audit: AuditLog | None = None,
                 metrics: AgentMetrics | None = None, clock: Callable[[], float] = time.time,
                 memory_readings: int = 65_536, ack_interval_s: float = 0.1,
                 min_commit_interval_s: float = 0.02) -> None:
        if max_readings < 1:
            raise ValueError(f"max_readings must be >= 1 (got {max_readings})")
        if fsync_batch < 1:
            raise ValueError(f"fsync_batch must be >= 1 (got {fsync_batch})")
        self.directory = Path(directory)
        self.path = self.directory / SPOOL_FILE
        self.site = site
        self.max_readings = max_readings
        self.fsync_batch = fsync_batch
        self.max_buffered = max(16 * fsync_batch, 1024)
        self.flush_interval_s = flush_interval_s
        self.ack_interval_s = ack_interval_s
        self.min_commit_interval_s = min_commit_interval_s
        self._last_commit = -math.inf    # loop.time() when the last commit of new rows began
        self.audit = audit
        self.metrics = metrics
        self.clock = clock
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._next_seq = 1
        self._buffer: list[ReadingBatch] = []
        self._buffered = 0               # readings in _buffer
        self._arrived: list[float] = []  # loop.time() when each batch in _buffer arrived
        self._lease_cursor = 0           # highest seq handed out by lease() since the last release
        self._committed_seq = 0          # highest committed seq
        self._depth = 0                  # committed readings not deleted yet (dropped / quarantined / acked)
        # Readings acked (the ranges of ack calls, written on the loop) and of those, deleted (written on the
        # I/O thread, before _depth drops by them): one writer each, so ``depth`` read on the loop during a
        # commit never subtracts a deleted ack twice (it may count it once more for an instant).
        self._acked_total = 0
        self._acked_deleted = 0
        self._oldest_ms: int | None = None
        # Committed, unacked batches in seq order, newest last: lease() serves them without reading
        # them back from disk. Every committed unacked row with seq_first >= _memory_from is here.
        self.memory_readings = memory_readings
        self._recent: deque[ReadingBatch] = deque()
        self._recent_readings = 0
        self._memory_from = 1
        self._flush_lock = asyncio.Lock()
        self._timer: asyncio.Handle | None = None
        self._timer_due = 0.0            # the loop time _timer was armed for
        self._flush_task: asyncio.Task | None = None
        self.points = PointTable()
        self._closing = False
        # acked seq ranges, deleted in the next commit, with the future of an awaiting ack() if any
        self._acks: list[tuple[int, int, asyncio.Future[int] | None]] = []
        self._acks_since = 0.0           # loop.time() of the oldest ack in _acks
        self._ack_awaited = False        # an ack() caller waits for one of _acks
        self.changed = asyncio.Event()   # set whenever new rows become leasable
        self.dropped_total = 0
        self.quarantined_total = 0
        self._saved_mark: AuditMark | None = None   # the audit position ``meta`` holds (as far as we know)
        self._held_fsyncs: int | None = None        # audit fsyncs when ``audit_held``'s records were taken back
        self._held_upto: int | None = None          # the last row of ``audit_held`` taken back
        self._held_again: list[bytes] = []           # the records taken back and held again, in order

    # -- lifecycle ---------------------------------------------------------
    async def __aenter__(self) -> "Spool":
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-io")
        try:
            await self._run(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise
        self._update_metrics()
        if self._depth:
            self.changed.set()
        log.info("spool %s opened: %d unacked readings, next seq %d", self.path, self._depth, self._next_seq)

    async def close(self) -> None:
        """Commit what is buffered, then close the database and the audit log."""
        if self._executor is None:
            return
        self._closing = True
        try:
            await self.flush()
        finally:
            if self._timer is not None:
                self._timer.cancel()
            await self._run(self._close_sync)
            self._executor.shutdown(wait=True)
            self._executor = None
            self._closing = False

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._executor is None:
            raise SpoolError(f"spool {self.path}: not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open_sync(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            # Debian builds SQLite with SECURE_DELETE on: every acked row's page would be zeroed and written
            # again (WAL and checkpoint). FAST zeroes deleted content only where that costs no extra write.
            db.execute("PRAGMA secure_delete=FAST")
            db.executescript(_SCHEMA)
            owner = db.execute("SELECT site FROM owner").fetchone()
            if owner is None:
                with db:
                    db.execute("INSERT INTO owner (site) VALUES (?)", (self.site,))
            elif owner[0] != self.site:
                db.close()
                raise SpoolError(f"spool {self.path} holds readings of site {owner[0]!r}, not {self.site!r}: "
                                 "deliver or move it, or set another spool.path")
            _upgrade_sync(db)
            if (problem := spool_problem(db)) is not None:       # what the rows' CRCs do not cover
                db.close()
                raise SpoolCorrupt(f"spool {self.path}: {problem}; correct that value or move the file aside "
                                   "(its seq counter would restart)")
            bad_rows = quarantine_bad_rows(db, int(self.clock() * 1000))
            row = db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
            stats = db.execute("SELECT COALESCE(SUM(seq_last - seq_first + 1), 0), MAX(seq_last) "
                               "FROM batches").fetchone()
            first = db.execute("SELECT accepted_ms FROM batches ORDER BY seq_first LIMIT 1").fetchone()
            quarantined = db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
            self._load_points_sync(db)
            self._load_shapes_sync(db)
        except sqlite3.DatabaseError as exc:
            raise SpoolCorrupt(f"spool {self.path}: cannot open ({exc}); move the file aside to start a new "
                               "spool (its seq counter would restart)") from exc
        except OSError as exc:
            raise SpoolError(f"spool {self.path}: cannot open ({exc.strerror or exc})") from exc
        self._db = db
        self._depth, max_seq = stats[0], stats[1] or 0
        self._oldest_ms = first[0] if first else None
        self._next_seq = max(row[0] if row else 1, max_seq + 1, max((bad[0] for bad in bad_rows), default=0) + 1)
        self._committed_seq = self._next_seq - 1
        self._memory_from = self._next_seq
        self.quarantined_total = quarantined
        if self.audit is not None:
            self._saved_mark = _read_mark(db)
            self.audit.open(self._saved_mark)
            self._hold_again_sync()
        for seq, seq_last, reason in bad_rows:     # a seq below 1 was never accepted: nothing to audit
            if self.audit is not None and seq >= 1:
                self.audit.event("quar", site=self.site, seq=seq, reason=reason,
                                 **({"seq_last": seq_last} if seq_last is not None else {}))
            log.error("spool row seq %d is unusable (%s): moved to the quarantine table", seq, reason)
        if self.audit is not None:
            try:
                self.audit.sync()
                self._forget_held_sync()
            except (AuditError, sqlite3.Error) as exc:  # a full disk: the records stay held, written once it can be
                log.error("spool %s: cannot write the held and quarantine audit records yet (%s)", self.path, exc)
            try:
                self._reaudit_sync()
            except AuditError as exc:       # a full disk: start anyway; the rows are audited once it takes writes
                self.audit.let_go(again=True)
                log.error("spool %s: cannot audit the spooled rows missing from the audit log yet (%s)", self.path, exc)
            self._save_mark_sync()

    def _load_points_sync(self, db: sqlite3.Connection) -> None:
        """Read the point table; a corrupt entry is left out (rows naming it are quarantined when leased)."""
        good, highest = self._load_entries_sync(db, "SELECT id, data, crc FROM points", "point", lambda point: (
            isinstance(point, list) and len(point) == 4 and all(isinstance(x, str) for x in point)))
        self.points.load(good, highest)     # type: ignore[arg-type]

    def _load_shapes_sync(self, db: sqlite3.Connection) -> None:
        """Read the shape table; a corrupt entry is left out (rows naming it are quarantined when leased)."""
        good, highest = self._load_entries_sync(db, "SELECT id, data, crc FROM shapes", "shape", lambda ids: (
            isinstance(ids, list) and bool(ids) and all(type(pid) is int for pid in ids)))
        self.points.load_shapes(good, highest)     # type: ignore[arg-type]

    def _load_entries_sync(self, db: sqlite3.Connection, query: str, what: str,
                           valid: Callable[[Any], bool]) -> tuple[list[tuple[int, tuple]], int]:
        """The (id, entry as a tuple) of each row of ``query`` (id, JSON data, its CRC32) whose CRC matches and
        whose entry is ``valid``, logging the others; and the highest id of all (corrupt ones are taken too)."""
        good: list[tuple[int, tuple]] = []
        highest = 0
        for eid, data, crc in db.execute(query):
            highest = max(highest, eid)
            try:
                entry = orjson.loads(data) if isinstance(data, bytes) and zlib.crc32(data) == crc else None
            except orjson.JSONDecodeError:
                entry = None
            if not valid(entry):
                log.error("spool %s: %s id %d is corrupt; rows naming it will be quarantined", self.path, what, eid)
                continue
            good.append((eid, tuple(entry)))
        return good, highest

    def _sync_audit(self) -> None:
        """``audit.sync()`` (raises AuditError when the caller's records cannot be made durable); then,
        when the audit had let go of batch records while its file could not be written
        (``AuditLog.behind``), the rows above its last seq are audited again from the table (all still
        there: no row leaves before its record is durable; ``_reaudit_sync``), about
        ``SYNC_BYTES`` of records a call, so commits and commands do not wait for a long backlog; it
        stays behind until the last row is audited. When that fails the audit lets go of what it held
        again and stays behind: logged, not raised (the caller's own records are durable)."""
        audit = self.audit
        assert audit is not None
        audit.sync()
        if audit.behind and not audit.backoff_in():
            audit.behind = False
            try:
                done, more = self._reaudit_sync(budget=SYNC_BYTES, quiet=True)
            except (AuditError, SpoolError, sqlite3.Error) as exc:
                audit.let_go(again=True)
                log.error("spool %s: cannot audit the spooled rows again yet (%s)", self.path, exc)
                return
            except BaseException:
                audit.let_go(again=True)
                raise
            audit.behind = more
            log.warning("spool %s: audited %d spooled batches again (the audit log takes writes again)%s",
                        self.path, done, "; more to come" if more else "")

    def _reaudit_sync(self, *, budget: int | None = None, quiet: bool = False) -> tuple[int, bool]:
        """Audit committed rows missing from the audit log (seq above its last seq: a crash, or records
        let go while it could not be written), in seq order and in the column form, written and
        fsync'd every :data:`_REAUDIT_ROWS` rows or ``SYNC_BYTES // 4`` bytes (the memory and the
        region a power loss can tear stay small); with ``budget``, stop after about that many bytes.
        How many rows, and whether rows may remain (the budget ran out). Raises AuditError (the rows
        synced before stay audited) or sqlite3.Error. Corrupt rows are left to ``lease``, which
        quarantines and audits them."""
        audit = self.audit
        assert self._db is not None and audit is not None
        cursor = audit.last_seq
        done = written = 0
        while budget is None or written < budget:
            rows = self._db.execute("SELECT seq_first, seq_last, accepted_ms, data, crc FROM batches "
                                    "WHERE seq_first > ? ORDER BY seq_first LIMIT ?", (cursor, _REAUDIT_ROWS)).fetchall()
            if not rows:
                break
            for seq_first, seq_last, accepted_ms, data, crc in rows:
                cursor = seq_last
                done += 1
                try:
                    if zlib.crc32(data) != crc:
                        continue
                    audit.batch(self.site, _decode(seq_first, seq_last, accepted_ms, data, self.points))
                except (ValueError, TypeError):
                    continue
                if audit.held_bytes >= SYNC_BYTES // 4:
                    written += audit.held_bytes
                    audit.sync()
            written += audit.held_bytes
            audit.sync()
        else:
            return done, True
        if done and not quiet:
            log.warning("spool %s: audited %d spooled batches missing from the audit log (crash recovery)",
                        self.path, done)
        return done, False

    async def reopen_audit(self) -> bool:
        """Reopen the audit log after rotation (see :meth:`AuditLog.reopen`); True when a new file was opened
        (recorded in ``meta`` at once: the next open checks the new file from its ``cont`` record on)."""
        if self.audit is None:
            return False
        return await self._run(self._reopen_audit_sync)

    def _reopen_audit_sync(self) -> bool:
        assert self.audit is not None
        self.audit.sync()                   # the records taken back at open go to the old file: out of
        try:                                # ``audit_held`` before the new file is in use (raises: not reopened)
            self._forget_held_sync()
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: cannot delete the audit records held at the last stop ({exc})") from exc
        reopened = self.audit.reopen()
        if reopened:
            self._save_mark_sync()
        return reopened

    def _save_mark_sync(self) -> None:
        """Record the audit's last fsync in ``meta`` in a transaction of its own (fsync'd)."""
        db = self._db
        assert db is not None and self.audit is not None
        if self.audit.mark() == self._saved_mark:
            return
        try:
            db.execute("PRAGMA synchronous=FULL")
            with transaction(db):
                marked = self._mark_in_transaction()
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: cannot record the audit log's position ({exc})") from exc
        self._marked(*marked)

    def _mark_in_transaction(self, *, forget_held: bool = False) -> tuple[AuditMark | None, bool]:
        """Inside a transaction: record the audit's last fsync when it moved since the last record of it
        (one UPSERT), with the delete of the held records it made durable (the mark never passes held
        records the table still holds); ``forget_held``: delete those whenever they are durable, moved
        or not. Returns the mark written (None: unchanged) and whether the held records were deleted,
        for ``_marked`` once the transaction commits."""
        if self.audit is None:
            return None, False
        assert self._db is not None
        mark = self.audit.mark()
        if mark == self._saved_mark:
            return None, forget_held and self._forget_held_sync(self._db)
        _write_mark(self._db, mark)
        return mark, self._forget_held_sync(self._db)

    def _marked(self, mark: AuditMark | None, forgotten: bool) -> None:
        """After the transaction of ``_mark_in_transaction`` committed: ``mark`` is the saved one (unless
        None), and nothing is held back when ``forgotten``."""
        self._saved_mark = mark or self._saved_mark
        self._held_forgotten(forgotten)

    def _audit_durable_sync(self, seq_last: int, retry: bool = True) -> None:
        """Make the records of every row up to ``seq_last`` durable (fsync the audit when they are not yet):
        called before a transaction deletes such rows. Raises AuditError (at once, without a try, while
        the audit backs off after a failure and ``retry`` is False)."""
        if self.audit is not None and self.audit.durable_seq < seq_last:
            if not retry and (wait := self.audit.backoff_in()):
                raise AuditError(f"audit log {self.audit.path}: failed to sync; next try in {wait:.1f} s")
            self._sync_audit()
            if self.audit.behind and self.audit.durable_seq < seq_last:
                raise AuditError(f"audit log {self.audit.path}: the spooled rows above seq {self.audit.durable_seq} "
                                 f"are not audited again yet")

    def _close_sync(self) -> None:
        if self.audit is not None and self._db is not None:
            try:
                self._sync_audit()
                self._save_mark_sync()      # a clean start checks nothing beyond it
            except (AuditError, SpoolError) as exc:
                log.error("%s; the next start checks the audit log from its last recorded position", exc)
            self._keep_held_sync()
        if self._db is not None:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
            self._db = None
        if self.audit is not None:
            try:
                self.audit.close()
            except AuditError as exc:
                log.error("%s; the next start checks the audit log from its last recorded position", exc)

    # -- audit records held across a stop ------------------------------------
    def _hold_again_sync(self) -> None:
        """At open: the event records the audit could not take when the agent last stopped (table
        ``audit_held``, oldest first) go first into its buffer: the oldest up to
        :data:`_MAX_HELD_RECORDS` rows and :data:`MAX_BUFFERED_BYTES` (the rest stay, for a later
        start, once these are durable). The table is read as hostile input: only whole, CRC-checked
        event records (``held_record_ok``) are taken; one the file already holds after the position
        the spool last recorded is not written again (a crash after the fsync that made it durable,
        before the transaction deleting it). Those, and the rows that are not such records, leave the
        table at once (the open fsync'd the file); the rest once an fsync made them durable
        (``_forget_held_sync``: every transaction that records a newer position deletes them, so they
        are never before it). Raises SpoolError (the table cannot be read or written) or AuditError (the
        audit file cannot be read): deciding nothing, the open must not go on to record a newer position."""
        assert self._db is not None and self.audit is not None
        audit, db = self.audit, self._db
        self._held_upto = self._held_fsyncs = None
        self._held_again = []
        try:
            rows: list[tuple[int, object]] = []
            size = 0
            for n, record in db.execute("SELECT n, CASE WHEN typeof(record) = 'blob' AND length(record) <= ? "
                                        "THEN record END FROM audit_held ORDER BY n LIMIT ?",
                                        (MAX_HELD_RECORD_BYTES, _MAX_HELD_RECORDS)):
                size += len(record) if type(record) is bytes else 0
                if size > MAX_BUFFERED_BYTES:
                    break
                rows.append((n, record))
            if not rows:
                return
            upto = rows[-1][0]
            checked = [(n, record, held_record_ok(record)) for n, record in rows]
            good = [(n, record) for n, record, ok in checked if ok]
            written = audit.find_lines([record for _, record in good], audit.checked_from)
            again = [(n, record) for n, record in good if record not in written]
            db.execute("PRAGMA synchronous=FULL")
            with transaction(db):
                db.execute("DELETE FROM audit_held WHERE n <= ? AND n NOT IN (SELECT value FROM json_each(?))",
                           (upto, json.dumps([n for n, _ in again])))
            left = db.execute("SELECT COUNT(*) FROM audit_held WHERE n > ?", (upto,)).fetchone()[0]
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: cannot take back the audit records held at the last stop "
                             f"({exc})") from exc
        audit.hold([record for _, record in again])
        if again:
            self._held_upto, self._held_fsyncs = upto, audit.fsyncs
            self._held_again = [record for _, record in again]      # type: ignore[misc]
        if len(good) < len(rows):
            first = next(record for _, record, ok in checked if not ok)
            log.error("spool %s: %d of the %d audit records held at the last stop are not whole event records: "
                      "left out (the first: %s)", self.path, len(rows) - len(good), len(rows),
                      shorten(first) if first is not None else "too long, or not a blob")
        log.warning("spool %s: %d audit records the audit log could not take at the last stop are written first "
                    "(%d were in it already)%s", self.path, len(again), len(written),
                    f"; {left} more wait for a later start" if left else "")

    def _forget_held_sync(self, db: sqlite3.Connection | None = None) -> bool:
        """Delete the records :meth:`_hold_again_sync` took back from ``audit_held`` once an fsync after it
        made them durable (inside the caller's transaction when ``db`` is given, else in one of its own);
        True when they were deleted."""
        if self._held_fsyncs is None or self.audit is None or self.audit.fsyncs <= self._held_fsyncs:
            return False
        if db is not None:
            db.execute("DELETE FROM audit_held WHERE n <= ?", (self._held_upto,))
            return True
        assert self._db is not None
        self._db.execute("PRAGMA synchronous=FULL")
        with transaction(self._db):
            self._db.execute("DELETE FROM audit_held WHERE n <= ?", (self._held_upto,))
        self._held_fsyncs = self._held_upto = None
        return True

    def _held_forgotten(self, forgotten: bool) -> None:
        """After the caller's transaction that ran ``_forget_held_sync(db)`` committed: nothing is held back."""
        if forgotten:
            self._held_fsyncs = self._held_upto = None

    def _keep_held_sync(self) -> None:
        """At close: the event records the audit file would not take (a full disk; also those stranded by
        a file that could not be cut back) appended to ``audit_held``, for the next start to write first.
        The records taken back at open stay in their rows while they are not durable (no fsync since),
        else those rows go in the same transaction; rows a start did not take back yet stay before the
        new ones, so the table keeps the order. Batch records are not kept (their rows are spooled above
        the audit's durable seq: audited again then). Without held records, the rows taken back are
        deleted once durable."""
        audit, db = self.audit, self._db
        assert audit is not None and db is not None
        events: list[bytes] = []
        try:
            if not audit.held_bytes and not audit.broken:
                self._forget_held_sync()
                return
            events = audit.hand_over()
            upto = self._held_upto
            if upto is not None and audit.fsyncs <= (self._held_fsyncs or 0):
                again = set(self._held_again)       # not durable: still in their rows, in their place
                events = [record for record in events if record not in again]
                upto = None
            db.execute("PRAGMA synchronous=FULL")
            with transaction(db):
                if upto is not None:
                    db.execute("DELETE FROM audit_held WHERE n <= ?", (upto,))
                db.executemany("INSERT INTO audit_held (record) VALUES (?)", [(record,) for record in events])
            self._held_fsyncs = self._held_upto = None
        except sqlite3.Error as exc:
            audit.hold(events)              # the audit log's own close tries them once more
            log.error("spool %s: cannot keep the audit records the audit log would not take (%s)", self.path, exc)
            return
        if events:
            log.warning("spool %s: %d audit records the audit log would not take are kept in the spool until the "
                        "next start", self.path, len(events))

    # -- appending ---------------------------------------------------------
    @property
    def _acked_pending(self) -> int:
        """Readings in the ranges of ``_acks``: acked, their DELETE not committed yet."""
        return self._acked_total - self._acked_deleted

    @property
    def depth(self) -> int:
        """Committed readings not yet acknowledged (acked ones whose delete waits for a commit left out)."""
        return max(0, self._depth - self._acked_pending)

    @property
    def pending(self) -> int:
        """Committed readings not leased yet (an upper bound: seq gaps from drops count too)."""
        return max(0, self._committed_seq - self._lease_cursor) if self._depth else 0

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def oldest_accepted_ms(self) -> int | None:
        return self._oldest_unacked_ms

    async def append(self, batch: ReadingBatch) -> ReadingBatch:
        """Accept one batch: assign its seq range and buffer it; returns the sequenced batch.

        The batch is committed (and audited) by a background group commit once
        another batch of its size would take the buffer past ``fsync_batch``
        readings, or when the oldest buffered batch has waited
        ``flush_interval_s``; it cannot be leased (published) before. This call
        waits for the disk only when ``max_buffered`` readings are waiting: the
        back-pressure on the pollers when the disk cannot keep up. Raises
        ValueError for an empty batch.
        """
        if not len(batch):
            raise ValueError("an empty batch cannot be spooled")
        sequenced = batch.sequenced(self._next_seq, int(self.clock() * 1000))
        self._next_seq += len(batch)
        self._buffer.append(sequenced)
        self._arrived.append(asyncio.get_running_loop().time())
        self._buffered += len(batch)
        if self._buffered >= self.max_buffered:
            await self.flush()                  # the disk is behind: make the pollers wait
        elif self._buffered + len(batch) > self.fsync_batch and self._paced():
            self._flush_soon()
        else:
            self._flush_later()
        return sequenced

    def _due(self) -> bool:
        """A group is due: ``min_commit_interval_s`` passed since the last commit of new rows began, and
        another batch like the newest would take the buffer past ``fsync_batch`` readings or the
        oldest buffered batch waited ``flush_interval_s``."""
        return bool(self._buffer) and self._paced() and (self._full() or self._aged())

    def _full(self) -> bool:
        return self._buffered + len(self._buffer[-1]) > self.fsync_batch

    def _paced(self) -> bool:
        """``min_commit_interval_s`` passed since the last commit of new rows began: while batches
        arrive faster than one full group per interval, groups wait for it and commit together."""
        return asyncio.get_running_loop().time() - self._last_commit >= self.min_commit_interval_s - TIMER_SLACK_S

    def _aged(self, index: int = 0) -> bool:
        """The ``index``-th buffered batch (the oldest by default) waited ``flush_interval_s``."""
        return asyncio.get_running_loop().time() - self._arrived[index] >= self.flush_interval_s - TIMER_SLACK_S

    def _acks_due(self) -> bool:
        """The acks are due: an ``ack()`` caller waits, or one waited ``ack_interval_s`` and the rows it
        deletes need no audit fsync of their own (``_acks_durable``)."""
        return bool(self._acks) and (self._ack_awaited or (
            asyncio.get_running_loop().time() - self._acks_since >= self.ack_interval_s - TIMER_SLACK_S
            and self._acks_durable() is None))

    def _acks_durable(self) -> float | None:
        """None when the acked rows' audit records are durable, or the audit's periodic fsync is due (the
        delete brings it); else the seconds until that fsync falls due. So acked rows leave with the
        audit's periodic fsync (about once a second), not with an fsync of their own every
        ``ack_interval_s``; until then they are not leased again, nor counted in the depth."""
        audit = self.audit
        if audit is None or audit.durable_seq >= max(last for _, last, _ in self._acks):
            return None
        wait = audit.sync_in()
        return None if not wait else wait

    def _due_at(self) -> float | None:
        """The loop time at which the buffer falls due (by age, or a full group by the pace), else the
        acks (when due they ride on the buffer's next commit, due within ``flush_interval_s``); None
        when both are empty."""
        if self._buffer:
            ready = asyncio.get_running_loop().time() if self._full() else self._arrived[0] + self.flush_interval_s
            return max(ready, self._last_commit + self.min_commit_interval_s)
        if self._acks:
            due = self._acks_since + (self.flush_interval_s if self._ack_awaited else self.ack_interval_s)
            wait = None if self._ack_awaited else self._acks_durable()
            return due if wait is None else max(due, asyncio.get_running_loop().time() + wait)
        return None

    def _whole_groups(self) -> int:
        """How many buffered batches, oldest first, a background commit takes: the buffer cut into
        groups of at most ``fsync_batch`` readings (whole batches, as the drain cuts messages), all of
        them when the newest group is full too or its oldest batch waited ``flush_interval_s``, else
        all but the newest group, which waits to fill (none when that is the only one; while commits
        are paced, the groups before it have waited longer than it). So a commit
        holds whole messages (990 + 99 readings would go out as a full message and a short one,
        each with its own PUBACK)."""
        buffer, limit = self._buffer, self.fsync_batch
        start = size = 0
        for i, batch in enumerate(buffer):
            if size and size + len(batch) > limit:
                start, size = i, 0
            size += len(batch)
        if not buffer or size + len(buffer[-1]) > limit or self._aged(start):
            return len(buffer)
        return start

    def _flush_soon(self) -> None:
        """Group commit: one background task commits what is due, and the next groups as they fill."""
        if self._timer is not None:     # called by append, not the timer: that timer would only wake us again
            self._timer.cancel()
            self._timer = None
        if self._closing or (self._flush_task is not None and not self._flush_task.done()):
            return                  # the running commit loop arms the timer again when it ends
        if self._due() or (not self._buffer and self._acks_due()):
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_loop())
        else:
            self._flush_later()     # e.g. an ack's timer while a young group fills: wait for the first due

    async def _flush_loop(self) -> None:
        try:
            await self._flush(whole_groups=True)     # the due groups, and the acks if due
            while self._due():              # a group filled (or aged) during that fsync: commit it now
                await self._flush(whole_groups=True)
        except (SpoolError, AuditError) as exc:
            # The readings (and acks) stay buffered; the next append retries, and blocks once max_buffered
            # is reached. An AuditError here is the audit fsync a delete needs first.
            log.error("%s; will retry", exc)
            return
        self._flush_later()                 # what arrived meanwhile: when it falls due

    def _flush_later(self) -> None:
        """Arm the timer for when the buffer falls due (``_due_at``), else the oldest ack
        ``ack_interval_s`` after it was made (``flush_interval_s`` when ``ack()`` awaits it). A full
        group past the pace does not wait for the timer (``append``)."""
        due = self._due_at()
        if due is None or self._closing:
            return
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        # Our own record of the due time: for a time already past, uvloop's call_at returns a Handle
        # without when().
        self._timer_due = due
        self._timer = asyncio.get_running_loop().call_at(due, self._flush_soon)

    async def flush(self) -> None:
        """Commit (fsync) every buffered batch, write their audit records, and delete the acked rows.

        A caller cancelled meanwhile (the drain's sender when its session ends, a poller at shutdown)
        does not cancel the commit: the I/O thread cannot be stopped mid-commit, so the commit's
        bookkeeping must run whatever the caller does, or the committed batches would be buffered
        again and every later commit would fail on their seqs.
        """
        await self._flush(whole_groups=False)

    async def _flush(self, *, whole_groups: bool) -> None:
        task = asyncio.ensure_future(self._flush_locked(whole_groups))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_log_orphan_failure)
            raise

    async def _flush_locked(self, whole_groups: bool) -> None:
        async with self._flush_lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not self._buffer and not self._acks:
                return
            take = self._whole_groups() if whole_groups else len(self._buffer)
            readings = sum(len(batch) for batch in self._buffer[:take])
            # Acks ride on a group's commit once due, or at once when the cap may drop rows (an acked
            # row must not count against it); the deletes they make need the audit fsync'd first.
            take_acks = not whole_groups or self._acks_due() or self._depth + readings > self.max_readings
            if not take and not (take_acks and self._acks):
                return
            if take:
                self._last_commit = asyncio.get_running_loop().time()
            batches, self._buffer = self._buffer[:take], self._buffer[take:]
            arrived, self._arrived = self._arrived[:take], self._arrived[take:]
            self._buffered -= readings
            acks_since, awaited = self._acks_since, self._ack_awaited
            acks, self._acks = (self._acks, []) if take_acks else ([], self._acks)
            if take_acks:
                self._ack_awaited = False
            try:
                # Encoded here, on the loop: the I/O thread then runs little Python between calls that
                # release the GIL (SQLite, write, fsync), so the loop seldom waits for the GIL.
                shapes = list(map(self.points.shape, batches))
                columns = list(map(shared_columns, batches))      # the row and the record share them
                rows = list(map(_row, batches, shapes, columns))
                records = [(batch_record(self.site, batch, shape, cols), shape)
                           for batch, shape, cols in zip(batches, shapes, columns)] if self.audit is not None else []
                new_points, new_shapes = self.points.take_unsaved(), self.points.take_unsaved_shapes()
                try:
                    dropped_range, deleted = await self._run(self._commit_sync, rows, records,
                                                             [(first, last) for first, last, _ in acks], new_points,
                                                             new_shapes, not whole_groups or awaited)
                except BaseException:
                    self.points.give_back(new_points)
                    self.points.give_back_shapes(new_shapes)
                    raise
            except Exception as exc:
                self._buffer[:0] = batches       # keep them, and the acks, for the next attempt
                self._buffered += readings
                self._arrived[:0] = arrived
                self._keep_acks(acks, acks_since, exc)
                raise
            except BaseException:
                self._buffer[:0] = batches
                self._buffered += readings
                self._arrived[:0] = arrived
                self._acks[:0] = acks
                if acks:
                    self._acks_since, self._ack_awaited = acks_since, awaited or self._ack_awaited
                raise
            if deleted is None:             # the audit could not be synced: the rows committed, the acks wait
                self._keep_acks(acks, acks_since, AuditError(f"audit log {self.audit.path}: cannot be synced "
                                                             f"(the ack's delete waits for it)"))
                deleted = []
            for (_, _, waiter), count in zip(acks, deleted):
                if waiter is not None and not waiter.done():
                    waiter.set_result(count)
            if not batches:
                self._update_metrics()
                return
            dropped = dropped_range[2] if dropped_range else 0
            self._remember(batches, dropped_range)
            self._committed_seq = batches[-1].seq_last
            if self.metrics is not None:
                self.metrics.readings_accepted.inc(readings)
                if dropped:
                    self.metrics.spool_dropped.inc(dropped)
            self._update_metrics()
            self.changed.set()

    def _keep_acks(self, acks: list[tuple[int, int, "asyncio.Future[int] | None"]], since: float,
                   exc: Exception) -> None:
        """Queue ``acks`` again (first) for a later commit; an awaiting ``ack()`` gets ``exc``."""
        self._acks[:0] = [(first, last, None) for first, last, _ in acks]
        self._acks_since = since if acks else self._acks_since
        for _, _, waiter in acks:
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)

    def _remember(self, batches: list[ReadingBatch], dropped_range: tuple[int, int, int] | None) -> None:
        """Hold newly committed batches for lease(); forget the ones the size cap dropped, and the
        oldest beyond ``memory_readings`` (those are leased from the database)."""
        recent = self._recent
        recent.extend(batches)
        self._recent_readings += sum(map(len, batches))
        if dropped_range:             # the oldest rows, of this commit too (never its newest)
            while recent and recent[0].seq_first <= dropped_range[1]:
                self._recent_readings -= len(recent.popleft())
        while self._recent_readings > self.memory_readings and len(recent) > 1:
            self._recent_readings -= len(recent.popleft())
            self._memory_from = recent[0].seq_first

    def _commit_sync(self, rows: list[tuple[int, int, int, bytes, int]], records: list[tuple[bytes, Shape]],
                     acks: list[tuple[int, int]], new_points: list[tuple[int, Point]],
                     new_shapes: list[tuple[int, tuple[int, ...]]],
                     retry: bool = True) -> tuple[tuple[int, int, int] | None, list[int] | None]:
        """One transaction: delete the rows inside each acked seq range of ``acks``, insert ``new_points``,
        ``new_shapes``, ``rows`` (``_row``) and ``next_seq`` and record the audit's last fsync in ``meta``;
        then write their audit
        ``records`` (``batch_record`` and the batch's shape), in seq order, fsync'd only when
        ``AuditLog.sync_due``. Returns the size cap's dropped range (or None) and how many readings each
        ack deleted (None when the audit could not be synced for them: the rows committed without the
        acks, which the caller keeps for a later commit; with no rows the AuditError is raised).
        ``retry`` False: while the audit backs off after a failure (``AuditLog.backoff_in``) the
        deletes that need its fsync are not tried now (each try writes every buffered record again).

        Nothing after the COMMIT raises: an error there is logged, the commit reported done (the
        caller buffering committed batches again would fail every later commit on their seqs).

        With new rows the commit is fsync'd (``synchronous=FULL``) and the acks ride along for free;
        acks alone commit with ``synchronous=NORMAL`` (losing one to power loss only re-sends rows).
        Rows leave the table only once their records are durable: the audit is fsync'd before a
        transaction that deletes rows whose records may not be (acks), and the size cap's drop, which
        may take rows of this very commit, runs after the commit in a transaction of its own, once the
        new rows' records and the ``drop`` record are fsync'd. A row whose record a crash or power loss
        took is still in the spool, and is audited again at the next start (``_reaudit_sync``, after
        ``AuditLog.open`` cut the file at the first record lost)."""
        db = self._db
        assert db is not None
        added = sum(row[1] - row[0] + 1 for row in rows)
        deleted: list[int] | None = []
        if acks:
            try:
                self._audit_durable_sync(max(last for _, last in acks), retry)
            except AuditError as exc:
                if not rows:
                    raise
                log.error("%s; the new rows commit now, the acks' deletes wait for a later commit", exc)
                acks, deleted = [], None
        try:
            db.execute("PRAGMA synchronous=FULL" if rows else "PRAGMA synchronous=NORMAL")
            with transaction(db):
                for first, last in acks:
                    deleted.append(sum(n for (n,) in db.execute(
                        "DELETE FROM batches WHERE seq_first >= ? AND seq_last <= ? "
                        "RETURNING seq_last - seq_first + 1", (first, last)).fetchall()))
                if new_points:
                    db.executemany("INSERT OR REPLACE INTO points (id, data, crc) VALUES (?, ?, ?)",
                                   [_point_row(pid, point) for pid, point in new_points])
                if new_shapes:
                    db.executemany("INSERT OR REPLACE INTO shapes (id, data, crc) VALUES (?, ?, ?)",
                                   [_point_row(sid, ids) for sid, ids in new_shapes])
                if rows:
                    db.executemany("INSERT INTO batches (seq_first, seq_last, accepted_ms, data, crc) "
                                   "VALUES (?, ?, ?, ?, ?)", rows)
                    db.execute("INSERT INTO meta (key, value) VALUES ('next_seq', ?) "
                               "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (rows[-1][1] + 1,))
                marked = self._mark_in_transaction(forget_held=True)
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: commit of {len(rows)} batches and {len(acks)} acks failed "
                             f"({exc})") from exc
        self._marked(*marked)
        self._acked_deleted += sum(last - first + 1 for first, last in acks)    # before _depth: see __init__
        self._depth += added - sum(deleted or ())
        if self.audit is not None and rows:
            for (record, shape), row in zip(records, rows):
                self.audit.add_batch_record(record, row[1], shape, self.points)
            try:
                # Not fsync'd each commit: the rows stay in the spool until their records are durable.
                self._sync_audit() if self.audit.sync_due() else self.audit.write()
            except AuditError as exc:
                # The rows are committed: failing the commit would buffer them again and every later
                # commit would fail on their seqs. Their records stay buffered in the audit log and go
                # out with the next write; until then no row leaves the spool (deletes sync first).
                log.error("%s; the %d committed batches' records stay buffered for the next write", exc, len(rows))
            self.audit.bound()
        overflow = self._depth - self.max_readings
        dropped_range = self._drop_oldest_sync(overflow, rows[-1][0], retry) if rows and overflow > 0 else None
        dropped = dropped_range[2] if dropped_range else 0
        self._depth -= dropped
        if not self._depth:
            self._oldest_ms = None
        elif self._oldest_ms is None or dropped or any(deleted or ()):
            try:
                self._oldest_ms = self._min_accepted_sync()
            except sqlite3.Error as exc:        # only the age gauge is stale until the next commit
                log.error("spool %s: cannot read the oldest row's age (%s)", self.path, exc)
        if dropped_range:
            self.dropped_total += dropped
            log.warning("spool full (%d readings): dropped the %d oldest, seq %d..%d (audited)",
                        self.max_readings, dropped, dropped_range[0], dropped_range[1])
        return dropped_range, deleted

    def _drop_oldest_sync(self, overflow: int, below: int, retry: bool = True) -> tuple[int, int, int] | None:
        """The size cap: delete the oldest whole rows (seq_first < ``below``) holding at least ``overflow``
        readings, in a transaction of its own after the ``drop`` record and every dropped row's record are
        fsync'd; the range dropped (first, last, readings), or None (nothing older, or the audit cannot be
        synced, or backs off after a failure and ``retry`` is False, or SQLite fails: no row leaves, the
        next commit tries again).

        A power loss, or a SQLite error, between that fsync and the delete's commit leaves a ``drop`` record
        for rows still spooled: the next commit that finds the spool over the cap drops them again, under
        another record; if none does, they are delivered, and the audit names them dropped too."""
        db = self._db
        assert db is not None
        if self.audit is not None and not retry and self.audit.backoff_in():
            return None
        first = last = None
        count = 0
        try:
            for seq_first, seq_last in db.execute("SELECT seq_first, seq_last FROM batches WHERE seq_first < ? "
                                                  "ORDER BY seq_first", (below,)):
                first = seq_first if first is None else first
                last = seq_last
                count += seq_last - seq_first + 1
                if count >= overflow:
                    break
        except sqlite3.Error as exc:
            log.error("spool full (%d readings): cannot find the oldest rows now (%s); the next commit tries again",
                      self.max_readings, exc)
            return None
        if first is None or last is None:
            return None
        try:
            if self.audit is not None:
                if self.audit.behind:
                    self._audit_durable_sync(last)  # the dropped rows audited again before the drop record
                record = self.audit.event("drop", site=self.site, seq_first=first, seq_last=last, count=count)
                try:
                    self.audit.sync()
                except AuditError:
                    self.audit.withdraw(record)     # not dropped: the next commit over the cap tries again
                    raise
            db.execute("PRAGMA synchronous=NORMAL")     # the drop record is durable: a lost delete is redone
            with transaction(db):
                db.execute("DELETE FROM batches WHERE seq_first <= ?", (last,))
                marked = self._mark_in_transaction()
        except (AuditError, sqlite3.Error) as exc:
            log.error("spool full (%d readings): cannot drop seq %d..%d now (%s); the next commit tries again",
                      self.max_readings, first, last, exc)
            return None
        self._marked(*marked)
        return first, last, count

    def _min_accepted_sync(self) -> int | None:
        assert self._db is not None
        row = self._db.execute("SELECT accepted_ms FROM batches ORDER BY seq_first LIMIT 1").fetchone()
        return row[0] if row else None

    # -- leasing and acknowledging -----------------------------------------
    async def audit_event(self, kind: str, fields: dict[str, Any]) -> None:
        """Write one event record (e.g. a command or a Modbus write) to the audit log now, fsync'd,
        on the spool's I/O thread (the audit log's only writer). Raises AuditError; no-op without a log."""
        if self.audit is not None:
            await self._run(self._audit_event_sync, kind, fields)

    def _audit_event_sync(self, kind: str, fields: dict[str, Any]) -> None:
        assert self.audit is not None
        self.audit.event(kind, **fields)
        self.audit.sync()                   # not the catch-up of let-go rows: a command does not wait for it

    async def lease(self, n: int) -> list[ReadingBatch]:
        """The next committed, unleased batches in seq order: at most ``n`` readings, but at least one
        batch even when it alone is larger (corrupt rows are quarantined)."""
        if n < 1 or not self.pending:
            return []
        if self._lease_cursor + 1 >= self._memory_from:
            return self._lease_memory(n)
        # Acked rows stay in the table until the commit that deletes them: skipped, not leased again (a
        # flush here made every lease of a backlog replay a commit and an audit fsync of its own).
        acked = tuple((first, last) for first, last, _ in self._acks)
        batches, cursor, quarantined = await self._run(self._lease_sync, self._lease_cursor, n, acked)
        self._lease_cursor = max(self._lease_cursor, cursor)
        if quarantined:
            self._update_metrics()
            if self.metrics is not None:
                self.metrics.spool_quarantined.inc(quarantined)
        return batches

    def _lease_memory(self, n: int) -> list[ReadingBatch]:
        out: list[ReadingBatch] = []
        taken = 0
        cursor = self._lease_cursor
        for batch in self._recent:
            if batch.seq_first <= cursor:
                continue
            if out and taken + len(batch) > n:
                break
            out.append(batch)
            taken += len(batch)
        if out:
            self._lease_cursor = out[-1].seq_last
        else:
            self._lease_cursor = max(cursor, self._committed_seq)
        return out

    def _lease_sync(self, after: int, n: int,
                    acked: tuple[tuple[int, int], ...] = ()) -> tuple[list[ReadingBatch], int, int]:
        db = self._db
        assert db is not None
        out: list[ReadingBatch] = []
        taken = 0
        cursor = after
        quarantined = 0
        while taken < n:
            fetched = db.execute("SELECT seq_first, seq_last, accepted_ms, data, crc FROM batches "
                                 "WHERE seq_first > ? ORDER BY seq_first LIMIT ?", (cursor, n - taken)).fetchall()
            if not fetched:
                cursor = max(cursor, self._committed_seq)
                break
            for seq_first, seq_last, accepted_ms, data, crc in fetched:
                if acked and any(first <= seq_first and seq_last <= last for first, last in acked):
                    cursor = seq_last                   # acked, its DELETE not committed yet
                    continue
                if out and taken + seq_last - seq_first + 1 > n:
                    return out, cursor, quarantined
                try:
                    if not isinstance(data, bytes) or zlib.crc32(data) != crc:
                        raise SpoolCorrupt(f"spool row seq {seq_first}..{seq_last}: checksum mismatch")
                    batch = _decode(seq_first, seq_last, accepted_ms, data, self.points)
                except (SpoolCorrupt, ValueError, TypeError) as exc:
                    cursor = seq_last
                    try:
                        self._quarantine_sync(seq_first, seq_last, accepted_ms, data, crc, str(exc))
                    except AuditError as failed:        # its record first: the row waits, delivery goes on
                        log.error("spool row seq %d..%d is corrupt (%s) and stays until the audit log can be "
                                  "synced (%s); skipped for now", seq_first, seq_last, exc, failed)
                        continue
                    quarantined += 1
                    continue
                cursor = seq_last
                out.append(batch)
                taken += len(batch)
        return out, cursor, quarantined

    def _quarantine_sync(self, seq_first: int, seq_last: int, accepted_ms: int, data: Any, crc: int,
                         reason: str) -> None:
        db = self._db
        assert db is not None
        self._audit_durable_sync(seq_last)        # the row leaves the table: its batch record first
        with transaction(db):
            db.execute("INSERT INTO quarantine (seq, seq_last, accepted_ms, data, crc, reason, quarantined_ms) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (seq_first, seq_last, accepted_ms, data, crc, reason, int(self.clock() * 1000)))
            db.execute("DELETE FROM batches WHERE seq_first = ?", (seq_first,))
            marked = self._mark_in_transaction()
        self._marked(*marked)
        self._depth -= seq_last - seq_first + 1
        self.quarantined_total += 1
        self._oldest_ms = self._min_accepted_sync()
        if self.audit is not None:
            self.audit.event("quar", site=self.site, seq=seq_first, seq_last=seq_last, reason=reason)
            self._sync_audit()
        log.error("spool row seq %d..%d is corrupt (%s): moved to the quarantine table (audited)",
                  seq_first, seq_last, reason)

    def release_leases(self) -> None:
        """Make every leased, unacked row leasable again (after a disconnect)."""
        self._lease_cursor = 0
        if self._depth:
            self.changed.set()

    async def ack(self, first: int, last: int) -> int:
        """Delete the rows within seq ``first..last`` (inclusive) after the broker's PUBACK; returns
        how many readings they held. A row that reaches outside the range stays. Raises SpoolError
        when the commit fails (the delete is then retried with the next commit).

        The delete rides on the next group commit (``ack_nowait``), so this returns within about
        ``flush_interval_s``."""
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue_ack(first, last, waiter)
        return await waiter

    def ack_nowait(self, first: int, last: int) -> None:
        """``ack`` without waiting: the rows within seq ``first..last`` are never leased again and are
        deleted in the next commit's transaction (one transaction for the new rows and every ack
        since the last one); when nothing is waiting to be committed, within ``flush_interval_s``."""
        self._queue_ack(first, last, None)

    def _queue_ack(self, first: int, last: int, waiter: "asyncio.Future[int] | None") -> None:
        if self._closing or self._executor is None:
            # Closing: the last commit ran or is running. An ack lost only re-sends rows after the restart.
            if waiter is not None:
                waiter.set_exception(SpoolError(f"spool {self.path}: not open"))
            return
        if not self._acks:
            self._acks_since = asyncio.get_running_loop().time()
        self._acks.append((first, last, waiter))
        self._acked_total += last - first + 1
        self._ack_awaited = self._ack_awaited or waiter is not None
        self._forget(first, last)
        self._flush_later()             # an ack alone never hurries a commit: it rides on the next one due

    def _forget(self, first: int, last: int) -> None:
        """Let go of the held batches within seq ``first..last`` (acked): usually the oldest ones."""
        recent = self._recent
        while recent and recent[0].seq_first >= first and recent[0].seq_last <= last:
            self._recent_readings -= len(recent.popleft())
        if recent and recent[0].seq_first < first <= recent[-1].seq_last:
            kept = deque(b for b in recent if not first <= b.seq_first <= b.seq_last <= last)
            self._recent, self._recent_readings = kept, sum(map(len, kept))

    async def quarantined(self) -> list[tuple[int, str]]:
        """(first seq, reason) of every quarantined row."""
        return await self._run(lambda: self._db.execute(  # type: ignore[union-attr]
            "SELECT seq, reason FROM quarantine ORDER BY seq").fetchall())

    # -- metrics -----------------------------------------------------------
    @property
    def _oldest_unacked_ms(self) -> int | None:
        """The acceptance time of the oldest committed, unacked row: the oldest held in memory when every
        unacked row is held there (acked ones are let go at once), else the oldest in the table (an acked
        row whose delete waits may count then)."""
        unacked = self.depth
        if not unacked:
            return None
        if self._acked_pending and self._recent and unacked == self._recent_readings:
            return self._recent[0].accepted_ms
        return self._oldest_ms

    def oldest_age_s(self) -> float:
        oldest = self._oldest_unacked_ms
        return 0.0 if oldest is None else max(0.0, self.clock() - oldest / 1000)

    def refresh_metrics(self) -> None:
        """Set the depth and oldest-unacked-age gauges (the age grows while nothing happens: call it periodically)."""
        self._update_metrics()

    def _update_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.spool_depth.set(self.depth)
            self.metrics.spool_oldest_age.set(self.oldest_age_s())


_MARK_KEYS = ("audit_dev", "audit_ino", "audit_offset", "audit_seq", "audit_crc")


def _read_mark(db: sqlite3.Connection) -> AuditMark | None:
    """The audit position ``meta`` records (None when it records none: a spool of an older agent, which
    fsync'd every commit; without ``audit_crc``: written before it was recorded); a damaged one names no
    file (the audit log is then read whole, cut only in the region that can be unsynced)."""
    stored = {key: value for key, value in db.execute("SELECT key, value FROM meta") if key in _MARK_KEYS}
    if not stored:
        return None
    values = [stored.get(key) for key in _MARK_KEYS]
    if "audit_crc" not in stored:
        values[-1] = 0
    if not all(type(v) is int and v >= 0 for v in values):
        log.error("spool: the audit log position in table meta is damaged (%s): checking the whole audit log",
                  dict(zip(_MARK_KEYS, values)))
        return AuditMark((-1, -1), 0, 0)
    dev, ino, offset, seq, crc = values
    return AuditMark((dev, ino), offset, seq, crc if "audit_crc" in stored else None)


def _write_mark(db: sqlite3.Connection, mark: AuditMark) -> None:
    db.executemany("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                   zip(_MARK_KEYS, (*mark.identity, mark.offset, mark.seq, mark.crc or 0)))


def _upgrade_sync(db: sqlite3.Connection) -> None:
    """Convert a spool of an older agent (one row per reading in table ``spool``) into one-reading batches."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='spool'").fetchone():
        return
    columns = {row[1] for row in db.execute("PRAGMA table_info(quarantine)")}
    with transaction(db):
        if "seq_last" not in columns:
            db.execute("ALTER TABLE quarantine ADD COLUMN seq_last INTEGER")
        rows = db.execute("SELECT seq, accepted_ms, data, crc FROM spool ORDER BY seq").fetchall()
        converted = []
        for seq, accepted_ms, data, crc in rows:
            try:
                if zlib.crc32(data) != crc:
                    raise ValueError("checksum mismatch")
                ts_ms, asset, point, value, unit, quality, sensor = json.loads(data)
                data = json.dumps([[ts_ms], [asset], [point], [value], [unit], [quality], [sensor]],
                                  separators=(",", ":"), allow_nan=False).encode()
                crc = zlib.crc32(data)
            except (ValueError, TypeError):
                pass              # kept as it is: lease() finds the bad checksum or shape and quarantines it
            converted.append((seq, seq, accepted_ms, data, crc))
        db.executemany("INSERT INTO batches (seq_first, seq_last, accepted_ms, data, crc) VALUES (?, ?, ?, ?, ?)",
                       converted)
        db.execute("DROP TABLE spool")
    if converted:
        log.info("spool: converted %d readings of an older agent into one-reading batches", len(converted))
