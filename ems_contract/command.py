"""Commands and their results, version 1 — the control contract between the north-bound client and the edge.

Topics (``<site>`` as in ``ems_contract.telemetry``)::

    ems/v1/<site>/command           a control to apply, QoS 1, not retained; published only by ems-northbound
    ems/v1/<site>/command-result    what the edge did with it, QoS 1, not retained; published by the site

Command payload (UTF-8 JSON object, exactly these keys)::

    {"v": 1, "id": "9f0c…", "site": "sub-07", "issued_ms": 1764…, "expires_ms": 1764…,
     "event": "C0000001", "control": "exp_lim_w", "value": 5000.0}

* ``id`` names the command once and for all (``[A-Za-z0-9_-]{1,64}``): the edge applies an id at
  most once, so a redelivered or replayed command is recognised.
* ``expires_ms`` > ``issued_ms``, at most ``MAX_VALIDITY_MS`` (24 h) apart; the edge refuses a
  command it receives after ``expires_ms``.
* ``event`` is the mRID (1–32 hex digits) of the 2030.5 DERControl that asked for it, or
  ``null`` when a DefaultDERControl did.
* ``control`` is one of ``CONTROLS``; ``value`` is a finite number of watts (``|value| <=
  MAX_WATTS``) for the ``*_w`` limits and a boolean for ``connect`` / ``energize``.
* ``issuer`` (optional key) names the person or system that issued a manual command through the
  operator route (``X-Ems-User`` from the API gateway, ``ISSUER_PATTERN``); commands decided from
  2030.5 controls carry no ``issuer`` key.

Result payload::

    {"v": 1, "id": "9f0c…", "site": "sub-07", "ts_ms": 1764…, "outcome": "applied",
     "reason": null, "readback": 5000.0}

* ``outcome`` is one of ``OUTCOMES``; ``reason`` (at most 200 characters) says why for any
  outcome but ``applied``; ``readback`` is the value read back after the write, or ``null``.

Decoding is strict and bounded (``MAX_PAYLOAD_BYTES``); anything else raises
``SchemaError`` from ``ems_contract.telemetry`` with a reason code. Standard library only.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ems_contract.roles import USER_PATTERN, valid_user
from ems_contract.telemetry import SCHEMA_VERSION, TOPIC_ROOT, SchemaError, valid_id

__all__ = ["CONTROLS", "BOOLEAN_CONTROLS", "OUTCOMES", "ISSUER_PATTERN", "COMMAND_ID_PATTERN", "MAX_PAYLOAD_BYTES", "MAX_VALIDITY_MS", "MAX_WATTS", "Command", "CommandResult",
           "command_topic", "command_result_topic", "encode_command", "decode_command", "encode_result",
           "decode_result"]

CONTROLS = ("exp_lim_w", "imp_lim_w", "gen_lim_w", "load_lim_w", "connect", "energize")
"""Controls the platform carries to the field: CSIP-AUS opModExpLimW, opModImpLimW, opModGenLimW,
opModLoadLimW (watts) and 2030.5 opModConnect, opModEnergize (booleans)."""
BOOLEAN_CONTROLS = frozenset({"connect", "energize"})
"""The controls whose value is a boolean; every other control's is a number of watts."""
OUTCOMES = ("applied", "rejected", "expired", "failed")
MAX_PAYLOAD_BYTES = 4096
MAX_VALIDITY_MS = 24 * 3600 * 1000
MAX_WATTS = 1e9
COMMAND_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
ISSUER_PATTERN = USER_PATTERN
"""An issuer is a user name of the API gateway (``ems_contract.roles``; its verifier cleans names to this set)."""
_COMMAND_ID = re.compile(COMMAND_ID_PATTERN)
_MRID = re.compile(r"^[0-9A-Fa-f]{1,32}$")
_COMMAND_KEYS = frozenset({"v", "id", "site", "issued_ms", "expires_ms", "event", "control", "value"})
_RESULT_KEYS = frozenset({"v", "id", "site", "ts_ms", "outcome", "reason", "readback"})
_MAX_MS = 2**53


@dataclass(frozen=True, slots=True)
class Command:
    """A validated command: set ``control`` to ``value`` at ``site`` until ``expires_ms``."""

    id: str
    site: str
    issued_ms: int
    expires_ms: int
    event: str | None
    control: str
    value: float | bool
    issuer: str | None = None
    """Who issued a manual command (``None``: decided from the utility's 2030.5 controls)."""


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What the edge did with command ``id``."""

    id: str
    site: str
    ts_ms: int
    outcome: str
    reason: str | None = None
    readback: float | bool | None = None


def command_topic(site: str) -> str:
    if not valid_id(site):
        raise SchemaError("bad_id", f"site {site!r} is not a valid id")
    return f"{TOPIC_ROOT}/{site}/command"


def command_result_topic(site: str) -> str:
    return command_topic(site) + "-result"


def _object(payload: bytes, keys: frozenset[str], optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SchemaError("oversized", f"payload is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    try:
        body = json.loads(payload, parse_constant=_reject_constant)
    except SchemaError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SchemaError("not_json", str(exc)[:200]) from exc
    if not isinstance(body, dict):
        raise SchemaError("bad_field", f"payload must be a JSON object (got {type(body).__name__})")
    if body.get("v") != SCHEMA_VERSION:
        raise SchemaError("bad_version", f"v must be {SCHEMA_VERSION} (got {body.get('v')!r})")
    if not keys <= set(body) <= keys | optional:
        extra, missing = sorted(set(body) - keys - optional), sorted(keys - set(body))
        raise SchemaError("bad_field", f"unknown keys {extra[:3]}" if extra else f"missing keys {missing}")
    return body


def _reject_constant(name: str) -> None:
    raise SchemaError("bad_value", f"{name} is not allowed in a payload")


def _ms(body: dict[str, Any], key: str) -> int:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_MS:
        raise SchemaError("bad_field", f"{key} must be an integer of milliseconds since the epoch (got {value!r})")
    return value


def _id(body: dict[str, Any]) -> str:
    value = body["id"]
    if not isinstance(value, str) or not _COMMAND_ID.fullmatch(value):
        raise SchemaError("bad_id", f"id {str(value)[:80]!r} must match {_COMMAND_ID.pattern}")
    return value


def _site(body: dict[str, Any], topic: str | None, suffix: str) -> str:
    site = body["site"]
    if not valid_id(site):
        raise SchemaError("bad_id", f"site {str(site)[:80]!r} is not a valid id")
    if topic is not None and topic != f"{TOPIC_ROOT}/{site}/{suffix}":
        raise SchemaError("site_mismatch", f"payload site {site!r} differs from topic {topic[:120]!r}")
    return site


def _value(control: str, value: object, key: str) -> float | bool:
    if control in BOOLEAN_CONTROLS:
        if not isinstance(value, bool):
            raise SchemaError("bad_value", f"{key} of {control} must be true or false (got {value!r})")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or abs(value) > MAX_WATTS:
        raise SchemaError("bad_value", f"{key} of {control} must be a finite number of watts, |value| <= {MAX_WATTS:g} "
                                       f"(got {value!r})")
    return float(value)


def encode_command(command: Command) -> bytes:
    """Serialise a command; it must satisfy what ``decode_command`` checks."""
    body = {"v": SCHEMA_VERSION, "id": command.id, "site": command.site, "issued_ms": command.issued_ms,
            "expires_ms": command.expires_ms, "event": command.event, "control": command.control,
            "value": command.value}
    if command.issuer is not None:
        body["issuer"] = command.issuer
    payload = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    decode_command(payload)
    return payload


def decode_command(payload: bytes, topic: str | None = None) -> Command:
    """Validate a command payload (and, given ``topic``, that it is this site's command topic)."""
    body = _object(payload, _COMMAND_KEYS, frozenset({"issuer"}))
    command_id = _id(body)
    site = _site(body, topic, "command")
    issued, expires = _ms(body, "issued_ms"), _ms(body, "expires_ms")
    if not issued < expires <= issued + MAX_VALIDITY_MS:
        raise SchemaError("bad_field", f"expires_ms must be after issued_ms and at most {MAX_VALIDITY_MS} ms later "
                                       f"(got {issued}..{expires})")
    event = body["event"]
    if event is not None and (not isinstance(event, str) or not _MRID.fullmatch(event)):
        raise SchemaError("bad_field", f"event must be null or an mRID of 1-32 hex digits (got {str(event)[:80]!r})")
    control = body["control"]
    if control not in CONTROLS:
        raise SchemaError("bad_field", f"control must be one of {', '.join(CONTROLS)} (got {str(control)[:40]!r})")
    issuer = body.get("issuer")
    if issuer is not None and not valid_user(issuer):
        raise SchemaError("bad_field", f"issuer must match {ISSUER_PATTERN} (got {str(issuer)[:80]!r})")
    return Command(id=command_id, site=site, issued_ms=issued, expires_ms=expires,
                   event=event.upper() if event else None, control=control, value=_value(control, body["value"], "value"),
                   issuer=issuer)


def encode_result(result: CommandResult) -> bytes:
    """Serialise a command result; it must satisfy what ``decode_result`` checks."""
    body = {"v": SCHEMA_VERSION, "id": result.id, "site": result.site, "ts_ms": result.ts_ms,
            "outcome": result.outcome, "reason": result.reason, "readback": result.readback}
    payload = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    decode_result(payload)
    return payload


def decode_result(payload: bytes, topic: str | None = None) -> CommandResult:
    """Validate a command-result payload (and, given ``topic``, that it is this site's result topic)."""
    body = _object(payload, _RESULT_KEYS)
    outcome = body["outcome"]
    if outcome not in OUTCOMES:
        raise SchemaError("bad_field", f"outcome must be one of {', '.join(OUTCOMES)} (got {str(outcome)[:40]!r})")
    reason = body["reason"]
    if reason is not None and (not isinstance(reason, str) or len(reason) > 200):
        raise SchemaError("bad_field", "reason must be null or a string of at most 200 characters")
    if outcome != "applied" and not reason:
        raise SchemaError("bad_field", f"reason is required when outcome is {outcome!r}")
    readback = body["readback"]
    if readback is not None and not isinstance(readback, bool) and (
            not isinstance(readback, (int, float)) or not math.isfinite(readback)):
        raise SchemaError("bad_value", f"readback must be null, a boolean or a finite number (got {readback!r})")
    return CommandResult(id=_id(body), site=_site(body, topic, "command-result"), ts_ms=_ms(body, "ts_ms"),
                         outcome=outcome, reason=reason,
                         readback=float(readback) if isinstance(readback, (int, float)) and not isinstance(readback, bool)
                         else readback)
