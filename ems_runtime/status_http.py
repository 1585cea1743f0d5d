"""A process's status endpoint: Prometheus metrics at ``/metrics`` and health at ``/healthz``.

A stdlib ``ThreadingHTTPServer`` on its own daemon thread: scrapes must work
even when the process's loop is stuck — which is exactly what ``/healthz`` reports.
``health()`` returns ``(ok, details)``; ``/healthz`` answers 200 with
``{"status": "ok", **details}`` when ok, else 503 with ``"unhealthy"``. ``/metrics``
negotiates the exposition format (OpenMetrics when asked). A port that cannot be
bound raises ``OSError`` from ``start()``, or, given ``config_error``, that error
naming ``port_field`` (default ``http.port``), the port and the host.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from ems_runtime import ErrorFactory

__all__ = ["StatusEndpoint", "HealthFn"]

log = logging.getLogger(__name__)

HealthFn = Callable[[], "tuple[bool, dict[str, Any]]"]


class StatusEndpoint:
    """Serve ``registry`` and ``health`` on ``host:port`` (port 0 = any free port; see ``.port``)."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: HealthFn, *,
                 config_error: ErrorFactory | None = None, port_field: str = "http.port") -> None:
        self.host = host
        self.requested_port = port
        self.registry = registry
        self.health = health
        self.config_error = config_error
        self.port_field = port_field
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    def start(self) -> None:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (stdlib name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
                    body, status = encoder(endpoint.registry), 200
                elif path == "/healthz":
                    ok, details = endpoint.health()
                    body = json.dumps({"status": "ok" if ok else "unhealthy", **details}).encode()
                    status, ctype = (200 if ok else 503), "application/json"
                else:
                    body, status, ctype = b"not found: try /metrics or /healthz\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("http %s", fmt % args)

        try:
            self._server = ThreadingHTTPServer((self.host, self.requested_port), Handler)
        except OSError as exc:
            if self.config_error is None:
                raise
            raise self.config_error(self.port_field, self.requested_port,
                                    f"cannot be bound on {self.host} ({exc.strerror or exc})") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
