"""Topics and payloads, version 1 — the one contract between edge and cloud.

Documented for humans in ``docs/telemetry-schema.md``; this module is the
executable form, imported by the edge agent (to build messages), by the
ingest workers and the twin API (to validate them) and by the Pulumi program
(topic filters in the broker's roles). It imports nothing outside the standard
library.

Topics (``<site>`` and ``<asset>`` match ``[A-Za-z0-9][A-Za-z0-9_.-]{0,63}``)::

    ems/v1/<site>/telemetry        batches of readings, QoS 1, not retained
    ems/v1/<site>/twin/<asset>     latest calibrated state of one asset, QoS 1, retained
    ems/v1/<site>/status           "online" / "offline" (last will), QoS 1, retained
    ems/v1/deadletter/<reason>     payloads the ingest rejected, with the reason
    ems/v1/<worker>/seen           seqs an ingest worker wrote, for its group's loss accountant

Telemetry payload (UTF-8 JSON object)::

    {"v": 1, "site": "sub-07", "seq_first": 101, "seq_last": 102, "sent_ms": 1764...,
     "readings": [
        {"seq": 101, "ts_ms": 1764..., "asset": "tx1", "point": "oil_temp",
         "value": 61.25, "unit": "degC", "quality": "good"},
        {"seq": 102, ...}]}

* ``seq`` is the site's monotonic sequence number of one reading (never reused);
  ``seq_first``/``seq_last`` are the smallest and largest seq in the batch.
* ``ts_ms`` is the time of measurement (milliseconds since the Unix epoch); it is
  never rewritten downstream, so a replayed spool arrives with its old times.
* ``value`` is a finite number; it may be ``null`` only when ``quality`` is
  ``device_error`` or ``stale`` (there is nothing to measure).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

import orjson

from ems_contract.config_file import shorten as shown   # one bounded repr for every error message

SCHEMA_VERSION = 1
TOPIC_ROOT = f"ems/v{SCHEMA_VERSION}"
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_READINGS_PER_BATCH = 1000
MAX_INT64 = 2**63 - 1
"""``seq``, ``ts_ms`` and ``sent_ms`` become int64 (SQLite, protobuf, Prometheus): nothing larger is accepted."""
MAX_UNIT_CHARS = 32
MAX_INT_LITERAL_DIGITS = 320
"""An integer literal longer than this cannot be a finite float64 or an int64: refused before ``int()`` runs."""
QUALITIES = ("good", "loop_fault", "device_error", "stale")
_NULL_OK = frozenset({"device_error", "stale"})
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Characters a unit may not contain although printable: quoting and escaping characters of label
# values, PromQL and JSON, so a unit can be pasted into a selector or a log line as it is.
_UNIT_FORBIDDEN = frozenset('"\\\'`{}')
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
# Ids already matched: every message names the same few hundred assets and points, and a set
# lookup costs a tenth of the regex. Only exact ``str`` enters (a subclass could redefine equality).
_VALID_IDS: set[str] = set()
_MAX_VALID_IDS = 65_536

__all__ = [
    "SCHEMA_VERSION", "TOPIC_ROOT", "MAX_PAYLOAD_BYTES", "MAX_READINGS_PER_BATCH", "MAX_INT64", "QUALITIES",
    "SchemaError", "Reading", "Batch",
    "telemetry_topic", "twin_topic", "status_topic", "deadletter_topic", "telemetry_subscription",
    "TWIN_SUBSCRIPTION", "seen_topic", "worker_of_seen_topic", "site_from_topic", "valid_id", "valid_ids",
    "encode_batch", "decode_batch", "encode_twin", "check_finite", "dump_json",
]


class SchemaError(ValueError):
    """A payload or topic that does not follow schema v1.

    ``reason`` is a short machine-readable code (used as the dead-letter topic
    suffix and metric label); ``detail`` says which field and value.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Reading:
    """One calibrated measurement of one point of one asset."""

    seq: int
    ts_ms: int
    asset: str
    point: str
    value: float | None
    unit: str
    quality: str = "good"

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "ts_ms": self.ts_ms, "asset": self.asset, "point": self.point,
            "value": self.value, "unit": self.unit, "quality": self.quality,
        }


@dataclass(frozen=True, slots=True)
class Batch:
    """A validated telemetry message."""

    site: str
    seq_first: int
    seq_last: int
    sent_ms: int
    readings: tuple[Reading, ...]


def valid_unit(value: object) -> bool:
    """True when ``value`` may be a reading's unit (a label value): at most 32 printable characters,
    valid Unicode (no lone surrogates), no control or format characters (RTL overrides), no
    quotes, backslashes or braces, no leading or trailing space. Empty means dimensionless."""
    return (isinstance(value, str) and len(value) <= MAX_UNIT_CHARS and value.isprintable()
            and value == value.strip() and not _UNIT_FORBIDDEN.intersection(value))


def valid_id(value: object) -> bool:
    """True when ``value`` may be used as a site, asset or point id in topics and labels."""
    if type(value) is str and value in _VALID_IDS:
        return True
    if not (isinstance(value, str) and _ID.fullmatch(value)):
        return False
    if len(_VALID_IDS) >= _MAX_VALID_IDS:                # hostile input may only cost the cache, never memory
        _VALID_IDS.clear()
    _VALID_IDS.add(value)
    return True


def valid_ids(values: list[object]) -> bool:
    """True when every entry of ``values`` is a ``valid_id``; one set operation when all were seen before.

    For parsed JSON (exact ``str`` entries): a ``str`` subclass could redefine its equality."""
    try:
        if _VALID_IDS.issuperset(values):
            return True
    except TypeError:                                    # an unhashable entry (a list, a dict) is no id
        return False
    return all(map(valid_id, values))


def _check_id(kind: str, value: object) -> str:
    if not valid_id(value):
        raise SchemaError("bad_id", f"{kind} {shown(value)} must match {_ID.pattern}")
    return value  # type: ignore[return-value]


def telemetry_topic(site: str) -> str:
    return f"{TOPIC_ROOT}/{_check_id('site', site)}/telemetry"


def twin_topic(site: str, asset: str) -> str:
    return f"{TOPIC_ROOT}/{_check_id('site', site)}/twin/{_check_id('asset', asset)}"


def status_topic(site: str) -> str:
    return f"{TOPIC_ROOT}/{_check_id('site', site)}/status"


def deadletter_topic(reason: str) -> str:
    return f"{TOPIC_ROOT}/deadletter/{reason}"


def seen_topic(worker: str) -> str:
    """Where ingest worker ``worker`` (its client id) publishes the seqs it wrote, for the group's
    packet-loss accountant (``ingest.seq_share``); in the worker's own subtree."""
    return f"{TOPIC_ROOT}/{_check_id('worker', worker)}/seen"


def worker_of_seen_topic(topic: str) -> str | None:
    """The worker id of a ``seen_topic``; None for any other topic."""
    parts = topic.split("/")
    if len(parts) == 4 and f"{parts[0]}/{parts[1]}" == TOPIC_ROOT and parts[3] == "seen" and valid_id(parts[2]):
        return parts[2]
    return None


TWIN_SUBSCRIPTION = f"{TOPIC_ROOT}/+/twin/+"
"""Every site's twins: what the twin read API subscribes to, and all its broker role grants."""


def telemetry_subscription(group: str | None = None) -> str:
    """The subscription filter for every site's telemetry; shared when ``group`` is given."""
    base = f"{TOPIC_ROOT}/+/telemetry"
    return f"$share/{group}/{base}" if group else base


def site_from_topic(topic: str) -> str:
    """The site id of a telemetry topic; raises SchemaError for any other topic."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or parts[3] != "telemetry":
        raise SchemaError("bad_topic", f"topic {topic!r} is not {TOPIC_ROOT}/<site>/telemetry")
    return _check_id("site", parts[2])


def check_finite(values: Iterable[float | None]) -> None:
    """Raise ValueError when a value is NaN or infinite (None is fine).

    ``json.dumps(allow_nan=False)`` raised for them; orjson writes them as ``null``,
    which would change a reading's meaning, so every encoder checks first.
    """
    values = values if isinstance(values, (list, tuple)) else list(values)
    try:
        if math.isfinite(sum(values)):          # NaN or infinity makes the sum so; one C loop for the usual case
            return
    except TypeError:                           # a None among them: look at each
        pass
    isfinite = math.isfinite
    for value in values:
        if value is not None and not isfinite(value):
            raise ValueError(f"value {value!r} is not a finite number")


def dump_json(body: Any) -> bytes:
    """Compact JSON of ``body`` (orjson; the caller has checked its floats with ``check_finite``)."""
    return orjson.dumps(body)


def encode_batch(site: str, readings: Iterable[Reading], sent_ms: int) -> bytes:
    """Serialise readings (ascending seq) into one telemetry payload; ValueError for a non-finite value."""
    items = list(readings)
    if not items:
        raise SchemaError("empty", "a batch needs at least one reading")
    check_finite(r.value for r in items)
    body = {
        "v": SCHEMA_VERSION,
        "site": _check_id("site", site),
        "seq_first": min(r.seq for r in items),
        "seq_last": max(r.seq for r in items),
        "sent_ms": int(sent_ms),
        "readings": [r.to_json() for r in items],
    }
    return orjson.dumps(body)


def encode_twin(site: str, asset: str, ts_ms: int, points: dict[str, dict[str, Any]],
                thermal: dict[str, Any] | None = None) -> bytes:
    """Serialise an asset's latest state: ``points`` maps point → {value, unit, quality, ts_ms}.

    ``thermal`` (thermal assets only) is the optional thermal-model block, added as key ``thermal``.
    """
    body: dict[str, Any] = {"v": SCHEMA_VERSION, "site": _check_id("site", site),
                            "asset": _check_id("asset", asset), "ts_ms": int(ts_ms), "points": points}
    check_finite(state.get("value") for state in points.values())
    if thermal is not None:
        _check_finite_tree(thermal)
        body["thermal"] = thermal
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def _check_finite_tree(item: Any) -> None:
    """ValueError for a NaN or infinite float anywhere in a small document (the twin's thermal block)."""
    if isinstance(item, float):
        check_finite((item,))
    elif isinstance(item, dict):
        for value in item.values():
            _check_finite_tree(value)
    elif isinstance(item, list):
        for value in item:
            _check_finite_tree(value)


def _int(obj: dict[str, Any], key: str, where: str, minimum: int = 0) -> int:
    value = obj.get(key)
    if type(value) is not int:                           # bool is an int subclass: not accepted
        raise SchemaError("bad_field", f"{where}{key} must be an integer (got {shown(value)})")
    if not minimum <= value <= MAX_INT64:
        raise SchemaError("bad_field", f"{where}{key} must be in {minimum}..{MAX_INT64} (got {shown(value)})")
    return value


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > 64:
        raise SchemaError("bad_field", f"{where}{key} must be a non-empty string of at most 64 characters (got {shown(value)})")
    return value


def _reading(raw: object, index: int) -> Reading:
    where = f"readings[{index}]."
    if not isinstance(raw, dict):
        raise SchemaError("bad_field", f"readings[{index}] must be an object (got {type(raw).__name__})")
    quality = raw.get("quality")
    if not isinstance(quality, str) or quality not in QUALITIES:
        raise SchemaError("bad_field", f"{where}quality must be one of {', '.join(QUALITIES)} (got {shown(quality)})")
    value = _value(raw.get("value"), where)
    if value is None and quality not in _NULL_OK:
        raise SchemaError("bad_value", f"{where}value is null but quality is {quality!r}")
    asset = _check_id(f"{where}asset", raw.get("asset"))
    point = _check_id(f"{where}point", raw.get("point"))
    unit = raw.get("unit")
    if not valid_unit(unit):
        raise SchemaError("bad_field", f"{where}unit must be at most {MAX_UNIT_CHARS} printable characters without "
                                       f"quotes, backslashes, braces or surrounding spaces (got {shown(unit)})")
    return Reading(seq=_int(raw, "seq", where, 1), ts_ms=_int(raw, "ts_ms", where, 0), asset=asset, point=point,
                   value=value, unit=unit, quality=quality)


def _value(value: object, where: str) -> float | None:
    """A reading's value as the finite float64 it becomes, or None."""
    if value is None:
        return None
    if type(value) is float:
        number = value
    elif type(value) is int:
        try:
            number = float(value)
        except OverflowError:                            # beyond float64: 1 followed by 400 zeros
            number = math.inf
    else:
        raise SchemaError("bad_value", f"{where}value must be a finite number (got {shown(value)})")
    if not math.isfinite(number):
        raise SchemaError("bad_value", f"{where}value must be a finite float64 (got {shown(value)})")
    return number


def decode_batch(payload: bytes, topic: str | None = None) -> Batch:
    """Validate a telemetry payload; raises SchemaError naming the reason and field.

    When ``topic`` is given, the payload's site must be the topic's site.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SchemaError("oversized", f"payload is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    body = parse_json(payload)
    if not isinstance(body, dict):
        raise SchemaError("bad_field", f"payload must be a JSON object (got {type(body).__name__})")
    version = body.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:   # `true == 1` in Python: not a version
        raise SchemaError("bad_version", f"v must be {SCHEMA_VERSION} (got {shown(version)})")
    site = _check_id("site", body.get("site"))
    if topic is not None and site_from_topic(topic) != site:
        raise SchemaError("site_mismatch", f"payload site {site!r} differs from topic {shown(topic)}")
    raw_readings = body.get("readings")
    if not isinstance(raw_readings, list) or not raw_readings:
        raise SchemaError("bad_field", "readings must be a non-empty list")
    if len(raw_readings) > MAX_READINGS_PER_BATCH:
        raise SchemaError("oversized", f"{len(raw_readings)} readings; the limit is {MAX_READINGS_PER_BATCH}")
    readings = tuple(_reading(r, i) for i, r in enumerate(raw_readings))
    seq_first = _int(body, "seq_first", "", 1)
    seq_last = _int(body, "seq_last", "", 1)
    seqs = [r.seq for r in readings]
    if min(seqs) != seq_first or max(seqs) != seq_last:
        raise SchemaError("bad_seq", f"seq_first/seq_last {seq_first}..{seq_last} do not match the readings' {min(seqs)}..{max(seqs)}")
    if len(set(seqs)) != len(seqs):
        raise SchemaError("bad_seq", "a seq appears twice in one batch")
    return Batch(site=site, seq_first=seq_first, seq_last=seq_last,
                 sent_ms=_int(body, "sent_ms", "", 0), readings=readings)


def parse_json(payload: bytes) -> Any:
    """Parse untrusted JSON: UTF-8 only, no NaN/Infinity, integer literals bounded.

    Raises SchemaError (``not_json``, ``too_deep``, ``bad_value``) and nothing else: a document
    nested beyond the interpreter's recursion limit is ``too_deep`` (the C parser stops there),
    a 5,000-digit integer ``bad_value`` before ``int()`` spends time on it. Strings may still hold
    lone surrogates and containers may be deep: the caller validates the shape it expects
    (``decode_batch``) or calls ``check_tree``.

    orjson parses first; whatever it refuses goes to the standard library's parser, which
    gives the error above (or accepts what orjson refuses but ``json`` takes, such as a lone
    surrogate escape). A run of 19 or more digits skips orjson: it reads integers beyond
    64 bits as floats, which would change an out-of-range seq's message.
    """
    if not _LONG_DIGITS.search(payload):
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(payload.decode("utf-8"), parse_constant=_reject_constant, parse_int=_parse_int)
    except SchemaError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaError("not_json", shown(str(exc))) from exc
    except RecursionError as exc:
        raise SchemaError("too_deep", "JSON nesting is deeper than the parser allows") from exc


def check_tree(body: Any, *, max_depth: int, max_nodes: int) -> None:
    """Bound a parsed document: nesting depth, number of values, and every string (keys too)
    valid Unicode (JSON's ``\\ud800`` escapes decode to lone surrogates that no encoder accepts).

    Iterative, so a deep document cannot exhaust the stack. Raises SchemaError.
    """
    stack: list[tuple[Any, int]] = [(body, 1)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise SchemaError("oversized", f"more than {max_nodes} JSON values")
        if isinstance(item, str):
            if not _utf8(item):
                raise SchemaError("bad_encoding", f"string {shown(item)} holds a lone UTF-16 surrogate")
        elif isinstance(item, (dict, list)):
            if depth > max_depth:
                raise SchemaError("too_deep", f"JSON nesting is deeper than {max_depth} levels")
            if isinstance(item, dict):
                stack.extend((key, depth + 1) for key in item)
                stack.extend((value, depth + 1) for value in item.values())
            else:
                stack.extend((value, depth + 1) for value in item)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_int(literal: str) -> int:
    if len(literal) > MAX_INT_LITERAL_DIGITS:
        raise SchemaError("bad_value", f"an integer of {len(literal)} digits is out of every range")
    return int(literal)


def _reject_constant(name: str) -> None:
    raise SchemaError("bad_value", f"{name} is not allowed in a payload")
