"""A CLI's ``main()`` run in-process by one test leaves the root logger as it found it for the next.

``main()`` configures logging for the process (``ems_runtime.log_setup``), on the test's captured stderr,
which pytest closes when the test ends. Left in place, that handler made every later INFO record of the
worker — a north-bound or simulator thread starting in ``tests/gateway/test_operator_commands.py`` —
print "--- Logging error --- ValueError: I/O operation on closed file". ``tests/conftest.py`` restores
the root logger after each test. Each test here stands alone: the second runs the two-test sequence in a
pytest of its own, with this suite's conftest, so it does not depend on the order or the worker.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge_agent.cli import main

pytest_plugins = ["pytester"]

_CONFTEST = Path(__file__).with_name("conftest.py")
_SEQUENCE = '''
import logging
import threading

from edge_agent.cli import main

BEFORE = {}


def test_first_runs_a_cli_in_process(tmp_path, capsys):
    root = logging.getLogger()
    BEFORE.update(handlers=root.handlers[:], level=root.level)
    assert main(["--log-level", "info", "audit", "verify", "--path", str(tmp_path / "missing.log")]) == 2
    assert root.handlers != BEFORE["handlers"]


def test_next_logs_from_a_thread_without_a_logging_error(capsys):
    root = logging.getLogger()
    assert (root.handlers, root.level) == (BEFORE["handlers"], BEFORE["level"])
    assert not [h for h in root.handlers if getattr(getattr(h, "stream", None), "closed", False)]
    root.setLevel(logging.INFO)
    thread = threading.Thread(target=logging.getLogger("northbound.service").info, args=("service starting",))
    thread.start()
    thread.join()
    assert "Logging error" not in capsys.readouterr().err
'''


def test_a_cli_run_in_process_configures_the_root_logger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers = root.handlers[:]
    assert main(["--log-level", "info", "audit", "verify", "--path", str(tmp_path / "missing.log")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert root.level == logging.INFO and root.handlers != handlers           # what main() does, in-process


def test_the_next_test_logs_from_a_thread_without_a_logging_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(_CONFTEST.read_text())
    pytester.makepyfile(test_sequence=_SEQUENCE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "-q", timeout=120)
    assert "Logging error" not in result.stderr.str() + result.stdout.str()
    result.assert_outcomes(passed=2)
