"""Every config error is one bounded line, whatever key path, value, reason or repair command it is built from.

The errors of every config boundary — the edge agent's, the ingest's and the north-bound's ``ConfigError``
(``ems_contract.config_reader.Section`` raises them through its ``ErrorFactory``), emsctl's, ``ConfigFileError``,
the stack settings' ``SettingsError`` and the components' ``ComponentArgsError`` — get keys, values and file names
from hostile files. Their messages must stay printable (no line break, no terminal escape) and bounded in length.
A repair command (``fix``) is printed whole or not at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.k8s_common import ComponentArgsError
from components.settings import SettingsError
from edge_agent.errors import ConfigError as EdgeConfigError
from ems_contract.config_file import FIX_CHARS, ConfigFileError
from ems_contract.config_reader import Section
from emsctl.errors import ConfigError as EmsctlConfigError
from ingest.errors import ConfigError as IngestConfigError
from northbound.errors import ConfigError as NorthboundConfigError

PROPERTY = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
MAX_MESSAGE = 1500
"""Field path (160) and component (160), value (at most a few hundred), reason (400) and the words around them."""

ERRORS = {
    "edge": EdgeConfigError, "ingest": IngestConfigError, "northbound": NorthboundConfigError,
    "emsctl": EmsctlConfigError, "config file": ConfigFileError, "stack settings": SettingsError,
    "component": lambda field, value, reason: ComponentArgsError(field, field, value, reason),
}
FACTORIES = {name: ERRORS[name] for name in ("edge", "ingest", "northbound")}

# Any character, surrogates and controls included; and strings long enough to matter (up to 300,000 characters).
anything = st.text(alphabet=st.characters(blacklist_categories=()), max_size=80)
huge = st.builds(lambda head, c, n: head + c * n, anything, st.characters(blacklist_categories=()),
                 st.integers(0, 300_000))
texts = anything | huge
values = st.recursive(
    texts | st.binary(max_size=2000) | st.integers() | st.floats() | st.booleans() | st.none()
    | st.builds(Path, texts.filter(lambda t: "\x00" not in t)),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(anything, inner, max_size=8), max_leaves=40)


def _one_bounded_line(message: str, limit: int = MAX_MESSAGE) -> None:
    assert message.isprintable(), f"not one printable line: {message[:200]!r}"
    assert len(message) <= limit, f"{len(message)} characters: {message[:200]!r}…"


@PROPERTY
@given(kind=st.sampled_from(sorted(ERRORS)), field=texts, value=values, reason=texts)
def test_any_field_value_and_reason_give_one_bounded_line(kind: str, field: str, value: object, reason: str) -> None:
    _one_bounded_line(str(ERRORS[kind](field, value, reason)))


@PROPERTY
@given(kind=st.sampled_from(sorted(FACTORIES)), name=texts, key=texts, value=values)
def test_section_errors_from_any_key_and_value_are_one_bounded_line(kind: str, name: str, key: str,
                                                                    value: object) -> None:
    """A hostile table name, key and value through ``Section``: an unknown key, and the key read as each type."""
    error = FACTORIES[kind]
    readers = [lambda s: s.done(), lambda s: s.int(key, None, 1, 10), lambda s: s.float(key, None, 1.0, 2.0),
               lambda s: s.str(key), lambda s: s.host(key), lambda s: s.url(key), lambda s: s.bool(key, False),
               lambda s: s.path(key), lambda s: s.common_names(key, "ca"), lambda s: s.section(key)]
    for read in readers:
        try:
            read(Section(name, {key: value}, error, Path("."), check_files=False))
        except error as exc:     # noqa: PERF203 - each reader is a case of its own
            _one_bounded_line(str(exc))


@PROPERTY
@given(fix=texts)
def test_a_repair_command_is_printed_whole_or_not_at_all(fix: str) -> None:
    message = str(EdgeConfigError("broker.key", Path("/etc/ems/key.pem"), "is accessible to others", fix=fix))
    _one_bounded_line(message, MAX_MESSAGE + FIX_CHARS)
    if fix and fix.isprintable() and len(fix) <= FIX_CHARS:
        assert message.endswith(f"; run: {fix}")
    elif fix:
        assert "; run:" not in message and "the repair command is not shown" in message


@pytest.mark.parametrize(("fix", "note"), [
    ("chmod 600 '/etc/ems/a\nb.key'", "(a file name in it holds a line break or a control character)"),
    ("chmod 600 '/etc/ems/\x1b[2Jkey'", "(a file name in it holds a line break or a control character)"),
    ("chmod 600 " + "k" * 20_000, "(20010 characters)"),
])
def test_a_repair_command_that_cannot_be_printed_whole_is_withheld_and_says_why(fix: str, note: str) -> None:
    assert str(EdgeConfigError("broker.key", "/etc/ems/key.pem", "is mode 0644", fix=fix)) == (
        f"broker.key: '/etc/ems/key.pem' is mode 0644; the repair command is not shown {note}")


def test_values_keys_and_reasons_are_shown_the_same_way_by_every_config_error() -> None:
    """The same clipping for all: a 160-character field path, a value quoted by 60 characters and its length, the
    reason clipped at 400, each with its line breaks escaped."""
    field, value, reason = "a\n" + "k" * 500, "v\n" + "x" * 10_000, "must be\n" + "r" * 1000
    shown_field, shown_reason = ("a\\n" + "k" * 157 + "…"), ("must be\\n" + "r" * 391 + "…")
    shown_value = repr("v\n" + "x" * 58) + "… (10002 characters)"
    assert str(IngestConfigError(field, value, reason)) == f"{shown_field}: {shown_reason} (got {shown_value})"
    assert str(NorthboundConfigError(field, value, reason)) == f"{shown_field} {shown_reason} (got {shown_value})"
    assert str(EdgeConfigError(field, value, reason)) == f"{shown_field}: {shown_value} {shown_reason}"
    assert str(EmsctlConfigError(field, value, reason)) == f"{shown_field}: {shown_value} {shown_reason}"
    assert str(ConfigFileError(field, value, reason)) == f"{shown_field}: {shown_value} {shown_reason}"
    assert str(ComponentArgsError("api", field, value, reason)) == f"api: {shown_field} {shown_reason} (got {shown_value})"
    assert str(SettingsError(field, "ok", reason)) == f"ems:{shown_field}: ok {shown_reason}"
