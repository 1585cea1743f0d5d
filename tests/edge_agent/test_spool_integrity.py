"""The spool's plain integer columns (``edge_agent.spool_integrity``) and CRC-valid rows read back on start.

A damaged ``next_seq`` or point id refuses the spool at open with a message naming the table, row and
value — never a TypeError, never a counter that overflows SQLite INTEGER at the next commit; a
``batches`` row with a damaged seq range or acceptance time is quarantined as it is (audited) and the
spool opens; a value inside the bounds keeps the spool working, next append included.
A CRC-valid row that decodes is re-audited (crash recovery) into a record the audit's own reader accepts.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.audit import AuditLog, batch_record, decode_record, verify
from edge_agent.batch import ReadingBatch
from edge_agent.errors import SpoolCorrupt
from edge_agent.point_table import PointTable
from edge_agent.spool import Spool, _decode
from edge_agent.spool_integrity import MAX_ID


def _batch(point: str = "p0") -> ReadingBatch:
    batch = ReadingBatch()
    batch.add(1_764_000_000_000, "tx1", point, 1.0, "kW", "good", "S0")
    batch.add(1_764_000_000_000, "tx1", "p1", 2.0, "kW", "good", "S1")
    return batch


async def _fill(directory: Path) -> None:
    async with Spool(directory, site="s1", audit=AuditLog(directory / "audit.log")) as spool:
        await spool.append(_batch())
        await spool.append(_batch())


async def _use(directory: Path) -> tuple[list[tuple[int, int]], int]:
    """Open, append a batch naming a new point, lease everything: the leased seq ranges and the next seq."""
    async with Spool(directory, site="s1", audit=AuditLog(directory / "audit.log")) as spool:
        await spool.append(_batch("new point"))
        await spool.flush()
        leased = await spool.lease(100)
        return [(b.seq_first, b.seq_last) for b in leased], spool.next_seq


def _damage(directory: Path, sql: str, *args: object) -> None:
    db = sqlite3.connect(directory / "spool.db")
    with db:
        db.execute(sql, args)
    db.close()


@pytest.mark.parametrize("sql, args, message", [
    ("UPDATE meta SET value = ? WHERE key = 'next_seq'", ("x",), "table meta: next_seq is 'x', not an integer 1..2**62"),
    ("UPDATE meta SET value = ? WHERE key = 'next_seq'", (2**63 - 1,),
     "table meta: next_seq is 9223372036854775807, not an integer 1..2**62"),
    ("UPDATE points SET id = ? WHERE id = 2", (2**63 - 1,), "table points: point id 9223372036854775807 is not 1..2**62"),
    ("INSERT INTO points (id, data, crc) VALUES (?, x'00', 0)", (-5,), "table points: point id -5 is not 1..2**62"),
    ("INSERT INTO shapes (id, data, crc) VALUES (?, x'00', 0)", (2**63 - 1,),
     "table shapes: shape id 9223372036854775807 is not 1..2**62"),
])
def test_a_damaged_counter_or_point_id_refuses_the_spool_by_table_row_and_value(tmp_path: Path, sql: str,
                                                                                 args: tuple, message: str) -> None:
    asyncio.run(_fill(tmp_path))
    _damage(tmp_path, sql, *args)
    with pytest.raises(SpoolCorrupt) as caught:
        asyncio.run(_use(tmp_path))
    assert str(caught.value) == (f"spool {tmp_path / 'spool.db'}: {message}; correct that value or move the file "
                                 "aside (its seq counter would restart)")


@pytest.mark.parametrize("sql, value, seq, reason, leased", [
    ("UPDATE batches SET seq_last = ? WHERE seq_first = 3", "x", 3, "seq_last 'x' is not an integer 3..2**62",
     [(1, 2), (5, 6)]),
    ("UPDATE batches SET seq_last = ? WHERE seq_first = 3", 3.5, 3, "seq_last 3.5 is not an integer 3..2**62",
     [(1, 2), (5, 6)]),
    ("UPDATE batches SET seq_last = ? WHERE seq_first = 3", 2**63 - 1, 3,
     "seq_last 9223372036854775807 is not an integer 3..2**62", [(1, 2), (5, 6)]),
    ("UPDATE batches SET seq_last = ? WHERE seq_first = 3", 2, 3, "seq_last 2 is not an integer 3..2**62",
     [(1, 2), (5, 6)]),
    ("UPDATE batches SET seq_first = ? WHERE seq_first = 1", 0, 0, "seq_first 0 is below 1", [(3, 4), (5, 6)]),
    ("UPDATE batches SET accepted_ms = ? WHERE seq_first = 1", b"\xff", 1, "accepted_ms b'\\xff' is not an integer",
     [(3, 4), (5, 6)]),
    ("UPDATE batches SET seq_last = ? WHERE seq_first = 3", "9\n" * 5_000_000, 3,
     "seq_last '9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n9\\n"
     "9\\n9\\n9\\n'… (10000000 characters) is not an integer 3..2**62", [(1, 2), (5, 6)]),
])
def test_a_damaged_batches_row_is_quarantined_as_it_is_and_the_spool_opens(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, sql: str, value: object, seq: int, reason: str,
        leased: list[tuple[int, int]]) -> None:
    """STYLE.md §8: a damaged row is quarantined, never dropped; ``ems-edge run`` exited 2 on one bad row."""
    asyncio.run(_fill(tmp_path))
    _damage(tmp_path, sql, value)
    assert asyncio.run(_use(tmp_path)) == (leased, 7)
    assert f"spool row seq {seq} is unusable ({reason}): moved to the quarantine table" in caplog.text
    db = sqlite3.connect(tmp_path / "spool.db")
    kept = db.execute("SELECT seq, seq_last, accepted_ms, reason FROM quarantine").fetchall()
    db.close()
    assert len(kept) == 1 and kept[0][0] == seq and kept[0][3] == reason and value in kept[0][:3]
    summary = verify(tmp_path / "audit.log")
    assert summary.ok, summary.lines()
    quar = [decode_record(line) for line in (tmp_path / "audit.log").read_bytes().splitlines()
            if b'"k":"quar"' in line]
    assert [(r["seq"], r["reason"]) for r in quar] == ([(seq, reason)] if seq >= 1 else [])


def test_the_highest_point_id_allowed_still_leaves_room_for_new_points(tmp_path: Path) -> None:
    """The review's case: an id of 2**63-1 made the next id overflow SQLite INTEGER at every commit."""
    asyncio.run(_fill(tmp_path))
    _damage(tmp_path, "UPDATE points SET id = ? WHERE id = 2", MAX_ID)     # rows naming id 2 are quarantined
    leased, next_seq = asyncio.run(_use(tmp_path))
    assert leased == [(5, 6)] and next_seq == 7
    db = sqlite3.connect(tmp_path / "spool.db")
    assert max(pid for (pid,) in db.execute("SELECT id FROM points")) == MAX_ID + 1
    db.close()
    assert verify(tmp_path / "audit.log").ok


def _dumps(value: object) -> bytes:
    """JSON as a row could hold it, integers beyond 64 bits included (orjson refuses to write those)."""
    return json.dumps(value).encode()


_column_value = st.one_of(st.integers(-2**63, 2**63 - 1), st.sampled_from([0, 1, 2, 3, 4, MAX_ID, MAX_ID + 1]),
                          st.floats(allow_nan=False), st.text(max_size=4), st.binary(max_size=4), st.none())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([("batches", "seq_last", "seq_first = 3"), ("batches", "accepted_ms", "seq_first = 1"),
                        ("meta", "value", "key = 'next_seq'"), ("points", "id", "id = 2")]), _column_value)
def test_any_value_in_an_integer_column_opens_and_works_or_is_refused_clearly(where: tuple[str, str, str],
                                                                              value: object) -> None:
    table, column, row = where
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        asyncio.run(_fill(directory))
        try:
            _damage(directory, f"UPDATE {table} SET {column} = ? WHERE {row}", value)   # noqa: S608 (test constants)
        except sqlite3.IntegrityError:
            return                          # a duplicate key or NOT NULL: SQLite itself refused the damage
        try:
            leased, next_seq = asyncio.run(_use(directory))
        except SpoolCorrupt as exc:
            assert table != "batches", str(exc)          # a bad batches row is quarantined, never refused
            assert f"table {table}: " in str(exc) and "(its seq counter would restart)" in str(exc)
            return
        assert next_seq <= MAX_ID + 3 and all(first <= last for first, last in leased)


_edges = st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, -2**63, -2**63 - 1, -2**64])
_scalar = st.one_of(st.none(), st.booleans(), st.integers(), _edges, st.floats(allow_nan=False), st.text(max_size=5))


@st.composite
def _rows(draw: st.DrawFn) -> bytes:
    """Rows of three readings in either stored form: each column plausible or hostile, numbers at the edges."""
    def column(plausible: st.SearchStrategy, shared: bool = False) -> object:
        item = st.one_of(plausible, _scalar)
        three = st.lists(item, min_size=3, max_size=3)
        return draw(st.one_of(item, three) if shared else three)
    time, number, text = st.one_of(st.integers(), _edges), st.one_of(st.floats(allow_nan=False), _edges), st.text(max_size=3)
    if draw(st.booleans()):
        return _dumps({"p": [1, 1, 1], "t": column(time, True), "v": column(number), "q": column(text, True)})
    return _dumps([column(time), column(text), column(text), column(number), column(text), column(text), column(text)])


@settings(max_examples=300, deadline=None)
@given(_rows())
def test_a_row_that_decodes_is_reaudited_into_a_record_the_audit_reader_accepts(data: bytes) -> None:
    """Crash recovery writes what ``_decode`` returns into the audit log: verify must not call it corrupt."""
    points = PointTable()
    points.shape(ReadingBatch([1], ["tx1"], ["load"], [1.0], ["MW"], ["good"], ["S1"]))
    try:
        batch = _decode(10, 12, 0, data, points)
    except ValueError:
        return
    decode_record(batch_record("s1", batch)[:-1])


@pytest.mark.parametrize("value", [b"\x00" * 5_000_000, "x\n" * 5_000_000])
def test_a_huge_stored_value_gives_a_one_line_bounded_message(tmp_path: Path, value: object) -> None:
    """The review's case: a 5M-character seq_last made a 15M-character error; stored values are shown shortened."""
    asyncio.run(_fill(tmp_path))
    _damage(tmp_path, "UPDATE meta SET value = ? WHERE key = 'next_seq'", value)
    with pytest.raises(SpoolCorrupt) as caught:
        asyncio.run(_use(tmp_path))
    message = str(caught.value)
    assert len(message) < 600 and "\n" not in message, message[:300]
    assert "characters)" in message or "bytes)" in message
