"""Telemetry payload v2 (columnar) and ``decode_telemetry``, the decoder that accepts v1 and v2.

Same topic as v1 (``ems/v1/<site>/telemetry``: the topic tree and the broker's
roles do not change), same meaning, same validated ``Batch`` of ``Reading``s:
only the encoding differs. A v2 message carries one *contiguous* seq range; its
readings are columns, and the names it repeats (assets, points, units) are
tables that the columns index::

    {"v": 2, "site": "sub-07", "seq_first": 101, "seq_last": 104, "sent_ms": 1764152400500,
     "ts_ms": 1764152400000,                      base: the smallest measurement time
     "assets": ["tx1"], "units": ["degC", "MVA"],
     "points": [[0, 0, "oil_temp"], [0, 1, "load"]],      groups: [asset index, unit index, point name...]
     "p":  [0, 1, 0, 1],                          per reading: index of its point (counted across groups)
     "dt": [0, 0, 1000, 1000],                    per reading: ts_ms - base (>= 0)
     "val": [61.25, 24, 61.5, null],              per reading: finite number or null
     "q":  [0, 0, 0, 2]}                          per reading: index into QUALITIES

Reading ``i`` has ``seq = seq_first + i``; every column has exactly
``seq_last - seq_first + 1`` entries. A hundred readings of one device read
cost about 20 bytes each on the wire (v1: about 110).

``decode_batch_v2`` is strict and bounded: v1's parser (``parse_json``: UTF-8,
no NaN, bounded integer literals, depth), size and reading-count limits; every
index in range; tables no longer than the readings need; ids and units as in
v1; seqs and times int64. Violations
raise ``SchemaError`` with a reason: ``bad_version``, ``bad_shape`` (columns or
tables of the wrong length or type), ``bad_seq`` (seq range does not match the
columns), ``bad_field``, ``bad_value``, ``bad_id``, ``not_json``, ``oversized``,
``site_mismatch``.

``decode_telemetry(payload, topic)`` is what consumers call: a v2 payload goes
to ``decode_batch_v2``, anything else to v1's ``decode_batch`` unchanged.
``decode_telemetry_columns`` validates exactly the same way but hands a v2
payload back as its validated ``Columns`` (no ``Reading`` per reading; the ingest
builds remote-write samples from them); ``Columns.batch()`` is the ``Batch``
``decode_telemetry`` would have returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import groupby, repeat
from typing import Any, Iterable, Sequence

import orjson

from ems_contract.telemetry import (MAX_INT64, MAX_PAYLOAD_BYTES, MAX_READINGS_PER_BATCH, MAX_UNIT_CHARS, QUALITIES,
                                    Batch, Reading, SchemaError, check_finite, decode_batch, parse_json, shown,
                                    site_from_topic, valid_id, valid_ids, valid_unit)

__all__ = ["PAYLOAD_VERSIONS", "MAX_TS_MS", "Columns", "Segment", "encode_batch_v2", "encode_columns", "encode_segments",
           "decode_batch_v2", "decode_telemetry", "decode_telemetry_columns", "contiguous_runs"]

PAYLOAD_VERSIONS = ("v1", "v2")
MAX_TS_MS = MAX_INT64              # seqs and times become int64, as in v1
_PREFIX = b'{"v":2,'               # what encode_batch_v2 writes first: the decoder's fast dispatch
_QUALITY_INDEX = {q: i for i, q in enumerate(QUALITIES)}
_EXACT = 2**53                     # integers up to this are exact as float64
_NULL_OK = frozenset(i for i, q in enumerate(QUALITIES) if q in ("device_error", "stale"))
_INT = {int}
_NUMBER = frozenset({float, int})
_FLOAT = {float}
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))   # b"0" for each ASCII digit
_LONG_RUN = b"0" * 19              # parse_json's ``[0-9]{19}``: such a payload goes to its standard-library path


def contiguous_runs(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` index ranges of ``seqs`` (ascending) whose seqs are consecutive.

    A v2 message holds one such run; a gap (a dropped or quarantined seq) starts a new message.
    """
    runs = []
    start = 0
    for i in range(1, len(seqs)):
        if seqs[i] != seqs[i - 1] + 1:
            runs.append((start, i))
            start = i
    if seqs:
        runs.append((start, len(seqs)))
    return runs


def encode_batch_v2(site: str, readings: Iterable[Reading], sent_ms: int) -> bytes:
    """Serialise readings with consecutive seqs (ascending) into one v2 payload.

    Raises SchemaError (``empty``, ``bad_seq``, ``bad_id``, ``bad_value``) for
    readings that no consumer would accept; split at seq gaps with
    ``contiguous_runs`` first.
    """
    items = list(readings)
    if not items:
        raise SchemaError("empty", "a batch needs at least one reading")
    seq_first = items[0].seq
    if any(r.seq != seq_first + i for i, r in enumerate(items)):
        raise SchemaError("bad_seq", f"a v2 message needs consecutive seqs (got {seq_first}..{items[-1].seq} "
                                     f"for {len(items)} readings)")
    return encode_columns(site, seq_first, [r.ts_ms for r in items], [r.asset for r in items],
                          [r.point for r in items], [r.unit for r in items], [r.value for r in items],
                          [r.quality for r in items], sent_ms)


def encode_columns(site: str, seq_first: int, ts_ms: Sequence[int], asset: Sequence[str], point: Sequence[str],
                   unit: Sequence[str], value: Sequence[float | None], quality: Sequence[str], sent_ms: int) -> bytes:
    """One v2 payload from columns (one entry per reading; reading ``i`` has seq ``seq_first + i``).

    Raises SchemaError like ``encode_batch_v2``. ``encode_segments`` with one segment.
    """
    return encode_segments(site, seq_first, [(ts_ms, asset, point, unit, value, quality)], sent_ms)


Segment = tuple[Sequence[int], Sequence[str], Sequence[str], Sequence[str], Sequence[float | None], Sequence[str]]
"""Columns ``(ts_ms, asset, point, unit, value, quality)`` of consecutive readings, e.g. one device read."""


@dataclass(frozen=True, slots=True, eq=False)
class _Shape:
    """The point table of one segment's (asset, point, unit) columns: groups in order of appearance, each
    ``(asset, unit, its point names as JSON array members)``; ``size`` distinct points; and each reading's
    index among them (``p``; None: the identity, every point once and in table order).
    Compared by identity: ``_shape`` returns one object per distinct columns."""

    groups: tuple[tuple[str, str, bytes], ...]
    size: int
    p: tuple[int, ...] | None


_SHAPES: dict[tuple[tuple[str, ...], ...], _Shape] = {}
_MAX_SHAPES = 1024
_LISTS: dict[tuple[int, int, int], tuple[list[str], list[str], list[str], _Shape]] = {}
_MAX_LISTS = 256
_LAYOUTS: dict[tuple[_Shape, ...], tuple[bytes, int]] = {}
_MAX_LAYOUTS = 256


def _shape(key: tuple[tuple[str, ...], ...]) -> _Shape:
    """The segment shape of ``key`` (its asset, point and unit columns), memoised: a device's reads repeat it."""
    shape = _SHAPES.get(key)
    if shape is None:
        keys = list(zip(*key))
        groups: dict[tuple[str, str], list[str]] = {}
        for a, name, u in dict.fromkeys(keys):                  # distinct points, in order of appearance
            groups.setdefault((a, u), []).append(name)
        index = {(a, name, u): 0 for (a, u), names in groups.items() for name in names}
        for i, k in enumerate(index):
            index[k] = i
        p = tuple(map(index.__getitem__, keys))
        shape = _Shape(tuple((a, u, orjson.dumps(names)[1:-1]) for (a, u), names in groups.items()), len(index),
                       None if p == tuple(range(len(index))) else p)
        if len(_SHAPES) >= _MAX_SHAPES:
            _SHAPES.clear()
        _SHAPES[key] = shape
    return shape


def _segment_shape(asset: Sequence[str], point: Sequence[str], unit: Sequence[str]) -> _Shape:
    """``_shape`` of one segment's columns. A device's reads pass the very same three lists each time
    (``edge_agent.batch``): lists are found by identity, then compared with the copies taken when they
    were first seen (a C loop each; a list changed in place since is not taken for its old contents);
    anything else by its contents."""
    key = (id(asset), id(point), id(unit))
    held = _LISTS.get(key)
    if held is not None and held[0] == asset and held[1] == point and held[2] == unit:
        return held[3]
    shape = _shape((tuple(asset), tuple(point), tuple(unit)))
    if type(asset) is list and type(point) is list and type(unit) is list:
        if len(_LISTS) >= _MAX_LISTS:
            _LISTS.clear()
        _LISTS[key] = (asset.copy(), point.copy(), unit.copy(), shape)
    return shape


def _members(values: list[Any]) -> bytes:
    """``values`` as the members of a JSON array, each followed by a comma: the pieces columns are joined from."""
    return orjson.dumps(values)[1:-1] + b"," if values else b""


def _layout(shapes: tuple[_Shape, ...]) -> tuple[bytes, int]:
    """The members ``"assets"`` to ``"p"`` of a message whose segments have ``shapes`` (JSON, from the comma
    before ``"assets"``), and its number of readings; memoised: the devices of one poll tick make the same
    messages, in a few orders. A segment that repeats a shape earlier in the message shares its table entries."""
    layout = _LAYOUTS.get(shapes)
    if layout is None:
        assets: dict[str, int] = {}
        units: dict[str, int] = {}
        rows: list[bytes] = []
        placed: dict[_Shape, int] = {}
        p: list[int] = []
        named = 0                               # point names in the table so far
        for shape in shapes:
            offset = placed.get(shape)
            if offset is None:
                offset = placed[shape] = named
                named += shape.size
                for a, u, names in shape.groups:
                    rows.append(b"[%d,%d,%b]" % (assets.setdefault(a, len(assets)), units.setdefault(u, len(units)),
                                                 names))
            p.extend(range(offset, offset + shape.size) if shape.p is None else [offset + i for i in shape.p])
        layout = (b',"assets":%b,"units":%b,"points":[%b],"p":%b' % (
            orjson.dumps(list(assets)), orjson.dumps(list(units)), b",".join(rows), orjson.dumps(p)), len(p))
        if len(_LAYOUTS) >= _MAX_LAYOUTS:
            _LAYOUTS.clear()
        _LAYOUTS[shapes] = layout
    return layout


def _quality_members(quality: Sequence[str]) -> bytes:
    """The ``q`` entries (``_members``) of one segment; SchemaError ``bad_field`` for a quality not in QUALITIES."""
    if quality.count(QUALITIES[0]) == len(quality):
        return b"0," * len(quality)
    for q in quality:
        if not (isinstance(q, str) and q in _QUALITY_INDEX):
            raise SchemaError("bad_field", f"quality {shown(q)} is not one of {', '.join(QUALITIES)}")
    return _members(list(map(_QUALITY_INDEX.__getitem__, quality)))


def encode_segments(site: str, seq_first: int, segments: Sequence[Segment], sent_ms: int) -> bytes:
    """One v2 payload from consecutive segments (reading ``i`` over all of them has seq ``seq_first + i``).

    The payload is joined from JSON pieces, and the work is per segment where
    it can be: a segment's point table (its shape) is memoised by its columns,
    and the table of a message by its segments' shapes (``_layout``); a
    segment's shared time and all-``good`` qualities are one repeated piece;
    the values are one ``orjson.dumps``. Raises SchemaError like
    ``encode_batch_v2``, and ``bad_field`` for a quality not in ``QUALITIES``.
    """
    segments = [s for s in segments if len(s[0])]
    if not segments:
        raise SchemaError("empty", "a batch needs at least one reading")
    if not valid_id(site):
        raise SchemaError("bad_id", f"site {site!r} is not a valid id")
    table, count = _layout(tuple([_segment_shape(s[1], s[2], s[3]) for s in segments]))
    shared = [s[0].count(s[0][0]) == len(s[0]) for s in segments]      # one time for all: one device read
    base = min([s[0][0] if same else min(s[0]) for s, same in zip(segments, shared)])
    dt = [(orjson.dumps(s[0][0] - base) + b",") * len(s[0]) if same else _dt_members(s[0], base)
          for s, same in zip(segments, shared)]
    value: list[float | None] = []
    for s in segments:
        value.extend(s[4])
    val = _values_json(value)
    q = [_quality_members(s[5]) for s in segments]
    return b"".join((b'{"v":2,"site":%b,"seq_first":%b,"seq_last":%b,"sent_ms":%b,"ts_ms":%b' % (
        orjson.dumps(site), orjson.dumps(seq_first), orjson.dumps(seq_first + count - 1), orjson.dumps(int(sent_ms)),
        orjson.dumps(base)), table, b',"dt":[', b"".join(dt)[:-1], b'],"val":', val, b',"q":[', b"".join(q)[:-1],
        b"]}"))


def _dt_members(ts: Sequence[int], base: int) -> bytes:
    """The ``dt`` entries (``_members``) of a segment whose times differ: one piece per run of equal times
    (a device read as several blocks has a time per block)."""
    return b"".join([(orjson.dumps(t - base) + b",") * len(list(run)) for t, run in groupby(ts)])


def _values_json(value: list[float | None]) -> bytes:
    """The ``val`` column as JSON, each integral value written as an integer (``24``, not ``24.0``: two
    bytes less); SchemaError for NaN or infinity.

    The usual column (numbers only, finite, every magnitude below 2**53 so that an integer is exact
    as the float64 it becomes) is written by orjson and its integral floats cut on the bytes: in a
    list of numbers, ``.0`` before ``,`` or ``]`` ends an integral float and nothing else (orjson
    writes magnitudes from 1e16 in exponent form, and those are not below 2**53). C loops only,
    where converting each value would cost a Python call per reading. One ``math.hypot`` checks the
    column: it is NaN or infinite when a value is, and no value's magnitude exceeds it (a column
    whose hypot reaches 2**53 while every value is below takes the general path, which is exact
    too). Any other column (a null, a NaN, an out-of-range or non-number value) goes through
    ``_compact_values``.
    """
    try:
        if math.hypot(*value) < _EXACT:
            data = orjson.dumps(value).replace(b".0,", b",")
            return data[:-3] + b"]" if data.endswith(b".0]") else data
    except (TypeError, OverflowError):               # a null or a non-number: the general path says what
        pass
    return orjson.dumps(_compact_values(value))


def _compact_values(value: list[float | None]) -> list[float | int | None]:
    """``value`` with each integral float below 2**53 as an int (``24``, not ``24.0``: two bytes less);
    SchemaError ``bad_value`` for NaN or infinity, then for the first value that is neither a float, nor
    null, nor an int within ±2**53 (what the decoder takes). Whole-list C loops for the common cases: no
    None, and all or none integral."""
    if None not in value:
        try:
            # a finite sum means every value is finite (NaN or infinity poison it); it may also overflow
            if math.isfinite(sum(value)) or all(map(math.isfinite, value)):
                integral = list(map(float.is_integer, value))
                if all(integral) and -_EXACT < min(value) and max(value) < _EXACT:
                    return list(map(math.trunc, value))
                if not any(integral):
                    return value
        except TypeError:                            # not all floats: the general path below says what
            pass
    try:
        check_finite(value)
    except ValueError as exc:
        raise SchemaError("bad_value", f"a value is not a finite number ({exc})") from None
    except TypeError:                                # a non-number: named below
        pass
    out: list[float | int | None] = []
    for v in value:
        if type(v) is float:
            out.append(int(v) if v.is_integer() and -_EXACT < v < _EXACT else v)
        elif v is None or (type(v) is int and -_EXACT < v < _EXACT):
            out.append(v)
        else:
            raise SchemaError("bad_value", f"value {shown(v)} is not a float, null or an integer within ±2**53")
    return out


# -- decoding ------------------------------------------------------------------------------------

def _int(value: object, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchemaError("bad_field", f"{where} must be an integer (got {shown(value)})")
    if not low <= value <= high:
        raise SchemaError("bad_field", f"{where} must be {low}..{high} (got {value})")
    return value


def _list(body: dict[str, Any], key: str, *, low: int = 1, high: int = MAX_READINGS_PER_BATCH) -> list[Any]:
    value = body.get(key)
    if not isinstance(value, list):
        raise SchemaError("bad_shape", f"{key} must be a list (got {shown(value)})")
    if not low <= len(value) <= high:
        raise SchemaError("bad_shape", f"{key} must have {low}..{high} entries (got {len(value)})")
    return value


def _ints_within(values: list[Any], low: int, high: int) -> bool:
    """True when every entry is an int (not a bool) in ``low..high``: C loops over the column
    (``map``, ``min``, ``max``), no bytecode per entry. False sends the caller to its entry-by-entry
    check, which names the offending entry."""
    return set(map(type, values)) == _INT and low <= min(values) and max(values) <= high


def _small_ints_within(values: list[Any], high: int, bools: bool) -> bool:
    """``_ints_within(values, 0, high)`` by one ``bytes(values)`` and a max over its bytes, when the
    document holds no JSON boolean (``bools`` False): ``bytes`` takes exactly the ints 0..255 and
    raises for any other JSON value except a bool (an int to Python). False sends the caller on."""
    if bools:
        return _ints_within(values, 0, high)
    try:
        return max(bytes(values)) <= high
    except (TypeError, ValueError):
        return False


def _indexes(values: list[Any], key: str, size: int, bools: bool = True) -> None:
    """Every entry an int index into a table of ``size`` entries (``bools``: the document may hold a
    JSON boolean)."""
    if _small_ints_within(values, size - 1, bools) or _ints_within(values, 0, size - 1):
        return
    for i, v in enumerate(values):
        if type(v) is not int or not 0 <= v < size:
            raise SchemaError("bad_field", f"{key}[{i}] must be an index 0..{size - 1} (got {shown(v)})")


def decode_batch_v2(payload: bytes, topic: str | None = None) -> Batch:
    """Validate a v2 payload (module docstring); raises SchemaError naming the reason and field."""
    return _columns(_v2_body(payload), topic).batch()


def _v2_body(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SchemaError("oversized", f"payload is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    body = _parse(payload)
    if not isinstance(body, dict):
        raise SchemaError("bad_field", f"payload must be a JSON object (got {type(body).__name__})")
    return body


def _parse(payload: bytes) -> Any:
    """``parse_json(payload)``, the same result or SchemaError, with its scan for a run of 19 digits
    done by one ``bytes.translate`` and one substring search: the regex costs about ten times as much
    over a v2 payload, which is mostly digits. What orjson does not take as it is goes to ``parse_json``."""
    if _LONG_RUN not in payload.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass
    return parse_json(payload)


@dataclass(frozen=True, slots=True)
class Columns:
    """A validated v2 message as its columns: reading ``i`` has seq ``seq_first + i``, time
    ``base_ms + dt[i]``, point ``points[p[i]]`` (asset, point, unit), value ``val[i]`` (a float or
    None) and quality ``QUALITIES[q[i]]``; every column has ``count`` entries."""

    site: str
    seq_first: int
    seq_last: int
    sent_ms: int
    base_ms: int
    points: list[tuple[str, str, str]]
    p: list[int]
    dt: list[int]
    val: list[float | None]
    q: list[int]

    @property
    def count(self) -> int:
        return self.seq_last - self.seq_first + 1

    def batch(self) -> Batch:
        """The same message as ``decode_batch_v2`` returns it: one ``Reading`` per reading."""
        points, base, seq_first = self.points, self.base_ms, self.seq_first
        readings = []
        for i, (pi, d, value, quality) in enumerate(zip(self.p, self.dt, self.val, self.q)):
            asset, point, unit = points[pi]
            readings.append(Reading(seq_first + i, base + d, asset, point, value, unit, QUALITIES[quality]))
        return Batch(site=self.site, seq_first=seq_first, seq_last=self.seq_last, sent_ms=self.sent_ms,
                     readings=tuple(readings))


def _columns(body: dict[str, Any], topic: str | None, bools: bool = True) -> Columns:
    """The validated columns of a parsed v2 body (``bools``: the payload may hold a JSON boolean;
    False lets the index columns be checked by ``_small_ints_within``)."""
    if type(body.get("v")) is not int or body.get("v") != 2:
        raise SchemaError("bad_version", f"v must be 2 (got {shown(body.get('v'))})")
    site = body.get("site")
    if not valid_id(site):
        raise SchemaError("bad_id", f"site {shown(site)} is not a valid id")
    if topic is not None and site_from_topic(topic) != site:
        raise SchemaError("site_mismatch", f"payload site {site!r} differs from topic {topic!r}")
    seq_first = _int(body.get("seq_first"), "seq_first", 1, MAX_INT64)
    seq_last = _int(body.get("seq_last"), "seq_last", 1, MAX_INT64)
    count = seq_last - seq_first + 1
    if not 1 <= count <= MAX_READINGS_PER_BATCH:
        raise SchemaError("bad_seq", f"seq_first..seq_last {seq_first}..{seq_last} must span "
                                     f"1..{MAX_READINGS_PER_BATCH} readings")
    sent_ms = _int(body.get("sent_ms"), "sent_ms", 0, MAX_INT64)
    base = _int(body.get("ts_ms"), "ts_ms", 0, MAX_TS_MS)

    p, dt, val, q = (_list(body, key) for key in ("p", "dt", "val", "q"))
    if not len(p) == len(dt) == len(val) == len(q):
        raise SchemaError("bad_shape", f"p, dt, val and q must have one entry per reading "
                                       f"(got {len(p)}, {len(dt)}, {len(val)}, {len(q)} entries)")
    if len(p) != count:
        raise SchemaError("bad_seq", f"seq_first..seq_last {seq_first}..{seq_last} is {count} readings; "
                                     f"the columns hold {len(p)}")
    assets = _list(body, "assets")
    for i, a in enumerate(assets if not valid_ids(assets) else ()):
        if not valid_id(a):
            raise SchemaError("bad_id", f"assets[{i}] {shown(a)} is not a valid id")
    units = _list(body, "units")
    for i, u in enumerate(units):
        if not valid_unit(u):
            raise SchemaError("bad_field", f"units[{i}] must be a string of at most {MAX_UNIT_CHARS} printable "
                                           f"characters without quotes, backslashes, braces or outer spaces "
                                           f"(got {shown(u)})")
    points: list[tuple[str, str, str]] = []
    for i, group in enumerate(_list(body, "points", high=count)):
        if not isinstance(group, list) or len(group) < 3:
            raise SchemaError("bad_shape", f"points[{i}] must be [asset index, unit index, point name...] "
                                           f"(got {shown(group)})")
        a, u = group[0], group[1]
        if type(a) is not int or not 0 <= a < len(assets):
            raise SchemaError("bad_field", f"points[{i}][0] must be an index 0..{len(assets) - 1} (got {shown(a)})")
        if type(u) is not int or not 0 <= u < len(units):
            raise SchemaError("bad_field", f"points[{i}][1] must be an index 0..{len(units) - 1} (got {shown(u)})")
        if len(points) + len(group) - 2 > count:
            raise SchemaError("bad_shape", f"points name more than the {count} readings need")
        names = group[2:]
        if not valid_ids(names):
            for j, name in enumerate(names, 2):
                if not valid_id(name):
                    raise SchemaError("bad_id", f"points[{i}][{j}] {shown(name)} is not a valid id")
        points.extend(zip(repeat(assets[a]), names, repeat(units[u])))

    _indexes(p, "p", len(points), bools)
    _indexes(q, "q", len(QUALITIES), bools)
    span = MAX_TS_MS - base
    if not (_small_ints_within(dt, span, bools) or _ints_within(dt, 0, span)):     # dt: often all 0
        for i, d in enumerate(dt):
            if type(d) is not int or not 0 <= d <= span:
                raise SchemaError("bad_field", f"dt[{i}] must be an integer 0..{span} (got {shown(d)})")
    return Columns(site, seq_first, seq_last, sent_ms, base, points, p, dt, _values(val, q), q)


def _values(val: list[Any], q: list[int]) -> list[float | None]:
    """The value column as floats: each a finite float64, an int exact as one, or null where the
    quality allows it (the qualities are checked already)."""
    # The usual column, numbers only, checked by C loops: every magnitude below 2**53 (so no
    # infinity and every int exact as a float64), and a finite sum (a NaN, which max() may not
    # see, makes the sum NaN; with every magnitude below 2**53 the sum cannot overflow).
    types = set(map(type, val))
    if types <= _NUMBER and max(map(abs, val)) < _EXACT and math.isfinite(sum(val)):
        return val if types == _FLOAT else list(map(float, val))
    values: list[float | None] = []
    for i in range(len(val)):
        value = val[i]
        quality = q[i]
        if value is None:
            if quality not in _NULL_OK:
                raise SchemaError("bad_value", f"val[{i}] is null but q[{i}] is {QUALITIES[quality]!r}")
        elif type(value) is float:
            if not math.isfinite(value):            # 1e999 parses as inf
                raise SchemaError("bad_value", f"val[{i}] must be a finite number (got {shown(value)})")
        elif type(value) is int:
            if not -2**53 < value < 2**53:         # beyond that an integer is not exact as the float64 it becomes
                raise SchemaError("bad_value", f"val[{i}] is out of range (got {shown(value)})")
            value = float(value)
        else:
            raise SchemaError("bad_value", f"val[{i}] must be a finite number or null (got {shown(value)})")
        values.append(value)
    return values


def decode_telemetry_columns(payload: bytes, topic: str | None = None) -> Batch | Columns:
    """``decode_telemetry``, except that a v2 payload comes back as its ``Columns``."""
    if payload[:len(_PREFIX)] == _PREFIX:
        # a JSON boolean is the token true or false: without those bytes the document holds none
        return _columns(_v2_body(payload), topic, bools=b"true" in payload or b"false" in payload)
    try:
        return decode_batch(payload, topic)
    except SchemaError as exc:
        if exc.reason != "bad_version":
            raise
        body = parse_json(payload)          # v1 parsed it already: this cannot fail
        version = body.get("v") if isinstance(body, dict) else None
        if version == 2:
            return _columns(body, topic)
        raise SchemaError("bad_version", f"v must be 1 or 2 (got {shown(version)})") from None


def decode_telemetry(payload: bytes, topic: str | None = None) -> Batch:
    """Validate a telemetry payload of either version; raises SchemaError naming the reason and field.

    A payload that starts as ``encode_batch_v2`` writes it is decoded as v2;
    anything else goes to v1's ``decode_batch``, and when that finds another
    version the payload is looked at once more: ``v`` 2 written differently
    (other spacing or key order) is still v2; any other ``v`` is ``bad_version``.
    """
    decoded = decode_telemetry_columns(payload, topic)
    return decoded.batch() if isinstance(decoded, Columns) else decoded
