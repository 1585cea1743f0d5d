"""The worker's HTTP endpoint: Prometheus metrics at ``/metrics``, liveness at ``/healthz``.

A stdlib ``ThreadingHTTPServer`` on its own daemon thread, so a scrape or a probe is
answered even while the worker loop is stuck — which is what ``/healthz`` reports:
``health()`` returns ``(alive, why)``; 200 when alive, else 503 and Kubernetes restarts
the pod (the broker then redelivers what the worker held unacknowledged).
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["MetricsAndHealth"]

log = logging.getLogger(__name__)


class MetricsAndHealth:
    """Serve ``registry`` and ``health`` on ``host:port`` (0 = a free port; see ``.port``). Binds in the constructor."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 health: Callable[[], tuple[bool, str]]) -> None:
        endpoint = self
        self.registry, self.health = registry, health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    ok, why = endpoint.health()
                    body, status, ctype = (json.dumps({"status": "ok" if ok else "unhealthy", "detail": why}).encode(),
                                           200 if ok else 503, "application/json")
                elif path == "/metrics":
                    encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
                    body, status = encoder(endpoint.registry), 200
                else:
                    body, status, ctype = b"not found: try /metrics or /healthz\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("http %s", fmt % args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> "MetricsAndHealth":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
