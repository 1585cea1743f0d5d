"""Limits of an EMS HTTP(S) listener: connections served at once, and how long one request may take to arrive.

``BoundedHTTPServer(address, handler, max_connections, name=..., logger=..., refusals=...)`` is a
``ThreadingHTTPServer`` (daemon threads) that serves at most ``max_connections`` connections at
once. A connection beyond the cap is closed at accept, before its TLS handshake (the client sees the
connection closed), and counted in ``refused`` and in ``refusals`` (a Prometheus counter, when given: the
service's ``refused_connections`` counter, see ``refused_connections_counter``). Refusals are logged as one warning when they begin
and then at most one line per ``REFUSAL_LOG_EVERY_S`` with the count since the last line, never one
line per connection. ``slots`` is the semaphore of the cap.

``DeadlineRequestHandler`` is a ``BaseHTTPRequestHandler`` whose request — line, headers and body —
must arrive within ``request_timeout_s`` of its first byte, however slowly a client trickles it
(slowloris); past that the connection is closed (``handle_one_request`` treats it as a timeout).
``timeout`` still bounds each socket operation: the wait for a request on a kept-alive connection
and every write of the answer.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter

__all__ = ["BoundedHTTPServer", "CONNECTIONS_RANGE", "DeadlineRequestHandler", "REFUSAL_LOG_EVERY_S",
           "REQUEST_TIMEOUT_RANGE_S", "refused_connections_counter"]

log = logging.getLogger(__name__)

REFUSAL_LOG_EVERY_S = 10.0
CONNECTIONS_RANGE = (1, 4096)
"""What a service's ``max_connections`` setting may be: each connection served is a thread."""
REQUEST_TIMEOUT_RANGE_S = (1.0, 300.0)
"""What a service's ``request_timeout_s`` setting may be."""


def refused_connections_counter(registry: CollectorRegistry, subsystem: str) -> Counter:
    """``ems_<subsystem>_refused_connections_total`` in ``registry``: connections a listener closed at accept."""
    return Counter("refused_connections", "Connections closed at accept because the listener was serving its cap of "
                   "connections at once.", namespace="ems", subsystem=subsystem, registry=registry)


class BoundedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server with a cap on the connections served at once (module docstring)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int, *,
                 name: str, logger: logging.Logger | None = None, refusals: Counter | None = None) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1 (got {max_connections})")
        self.max_connections = max_connections
        self.slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0
        self.refusals = refusals
        self.name = name
        self.log = logger or log
        self._reported = 0
        self._next_report = 0.0
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self._refused(client_address)       # counted before the client can see the close
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def _refused(self, client_address: Any) -> None:
        # Runs in the accept loop only: no lock needed.
        self.refused += 1
        if self.refusals is not None:
            self.refusals.inc()
        now = time.monotonic()
        if now < self._next_report:
            return
        self.log.warning("%s: %d connections closed at accept since the last report, the latest from %s: %d are "
                         "served at once (the cap)", self.name, self.refused - self._reported, client_address[0],
                         self.max_connections)
        self._reported = self.refused
        self._next_report = now + REFUSAL_LOG_EVERY_S


class DeadlineRequestHandler(BaseHTTPRequestHandler):
    """A request handler whose request must arrive within ``request_timeout_s`` of its first byte (module docstring)."""

    request_timeout_s: float = 10.0
    _request_deadline: float | None = None

    def setup(self) -> None:
        super().setup()
        self.rfile.close()                      # the socket's own reader: replaced, not used
        self.rfile = io.BufferedReader(_DeadlineReader(self), self.rbufsize if self.rbufsize > 0 else io.DEFAULT_BUFFER_SIZE)

    def handle_one_request(self) -> None:
        self._request_deadline = None           # starts with the next request's first byte
        super().handle_one_request()


class _DeadlineReader(io.RawIOBase):
    """The handler's socket as a raw stream; each read waits no longer than the request's deadline allows."""

    def __init__(self, handler: DeadlineRequestHandler) -> None:
        self._handler = handler
        self._socket = handler.connection

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        handler = self._handler
        deadline = handler._request_deadline
        if deadline is None:
            read = self._socket.recv_into(buffer)       # waiting for a request: the per-operation timeout
            if read:
                handler._request_deadline = time.monotonic() + handler.request_timeout_s
            return read
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the request did not arrive within {handler.request_timeout_s:g} s")
        self._socket.settimeout(min(remaining, handler.timeout) if handler.timeout else remaining)
        try:
            return self._socket.recv_into(buffer)
        finally:
            self._socket.settimeout(handler.timeout)
