"""What an operator's config file may be: the limits both config loaders share.

``sensors.conf`` (edge agent) and ``ingest.toml`` (ingest, twin API) are read
through this module, so a hostile or broken file — a FIFO, ``/dev/zero``, a
directory, 10 MB of text, invalid UTF-8, arrays nested 5,000 deep, an integer
of 400 digits — becomes one ``ConfigFileError`` and never a hang, a memory
blow-up or a traceback. Each loader re-raises it as its own ``ConfigError``.

======================  =====================================================
limit                   rule
======================  =====================================================
file kind               a regular file (symlinks followed); FIFOs, devices,
                        sockets and directories are refused without blocking
size                    at most ``MAX_CONFIG_BYTES`` (1 MiB)
encoding                UTF-8
nesting                 arrays and inline tables at most ``MAX_NESTING`` (32)
                        deep; a dotted key or table header at most
                        ``MAX_NESTING`` parts; the parsed document at most
                        ``MAX_NESTING`` levels of tables and arrays
integers                64-bit signed (TOML 1.0 §Integer); larger ones are an
                        error naming the key
======================  =====================================================

``shorten(value)`` and ``one_line(text)`` keep error messages short and on one
line whatever the file holds (a 10 MB host name is quoted by its first 60
characters and its length); ``message_parts(field, value, reason)`` applies them
to the three parts of every config error, the same way for every ``ConfigError``
(edge, ingest, north-bound, emsctl, stack settings), and ``fix_suffix`` prints a
repair command whole or not at all. ``valid_host``, ``valid_path_text`` and
``url_problem`` are the string rules the loaders (and the stack settings) share.
Standard library only.
"""

from __future__ import annotations

import os
import re
import reprlib
import stat
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_CONFIG_BYTES", "MAX_NESTING", "MAX_PATH_CHARS", "MAX_HOST_CHARS", "INT64_MIN", "INT64_MAX",
    "HOST_RULE", "ConfigFileError", "read_config_text", "parse_toml", "shorten", "one_line", "message_parts",
    "fix_suffix", "FIELD_CHARS", "REASON_CHARS", "FIX_CHARS",
    "valid_host", "valid_path_text", "url_problem", "MAX_URL_CHARS",
]

MAX_CONFIG_BYTES = 1024 * 1024
MAX_NESTING = 32
MAX_PATH_CHARS = 4096          # PATH_MAX on Linux
MAX_HOST_CHARS = 253           # the longest DNS name
MAX_URL_CHARS = 2048           # what HTTP clients and servers reliably accept in a request line
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
HOST_RULE = "must be a host name or IP address (1..253 characters: letters, digits, '.', '-', '_', ':', '%')"
_VALUE_CHARS = 60              # how much of a bad value an error message quotes
_PATH_CHARS = 256              # ... and of a file path (os.PathLike values): they are long but not hostile
FIELD_CHARS = 160              # how much of a field path (keys come from the file) a message keeps
REASON_CHARS = 400             # ... and of what is wrong or allowed (it may quote allowed values or a library's text)
FIX_CHARS = 16384              # a repair command is printed whole, up to this, or not at all


class ConfigFileError(Exception):
    """A config file that cannot be read or is not acceptable TOML.

    ``field`` is where (``config file``, or ``<path>:<line>:<column>``, or the
    key path of a value), ``value`` the offending thing, ``reason`` what is
    wrong or allowed. The loaders re-raise it as their own ``ConfigError``.
    """

    def __init__(self, field: str, value: object, reason: str) -> None:
        shown_field, shown_value, shown_reason = message_parts(field, value, reason)
        super().__init__(f"{shown_field}: {shown_value} {shown_reason}")
        self.field = field
        self.value = value
        self.reason = reason


# -- reading ---------------------------------------------------------------------------------

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_config_text(path: str | os.PathLike[str], *, max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of the regular file ``path``, at most ``max_bytes`` long; else ConfigFileError.

    The file is opened non-blocking and checked with ``fstat`` before any
    read, so a FIFO without a writer cannot hang the caller; reads stop at
    ``max_bytes + 1`` whatever the file claims its size is (``/proc`` files).
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigFileError("config file", Path(name), f"cannot be read ({exc.strerror or exc})") from exc
    except ValueError as exc:     # an embedded NUL byte
        raise ConfigFileError("config file", Path(name), "is not a usable file path (it contains a NUL byte)") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((text for test, text in _KINDS if test(mode)), "not a regular file")
            raise ConfigFileError("config file", Path(name), f"is {kind}; a regular file is needed")
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigFileError("config file", Path(name), f"cannot be read ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
    if size > max_bytes:
        raise ConfigFileError("config file", Path(name), f"is larger than {max_bytes} bytes ({_size_text(max_bytes)}), "
                                                   f"the most a config file may be")
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigFileError("config file", Path(name), f"is not UTF-8 text (byte {exc.start}, line {line})") from exc


def _size_text(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n} bytes"


# -- parsing ---------------------------------------------------------------------------------

_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)|\(at end of document\)")


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """Parse TOML ``text`` (read from ``source``) within the limits above; ConfigFileError otherwise.

    Errors name ``<source>:<line>:<column>`` and quote the line (shortened).
    """
    if len(text) > MAX_CONFIG_BYTES:     # characters ≤ bytes: cheap first check before encoding
        raise ConfigFileError(source, f"{len(text)} characters", f"is more than a config file may hold "
                                                                 f"({_size_text(MAX_CONFIG_BYTES)})")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:    # a lone surrogate: only possible in text not read from a file
        raise ConfigFileError(_where(source, text, exc.start), _line_of(text, exc.start),
                              "is not valid Unicode text (a lone surrogate)") from None
    if size > MAX_CONFIG_BYTES:
        raise ConfigFileError(source, f"{size} bytes", f"is more than a config file may hold "
                                                       f"({_size_text(MAX_CONFIG_BYTES)})")
    _check_nesting(text, source)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _TOML_POSITION.search(message)
        reason = _TOML_POSITION.sub("", message).strip()
        if found and found.group(1):
            line, column = int(found.group(1)), int(found.group(2))
            raise ConfigFileError(f"{source}:{line}:{column}", _line_at(text, line), f"is not valid TOML: {reason}") from None
        raise ConfigFileError(source, "end of file", f"is not valid TOML: {reason}") from None
    except ValueError as exc:            # an integer beyond Python's 4,300-digit conversion limit
        raise ConfigFileError(source, "an integer", f"is not valid TOML: {one_line(str(exc), 80)} "
                                                    f"(integers must fit in 64 bits)") from None
    except RecursionError:               # the last guard, should the scan below and tomllib ever disagree
        raise ConfigFileError(source, "the document", f"nests deeper than {MAX_NESTING} levels") from None
    _check_values(raw)
    return raw


# Tokens that matter for nesting; everything else (values, whitespace) is skipped by the regex.
_TOKEN = re.compile(r'"""|\'\'\'|["\'#\[\]{},=.\n]')
_BASIC = re.compile(r'\\.|["\n]', re.S)
_MULTI_BASIC = re.compile(r'\\.|"""', re.S)
_LITERAL = re.compile(r"['\n]")


def _check_nesting(text: str, source: str) -> None:
    """Refuse what makes ``tomllib`` recurse or grow without bound, before it runs.

    tomllib recurses once per nested array or inline table, and its cost for
    one dotted key grows with the square of the key's parts (80,000 parts
    exhaust 24 GiB). This linear scan skips strings and comments and counts
    bracket depth and the parts of every key and table header. It is exact
    on valid TOML; on invalid TOML it may count anything, and tomllib reports
    the syntax error.
    """
    brackets: list[str] = []      # open '[' (array) and '{' (inline table) in value context
    in_key, in_header, parts = True, False, 1
    pos, n = 0, len(text)
    while pos < n:
        found = _TOKEN.search(text, pos)
        if found is None:
            return
        token, start, pos = found.group(), found.start(), found.end()
        if token == "#":
            end = text.find("\n", pos)
            pos = n if end < 0 else end
        elif token == '"':
            pos = _skip_basic(text, pos)
        elif token == '"""':
            pos = _skip_multiline(text, pos, _MULTI_BASIC, '"')
        elif token == "'":
            end = _LITERAL.search(text, pos)
            pos = n if end is None else end.end() if end.group() == "'" else end.start()
        elif token == "'''":
            end = text.find("'''", pos)
            pos = n if end < 0 else _after_quotes(text, end + 3, "'")
        elif token == "\n":
            if not brackets:
                in_key, in_header, parts = True, False, 1
        elif token == ".":
            if in_key:
                parts += 1
                if parts > MAX_NESTING:
                    raise ConfigFileError(_where(source, text, start), _line_of(text, start),
                                          f"has a key or table header of more than {MAX_NESTING} dotted parts")
        elif token == "[" and in_key and not brackets and not in_header:
            in_header, parts = True, 1
            if pos < n and text[pos] == "[":
                pos += 1
        elif token in "[{":
            brackets.append(token)
            if len(brackets) > MAX_NESTING:
                raise ConfigFileError(_where(source, text, start), _line_of(text, start),
                                      f"nests arrays and inline tables more than {MAX_NESTING} deep")
            in_key, parts = token == "{", 1
        elif token in "]}":
            if brackets:
                brackets.pop()
            elif in_header:
                in_header = False
            in_key = False
        elif token == ",":
            in_key, parts = bool(brackets) and brackets[-1] == "{", 1
        elif token == "=":
            in_key = False


def _skip_basic(text: str, pos: int) -> int:
    """Past the end of a one-line basic string that starts at ``pos`` (or at the newline that breaks it)."""
    while True:
        found = _BASIC.search(text, pos)
        if found is None:
            return len(text)
        pos = found.end()
        if found.group() == '"':
            return pos
        if found.group() == "\n":
            return pos - 1


def _skip_multiline(text: str, pos: int, pattern: re.Pattern[str], quote: str) -> int:
    while True:
        found = pattern.search(text, pos)
        if found is None:
            return len(text)
        pos = found.end()
        if found.group() == quote * 3:
            return _after_quotes(text, pos, quote)


def _after_quotes(text: str, pos: int, quote: str) -> int:
    """Skip up to two more quotes: TOML lets a multi-line string end in five (its last two are content)."""
    for _ in range(2):
        if pos < len(text) and text[pos] == quote:
            pos += 1
    return pos


def _line_at(text: str, line: int) -> "_Excerpt":
    index = 0
    for _ in range(line - 1):
        index = text.find("\n", index) + 1
        if index == 0:
            return _Excerpt("", 0)
    return _line_of(text, index)


def _where(source: str, text: str, index: int) -> str:
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return f"{source}:{line}:{column}"


def _line_of(text: str, index: int) -> "_Excerpt":
    start = text.rfind("\n", 0, index) + 1
    end = text.find("\n", index)
    end = len(text) if end < 0 else end
    # never copy more than a message can quote: the line may be the whole 1 MiB file
    return _Excerpt(text[start:min(end, start + _VALUE_CHARS)].strip(), end - start)


class _Excerpt:
    """The start of a line of the file, for a message: ``'a = [[[[…'… (line of 10004 characters)``."""

    def __init__(self, head: str, length: int) -> None:
        self.head, self.length = head, length

    def __repr__(self) -> str:
        return repr(self.head) if self.length <= _VALUE_CHARS else f"{self.head!r}… (line of {self.length} characters)"


_Chain = tuple | None    # (key or index, parent chain); None at the document's root


def _check_values(raw: dict[str, Any]) -> None:
    """Walk the parsed document without recursion: depth within MAX_NESTING, integers within int64."""
    # A path is a chain (key, parent) built into text only for an error: keys may be long, and
    # joining them for every value would copy a long key once per value below it.
    pending: list[tuple[Any, _Chain, int]] = [(raw, None, 0)]
    while pending:
        node, chain, depth = pending.pop()
        if isinstance(node, dict):
            children: list[tuple[Any, _Chain, int]] = [(v, (k, chain), depth + 1) for k, v in node.items()]
        elif isinstance(node, list):
            children = [(v, (i, chain), depth + 1) for i, v in enumerate(node)]
        else:
            if isinstance(node, int) and not isinstance(node, bool) and not INT64_MIN <= node <= INT64_MAX:
                raise ConfigFileError(_path_text(chain), node, "must be a 64-bit integer (-2**63..2**63-1), "
                                                               "as every TOML integer")
            continue
        if depth >= MAX_NESTING and children:
            raise ConfigFileError(_path_text(chain) or "the document", _Elided(node),
                                  f"nests tables and arrays more than {MAX_NESTING} levels deep")
        pending.extend(children)


def _path_text(chain: Any) -> str:
    """``devices[0].points[2].address`` from a (key, parent) chain; each key clipped for the message."""
    parts: list[str] = []
    while chain is not None:
        key, chain = chain
        parts.append(f"[{key}]" if isinstance(key, int) else ("." + one_line(key, 40)))
    return "".join(reversed(parts)).lstrip(".")


class _Elided:
    """Stands for a container too deep to print."""

    def __init__(self, node: object) -> None:
        self.kind = type(node).__name__

    def __repr__(self) -> str:
        return "<a table>" if self.kind == "dict" else "<an array>"


# -- messages --------------------------------------------------------------------------------

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 4, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = _VALUE_CHARS, _VALUE_CHARS, _VALUE_CHARS


def shorten(value: object, limit: int = _VALUE_CHARS) -> str:
    """``repr(value)`` for an error message: one line, about ``limit`` characters at most.

    A long string keeps its first ``limit`` characters and says how long it
    was (``'hhhh'… (10000000 characters)``); a file path (``os.PathLike``) is
    quoted as a string of up to 256 characters; a huge integer says how many
    digits it has; containers are elided by ``reprlib``.
    """
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        return shorten(path if isinstance(path, str) else os.fsdecode(path), max(limit, _PATH_CHARS))
    if isinstance(value, str):
        head = value[:limit]
        text = repr(head)
        while len(text) > 2 * limit + 2:   # escapes (\x00, \U000e0001) make a repr up to 10 times longer
            head = head[:len(head) // 2]
            text = repr(head)
        return text if head == value else f"{text}… ({len(value)} characters)"
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > 4000:   # about 1,200 digits: beyond this str() may refuse (4,300-digit limit)
            return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
        text = repr(value)
        return text if len(text) <= limit else f"{text[:limit]}… ({len(text.lstrip('-'))} digits)"
    if isinstance(value, bytes):
        return repr(value) if len(value) <= limit else f"{value[:limit]!r}… ({len(value)} bytes)"
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        try:
            return one_line(_REPR.repr(value), limit + 20)
        except (RecursionError, ValueError):   # a structure too deep, or a huge int inside it
            return f"<a {type(value).__name__} of {len(value)} items>"
    return one_line(repr(value), 2 * limit)     # floats, dates, None, and the excerpts of this module


def message_parts(field: object, value: object, reason: object) -> tuple[str, str, str]:
    """``(field, value, reason)`` as a config error shows them, each on one line and bounded: the field path and the
    reason escaped and clipped (``one_line``, to ``FIELD_CHARS`` and ``REASON_CHARS``), the value as ``shorten``'s repr."""
    return one_line(str(field), FIELD_CHARS), shorten(value), one_line(str(reason), REASON_CHARS)


def fix_suffix(fix: str | None) -> str:
    """``"; run: <fix>"`` for a repair command of one printable line and at most ``FIX_CHARS``; otherwise a note
    that it is withheld, never a part of it: a cut or escaped command could act on another file."""
    if not fix:
        return ""
    if len(fix) > FIX_CHARS:
        return f"; the repair command is not shown ({len(fix)} characters)"
    if not fix.isprintable():
        return "; the repair command is not shown (a file name in it holds a line break or a control character)"
    return f"; run: {fix}"


def one_line(text: str, limit: int) -> str:
    """``text`` without line breaks or control characters (escaped), clipped to ``limit`` characters and "…"."""
    clipped = len(text) > limit
    text = text[:limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                       for c in text)
        clipped = clipped or len(text) > limit
        text = text[:limit]
    return text + "…" if clipped else text


# -- string rules shared by the loaders -----------------------------------------------------------

_HOST = re.compile(rf"[A-Za-z0-9_.:%-]{{1,{MAX_HOST_CHARS}}}")


def valid_host(value: object) -> bool:
    """A DNS name or an IPv4/IPv6 literal (with an optional ``%zone``); Unicode names must be punycode."""
    return isinstance(value, str) and _HOST.fullmatch(value) is not None and not value.startswith("-")


def valid_path_text(value: object) -> bool:
    """A non-empty file path of at most ``MAX_PATH_CHARS`` printable characters (no NUL, no newline)."""
    return isinstance(value, str) and 0 < len(value) <= MAX_PATH_CHARS and value.strip() != "" and value.isprintable()


_URL_CHARS = re.compile(r"[\x21-\x7e]+")   # printable ASCII without space: a URL's characters, percent-encoded


def url_problem(value: object, schemes: tuple[str, ...] = ("https",), *, query: bool = True) -> str | None:
    """None when ``value`` is an absolute URL of one of ``schemes``; else what the caller appends to its own rule.

    The rule: a string of at most ``MAX_URL_CHARS`` printable ASCII characters without spaces (others
    percent-encoded), a scheme in ``schemes``, a host ``valid_host`` accepts, a port 1..65535 when it names
    one and, with ``query=False``, no query or fragment. The answer is ``""`` when the scheme, the host,
    the type or the query is wrong, else a detail: ``" of at most 2048 characters"``, ``", in printable ASCII
    without spaces (percent-encode others)"`` or ``" and a port 1..65535"`` — so a caller's message reads
    ``must be an https:// URL with a host and a port 1..65535``. Never raises.
    """
    if not isinstance(value, str):
        return ""
    if len(value) > MAX_URL_CHARS:
        return f" of at most {MAX_URL_CHARS} characters"
    if not _URL_CHARS.fullmatch(value):
        return ", in printable ASCII without spaces (percent-encode others)"
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:          # e.g. an unclosed IPv6 bracket
        return ""
    try:
        port = parts.port       # raises ValueError outside 0..65535
    except ValueError:
        port = 0
    if parts.scheme not in schemes or not valid_host(parts.hostname) or (not query and (parts.query or parts.fragment)):
        return ""
    if port == 0:
        return " and a port 1..65535"
    return None
