"""Append-only telemetry audit log with a CRC32 per record, and its verifier.

One line per record::

    <crc32 of the JSON, 8 lowercase hex digits> <JSON object>\\n

Record kinds (``k``):

==========  ==================================================================
``b``       one accepted batch (one spool row): site, seq_first, seq_last, at_ms
            (when it was spooled) and one list per field with an entry per
            reading, in seq order: ts_ms, asset, point, sensor, value, unit, q
``r``       one accepted reading (written by agents before batches; still read):
            site, seq, ts_ms, asset, point, sensor, value, unit, q, at_ms
``drop``    readings the full spool dropped (oldest first): seq_first, seq_last, count
``quar``    a spool row that failed its checksum and was quarantined: seq (its
            first), seq_last, reason
``repair``  a torn last line (power loss mid-write) cut at start-up: bytes, at_offset
``cmd``     one command message and what was decided (``edge_agent.commands``): id (null when
            the payload had none), control, value, issued_ms, expires_ms, event, decision
            (accepted, rejected, expired), reason; a malformed one carries bytes and sha256
``write``   one Modbus write for a command or the fail-safe: id, control, device, unit,
            register, address, registers (raw), value, failsafe, outcome (applied, failed),
            readback, reason; ``recovered`` when a restart found the write's outcome
==========  ==================================================================

The log is written only by the spool's I/O thread, in the same batch as the
spool's commit: lines are buffered with :meth:`AuditLog.reading` /
:meth:`AuditLog.event` and written and fsync'd together by :meth:`AuditLog.sync`,
so one fsync covers a whole spool batch. A reading is audited after its spool
commit; a crash between the two is repaired at the next start (the spool
re-audits the rows above :attr:`AuditLog.last_seq`). :func:`verify` reports the
totals (readings counted one by one, whatever records carry them) and the first
corrupt record (1-based line and byte offset).

Defaults: path ``/var/log/ems/telemetry-audit.log``, file mode 0640.
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from edge_agent.batch import ReadingBatch
from ems_contract.telemetry import check_finite
from edge_agent.errors import AuditCorrupt, AuditError

__all__ = ["DEFAULT_AUDIT_PATH", "AuditLog", "AuditSummary", "AuditContents", "verify", "read_audit",
           "encode_record", "decode_record"]

DEFAULT_AUDIT_PATH = Path("/var/log/ems/telemetry-audit.log")
_TAIL_BYTES = 256 * 1024


def encode_record(body: dict[str, Any]) -> bytes:
    """One audit line (with its trailing newline) for ``body``; a batch's values must be finite
    (``AuditLog.batch`` checks them: orjson would write NaN as null)."""
    data = orjson.dumps(body)
    return b"%08x %s\n" % (zlib.crc32(data), data)


def decode_record(line: bytes) -> dict[str, Any]:
    """Parse one audit line (without newline); raises ValueError saying what is wrong."""
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
    if not isinstance(body, dict) or "k" not in body:
        raise ValueError("record has no kind 'k'")
    return body


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
        self._fh = None
        self._buffer: list[bytes] = []

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
        except OSError as exc:
            raise AuditError(f"audit log {self.path}: cannot open ({exc.strerror or exc})") from exc
        self._fh = os.fdopen(fd, "r+b", buffering=0)
        size = os.fstat(fd).st_size
        tail_start = max(0, size - _TAIL_BYTES)
        self._fh.seek(tail_start)
        tail = self._fh.read()
        if tail and not tail.endswith(b"\n"):
            # A write cut by power loss: keep every complete record, cut the torn one, and say so.
            cut_at = tail_start + tail.rfind(b"\n") + 1 if b"\n" in tail else tail_start
            os.ftruncate(fd, cut_at)
            self.event("repair", bytes=size - cut_at, at_offset=cut_at)
            tail = tail[: cut_at - tail_start]
            self.sync()
        for line in tail.split(b"\n"):
            try:
                body = decode_record(line)
            except ValueError:
                continue
            last = _last_seq(body)
            if last is not None:
                self.last_seq = max(self.last_seq, last)

    def batch(self, site: str, batch: ReadingBatch) -> None:
        """Buffer the record of one accepted, sequenced batch (written by :meth:`sync`)."""
        check_finite(batch.value)
        self._buffer.append(encode_record({
            "k": "b", "site": site, "seq_first": batch.seq_first, "seq_last": batch.seq_last,
            "at_ms": batch.accepted_ms, "ts_ms": batch.ts_ms, "asset": batch.asset, "point": batch.point,
            "sensor": batch.sensor, "value": batch.value, "unit": batch.unit, "q": batch.quality}))
        self.last_seq = max(self.last_seq, batch.seq_last)

    def event(self, kind: str, **fields: Any) -> None:
        """Buffer an event record (``drop``, ``quar``, ``repair``, ``cmd``, ``write``); ValueError for a
        NaN or infinite number among ``fields``, as for a batch."""
        check_finite(v for v in fields.values() if isinstance(v, float))
        self._buffer.append(encode_record({"k": kind, **fields, "at_ms": int(self.clock() * 1000)}))

    def sync(self) -> None:
        """Write the buffered records and fsync; raises AuditError on I/O failure."""
        if self._fh is None:
            raise AuditError(f"audit log {self.path}: not open")
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        try:
            view = memoryview(data)
            while view:
                written = self._fh.write(view)
                view = view[written:]
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise AuditError(f"audit log {self.path}: write failed ({exc.strerror or exc})") from exc
        self._buffer.clear()

    def close(self) -> None:
        if self._fh is not None:
            try:
                self.sync()
            finally:
                self._fh.close()
                self._fh = None


@dataclass
class AuditSummary:
    """What :func:`verify` found. ``corrupt`` is the first bad record, or None."""

    path: Path
    records: int = 0
    readings: int = 0
    drops: int = 0
    dropped_readings: int = 0
    quarantined: int = 0
    repairs: int = 0
    commands: int = 0
    writes: int = 0
    seq_min: int | None = None
    seq_max: int | None = None
    kinds: dict[str, int] = field(default_factory=dict)
    corrupt: AuditCorrupt | None = None

    @property
    def ok(self) -> bool:
        return self.corrupt is None

    def lines(self) -> list[str]:
        seq = f"{self.seq_min}..{self.seq_max}" if self.seq_min is not None else "none"
        out = [f"audit log {self.path}: {self.records} records, {self.readings} readings (seq {seq}), "
               f"{self.drops} drop events ({self.dropped_readings} readings dropped by the spool cap), "
               f"{self.quarantined} quarantined, {self.repairs} torn-tail repairs, "
               f"{self.commands} commands, {self.writes} writes"]
        if self.corrupt is not None:
            out.append(f"CORRUPT: line {self.corrupt.index + 1} (byte offset {self.corrupt.offset}): "
                       f"{self.corrupt.reason}")
        else:
            out.append("OK: every record's CRC matches")
        return out


def verify(path: str | os.PathLike[str] = DEFAULT_AUDIT_PATH) -> AuditSummary:
    """Check every record's CRC; count records by kind; keep the first corrupt one.

    Raises AuditError when the file cannot be read. Records after the first
    corrupt one are still counted when they are valid.
    """
    summary = AuditSummary(Path(path))
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise AuditError(f"audit log {path}: cannot read ({exc.strerror or exc})") from exc
    offset = 0
    with fh:
        for index, raw in enumerate(fh):
            line = raw[:-1] if raw.endswith(b"\n") else raw
            try:
                if not raw.endswith(b"\n"):
                    raise ValueError("last record is cut short (no newline)")
                body = decode_record(line)
            except ValueError as exc:
                if summary.corrupt is None:
                    summary.corrupt = AuditCorrupt(index, offset, str(exc))
                offset += len(raw)
                summary.records += 1
                continue
            offset += len(raw)
            summary.records += 1
            kind = str(body["k"])
            summary.kinds[kind] = summary.kinds.get(kind, 0) + 1
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
    return summary


@dataclass(frozen=True)
class AuditContents:
    """What an audit log says was accepted: readings by seq, and the seqs the spool cap dropped."""

    readings: dict[int, dict[str, Any]]
    dropped: frozenset[int]


_BATCH_COLUMNS = ("ts_ms", "asset", "point", "sensor", "value", "unit", "q")


def _last_seq(body: dict[str, Any]) -> int | None:
    """The highest reading seq a record audits (``r`` and ``b``), else None."""
    last = body.get("seq") if body.get("k") == "r" else body.get("seq_last") if body.get("k") == "b" else None
    return last if isinstance(last, int) else None


def read_audit(path: str | os.PathLike[str] = DEFAULT_AUDIT_PATH) -> AuditContents:
    """Every accepted reading (a seq re-audited after a crash is the same reading) and every dropped seq.

    Readings come as ``r`` record bodies (``b`` records are expanded into one per reading).

    Raises AuditError on an unreadable file or a corrupt record (``verify`` says which and where).
    """
    readings: dict[int, dict[str, Any]] = {}
    dropped: set[int] = set()
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
        elif body["k"] == "b":
            common = {"k": "r", "site": body["site"], "at_ms": body["at_ms"]}
            columns = [body[key] for key in _BATCH_COLUMNS]
            for i, values in enumerate(zip(*columns)):
                readings[body["seq_first"] + i] = {**common, "seq": body["seq_first"] + i,
                                                   **dict(zip(_BATCH_COLUMNS, values))}
        elif body["k"] == "drop":
            dropped.update(range(body["seq_first"], body["seq_last"] + 1))
    return AuditContents(readings, frozenset(dropped))
