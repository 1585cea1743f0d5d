"""Append-only telemetry audit log with a CRC32 per record, and its verifier.

One line per record::

    <crc32 of the JSON, 8 lowercase hex digits> <JSON object>\\n

Record kinds (``k``):

==========  ==================================================================
``b``       one accepted batch (one spool row): site, seq_first, seq_last, at_ms
            (when it was spooled), then either the *point form* (written now):
            the points, as ``s`` (a shape number, defined by an ``sh`` record
            earlier in the same file) or as ``p`` (each reading's point id,
            defined by a ``pt`` record earlier in the same file; the only form
            of agents before shapes), ``value`` (a list), ``q`` (a list, or
            one value shared by every reading) and ``ts_ms`` (one shared value,
            runs ``[[ts_ms, count], ...]`` in reading order — a device read as
            several blocks — or a list: ``edge_agent.batch.time_column``); or the *column form*
            (older agents, and batches re-audited after a crash): one list per
            field, ts_ms, asset, point, sensor, value, unit, q
``sh``      a batch shape: ``id`` (its number) and ``p`` (a list: each reading's
            point id, in order, defined by a ``pt`` record before it); the ``b``
            records after it with ``s`` equal to ``id`` have those points. A
            number is defined before its first use in every file, and may be
            defined again (an agent restarted on the same file numbers its
            shapes afresh): the latest definition before a record is its own.
            A device read repeats its shape, so its record names it by number;
            shapes of fewer than 8 readings, and those after the first 4096 an
            agent numbered (filtered batches make arbitrary subsets), keep ``p``
``pt``      point definitions: ``id`` (a list) and, per id, its ``asset``,
            ``point``, ``unit`` and ``sensor`` (lists of the same length); an id
            always names the same point (``edge_agent.point_table``); every
            file defines the ids its records use before the first use
``r``       one accepted reading (written by agents before batches; still read):
            site, seq, ts_ms, asset, point, sensor, value, unit, q, at_ms
``drop``    readings the full spool dropped (oldest first): site, seq_first, seq_last,
            count
``quar``    a spool row that was quarantined (its checksum failed, it could not be
            decoded, or its seq range or acceptance time was unusable): site, seq
            (its first), seq_last (absent when unusable, and from agents before
            batches), reason
``repair``  the records cut at start-up from the first bad, torn or zeroed one on (a power loss
            before their fsync): bytes, at_offset
``cmd``     one command message and what was decided (``edge_agent.commands``): id (null when
            the payload had none), control, value, issued_ms, expires_ms, event, decision
            (accepted, rejected, expired), reason; a malformed one carries bytes and sha256
``write``   one Modbus write for a command or the fail-safe: id, control, device, unit,
            register, address, registers (raw), value, failsafe, outcome (applied, failed),
            readback, reason; ``recovered`` when a restart found the write's outcome
``cont``    the first record of a file opened after rotation: prev_crc (the CRC of the
            previous file's last record), last_seq (the highest seq audited before it)
==========  ==================================================================

The log is written only by the spool's I/O thread. Lines are buffered with
:meth:`AuditLog.add_batch_record` / :meth:`AuditLog.event`; after each spool
commit they are written (:meth:`AuditLog.write`), not fsync'd. :meth:`AuditLog.sync`
writes and fsyncs: the spool calls it before any transaction that deletes rows
whose records are not durable yet (acks, the size cap's drop, a quarantine),
for events that must be durable at once (``cmd``, ``write``, ``quar``), at
open, close and reopen, and at the first commit :data:`SYNC_INTERVAL_S` (1 s)
after the last fsync or before a write would leave :data:`SYNC_BYTES` (4 MiB)
unsynced (asked at commits only). A failed write or fsync cuts the file back to
its last fsync'd size and buffers every record written since, to be written
whole again, by an fsync 1 s later (doubling up to 30 s while it keeps failing;
meanwhile nothing is written but what :meth:`AuditLog.sync` is asked for). The
records held are bounded: past :data:`MAX_BUFFERED_BYTES` the batch records are let
go (events kept) and the spool audits their rows again from its table once a sync
succeeds (:attr:`AuditLog.behind`, :meth:`AuditLog.let_go`). When the file cannot be cut back, nothing more
is written until the next start.

The invariant (with ``edge_agent.spool``): **no spool row is deleted before its
record is durable, and after a crash or power loss every committed row not
deleted has exactly one record.** (One exception: rows the spool finds unusable
at open are moved to its quarantine table before this log is opened and checked;
their ``quar`` records follow.) Rows may be leased and published before their
record is fsync'd. The spool records in its ``meta`` table, in the transaction
that deletes rows (and in any commit's, when it moved), the :class:`AuditMark`
of the last fsync: the file's (st_dev, st_ino), its size then, the CRC of the
record ending there and the highest seq audited by then; every byte before that
offset is durable. A power loss can keep a later page of the unsynced region and
lose an earlier one, so :meth:`AuditLog.open` finds the offset by content (the
record ending there has that CRC: a copied or restored file, a renumbered device
still match), CRC-checks every record after it (at most :data:`SYNC_BYTES`, and
1 s of records at the commits' pace; nothing after a clean close), and
at the first bad, torn or zeroed one cuts the file and writes a ``repair``
record. Records are written in seq order, so every row up to the last good
record's seq keeps its record and the spool re-audits the rows above it
(:attr:`AuditLog.last_seq`; the records after the cut were never fsync'd, so no
row they audit was deleted). When the position is not in the file at the path
(replaced, or renamed without the reopen recorded, shorter than the offset, or
the mark damaged), the whole file is read (time proportional to its size) but
cut only within its last :data:`SYNC_BYTES`, all a writer can have left unsynced
(``sync_due`` counts the records about to be written: no write leaves more); a
bad record before them is durable damage, logged for ``verify`` to report, and
:attr:`AuditLog.last_seq` is at least the mark's seq (those rows' records
are durable in the file the mark names): rows above it may then be audited in
both files, never in neither. (When logrotate renamed the file and the power
went before the agent's reopen, the unsynced records, and any hole, are in the
renamed file: ``verify`` reports a hole there; the rows above the mark's seq
are audited again in the new file.) The durable region before the offset is
not checked again: a record damaged there is reported by ``verify``, not cut. A spool with no mark (written by agents that
fsync'd every commit) gets their check: the tail, a torn last line cut.

:func:`verify` reports the totals (readings counted one by one, whatever records carry them) and the first
corrupt record (1-based line and byte offset); a point-form ``b`` record whose
ids no earlier ``pt`` record of its file defines, or whose shape number no earlier
``sh`` record of its file defines (or defines with another number of points than
its seq range holds), is corrupt (the file would not say what was read), and so
is an ``sh`` record naming ids no earlier ``pt`` record defines.

Rotation (logrotate renames the file, then sends SIGHUP): :meth:`AuditLog.reopen`
opens the new file at the same path (fsyncing the folder) and starts it with a
``cont`` record, fsync'd, so the files form one chain; the spool records the new
file's mark at once. :func:`verify` given every file oldest first checks
each link (the ``cont`` record names the previous file's last CRC and the seq
reached) besides every record; :func:`rotated_files` lists a log's rotations
(``NAME.1``, ``NAME.2.gz``, ...) oldest first. Files ending in ``.gz`` are read
through gzip.

Defaults: path ``/var/log/ems/telemetry-audit.log``, file mode 0640.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import orjson

from edge_agent.audit_records import record_problem
from edge_agent.batch import ReadingBatch, expand_times
from edge_agent.point_table import Columns, PointTable, Shape, shared_columns
from ems_contract.telemetry import MAX_INT64, check_finite
from edge_agent.errors import AuditCorrupt, AuditError
from edge_agent.seq_ranges import SeqRanges

__all__ = ["DEFAULT_AUDIT_PATH", "AuditLog", "AuditMark", "SYNC_INTERVAL_S", "SYNC_BYTES", "batch_record", "AuditSummary", "AuditContents", "verify", "read_audit",
           "rotated_files", "encode_record", "decode_record", "BatchShapes"]

log = logging.getLogger(__name__)

DEFAULT_AUDIT_PATH = Path("/var/log/ems/telemetry-audit.log")
_TAIL_BYTES = 256 * 1024
_SCAN_CHUNK = 1 << 20
SYNC_INTERVAL_S = 1.0
"""Records written after a commit are fsync'd at the latest by the first commit this long after the last fsync."""
SYNC_BYTES = 4 << 20
"""... or once this many bytes are written and not fsync'd: with the interval, the bound on what an open checks."""
RETRY_MIN_S, RETRY_MAX_S = 1.0, 30.0
"""After a failed write or fsync the lazy writes and due fsyncs wait, 1 s doubling up to 30 s, before the next try."""
MAX_BUFFERED_BYTES = 64 << 20
"""The most record bytes held in memory while the file cannot be written: past it the batch records
(and their ``pt``/``sh`` definitions) are let go (:attr:`AuditLog.behind`); events are always kept."""
_DAMAGED_LOGGED = 3     # damaged records an open logs one by one (then their count)
HELD_KINDS = frozenset({"cmd", "write", "quar", "repair", "drop"})
"""The event records kept across a stop when the file takes no writes (:meth:`AuditLog.hand_over`): not the
batch records and their definitions (audited again from the spool), nor ``cont`` (it belongs to one file)."""
MAX_HELD_RECORD_BYTES = 64 * 1024
"""The largest event record :meth:`AuditLog.hold` takes back (a ``cmd`` record with its 4 KiB command is far below)."""
_BATCH_KINDS = (b'{"k":"b",', b'{"k":"pt",', b'{"k":"sh",')     # encode_record writes "k" first
_HELD_PREFIXES = tuple(b'{"k":"%s",' % kind.encode() for kind in sorted(HELD_KINDS))   # of our own records


@dataclass(frozen=True)
class AuditMark:
    """What the spool records, in the transaction that deletes rows, of the audit file's last fsync: the
    file's identity (st_dev, st_ino), its size then (every byte before is durable) and the highest seq
    its records audited by then."""

    identity: tuple[int, int]
    offset: int
    seq: int
    crc: int | None = None
    """The CRC of the record ending at ``offset`` (0 when it is 0): names the position by content, so a copied
    or restored file, or a renumbered device, still matches; None in a mark written before it was recorded."""


def _identity(st: os.stat_result) -> tuple[int, int]:
    """(st_dev, st_ino), each cut to 63 bits so that SQLite's INTEGER holds it."""
    return st.st_dev & MAX_INT64, st.st_ino & MAX_INT64


def _fsync_folder(folder: Path) -> None:
    """fsync a directory, so that a file created in it keeps its name after a power loss."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BatchShapes:
    """Process-wide numbers of batch shapes, for the ``s`` reference of point-form batch records.

    :func:`batch_record` (on the event loop) numbers a shape at its first use; the audit writer (the
    spool's I/O thread) looks the number up to define it in its file (``sh``) before the first record
    naming it. A number, once given, names the same point ids for the life of the process: the map from
    ids to number only grows, so the writer always finds the number a record was given. Bounded:
    shapes of fewer than ``min_points`` readings, and every shape after the first ``limit``, get no
    number (their records keep ``p``)."""

    def __init__(self, *, limit: int = 4096, min_points: int = 8) -> None:
        self.limit, self.min_points = limit, min_points
        self._by_ids: dict[tuple[int, ...], int] = {}
        self._by_shape: dict[Shape, int] = {}      # the same, by Shape identity: one lookup, no tuple hash

    def number(self, shape: Shape, *, assign: bool = True) -> int | None:
        """``shape``'s number, giving it one when ``assign`` (only on the thread that encodes records)."""
        number = self._by_shape.get(shape)
        if number is not None:
            return number
        number = self._by_ids.get(shape.ids)
        if number is None:
            if not assign or len(shape.ids) < self.min_points or len(self._by_ids) >= self.limit:
                return None
            number = self._by_ids[shape.ids] = len(self._by_ids) + 1
        if assign:
            if len(self._by_shape) >= self.limit:      # Shape objects a point table dropped and rebuilt
                self._by_shape.clear()
            self._by_shape[shape] = number
        return number


SHAPES = BatchShapes()
"""The numbers :func:`batch_record` gives shapes (read by every :class:`AuditLog`)."""


def encode_record(body: dict[str, Any]) -> bytes:
    """One audit line (with its trailing newline) for ``body``; a batch's values must be finite
    (``AuditLog.batch`` checks them: orjson would write NaN as null)."""
    data = orjson.dumps(body)
    return b"%08x %s\n" % (zlib.crc32(data), data)


def held_record_ok(record: object) -> bool:
    """``record`` is a whole audit line (newline included, at most :data:`MAX_HELD_RECORD_BYTES`) whose CRC
    and content check, of one of the :data:`HELD_KINDS`."""
    return (type(record) is bytes and len(record) <= MAX_HELD_RECORD_BYTES and record.endswith(b"\n")
            and b"\n" not in record[:-1] and _kind(record) in HELD_KINDS)


def _kind(record: bytes) -> str | None:
    """The ``k`` of a whole audit line (newline included) that decodes and checks, else None."""
    try:
        body = decode_record(record[:-1])
    except ValueError:
        return None
    kind = body.get("k") if isinstance(body, dict) else None
    return kind if isinstance(kind, str) else None


def decode_record(line: bytes) -> dict[str, Any]:
    """Parse and check one audit line (without newline); raises ValueError saying what is wrong (the CRC,
    the JSON, or a field: ``edge_agent.audit_records``)."""
    if len(line) < 10 or line[8:9] != b" ":
        raise ValueError("not '<crc32> <json>'")
    try:
        expected = int(line[:8], 16)
    except ValueError:
        raise ValueError("CRC field is not hexadecimal") from None
    data = line[9:]
    actual = zlib.crc32(data)
    if actual != expected:
        raise ValueError(f"CRC mismatch (stored {expected:08x}, computed {actual:08x})")
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"CRC matches but JSON is invalid: {exc}") from None
    problem = record_problem(body)      # the CRC matched, the content may still be malformed
    if problem is not None:
        raise ValueError(problem)
    return body


def batch_record(site: str, batch: ReadingBatch, shape: Shape | None = None, columns: Columns | None = None) -> bytes:
    """The audit line of one accepted, sequenced batch; ValueError for a NaN or infinite value.

    With the batch's ``shape`` (``PointTable.shape``) the point form, naming the shape by its number
    (:data:`SHAPES`) or its ids, which :meth:`AuditLog.add_batch_record` defines in the file first
    (with ``columns``, the batch's ``shared_columns`` already encoded for its spool row); else the
    column form.
    """
    if shape is not None:
        ts, value, quality = columns or shared_columns(batch)
        number = SHAPES.number(shape)
        key, names = ("p", shape.p_json) if number is None else ("s", number)
        return encode_record({
            "k": "b", "site": site, "seq_first": batch.seq_first, "seq_last": batch.seq_last,
            "at_ms": batch.accepted_ms, "ts_ms": ts, key: names, "value": value, "q": quality})
    check_finite(batch.value)
    return encode_record({
        "k": "b", "site": site, "seq_first": batch.seq_first, "seq_last": batch.seq_last,
        "at_ms": batch.accepted_ms, "ts_ms": batch.ts_ms, "asset": batch.asset, "point": batch.point,
        "sensor": batch.sensor, "value": batch.value, "unit": batch.unit, "q": batch.quality})


class AuditLog:
    """The writer. Not thread-safe: one thread (the spool's) owns it.

    ``open()`` creates the directory and file, cuts a torn last line (recorded
    as a ``repair`` record) and finds :attr:`last_seq`, the highest audited
    reading seq. Raises :class:`AuditError` when the file cannot be opened.
    """

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_AUDIT_PATH, *, clock=time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self.last_seq = 0
        self.last_crc: str | None = None     # CRC of the last record written, carried into the next file
        self._fh = None
        self._buffer: list[bytes] = []
        self._buffered_bytes = 0               # len of the buffered records together
        self.behind = False                    # batch records above durable_seq let go: the spool audits those rows again
        self.durable_seq = 0                   # last_seq at the last fsync: every row up to it has a durable record
        self.fsyncs = 0                        # successful fsyncs: one after a record was buffered makes it durable
        self.checked_from = 0                  # where the last open's check began (the mark's offset, or 0)
        self._stranded: list[bytes] = []       # event records a broken log could not write (hand_over)
        self.scanned = 0                       # bytes the last open() checked
        self.damaged = 0                       # damaged records it read past in the region fsync'd before (not cut)
        self._durable = 0                      # the file's size at the last fsync
        self._durable_crc: str | None = None   # the CRC of the record ending there
        self._written = 0                      # its size after the last write
        self._unsynced: list[bytes] = []       # records written since the last fsync (written again if it fails)
        self._unsynced_bytes = 0
        self._synced_at = time.monotonic()
        self._broken: str | None = None       # why the file could not be cut back: nothing is written until reopened
        self._retry_at = 0.0                   # monotonic time before which only sync() tries the disk again
        self._backoff = 0.0
        self._defined: set[int] = set()        # point ids a ``pt`` record of the open file defines
        self._shapes: set[Shape] = set()       # shapes whose ids (and number) are defined (a cache of that check)
        self._numbered: set[int] = set()       # shape numbers an ``sh`` record of the open file defines

    def open(self, mark: AuditMark | None = None) -> None:
        """Open (creating it, and fsyncing its folder, when missing) and check the file; fsync it.

        ``mark`` is what the spool recorded of the last audit fsync (:meth:`mark`). When it names
        this file, every record after its offset is CRC-checked; without it the older agents'
        rule holds (each commit was fsync'd: only the tail is read, a torn last line cut); when it
        names another file, or an offset the file does not have, the whole file is checked. At the
        first bad, torn or zeroed record the file is cut, and a ``repair`` record says where and
        how much. :attr:`last_seq` is then the highest seq the kept records (or ``mark``) audit.

        Raises AuditError when the file cannot be opened, read, cut or fsync'd. When only the ``repair``
        record cannot be written (a full disk) the log opens anyway, as a log whose writes failed at
        run time: the checked records are durable (fsync'd before), the record stays buffered and
        goes first once the file takes writes, and the next tries back off.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
        except OSError as exc:
            raise AuditError(f"audit log {self.path}: cannot open ({exc.strerror or exc})") from exc
        self._fh = os.fdopen(fd, "r+b", buffering=0)
        self._defined.clear()                  # each file defines the point ids it uses (again)
        self._shapes.clear()
        self._numbered.clear()
        self._unsynced.clear()
        self._unsynced_bytes = 0
        self._broken = None
        try:
            if created:
                _fsync_folder(self.path.parent)    # the new file's name survives a power loss too
            size = os.fstat(fd).st_size
            start = self._scan_start(mark, size)
            self.checked_from = start[0] if start is not None else 0
            cut_at = self._scan(*start, size) if start is not None else self._scan_tail(size)
            if cut_at is not None:
                os.ftruncate(fd, cut_at)
                self._written = self._durable = cut_at
            # What survived a crash may be in the page cache only: the checked records durable, and with
            # them durable_seq (the spool deletes rows, and records its mark, by it). Needs no free space.
            self._fsync()
        except OSError as exc:
            self._fh.close()
            self._fh = None
            raise AuditError(f"audit log {self.path}: cannot check ({exc.strerror or exc})") from exc
        except AuditError:
            self._fh.close()
            self._fh = None
            raise
        if cut_at is not None:
            self.event("repair", bytes=size - cut_at, at_offset=cut_at)
        try:
            self.sync()
        except AuditError as exc:
            if self._broken is not None:       # not even cut back: nothing could be written in this run
                self._fh.close()
                self._fh = None
                raise
            log.error("%s; opened anyway: its records are held until it takes writes, and the spooled rows "
                      "stay until they are durable", exc)

    def _scan_start(self, mark: AuditMark | None, size: int) -> tuple[int, int] | None:
        """Where the check of a file of ``size`` bytes starts, and from where a bad record is cut (None: the
        tail only, the older agents' rule).

        The mark's position is found by content: the record ending at its offset has the CRC it names
        (a mark written before the CRC was recorded: the file's identity instead). When it is not there
        (another file, a shorter one, a damaged mark) every record is read, for :attr:`last_seq`, but
        only the last :data:`SYNC_BYTES` can have been written and not fsync'd (``sync_due``): a bad
        record there is cut; one before is durable damage, logged and left for ``verify`` to report
        (cutting it would delete the records of rows long deleted)."""
        self._durable = self._written = size
        self.scanned = self.damaged = 0
        if mark is None:
            return None
        self.last_seq = max(self.last_seq, mark.seq)       # audited, durably, in this file or the one before
        held = os.fstat(self._fh.fileno())                 # type: ignore[union-attr]
        crc = self._crc_ending_at(mark.offset) if mark.offset <= size else None
        same = mark.identity == _identity(held)
        if crc is not None and (crc == mark.crc and (mark.offset or same) or mark.crc is None and same):
            return mark.offset, mark.offset
        log.warning("audit log %s: the position the spool last synced is not in it (another file, or a shorter "
                    "one): checking all of it, cutting only within its last %d bytes", self.path, SYNC_BYTES)
        return 0, max(0, size - SYNC_BYTES)

    def _crc_ending_at(self, offset: int) -> int | None:
        """The CRC field of the record that ends at ``offset`` (0 at offset 0), None when no record ends
        there; sets :attr:`last_crc` from it (the durable region is not checked again: a record damaged
        there is for ``verify`` to report, not cut)."""
        if offset == 0:
            return 0
        fh = self._fh
        assert fh is not None
        step = 4096
        while True:
            begin = max(0, offset - step)
            fh.seek(begin)
            chunk = fh.read(offset - begin)
            if not chunk.endswith(b"\n"):
                return None
            newline = chunk.rfind(b"\n", 0, len(chunk) - 1)
            if newline >= 0 or begin == 0:
                field = chunk[newline + 1:newline + 9]
                try:
                    crc = int(field, 16) if len(field) == 8 else None
                except ValueError:
                    crc = None
                if crc is not None:
                    self.last_crc = field.decode("ascii")
                return crc
            step *= 4

    def _scan(self, start: int, cut_from: int, size: int) -> int | None:
        """CRC-check every record from ``start``; the offset of the first bad one at or after ``cut_from``,
        or of a torn last line (None when there is neither). A bad record before ``cut_from`` is logged
        and read past. Linear in the bytes read, however long a run without a newline."""
        fh = self._fh
        assert fh is not None
        fh.seek(start)
        self.scanned = size - start
        self.damaged = 0                            # the first few logged one by one, then their count
        try:
            return self._scan_from(fh, start, cut_from)
        finally:
            if self.damaged > _DAMAGED_LOGGED:
                log.error("audit log %s: %d damaged records in all in the region fsync'd before (the first %d "
                          "logged above; 'audit verify' reports them)", self.path, self.damaged, _DAMAGED_LOGGED)

    def _scan_from(self, fh: Any, offset: int, cut_from: int) -> int | None:
        """``_scan``'s loop from ``offset`` (``fh`` positioned there), counting in :attr:`damaged` the bad
        records it reads past."""
        pieces: list[bytes] = []                    # a line read on across chunks (joined once, at its end)
        while chunk := fh.read(_SCAN_CHUNK):
            begin = 0
            while (end := chunk.find(b"\n", begin)) >= 0:
                line = chunk[begin:end]
                if pieces:
                    line = b"".join((*pieces, line))
                    pieces.clear()
                begin = end + 1
                try:
                    body = decode_record(line)
                except ValueError as exc:
                    if offset >= cut_from:
                        return offset
                    self.damaged += 1
                    if self.damaged <= _DAMAGED_LOGGED:
                        log.error("audit log %s: the record at byte offset %d is damaged (%s), in a region fsync'd "
                                  "before: not cut ('audit verify' reports it)", self.path, offset, exc)
                    offset += len(line) + 1
                    continue
                offset += len(line) + 1
                self.last_crc = line[:8].decode()
                last = _last_seq(body)
                if last is not None:
                    self.last_seq = max(self.last_seq, last)
            if begin < len(chunk):
                pieces.append(chunk[begin:])
        return offset if pieces else None

    def _scan_tail(self, size: int) -> int | None:
        """The older agents' check (each of their commits was fsync'd): the last line, cut when torn."""
        fh = self._fh
        assert fh is not None
        tail_start = max(0, size - _TAIL_BYTES)
        fh.seek(tail_start)
        tail = fh.read()
        self.scanned = len(tail)
        cut_at = None
        if tail and not tail.endswith(b"\n"):
            cut_at = tail_start + tail.rfind(b"\n") + 1 if b"\n" in tail else tail_start
            tail = tail[: cut_at - tail_start]
        for line in tail.split(b"\n"):
            try:
                body = decode_record(line)
            except ValueError:
                continue
            self.last_crc = line[:8].decode()
            last = _last_seq(body)
            if last is not None:
                self.last_seq = max(self.last_seq, last)
        return cut_at

    def batch(self, site: str, batch: ReadingBatch) -> None:
        """Buffer the record of one accepted, sequenced batch (written by :meth:`sync`)."""
        self.add_batch_record(batch_record(site, batch), batch.seq_last)

    def add_batch_record(self, record: bytes, seq_last: int, shape: Shape | None = None,
                         points: PointTable | None = None) -> None:
        """Buffer ``batch_record(...)`` of a batch whose last seq is ``seq_last`` (encoded by the caller,
        e.g. on another thread than the writer's). A point-form record comes with its ``shape`` and
        the ``points`` table: a ``pt`` record defining the ids this file has not defined yet goes first,
        then an ``sh`` record defining the shape's number (:data:`SHAPES`) when the file has not yet.

        While :attr:`behind` the record is not held (the spool audits the row again from its table)."""
        if self.behind:
            return
        if shape is not None and shape not in self._shapes:
            assert points is not None
            missing = [pid for pid in shape.distinct if pid not in self._defined]
            if missing:
                named = [points.point(pid) for pid in missing]
                self.event("pt", id=missing, asset=[p[0] for p in named], point=[p[1] for p in named],
                           unit=[p[2] for p in named], sensor=[p[3] for p in named])
                self._defined.update(missing)
            number = SHAPES.number(shape, assign=False)
            if number is not None and number not in self._numbered:
                self.event("sh", id=number, p=shape.p_json)
                self._numbered.add(number)
            if len(self._shapes) >= 4096:
                self._shapes.clear()
            self._shapes.add(shape)
        self._buffer.append(record)
        self._buffered_bytes += len(record)
        self.last_seq = max(self.last_seq, seq_last)

    @property
    def held_bytes(self) -> int:
        """The bytes of the records buffered, not yet written."""
        return self._buffered_bytes

    def bound(self) -> None:
        """While the file cannot be written: when the records held pass :data:`MAX_BUFFERED_BYTES`, let go
        of the batch records (:meth:`let_go`). The spool asks after each commit's records (not while it
        audits rows again: those go out a chunk at a time)."""
        if self._backoff and self._buffered_bytes > MAX_BUFFERED_BYTES and not self._unsynced and not self.behind:
            self.let_go()

    def let_go(self, *, again: bool = False) -> None:
        """The file has failed writes long enough for the held records to pass :data:`MAX_BUFFERED_BYTES`
        (``again``: a try to audit the rows again failed): let go of the batch records (and the ``pt`` and
        ``sh`` records defining their points), keep the events. Every record above :attr:`durable_seq` is
        among them (a failed write cut the file back to its durable size and held everything written
        since), so the audited seq falls back to it and the spool, whose rows above it cannot leave
        before their records are durable, audits them again from its table once a write succeeds
        (:attr:`behind`); the definitions are written again as needed."""
        assert not self._unsynced, "let_go after a cut back only: every record above durable_seq is held"
        kept = [record for record in self._buffer if not record[9:].startswith(_BATCH_KINDS)]
        if again:
            log.error("audit log %s: still cannot be written; the spooled rows wait to be audited again", self.path)
        else:
            log.error("audit log %s: %d MiB of records held while the file cannot be written; letting go of the "
                      "%d batch records (their rows stay spooled and are audited again once it can be)",
                      self.path, self._buffered_bytes >> 20, len(self._buffer) - len(kept))
        self._buffer = kept
        self._buffered_bytes = sum(map(len, kept))
        self.last_seq = self.durable_seq
        self.behind = True
        self._defined.clear()
        self._numbered.clear()
        self._shapes.clear()

    @property
    def broken(self) -> bool:
        """The file could not be cut back after a failed write: nothing more is written in this run (its
        event records are stranded for :meth:`hand_over`)."""
        return self._broken is not None

    def _strand(self, records: list[bytes]) -> None:
        """Keep the event records among ``records`` for :meth:`hand_over` while the log is broken (some may
        be in the file already, after its recorded position: the next start finds those)."""
        self._stranded.extend(record for record in records if record[9:].startswith(_HELD_PREFIXES))

    def hand_over(self) -> list[bytes]:
        """The file cannot be written and the agent stops: the held event records (``cmd``, ``write``,
        ``drop``, ``quar``, ``repair``, in order; a broken log's stranded ones first) for the caller to
        keep, and the buffer emptied, so that :meth:`close` does not fail on them. The batch records and their definitions are dropped: their
        rows are still spooled above :attr:`durable_seq`, and the next start audits them again."""
        events = self._stranded + [record for record in self._buffer if record[9:].startswith(_HELD_PREFIXES)]
        self._stranded = []
        self._buffer = []
        self._buffered_bytes = 0
        return events

    def find_lines(self, records: list[bytes], start: int) -> set[bytes]:
        """Which of ``records`` (whole lines, newline included) the open file holds from byte ``start`` on,
        read in chunks (memory bounded by the records and one line). Raises AuditError when it cannot be read."""
        wanted = {record[:-1] for record in records if record.endswith(b"\n")}
        found: set[bytes] = set()
        if not wanted or self._fh is None:
            return found
        longest = max(map(len, wanted))
        try:
            self._fh.seek(start)
            tail = b""
            skipping = False                    # inside a line longer than any wanted one: not one of them
            while chunk := self._fh.read(_SCAN_CHUNK):
                lines = chunk.split(b"\n")
                if skipping:
                    if len(lines) == 1:
                        continue
                    del lines[0]                # the long line's end
                    skipping = False
                else:
                    lines[0] = tail + lines[0]
                tail = lines.pop()
                if len(tail) > longest:
                    tail, skipping = b"", True
                found.update(line for line in lines if line in wanted)
            self._fh.seek(0, os.SEEK_END)
        except OSError as exc:
            raise AuditError(f"audit log {self.path}: cannot read ({exc.strerror or exc})") from exc
        return {line + b"\n" for line in found}

    def hold(self, records: list[bytes]) -> None:
        """Put event records a stopped agent handed over (:meth:`hand_over`) first in the buffer, to be
        written before anything of this run. Read back from storage they are hostile: the caller keeps
        only those :func:`held_record_ok` passes."""
        self._buffer[:0] = records
        self._buffered_bytes += sum(map(len, records))

    def event(self, kind: str, **fields: Any) -> bytes:
        """Buffer an event record (``drop``, ``quar``, ``repair``, ``cmd``, ``write``, ``pt``, ``sh``) and return it;
        ValueError for a NaN or infinite number among ``fields``, as for a batch."""
        check_finite(v for v in fields.values() if isinstance(v, float))
        record = encode_record({"k": kind, **fields, "at_ms": int(self.clock() * 1000)})
        self._buffer.append(record)
        self._buffered_bytes += len(record)
        return record

    def withdraw(self, record: bytes) -> None:
        """Take back an event record that a failed :meth:`sync` left buffered, or stranded in a broken log
        (what it announced did not happen: it must not be written, nor kept for the next start)."""
        for i in range(len(self._buffer) - 1, -1, -1):
            if self._buffer[i] is record:
                del self._buffer[i]
                self._buffered_bytes -= len(record)
                return
        for i in range(len(self._stranded) - 1, -1, -1):
            if self._stranded[i] is record:
                del self._stranded[i]
                return

    def write(self) -> None:
        """Write the buffered records, without an fsync (:meth:`sync` makes them durable); raises
        AuditError on I/O failure. While a failure's back-off lasts (:meth:`backoff_in`) this writes
        nothing: the records stay buffered, so a disk that keeps failing is not sent every buffered
        record again at every commit.

        On failure the file is cut back to its size at the last fsync and every record written since
        is buffered again, to be written whole: a part written before ENOSPC would sit as a torn line,
        and after a failed fsync Linux marks the pages clean, so a bare fsync retry would "succeed"
        with the records perhaps never on disk (and the spool would then delete their rows)."""
        if self._broken is not None:
            self._strand(self._buffer)  # events kept for hand_over; the batch records' rows stay spooled,
            self._buffer.clear()        # audited again at the next start (last_seq of the file)
            self._buffered_bytes = 0
        elif not self._backoff:
            self._write()
        elif not self.backoff_in():
            self.sync()             # the first try after a failure: fsync'd, so the unsynced region stays bounded

    def _write(self) -> None:
        if self._fh is None:
            raise AuditError(f"audit log {self.path}: not open")
        if self._broken is not None:
            self._retry_at = time.monotonic() + RETRY_MAX_S     # the spool asks again (and logs) only then
            raise AuditError(f"audit log {self.path}: {self._broken}")
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        try:
            view = memoryview(data)
            while view:
                written = self._fh.write(view)
                view = view[written:]
        except OSError as exc:
            self._cut_back()
            raise AuditError(f"audit log {self.path}: write failed ({exc.strerror or exc})") from exc
        self._written += len(data)
        self._unsynced.extend(self._buffer)
        self._unsynced_bytes += len(data)
        self.last_crc = self._buffer[-1][:8].decode()
        self._buffer.clear()
        self._buffered_bytes = 0

    def sync(self) -> None:
        """Write the buffered records and fsync, so that every record so far is durable; raises AuditError
        on I/O failure (see :meth:`write`: the file is cut back, the records buffered again). Tries the
        disk whatever the back-off."""
        self._write()
        if self._unsynced:
            self._fsync()

    def _fsync(self) -> None:
        fd = self._fh.fileno()        # type: ignore[union-attr]
        try:
            os.fsync(fd)
            end = os.lseek(fd, 0, os.SEEK_END)
        except OSError as exc:
            self._cut_back()
            raise AuditError(f"audit log {self.path}: write failed ({exc.strerror or exc})") from exc
        self._durable = self._written = end
        self._durable_crc = self.last_crc
        self.durable_seq = self.last_seq
        self.fsyncs += 1
        self._unsynced.clear()
        self._unsynced_bytes = 0
        self._synced_at = time.monotonic()
        self._retry_at = self._backoff = 0.0

    def backoff_in(self) -> float:
        """Seconds until the disk is tried again after a failed write or fsync (0.0 when not backing off)."""
        return max(0.0, self._retry_at - time.monotonic()) if self._retry_at else 0.0

    def _cut_back(self) -> None:
        """After a failed write or fsync: the file back to its last fsync'd size, everything since buffered;
        the next lazy write or due fsync waits (1 s, doubling up to :data:`RETRY_MAX_S`).

        When the file cannot be cut back, the records written since may stay in it: writing them again
        would audit their rows twice. The log then writes nothing more until the next start, whose open
        checks that region from the spool's mark and audits again the rows whose records are not there."""
        self._backoff = min(max(2 * self._backoff, RETRY_MIN_S), RETRY_MAX_S)
        self._retry_at = time.monotonic() + self._backoff
        try:
            os.ftruncate(self._fh.fileno(), self._durable)      # type: ignore[union-attr]
        except OSError as exc:
            self._broken = (f"cannot be cut back to {self._durable} bytes after a failed write "
                            f"({exc.strerror or exc}): nothing more is written until the agent restarts")
            log.error("audit log %s %s", self.path, self._broken)
            self._strand(self._unsynced)
            self._strand(self._buffer)
            self._buffer.clear()
            self._buffered_bytes = 0
            self._unsynced.clear()
            self._unsynced_bytes = 0
            return
        self._buffer[:0] = self._unsynced
        self._buffered_bytes += self._unsynced_bytes
        self._unsynced.clear()
        self._unsynced_bytes = 0
        self._written = self._durable

    def sync_due(self) -> bool:
        """True when records written or buffered since the last fsync are :data:`SYNC_INTERVAL_S` old or
        :data:`SYNC_BYTES` long, those buffered included: so no write leaves more than :data:`SYNC_BYTES`
        unsynced, the bound on the region an open cuts in when it cannot find the mark's position.
        Cheap, and safe to ask from another thread than the writer's (an answer a moment stale)."""
        return self.sync_in() == 0.0

    def sync_in(self) -> float | None:
        """Seconds until :meth:`sync_due` (0.0 when due); None when every record is durable."""
        if not self._unsynced and not self._buffer and not self.behind:
            return None
        if (backoff := self.backoff_in()) > 0.0:
            return backoff
        if self.behind or self._unsynced_bytes + self._buffered_bytes >= SYNC_BYTES:
            return 0.0
        return max(0.0, self._synced_at + SYNC_INTERVAL_S - time.monotonic())

    def mark(self) -> AuditMark:
        """The open file's identity, its size at the last fsync and the highest seq audited by then."""
        if self._fh is None:
            raise AuditError(f"audit log {self.path}: not open")
        crc = int(self._durable_crc, 16) if self._durable and self._durable_crc else 0
        return AuditMark(_identity(os.fstat(self._fh.fileno())), self._durable, self.durable_seq, crc)

    def reopen(self) -> bool:
        """Reopen the file at :attr:`path` after rotation; True when it is a new file.

        Writes what is buffered to the old file first. When the path now names
        another file (renamed away by logrotate, a new one created or not), the
        new file starts with a ``cont`` record linking it to the old one. When
        the path still names the open file, nothing changes. Raises AuditError
        when the new file cannot be opened; the old one then stays open and in use.
        """
        if self._fh is None:
            raise AuditError(f"audit log {self.path}: not open")
        self.sync()
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            current = None
        except OSError as exc:
            raise AuditError(f"audit log {self.path}: cannot stat ({exc.strerror or exc})") from exc
        held = os.fstat(self._fh.fileno())
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            return False
        old, self._fh = self._fh, None
        prev_crc = self.last_crc
        kept = self._durable, self._written, self.last_crc, self._durable_crc
        try:
            self.open()
        except AuditError:
            self._fh = old          # keep appending to the renamed file: nothing is lost, the chain holds
            self._durable, self._written, self.last_crc, self._durable_crc = kept
            raise
        old.close()
        with contextlib.suppress(OSError):     # logrotate's rename and the file it may have created
            _fsync_folder(self.path.parent)
        if prev_crc is not None and os.fstat(self._fh.fileno()).st_size == 0:
            self.event("cont", prev_crc=prev_crc, last_seq=self.last_seq)
            try:
                self.sync()
            except AuditError as exc:           # the new file is in use: its first record waits for space
                log.error("%s; the new file's cont record is held until it takes writes", exc)
        return True

    def close(self) -> None:
        if self._fh is not None:
            try:
                self.sync()
            finally:
                self._fh.close()
                self._fh = None


@dataclass
class AuditSummary:
    """What :func:`verify` found. ``corrupt`` is the first bad record (in ``corrupt_path``), or None.

    ``path`` is the newest file verified; ``files`` all of them, oldest first;
    ``links`` how many files began with a ``cont`` record matching their predecessor.
    """

    path: Path
    files: list[Path] = field(default_factory=list)
    records: int = 0
    readings: int = 0
    drops: int = 0
    dropped_readings: int = 0
    quarantined: int = 0
    repairs: int = 0
    commands: int = 0
    writes: int = 0
    links: int = 0
    seq_min: int | None = None
    seq_max: int | None = None
    kinds: dict[str, int] = field(default_factory=dict)
    corrupt: AuditCorrupt | None = None
    corrupt_path: Path | None = None

    @property
    def ok(self) -> bool:
        return self.corrupt is None

    def lines(self) -> list[str]:
        seq = f"{self.seq_min}..{self.seq_max}" if self.seq_min is not None else "none"
        where = f"audit log {self.path}"
        if len(self.files) > 1:
            where += f" and {len(self.files) - 1} rotated files before it ({self.links} links checked)"
        out = [f"{where}: {self.records} records, {self.readings} readings (seq {seq}), "
               f"{self.drops} drop events ({self.dropped_readings} readings dropped by the spool cap), "
               f"{self.quarantined} quarantined, {self.repairs} torn-tail repairs, "
               f"{self.commands} commands, {self.writes} writes"]
        if self.corrupt is not None:
            where = f"{self.corrupt_path} " if len(self.files) > 1 else ""
            out.append(f"CORRUPT: {where}line {self.corrupt.index + 1} "
                       f"(byte offset {self.corrupt.offset}{' uncompressed' if _gzipped(self.corrupt_path) else ''}): "
                       f"{self.corrupt.reason}")
        else:
            out.append("OK: every record's CRC matches" + (" and every file continues the one before"
                                                            if len(self.files) > 1 else ""))
        return out


def _gzipped(path: Path | None) -> bool:
    return path is not None and path.suffix == ".gz"


def rotated_files(path: str | os.PathLike[str] = DEFAULT_AUDIT_PATH) -> list[Path]:
    """``path``'s rotations as logrotate names them (``NAME.1``, ``NAME.2.gz``, ...), oldest first, then ``path``.

    ``path`` itself is included when it exists. Raises AuditError when its folder cannot be listed.
    """
    path = Path(path)
    pattern = re.compile(re.escape(path.name) + r"\.([0-9]{1,6})(\.gz)?")
    try:
        names = os.listdir(path.parent)
    except OSError as exc:
        raise AuditError(f"audit log folder {path.parent}: cannot list ({exc.strerror or exc})") from exc
    numbered = [(int(m.group(1)), name) for name in names if (m := pattern.fullmatch(name))]
    files = [path.parent / name for _, name in sorted(numbered, reverse=True)]
    return files + [path] if path.exists() else files


def verify(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] = DEFAULT_AUDIT_PATH) -> AuditSummary:
    """Check every record's CRC and, over several files (oldest first), that each continues the one before.

    A file after the first must begin with a ``cont`` record naming the previous
    file's last CRC and the highest seq audited so far; one written by an agent
    started after the rotation has none, and then its readings must not skip a
    seq. Counts records by kind; keeps the first corrupt record or broken link.
    Raises AuditError when a file cannot be read. Records after the first
    corrupt one are still counted when they are valid.
    """
    files = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    if not files:
        raise AuditError("no audit log to verify")
    summary = AuditSummary(files[-1], files=files)
    prev_crc: str | None = None
    for number, path in enumerate(files):
        prev_crc = _verify_file(path, summary, prev_crc if number else None, files[number - 1] if number else None)
    return summary


def _verify_file(path: Path, summary: AuditSummary, prev_crc: str | None, prev_path: Path | None) -> str | None:
    """Add ``path``'s records to ``summary``; the CRC of its last record (None when empty)."""

    def corrupt(index: int, offset: int, reason: str) -> None:
        if summary.corrupt is None:
            summary.corrupt, summary.corrupt_path = AuditCorrupt(index, offset, reason), path

    try:
        fh = gzip.open(path, "rb") if _gzipped(path) else open(path, "rb")
    except OSError as exc:
        raise AuditError(f"audit log {path}: cannot read ({exc.strerror or exc})") from exc
    offset = 0
    index = -1
    last_crc: str | None = None
    seq_before = summary.seq_max
    defined: set[int] = set()
    shapes: dict[int, tuple[int, ...]] = {}
    try:
        with fh:
            for index, raw in enumerate(fh):
                line = raw[:-1] if raw.endswith(b"\n") else raw
                summary.records += 1
                last_crc = line[:8].decode("ascii", "replace")
                try:
                    if not raw.endswith(b"\n"):
                        raise ValueError("last record is cut short (no newline)")
                    body = decode_record(line)
                except ValueError as exc:
                    corrupt(index, offset, str(exc))
                    offset += len(raw)
                    continue
                if prev_path is not None and index == 0:
                    _check_link(body, prev_crc, prev_path, seq_before, summary, lambda r: corrupt(0, 0, r))
                problem = _count(body, summary, defined, shapes)
                if problem:
                    corrupt(index, offset, problem)
                offset += len(raw)
                if prev_path is not None and index == 0 and body["k"] != "cont" and seq_before is not None:
                    first = _first_seq(body)
                    if first is not None and first > seq_before + 1:
                        corrupt(0, 0, f"does not continue {prev_path}: no 'cont' record and readings resume at "
                                      f"seq {first} after seq {seq_before} (a rotated file is missing?)")
    except (zlib.error, EOFError, gzip.BadGzipFile) as exc:     # a damaged .gz: the records before still count
        corrupt(index + 1, offset, f"compressed data is damaged from here on ({exc})")
    except OSError as exc:
        raise AuditError(f"audit log {path}: cannot read ({exc})") from exc
    return last_crc


def _check_link(body: dict[str, Any], prev_crc: str | None, prev_path: Path, seq_before: int | None,
                summary: AuditSummary, corrupt: Callable[[str], None]) -> None:
    """A file's first record against the file before it."""
    if body["k"] != "cont":
        return                  # an agent started on a fresh file: the seq check in _verify_file applies
    if body.get("prev_crc") != prev_crc:
        corrupt(f"does not continue {prev_path}: its 'cont' record names CRC {body.get('prev_crc')}, "
                f"the last record there has {prev_crc} (files missing or out of order?)")
    elif seq_before is not None and body.get("last_seq") != seq_before:
        corrupt(f"does not continue {prev_path}: its 'cont' record says seq {body.get('last_seq')} was audited "
                f"last, the files before it end at seq {seq_before}")
    else:
        summary.links += 1


def _first_seq(body: dict[str, Any]) -> int | None:
    first = body.get("seq") if body.get("k") == "r" else body.get("seq_first") if body.get("k") == "b" else None
    return first if isinstance(first, int) else None


def _count(body: dict[str, Any], summary: AuditSummary, defined: set[int],
           shapes: dict[int, tuple[int, ...]]) -> str | None:
    """Add one record (checked by ``audit_records.record_problem``) to ``summary``; what is wrong with it
    (a point-form batch or a shape naming undefined ids or shape), or None. ``defined``: the point ids
    the file defined so far; ``shapes``: its shape definitions so far (updated here)."""
    kind = str(body["k"])
    summary.kinds[kind] = summary.kinds.get(kind, 0) + 1
    problem = None
    if kind == "pt":
        defined.update(_point_definitions(body))
    elif kind == "sh":
        if not defined.issuperset(body["p"]):
            problem = (f"shape {body['id']} names point ids that no earlier 'pt' record of this file defines: "
                       f"{sorted(set(body['p']) - defined)[:10]}")
        else:
            shapes[body["id"]] = tuple(body["p"])
    elif kind == "b" and ("p" in body or "s" in body):
        try:
            ids = _batch_ids(body, shapes)
        except ValueError as exc:
            problem = str(exc)
        else:
            if not defined.issuperset(ids):
                problem = (f"batch seq_first {body.get('seq_first')} names point ids that no earlier 'pt' record "
                           f"of this file defines: {sorted(set(ids) - defined)[:10]}")
    if kind in ("r", "b"):
        first, last = (body.get("seq"), body.get("seq")) if kind == "r" else \
            (body.get("seq_first"), body.get("seq_last"))
        if isinstance(first, int) and isinstance(last, int) and first <= last:
            summary.readings += last - first + 1
            summary.seq_min = first if summary.seq_min is None else min(summary.seq_min, first)
            summary.seq_max = last if summary.seq_max is None else max(summary.seq_max, last)
    elif kind == "drop":
        summary.drops += 1
        summary.dropped_readings += int(body.get("count", 0))
    elif kind == "quar":
        summary.quarantined += 1
    elif kind == "repair":
        summary.repairs += 1
    elif kind == "cmd":
        summary.commands += 1
    elif kind == "write":
        summary.writes += 1
    return problem


def _batch_ids(body: dict[str, Any], shapes: dict[int, tuple[int, ...]]) -> "list[int] | tuple[int, ...]":
    """A point-form batch's point ids: its ``p``, or the ids its file's latest ``sh`` record of number ``s``
    defines; ValueError when no earlier ``sh`` record defines it, or with another number of points."""
    if "p" in body:
        return body["p"]
    number, first, last = body["s"], body["seq_first"], body["seq_last"]
    ids = shapes.get(number)
    if ids is None:
        raise ValueError(f"batch seq_first {first} names shape s {number}, which no earlier 'sh' record of "
                         f"this file defines")
    if len(ids) != last - first + 1:
        raise ValueError(f"batch seq_first {first} names shape s {number}, which has {len(ids)} points, "
                         f"for {last - first + 1} readings")
    return ids


def _point_definitions(body: dict[str, Any]) -> dict[int, tuple[str, str, str, str]]:
    """The points a ``pt`` record (checked by ``audit_records.record_problem``: lists of one length) defines, by id."""
    columns = [body[key] for key in ("id", "asset", "point", "unit", "sensor")]
    return {pid: (a, p, u, s) for pid, a, p, u, s in zip(*columns)}


@dataclass(frozen=True)
class AuditContents:
    """What an audit log says was accepted: readings by seq, and the seqs the spool cap dropped (as ranges)."""

    readings: dict[int, dict[str, Any]]
    dropped: SeqRanges


_BATCH_COLUMNS = ("ts_ms", "asset", "point", "sensor", "value", "unit", "q")


def _last_seq(body: dict[str, Any]) -> int | None:
    """The highest reading seq a record says was audited (``r``, ``b``, and ``cont``: the files before), else None."""
    kind = body.get("k")
    last = body.get("seq") if kind == "r" else body.get("seq_last") if kind == "b" else \
        body.get("last_seq") if kind == "cont" else None
    return last if isinstance(last, int) else None


def read_audit(path: str | os.PathLike[str] = DEFAULT_AUDIT_PATH) -> AuditContents:
    """Every accepted reading (a seq re-audited after a crash is the same reading) and every dropped seq.

    Readings come as ``r`` record bodies (``b`` records are expanded into one per reading, point-form
    ones with the names their ``sh`` and ``pt`` records define).

    Raises AuditError on an unreadable file or a corrupt record (``verify`` says which and where).
    """
    readings: dict[int, dict[str, Any]] = {}
    dropped: list[tuple[int, int]] = []      # one range per drop record: a lowered cap drops up to 10**9 at once
    points: dict[int, tuple[str, str, str, str]] = {}
    shapes: dict[int, tuple[int, ...]] = {}
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise AuditError(f"audit log {path}: cannot read ({exc.strerror or exc})") from exc
    for index, line in enumerate(lines):
        try:
            body = decode_record(line)
        except ValueError as exc:
            raise AuditError(f"audit log {path}: record {index + 1} is corrupt ({exc})") from exc
        if body["k"] == "r":
            readings[body["seq"]] = body
        elif body["k"] == "pt":
            points.update(_point_definitions(body))
        elif body["k"] == "sh":
            if not points.keys() >= set(body["p"]):
                raise AuditError(f"audit log {path}: record {index + 1}: shape {body['id']} names point ids that "
                                 f"no earlier 'pt' record defines: {sorted(set(body['p']) - points.keys())[:10]}")
            shapes[body["id"]] = tuple(body["p"])
        elif body["k"] == "b" and ("p" in body or "s" in body):
            try:
                ids = _batch_ids(body, shapes)
            except ValueError as exc:
                raise AuditError(f"audit log {path}: record {index + 1}: {exc}") from None
            first = body["seq_first"]
            common = {"k": "r", "site": body["site"], "at_ms": body["at_ms"]}
            ts, quality = expand_times(body["ts_ms"], len(ids)), body["q"]     # record_problem checked it
            quality = quality if isinstance(quality, list) else [quality] * len(ids)
            for i, (pid, t, value, q) in enumerate(zip(ids, ts, body["value"], quality)):
                if pid not in points:
                    raise AuditError(f"audit log {path}: record {index + 1} names point id {pid}, which no "
                                     f"earlier 'pt' record defines")
                asset, point, unit, sensor = points[pid]
                readings[first + i] = {**common, "seq": first + i, "ts_ms": t, "asset": asset, "point": point,
                                       "sensor": sensor, "value": value, "unit": unit, "q": q}
        elif body["k"] == "b":
            common = {"k": "r", "site": body["site"], "at_ms": body["at_ms"]}
            columns = [body[key] for key in _BATCH_COLUMNS]
            for i, values in enumerate(zip(*columns)):
                readings[body["seq_first"] + i] = {**common, "seq": body["seq_first"] + i,
                                                   **dict(zip(_BATCH_COLUMNS, values))}
        elif body["k"] == "drop":
            dropped.append((body["seq_first"], body["seq_last"]))
    return AuditContents(readings, SeqRanges(dropped))
