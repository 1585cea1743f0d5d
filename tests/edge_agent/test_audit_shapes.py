"""Batch shapes in the audit log: an ``sh`` record defines a shape's point ids once per file, and the
``b`` records of the batches with that shape name it by number (``s``) instead of repeating ``p``.

Files written before shapes (``p`` in every point-form record), and files holding both forms after an
upgrade, still verify and read; a record naming a shape its file does not define (or defines with another
number of points) is reported by line and field, never raised.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edge_agent.audit as audit_module
from edge_agent.audit import AuditLog, BatchShapes, batch_record, decode_record, encode_record, read_audit, verify
from edge_agent.batch import ReadingBatch
from edge_agent.errors import AuditError
from edge_agent.point_table import PointTable, shared_columns
from edge_agent.spool import Spool


def _batch(i: int, points: range) -> ReadingBatch:
    batch = ReadingBatch()
    for k in points:
        batch.add(1_764_000_000_000 + i, "inv1", f"hr{k}", float(100 * i + k), "kW", "good", f"INV1_HR{k}")
    return batch


def _records(path: Path) -> list[dict[str, Any]]:
    return [decode_record(line) for line in path.read_bytes().splitlines()]


def _spool_run(directory: Path, batches: list[ReadingBatch]) -> None:
    async def go() -> None:
        async with Spool(directory / "spool", site="s1", audit=AuditLog(directory / "audit.log")) as spool:
            for batch in batches:
                await spool.append(batch)
                await spool.flush()

    asyncio.run(go())


def _check_reads(path: Path, batches: list[ReadingBatch]) -> None:
    """Every reading of ``batches`` (appended in this order, seqs from 1) read back with its names."""
    expected = [r for b in batches for r in b.readings()]
    summary = verify(path)
    assert summary.ok, summary.lines()
    assert (summary.readings, summary.seq_min, summary.seq_max) == (len(expected), 1, len(expected))
    readings = read_audit(path).readings
    assert sorted(readings) == list(range(1, len(expected) + 1))
    for seq, reading in enumerate(expected, 1):
        got = readings[seq]
        assert (got["asset"], got["point"], got["sensor"], got["unit"], got["value"], got["ts_ms"]) == \
            (reading.asset, reading.point, f"INV1_HR{reading.point[2:]}", reading.unit, reading.value, reading.ts_ms)


def test_a_repeated_shape_is_defined_once_and_named_by_number(tmp_path: Path) -> None:
    full, filtered = range(99), range(3, 6)           # a filtered batch of 3 readings keeps its "p"
    batches = [_batch(0, full), _batch(1, full), _batch(2, filtered), _batch(3, full)]
    _spool_run(tmp_path, batches)
    records = _records(tmp_path / "audit.log")
    kinds = [r["k"] for r in records]
    assert kinds == ["pt", "sh", "b", "b", "b", "b"]
    shape = records[1]
    assert shape["p"] == records[0]["id"] and len(shape["p"]) == 99
    b = [r for r in records if r["k"] == "b"]
    assert [r.get("s") for r in b] == [shape["id"], shape["id"], None, shape["id"]]
    assert "p" not in b[0] and b[2]["p"] == records[0]["id"][3:6]
    _check_reads(tmp_path / "audit.log", batches)


def test_a_record_naming_its_shape_is_a_quarter_smaller(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bytes per record the rig writes (99 readings, ids above 100 as with ten devices)."""
    points = PointTable()
    points.shape(_batch(0, range(1000, 1891)))         # ids 1..891 taken: the device's are 892..990
    batch = _batch(1, range(99)).sequenced(1_000_000, 1_764_000_000_100)
    shape = points.shape(batch)
    named = batch_record("s1", batch, shape, shared_columns(batch))
    monkeypatch.setattr(audit_module, "SHAPES", BatchShapes(limit=0))     # as agents before shapes wrote it
    inline = batch_record("s1", batch, shape, shared_columns(batch))
    assert "s" in decode_record(named[:-1]) and decode_record(inline[:-1])["p"] == list(shape.ids)
    print(f"bytes per record: {len(inline)} with p, {len(named)} with s")
    assert len(named) <= 0.75 * len(inline)


def test_a_file_from_before_shapes_and_one_holding_both_forms_verify_and_read(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent before shapes wrote ``p`` in every point-form record (what ``BatchShapes(limit=0)`` gives);
    the upgraded agent appends to its file, defining its shapes there."""
    full = range(20)
    old = [_batch(i, full) for i in range(3)]
    monkeypatch.setattr(audit_module, "SHAPES", BatchShapes(limit=0))
    _spool_run(tmp_path, old)
    assert [r["k"] for r in _records(tmp_path / "audit.log")] == ["pt", "b", "b", "b"]
    assert all("p" in r and "s" not in r for r in _records(tmp_path / "audit.log") if r["k"] == "b")
    _check_reads(tmp_path / "audit.log", old)

    monkeypatch.setattr(audit_module, "SHAPES", BatchShapes())
    new = [_batch(i, full) for i in range(3, 6)]
    _spool_run(tmp_path, new)
    records = _records(tmp_path / "audit.log")
    assert [r["k"] for r in records] == ["pt", "b", "b", "b", "pt", "sh", "b", "b", "b"]
    assert [("p" in r, "s" in r) for r in records if r["k"] == "b"] == [(True, False)] * 3 + [(False, True)] * 3
    _check_reads(tmp_path / "audit.log", old + new)


def test_a_restarted_agent_numbers_afresh_and_the_latest_definition_holds(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first = [_batch(0, range(10)), _batch(1, range(10))]
    _spool_run(tmp_path, first)
    monkeypatch.setattr(audit_module, "SHAPES", BatchShapes())     # a new process: its numbers from 1 again
    second = [_batch(2, range(10, 30)), _batch(3, range(10))]
    _spool_run(tmp_path, second)
    records = _records(tmp_path / "audit.log")
    shapes = [r for r in records if r["k"] == "sh"]
    assert [s["id"] for s in shapes][-2:] == [1, 2]                # 1 named first 10..29's ids, then ...
    assert len(shapes[-2]["p"]) == 20 and len(shapes[-1]["p"]) == 10
    _check_reads(tmp_path / "audit.log", first + second)


def test_shape_numbers_are_bounded() -> None:
    shapes, points = BatchShapes(limit=2, min_points=8), PointTable()
    a, b, c = (points.shape(_batch(0, range(start, start + 8))) for start in (0, 8, 16))
    short = points.shape(_batch(0, range(7)))
    assert shapes.number(a, assign=False) is None                  # only the encoder gives numbers
    assert [shapes.number(a), shapes.number(b), shapes.number(c), shapes.number(short)] == [1, 2, None, None]
    again = points.shape(_batch(5, range(8)))                      # equal ids, maybe another Shape object
    assert shapes.number(again) == shapes.number(again, assign=False) == 1


def _line(body: dict[str, Any]) -> bytes:
    return encode_record({**body, "at_ms": 1})


_PT = {"k": "pt", "id": [1, 2, 3], "asset": ["a"] * 3, "point": ["x", "y", "z"], "unit": [""] * 3,
       "sensor": ["X", "Y", "Z"]}
_SH = {"k": "sh", "id": 7, "p": [1, 2, 3]}


def _b(**fields: Any) -> dict[str, Any]:
    return {"k": "b", "site": "s1", "seq_first": 1, "seq_last": 3, "ts_ms": 5, "value": [1.0, 2.0, 3.0],
            "q": "good", **fields}


@pytest.mark.parametrize("records,where,reason", [
    ([_PT, _b(s=7)], 2, "names shape s 7, which no earlier 'sh' record of this file defines"),
    ([_PT, {**_SH, "p": [1, 2]}, _b(s=7)], 3, "shape s 7, which has 2 points, for 3 readings"),
    ([_PT, {**_SH, "p": [1, 9, 3]}], 2, "shape 7 names point ids that no earlier 'pt' record of this file defines: [9]"),
    ([_PT, _SH, _b(s=7, p=[1, 2, 3])], 3, "'b' record: s and p are both given"),
    ([_PT, _SH, _b(s=0)], 3, "'b' record: s must be a shape number (an integer 1..2**63-1) (got 0)"),
    ([_PT, _SH, _b(s=True)], 3, "'b' record: s must be a shape number"),
    ([_PT, _SH, _b(s="7")], 3, "'b' record: s must be a shape number"),
    ([_PT, {**_SH, "id": 2**63}], 2, "'sh' record: id must be a shape number"),
    ([_PT, {**_SH, "p": []}], 2, "'sh' record: p must not be empty"),
    ([_PT, {**_SH, "p": "1,2,3"}], 2, "'sh' record: p must be a list of point ids"),
    ([_PT, {**_SH, "p": [1, 0, 3]}], 2, "'sh' record: p[1] must be a point id"),
    ([_PT, {k: v for k, v in _SH.items() if k != "id"}], 2, "'sh' record: id is missing"),
])
def test_a_hostile_shape_or_reference_is_reported_by_record_and_field(tmp_path: Path, records: list, where: int,
                                                                      reason: str) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b"".join(map(_line, records)))
    summary = verify(path)
    assert summary.corrupt is not None and summary.corrupt.index + 1 == where, summary.lines()
    assert reason in summary.corrupt.reason
    with pytest.raises(AuditError, match=f"record {where}"):
        read_audit(path)


_ops = st.lists(st.one_of(
    st.tuples(st.just("sh"), st.integers(1, 3), st.integers(1, 4)),          # define number, with n points
    st.tuples(st.just("b"), st.integers(1, 3), st.integers(1, 4))),           # name number, for n readings
    max_size=12)


@settings(max_examples=200, deadline=None)
@given(_ops)
def test_any_order_of_definitions_and_references_is_checked_as_the_latest_definition_says(ops: list) -> None:
    """Whatever the order, a reference is good exactly when the latest earlier definition of its number
    has as many points as its readings; verify reports the first bad one, read_audit raises on it."""
    pt = {"k": "pt", "id": [1, 2, 3, 4], "asset": ["a"] * 4, "point": list("wxyz"), "unit": [""] * 4,
          "sensor": list("WXYZ")}
    lines, defined, first_bad, seq = [_line(pt)], {}, None, 1
    for index, (kind, number, n) in enumerate(ops, 2):
        if kind == "sh":
            lines.append(_line({"k": "sh", "id": number, "p": list(range(1, n + 1))}))
            defined[number] = n
        else:
            lines.append(_line(_b(s=number, seq_first=seq, seq_last=seq + n - 1, value=[1.0] * n)))
            seq += n
            if defined.get(number) != n and first_bad is None:
                first_bad = index
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "audit.log"
        path.write_bytes(b"".join(lines))
        summary = verify(path)
        assert summary.records == len(lines) and summary.readings == seq - 1
        if first_bad is None:
            assert summary.ok, summary.lines()
            assert len(read_audit(path).readings) == seq - 1
        else:
            assert summary.corrupt is not None and summary.corrupt.index + 1 == first_bad
            with pytest.raises(AuditError, match=f"record {first_bad}:"):
                read_audit(path)
