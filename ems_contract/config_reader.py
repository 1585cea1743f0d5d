"""Typed reads of a parsed TOML document whose errors name the key path and the value.

The ingest's and the north-bound client's config parsers read through ``Section``
(the edge agent's ``_Table`` adds typo hints and its own number rules)::

    root = Section("", raw, ConfigError, base)          # ConfigError(field, value, reason): the caller's own
    b = root.section("broker", required=True)
    port = b.int("port", 8883, 1, 65535)                # broker.port: must be an integer 1..65535 (got 0)
    b.done()                                            # broker.prot: is not a known setting (got 1)

Each accessor marks its key as read and returns the checked value, or the
default when the key is absent; ``done()`` refuses every key nobody read. File
paths are relative to ``base``; with ``check_files=False`` they need not exist
yet (a config rendered for a pod whose files are mounted later). Standard
library only.

Keys, table names and values reach the ``ErrorFactory`` as the file holds them
(a key may carry a line break, a value may be 10 MB): the factory's message must
escape and bound them, as every ``ConfigError`` does with
``config_file.message_parts`` (tests/ems_contract/test_config_messages.py).
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any, Callable

from ems_contract.config_file import MAX_URL_CHARS, HOST_RULE, url_problem, valid_host, valid_path_text

__all__ = ["MAX_TEXT_CHARS", "MAX_URL_CHARS", "PATH_RULE", "ErrorFactory", "Section"]

MAX_TEXT_CHARS = 1024      # any string setting
PATH_RULE = "must be a file path of 1..4096 printable characters"

ErrorFactory = Callable[[str, object, str], Exception]
"""``(field path, value, reason) -> the caller's ConfigError``; its message one bounded line (module docstring)."""


class Section:
    """One table of the document: ``name`` is its dotted path (``""`` for the root)."""

    def __init__(self, name: str, table: object, error: ErrorFactory, base: Path, check_files: bool = True) -> None:
        if not isinstance(table, dict):
            raise error(name, table, "must be a table")
        self.name, self.table, self.error, self.base = name, table, error, base
        self.check_files = check_files
        self.used: set[str] = set()

    def at(self, key: str) -> str:
        """The dotted path of ``key`` in this table, for error messages."""
        return f"{self.name}.{key}" if self.name else key

    def get(self, key: str, required: bool = False) -> Any:
        """The raw value of ``key`` (None when absent), marked as read."""
        self.used.add(key)
        if key not in self.table:
            if required:
                raise self.error(self.at(key), None, "is required")
            return None
        return self.table[key]

    def section(self, key: str, *, required: bool = False, empty: bool = False) -> "Section | None":
        """The table under ``key``; when absent: an error if ``required``, else an empty Section if ``empty``, else None."""
        self.used.add(key)
        if key not in self.table:
            if required:
                raise self.error(self.at(key), None, "section is required")
            return Section(self.at(key), {}, self.error, self.base, self.check_files) if empty else None
        return Section(self.at(key), self.table[key], self.error, self.base, self.check_files)

    def str(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.get(key, required)
        if value is None:
            return default  # type: ignore[return-value]
        if not isinstance(value, str) or not value or len(value) > MAX_TEXT_CHARS or not value.isprintable():
            raise self.error(self.at(key), value, f"must be a non-empty string of at most {MAX_TEXT_CHARS} "
                                                  f"printable characters")
        return value

    def host(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.get(key, required)
        if value is None:
            return default  # type: ignore[return-value]
        if not valid_host(value):
            raise self.error(self.at(key), value, HOST_RULE)
        return value

    def int(self, key: str, default: int | None, lo: int, hi: int) -> int:
        value = self.get(key)
        if value is None:
            return default  # type: ignore[return-value]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.error(self.at(key), value, f"must be an integer {lo}..{hi}")
        return value

    def float(self, key: str, default: float | None, lo: float, hi: float) -> float:
        value = self.get(key)
        if value is None:
            return default  # type: ignore[return-value]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise self.error(self.at(key), value, f"must be a number {lo}..{hi}")
        return float(value)

    def bool(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(self.at(key), value, "must be true or false")
        return value

    def dir(self, key: str) -> Path:
        """A required folder path (it need not exist: the caller creates it)."""
        value = self.get(key, True)
        if not valid_path_text(value):
            raise self.error(self.at(key), value, PATH_RULE)
        path = Path(value)
        return path if path.is_absolute() else self.base / path

    def path(self, key: str, *, required: bool = False, must_exist: bool = True) -> Path | None:
        """A file path; with ``must_exist`` (and ``check_files``) it must name an existing regular file."""
        value = self.get(key, required)
        if value is None:
            return None
        if not valid_path_text(value):
            raise self.error(self.at(key), value, PATH_RULE)
        path = Path(value)
        if not path.is_absolute():
            path = self.base / path
        if must_exist and self.check_files:
            try:
                regular = stat.S_ISREG(path.stat().st_mode)
            except OSError:       # missing, but also a name too long, a loop of links, a path through a file
                regular = False
            if not regular:
                raise self.error(self.at(key), value, "must be an existing file")
        return path

    def common_names(self, key: str, ca_key: str, *, required: bool = False) -> tuple[str, ...]:
        """1..16 distinct certificate CNs (1..64 printable characters, X.509's bound); they need ``ca_key`` set too."""
        value = self.get(key, required)
        if value is None:
            return ()
        rule = "must be a list of 1..16 distinct certificate CNs of 1..64 printable characters"
        if not isinstance(value, list) or not 1 <= len(value) <= 16 or len(set(map(repr, value))) != len(value):
            raise self.error(self.at(key), value, rule)
        for i, cn in enumerate(value):
            if not isinstance(cn, str) or not 1 <= len(cn) <= 64 or not cn.isprintable():
                raise self.error(f"{self.at(key)}[{i}]", cn, rule)
        if ca_key not in self.table:
            raise self.error(self.at(key), value, f"needs {self.at(ca_key)} (the CA that signs those certificates)")
        return tuple(value)

    def url(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        """An http:// or https:// URL with a host (``config_file.url_problem``)."""
        value = self.get(key, required)
        if value is None:
            return default  # type: ignore[return-value]
        problem = url_problem(value, ("http", "https"))
        if problem is not None:
            raise self.error(self.at(key), value, f"must be an http:// or https:// URL with a host{problem}")
        return value

    def done(self) -> None:
        """Refuse the first key (in sorted order) that no accessor read."""
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.error(self.at(unknown[0]), self.table[unknown[0]], "is not a known setting")
