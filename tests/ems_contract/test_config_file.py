"""The shared config-file limits: special files, size, encoding, nesting, 64-bit integers, short messages.

The property tests use ``tomllib`` as the oracle: whatever text they generate,
``parse_toml`` returns exactly what tomllib returns when the document is within
the limits, and otherwise raises ``ConfigFileError`` — never anything else.
"""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ems_contract.config_file import (INT64_MAX, INT64_MIN, MAX_CONFIG_BYTES, MAX_NESTING, ConfigFileError, one_line,
                                      parse_toml, read_config_text, shorten, url_problem, valid_host,
                                      valid_path_text)

FAST = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MAX_MESSAGE = 400


def error(text: str) -> str:
    with pytest.raises(ConfigFileError) as caught:
        parse_toml(text, "x.toml")
    message = str(caught.value)
    assert "\n" not in message and len(message) < MAX_MESSAGE, message
    return message


# -- reading ---------------------------------------------------------------------------------

def test_a_regular_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('site = "sub-07"  # ü\n', encoding="utf-8")
    assert read_config_text(path) == 'site = "sub-07"  # ü\n'


@pytest.mark.timeout(20)
def test_a_fifo_without_a_writer_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigFileError) as caught:
        read_config_text(fifo)
    assert str(caught.value) == f"config file: '{fifo}' is a FIFO (named pipe); a regular file is needed"


@pytest.mark.parametrize("path, kind", [("/dev/zero", "a character device"), ("/dev/null", "a character device"),
                                        ("/", "a directory")])
def test_devices_and_directories_are_refused(path: str, kind: str) -> None:
    with pytest.raises(ConfigFileError, match=f"^config file: '{path}' is {kind}; a regular file is needed$"):
        read_config_text(path)


def test_a_symlink_to_a_device_is_refused(tmp_path: Path) -> None:
    (tmp_path / "link.toml").symlink_to("/dev/zero")
    with pytest.raises(ConfigFileError, match="is a character device; a regular file is needed$"):
        read_config_text(tmp_path / "link.toml")


def test_missing_file_and_a_path_through_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match=r"cannot be read \(No such file or directory\)$"):
        read_config_text(tmp_path / "nope.toml")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigFileError, match=r"cannot be read \(Not a directory\)$"):
        read_config_text(tmp_path / "file" / "x.toml")


def test_size_limit_is_exact_and_stated(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_bytes(b"#" * MAX_CONFIG_BYTES)
    assert len(read_config_text(path)) == MAX_CONFIG_BYTES
    path.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigFileError) as caught:
        read_config_text(path)
    assert str(caught.value) == (f"config file: '{path}' is larger than 1048576 bytes (1 MiB), "
                                 f"the most a config file may be")


def test_invalid_utf8_names_byte_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'site = "a"\nunit = "\xb0C"\n')
    with pytest.raises(ConfigFileError, match=r"is not UTF-8 text \(byte 19, line 2\)$"):
        read_config_text(path)


# -- nesting, numbers, size ------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "a = " + "[" * 5000 + "]" * 5000,                         # arrays 5,000 deep (tomllib: RecursionError)
    "a = " + "{a=" * 5000 + "1" + "}" * 5000,                 # inline tables 5,000 deep
    "a = [" + "{b=[" * 2000 + "]}" * 2000 + "]",              # both, interleaved
])
def test_deep_arrays_and_inline_tables_are_refused_before_tomllib_recurses(text: str) -> None:
    assert error(text).endswith(f"nests arrays and inline tables more than {MAX_NESTING} deep")


@pytest.mark.parametrize("text", [
    "a" + ".a" * 80_000 + " = 1",                             # tomllib needs > 24 GiB for this one
    "[" + "a." * 5000 + "a]\nx = 1",                          # a table header 5,000 deep
    "[[" + "a." * 5000 + "a]]\nx = 1",
    "t = {" + ".".join(["k"] * 40) + " = 1}",
])
def test_keys_with_too_many_dotted_parts_are_refused(text: str) -> None:
    assert error(text).endswith(f"has a key or table header of more than {MAX_NESTING} dotted parts")


@pytest.mark.parametrize("text, reason", [
    ("a = 1\n" + ".".join(["k"] * 40) + " = 1", "dotted parts"),           # keys start again on every line
    ("a = 1\n[" + ".".join(["k"] * 40) + "]", "dotted parts"),
    ("a = [\n1,\n2]\n" + ".".join(["k"] * 40) + " = 1", "dotted parts"),   # ... once a multi-line array closed
    ("t = {a = '''x'''', b = " + "[" * 40 + "]" * 40 + "}", "more than 32 deep"),   # '''x'''' is "x'"
    ('t = {a = """x"""", b = ' + "[" * 40 + "]" * 40 + "}", "more than 32 deep"),     # """x"""" is 'x"'
    ('t = {a = """x\\"""", b = ' + "[" * 40 + "]" * 40 + "}", "more than 32 deep"),
    ("t = {a = 1, " + ".".join(["k"] * 40) + " = 1}", "dotted parts"),     # every key of an inline table
    ("t = {a = 'x\\', b = " + "[" * 40 + "]" * 40 + "}", "more than 32 deep"),     # no escapes in literal strings
])
def test_the_scan_follows_toml_lines_and_strings(text: str, reason: str) -> None:
    tomllib.loads(text.replace("[" * 40, "[" * 4).replace("]" * 40, "]" * 4))   # the same shape is valid TOML
    assert error(text).endswith(reason)


def test_the_nesting_limit_is_exact() -> None:
    assert parse_toml("a = " + "[" * MAX_NESTING + "]" * MAX_NESTING, "x.toml")["a"] is not None
    assert error("a = " + "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1)).endswith("more than 32 deep")
    assert parse_toml(".".join(["a"] * MAX_NESTING) + " = 1", "x.toml")
    assert error(".".join(["a"] * (MAX_NESTING + 1)) + " = 1").endswith("more than 32 dotted parts")


def test_depth_built_from_headers_dotted_keys_and_inline_tables_is_bounded_too() -> None:
    text = f"[{'.'.join(['a'] * 20)}]\n{'.'.join(['b'] * 10)} = {{c = {{d = [1]}}}}\n"
    message = error(text)
    assert message == ("a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.b.b.b.b.b.b.b.b.b.b.c.d: <an array> nests tables and arrays "
                       "more than 32 levels deep")


def test_brackets_dots_and_quotes_inside_strings_and_comments_do_not_count() -> None:
    text = ('a = "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ \\" {{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{"\n'
            "b = '{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{'\n"
            'c = """\n[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"""\n"""""\n'
            "d = '''[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[''''' # [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n"
            '"q.q.q.q.q.q.q.q.q.q.q.q.q.q.q.q.q.q.q.q.q.q.q.q.q.q.q.q.q.q.q.q.q.q" = 1.5\n'
            "e = [" + ", ".join(["1.5"] * 100) + "]\n")
    assert parse_toml(text, "x.toml") == tomllib.loads(text)


def test_integers_must_fit_in_64_bits_and_the_message_names_the_key() -> None:
    assert parse_toml(f"a = {INT64_MAX}\nb = {INT64_MIN}", "x.toml") == {"a": INT64_MAX, "b": INT64_MIN}
    message = error("[broker]\nport = 1" + "0" * 400)
    assert message == ("broker.port: 100000000000000000000000000000000000000000000000000000000000… (401 digits) "
                       "must be a 64-bit integer (-2**63..2**63-1), as every TOML integer")
    assert error(f"[[d]]\n[[d]]\nx = [1, {INT64_MAX + 1}]").startswith("d[1].x[1]: 9223372036854775808 must be")
    assert error(f"a = {INT64_MIN - 1}").startswith("a: -9223372036854775809 must be a 64-bit integer")


def test_an_integer_beyond_pythons_digit_limit_is_a_config_error() -> None:
    assert "is not valid TOML" in error("a = 1" + "0" * 5000)


def test_too_much_text_and_lone_surrogates_are_refused() -> None:
    assert error("#" * (MAX_CONFIG_BYTES + 1)).endswith("is more than a config file may hold (1 MiB)")
    assert error("#" + "é" * (MAX_CONFIG_BYTES // 2)).endswith("is more than a config file may hold (1 MiB)")
    assert error('a = "\ud800"').endswith("is not valid Unicode text (a lone surrogate)")


def test_syntax_errors_name_line_and_column_and_quote_the_line_shortened() -> None:
    assert error("a = 1\nb = x\n") == "x.toml:2:5: 'b = x' is not valid TOML: Invalid value"
    assert error('a = 1\nb = "x') == "x.toml: 'end of file' is not valid TOML: Unterminated string"
    message = error("a = 1\nb = " + "x" * 900_000)
    assert message == "x.toml:2:5: 'b = " + "x" * 56 + "'… (line of 900004 characters) is not valid TOML: Invalid value"


# -- messages --------------------------------------------------------------------------------

def test_shorten_bounds_every_kind_of_value() -> None:
    assert shorten("h" * 10_000_000) == repr("h" * 60) + "… (10000000 characters)"
    assert shorten("short") == "'short'"
    assert shorten("\x00" * 10_000_000) == repr("\x00" * 30) + "… (10000000 characters)"
    assert len(shorten("\U000e0001" * 1000)) < 150
    assert shorten(10 ** 5000) == "<an integer of about 5001 digits>"
    assert shorten(-10 ** 100).endswith("… (101 digits)")
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert len(shorten(deep)) < 100
    assert len(shorten({str(i): "x" * 1000 for i in range(1000)})) < 100
    assert shorten(b"\x00" * 1000).endswith("… (1000 bytes)")
    assert shorten(Path("/a") / ("b" * 100)) == repr("/a/" + "b" * 100)
    assert shorten(Path("/" + "b" * 5000)).endswith("… (5001 characters)")
    assert shorten(math.inf) == "inf"


def test_one_line_escapes_line_breaks_and_control_characters() -> None:
    assert one_line("a\nb\x1b[31m\u202e", 100) == "a\\nb\\x1b[31m\\u202e"
    assert one_line("x" * 500, 10) == "x" * 10 + "…"
    assert one_line("\x01" * 500, 10) == "\\x01\\x01\\x" + "…"      # ten characters, escapes included


def test_host_and_path_rules() -> None:
    for good in ("127.0.0.1", "mqtt.ems.svc", "::1", "fe80::1%eth0", "0.0.0.0", "a" * 253, "my_host-1"):
        assert valid_host(good), good
    for bad in ("", "a" * 254, "-x", "a b", "h\n", "ü.example", "a/b", 5, None):
        assert not valid_host(bad), bad
    assert valid_path_text("/etc/ems/tls/ca.crt") and valid_path_text("x" * 4096)
    for bad in ("", " ", "x" * 4097, "a\x00b", "a\nb", 1):
        assert not valid_path_text(bad), bad


# -- properties ------------------------------------------------------------------------------

def _key(text: str) -> str:
    return _string(text)


def _string(text: str) -> str:
    """A TOML basic string for any text without surrogates."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"


def _depth(v: object) -> int:
    """Containers nested in ``v``, empty ones included (each is one bracket pair inline)."""
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=0)
    return 0


def _parent_depth(v: object, depth: int = 0) -> int:
    """The deepest level (the document is level 0) of a table or array that holds something."""
    items = list(v.values()) if isinstance(v, dict) else v if isinstance(v, list) else []
    return max([depth] + [_parent_depth(x, depth + 1) for x in items]) if items else -1


def _ints(v: object) -> list[int]:
    if isinstance(v, dict):
        return [i for x in v.values() for i in _ints(x)]
    if isinstance(v, list):
        return [i for x in v for i in _ints(x)]
    return [v] if isinstance(v, int) and not isinstance(v, bool) else []


def _as_tables(table: dict, path: list[str], out: list[str], stats: dict[str, int]) -> None:
    """Write ``table`` with ``[a.b]`` headers and ``[[a.b]]`` arrays of tables, recording header parts and bracket depth."""
    def header(key: str, double: bool) -> str:
        stats["parts"] = max(stats["parts"], len(path) + 1)
        name = ".".join(_key(p) for p in [*path, key])
        return f"[[{name}]]" if double else f"[{name}]"

    def aot(v: object) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    for key, v in table.items():
        if not isinstance(v, dict) and not aot(v):
            out.append(f"{_key(key)} = {_value(v)}")
            stats["brackets"] = max(stats["brackets"], _depth(v))
    for key, v in table.items():
        if isinstance(v, dict):
            out.append(header(key, False))
            _as_tables(v, [*path, key], out, stats)
        elif aot(v):
            for item in v:  # type: ignore[union-attr]
                out.append(header(key, True))
                _as_tables(item, [*path, key], out, stats)


_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_scalars = (st.integers(min_value=-(2 ** 70), max_value=2 ** 70) | st.floats(allow_nan=False) | st.booleans()
            | _text | st.integers(min_value=-(10 ** 450), max_value=10 ** 450))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
                       max_leaves=40)


@FAST
@given(document=st.dictionaries(_text, _values, max_size=4), wrap=st.integers(min_value=0, max_value=45),
       as_array=st.booleans(), as_tables=st.booleans())
def test_generated_documents_round_trip_or_fail_with_a_short_config_error(
        document: dict, wrap: int, as_array: bool, as_tables: bool) -> None:
    value: object = document
    for _ in range(wrap):                             # push the document down to reach and cross the limits
        value = [value] if as_array else {"n": value}
    root = {"root": value}
    stats = {"parts": 0, "brackets": 0}
    if as_tables:
        lines: list[str] = []
        _as_tables(root, [], lines, stats)
        text = "\n".join(lines) + "\n"
    else:
        text = f"root = {_value(value)}\n"
        stats["brackets"] = _depth(value)
    within = (stats["parts"] <= MAX_NESTING and stats["brackets"] <= MAX_NESTING
              and _parent_depth(root) < MAX_NESTING and all(INT64_MIN <= i <= INT64_MAX for i in _ints(root)))
    event("within the limits" if within else "beyond a limit")
    try:
        parsed = parse_toml(text, "gen.toml")
    except ConfigFileError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) < MAX_MESSAGE, message
        assert not within, (message, text[:300])
        return
    assert within, text[:300]
    assert parsed == root


_toml_alphabet = st.sampled_from(list("[]{}.,=\"'#\n \\abc019-+_:eEinf") + ['"""', "'''", "\u00e9", "\t", "\r\n"]
                                 + ["\na = ", "\nb.c = ", '\n"q.r" = ', "\n[t]\n", "\n[[u.v]]\n", "1", '"s"', "'l'",
                                    "1.5", "[1, 2]", "{x = 1}", ", ", "# c\n"])


@FAST
@given(pieces=st.lists(_toml_alphabet, max_size=200))
def test_random_token_soup_gives_a_document_or_a_short_config_error_and_nothing_else(pieces: list[str]) -> None:
    try:
        parse_toml("".join(pieces), "soup.toml")
    except ConfigFileError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) < MAX_MESSAGE, message


_bare = st.sampled_from(["a", "b", "k1", "x-y", '"q.r"', "'l.m'", '"[{"'])
_dotted = st.lists(_bare, min_size=1, max_size=4).map(".".join)
_value_soup = st.lists(st.sampled_from(["[", "]", "{", "}", ", ", "1", "2.5", '"s#["', "'l{'", '"""m\n"]"""',
                                        "'''n]'''", "true", "x = ", "y.z = ", " "]), min_size=1, max_size=14).map("".join)
_lines = st.one_of(_dotted.map(lambda k: f"[{k}]"), _dotted.map(lambda k: f"[[{k}]]"),
                   st.tuples(_dotted, _value_soup).map(lambda kv: f"{kv[0]} = {kv[1]}"),
                   st.just("# [[[{{{ ..."), st.just(""))


@FAST
@given(lines=st.lists(_lines, max_size=12))
def test_the_nesting_scan_never_refuses_a_valid_document_within_the_limits(lines: list[str]) -> None:
    text = "\n".join(lines)
    try:
        expected = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        event("invalid TOML")
        return
    within = sum(text.count(c) for c in "[{") <= MAX_NESTING and text.count(".") < MAX_NESTING
    event(f"valid TOML {'within' if within else 'maybe beyond'} the limits")
    if within:
        assert parse_toml(text, "valid.toml") == expected


@FAST
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_from_a_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bytes.toml"
    path.write_bytes(data)
    try:
        parse_toml(read_config_text(path), str(path))
    except ConfigFileError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) < MAX_MESSAGE, message


@pytest.mark.parametrize(("value", "schemes", "query", "problem"), [
    ("https://idp.example/realms/ems", ("https",), True, None),
    ("http://tsdb:9090/api/v1/write?x=1", ("http", "https"), True, None),
    ("https://[::1]:8443/dcap", ("https",), False, None),
    ("http://idp.example/jwks", ("https",), True, ""),                  # scheme
    ("https:///path-only", ("https",), True, ""),                       # no host
    ("https://[::1", ("https",), True, ""),                             # urlsplit raises: an answer, not a crash
    ("https://a.example/x?q=1", ("https",), False, ""),                 # a query where none may be
    ("https://a.example/#frag", ("https",), False, ""),
    (b"https://a.example", ("https",), True, ""),                      # not a string
    ("https://a.example:99999/", ("https",), True, " and a port 1..65535"),
    ("https://a.example:0/", ("https",), True, " and a port 1..65535"),
    ("https://a.example/a b", ("https",), True, ", in printable ASCII without spaces (percent-encode others)"),
    ("https://bücher.example/", ("https",), True, ", in printable ASCII without spaces (percent-encode others)"),
    ("https://a.example/" + "x" * 2048, ("https",), True, " of at most 2048 characters"),
])
def test_url_problem(value: object, schemes: tuple[str, ...], query: bool, problem: str | None) -> None:
    assert url_problem(value, schemes, query=query) == problem
