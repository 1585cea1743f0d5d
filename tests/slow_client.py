"""A client that sends its request one byte at a time (slowloris), for the HTTPS listeners' request deadlines."""

from __future__ import annotations

import socket
import ssl
import time

__all__ = ["trickle"]


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
