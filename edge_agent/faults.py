"""PLC fault codes: a point whose register value is a fault code, mapped to a code, a severity and a text.

In sensors.conf a point declares its map as a table of register value → fault::

    [[devices.points]]
    id = "RELAY1_FAULT"
    asset = "relay1"
    name = "fault_code"
    address = 40
    type = "uint16"
    [devices.points.faults]
    4 = { code = "E04", text = "over-voltage", severity = "critical" }
    7 = { code = "E07", text = "cooling fan", severity = "warning" }

A reading of that point (quality ``good``) whose value equals a key is that
fault, *active* from the first reading that showed it; any other value (0, an
unmapped value, a fractional value after calibration) means no fault. A reading
that is not ``good`` carries no code, so the fault is not active either: the
device-down and loop-fault alerts speak for that time. The twin shows an
active fault in the point's state as ``"fault": {"code", "text", "severity",
"since_ms"}``; the twin API exports it as ``ems_twin_fault_active`` and the
alert ``EmsPlcFault`` names code and text while it lasts.

Codes and texts become Prometheus label values and alert text, so they are
checked here: a code is 1..16 of ``[A-Za-z0-9_.-]`` starting with a letter or digit, a text 1..80 printable
characters without quotes, backslashes or braces, at most ``MAX_FAULTS`` per point.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from edge_agent.errors import ConfigError

__all__ = ["FaultCode", "SEVERITIES", "MAX_FAULTS", "parse_faults", "active_fault", "valid_code", "valid_text"]

SEVERITIES = ("critical", "warning", "info")
MAX_FAULTS = 256
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,15}$")
_TEXT_FORBIDDEN = frozenset('"\\\'`{}')
_KEY = re.compile(r"^(0|[1-9][0-9]{0,9})$")


def valid_code(code: object) -> bool:
    return isinstance(code, str) and _CODE.fullmatch(code) is not None


def valid_text(text: object) -> bool:
    return (isinstance(text, str) and 1 <= len(text) <= 80 and text == text.strip() and text.isprintable()
            and not _TEXT_FORBIDDEN.intersection(text))


@dataclass(frozen=True)
class FaultCode:
    """One entry of a point's fault map: register ``value`` → ``code``, ``severity``, ``text``."""

    value: int
    code: str
    severity: str
    text: str


def parse_faults(path: str, raw: Any, value_range: tuple[int, int]) -> tuple[FaultCode, ...]:
    """The fault map at ``path`` (a TOML table); ConfigError naming the key path and value on anything wrong.

    ``value_range`` is what the point's type can hold: a key outside it could never match.
    """
    if not isinstance(raw, dict):
        raise ConfigError(path, raw, "must be a table of register value = { code, text, severity }")
    if not raw:
        raise ConfigError(path, raw, "must map at least one register value to a fault")
    if len(raw) > MAX_FAULTS:
        raise ConfigError(path, f"{len(raw)} entries", f"must have at most {MAX_FAULTS} entries")
    low, high = value_range
    out = []
    for key, entry in raw.items():
        where = f"{path}.{key}"
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ConfigError(where, key, "must be a register value: a non-negative integer without sign or "
                                          "leading zeros, e.g. 4")
        value = int(key)
        if not low <= value <= high:
            raise ConfigError(where, value, f"is outside what the point's type holds ({low}..{high})")
        if not isinstance(entry, dict):
            raise ConfigError(where, entry, 'must be a table { code = "E04", text = "over-voltage", '
                                            'severity = "critical" }')
        unknown = sorted(set(entry) - {"code", "text", "severity"})
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}", entry[unknown[0]], "is an unknown key; allowed: code, severity, text")
        code, text, severity = entry.get("code"), entry.get("text"), entry.get("severity", "warning")
        if not valid_code(code):
            raise ConfigError(f"{where}.code", code, "must be 1..16 characters of letters, digits, '_', '.', '-' "
                                                     "starting with a letter or digit")
        if not valid_text(text):
            raise ConfigError(f"{where}.text", text, "must be 1..80 printable characters without quotes, "
                                                     "backslashes, braces or surrounding spaces")
        if severity not in SEVERITIES:
            raise ConfigError(f"{where}.severity", severity, f"must be one of {', '.join(SEVERITIES)}")
        if any(f.code == code for f in out):
            raise ConfigError(f"{where}.code", code, "is used by two register values; codes must be unique")
        out.append(FaultCode(value=value, code=code, severity=severity, text=text))  # type: ignore[arg-type]
    return tuple(sorted(out, key=lambda f: f.value))


def active_fault(faults: tuple[FaultCode, ...], value: float | None, quality: str) -> FaultCode | None:
    """The fault a reading shows, or None (no code, not good, not an exact mapped value)."""
    if quality != "good" or value is None or value != value or value % 1 != 0:
        return None
    wanted = int(value)
    for fault in faults:
        if fault.value == wanted:
            return fault
    return None


def fault_block(fault: FaultCode, since_ms: int) -> Mapping[str, Any]:
    """The point state's ``fault`` object."""
    return {"code": fault.code, "text": fault.text, "severity": fault.severity, "since_ms": since_ms}
