"""``ems_runtime.log_setup.configure_logging``: JSON lines unless a person reads a terminal."""

from __future__ import annotations

import io
import json
import logging
import re
from typing import Iterator

import pytest

from ems_runtime.log_setup import configure_logging


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_pipe_gets_one_json_object_a_record_with_the_traceback() -> None:
    out = io.StringIO()
    configure_logging("info", out)
    log = logging.getLogger("ems.test")
    log.debug("below the level")
    log.info("site %s: %d readings, ünïcode kept", "sub-07", 3)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert set(first) == {"ts", "level", "logger", "msg"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"]), first["ts"]
    assert (first["level"], first["logger"], first["msg"]) == ("info", "ems.test", "site sub-07: 3 readings, ünïcode kept")
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


def test_a_terminal_gets_readable_lines() -> None:
    out = _Terminal()
    configure_logging("warning", out)
    logging.getLogger("ems.test").info("hidden")
    logging.getLogger("ems.test").warning("disk %d%% full", 91)
    assert re.fullmatch(r"\d\d:\d\d:\d\d WARNING ems.test: disk 91% full\n", out.getvalue()), out.getvalue()
