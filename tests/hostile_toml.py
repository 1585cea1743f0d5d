"""Test support: write any Python value as TOML, and hypothesis strategies for hostile config values.

``toml_value`` writes inline TOML (strings escaped, floats as ``nan``/``inf``
where needed, dates as TOML dates), so a generated document is valid TOML
whatever it holds — the loaders, not the TOML syntax, are what is tested.
``mutations`` draws edits of a valid config document: a value replaced by a
hostile one, a key added or removed.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
from typing import Any

from hypothesis import strategies as st

__all__ = ["toml_string", "toml_value", "toml_document", "hostile_values", "mutate", "MAX_MESSAGE"]

#: Longest one-line error message a property test accepts (the 10 MB cases are held to 300 in the CLI tests).
MAX_MESSAGE = 600


def toml_string(text: str) -> str:
    """A TOML basic string holding ``text`` (any text without lone surrogates)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    assert isinstance(v, dict), type(v)
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_document(doc: dict[str, Any]) -> str:
    """One ``key = <inline value>`` line per top-level key."""
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in doc.items())


_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
_strings = st.one_of(
    _text,
    st.sampled_from(["", " ", "\x00", "a\nb", "\u202eevil", "'\"\\`", "../../etc/passwd", "/dev/zero", "127.0.0.1",
                     "::1", "sub-07", "SENSOR_01", "float32", "holding", "coil", "tcp", "transformer", "load",
                     "http://t:9090/api/v1/write", "http://t:99999/", "http://[::1/", "ftp://x/", "http:// x/"]),
    st.integers(min_value=200, max_value=5000).map(lambda n: "h" * n),
)
_numbers = st.one_of(
    st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1),
    st.sampled_from([0, 1, -1, 65535, 65536, 2 ** 53 + 1, 2 ** 63 - 1, -(2 ** 63), 10 ** 400, -(10 ** 400), 2 ** 63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, float("nan"), float("inf")]),
)
_scalars = st.one_of(_strings, _numbers, st.booleans(), st.datetimes(), st.dates(), st.times())
hostile_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3), max_leaves=12,
) | st.integers(min_value=30, max_value=40).map(lambda n: _nested(n))


def _nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


def _positions(node: Any, path: tuple = ()) -> list[tuple]:
    """Every path to a table, array or value in ``node`` (the root is ``()``)."""
    out = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _positions(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _positions(value, (*path, i))
    return out


def mutate(data: st.DataObject, base: dict[str, Any], *, edits: int = 3) -> dict[str, Any]:
    """A copy of ``base`` with up to ``edits`` random edits: replace a value, add a key, delete a key or item."""
    doc = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(min_value=1, max_value=edits), label="edits")):
        path = data.draw(st.sampled_from(_positions(doc)), label="at")
        parent: Any = doc
        for step in path[:-1]:
            parent = parent[step]
        target = parent[path[-1]] if path else doc
        action = data.draw(st.sampled_from(["replace", "add", "delete"]), label="action")
        if action == "replace" and path:
            parent[path[-1]] = data.draw(hostile_values, label="value")
        elif action == "add" and isinstance(target, dict):
            key = data.draw(st.sampled_from(["port", "host", "extra", "address", "gain", "points", "n"]) | _text,
                            label="key")
            target[key] = data.draw(hostile_values, label="value")
        elif action == "add" and isinstance(target, list):
            target.append(data.draw(hostile_values, label="item"))
        elif action == "delete" and path:
            del parent[path[-1]]
    return doc
