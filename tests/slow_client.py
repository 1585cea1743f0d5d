"""A client that sends its request one byte at a time (slowloris), for the HTTPS listeners' request deadlines, and
a check that the server closed a connection."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Callable

__all__ = ["closed_by_server", "over_a_cap_of_one", "trickle"]


def trickle(sock: socket.socket, head: bytes, tail: bytes, every_s: float = 0.1) -> tuple[bool, float]:
    """Send ``head``, then ``tail`` one byte per ``every_s`` until the server closes the connection.

    Returns (closed by the server, seconds from the first trickled byte). Each read waits ``every_s``
    at most, so the whole call is bounded by ``len(tail)`` × ``every_s`` and a little.
    """
    sock.sendall(head)
    start = time.monotonic()
    for byte in tail:
        try:
            sock.sendall(bytes([byte]))
            sock.settimeout(every_s)
            if sock.recv(1) == b"":
                return True, time.monotonic() - start
        except TimeoutError:
            continue
        except (ConnectionError, ssl.SSLError):
            return True, time.monotonic() - start
    return False, time.monotonic() - start


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within ``within_s``; nothing is sent."""
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


def over_a_cap_of_one(port: int, refusals: Callable[[], float | None],
                      attempts: int = 3) -> tuple[bool, bool, float, int]:
    """Against a listener on 127.0.0.1 serving one connection at once: hold one without a TLS handshake, open a second.

    Returns (the second was closed at accept, the held one was closed by the server within 5 s, seconds it took,
    tries made). ``refusals`` reads the listener's count of connections closed at accept: the second counts as
    closed at accept when that count rose (within 5 s: the accept loop may be slow on a loaded machine) and the
    socket then reads EOF at once, not when it would have met its own request deadline.

    The held connection may itself be the one closed at accept, when the thread of a connection made just
    before (a readiness probe's) still holds the slot as it connects: the second is then served instead. That
    is the caller's timing, not the listener's fault: when the held connection reads EOF (closed at accept, or
    by a deadline before the second was refused) it is tried again, ``attempts`` times in all (AssertionError
    after that). Each try the held one was refused in counts one refusal: the listener's count is then
    ``tries``, not 1.
    """
    for tries in range(1, attempts + 1):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as held:
            if closed_by_server(held, 0.2):                  # refused at once: the slot was not free yet
                time.sleep(0.5)
                continue
            before = refusals() or 0
            with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
                deadline = time.monotonic() + 5.0
                while (refusals() or 0) == before and time.monotonic() < deadline:
                    time.sleep(0.02)
                refused = (refusals() or 0) > before and closed_by_server(extra, 0.5)
            if not refused and closed_by_server(held, 0.05):
                time.sleep(0.5)                              # refused late (a slow accept loop), or a deadline
                continue
            start = time.monotonic()
            expired = closed_by_server(held, 5.0)
            return refused, expired, time.monotonic() - start, tries
    raise AssertionError(f"in each of {attempts} tries the held connection was closed before the second one was "
                         "refused (at accept, or by a deadline within 5 s)")
