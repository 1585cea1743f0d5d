"""The operator route's upstream: bounded manual commands, issued by people through the API gateway.

    POST /v1/commands        body per ``northbound.manual_command``; 202 with the command once the
                             broker took it (PUBACK), ``Location: /v1/commands/<id>``
    GET  /v1/commands/<id>   the command and the edge's outcome: ``pending`` until the site
                             answers, then ``applied`` | ``rejected`` | ``failed`` | ``expired``
                             with the edge's reason and read-back

Who is asking comes only from the API gateway's identity headers (``X-Ems-User``, ``X-Ems-Role``,
``X-Ems-Auth``; ``components/api_gateway.py`` sets them after its verifier and drops any copy the
client sent). They are trusted because only the gateway can send them: the listener serves TLS
(``ems_runtime.server_tls``, certificate rotation included) and its handshake requires a client
certificate of the platform CA; a certificate whose CN is not in ``client_cns`` (the gateway's
own, ``ems-api-gateway``) is answered 403 before any header is read. The port is also one of its
own that only the gateway's pods may reach (the north-bound NetworkPolicy in
``components/northbound.py``). It still refuses what the gateway would never send: no or
malformed identity → 401, a role below operator → 403 (the gateway's route already needs
operator). The issuer (``X-Ems-User``) travels in the command (``Command.issuer``), so the edge
audits it; user, role and method are logged here with every decision, and
``ems_northbound_manual_commands_total{role,outcome}`` counts them (no user label: unbounded).

Answers: 400 names the field and value (``RequestError``); 401/403 as above; 404 unknown id or
path; 405; 411 without Content-Length; 413 above ``MAX_BODY_BYTES``; 503 when the broker did not
take the command (not connected, refused, no PUBACK, or no site subscribed: the site is offline).
At most ``MAX_KEPT`` commands are remembered for ``GET`` (oldest forgotten first).

Limits (``ems_runtime.http_server``; ``[operator_api] max_connections`` and ``request_timeout_s``,
defaults ``MAX_CONNECTIONS`` and ``REQUEST_TIMEOUT_S``): at most ``max_connections`` connections are
served at once, further ones are closed at accept (counted in
``ems_northbound_operator_api_refused_connections_total``, logged at most once per 10 s); the TLS
handshake must be done within ``request_timeout_s`` and a request's line, headers and body within
``request_timeout_s`` of its first byte, however slowly a client sends them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import sys
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Collection

from ems_contract.command import COMMAND_ID_PATTERN, Command, CommandResult
from ems_contract.roles import AUTH_METHODS, ROLES, role_at_least, valid_user
from ems_runtime.http_server import BoundedHTTPServer, DeadlineRequestHandler
from ems_runtime.server_tls import ServerTls, handshake
from ems_runtime.tls import error_reason
from northbound.commands import Outcome
from northbound.errors import BrokerError
from northbound.manual_command import MAX_BODY_BYTES, ManualRequest, RequestError, parse_request
from northbound.metrics import NorthboundMetrics

__all__ = ["CommandDesk", "Identity", "OperatorApi", "MANUAL_OUTCOMES", "MAX_KEPT"]

log = logging.getLogger(__name__)

MAX_KEPT = 1000
MAX_CONNECTIONS = 32
REQUEST_TIMEOUT_S = 10.0
MANUAL_ROLE = "operator"
"""The least role that may issue and read manual commands (the gateway's ``commands`` route needs it too)."""
_NEEDS_ROLE = f"manual commands need the {' or '.join(ROLES[ROLES.index(MANUAL_ROLE):])} role"
MANUAL_OUTCOMES = ("published", "bad_request", "unauthenticated", "forbidden", "not_published", "wrong_caller")
_PATH = re.compile(r"^/v1/commands(?:/(?P<id>[^/?]*))?$")
_ID = re.compile(COMMAND_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller, as the API gateway verified it."""

    user: str
    role: str
    method: str


@dataclass
class _Kept:
    command: Command
    role: str
    published: bool
    result: CommandResult | None = None


class _Refused(Exception):
    def __init__(self, status: int, outcome: str, doc: dict[str, Any]) -> None:
        super().__init__(doc.get("error", ""))
        self.status, self.outcome, self.doc = status, outcome, doc


def identity_from(headers: Any) -> Identity:
    """The gateway's identity headers → Identity; _Refused 401 when absent or not what the gateway sends."""
    user, role, method = (headers.get(h, "") for h in ("X-Ems-User", "X-Ems-Role", "X-Ems-Auth"))
    if not valid_user(user) or role not in ROLES or method not in AUTH_METHODS:
        raise _Refused(401, "unauthenticated", {"error": "no verified identity from the API gateway"})
    return Identity(user, role, method)


class CommandDesk:
    """Turns checked requests into commands on the service's loop and keeps their outcomes. Thread-safe.

    ``issue`` is the command sink's coroutine function, run on ``loop``; ``publish_timeout_s`` bounds
    the wait for it (the sink's own PUBACK timeout comes first).
    """

    def __init__(self, *, issue: Callable[[Command], Awaitable[None]], loop: asyncio.AbstractEventLoop,
                 sites: Collection[str], metrics: NorthboundMetrics, default_ttl_s: int, max_ttl_s: int,
                 publish_timeout_s: float, clock: Callable[[], float] = time.time) -> None:
        self._issue, self._loop = issue, loop
        self.sites = frozenset(sites)
        self.metrics = metrics
        self.default_ttl_s, self.max_ttl_s = default_ttl_s, max_ttl_s
        self.publish_timeout_s = publish_timeout_s
        self.clock = clock
        self._lock = threading.Lock()
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        for role in ("none", *ROLES):
            for outcome in MANUAL_OUTCOMES:
                metrics.manual_commands.labels(role, outcome)

    def post(self, headers: Any, body: bytes) -> tuple[int, dict[str, Any]]:
        """One ``POST /v1/commands``: (status, JSON document); logs and counts the decision."""
        role = "none"
        try:
            who = identity_from(headers)
            role = who.role
            if not role_at_least(role, MANUAL_ROLE):
                raise _Refused(403, "forbidden", {"error": _NEEDS_ROLE})
            try:
                request = parse_request(body, sites=self.sites, default_ttl_s=self.default_ttl_s,
                                        max_ttl_s=self.max_ttl_s)
            except RequestError as exc:
                raise _Refused(400, "bad_request", {"error": str(exc), "field": exc.field, "value": exc.value}) from exc
            kept = self._publish(who, request)
        except _Refused as refused:
            self.metrics.manual_commands.labels(role, refused.outcome).inc()
            user = headers.get("X-Ems-User", "")[:128] if refused.outcome != "unauthenticated" else "unknown"
            log.warning("manual command refused (%d %s) for %r (%s): %s", refused.status, refused.outcome, user, role,
                        refused.doc.get("error"))
            return refused.status, refused.doc
        return 202, self._document(kept)

    def _publish(self, who: Identity, request: ManualRequest) -> _Kept:
        now = self.clock()
        command = Command(id=uuid.uuid4().hex, site=request.site, issued_ms=int(now * 1000),
                          expires_ms=int((now + request.ttl_s) * 1000), event=None, control=request.control,
                          value=request.value, issuer=who.user)
        kept = _Kept(command, who.role, published=False)
        with self._lock:
            self._kept[command.id] = kept
            while len(self._kept) > MAX_KEPT:
                self._kept.popitem(last=False)
        what = f"{command.id} by {who.user} ({who.role}, {who.method}): site {command.site} " \
               f"{command.control}={command.value} for {request.ttl_s} s"
        future = asyncio.run_coroutine_threadsafe(self._issue(command), self._loop)
        try:
            future.result(self.publish_timeout_s + 2.0)
        except BrokerError as exc:
            log.warning("manual command %s: not published (%s)", what, exc)
            raise _Refused(503, "not_published", {"error": f"the command was not published: {exc}",
                                                  "kind": exc.kind, "id": command.id}) from exc
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise _Refused(503, "not_published", {"error": "the command was not published in time",
                                                  "kind": "timeout", "id": command.id}) from exc
        kept.published = True
        self.metrics.manual_commands.labels(who.role, "published").inc()
        log.info("manual command %s: published", what)
        return kept

    def get(self, headers: Any, command_id: str) -> tuple[int, dict[str, Any]]:
        """One ``GET /v1/commands/<id>``: the command and its outcome so far."""
        try:
            who = identity_from(headers)
        except _Refused as refused:
            return refused.status, refused.doc
        if not role_at_least(who.role, MANUAL_ROLE):
            return 403, {"error": _NEEDS_ROLE}
        with self._lock:
            kept = self._kept.get(command_id) if _ID.fullmatch(command_id) else None
            doc = self._document(kept) if kept is not None else None
        if doc is None:
            return 404, {"error": f"no manual command {command_id[:64]!r} is known here"}
        return 200, doc

    def observe(self, outcome: Outcome) -> None:
        """A site's result (from the sink, on the service's loop): kept when it answers a manual command."""
        with self._lock:
            kept = self._kept.get(outcome.command.id)
            if kept is None:
                return
            kept.result = outcome.result
        log.info("manual command %s by %s at site %s: %s%s", kept.command.id, kept.command.issuer, kept.command.site,
                 outcome.result.outcome, f" ({outcome.result.reason})" if outcome.result.reason else "")

    @staticmethod
    def _document(kept: _Kept) -> dict[str, Any]:
        c, r = kept.command, kept.result
        status = r.outcome if r is not None else ("pending" if kept.published else "not_published")
        return {"id": c.id, "site": c.site, "control": c.control, "value": c.value, "issuer": c.issuer,
                "role": kept.role, "issued_ms": c.issued_ms, "expires_ms": c.expires_ms, "status": status,
                "reason": r.reason if r else None, "readback": r.readback if r else None}


class _Server(BoundedHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # A refused handshake (no or a foreign certificate) or a dropped connection: one line, no traceback.
        exc = sys.exc_info()[1]
        log.info("operator api: connection from %s failed: %s", client_address, error_reason(exc) if exc else "?")


class OperatorApi:
    """The HTTPS listener in front of a :class:`CommandDesk` (module docstring). ``port`` 0 takes a free port.

    ``tls`` serves the certificate and decides who may call (``ServerTls.refusal``); with ``cert_check_s`` > 0 its
    files are re-read every that many seconds and a changed, valid set takes over for new connections.
    ``max_connections`` (default ``MAX_CONNECTIONS``) connections are served at once, further ones closed at accept;
    ``request_timeout_s`` (default ``REQUEST_TIMEOUT_S``) bounds a TLS handshake and a request's arrival.
    """

    def __init__(self, host: str, port: int, desk: CommandDesk, tls: ServerTls, cert_check_s: float = 5.0, *,
                 max_connections: int = MAX_CONNECTIONS, request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.host, self.requested_port, self.desk, self.tls = host, port, desk, tls
        self.cert_check_s = cert_check_s
        self.max_connections = max_connections
        self.request_timeout_s = request_timeout_s
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def refused_connections(self) -> int:
        """Connections closed at accept because ``max_connections`` were being served."""
        return self._server.refused if self._server is not None else 0

    def start(self) -> None:
        desk, tls, request_timeout_s = self.desk, self.tls, self.request_timeout_s

        class Handler(DeadlineRequestHandler):
            timeout = 10                    # per socket operation: the wait for a request, each write
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                handshake(self.request, request_timeout_s)      # in the request's own thread, not the accept loop
                super().setup()

            def _refused(self) -> bool:
                refusal = tls.refusal(self.request.getpeercert())
                if refusal is None:
                    return False
                desk.metrics.manual_commands.labels("none", "wrong_caller").inc()
                log.warning("operator api: refused %s %s from %s: %s", self.command, self.path[:64],
                            self.client_address[0], refusal)
                self._answer(403, {"error": refusal}, close=True)
                return True

            def do_POST(self) -> None:  # noqa: N802 (stdlib name)
                if self._refused():
                    return None
                if self.path != "/v1/commands":
                    return self._answer(*((404, {"error": "no such route"}) if not _PATH.match(self.path)
                                          else (405, {"error": "POST only on /v1/commands"})))
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    return self._answer(411, {"error": "Content-Length is required"}, close=True)
                length = self.headers.get("Content-Length", "")
                if not length.isdigit():
                    return self._answer(411, {"error": "Content-Length is required"}, close=True)
                if int(length) > MAX_BODY_BYTES:
                    return self._answer(413, {"error": f"body: {length} bytes is larger than {MAX_BODY_BYTES} bytes",
                                              "field": "body"}, close=True)
                self._answer(*desk.post(self.headers, self.rfile.read(int(length))))

            def do_GET(self) -> None:  # noqa: N802 (stdlib name)
                if self._refused():
                    return None
                match = _PATH.match(self.path)
                if match is None:
                    return self._answer(404, {"error": "no such route"})
                if match.group("id") is None:
                    return self._answer(405, {"error": "GET /v1/commands/<id>"})
                self._answer(*desk.get(self.headers, match.group("id")))

            def _answer(self, status: int, doc: dict[str, Any], close: bool = False) -> None:
                body = json.dumps(doc, separators=(",", ":")).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if status == 202:
                    self.send_header("Location", f"/v1/commands/{doc['id']}")
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("operator api %s", fmt % args)

        Handler.request_timeout_s = request_timeout_s
        self._server = _Server((self.host, self.requested_port), Handler, self.max_connections,
                               name="operator api", logger=log, refusals=desk.metrics.operator_api_refused)
        self.tls.install(self._server)
        self._stop.clear()
        self._threads = [threading.Thread(target=self._server.serve_forever, name="operator-api", daemon=True)]
        if self.cert_check_s > 0:
            self._threads.append(threading.Thread(target=self.tls.watch, args=(self._stop, self.cert_check_s),
                                                  name="operator-api-tls-watch", daemon=True))
        for thread in self._threads:
            thread.start()
        log.info("manual commands on https://%s:%d/v1/commands (behind the API gateway; client certificates: %s)",
                 self.host, self.port, ", ".join(sorted(self.tls.client_cns)) or "any of the CA")

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
