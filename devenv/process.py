"""One local process (broker, TSDB, agent, ingest worker) for the demo, tests and benchmarks.

Its stdout and stderr go to ``output_path``; it runs in its own session so a
signal reaches only it. ``terminate`` is SIGTERM with a deadline, then SIGKILL;
``kill`` is SIGKILL at once — a real crash, for fault tests.

``wait_until(ready, timeout, what, proc)`` is every launcher's start-and-wait loop:
it polls ``ready`` (``port_open``, ``http_ok``) until it says yes, and fails as soon
as the process exits or the time is up, naming what it waited for.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable, Sequence, TypeVar

__all__ = ["ManagedProcess", "http_ok", "port_open", "wait_until"]

T = TypeVar("T")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts a TCP connection on ``host:port`` now (refused raises OSError)."""
    socket.create_connection((host, port), timeout=0.5).close()
    return True


def http_ok(url: str) -> bool:
    """Whether ``GET url`` answers 200 now (refused, timeouts and error statuses raise OSError)."""
    with urllib.request.urlopen(url, timeout=1.0) as resp:  # nosec B310 # the launchers' http://127.0.0.1 URLs
        return resp.status == 200


def wait_until(ready: Callable[[], T], timeout: float, what: str, proc: subprocess.Popen | None = None,
               interval: float = 0.05) -> T:
    """Poll ``ready()`` (an OSError counts as "not yet") every ``interval`` s until its answer is truthy; return it.

    Raises RuntimeError when ``proc`` exits first (``process exited with code N before <what>``) and
    TimeoutError after ``timeout`` seconds (``not <what> after Ns``); ``ready`` is asked at least once.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before {what}")
        try:
            answer = ready()
            if answer:
                return answer
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"not {what} after {timeout:.0f}s")
        time.sleep(interval)


class ManagedProcess:
    """Base of the launchers in ``devenv``; subclasses build the command line and call ``spawn``."""

    def __init__(self, output_path: str | os.PathLike[str]) -> None:
        self.output_path = Path(output_path)
        self.proc: subprocess.Popen | None = None

    def spawn(self, args: Sequence[str], *, cwd: str | os.PathLike[str] | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.output_path, "ab") as out:
            self.proc = subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                         start_new_session=True)
        return self.proc

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            self.proc.send_signal(sig)  # type: ignore[union-attr]

    def terminate(self, timeout: float = 20.0, *, kill: bool = False) -> int | None:
        """SIGTERM (SIGKILL with ``kill``), wait up to ``timeout``, then SIGKILL; the exit code (None: never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL now: no flush, no clean-up — a crash."""
        return self.terminate(kill=True)

    def tail(self, chars: int = 3000) -> str:
        """The last ``chars`` characters of the process's output."""
        return self.output_path.read_text(errors="replace")[-chars:] if self.output_path.exists() else ""
