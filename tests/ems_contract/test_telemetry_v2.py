"""Schema v2 (columnar): round trip, size, every rejection reason, and fuzzing of the decoder."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ems_contract.telemetry import (MAX_READINGS_PER_BATCH, QUALITIES, Reading, SchemaError, encode_batch,
                                    parse_json, telemetry_topic, valid_unit)
from ems_contract.telemetry_v2 import (MAX_TS_MS, Columns, contiguous_runs, decode_batch_v2, decode_telemetry,
                                       decode_telemetry_columns, encode_batch_v2, encode_segments)
from ems_contract.telemetry_v2 import _parse as parse_v2

ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z")
units = st.text(max_size=32).filter(valid_unit)


@st.composite
def reading_runs(draw: st.DrawFn) -> list[Reading]:
    """Readings with consecutive seqs, a few assets/points/units, any order of times, null where allowed."""
    n = draw(st.integers(1, 150))
    seq_first = draw(st.integers(1, 2**40))
    base = draw(st.integers(0, 2**45))
    names = draw(st.lists(st.tuples(ids, ids, units), min_size=1, max_size=12))
    out = []
    for i in range(n):
        asset, point, unit = draw(st.sampled_from(names))
        quality = draw(st.sampled_from(QUALITIES))
        null_ok = quality in ("device_error", "stale")
        value = draw(st.none() if null_ok and draw(st.booleans()) else
                     st.floats(allow_nan=False, allow_infinity=False) | st.integers(-2**52, 2**52).map(float))
        out.append(Reading(seq_first + i, base + draw(st.integers(0, 10**7)), asset, point, value, unit, quality))
    return out


@settings(max_examples=300, deadline=None)
@given(reading_runs(), st.integers(0, MAX_TS_MS))
def test_round_trip_keeps_every_reading(readings: list[Reading], sent_ms: int) -> None:
    payload = encode_batch_v2("sub-07", readings, sent_ms)
    batch = decode_telemetry(payload, telemetry_topic("sub-07"))
    assert batch.readings == tuple(readings)
    assert (batch.site, batch.seq_first, batch.seq_last, batch.sent_ms) == \
        ("sub-07", readings[0].seq, readings[-1].seq, sent_ms)
    assert decode_batch_v2(payload) == batch
    columns = decode_telemetry_columns(payload, telemetry_topic("sub-07"))
    assert isinstance(columns, Columns) and columns.count == len(readings)
    assert columns.batch() == batch


@settings(max_examples=100, deadline=None)
@given(reading_runs())
def test_the_columns_decoder_keeps_v1_as_a_batch_and_v2_written_differently_as_columns(readings: list[Reading]) -> None:
    v1 = encode_batch("s1", readings, 5)
    assert decode_telemetry_columns(v1) == decode_telemetry(v1)
    reordered = json.dumps(dict(reversed(json.loads(encode_batch_v2("s1", readings, 5)).items()))).encode()
    columns = decode_telemetry_columns(reordered)
    assert isinstance(columns, Columns) and columns.batch() == decode_telemetry(v1)


@settings(max_examples=100, deadline=None)
@given(reading_runs())
def test_v1_and_v2_decode_to_the_same_batch(readings: list[Reading]) -> None:
    v1 = decode_telemetry(encode_batch("s1", readings, 5))
    v2 = decode_telemetry(encode_batch_v2("s1", readings, 5))
    assert v1 == v2


def _device_read(n: int = 100, seq_first: int = 1001) -> list[Reading]:
    """One read of a 100-register device: one timestamp, 100 points of one asset, one unit."""
    ts = 1_764_152_400_123
    return [Reading(seq_first + i, ts, "dev01", f"p{i:03d}", float(1000 + 37 * i % 6000) / 10, "kW")
            for i in range(n)]


def test_a_100_reading_device_read_costs_at_most_30_bytes_a_reading() -> None:
    readings = _device_read()
    v2 = encode_batch_v2("sub-07", readings, 1_764_152_400_500)
    v1 = encode_batch("sub-07", readings, 1_764_152_400_500)
    print(f"bytes/reading: v1 {len(v1) / 100:.1f}, v2 {len(v2) / 100:.1f}")
    assert len(v2) / 100 <= 30
    assert len(v2) < len(v1) / 3


def test_a_spool_batch_across_devices_and_times_stays_compact() -> None:
    """Ten device reads of 10 points, 100 ms apart, as the drain batches them from the spool."""
    readings = [Reading(1 + i, 1_764_152_400_000 + (i // 10) * 100, f"dev{i // 10:02d}", f"p{i % 10:03d}",
                        round(20 + i * 0.37, 2), "degC") for i in range(100)]
    payload = encode_batch_v2("sub-07", readings, 1)
    assert len(payload) / 100 <= 30, len(payload) / 100


def test_contiguous_runs_split_at_gaps() -> None:
    assert contiguous_runs([]) == []
    assert contiguous_runs([4]) == [(0, 1)]
    assert contiguous_runs([1, 2, 3, 7, 8, 10]) == [(0, 3), (3, 5), (5, 6)]


def test_encoder_refuses_a_gap_in_the_seqs() -> None:
    readings = _device_read(3)
    with pytest.raises(SchemaError) as err:
        encode_batch_v2("s1", [readings[0], readings[2]], 1)
    assert err.value.reason == "bad_seq"


def _body(**changes: object) -> dict:
    body = json.loads(encode_batch_v2("sub-07", _device_read(4), 1))
    for key, value in changes.items():
        if value is ...:
            del body[key]
        else:
            body[key] = value
    return body


@pytest.mark.parametrize("body, reason, detail", [
    (_body(v=3), "bad_version", "v must be 1 or 2 (got 3)"),
    (_body(v="2"), "bad_version", "v must be 1 or 2 (got '2')"),
    (_body(seq_last=1005), "bad_seq", "seq_first..seq_last 1001..1005 is 5 readings; the columns hold 4"),
    (_body(seq_first=1002), "bad_seq", "seq_first..seq_last 1002..1004 is 3 readings; the columns hold 4"),
    (_body(seq_last=1000), "bad_seq", "seq_first..seq_last 1001..1000 must span 1..1000 readings"),
    (_body(seq_first=1, seq_last=1001), "bad_seq", "must span 1..1000 readings"),
    (_body(val=[1.0, 2.0, 3.0]), "bad_shape", "one entry per reading (got 4, 4, 3, 4 entries)"),
    (_body(dt=[0, 0, 0, 0, 0]), "bad_shape", "one entry per reading (got 4, 5, 4, 4 entries)"),
    (_body(p=[]), "bad_shape", "p must have 1..1000 entries (got 0)"),
    (_body(q=...), "bad_shape", "q must be a list (got None)"),
    (_body(p=[0, 1, 2, 9]), "bad_field", "p[3] must be an index 0..3 (got 9)"),
    (_body(p=[0, 1, 2, True]), "bad_field", "p[3] must be an index 0..3 (got True)"),
    (_body(q=[0, 0, 0, 4]), "bad_field", "q[3] must be an index 0..3 (got 4)"),
    (_body(dt=[0, 0, -1, 0]), "bad_field", "dt[2] must be an integer"),
    (_body(dt=[0, 0, 0.5, 0]), "bad_field", "dt[2] must be an integer"),
    (_body(ts_ms=MAX_TS_MS, dt=[0, 0, 1, 0]), "bad_field", "dt[2] must be an integer 0..0 (got 1)"),
    (_body(ts_ms=-5), "bad_field", "ts_ms must be 0..9223372036854775807 (got -5)"),
    (_body(v=True), "bad_version", "v must be 1 or 2 (got True)"),
    (_body(units=["kW "]), "bad_field", "units[0] must be a string of at most 32 printable characters"),
    (_body(val=[1, "hot", 2, 3]), "bad_value", "val[1] must be a finite number or null (got 'hot')"),
    (_body(val=[1, None, 2, 3]), "bad_value", "val[1] is null but q[1] is 'good'"),
    (_body(val=[1, 2**60, 2, 3]), "bad_value", "val[1] is out of range"),
    (_body(assets=["ok", "bad/asset"]), "bad_id", "assets[1] 'bad/asset' is not a valid id"),
    (_body(points=[[0, 0, "p"]] * 5), "bad_shape", "points must have 1..4 entries (got 5)"),
    (_body(points=[[0, 0, "a", "b", "c"], [0, 0, "d", "e"]]), "bad_shape", "points name more than the 4 readings"),
    (_body(points=[[0, 0]]), "bad_shape", "points[0] must be [asset index, unit index, point name...]"),
    (_body(points=[[1, 0, "p"]]), "bad_field", "points[0][0] must be an index 0..0 (got 1)"),
    (_body(points=[[0, 3, "p"]]), "bad_field", "points[0][1] must be an index 0..0 (got 3)"),
    (_body(points=[[0, 0, "p", "a b"]]), "bad_id", "points[0][3] 'a b' is not a valid id"),
    (_body(units=["x" * 33]), "bad_field", "units[0] must be a string of at most 32 printable characters"),
    (_body(site="a/b"), "bad_id", "site 'a/b' is not a valid id"),
])
def test_rejections_name_the_reason_and_field(body: dict, reason: str, detail: str) -> None:
    for payload in (json.dumps(body, separators=(",", ":")).encode(), json.dumps(body).encode()):
        with pytest.raises(SchemaError) as err:
            decode_telemetry(payload)
        assert err.value.reason == reason, err.value
        assert detail in err.value.detail


@pytest.mark.parametrize("payload, reason", [
    (b'{"v":2,', "not_json"),
    (b'{"v":2,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "too_deep"),
    (b'{"v":2,"val":[1e999]}', "bad_id"),
    (b'{"v":2,"site":"s","seq_first":1,"seq_last":1,"sent_ms":0,"ts_ms":0,"assets":["a"],"units":[""],'
     b'"points":[[0,0,"p"]],"p":[0],"dt":[0],"val":[1e999],"q":[0]}', "bad_value"),
    (b'{"v":2,"site":"s","seq_first":1,"seq_last":1,"sent_ms":0,"ts_ms":0,"assets":["a"],"units":[""],'
     b'"points":[[0,0,"p"]],"p":[0],"dt":[0],"val":[NaN],"q":[0]}', "bad_value"),
    (b'{"v":2,"site":"s","seq_first":' + b"9" * 5000 + b"}", "bad_value"),
    (b'{"v":2,' + b" " * 300_000 + b"}", "oversized"),
    (b'{"v":2,"site":"s\xff"}', "not_json"),
])
def test_hostile_payloads_are_schema_errors(payload: bytes, reason: str) -> None:
    with pytest.raises(SchemaError) as err:
        decode_telemetry(payload)
    assert err.value.reason == reason, err.value


def test_site_must_match_the_topic() -> None:
    payload = encode_batch_v2("sub-07", _device_read(2), 1)
    with pytest.raises(SchemaError) as err:
        decode_telemetry(payload, topic=telemetry_topic("sub-08"))
    assert err.value.reason == "site_mismatch"


def test_v1_payloads_still_decode_through_the_dispatcher() -> None:
    readings = _device_read(5)
    assert decode_telemetry(encode_batch("sub-07", readings, 1)).readings == tuple(readings)


def _json_values() -> st.SearchStrategy:
    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=5), max_leaves=30)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_random_bytes_only_ever_raise_schema_error(payload: bytes) -> None:
    for candidate in (payload, b'{"v":2,' + payload):
        try:
            decode_telemetry(candidate)
        except SchemaError:
            pass


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_fuzz_mutated_valid_payloads_only_ever_raise_schema_error(data: st.DataObject) -> None:
    body = _body()
    for _ in range(data.draw(st.integers(1, 4))):
        key = data.draw(st.sampled_from(sorted(body)))
        if isinstance(body[key], list) and body[key] and data.draw(st.booleans()):
            index = data.draw(st.integers(0, len(body[key]) - 1))
            body[key][index] = data.draw(_json_values())
        else:
            body[key] = data.draw(_json_values())
    payload = json.dumps(body, separators=(",", ":")).encode()
    try:
        batch = decode_telemetry(payload)
    except SchemaError:
        with pytest.raises(SchemaError):
            decode_telemetry_columns(payload)
        return
    assert len(batch.readings) == batch.seq_last - batch.seq_first + 1 <= MAX_READINGS_PER_BATCH
    decoded = decode_telemetry_columns(payload)
    assert (decoded.batch() if isinstance(decoded, Columns) else decoded) == batch


_column_entries = (st.integers(-3, 8) | st.integers(-10**30, 10**30) | st.booleans() | st.none() | st.text(max_size=2)
                   | st.sampled_from([2**53 - 1, -(2**53 - 1), 2**53, -(2**53), 2**63, 10**300])
                   | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([0.5, -0.0, 1e300, 2.0**53]))


def _first_bad(key: str, column: list, ok) -> str | None:
    """The message prefix of the first entry ``ok`` refuses, as the decoder must name it."""
    for i, v in enumerate(column):
        if not ok(i, v):
            return f"{key}[{i}]"
    return None


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_the_column_checks_accept_exactly_what_the_schema_allows_and_name_the_first_offender(
        data: st.DataObject) -> None:
    """The decoder checks whole columns at once; whatever it is given, it must take what the
    per-entry rules take, with every value as its float64, and refuse the rest at the same entry."""
    body = _body()                                        # 4 readings, 4 points, QUALITIES indexes 0..3
    columns = {key: list(body[key]) for key in ("p", "q", "dt", "val")}
    for _ in range(data.draw(st.integers(0, 6))):
        key = data.draw(st.sampled_from(sorted(columns)))
        columns[key][data.draw(st.integers(0, 3))] = data.draw(_column_entries)
    body.update(columns)
    p, q, dt, val = columns["p"], columns["q"], columns["dt"], columns["val"]
    span = MAX_TS_MS - body["ts_ms"]
    is_int = lambda v: type(v) is int                     # noqa: E731 - bool is not an index
    expected = (_first_bad("p", p, lambda i, v: is_int(v) and 0 <= v < 4)
                or _first_bad("q", q, lambda i, v: is_int(v) and 0 <= v < len(QUALITIES))
                or _first_bad("dt", dt, lambda i, v: is_int(v) and 0 <= v <= span)
                or _first_bad("val", val, lambda i, v: (v is None and QUALITIES[q[i]] in ("device_error", "stale"))
                              or type(v) is float or (is_int(v) and -2**53 < v < 2**53)))
    payload = json.dumps(body, separators=(",", ":")).encode()
    if expected is None:
        columns_out = decode_telemetry_columns(payload)
        assert isinstance(columns_out, Columns)
        assert columns_out.val == [None if v is None else float(v) for v in val]
        assert all(v is None or type(v) is float for v in columns_out.val)
        assert (columns_out.p, columns_out.q, columns_out.dt) == (p, q, dt)
    else:
        with pytest.raises(SchemaError) as err:
            decode_telemetry_columns(payload)
        assert err.value.reason in ("bad_field", "bad_value"), err.value
        assert err.value.detail.startswith(expected), (expected, err.value)


@pytest.mark.parametrize("column", [[1e999, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, -1e999], [1.7e308, 1.7e308, 1.0, 1.0]])
def test_an_infinite_value_is_refused_and_a_large_finite_one_is_not(column: list) -> None:
    body = _body()
    text = json.dumps({**body, "val": "@"}, separators=(",", ":")).replace('"@"', "[" + ",".join(map(repr, column))
                                                                           .replace("inf", "1e999") + "]")
    if all(abs(v) < float("inf") for v in column):
        assert decode_telemetry_columns(text.encode()).val == column
    else:
        with pytest.raises(SchemaError, match=r"val\[[03]\] must be a finite number"):
            decode_telemetry_columns(text.encode())


def _segment(readings: list[Reading]) -> tuple[list, ...]:
    return ([r.ts_ms for r in readings], [r.asset for r in readings], [r.point for r in readings],
            [r.unit for r in readings], [r.value for r in readings], [r.quality for r in readings])


@settings(max_examples=100, deadline=None)
@given(reading_runs(), st.lists(st.integers(0, 150), max_size=6), st.integers(1, 4))
def test_segments_round_trip_like_one_column_set(readings: list[Reading], cuts: list[int], repeat: int) -> None:
    """Readings cut into segments (some empty), the run repeated with later seqs: every reading
    decodes as it went in, and a repeated segment shares its point table entries."""
    run = [replace(r, seq=r.seq + k * len(readings)) for k in range(repeat) for r in readings]
    bounds = sorted({0, len(readings), *(c for c in cuts if c <= len(readings))})
    pieces = [readings[a:b] for a, b in zip(bounds, bounds[1:])] + [[]]
    segments = [_segment(piece) for _ in range(repeat) for piece in pieces]
    payload = encode_segments("sub-07", run[0].seq, segments, 5)
    assert decode_telemetry(payload).readings == tuple(run)
    once = json.loads(encode_segments("sub-07", run[0].seq, [_segment(p) for p in pieces], 5))
    assert json.loads(payload)["points"] == once["points"]


def test_segments_refuse_what_one_column_set_refuses() -> None:
    good = _segment(_device_read(3))
    bad = _segment([Reading(9, 1, "a", "b", float("nan"), "kW", "good")])
    with pytest.raises(SchemaError) as err:
        encode_segments("sub-07", 1001, [good, bad], 1)
    assert err.value.reason == "bad_value"
    with pytest.raises(SchemaError) as err:
        encode_segments("sub-07", 1001, [_segment([])], 1)
    assert err.value.reason == "empty"


_EDGE_VALUES = st.sampled_from([0.0, -0.0, 1.0, -1.0, 123.0, 0.5, 1e-7, 1e15, 9.5e15, 2.0**53 - 1, -(2.0**53 - 1),
                                2.0**53, 1e16, -1e16, 1e300, 5e-324])


@settings(max_examples=400, deadline=None)
@given(st.lists(_EDGE_VALUES | st.floats(allow_nan=False, allow_infinity=False)
                | st.integers(-2**53 + 1, 2**53 - 1).map(float), min_size=1, max_size=40))
def test_the_value_column_keeps_every_value_and_writes_integral_ones_as_integers(values: list[float]) -> None:
    """The encoder cuts ``.0`` off integral values on the encoded bytes: the column must decode to
    the same numbers, and an integral value below 2**53 must cost no ``.0``."""
    readings = [Reading(1 + i, 5, "tx1", "p", v, "kW", "good") for i, v in enumerate(values)]
    payload = encode_batch_v2("s1", readings, 9)
    assert [r.value for r in decode_batch_v2(payload).readings] == values
    column = json.loads(payload)["val"]
    assert [type(v) for v in column] == [int if v.is_integer() and abs(v) < 2**53 else float for v in values]


@pytest.mark.parametrize("values", [[2.0**52] * 5, [1.0, 2.5, 3.0], [2.5, 3.0, 1.0], [0.0] * 1000,
                                    [float(2**53 - 1), 1.0], [1.7e308, 1.7e308, 3.0]])
def test_the_value_column_fast_and_general_paths_write_the_same_json(values: list[float]) -> None:
    """The column's hypot chooses the path (below 2**53: bytes cut; else per value): both give one JSON."""
    readings = [Reading(1 + i, 5, "tx1", "p", v, "kW", "good") for i, v in enumerate(values)]
    column = json.loads(encode_batch_v2("s1", readings, 9))["val"]
    assert column == [int(v) if v.is_integer() and abs(v) < 2**53 else v for v in values]
    assert [type(v) for v in column] == [int if v.is_integer() and abs(v) < 2**53 else float for v in values]


def _outcome(parse, payload: bytes) -> object:  # type: ignore[no-untyped-def]
    try:
        return ("ok", parse(payload))
    except SchemaError as exc:
        return ("error", exc.reason, exc.detail)


_DIGIT_HEAVY = st.lists(st.sampled_from([b"1", b"9", b"0", b"-", b".", b"e", b",", b"[", b"]", b" ", b'"', b"\xff",
                                          b"1234567890123456789", b"18446744073709551616", b"NaN", b"true", b"{}"]),
                        max_size=60).map(lambda parts: b"[" + b"".join(parts) + b"]")


@settings(max_examples=600, deadline=None)
@given(_DIGIT_HEAVY | st.binary(max_size=200)
       | st.lists(st.integers(-2**70, 2**70) | st.floats(), max_size=30).map(lambda v: json.dumps(v).encode()))
def test_the_v2_parser_answers_exactly_as_parse_json(payload: bytes) -> None:
    assert _outcome(parse_v2, payload) == _outcome(parse_json, payload)
