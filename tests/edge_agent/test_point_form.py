"""The point form of spool rows and audit batch records: names stored once per point id (``PointTable``).

Round trips (hypothesis), corrupt rows and point-table entries quarantined, undefined ids in an audit
file reported as corrupt, older 7-column rows still leased, and every audit file defining its own ids.
"""

from __future__ import annotations

import asyncio
import sqlite3
import zlib
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.audit import AuditLog, batch_record, decode_record, encode_record, read_audit, verify
from edge_agent.batch import ReadingBatch, expand_times, time_column
from edge_agent import point_table
from edge_agent.point_table import PointTable, shared_columns
from edge_agent.spool import Spool, _decode, _row
from ems_contract.telemetry import QUALITIES

_names = st.sampled_from(["tx1", "tx2", "oil_temp", "load", "p0", "p1", "", "degC", "MVA", "S_01", "S_02"])
_value = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False), st.integers(-2**40, 2**40).map(float))


@st.composite
def batches(draw: st.DrawFn) -> ReadingBatch:
    n = draw(st.integers(1, 40))
    batch = ReadingBatch()
    base = draw(st.integers(0, 2**50))
    timing = draw(st.sampled_from(["shared", "blocks", "each"]))      # one read, a read of several blocks, any
    for i in range(n):
        ts = base if timing == "shared" else base + i // 7 if timing == "blocks" else base + draw(st.integers(0, 10_000))
        batch.add(ts, draw(_names), draw(_names), draw(_value), draw(_names), draw(st.sampled_from(QUALITIES)),
                  draw(_names))
    return batch.sequenced(draw(st.integers(1, 2**62)), draw(st.integers(0, 2**50)))


@pytest.fixture(autouse=True)
def _small_shapes_take_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocks here have 3 points: below ``MIN_STORED_POINTS`` (tested on its own below)."""
    monkeypatch.setattr(point_table, "MIN_STORED_POINTS", 1)


def _fields(batch: ReadingBatch) -> tuple:
    return (batch.seq_first, batch.seq_last, batch.accepted_ms, *batch.columns())


@settings(max_examples=200, deadline=None)
@given(st.lists(batches(), min_size=1, max_size=4))
def test_a_row_round_trips_through_the_point_form(stored: list[ReadingBatch]) -> None:
    points = PointTable()
    for batch in stored:
        seq_first, seq_last, accepted_ms, data, crc = _row(batch, points.shape(batch))
        assert crc == zlib.crc32(data)
        assert _fields(_decode(seq_first, seq_last, accepted_ms, data, points)) == _fields(batch)
    last = stored[-1]
    again = _row(last, points.shape(last))              # the same lists again: the shape gets an id (``s``)
    assert b'"s":' in again[3] and b'"p":' not in again[3]
    assert _fields(_decode(*again[:4], points)) == _fields(last)
    reopened = PointTable()                              # what a restart reads back from the points and shapes tables
    reopened.load(points.take_unsaved())
    reopened.load_shapes(points.take_unsaved_shapes())
    assert _fields(_decode(*again[:4], reopened)) == _fields(last)


@settings(max_examples=200, deadline=None)
@given(batches())
def test_the_row_and_the_record_from_shared_columns_are_the_ones_each_encodes_alone(batch: ReadingBatch) -> None:
    """The spool encodes a batch's values once (``shared_columns``) for its row and its audit record."""
    shape = PointTable().shape(batch)
    columns = shared_columns(batch)
    assert _row(batch, shape, columns) == _row(batch, shape)
    assert batch_record("s1", batch, shape, columns) == batch_record("s1", batch, shape)
    record = decode_record(batch_record("s1", batch, shape, columns)[:-1])
    assert orjson.loads(_row(batch, shape, columns)[3])["v"] == record["value"] == batch.value


_EPOCH_MS = st.integers(10**12, 10**13 - 1)        # 2001 to 2286


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(-2**63, 2**63 - 1) | _EPOCH_MS, st.integers(1, 130)), min_size=1, max_size=6))
def test_times_are_stored_in_one_of_three_forms_and_read_back(blocks: list[tuple[int, int]]) -> None:
    """One value, runs (a device read as several blocks) or the list: whichever, the same times come back;
    runs only when there are at most half as many as readings, and then, for epoch milliseconds, shorter."""
    ts = [t for t, count in blocks for _ in range(count)]
    stored = time_column(ts)
    assert expand_times(stored, len(ts)) == ts
    if len(set(ts)) == 1:
        assert stored == ts[0]
    elif isinstance(stored[0], list):
        assert 2 * len(stored) <= len(ts)
        if all(10**12 <= t < 10**13 for t in ts):
            assert len(orjson.dumps(stored)) < len(orjson.dumps(ts))
    else:
        assert stored is ts


def test_a_two_block_read_is_stored_as_two_runs() -> None:
    ts = [1_764_000_000_000] * 125 + [1_764_000_000_002] * 75
    assert time_column(ts) == [[1_764_000_000_000, 125], [1_764_000_000_002, 75]]
    assert time_column([1, 2, 3]) == [1, 2, 3]


@pytest.mark.parametrize("stored, message", [
    ([[5, 0], [6, 3]], r"run 0 must be \[a 64-bit integer time, a count of at least 1\] \(got \[5, 0\]\)"),
    ([[5, 2], [6, 10**18]], r"runs must count 3 readings \(runs 0\.\.1 count 1000000000000000002\)"),
    ([[5, 1], [6, 1]], r"runs must count 3 readings \(got 2\)"),
    ([[5, 2], 6], r"run 1 must be"),
    ([[True, 3]], r"run 0 must be"),
    ([[2**63, 3]], r"run 0 must be"),
    ([[5, 3, 1]], r"run 0 must be"),
    ([1, 2], r"must hold 3 times \(got 2\)"),
    ([1, 2.0, 3], r"item 1 must be a 64-bit integer \(got 2\.0\)"),
    ([1, 2, [2, 1]], r"item 2 must be a 64-bit integer \(got \[2, 1\]\)"),
    ([1, 2**63, 3], r"item 1 must be a 64-bit integer \(got 9223372036854775808\)"),
    ([[5, 3]] + [1], r"run 1 must be"),
    ([orjson.loads(b"[" * 1000 + b"]" * 1000), 2, 3], r"run 0 must be .* \(got \[\[\[\["),
    ([1, orjson.loads(b"[" * 1000 + b"]" * 1000), 3], r"item 1 must be a 64-bit integer \(got \[\[\[\["),
    ([[orjson.loads(b"[" * 1000 + b"]" * 1000), 3]], r"run 0 must be \[a 64-bit integer time"),
    (orjson.loads(b"[" * 1020 + b"]" * 1020), r"run 0 must be"),
    ("5", r"must be a 64-bit integer or a list \(got '5'\)"),
    (-2**63 - 1, r"must be a 64-bit integer or a list"),
])
def test_stored_times_that_do_not_fit_are_named(stored: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expand_times(stored, 3)


def test_a_shape_is_found_by_the_same_lists_by_equal_lists_and_never_for_other_points() -> None:
    """The poller hands every batch of a block the same name lists: their shape is found by identity;
    equal lists find it by content; lists of one-off batches (freed, their ids reused) never find another's."""
    points = PointTable()
    asset, point, unit, sensor = ["tx1", "tx1"], ["p", "q"], ["kW", "kW"], ["S1", "S2"]

    def batch(ts: int, *names: list[str]) -> ReadingBatch:
        return ReadingBatch([ts, ts], names[0], names[1], [1.0, 2.0], names[2], ["good", "good"], names[3])

    first = points.shape(batch(1, asset, point, unit, sensor))
    assert points.shape(batch(2, asset, point, unit, sensor)) is first
    assert points.shape(batch(3, *map(list, (asset, point, unit, sensor)))) is first
    for i in range(300):
        shape = points.shape(batch(i, [f"a{i}", "b"], ["p", "q"], ["", ""], ["s", "t"]))
        assert [points.point(pid) for pid in shape.ids] == [(f"a{i}", "p", "", "s"), ("b", "q", "", "t")]
    assert points.shape(batch(4, asset, point, unit, sensor)) is first
    assert [points.point(pid) for pid in first.ids] == [("tx1", "p", "kW", "S1"), ("tx1", "q", "kW", "S2")]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_value_that_is_not_finite_is_refused_by_the_row_the_record_and_shared_columns(bad: float) -> None:
    batch = ReadingBatch([1, 1], ["a", "a"], ["p", "q"], [1.0, bad], ["", ""], ["good", "good"], ["s", "t"], 1, 1)
    shape = PointTable().shape(batch)
    for encode in (lambda: shared_columns(batch), lambda: _row(batch, shape), lambda: batch_record("s1", batch, shape),
                   lambda: batch_record("s1", batch)):
        with pytest.raises(ValueError):
            encode()


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=5),
                              lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                                  st.sampled_from(["p", "t", "v", "q", "x"]), inner, max_size=5),
                              max_leaves=20).map(orjson.dumps)))
def test_a_corrupt_row_is_a_value_error_never_a_crash(data: bytes) -> None:
    """What a corrupt (CRC-valid) row can do: ValueError (the spool quarantines the row), or decode
    into a batch exactly as long as its seq range."""
    points = PointTable()
    points.shape(ReadingBatch([1], ["tx1"], ["load"], [1.0], ["MW"], ["good"], ["S1"]))
    try:
        batch = _decode(10, 12, 0, data, points)
    except ValueError:
        return
    assert len(batch) == 3
    assert all(type(t) is int for t in batch.ts_ms) and all(v is None or type(v) in (int, float) for v in batch.value)
    assert all(isinstance(x, str) for x in (*batch.asset, *batch.point, *batch.unit, *batch.quality, *batch.sensor))


@settings(max_examples=100, deadline=None)
@given(st.lists(batches(), min_size=1, max_size=4))
def test_audit_point_form_records_read_back_as_every_reading(tmp_path_factory: pytest.TempPathFactory,
                                                             stored: list[ReadingBatch]) -> None:
    path = tmp_path_factory.mktemp("audit") / "audit.log"
    points = PointTable()
    log = AuditLog(path)
    log.open()
    seq = 1
    expected = {}
    for batch in stored:
        batch = batch.sequenced(seq, batch.accepted_ms)
        seq = batch.seq_last + 1
        shape = points.shape(batch)
        log.add_batch_record(batch_record("s1", batch, shape), batch.seq_last, shape, points)
        for i, (ts, asset, point, value, unit, quality, sensor) in enumerate(zip(*batch.columns())):
            expected[batch.seq_first + i] = {"k": "r", "site": "s1", "seq": batch.seq_first + i, "ts_ms": ts,
                                             "asset": asset, "point": point, "sensor": sensor, "value": value,
                                             "unit": unit, "q": quality, "at_ms": batch.accepted_ms}
    log.close()
    assert read_audit(path).readings == expected
    summary = verify(path)
    assert summary.ok and summary.readings == len(expected) and summary.kinds["b"] == len(stored)


def _pt(ids: list[int]) -> bytes:
    return encode_record({"k": "pt", "id": ids, "asset": ["tx1"] * len(ids), "point": [f"p{i}" for i in ids],
                          "unit": ["kW"] * len(ids), "sensor": [f"S{i}" for i in ids], "at_ms": 1})


def _b(seq_first: int, ids: list[int]) -> bytes:
    return encode_record({"k": "b", "site": "s1", "seq_first": seq_first, "seq_last": seq_first + len(ids) - 1,
                          "at_ms": 1, "ts_ms": 5, "p": ids, "value": [1.0] * len(ids), "q": "good"})


def test_verify_reports_a_batch_naming_undefined_point_ids(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(_pt([1, 2]) + _b(1, [1, 2]) + _b(3, [2, 3]) + _b(5, [1]))
    summary = verify(path)
    assert not summary.ok and summary.readings == 5            # totals still count every record
    assert summary.corrupt is not None and summary.corrupt.index == 2
    assert summary.corrupt.offset == len(_pt([1, 2]) + _b(1, [1, 2]))
    assert "point ids that no earlier 'pt' record of this file defines: [3]" in summary.corrupt.reason
    with pytest.raises(Exception, match="record 3 names point id 3"):
        read_audit(path)


def test_verify_reports_a_malformed_point_definition(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    bad = encode_record({"k": "pt", "id": [1, 2], "asset": ["tx1"], "point": ["a", "b"], "unit": ["", ""],
                         "sensor": ["S", "T"], "at_ms": 1})
    path.write_bytes(bad + _b(1, [1]))
    summary = verify(path)
    assert summary.corrupt is not None and summary.corrupt.index == 0 and "'pt' record: asset must be a list of 2 (got a list of 1)" in summary.corrupt.reason


def test_every_audit_file_defines_the_point_ids_it_uses(tmp_path: Path) -> None:
    """After a rotation (reopen) and after a restart (open), the first batch re-defines its ids."""
    path = tmp_path / "audit.log"
    points = PointTable()
    batch = ReadingBatch([7, 7], ["tx1", "tx1"], ["a", "b"], [1.0, 2.0], ["kW", "kW"], ["good", "good"], ["S1", "S2"])
    log = AuditLog(path)
    log.open()

    def write(seq: int) -> None:
        sequenced = batch.sequenced(seq, 9)
        shape = points.shape(sequenced)
        log.add_batch_record(batch_record("s1", sequenced, shape), sequenced.seq_last, shape, points)
        log.sync()

    write(1)
    write(3)
    path.rename(tmp_path / "audit.log.1")
    assert log.reopen()
    write(5)
    log.close()
    log = AuditLog(path)
    log.open()                                              # a restart appends to the same file
    write(7)
    log.close()
    old = [decode_record(line)["k"] for line in (tmp_path / "audit.log.1").read_bytes().splitlines()]
    new = [decode_record(line)["k"] for line in path.read_bytes().splitlines()]
    assert old == ["pt", "b", "b"]
    assert new == ["cont", "pt", "b", "pt", "b"]
    summary = verify([tmp_path / "audit.log.1", path])
    assert summary.ok and summary.readings == 8 and summary.links == 1


def run(coro):
    return asyncio.run(coro)


def test_rows_written_before_the_point_table_are_still_leased(tmp_path: Path) -> None:
    """A spool of the previous format (7 columns per row, no points table) opens and delivers in order."""
    db = sqlite3.connect(tmp_path / "spool.db")
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        CREATE TABLE owner (site TEXT NOT NULL);
        CREATE TABLE batches (seq_first INTEGER PRIMARY KEY, seq_last INTEGER NOT NULL, accepted_ms INTEGER NOT NULL,
                              data BLOB NOT NULL, crc INTEGER NOT NULL);
        CREATE TABLE quarantine (seq INTEGER NOT NULL, accepted_ms INTEGER, data BLOB, crc INTEGER,
                                 reason TEXT NOT NULL, quarantined_ms INTEGER NOT NULL, seq_last INTEGER);
        INSERT INTO owner VALUES ('s1');
        INSERT INTO meta VALUES ('next_seq', 3);
    """)
    data = orjson.dumps([[100, 100], ["tx1", "tx1"], ["a", "b"], [1.5, 2.5], ["kW", "kW"], ["good", "good"],
                         ["S1", "S2"]])
    db.execute("INSERT INTO batches VALUES (1, 2, 99, ?, ?)", (data, zlib.crc32(data)))
    db.commit()
    db.close()

    async def go() -> list[tuple]:
        async with Spool(tmp_path, site="s1", memory_readings=1) as spool:
            await spool.append(ReadingBatch([200], ["tx1"], ["a"], [3.5], ["kW"], ["good"], ["S1"]))
            await spool.flush()
            await spool.append(ReadingBatch([300], ["tx1"], ["c"], [4.5], ["kW"], ["good"], ["S3"]))
        async with Spool(tmp_path, site="s1") as spool:      # read back from the database
            return [(r.seq, r.ts_ms, r.asset, r.point, r.value) for b in await spool.lease(100) for r in b.readings()]

    assert run(go()) == [(1, 100, "tx1", "a", 1.5), (2, 100, "tx1", "b", 2.5), (3, 200, "tx1", "a", 3.5),
                         (4, 300, "tx1", "c", 4.5)]


def test_rows_naming_a_corrupt_point_entry_are_quarantined(tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.log"

    async def write() -> None:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            await spool.append(ReadingBatch([1], ["tx1"], ["a"], [1.0], ["kW"], ["good"], ["S1"]))
            await spool.flush()
            await spool.append(ReadingBatch([2], ["tx1"], ["b"], [2.0], ["kW"], ["good"], ["S2"]))
            await spool.append(ReadingBatch([3], ["tx1"], ["a"], [3.0], ["kW"], ["good"], ["S1"]))

    run(write())
    db = sqlite3.connect(tmp_path / "spool" / "spool.db")
    db.execute("UPDATE points SET data = CAST(? AS BLOB) WHERE id = 2", (b'["tx1","X","kW","S2"]',))   # CRC kept
    db.commit()
    db.close()

    async def read() -> tuple[list[int], list[tuple[int, str]]]:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            rows = [b.seq_first for b in await spool.lease(10)]
            await spool.append(ReadingBatch([4], ["tx1"], ["b"], [4.0], ["kW"], ["good"], ["S2"]))
            await spool.flush()
            return rows + [b.seq_first for b in await spool.lease(10)], await spool.quarantined()

    rows, quarantined = run(read())
    assert rows == [1, 3, 4]                  # seq 4 names the point again: it gets a new id, not the corrupt one
    assert quarantined == [(2, "point id 2 is not in the point table")]
    summary = verify(audit_path)
    assert summary.ok and summary.quarantined == 1 and summary.readings == 4


def _block(ts: int, names: tuple[list[str], list[str], list[str], list[str]], n: int = 3) -> ReadingBatch:
    """A batch of one block: every batch of it shares the same four name lists, as the poller hands them."""
    asset, point, unit, sensor = names
    return ReadingBatch([ts] * n, asset, point, [float(ts + i) for i in range(n)], unit, ["good"] * n, sensor)


def _block_names(tag: str, n: int = 3) -> tuple[list[str], list[str], list[str], list[str]]:
    return [tag] * n, [f"{tag}p{i}" for i in range(n)], ["kW"] * n, [f"{tag}S{i}" for i in range(n)]


def _stored(directory: Path) -> tuple[list[dict], list[tuple[int, list[int]]]]:
    db = sqlite3.connect(directory / "spool.db")
    rows = [orjson.loads(data) for (data,) in db.execute("SELECT data FROM batches ORDER BY seq_first")]
    shapes = [(sid, orjson.loads(data)) for sid, data in db.execute("SELECT id, data FROM shapes ORDER BY id")]
    db.close()
    return rows, shapes


def test_a_repeating_block_names_its_shape_by_id_stored_with_its_first_row_and_read_back(tmp_path: Path) -> None:
    """The first batch of a block carries its point ids (``p``); the next ones, the same lists again, the
    shape's id (``s``), stored in the same commit; a batch of new lists (a joined or filtered poll) takes an id
    when its points come again; a restart reads every form back and reuses the stored ids."""
    block, filtered = _block_names("tx1"), _block_names("tx2")

    async def write() -> None:
        async with Spool(tmp_path, site="s1", memory_readings=1) as spool:
            await spool.append(_block(10, block))
            await spool.flush()
            await spool.append(_block(20, block))
            await spool.append(_block(30, tuple(map(list, filtered))))      # type: ignore[arg-type]
            await spool.flush()
            await spool.append(_block(40, tuple(map(list, filtered))))      # type: ignore[arg-type]

    async def reopen() -> list[tuple]:
        async with Spool(tmp_path, site="s1", memory_readings=1) as spool:
            again = _block_names("tx1")                   # equal lists after the restart: the stored shape by content
            await spool.append(_block(50, again))
            await spool.append(_block(60, again))
            await spool.flush()
        async with Spool(tmp_path, site="s1") as spool:
            return [(r.seq, r.ts_ms, r.asset, r.point, r.value, r.quality) for b in await spool.lease(100)
                    for r in b.readings()]

    run(write())
    rows, shapes = _stored(tmp_path)
    assert [("s" in row, "p" in row) for row in rows] == [(False, True), (True, False), (False, True), (True, False)]
    assert shapes == [(rows[1]["s"], rows[0]["p"]), (rows[3]["s"], rows[2]["p"])]
    readings = run(reopen())
    rows, shapes = _stored(tmp_path)
    assert len(shapes) == 2 and [row.get("s") for row in rows[4:]] == [shapes[0][0]] * 2
    expected = [(seq, ts, tag, f"{tag}p{i}", float(ts + i), "good")
                for seq, (ts, tag, i) in enumerate(((ts, tag, i) for ts, tag in ((10, "tx1"), (20, "tx1"), (30, "tx2"),
                                                                                 (40, "tx2"), (50, "tx1"), (60, "tx1"))
                                                    for i in range(3)), start=1)]
    assert readings == expected


def test_shape_ids_are_bounded_and_past_the_bound_shapes_stay_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(point_table, "MAX_STORED_SHAPES", 2)
    points = PointTable()
    blocks = [_block_names(f"d{i}") for i in range(4)]
    for ts in (1, 2):
        shapes = [points.shape(_block(ts, names)) for names in blocks]
    assert [shape.sid for shape in shapes] == [1, 2, 0, 0]
    assert [sid for sid, _ in points.take_unsaved_shapes()] == [1, 2]
    assert [b'"s":' in _row(_block(3, names).sequenced(1, 1), shape)[3] for names, shape in zip(blocks, shapes)] \
        == [True, True, False, False]


def test_joined_polls_and_more_blocks_than_the_list_cache_take_shape_ids_small_shapes_do_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A device read as two blocks (its poll joins new lists every time) and 100 one-block devices (more than
    the list cache holds, so each is found by its points) get ids from their second poll; a block of fewer
    than ``MIN_STORED_POINTS`` readings keeps ``p``."""
    monkeypatch.setattr(point_table, "MIN_STORED_POINTS", 8)
    points = PointTable()
    two = (_block_names("two", 6), _block_names("two", 12))
    devices = [_block_names(f"d{i}", 10) for i in range(100)]
    small = _block_names("small", 3)
    for ts in (1, 2, 3):
        first, second = (_block(ts, names, len(names[0])) for names in two)
        joined = ReadingBatch(*(a + b for a, b in zip(first.columns(), second.columns())))
        shapes = [points.shape(joined)] + [points.shape(_block(ts, names, 10)) for names in devices] \
            + [points.shape(_block(ts, small))]
        assert all(shape.sid == 0 for shape in shapes) if ts == 1 else \
            (all(shape.sid for shape in shapes[:-1]) and shapes[-1].sid == 0)
    assert len(points.take_unsaved_shapes()) == 101


def test_rows_naming_a_corrupt_or_unknown_shape_are_quarantined(tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.log"
    block = _block_names("tx1")

    async def write() -> None:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            for ts in (1, 2, 3):
                await spool.append(_block(ts, block))

    run(write())
    db = sqlite3.connect(tmp_path / "spool" / "spool.db")
    db.execute("UPDATE shapes SET data = CAST(? AS BLOB) WHERE id = 1", (b"[1,2,2]",))     # CRC kept: now wrong
    db.commit()
    db.close()

    async def read() -> tuple[list[int], list[tuple[int, str]]]:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            return [b.seq_first for b in await spool.lease(10)], await spool.quarantined()

    leased, quarantined = run(read())
    assert leased == []                     # the three batches of one commit all name the shape
    assert quarantined == [(seq, "shape id 1 is not in the shape table") for seq in (1, 4, 7)]
    summary = verify(audit_path)
    assert summary.ok and summary.quarantined == 3 and summary.readings == 9


def test_a_row_with_both_p_and_s_is_a_value_error() -> None:
    points = PointTable()
    batch = _block(1, _block_names("tx1"))
    points.shape(batch)
    shape = points.shape(batch)
    with pytest.raises(ValueError, match="both p and s"):
        _decode(1, 3, 0, orjson.dumps({"p": list(shape.ids), "s": shape.sid, "t": 1, "v": [1.0] * 3, "q": "good"}),
                points)


def test_a_spool_of_the_previous_version_without_a_shape_table_opens_and_delivers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows with inline ``p`` and no ``shapes`` table (the previous version's file): read back, and new rows of
    a repeating block name a shape stored in the table the open created."""
    monkeypatch.setattr(point_table, "MIN_STORED_POINTS", 10**6)     # written as the previous version did: no ids

    async def write() -> None:
        async with Spool(tmp_path, site="s1") as spool:
            for ts in (1, 2):
                await spool.append(_block(ts, tuple(map(list, _block_names("tx1")))))    # type: ignore[arg-type]
                await spool.flush()

    run(write())
    db = sqlite3.connect(tmp_path / "spool.db")
    assert db.execute("SELECT COUNT(*) FROM shapes").fetchone() == (0,)
    db.execute("DROP TABLE shapes")
    db.commit()
    db.close()
    monkeypatch.setattr(point_table, "MIN_STORED_POINTS", 1)

    async def reopen() -> list[tuple[int, float]]:
        async with Spool(tmp_path, site="s1", memory_readings=1) as spool:
            block = _block_names("tx1")
            for ts in (3, 4):
                await spool.append(_block(ts, block))
            await spool.flush()
            return [(r.seq, r.value) for b in await spool.lease(100) for r in b.readings()]

    assert run(reopen()) == [(seq, float(1 + (seq - 1) // 3 + (seq - 1) % 3)) for seq in range(1, 13)]
    rows, shapes = _stored(tmp_path)
    assert [row.get("s") for row in rows] == [None, None, 1, 1] and shapes == [(1, rows[0]["p"])]
