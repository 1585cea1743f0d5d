"""An operator's manual command request: hostile bytes → a checked :class:`ManualRequest`, or a RequestError.

The body of ``POST /v1/commands`` (``northbound/operator_api.py``), as the API gateway passed it on::

    {"site": "sub-07", "control": "exp_lim_w", "value": 5000, "ttl_s": 300}

* at most ``MAX_BODY_BYTES`` of UTF-8; one JSON object nested no deeper than that (``MAX_DEPTH``);
  no duplicate keys, no ``NaN``/``Infinity``, no key but ``FIELDS``;
* ``site``: a site this north-bound client serves (the contract's id pattern first);
* ``control``: one of ``ems_contract.command.CONTROLS`` — the contract addresses a site's control,
  which the edge maps to the one writable point (device and register) declared for it;
* ``value``: a finite number of watts with ``|value| <= MAX_WATTS`` for the ``*_w`` controls, a
  boolean for ``connect``/``energize`` (the edge then checks the point's own min/max and rate);
* ``ttl_s``: optional whole seconds, 1..``max_ttl_s`` (the command expires then and the edge writes
  the point's safe value unless a newer command came). Defaults to ``default_ttl_s``.

Every refusal names the field and the (shortened) value: ``RequestError(field, value, reason)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Collection

from ems_contract.command import BOOLEAN_CONTROLS, CONTROLS, MAX_WATTS
from ems_contract.telemetry import valid_id

__all__ = ["FIELDS", "MAX_BODY_BYTES", "MAX_DEPTH", "ManualRequest", "RequestError", "parse_request"]

MAX_BODY_BYTES = 4096
MAX_DEPTH = 1
"""One flat object: every value is a scalar."""
FIELDS = ("site", "control", "value", "ttl_s")
_REQUIRED = ("site", "control", "value")


class RequestError(ValueError):
    """A refused request: ``field`` (or ``body``), the offending ``value`` and why."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field, self.value, self.reason = field, _shown(value), reason
        super().__init__(f"{field}: {self.value} {reason}")


@dataclass(frozen=True, slots=True)
class ManualRequest:
    """A checked request: set ``control`` at ``site`` to ``value`` for ``ttl_s`` seconds."""

    site: str
    control: str
    value: float | bool
    ttl_s: int


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _depth(body: bytes) -> int:
    """The deepest nesting of objects/arrays in ``body``, brackets inside strings ignored; linear, no recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:          # backslash: the next character is escaped
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x7D, 0x5D):
            depth -= 1
    return deepest


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise RequestError(key, value, "appears twice in the body")
        seen[key] = value
    return seen


def _no_constant(name: str) -> None:
    raise RequestError("body", name, "is not JSON (NaN and Infinity are not allowed)")


def parse_request(body: bytes, *, sites: Collection[str], default_ttl_s: int, max_ttl_s: int) -> ManualRequest:
    """Check ``body`` (module docstring); raises RequestError naming the field and value."""
    if len(body) > MAX_BODY_BYTES:
        raise RequestError("body", f"{len(body)} bytes", f"is larger than {MAX_BODY_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError("body", body[max(0, exc.start - 8):exc.end + 8], "is not valid UTF-8") from exc
    if _depth(body) > MAX_DEPTH:
        raise RequestError("body", text, f"nests deeper than {MAX_DEPTH} level: one flat JSON object is expected")
    try:
        doc = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise RequestError("body", text, f"is not JSON ({exc.msg} at character {exc.pos})") from exc
    if not isinstance(doc, dict):
        raise RequestError("body", doc, "must be a JSON object")
    for key in doc:
        if key not in FIELDS:
            raise RequestError(key, doc[key], f"is not a known field ({', '.join(FIELDS)})")
    for key in _REQUIRED:
        if key not in doc:
            raise RequestError(key, None, "is required")
    site = doc["site"]
    if not valid_id(site):
        raise RequestError("site", site, "is not a site id ([A-Za-z0-9][A-Za-z0-9_.-]{0,63})")
    if site not in sites:
        raise RequestError("site", site, f"is not a site this client commands ({', '.join(sorted(sites))})")
    control = doc["control"]
    if control not in CONTROLS:
        raise RequestError("control", control, f"must be one of {', '.join(CONTROLS)}")
    return ManualRequest(site=site, control=control, value=_value(control, doc["value"]),
                         ttl_s=_ttl(doc.get("ttl_s", default_ttl_s), max_ttl_s))


def _value(control: str, value: object) -> float | bool:
    if control in BOOLEAN_CONTROLS:
        if not isinstance(value, bool):
            raise RequestError("value", value, f"must be true or false for {control}")
        return value
    # Compared before float(): an integer of 400 digits would overflow it.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= MAX_WATTS:
        raise RequestError("value", value, f"must be a finite number of watts, |value| <= {MAX_WATTS:g}, for {control}")
    return float(value)


def _ttl(value: object, max_ttl_s: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= max_ttl_s:
        raise RequestError("ttl_s", value, f"must be whole seconds, 1..{max_ttl_s}")
    return value
