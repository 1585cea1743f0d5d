"""Audit records whose CRC is valid but whose content is malformed (``edge_agent.audit_records``).

Every reader — ``verify`` and ``ems-edge audit verify``, the writer's tail scan at start-up
(``AuditLog.open``) and ``read_audit`` — reports such a record by line and field, never with a
traceback, and keeps counting the records around it. Hypothesis takes a real log, breaks one record
(a key removed, a value replaced by a hostile one, a list cut or grown, invalid UTF-8 or random bytes)
and gives it a fresh CRC.
"""

from __future__ import annotations

import gzip
import json
import re
import tempfile
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.audit import AuditLog, batch_record, decode_record, encode_record, read_audit, verify
from edge_agent.audit_records import KINDS, record_problem
from edge_agent.batch import ReadingBatch
from edge_agent.cli import main
from edge_agent.errors import AuditError
from edge_agent.point_table import PointTable, shared_columns
from edge_agent.seq_ranges import SeqRanges


def _batch(seq_first: int, n: int, accepted_ms: int = 1_764_000_000_100, block: int = 1) -> ReadingBatch:
    """``n`` readings; times shared by ``block`` readings in a row (a device read as blocks: runs)."""
    batch = ReadingBatch()
    for k in range(n):
        batch.add(1_764_000_000_000 + k // block, "tx1", f"p{k}", None if k == 1 else 60.0 + k, "degC",
                  "stale" if k == 1 else "good", f"S{k}")
    return batch.sequenced(seq_first, accepted_ms)


def _good_log(path: Path) -> list[bytes]:
    """A log holding every record kind, as the agent writes them; its lines (without newline)."""
    log = AuditLog(path, clock=lambda: 1_764_000_000.0)
    log.open()
    points = PointTable()
    for seq_first in (1, 4):                              # point form: a 'pt' record, then two batches
        batch = _batch(seq_first, 3)
        shape = points.shape(batch)
        log.add_batch_record(batch_record("s1", batch, shape, shared_columns(batch)), batch.seq_last, shape, points)
    batch = _batch(11, 8)                                 # a shape of 8 readings: an 'sh' record, then "s"
    shape = points.shape(batch)
    log.add_batch_record(batch_record("s1", batch, shape, shared_columns(batch)), batch.seq_last, shape, points)
    batch = _batch(19, 8, block=4)                        # two blocks of one read: ts_ms as runs
    shape = points.shape(batch)
    record = batch_record("s1", batch, shape, shared_columns(batch))
    assert b'"ts_ms":[[1764000000000,4],[1764000000001,4]]' in record
    log.add_batch_record(record, batch.seq_last, shape, points)
    log.batch("s1", _batch(7, 2))                         # column form
    log.event("drop", site="s1", seq_first=1, seq_last=2, count=2)
    log.event("quar", site="s1", seq=9, seq_last=9, reason="checksum mismatch")
    log.event("repair", bytes=12, at_offset=400)
    log.event("cmd", id="c1", control="p_limit", value=5.0, issued_ms=1, expires_ms=2, event=None,
              decision="accepted", reason=None)
    log.event("write", id="c1", control="p_limit", device="inv", unit=1, register="holding", address=10,
              registers=[5], value=5.0, failsafe=False, outcome="applied", readback=5.0, reason=None)
    log.event("cont", prev_crc="0123abcd", last_seq=8)
    log.close()
    path.write_bytes(path.read_bytes() + encode_record(
        {"k": "r", "site": "s1", "seq": 10, "ts_ms": 5, "asset": "tx1", "point": "p0", "sensor": "S0",
         "value": 1.5, "unit": "kW", "q": "good", "at_ms": 6}))
    return path.read_bytes().splitlines()


def _readings(body: dict[str, Any]) -> int:
    if body["k"] == "r":
        return 1
    return body["seq_last"] - body["seq_first"] + 1 if body["k"] == "b" else 0


def _last_seq(body: dict[str, Any]) -> int:
    return body["seq"] if body["k"] == "r" else body["seq_last"] if body["k"] == "b" else 0


def _with_crc(data: bytes) -> bytes:
    return b"%08x %s" % (zlib.crc32(data), data)


with tempfile.TemporaryDirectory() as _scratch:
    GOOD = _good_log(Path(_scratch) / "audit.log")
GOOD_BODIES = [decode_record(line) for line in GOOD]

_hostile = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64 - 1]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20), st.lists(st.integers(), max_size=3),
    st.lists(st.lists(st.integers(-2**64, 2**64) | st.booleans(), max_size=3), max_size=3),     # runs, or nearly
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@st.composite
def broken_logs(draw: st.DrawFn) -> tuple[list[bytes], int, str | None]:
    """GOOD with one record broken and re-CRC'd: (lines, the broken line's index, the field broken or None)."""
    index = draw(st.integers(0, len(GOOD) - 1))
    body = dict(GOOD_BODIES[index])
    key = draw(st.sampled_from(sorted(body)))
    how = draw(st.sampled_from(["drop", "replace", "shorten", "grow", "utf8", "bytes"]))
    if how == "bytes":
        line = _with_crc(draw(st.binary(max_size=200)).replace(b"\n", b""))     # one line
        key = None
    elif how == "utf8":
        data = orjson.dumps(body)
        at = draw(st.integers(0, len(data)))
        line = _with_crc(data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + data[at:])
        key = None
    else:
        if how == "drop":
            del body[key]
        elif how == "replace" or not isinstance(body[key], list) or not body[key]:
            body[key] = draw(_hostile)
        elif how == "shorten":
            body[key] = body[key][:-1]
        else:
            body[key] = body[key] + [draw(_hostile)]
        line = _with_crc(json.dumps(body).encode())     # json: integers beyond 64 bits too
    lines = list(GOOD)
    lines[index] = line
    return lines, index, key


# Fields whose value sets what other fields must hold: breaking them may be reported at a dependent field.
_COUPLED = {"seq_first", "seq_last", "seq", "id", "p", "s", "k"}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(broken_logs())
def test_a_broken_record_is_reported_by_field_and_the_others_still_count(broken: tuple) -> None:
    lines, index, key = broken
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "audit.log"
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        try:
            body = decode_record(lines[index])
        except ValueError as exc:
            body, problem = None, str(exc)
        summary = verify(path)
        assert summary.records == len(GOOD)
        others = sum(_readings(b) for i, b in enumerate(GOOD_BODIES) if i != index)
        if body is None:
            assert summary.corrupt is not None and summary.corrupt.index == index
            assert summary.corrupt.reason == problem
            if key is not None and key not in _COUPLED:
                named = re.match(r"'(\w+)' record: (\w+)", problem)
                assert named and named.group(2) == key, problem
            assert summary.readings == others                    # every other record still counted
            with pytest.raises(AuditError, match=f"record {index + 1} is corrupt"):
                read_audit(path)
        else:
            assert summary.readings == others + _readings(body)
            try:
                read_audit(path)
            except AuditError as exc:                             # a context check (e.g. undefined point ids)
                assert str(path) in str(exc)
        log = AuditLog(path)                                      # the writer's start-up scan of the tail
        log.open()
        log.close()
        assert log.last_seq >= max(_last_seq(b) for i, b in enumerate(GOOD_BODIES) if i != index)
        assert main(["audit", "verify", "--path", str(path)]) == (0 if summary.ok else 1)


@pytest.mark.parametrize("ts", [b"[" * 1000 + b"]" * 1000, b"[[" + b"[" * 1000 + b"]" * 1000 + b",8]]",
                                b"[1," + b"[" * 1000 + b"]" * 1000 + b",3,4,5,6,7,8]"])
def test_times_nested_as_deep_as_json_allows_are_reported_by_field(tmp_path: Path, ts: bytes) -> None:
    """A CRC-valid record whose ts_ms nests 1000 lists deep (orjson reads up to 1024): named, not a RecursionError."""
    body = orjson.dumps({"k": "b", "site": "s1", "seq_first": 1, "seq_last": 8, "at_ms": 1, "s": 1,
                         "value": [1.0] * 8, "q": "good", "ts_ms": 0})
    line = _with_crc(body.replace(b'"ts_ms":0', b'"ts_ms":' + ts))
    with pytest.raises(ValueError, match=r"'b' record: ts_ms (run|item) \d+ must be"):
        decode_record(line)
    path = tmp_path / "audit.log"
    path.write_bytes(b"".join(line + b"\n" for line in GOOD[:3]) + line + b"\n")
    summary = verify(path)
    assert summary.corrupt is not None and summary.corrupt.index == 3 and "ts_ms" in summary.corrupt.reason
    with pytest.raises(AuditError, match="record 4 is corrupt"):
        read_audit(path)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted({k for b in GOOD_BODIES for k in b} | {"count", "x"})), _hostile,
                       max_size=12), st.sampled_from(sorted(KINDS)))
def test_any_body_of_any_kind_is_checked_without_an_exception(body: dict[str, Any], kind: str) -> None:
    body["k"] = kind
    problem = record_problem(body)
    assert problem is None or problem.startswith(f"'{kind}' record: ")


def test_a_point_definition_missing_a_column_is_named_not_a_key_error(tmp_path: Path) -> None:
    """The case the review found: read_audit raised KeyError('sensor')-style errors on such a record."""
    path = tmp_path / "audit.log"
    pt = {"k": "pt", "id": [1], "asset": ["tx1"], "point": ["p0"], "unit": ["kW"], "at_ms": 1}
    b = {"k": "b", "site": "s1", "seq_first": 1, "seq_last": 1, "at_ms": 1, "ts_ms": 5, "p": [1], "q": "good"}
    path.write_bytes(encode_record(pt) + encode_record(b))
    with pytest.raises(AuditError, match=r"record 1 is corrupt \('pt' record: sensor is missing\)"):
        read_audit(path)
    summary = verify(path)
    assert summary.records == 2 and summary.corrupt is not None and summary.corrupt.index == 0
    assert summary.lines()[-1] == "CORRUPT: line 1 (byte offset 0): 'pt' record: sensor is missing"
    path.write_bytes(encode_record({**pt, "sensor": ["S0"]}) + encode_record(b))
    with pytest.raises(AuditError, match=r"record 2 is corrupt \('b' record: value is missing\)"):
        read_audit(path)


@pytest.mark.parametrize("body, reason", [
    ({"k": "drop", "site": "s1", "seq_first": 1, "seq_last": 3, "count": "x", "at_ms": 1},
     "'drop' record: count must be an integer 1..3 (the seq range's size) (got 'x')"),
    ({"k": "drop", "site": "s1", "seq_first": 1, "seq_last": 2**63 - 1, "count": [1], "at_ms": 1},
     "'drop' record: count must be an integer 1..9223372036854775807 (the seq range's size) (got [1])"),
    ({"k": "b", "site": "s1", "seq_first": 2**63 - 1, "seq_last": 2**64 - 1, "at_ms": 1},
     "'b' record: seq_last must be an integer 1..2**63-1 (got 18446744073709551615)"),
    ({"k": "b", "site": "s1", "seq_first": 1, "seq_last": 2, "at_ms": 1, "ts_ms": [1, 2], "asset": ["a", "b"],
      "point": ["p", "q"], "sensor": ["s", "t"], "value": [1.0], "unit": ["", ""], "q": ["good", "good"]},
     "'b' record: value must be a list of 2 (got a list of 1)"),
    ({"k": "cont", "prev_crc": "zz", "last_seq": 1, "at_ms": 1},
     "'cont' record: prev_crc must be 8 lowercase hexadecimal digits (got 'zz')"),
    ({"k": "future", "at_ms": 1}, "record kind k must be one of r, b, pt, sh, drop, quar, repair, cmd, write, cont "
                                  "(got 'future')"),
])
def test_verify_cli_names_the_line_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             body: dict[str, Any], reason: str) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(GOOD[0] + b"\n" + encode_record(body) + GOOD[1] + b"\n")
    assert main(["audit", "verify", "--path", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"CORRUPT: line 2 (byte offset {len(GOOD[0]) + 1}): {reason}" in out
    assert "3 records" in out
    with pytest.raises(AuditError, match=re.escape(f"record 2 is corrupt ({reason})")):
        read_audit(path)


def test_invalid_utf8_with_a_valid_crc_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(_with_crc(b'{"k":"quar","site":"s\xff1","seq":1,"reason":"x","at_ms":1}') + b"\n" + GOOD[0] + b"\n")
    summary = verify(path)
    assert summary.records == 2 and summary.corrupt is not None and summary.corrupt.index == 0
    assert "CRC matches but JSON is invalid" in summary.corrupt.reason and "UTF-8" in summary.corrupt.reason


def test_read_audit_keeps_any_drop_range_the_spool_can_write_as_a_range(tmp_path: Path) -> None:
    """A lowered ``max_readings`` (up to 10**9) drops the whole excess in one record; read_audit was refusing
    ranges over 10,000,000 seqs. Drops are held as ranges: the largest valid one costs two integers."""
    path = tmp_path / "audit.log"
    records = [{"k": "drop", "site": "s1", "seq_first": 1, "seq_last": 10**9, "count": 10**9, "at_ms": 1},
               {"k": "drop", "site": "s1", "seq_first": 10**9 + 1, "seq_last": 2**63 - 1, "count": 1, "at_ms": 2},
               {"k": "drop", "site": "s1", "seq_first": 5, "seq_last": 7, "count": 3, "at_ms": 3}]
    path.write_bytes(GOOD[0] + b"\n" + b"".join(encode_record(record) for record in records))
    assert verify(path).ok
    dropped = read_audit(path).dropped
    assert dropped.ranges == [(1, 2**63 - 1)] and len(dropped) == 2**63 - 1
    assert 1 in dropped and 10**9 in dropped and 2**63 - 1 in dropped and 0 not in dropped and 2**63 not in dropped
    assert {0, 3, 2**63} - dropped == {0, 2**63}


def test_dropped_seq_ranges_behave_as_the_set_of_their_seqs() -> None:
    ranges = [(3, 5), (10, 12), (4, 8), (13, 13), (20, 19), (30, 31)]
    dropped, expected = SeqRanges(ranges), {seq for first, last in ranges for seq in range(first, last + 1)}
    assert dropped == expected and expected == dropped and len(dropped) == len(expected) and bool(dropped)
    assert list(dropped) == sorted(expected) and dropped.ranges == [(3, 8), (10, 13), (30, 31)]
    assert set(range(40)) - dropped == set(range(40)) - expected and all((s in dropped) == (s in expected)
                                                                       for s in range(-2, 40))
    assert not SeqRanges() and SeqRanges() == set() and "x" not in dropped


def _rotated_pair(directory: Path, gz: bytes) -> list[Path]:
    """A rotated, compressed file holding ``gz`` and the live file after it (GOOD's last record)."""
    (directory / "audit.log.1.gz").write_bytes(gz)
    (directory / "audit.log").write_bytes(GOOD[-1] + b"\n")
    return [directory / "audit.log.1.gz", directory / "audit.log"]


def test_a_damaged_rotated_gz_is_reported_and_the_files_after_it_still_verified(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = gzip.compress(b"".join(line + b"\n" for line in GOOD[:3]))        # an intact member, then a damaged one
    second = bytearray(gzip.compress(b"".join(line + b"\n" for line in GOOD[3:]) * 50))
    second[20:60] = bytes(b ^ 0x55 for b in second[20:60])
    files = _rotated_pair(tmp_path, first + bytes(second))
    summary = verify(files)
    assert summary.corrupt_path == files[0] and summary.corrupt is not None and summary.corrupt.index >= 3
    assert "compressed data is damaged from here on" in summary.corrupt.reason
    assert summary.readings >= 3 + 3 + 1                  # the intact member's batches, and the live file's reading
    assert main(["audit", "verify", "--path", str(files[-1]), "--rotated"]) == 1
    assert f"CORRUPT: {files[0]} line" in capsys.readouterr().out


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_damage_to_a_rotated_gz_is_reported_never_raised(data: st.DataObject) -> None:
    gz = bytearray(gzip.compress(b"".join(line + b"\n" for line in GOOD)))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(gz) - 1))
        gz[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(gz)))
    with tempfile.TemporaryDirectory() as scratch:
        files = _rotated_pair(Path(scratch), bytes(gz[:cut]))
        summary = verify(files)
        assert summary.files == files and summary.records >= 1       # the live file is always read
