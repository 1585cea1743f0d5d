"""The digital-twin read API: latest asset state and a PromQL pass-through, over HTTPS.

    GET /v1/assets/<site>/<asset>   latest twin of one asset (from the retained ems/v1/<site>/twin/<asset>)
    GET /v1/assets/<site>           the site's assets with a twin
    GET /v1/query?query=…[&time=…]  PromQL instant query, passed through to the TSDB's /api/v1/query
    GET /healthz                    200 while subscribed to the twin topics, else 503

The state comes from the retained twin topics, subscribed with a clean session
(the broker sends every retained twin on subscribe, then each update). The
server is ``http.server.ThreadingHTTPServer`` behind stdlib ``ssl`` (TLS 1.2+);
with ``twin_api.client_ca`` set, clients must present a certificate signed by
it (mTLS). It sits behind the API gateway on 443 (DESIGN.md §4).
"""

from __future__ import annotations

import http.server
import json
import logging
import queue
import re
import signal
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ems_contract.telemetry import SCHEMA_VERSION, TOPIC_ROOT, TWIN_SUBSCRIPTION, valid_id
from ingest.config import IngestConfig
from ingest.mqtt import Incoming, MqttLink, TlsFiles

__all__ = ["TwinStore", "TwinApi", "TWIN_SUBSCRIPTION", "serve_forever"]

log = logging.getLogger(__name__)

_ASSET_PATH = re.compile(r"^/v1/assets/([^/]+)(?:/([^/]+))?$")


class TwinStore:
    """Latest twin document per (site, asset); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._twins: dict[tuple[str, str], dict[str, Any]] = {}
        self.rejected = 0

    def update(self, topic: str, payload: bytes) -> bool:
        """Apply one twin message; an empty payload (retained delete) removes the asset. False if invalid."""
        parts = topic.split("/")
        if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or parts[3] != "twin" \
                or not valid_id(parts[2]) or not valid_id(parts[4]):
            self.rejected += 1
            return False
        site, asset = parts[2], parts[4]
        if not payload:
            with self._lock:
                self._twins.pop((site, asset), None)
            return True
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            doc = None
        if not isinstance(doc, dict) or doc.get("v") != SCHEMA_VERSION or doc.get("site") != site \
                or doc.get("asset") != asset or not isinstance(doc.get("points"), dict):
            self.rejected += 1
            log.warning("ignored an invalid twin message on %s", topic)
            return False
        doc = {**doc, "received_ms": int(time.time() * 1000)}
        with self._lock:
            self._twins[(site, asset)] = doc
        return True

    def get(self, site: str, asset: str) -> dict[str, Any] | None:
        with self._lock:
            return self._twins.get((site, asset))

    def assets(self, site: str) -> list[str]:
        with self._lock:
            return sorted(a for s, a in self._twins if s == site)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"
    timeout = 30            # seconds per socket operation: a stalled client cannot hold a thread forever

    def setup(self) -> None:
        # the TLS handshake runs here, in the request's own thread, not in the accept loop
        self.request.settimeout(self.timeout)
        self.request.do_handshake()
        super().setup()

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/healthz":
            ok = self.server.api.link.connected
            return self._json(200 if ok else 503, {"status": "ok" if ok else "not subscribed"})
        if url.path == "/v1/query":
            return self._query(urllib.parse.parse_qs(url.query))
        match = _ASSET_PATH.match(url.path)
        if match:
            site, asset = match.groups()
            if not valid_id(site) or (asset is not None and not valid_id(asset)):
                return self._json(400, {"error": "site and asset must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}"})
            if asset is None:
                return self._json(200, {"site": site, "assets": self.server.api.store.assets(site)})
            twin = self.server.api.store.get(site, asset)
            if twin is None:
                return self._json(404, {"error": f"no twin for asset {asset!r} of site {site!r}"})
            return self._json(200, twin)
        return self._json(404, {"error": f"no route for {url.path}"})

    def do_POST(self) -> None:  # noqa: N802
        self._json(405, {"error": "read-only API: use GET"})

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _query(self, params: dict[str, list[str]]) -> None:
        if len(params.get("query", [])) != 1 or not params["query"][0].strip():
            return self._json(400, {"status": "error", "errorType": "bad_data", "error": "query: exactly one PromQL "
                                                                                         "expression is required"})
        forward = {"query": params["query"][0]}
        if params.get("time"):
            forward["time"] = params["time"][0]
        url = f"{self.server.api.query_url}/api/v1/query?{urllib.parse.urlencode(forward)}"
        try:
            with urllib.request.urlopen(url, timeout=self.server.api.query_timeout_s) as resp:
                return self._raw(resp.status, resp.read())
        except urllib.error.HTTPError as exc:           # Prometheus' own 400/422/503 with its JSON error
            return self._raw(exc.code, exc.read())
        except (urllib.error.URLError, OSError) as exc:
            return self._json(502, {"status": "error", "errorType": "unavailable", "error": f"TSDB: {exc}"})

    def _json(self, status: int, doc: dict[str, Any]) -> None:
        self._raw(status, json.dumps(doc, separators=(",", ":")).encode())

    def _raw(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    api: "TwinApi"

    def handle_error(self, request: object, client_address: object) -> None:
        log.info("request from %s failed (TLS handshake or connection)", client_address, exc_info=True)


class TwinApi:
    """The HTTPS server plus its twin subscriber; ``start()`` / ``stop()``, or use as a context manager."""

    def __init__(self, *, link: MqttLink, query_url: str, host: str, port: int, cert: Path, key: Path,
                 client_ca: Path | None = None, query_timeout_s: float = 10.0) -> None:
        self.link = link
        self.store = TwinStore()
        self.query_url = query_url.rstrip("/")
        self.query_timeout_s = query_timeout_s
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(cert), str(key))
        if client_ca is not None:
            context.load_verify_locations(str(client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
        self._server = _Server((host, port), _Handler, bind_and_activate=True)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True,
                                                   do_handshake_on_connect=False)
        self._server.api = self
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self.link.start()
        self._threads = [threading.Thread(target=self._consume, name="twin-consume", daemon=True),
                         threading.Thread(target=self._server.serve_forever, name="twin-http", daemon=True)]
        for thread in self._threads:
            thread.start()

    def _consume(self) -> None:
        while not self._stop.is_set():
            try:
                message: Incoming = self.link.incoming.get(timeout=0.2)
            except queue.Empty:
                continue
            self.store.update(message.topic, message.payload)

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self.link.stop()

    def __enter__(self) -> "TwinApi":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def build(config: IngestConfig) -> TwinApi:
    tw = config.twin_api
    assert tw is not None
    b = config.broker
    link = MqttLink(b.host, b.port, TlsFiles(b.ca, b.cert, b.key) if b.tls else None, tw.client_id, subscriptions=(TWIN_SUBSCRIPTION,),
                    manual_ack=False, persistent=False, keepalive_s=b.keepalive_s)
    return TwinApi(link=link, query_url=config.tsdb.query_url, host=tw.host, port=tw.port, cert=tw.cert, key=tw.key,
                   client_ca=tw.client_ca, query_timeout_s=config.tsdb.timeout_s)


def serve_forever(config: IngestConfig) -> int:
    """``ems-ingest twin-api``: serve until SIGTERM/SIGINT."""
    api = build(config)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    api.start()
    log.info("twin API on https://%s:%d (client certificates %s), TSDB %s", config.twin_api.host, api.port,
             "required" if config.twin_api.client_ca else "not required", config.tsdb.query_url)
    stop.wait()
    api.stop()
    return 0
