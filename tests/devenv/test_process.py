"""``devenv.process.wait_until``: the launchers' start-and-wait loop ends on ready, on exit or on time."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from devenv.process import port_open, wait_until


def test_returns_once_ready_treating_os_errors_as_not_yet() -> None:
    answers = iter([OSError("refused"), False, True])

    def ready() -> bool:
        answer = next(answers)
        if isinstance(answer, OSError):
            raise answer
        return answer

    wait_until(ready, 5, "ready", interval=0.01)
    assert next(answers, "drained") == "drained"


def test_returns_the_first_truthy_answer_and_asks_once_even_when_time_is_up() -> None:
    answers = iter([[], None, [{"alert": "x"}]])
    assert wait_until(lambda: next(answers), 5, "an alert", interval=0.01) == [{"alert": "x"}]
    asked = []
    assert wait_until(lambda: asked.append(1) or "now", -1.0, "at once") == "now" and asked == [1]


def test_a_process_that_exits_first_is_named_with_its_code() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait(10)
    with pytest.raises(RuntimeError, match=r"^process exited with code 3 before listening on 127\.0\.0\.1:1$"):
        wait_until(lambda: port_open(1), 5, "listening on 127.0.0.1:1", proc)


def test_time_is_up_after_the_timeout() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))             # bound, not listening: connections are refused
        port = closed.getsockname()[1]
        with pytest.raises(TimeoutError, match=rf"^not listening on {port} after 0s$"):
            wait_until(lambda: port_open(port), 0.2, f"listening on {port}")
        closed.listen()
        wait_until(lambda: port_open(port), 2, f"listening on {port}")
