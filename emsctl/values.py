"""Property values as the Pulumi engine encodes them, and their plain-Python form.

On the wire (and in the JSON a capture worker returns) a property value is JSON with two
special encodings, exactly those of the engine (`sdk/go/common/resource/properties.go`):

* a secret is ``{"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270", "value": v}``;
* an unknown (a value not known until the deployment runs) is the string
  ``"04da6b54-80e4-46f7-96ec-b56ff0331ba9"``.

In Python, :func:`decode` turns those into :class:`Secret` wrappers and the :data:`UNKNOWN`
sentinel, so a captured input says "this is secret" without losing the value's shape;
:func:`plain` strips the wrappers again. Numbers travel as floats on the wire (protobuf
``Struct``); :func:`decode` turns integral floats back into ``int`` because every number a
Kubernetes manifest holds is an integer (ports, replicas, modes, seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
ASSET_SIG = "c44067f5952c0a294b673a41bacd8c17"
ARCHIVE_SIG = "0def7320c3a5731c473e5ecbe6d01bc7"
RESOURCE_SIG = "5cf8f73096256a8f31e491e813e4eb8e"
OUTPUT_SIG = "d0e6a833031e9bbcd3f4e8bde6ca49a4"
UNKNOWN_STRING = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"


@dataclass(frozen=True)
class Secret:
    """A captured value the program marked secret (``Output.secret``, secret config, secret outputs)."""

    value: Any

    def __repr__(self) -> str:  # never print the value by accident
        return "Secret(****)"


class _Unknown:
    """The type of :data:`UNKNOWN`."""

    _instance: "_Unknown | None" = None

    def __new__(cls) -> "_Unknown":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()
"""A value that is not known until the deployment runs (only during a preview)."""


def _int_if_integral(value: float) -> int | float:
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def decode(wire: Any) -> Any:
    """Turn an engine-encoded JSON value into plain Python with :class:`Secret` and :data:`UNKNOWN`."""
    if isinstance(wire, bool) or wire is None:
        return wire
    if isinstance(wire, float):
        return _int_if_integral(wire)
    if isinstance(wire, str):
        return UNKNOWN if wire == UNKNOWN_STRING else wire
    if isinstance(wire, list):
        return [decode(item) for item in wire]
    if isinstance(wire, dict):
        if wire.get(SIG_KEY) == SECRET_SIG:
            return Secret(decode(wire.get("value")))
        # plain objects, and assets/archives/resource references (kept as the engine sent them)
        return {k: decode(v) for k, v in wire.items()}
    return wire


def encode(value: Any) -> Any:
    """The inverse of :func:`decode`: JSON the engine (and a policy pack) understands."""
    if isinstance(value, Secret):
        return {SIG_KEY: SECRET_SIG, "value": encode(value.value)}
    if value is UNKNOWN:
        return UNKNOWN_STRING
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


def plain(value: Any) -> Any:
    """``value`` without :class:`Secret` wrappers (unknowns stay :data:`UNKNOWN`)."""
    if isinstance(value, Secret):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def contains_secret(value: Any) -> bool:
    """True if ``value`` holds a :class:`Secret` anywhere."""
    if isinstance(value, Secret):
        return True
    if isinstance(value, dict):
        return any(contains_secret(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_secret(v) for v in value)
    return False
