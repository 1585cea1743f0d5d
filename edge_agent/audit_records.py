"""What each audit record kind must hold, checked after its CRC by every reader of the log.

A record whose CRC matches can still be malformed: written by a faulty agent, or
edited and given a fresh CRC. :func:`record_problem` says what is wrong with a
decoded record body — a missing field, a wrong type, columns whose lengths
disagree with the seq range, a number outside the 64-bit range it is stored in
(SQLite INTEGER), an unknown kind — as one line naming the kind, the field and
the value, so that ``audit verify``, the writer's tail scan at start-up and
``read_audit`` report it instead of failing deep inside with a ``KeyError``.

Fields a kind must hold (``edge_agent.audit`` describes their meaning; extra
fields are allowed, every record has an integer ``at_ms``):

==========  ==================================================================
``r``       site, seq, ts_ms, asset, point, sensor, unit, q (strings), value (number or null)
``b``       site, seq_first ≤ seq_last; point form: ``s`` (a shape number) or
            ``p`` (point ids, one per seq), not both; ``value`` and ``q``
            (lists, ``q`` or one shared value), one per seq; ``ts_ms`` (one
            shared value, a list of one per seq, or runs ``[[ts_ms, count ≥ 1],
            ...]`` counting the seqs: ``edge_agent.batch.expand_times``);
            column form: ts_ms, asset, point, sensor, value, unit, q, one per seq
``sh``      id (a shape number), p (point ids, at least one)
``pt``      id (point ids), asset, point, unit, sensor: lists of one length
``drop``    site, seq_first ≤ seq_last, count (1 up to the range's size)
``quar``    site, seq, reason; seq_last (≥ seq) when present
``repair``  bytes, at_offset
``cmd``     decision; id and reason (strings or null)
``write``   id, control, outcome (strings), failsafe (true or false)
``cont``    prev_crc (8 hexadecimal digits), last_seq (≥ 0)
==========  ==================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from edge_agent.batch import expand_times
from ems_contract.config_file import shorten
from ems_contract.telemetry import MAX_INT64

__all__ = ["record_problem", "KINDS"]

_CRC = re.compile(r"[0-9a-f]{8}")


class _Malformed(Exception):
    """One field's problem, raised inside the checks and returned as text by :func:`record_problem`."""


@dataclass(frozen=True)
class _Type:
    """What a field's value must be: one of ``types`` (exactly: a bool is not an int) within ``bounds``
    when given; ``what`` says so in the error."""

    what: str
    types: frozenset[type]
    bounds: tuple[int, int] | None = None

    def test(self, value: Any) -> bool:
        return type(value) in self.types and (self.bounds is None or self.bounds[0] <= value <= self.bounds[1])

    def test_all(self, values: list[Any]) -> bool:
        """``test`` of every item, at C speed (a batch record holds a column of hundreds)."""
        if not set(map(type, values)) <= self.types:
            return False
        return self.bounds is None or not values or self.bounds[0] <= min(values) and max(values) <= self.bounds[1]


def _int(what: str, lo: int, hi: int = MAX_INT64) -> _Type:
    return _Type(what, frozenset({int}), (lo, hi))


_SEQ = _int("an integer 1..2**63-1", 1)
_POINT_ID = _int("a point id (an integer 1..2**63-1)", 1)
_SHAPE = _int("a shape number (an integer 1..2**63-1)", 1)
_COUNT = _int("an integer 0..2**63-1", 0)
_TIME = _int("a 64-bit integer", -MAX_INT64 - 1)
_STR = _Type("a string", frozenset({str}))
_OPT_STR = _Type("a string or null", frozenset({str, type(None)}))
_NUMBER = _Type("a number or null", frozenset({int, float, type(None)}))
_BOOL = _Type("true or false", frozenset({bool}))
_LIST = _Type("a list", frozenset({list}))


def _field(body: dict[str, Any], name: str, kind: _Type) -> Any:
    """``body[name]``, checked against ``kind``."""
    if name not in body:
        raise _Malformed(f"{name} is missing")
    value = body[name]
    if not kind.test(value):
        raise _Malformed(f"{name} must be {kind.what} (got {shorten(value)})")
    return value


def _column(body: dict[str, Any], name: str, kind: _Type, n: int, *, shared: bool = False) -> None:
    """``body[name]`` is a list of ``n`` items of ``kind`` (or, when ``shared``, one such item)."""
    if name not in body:
        raise _Malformed(f"{name} is missing")
    value = body[name]
    if shared and type(value) is not list:
        _field(body, name, _Type(f"{kind.what} or a list of {n} of them", kind.types, kind.bounds))
        return
    if type(value) is not list or len(value) != n:
        got = f"a list of {len(value)}" if type(value) is list else shorten(value)
        raise _Malformed(f"{name} must be a list of {n} (got {got})")
    if kind.test_all(value):
        return
    index, item = next((i, v) for i, v in enumerate(value) if not kind.test(v))
    raise _Malformed(f"{name}[{index}] must be {kind.what} (got {shorten(item)})")


def _seq_range(body: dict[str, Any]) -> int:
    """seq_first..seq_last (ordered); the number of seqs in it."""
    first, last = _field(body, "seq_first", _SEQ), _field(body, "seq_last", _SEQ)
    if last < first:
        raise _Malformed(f"seq_last {last} is below seq_first {first}")
    return last - first + 1


def _reading(body: dict[str, Any]) -> None:
    for name in ("site", "asset", "point", "sensor", "unit", "q"):
        _field(body, name, _STR)
    _field(body, "seq", _SEQ)
    _field(body, "ts_ms", _TIME)
    _field(body, "value", _NUMBER)


def _batch(body: dict[str, Any]) -> None:
    _field(body, "site", _STR)
    n = _seq_range(body)
    if "p" in body and "s" in body:
        raise _Malformed("s and p are both given (a batch names its points one way)")
    if "p" in body or "s" in body:
        if "s" in body:
            _field(body, "s", _SHAPE)
        else:
            _column(body, "p", _POINT_ID, n)
        _column(body, "value", _NUMBER, n)
        if "ts_ms" not in body:
            raise _Malformed("ts_ms is missing")
        try:
            expand_times(body["ts_ms"], n)
        except ValueError as exc:
            raise _Malformed(f"ts_ms {exc}") from None
        _column(body, "q", _STR, n, shared=True)
        return
    _column(body, "ts_ms", _TIME, n)
    _column(body, "value", _NUMBER, n)
    for name in ("asset", "point", "sensor", "unit", "q"):
        _column(body, name, _STR, n)


def _points(body: dict[str, Any]) -> None:
    ids = _field(body, "id", _Type("a list of point ids", _LIST.types))
    _column(body, "id", _POINT_ID, len(ids))
    for name in ("asset", "point", "unit", "sensor"):
        _column(body, name, _STR, len(ids))


def _shape(body: dict[str, Any]) -> None:
    _field(body, "id", _SHAPE)
    ids = _field(body, "p", _Type("a list of point ids", _LIST.types))
    if not ids:
        raise _Malformed("p must not be empty")
    _column(body, "p", _POINT_ID, len(ids))


def _drop(body: dict[str, Any]) -> None:
    _field(body, "site", _STR)
    n = _seq_range(body)
    _field(body, "count", _int(f"an integer 1..{n} (the seq range's size)", 1, n))


def _quarantine(body: dict[str, Any]) -> None:
    _field(body, "site", _STR)
    first = _field(body, "seq", _SEQ)
    _field(body, "reason", _STR)
    if "seq_last" in body:         # absent in records of agents before batches
        _field(body, "seq_last", _int(f"an integer {first}..2**63-1 (not below seq)", first))


def _repair(body: dict[str, Any]) -> None:
    _field(body, "bytes", _COUNT)
    _field(body, "at_offset", _COUNT)


def _command(body: dict[str, Any]) -> None:
    _field(body, "id", _OPT_STR)
    _field(body, "decision", _STR)
    _field(body, "reason", _OPT_STR)


def _write(body: dict[str, Any]) -> None:
    for name in ("id", "control", "outcome"):
        _field(body, name, _STR)
    _field(body, "failsafe", _BOOL)


def _continuation(body: dict[str, Any]) -> None:
    crc = _field(body, "prev_crc", _STR)
    if _CRC.fullmatch(crc) is None:
        raise _Malformed(f"prev_crc must be 8 lowercase hexadecimal digits (got {shorten(crc)})")
    _field(body, "last_seq", _COUNT)


KINDS: dict[str, Callable[[dict[str, Any]], None]] = {
    "r": _reading, "b": _batch, "pt": _points, "sh": _shape, "drop": _drop, "quar": _quarantine, "repair": _repair,
    "cmd": _command, "write": _write, "cont": _continuation}
"""Each record kind's check (raises with the field's problem)."""


def record_problem(body: Any) -> str | None:
    """What is malformed in one decoded audit record (``"'b' record: value must be a list of 3 (...)"``), or None."""
    if not isinstance(body, dict):
        return f"record must be a JSON object (got {shorten(body)})"
    kind = body.get("k")
    check = KINDS.get(kind) if type(kind) is str else None
    if check is None:
        return f"record kind k must be one of {', '.join(KINDS)} (got {shorten(kind)})"
    try:
        check(body)
        _field(body, "at_ms", _TIME)
    except _Malformed as exc:
        return f"'{kind}' record: {exc}"
    return None
