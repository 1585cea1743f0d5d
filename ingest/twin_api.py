"""The digital-twin read API: latest asset state and a PromQL pass-through, over HTTPS.

    GET /v1/assets/<site>/<asset>   latest twin of one asset (from the retained ems/v1/<site>/twin/<asset>)
    GET /v1/assets/<site>           the site's assets with a twin
    GET /v1/sites                   the sites with at least one twin
    GET /v1/query?query=…[&time=…]  PromQL instant query, passed through to the TSDB's /api/v1/query (an answer larger
                                    than ``max_query_answer_bytes`` is not relayed: 502 ``too_large``)
    GET /v1/authz                   the gateway's auth_request verifier (``ingest/gateway_auth.py``): 200 with the
                                    identity headers, 401 or 403; 404 when the API has no verifier configured
    GET /v1/whoami                  the identity the gateway forwarded (``X-Ems-User``, ``X-Ems-Role``, ``X-Ems-Auth``)
    GET /healthz                    200 while subscribed and the twin consumer is alive and current, else 503
    GET /, /ui/…, /v1/alerts, /v1/query_range   the operator page and what it reads (``ingest.operator_page``)
    GET /livez                      200 while the consumer and MQTT threads live (the liveness probe: a
                                    broker outage, which a restart cannot cure, does not fail it)

The state comes from the retained twin topics, subscribed with a clean session
(the broker sends every retained twin on subscribe, then each update). The
server is ``http.server.ThreadingHTTPServer`` behind stdlib ``ssl`` (TLS 1.2+).
It sits behind the API gateway on 443 (DESIGN.md §4), which sets the trusted
identity headers (``X-Ems-Role``…); with ``twin_api.client_ca`` set, every path
but the probes' ``/healthz`` and ``/livez`` answers 403 unless the caller presented
a certificate signed by it and, with ``twin_api.client_cns``, one of those CNs (the
gateway's own client certificate), so an in-cluster client that goes around the
gateway cannot forge those headers. The handshake asks for a certificate without
requiring one, so the kubelet's HTTPS probes, which have none, still get an answer.

The server certificate rotates without a restart: every ``cert_check_s`` the
certificate, key (and client CA) files are checked (``ems_runtime.server_tls``);
when their content changed and loads as a matching pair, a new TLS context is
built and every handshake from then on uses it (the listening socket's SNI
callback, called for every ClientHello with or without SNI, hands the connection
the current context); connections already open keep theirs. A pair that does
not load (half written, key of another certificate) is logged once and the
loaded certificate stays in use.

Twins are hostile input (any site may publish its own, retained): a twin is parsed
with bounded size (``MAX_TWIN_BYTES``), depth and value count, its strings must be
valid Unicode and its shape that of ``encode_twin``; a site keeps at most
``MAX_ASSETS_PER_SITE`` twins. A bad twin is counted and ignored, never raised: the
consumer thread survives any message, and ``/healthz`` fails (so Kubernetes restarts
the pod) if that thread ever stops or stalls. At most ``max_connections`` connections
(``[twin_api] max_connections``, 64) are served at once; further connections are closed at
accept (counted in ``ems_twin_api_refused_connections_total``, logged at most once per 10 s:
``ems_runtime.http_server``). A TLS handshake must be done, and a request's line and headers
arrive, within ``request_timeout_s`` (``[twin_api] request_timeout_s``, 30) of their first
byte, however slowly a client sends them.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from ems_contract.telemetry import (MAX_INT64, SCHEMA_VERSION, TOPIC_ROOT, TWIN_SUBSCRIPTION, SchemaError, check_tree,
                                    parse_json, shown, valid_id)
from ems_runtime.cert_expiry import register_certificates
from ems_runtime.http_server import BoundedHTTPServer, DeadlineRequestHandler, refused_connections_counter
from ems_runtime.server_tls import ServerTls, handshake
from ems_runtime.status_http import StatusEndpoint
from ingest import operator_page
from ingest.config import IngestConfig, TwinApiConfig
from ingest.gateway_auth import AuthRequest, AuthSettings, Verifier
from ingest.mqtt import Incoming, MqttLink, TlsFiles
from ingest.twin_metrics import TwinCollector

__all__ = ["TwinStore", "TwinApi", "TWIN_SUBSCRIPTION", "serve_forever"]

log = logging.getLogger(__name__)

_ASSET_PATH = re.compile(r"^/v1/assets/([^/]+)(?:/([^/]+))?$")

MAX_TWIN_BYTES = 64 * 1024
MAX_TWIN_DEPTH = 5            # {points: {point: {value, ...}}} is 3; the thermal block 2
MAX_TWIN_VALUES = 4096
MAX_ASSETS_PER_SITE = 256
MAX_CONNECTIONS = TwinApiConfig.max_connections
REQUEST_TIMEOUT_S = TwinApiConfig.request_timeout_s


class TwinStore:
    """Latest twin document per (site, asset), bounded per site; thread-safe.

    ``rejected`` counts invalid twins by reason (``bad_topic``, ``oversized``, ``too_deep``,
    ``not_json``, ``bad_shape``, ``too_many_assets``, …).
    """

    def __init__(self, max_assets_per_site: int = MAX_ASSETS_PER_SITE) -> None:
        self._lock = threading.Lock()
        self._twins: dict[tuple[str, str], dict[str, Any]] = {}
        self._per_site: dict[str, int] = {}
        self.max_assets_per_site = max_assets_per_site
        self.rejected: dict[str, int] = {}

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def update(self, topic: str, payload: bytes) -> bool:
        """Apply one twin message; an empty payload (retained delete) removes the asset. False if invalid."""
        parts = topic.split("/")
        if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or parts[3] != "twin" \
                or not valid_id(parts[2]) or not valid_id(parts[4]):
            return self._reject("bad_topic", topic)
        site, asset = parts[2], parts[4]
        if not payload:
            with self._lock:
                if self._twins.pop((site, asset), None) is not None:
                    self._per_site[site] -= 1
            return True
        if len(payload) > MAX_TWIN_BYTES:
            return self._reject("oversized", topic, f"{len(payload)} bytes; the limit is {MAX_TWIN_BYTES}")
        try:
            doc = parse_json(payload)
            check_tree(doc, max_depth=MAX_TWIN_DEPTH, max_nodes=MAX_TWIN_VALUES)
            _check_twin(doc, site, asset)
        except SchemaError as exc:
            return self._reject(exc.reason, topic, exc.detail)
        doc = {**doc, "received_ms": int(time.time() * 1000)}
        with self._lock:
            known = (site, asset) in self._twins
            if not known and self._per_site.get(site, 0) >= self.max_assets_per_site:
                too_many = True
            else:
                too_many = False
                self._twins[(site, asset)] = doc
                if not known:
                    self._per_site[site] = self._per_site.get(site, 0) + 1
        if too_many:
            return self._reject("too_many_assets", topic, f"site {site} has {self.max_assets_per_site} twins already")
        return True

    def _reject(self, reason: str, topic: str, detail: str = "") -> bool:
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
        log.warning("ignored a twin message on %s: %s %s", shown(topic), reason, detail)
        return False

    def get(self, site: str, asset: str) -> dict[str, Any] | None:
        with self._lock:
            return self._twins.get((site, asset))

    def documents(self) -> list[dict[str, Any]]:
        """Every twin held (the documents themselves: callers only read them)."""
        with self._lock:
            return list(self._twins.values())

    def assets(self, site: str) -> list[str]:
        with self._lock:
            return sorted(a for s, a in self._twins if s == site)

    def sites(self) -> list[str]:
        with self._lock:
            return sorted(self._per_site)


def _check_twin(doc: Any, site: str, asset: str) -> None:
    """The shape ``encode_twin`` writes; raises SchemaError ``bad_shape`` naming the field."""
    def bad(field: str, value: object) -> SchemaError:
        return SchemaError("bad_shape", f"{field} {shown(value)} is not what a twin holds")

    if not isinstance(doc, dict):
        raise bad("document", doc)
    if type(doc.get("v")) is not int or doc["v"] != SCHEMA_VERSION:
        raise bad("v", doc.get("v"))
    if doc.get("site") != site or doc.get("asset") != asset:
        raise bad("site/asset", (doc.get("site"), doc.get("asset")))
    ts_ms = doc.get("ts_ms")
    if type(ts_ms) is not int or not 0 <= ts_ms <= MAX_INT64:
        raise bad("ts_ms", ts_ms)
    points = doc.get("points")
    if not isinstance(points, dict):
        raise bad("points", points)
    for name, point in points.items():
        if not valid_id(name) or not isinstance(point, dict):
            raise bad(f"points.{shown(name)}", point)
        value = point.get("value")
        if value is not None and (type(value) not in (int, float) or not -1e308 < value < 1e308):
            raise bad(f"points.{name}.value", value)
    if "thermal" in doc and not isinstance(doc["thermal"], dict):
        raise bad("thermal", doc["thermal"])


class _Handler(DeadlineRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"
    timeout = 30            # seconds per socket operation: the wait for a request, each write

    @property
    def request_timeout_s(self) -> float:  # type: ignore[override]
        return self.server.api.request_timeout_s

    def setup(self) -> None:
        # the TLS handshake runs here, in the request's own thread, not in the accept loop
        handshake(self.request, self.request_timeout_s)
        super().setup()

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        url = urllib.parse.urlsplit(self.path)
        if url.path in ("/healthz", "/livez"):
            ok, why = self.server.api.health(need_broker=url.path == "/healthz")
            return self._json(200 if ok else 503, {"status": why})
        if not self._caller_allowed(url.path):
            return None
        if url.path == "/v1/query":
            return self._query(urllib.parse.parse_qs(url.query))
        if url.path == "/v1/query_range":
            return self._query_range(urllib.parse.parse_qs(url.query))
        if url.path == "/v1/sites":
            return self._json(200, {"sites": self.server.api.store.sites()})
        if url.path == "/v1/alerts":
            return self._alerts()
        if url.path in self.server.api.static:
            body, kind = self.server.api.static[url.path]
            return self._raw(200, body, kind)
        if url.path == "/v1/authz" and self.server.api.verifier is not None:
            return self._authz()
        if url.path == "/v1/whoami":
            return self._json(200, {"user": self.headers.get("X-Ems-User", ""), "role": self.headers.get("X-Ems-Role", ""),
                                    "auth": self.headers.get("X-Ems-Auth", "")})
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
        if self._caller_allowed(urllib.parse.urlsplit(self.path).path):
            self._json(405, {"error": "read-only API: use GET"})

    def _caller_allowed(self, path: str) -> bool:
        """True when the caller may be served; otherwise answers 403 (no or a wrong client certificate) and logs it."""
        refusal = self.server.api.tls.refusal(self.request.getpeercert())
        if refusal is None:
            return True
        log.warning("refused %s %s from %s: %s", self.command, shown(path), self.client_address[0], refusal)
        self._json(403, {"error": refusal})
        return False

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _query(self, params: dict[str, list[str]]) -> None:
        if len(params.get("query", [])) != 1 or not params["query"][0].strip():
            return self._json(400, {"status": "error", "errorType": "bad_data", "error": "query: exactly one PromQL "
                                                                                         "expression is required"})
        forward = {"query": params["query"][0]}
        if params.get("time"):
            forward["time"] = params["time"][0]
        self._forward(f"{self.server.api.query_url}/api/v1/query?{urllib.parse.urlencode(forward)}")

    def _query_range(self, params: dict[str, list[str]]) -> None:
        try:
            forward = operator_page.range_query_params(params)
        except operator_page.PageError as exc:
            return self._json(400, {"status": "error", "errorType": "bad_data", "error": str(exc)})
        self._forward(f"{self.server.api.query_url}/api/v1/query_range?{urllib.parse.urlencode(forward)}")

    def _alerts(self) -> None:
        api = self.server.api
        try:
            return self._json(200, operator_page.firing_alerts(api.alertmanager_url, api.query_timeout_s))
        except (OSError, ValueError, RecursionError) as exc:    # urllib: OSError; a bad answer: ValueError, too deep: RecursionError
            log.warning("alerts from %s unavailable: %s", api.alertmanager_url, exc)
            return self._json(502, operator_page.alert_error(exc))

    def _forward(self, url: str) -> None:
        limit = self.server.api.max_query_answer_bytes
        try:
            with urllib.request.urlopen(url, timeout=self.server.api.query_timeout_s) as resp:  # nosec B310 # query_url: http(s) only, checked by the config parser
                status, body = resp.status, resp.read(limit + 1)
        except urllib.error.HTTPError as exc:           # Prometheus' own 400/422/503 with its JSON error
            status, body = exc.code, exc.read(limit + 1)
        except (urllib.error.URLError, OSError) as exc:
            return self._json(502, {"status": "error", "errorType": "unavailable", "error": f"TSDB: {exc}"})
        if len(body) > limit:       # read no further: the rest is dropped with the connection
            log.warning("TSDB answer to %s larger than %d bytes: not relayed", url[:200], limit)
            return self._json(502, {"status": "error", "errorType": "too_large",
                                    "error": f"the TSDB's answer is larger than {limit} bytes; narrow the query "
                                             "(fewer series, a shorter range or a longer step)"})
        return self._raw(status, body)

    def _authz(self) -> None:
        decision = self.server.api.verifier.decide(AuthRequest.from_headers(self.headers))  # type: ignore[union-attr]
        if decision.status == 200:
            return self._raw(200, b"", headers={"X-Ems-User": decision.user, "X-Ems-Role": decision.role,
                                                "X-Ems-Auth": decision.method})
        challenge = {"WWW-Authenticate": 'Bearer realm="ems"'} if decision.status == 401 else {}
        return self._json(decision.status, {"error": decision.reason}, challenge)

    def _json(self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._raw(status, json.dumps(doc, separators=(",", ":")).encode(), headers=headers)

    def _raw(self, status: int, body: bytes, content_type: str = "application/json",
             headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        for name, value in operator_page.SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)


class _Server(BoundedHTTPServer):
    """The twin API's server: at most ``max_connections`` connections at once (``ems_runtime.http_server``)."""

    api: "TwinApi"

    def handle_error(self, request: object, client_address: object) -> None:
        # A failed TLS handshake or a dropped connection is routine on an exposed port: one line, no traceback.
        exc = sys.exc_info()[1]
        log.debug("request from %s failed: %s: %s", client_address, type(exc).__name__, exc)


class TwinApi:
    """The HTTPS server plus its twin subscriber; ``start()`` / ``stop()``, or use as a context manager.

    ``max_connections`` (``MAX_CONNECTIONS``) are served at once, further connections are closed at accept and
    counted in ``ems_twin_api_refused_connections_total`` (in ``registry``); ``request_timeout_s``
    (``REQUEST_TIMEOUT_S``) bounds a TLS handshake and the arrival of a request from its first byte (module docstring).
    """

    def __init__(self, *, link: MqttLink, query_url: str, host: str, port: int, cert: Path, key: Path,
                 client_ca: Path | None = None, client_cns: tuple[str, ...] = (), query_timeout_s: float = 10.0,
                 max_connections: int = MAX_CONNECTIONS, request_timeout_s: float = REQUEST_TIMEOUT_S,
                 stall_after_s: float = 30.0, alertmanager_url: str | None = None, auth: AuthSettings | None = None,
                 registry: CollectorRegistry | None = None, cert_check_s: float = 5.0,
                 max_query_answer_bytes: int = 8 * 1024 * 1024) -> None:
        self.link = link
        self.max_query_answer_bytes = max_query_answer_bytes
        self.registry = registry or CollectorRegistry()
        self.verifier = Verifier(auth, self.registry) if auth is not None else None
        self.store = TwinStore()
        self.max_connections = max_connections
        self.request_timeout_s = request_timeout_s
        self.stall_after_s = stall_after_s
        self._beat = time.monotonic()
        self.query_url = query_url.rstrip("/")
        self.query_timeout_s = query_timeout_s
        self.alertmanager_url = alertmanager_url
        self.static = operator_page.static_files()
        # Asked for, not required, in the handshake: the probes have none; every other path refuses (tls.refusal()).
        self.tls = ServerTls(Path(cert), Path(key), client_ca, client_cns, logger=log)
        self.cert_check_s = cert_check_s
        self._server = _Server((host, port), _Handler, max_connections, name="twin api", logger=log,
                               refusals=refused_connections_counter(self.registry, "twin_api"))
        self.tls.install(self._server)
        self._server.api = self
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def certificate_switches(self) -> int:
        return self.tls.certificate_switches

    def start(self) -> None:
        self.link.start()
        self._threads = [threading.Thread(target=self._consume, name="twin-consume", daemon=True),
                         threading.Thread(target=self._server.serve_forever, name="twin-http", daemon=True)]
        if self.cert_check_s > 0:
            self._threads.append(threading.Thread(target=self.tls.watch, args=(self._stop, self.cert_check_s),
                                                  name="twin-tls-watch", daemon=True))
        for thread in self._threads:
            thread.start()

    def health(self, need_broker: bool = True) -> tuple[bool, str]:
        """(ok, why): the consumer thread alive and beating, paho's thread alive, and (``need_broker``) subscribed."""
        if not self._threads or not self._threads[0].is_alive():
            return False, "twin consumer not running"
        if time.monotonic() - self._beat > self.stall_after_s:
            return False, "twin consumer stalled"
        if not self.link.network_alive:
            return False, "MQTT network thread not running"
        if need_broker and not self.link.connected:
            return False, "not subscribed"
        return True, "ok"

    def _consume(self) -> None:
        while not self._stop.is_set():
            self._beat = time.monotonic()
            try:
                message: Incoming = self.link.incoming.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.store.update(message.topic, message.payload)
            except Exception:  # noqa: BLE001 - no twin may stop the consumer; update() validates, this is the backstop
                log.exception("twin message on %s could not be applied; ignored", shown(message.topic))

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
                    manual_ack=False, persistent=False, keepalive_s=b.keepalive_s, cert_check_s=b.cert_check_s)
    return TwinApi(link=link, query_url=config.tsdb.query_url, host=tw.host, port=tw.port, cert=tw.cert, key=tw.key,
                   client_ca=tw.client_ca, client_cns=tw.client_cns, query_timeout_s=config.tsdb.timeout_s,
                   alertmanager_url=tw.alertmanager_url, auth=tw.auth, cert_check_s=b.cert_check_s,
                   max_query_answer_bytes=tw.max_query_answer_bytes, max_connections=tw.max_connections,
                   request_timeout_s=tw.request_timeout_s)


def serve_forever(config: IngestConfig) -> int:
    """``ems-ingest twin-api``: serve until SIGTERM/SIGINT; metrics (the verifier's counters) on ``[metrics]`` port."""

    api = build(config)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    api.start()
    status = _status_endpoint(config, api)
    log.info("twin API on https://%s:%d (client certificates %s, gateway verifier %s), TSDB %s, metrics :%d",
             config.twin_api.host, api.port, "required" if config.twin_api.client_ca else "not required",
             "on" if api.verifier else "off", config.tsdb.query_url, status.port)
    stop.wait()
    status.stop()
    api.stop()
    return 0


def _status_endpoint(config: IngestConfig, api: TwinApi) -> StatusEndpoint:
    """Plain-HTTP ``/metrics`` on [metrics]: the API's registry (gateway verifier counters), the twin-derived
    metrics (``ingest/twin_metrics.py``) and certificate expiry."""
    assert config.twin_api is not None
    registry = api.registry           # the gateway verifier's counters are in it already
    registry.register(TwinCollector(api.store.documents, lambda: dict(api.store.rejected)))
    register_certificates(registry, "twin", {"server": config.twin_api.cert,
                                             "broker-client": config.broker.cert if config.broker.tls else None})

    def health() -> tuple[bool, dict[str, Any]]:
        ok, why = api.health(need_broker=False)
        return ok, {"detail": why}

    status = StatusEndpoint(config.metrics.host, config.metrics.port, registry, health)
    status.start()
    return status
