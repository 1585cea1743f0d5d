"""The v2 encoder against a plain reference: the same bytes, or the same SchemaError, for hostile inputs.

``encode_segments`` joins its payload from memoised JSON pieces; ``_reference`` below builds the
same payload the plain way (one dict, one reading at a time) and is what the wire format was before
the pieces: every byte the ingest, the schema docs and the other tests rely on. Where both encode,
the bytes must be equal; valid inputs must also decode to exactly the readings that went in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.batch import ReadingBatch
from edge_agent.delivery import payloads
from ems_contract.telemetry import MAX_PAYLOAD_BYTES, QUALITIES, SchemaError, valid_id, valid_unit
from ems_contract.telemetry_v2 import decode_telemetry, encode_columns, encode_segments

EXACT = 2**53


def _value_column(values: list[Any]) -> bytes:
    """The ``val`` column as the plain reference writes it. An integral float below 2**53 is an integer
    (``-0.0`` is ``-0`` in a column of numbers whose hypot is below 2**53, else ``0``: both decode to
    0.0), an int is written as it is, any other float as orjson writes it, None as null.
    SchemaError: the first NaN or infinity; else, in a column with a null or a hypot from 2**53, the
    first value that is not a float, null or an int within ±2**53."""
    numbers = None not in values
    try:
        usual = numbers and math.hypot(*values) < EXACT
    except OverflowError:                        # an int beyond any float
        usual = False
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise SchemaError("bad_value", f"a value is not a finite number (value {v!r} is not a finite number)")
    pieces = []
    for v in values:
        if v is None:
            pieces.append(b"null")
        elif type(v) is int:
            if not usual and not -EXACT < v < EXACT:
                raise SchemaError("bad_value", f"value {v!r} is not a float, null or an integer within ±2**53")
            pieces.append(b"%d" % v)
        elif v.is_integer() and abs(v) < EXACT:
            pieces.append(b"-0" if usual and v == 0 and math.copysign(1.0, v) < 0 else b"%d" % int(v))
        else:
            pieces.append(orjson.dumps(v))
    return b"[" + b",".join(pieces) + b"]"


def _reference(site: str, seq_first: int, segments: list[tuple[list, ...]], sent_ms: int) -> bytes:
    """One v2 payload the plain way: the point table grouped by (asset, unit) in order of appearance,
    segment by segment, a segment with the same columns as an earlier one of the message sharing its
    entries; the values first, then the qualities, are checked as the encoder checks them."""
    segments = [s for s in segments if s[0]]
    if not segments:
        raise SchemaError("empty", "a batch needs at least one reading")
    if not valid_id(site):
        raise SchemaError("bad_id", f"site {site!r} is not a valid id")
    assets: dict[str, int] = {}
    units: dict[str, int] = {}
    table: list[list[Any]] = []
    placed: dict[tuple, int] = {}
    p: list[int] = []
    for _, asset, point, unit, _, _ in segments:
        groups: dict[tuple[str, str], list[str]] = {}
        for a, name, u in dict.fromkeys(zip(asset, point, unit)):
            groups.setdefault((a, u), []).append(name)
        order = [(a, name, u) for (a, u), names in groups.items() for name in names]
        key = (tuple(asset), tuple(point), tuple(unit))
        if key not in placed:
            placed[key] = sum(len(row) - 2 for row in table)
            for (a, u), names in groups.items():
                table.append([assets.setdefault(a, len(assets)), units.setdefault(u, len(units)), *names])
        p += [placed[key] + order.index(k) for k in zip(asset, point, unit)]
    base = min(t for s in segments for t in s[0])
    val = _value_column([v for s in segments for v in s[4]])
    for s in segments:
        for q in s[5]:
            if q not in QUALITIES:
                raise SchemaError("bad_field", f"quality {q!r} is not one of {', '.join(QUALITIES)}")
    return orjson.dumps({
        "v": 2, "site": site, "seq_first": seq_first, "seq_last": seq_first + len(p) - 1, "sent_ms": sent_ms,
        "ts_ms": base, "assets": list(assets), "units": list(units), "points": table, "p": p,
        "dt": [t - base for s in segments for t in s[0]], "val": orjson.Fragment(val),
        "q": [QUALITIES.index(q) for s in segments for q in s[5]]})


def _outcome(encode, *args: Any) -> tuple:  # type: ignore[no-untyped-def]
    try:
        return ("payload", encode(*args))
    except SchemaError as exc:
        return ("error", exc.reason, exc.detail)


# Names: valid ids, unicode, empty strings, quotes and control characters (the encoder writes what
# it is given; the decoder refuses what is not an id).
_NAMES = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,12}\Z") | st.text(max_size=6) \
    | st.sampled_from(["", "Ω", "rig01", "温度", 'a"b', "a\\b", "\x00", "\u2028", "𝔘"])
_FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [0.0, -0.0, 1.0, -1.0, 0.5, 5e-324, -5e-324, 1e-7, 1e15, 9.5e15, 1e16, -1e16, 1.7976931348623157e308,
     float(EXACT - 1), -float(EXACT - 1), float(EXACT), -float(EXACT), 2.0**63, 12345.0])
_INTS = st.integers(-EXACT + 1, EXACT - 1) | st.sampled_from(
    [EXACT, -EXACT, EXACT + 1, 2**63 - 1, -(2**63), 2**64 - 1, 0, -1])
_VALUES = st.lists(_FLOATS, min_size=1, max_size=12) | st.lists(_FLOATS | st.none(), min_size=1, max_size=12) \
    | st.lists(_FLOATS | _INTS | st.none() | st.sampled_from([math.nan, math.inf, -math.inf]), min_size=1, max_size=12)


@st.composite
def _segments(draw: st.DrawFn) -> list[tuple[list, ...]]:
    """Segments of a message: a few device layouts (shapes), repeated, cut and empty; times shared by a
    segment or not; any quality, now and then one that is not; values from ``_VALUES``."""
    layouts = []
    for _ in range(draw(st.integers(1, 3))):
        size = draw(st.integers(1, 8))
        names = draw(st.lists(st.tuples(_NAMES, _NAMES, _NAMES), min_size=1, max_size=4))
        layouts.append([draw(st.sampled_from(names)) for _ in range(size)])
    qualities = st.sampled_from(QUALITIES) | st.sampled_from(["bogus", "GOOD", ""]) if draw(st.integers(0, 9)) == 0 \
        else st.sampled_from(QUALITIES)
    out = []
    for _ in range(draw(st.integers(1, 5))):
        layout = draw(st.sampled_from(layouts))
        lo = draw(st.integers(0, len(layout)))
        hi = draw(st.integers(lo, len(layout))) if draw(st.booleans()) else len(layout)
        rows = layout[lo:hi] if draw(st.integers(0, 3)) == 0 else layout
        n = len(rows)
        ts = draw(st.sampled_from([0, 1, 2**40, 2**62]))
        times = [ts] * n if draw(st.booleans()) else [ts + draw(st.integers(0, 10**6)) for _ in range(n)]
        values = (draw(_VALUES) * n)[:n] if n else []
        out.append((times, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], values,
                    [draw(qualities) for _ in range(n)]))
    return out


@settings(max_examples=1500, deadline=None)
@given(_segments(), st.integers(1, 2**62), st.integers(0, 2**62))
def test_the_encoder_writes_the_reference_bytes_or_raises_the_reference_error(
        segments: list[tuple[list, ...]], seq_first: int, sent_ms: int) -> None:
    expected = _outcome(_reference, "sub-07", seq_first, segments, sent_ms)
    assert _outcome(encode_segments, "sub-07", seq_first, segments, sent_ms) == expected
    # the same lists again (the shape memo by identity) and as copies (by contents)
    assert _outcome(encode_segments, "sub-07", seq_first, segments, sent_ms) == expected
    copies = [tuple(list(column) for column in s) for s in segments]
    assert _outcome(encode_segments, "sub-07", seq_first, copies, sent_ms) == expected


def _decodable(segments: list[tuple[list, ...]]) -> bool:
    """What the decoder takes: ids and units valid, times int64, values finite (ints exact as floats),
    null only where the quality allows it."""
    for ts, asset, point, unit, values, quality in segments:
        if not all(map(valid_id, asset + point)) or not all(map(valid_unit, unit)):
            return False
        for v, q in zip(values, quality):
            if v is None and q not in ("device_error", "stale") or q not in QUALITIES \
                    or isinstance(v, float) and not math.isfinite(v) or type(v) is int and not -EXACT < v < EXACT:
                return False
    return True


@settings(max_examples=600, deadline=None)
@given(_segments(), st.integers(1, 2**40))
def test_what_the_decoder_takes_decodes_to_exactly_the_readings_that_went_in(
        segments: list[tuple[list, ...]], seq_first: int) -> None:
    segments = [s for s in segments if s[0]]
    if not segments or not _decodable(segments):
        return
    batch = decode_telemetry(encode_segments("sub-07", seq_first, segments, 5))
    readings = [(t, a, p, None if v is None else float(v), u, q)
                for s in segments for t, a, p, u, v, q in zip(*s)]
    assert [(r.ts_ms, r.asset, r.point, r.value, r.unit, r.quality) for r in batch.readings] == readings
    assert (batch.seq_first, batch.seq_last) == (seq_first, seq_first + len(readings) - 1)


def test_a_changed_list_is_not_taken_for_its_old_contents() -> None:
    """The shape memo finds a device's lists by identity; one changed in place must not keep its old table."""
    asset, point, unit = ["tx1", "tx1"], ["a", "b"], ["kW", "kW"]
    segment = ([1, 1], asset, point, unit, [1.0, 2.0], ["good", "good"])
    encode_segments("s1", 1, [segment], 5)
    point[1] = "c"
    assert encode_segments("s1", 1, [segment], 5) == _reference("s1", 1, [segment], 5)
    assert [r.point for r in decode_telemetry(encode_segments("s1", 1, [segment], 5)).readings] == ["a", "c"]


@pytest.mark.parametrize("values, detail", [
    ([1.0, math.nan], "a value is not a finite number (value nan is not a finite number)"),
    ([None, -math.inf, math.nan], "a value is not a finite number (value -inf is not a finite number)"),
    ([None, 2**53], "value 9007199254740992 is not a float, null or an integer within ±2**53"),
    ([2**63 - 1], "value 9223372036854775807 is not a float, null or an integer within ±2**53"),
    ([None, True], "value True is not a float, null or an integer within ±2**53"),
    (["1.5"], "value '1.5' is not a float, null or an integer within ±2**53"),
])
def test_bad_values_are_refused_naming_the_value(values: list, detail: str) -> None:
    n = len(values)
    with pytest.raises(SchemaError) as err:
        encode_columns("s1", 1, [5] * n, ["a"] * n, ["p"] * n, [""] * n, values, ["stale"] * n, 1)
    assert (err.value.reason, err.value.detail) == ("bad_value", detail)


def test_a_bad_quality_is_refused_naming_it() -> None:
    with pytest.raises(SchemaError) as err:
        encode_columns("s1", 1, [5, 5], ["a", "a"], ["p", "q"], ["", ""], [1.0, 2.0], ["good", "fine"], 1)
    assert (err.value.reason, err.value.detail) == \
        ("bad_field", "quality 'fine' is not one of good, loop_fault, device_error, stale")


# -- payloads(): runs, seq gaps, max_readings and the size limit ------------------------------------

@dataclass
class _Device:
    """One device's layout: the same four name lists for every read, as the poller hands them out."""

    asset: list[str]
    point: list[str]
    unit: list[str]
    sensor: list[str]


def _reference_payloads(batches: list[ReadingBatch], max_readings: int) -> list[bytes]:
    """payloads() the plain way: a message per run of consecutive seqs and max_readings readings, halved
    until it fits MAX_PAYLOAD_BYTES; each message cut from the batches at its reading bounds."""
    runs: list[list[ReadingBatch]] = []
    for b in batches:
        if runs and runs[-1][-1].seq_last + 1 == b.seq_first:
            runs[-1].append(b)
        else:
            runs.append([b])
    out: list[bytes] = []
    for run in runs:
        rows = [(b, i) for b in run for i in range(len(b))]

        def message(lo: int, hi: int, rows: list = rows) -> bytes:
            segments: list[tuple[list, ...]] = []
            last = None
            for b, i in rows[lo:hi]:
                if b is not last:
                    segments.append(([], [], [], [], [], []))
                    last = b
                for column, own in zip(segments[-1], (b.ts_ms, b.asset, b.point, b.unit, b.value, b.quality)):
                    column.append(own[i])
            return _reference("s1", rows[lo][0].seq_first + rows[lo][1], segments, 5)

        def fit(lo: int, hi: int) -> None:
            payload = message(lo, hi)
            if len(payload) <= MAX_PAYLOAD_BYTES or hi - lo == 1:
                out.append(payload)
            else:
                fit(lo, (lo + hi) // 2)
                fit((lo + hi) // 2, hi)
        for i in range(0, len(rows), max_readings):
            fit(i, min(i + max_readings, len(rows)))
    return out


@st.composite
def _spooled(draw: st.DrawFn) -> list[ReadingBatch]:
    """Sequenced batches of a few devices, some sliced, with seq gaps (dropped or quarantined rows)."""
    long = draw(st.booleans())      # 150-character names, an asset per point: messages beyond MAX_PAYLOAD_BYTES
    devices = []
    for d in range(draw(st.integers(1, 4))):
        n = draw(st.integers(1, 40 if not long else 400))
        prefix = "x" * 145 if long else ""
        devices.append(_Device([f"{prefix}d{d}{i:03d}" if long else f"dev{d}" for i in range(n)],
                               [f"{prefix}p{i:03d}" for i in range(n)], [draw(st.sampled_from(["", "kW", "degC"]))] * n,
                               [f"S{d}_{i}" for i in range(n)]))
    out = []
    seq = draw(st.integers(1, 2**40))
    for _ in range(draw(st.integers(1, 12))):
        dev = draw(st.sampled_from(devices))
        n = len(dev.asset)
        values = [draw(_FLOATS | st.none()) if long else draw(_FLOATS) for _ in range(n)]
        quality = ["device_error" if v is None else "good" for v in values]
        batch = ReadingBatch([draw(st.integers(0, 2**41))] * n, dev.asset, dev.point, values, dev.unit, quality,
                             dev.sensor)
        if draw(st.integers(0, 3)) == 0:
            lo = draw(st.integers(0, n - 1))
            batch = batch.slice(lo, draw(st.integers(lo + 1, n)))
        seq += draw(st.sampled_from([0, 0, 0, 1, 7]))  # a gap now and then
        out.append(batch.sequenced(seq, 1))
        seq += len(batch)
    return out


@settings(max_examples=150, deadline=None)
@given(_spooled(), st.sampled_from([1, 7, 100, 1000]))
def test_payloads_write_the_reference_messages(batches: list[ReadingBatch], max_readings: int) -> None:
    sent = payloads("s1", batches, payload_format="v2", max_readings=max_readings, sent_ms=5)
    assert sent == _reference_payloads(batches, max_readings)
    assert all(len(p) <= MAX_PAYLOAD_BYTES for p in sent)
    if all(len(name) <= 64 for b in batches for name in b.asset + b.point):     # ids the decoder takes
        assert [r for m in sent for r in decode_telemetry(m).readings] == [r for b in batches for r in b.readings()]


def test_a_message_over_the_size_limit_is_halved_like_the_reference() -> None:
    """1000 readings, each its own 150-character asset and point: over MAX_PAYLOAD_BYTES as one message."""
    n = 1000
    dev = _Device([f"{'a' * 150}{i:04d}" for i in range(n)], [f"{'p' * 150}{i:04d}" for i in range(n)], ["u"] * n,
                  ["S"] * n)
    batch = ReadingBatch([7] * n, dev.asset, dev.point, [i + 0.123456789012345 for i in range(n)], dev.unit,
                         ["good"] * n, dev.sensor).sequenced(1, 1)
    sent = payloads("s1", [batch], payload_format="v2", max_readings=1000, sent_ms=5)
    assert len(sent) > 1 and all(len(p) <= MAX_PAYLOAD_BYTES for p in sent)
    assert sent == _reference_payloads([batch], 1000)
