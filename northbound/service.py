"""``ems-northbound run``: one loop that schedules the function sets, backs off, decides and issues commands.

Tasks and when they run (server rates capped by ``polling.max_poll_s``)::

    discovery           DeviceCapability + Time, at DeviceCapability's pollRate
    register:<site>     until the site's EndDevice is registered (then again at the discovery rate)
    controls:<site>     FSA → programs → controls, at the DERProgramList's pollRate
    mirror:<site>       the site's latest readings as MirrorMeterReadings, at the server's postRate
    der:<site>          DERCapability and DERSettings, then DERStatus at the postRate (sites with ``der``)
    responses:<site>    every tick while Responses are due

Each tick (1 s) also decides every registered site's controls at server time; a control
whose value or source changed, or whose last command is half-way to expiry, becomes a
new ``ems_contract.command.Command`` (a new id every time) handed to the ``CommandSink``
(expiry: the event's effective end or ``polling.command_ttl_s``, whichever comes first;
a renewal that would expire no later than the last command is not sent).
With a ``[broker]`` section the sink is ``commands.MqttCommandSink``: commands go out on
``ems/v1/<site>/command`` and each tick first takes the sites' results, which become
Responses (``commands.response_status``; *started* waits for the site's *applied*). A
command the broker did not take is retried under ``commands:<site>`` with back-off; one that
no site was subscribed to (PUBACK 16: the site is disconnected or not subscribed yet, and
its session starts clean, so nothing waits for it) is retried under a new id with the
same back-off capped at ``broker.no_subscriber_retry_max_s``, so a site that comes back
gets the control in force within that time. With ``[operator_api]`` the same sink also
carries operators' manual commands (``northbound.operator_api``, behind the API gateway);
their results are handed to its ``CommandDesk`` as they arrive. A failing task —
refused, timed out, HTTP 500, a document we refuse, registration not possible yet —
backs off exponentially with jitter (``polling.backoff_*``) while the others go on;
one failure never stops the loop.

The 2030.5 client certificate is the client's identity at the server (its LFDI and SFDI are
the certificate's hash), so a new one is not swapped under a running loop: every
``cert_check_s`` the certificate, key and server CA are checked (``CertificateWatch``); when
they changed and load as a matching pair, ``run`` stops cleanly and ``restart_required`` is
set, and ``ems-northbound run`` exits with :data:`RESTART_EXIT` so its supervisor (the
kubelet) starts it again with the new identity. A pair that does not load is logged once and
the loop goes on with the old one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Awaitable, Callable, Collection, Mapping, Protocol

import httpx

from ems_contract.command import Command
from ems_runtime.file_watch import CertificateWatch
from ems_runtime.status_http import StatusEndpoint
from northbound import tls
from northbound.client import PointValue, Sep2Client, SiteSession
from northbound.command_link import BrokerTls, CommandLink
from northbound.commands import MqttCommandSink, response_status, result_subscriptions
from northbound.config import NorthboundConfig, ReadingsConfig
from northbound.errors import BrokerError, ConfigError, NorthboundError, TransportError
from northbound.events import window
from northbound.metrics import NorthboundMetrics
from northbound.operator_api import CommandDesk, OperatorApi
from northbound.transport import Sep2Transport

__all__ = ["NorthboundService", "Backoff", "ReadingSource", "TwinApiSource", "CommandSink", "LogCommandSink"]

log = logging.getLogger(__name__)

TICK_S = 1.0
CERT_CHECK_S = 5.0
"""How often the 2030.5 client certificate, key and server CA are checked for a renewal."""
RESTART_EXIT = 75
"""``ems-northbound run``'s exit status after a renewed client certificate (EX_TEMPFAIL): start me again."""
MAX_TWIN_BYTES = 256 * 1024


class Backoff:
    """Exponential back-off with jitter: initial × 2^failures, capped, times a random factor in [0.5, 1]."""

    def __init__(self, initial: float, maximum: float, rng: Callable[[], float] = random.random) -> None:
        self.initial, self.maximum, self.rng = initial, maximum, rng
        self.failures = 0

    def failed(self) -> float:
        delay = min(self.maximum, self.initial * 2 ** min(self.failures, 32)) * (0.5 + 0.5 * self.rng())
        self.failures += 1
        return delay

    def succeeded(self) -> None:
        self.failures = 0


class ReadingSource(Protocol):
    """Where the sites' latest readings come from."""

    async def latest(self, site: str, assets: Collection[str]) -> Mapping[tuple[str, str], PointValue]:
        """The latest good value of every point of the site's ``assets``, by (asset, point)."""
        ...


class CommandSink(Protocol):
    """Where commands for the sites go; raises a NorthboundError when a command could not be handed on."""

    async def issue(self, command: Command) -> None: ...


class LogCommandSink:
    """Logs each command and keeps the last ``keep``: the sink when no broker is configured (no control path)."""

    confirms = False

    def __init__(self, keep: int = 100) -> None:
        self.keep = keep
        self.issued: list[Command] = []

    async def issue(self, command: Command) -> None:
        log.info("command %s site %s %s=%s until %d (event %s)", command.id, command.site, command.control,
                 command.value, command.expires_ms, command.event or "default")
        self.issued = [*self.issued[-(self.keep - 1):], command]


class TwinApiSource:
    """Latest readings from the platform's twin read API (``GET /v1/assets/<site>/<asset>``)."""

    def __init__(self, config: ReadingsConfig, timeout: float = 5.0) -> None:
        assert config.twin_api is not None and config.ca is not None
        context = ssl.create_default_context(cafile=str(config.ca))
        if config.cert is not None and config.key is not None:
            context.load_cert_chain(config.cert, config.key)
        self._client = httpx.AsyncClient(base_url=config.twin_api, verify=context, timeout=timeout, trust_env=False)

    async def latest(self, site: str, assets: Collection[str]) -> Mapping[tuple[str, str], PointValue]:
        found: dict[tuple[str, str], PointValue] = {}
        for asset in sorted(assets):
            try:
                response = await self._client.get(f"/v1/assets/{site}/{asset}")
            except httpx.HTTPError as exc:
                raise TransportError(f"twin api {site}/{asset}", f"{type(exc).__name__}: {exc}") from exc
            if response.status_code == 404 or len(response.content) > MAX_TWIN_BYTES:
                continue
            try:
                twin = json.loads(response.content)
                for name, state in twin["points"].items():
                    value = state.get("value")
                    if state.get("quality") != "good" or isinstance(value, bool) \
                            or not isinstance(value, (int, float)) or not math.isfinite(value):
                        continue
                    found[(asset, name)] = PointValue(float(value), str(state.get("unit", "")), int(state["ts_ms"]))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                log.warning("twin %s/%s unreadable: %s", site, asset, exc)
        return found

    async def aclose(self) -> None:
        await self._client.aclose()


@dataclass
class _Issued:
    value: float | bool
    mrid: str
    issued: float
    expires: float


class NorthboundService:
    """The running client: owns the transport, the status endpoint and the schedule."""

    def __init__(self, config: NorthboundConfig, *, metrics: NorthboundMetrics | None = None,
                 source: ReadingSource | None = None, sink: CommandSink | None = None,
                 clock: Callable[[], float] = time.time, cert_check_s: float = CERT_CHECK_S) -> None:
        self.config = config
        self.cert_check_s = cert_check_s
        self.restart_required = False
        """Set when ``run`` stopped because the client certificate was renewed: the caller should start again."""
        self.metrics = metrics or NorthboundMetrics()
        self.source = source
        self.sink: CommandSink | None = sink
        self.link: CommandLink | None = None
        self.clock = clock
        self.client: Sep2Client | None = None
        self.endpoint: StatusEndpoint | None = None
        self.desk: CommandDesk | None = None
        self.operator_api: OperatorApi | None = None
        self._due: dict[str, float] = {"discovery": 0.0}
        self._backoff: dict[str, Backoff] = {}
        self._issued: dict[tuple[str, str], _Issued] = {}
        self._last_tick = time.monotonic()
        self._discovered_at: float | None = None
        for site in config.sites:
            self.metrics.init_site(site.site)

    def health(self) -> tuple[bool, dict[str, object]]:
        """Healthy while the loop ticks and DeviceCapability was read within three poll periods."""
        now = time.monotonic()
        client = self.client
        poll = client.dcap_poll_s if client else 900
        fresh = self._discovered_at is not None and now - self._discovered_at < 3 * poll + 60
        alive = now - self._last_tick < 30
        sessions = client.sessions.values() if client else ()
        return fresh and alive, {
            "discovered": self._discovered_at is not None, "loop_alive": alive,
            "registered": {s.site: s.registered for s in sessions},
            "backing_off": sorted(k for k, b in self._backoff.items() if b.failures),
            "broker_connected": None if self.link is None else self.link.connected}

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set."""
        server, client = self.config.server, self.config.client
        identity = CertificateWatch(client.cert, client.key, server.ca, errors=(ConfigError,), logger=log,
                                    what="2030.5 client certificate",
                                    load=lambda: tls.client_context(server.ca, client.cert, client.key,
                                                                    allow_tls13=server.allow_tls13))
        context = identity.first()
        next_check = time.monotonic() + self.cert_check_s
        if self.source is None and self.config.readings.twin_api is not None:
            self.source = TwinApiSource(self.config.readings)
        if self.sink is None:
            self.sink = self._command_sink()
        self.endpoint = StatusEndpoint(self.config.http.host, self.config.http.port, self.metrics.registry, self.health,
                                       config_error=ConfigError)
        self.endpoint.start()
        self._start_operator_api()
        observe = lambda function_set, outcome: self.metrics.requests.labels(function_set, outcome).inc()  # noqa: E731
        try:
            async with Sep2Transport(self.config.server.url, context, timeout=self.config.server.timeout_s,
                                     observe=observe) as transport:
                self.client = Sep2Client(transport, self.config, self.metrics, clock=self.clock)
                log.info("north-bound client lfdi %s sfdi %s → %s", self.config.client.lfdi, self.config.client.sfdi,
                         self.config.server.url)
                while not stop.is_set():
                    if self.cert_check_s > 0 and time.monotonic() >= next_check:
                        next_check = time.monotonic() + self.cert_check_s
                        if await asyncio.to_thread(identity.check) is not None:
                            log.warning("2030.5 client certificate %s changed; stopping so that the client starts "
                                        "again with the new identity", client.cert)
                            self.restart_required = True
                            break
                    await self.tick()
                    wait = max(0.0, min(TICK_S, min(self._due.values()) - time.monotonic()))
                    try:
                        await asyncio.wait_for(stop.wait(), wait)
                    except asyncio.TimeoutError:
                        pass
        finally:
            if self.operator_api is not None:
                self.operator_api.stop()
            self.endpoint.stop()
            if self.link is not None:
                await asyncio.to_thread(self.link.stop)
            if isinstance(self.source, TwinApiSource):
                await self.source.aclose()

    def _command_sink(self) -> CommandSink:
        broker = self.config.broker
        if broker is None:
            return LogCommandSink()
        sites = [s.site for s in self.config.sites]
        self.link = CommandLink(broker.host, broker.port, BrokerTls(broker.ca, broker.cert, broker.key),
                                client_id=broker.client_id, subscriptions=result_subscriptions(sites),
                                keepalive_s=broker.keepalive_s, publish_timeout_s=broker.publish_timeout_s)
        self.link.start()
        return MqttCommandSink(self.link, self.metrics, sites, clock=self.clock)

    def _start_operator_api(self) -> None:
        """With ``[operator_api]``: operators' manual commands go out through the same sink as the controls."""
        settings, broker = self.config.operator_api, self.config.broker
        if settings is None or broker is None or self.sink is None:
            return
        self.desk = CommandDesk(issue=self.sink.issue, loop=asyncio.get_running_loop(),
                                sites=[s.site for s in self.config.sites], metrics=self.metrics,
                                default_ttl_s=settings.default_ttl_s, max_ttl_s=settings.max_ttl_s,
                                publish_timeout_s=broker.publish_timeout_s, clock=self.clock)
        self.operator_api = OperatorApi(settings.host, settings.port, self.desk, settings.tls,
                                        settings.cert_check_s, max_connections=settings.max_connections,
                                        request_timeout_s=settings.request_timeout_s)
        try:
            self.operator_api.start()
        except OSError as exc:
            raise ConfigError("operator_api.port", settings.port,
                              f"cannot be bound on {settings.host} ({exc.strerror or exc})") from exc

    def _take_results(self) -> None:
        """Turn the sites' command results into Responses due (DefaultDERControl results: metrics only)."""
        assert self.client is not None
        if self.link is not None:
            self.metrics.broker_connected.set(1 if self.link.connected else 0)
        if not isinstance(self.sink, MqttCommandSink):
            return
        for outcome in self.sink.results():
            if self.desk is not None:
                self.desk.observe(outcome)
            session = self.client.sessions.get(outcome.command.site)
            if session is None or outcome.command.event is None:
                continue
            status = response_status(outcome.result.outcome)
            if not self.client.site_outcome(session, outcome.command.event, status):
                log.info("site %s: result for event %s, which the server no longer lists", session.site,
                         outcome.command.event)

    async def tick(self) -> None:
        """Run every task that is due, take command results, then decide controls and post due Responses."""
        assert self.client is not None
        self._last_tick = time.monotonic()
        self.client.confirm_started = bool(getattr(self.sink, "confirms", False))
        for task in sorted(t for t, due in self._due.items() if due <= self._last_tick
                           and not t.startswith(("responses", "commands"))):
            await self._attempt(task, self._run_task)
        self._take_results()
        for session in self.client.sessions.values():
            if session.registered:
                self.client.decide(session)
                task = f"commands:{session.site}"
                if self._due.get(task, 0.0) <= time.monotonic():
                    await self._attempt(task, self._run_task)
                task = f"responses:{session.site}"
                if self._due.get(task, 0.0) <= time.monotonic():
                    await self._attempt(task, self._run_task)

    async def _attempt(self, task: str, step: Callable[[str], Awaitable[float]]) -> None:
        backoff = self._backoff.setdefault(task, Backoff(self.config.polling.backoff_initial_s,
                                                         self.config.polling.backoff_max_s))
        try:
            next_in = await step(task)
        except NorthboundError as exc:
            delay = backoff.failed()
            level = logging.WARNING
            if isinstance(exc, BrokerError) and exc.kind == "no_subscribers" and self.config.broker is not None:
                # The site is not listening: retry soon, so it gets the control within a bounded time once back;
                # say so once per outage, not at every retry.
                delay = min(delay, self.config.broker.no_subscriber_retry_max_s)
                level = logging.WARNING if backoff.failures == 1 else logging.DEBUG
            self._due[task] = time.monotonic() + delay
            self.metrics.backoff.labels(task).set(delay)
            log.log(level, "%s failed (%s); retrying in %.1f s", task, exc, delay)
            return
        except Exception:   # the supervisor: a bug in one task must not stop the others
            delay = backoff.failed()
            self._due[task] = time.monotonic() + delay
            self.metrics.backoff.labels(task).set(delay)
            log.exception("%s crashed; retrying in %.1f s", task, delay)
            return
        backoff.succeeded()
        self.metrics.backoff.labels(task).set(0)
        self._due[task] = time.monotonic() + next_in

    async def _run_task(self, task: str) -> float:
        client = self.client
        assert client is not None
        kind, _, site = task.partition(":")
        if kind == "discovery":
            await client.discover()
            self._discovered_at = time.monotonic()
            for name in client.sessions:
                if not client.sessions[name].registered:
                    self._due.setdefault(f"register:{name}", 0.0)
            return client.dcap_poll_s
        session = client.sessions[site]
        if kind == "register":
            await client.register(session)
            self._due.setdefault(f"controls:{site}", 0.0)
            if session.points and self.source is not None:
                self._due.setdefault(f"mirror:{site}", 0.0)
            if session.config.der is not None:
                self._due.setdefault(f"der:{site}", 0.0)
            return client.dcap_poll_s
        if kind == "controls":
            await client.poll_controls(session)
            self._due[f"responses:{site}"] = 0.0
            return session.poll_s
        if kind == "mirror":
            assert self.source is not None
            values = await self.source.latest(site, {p.asset for p in session.points})
            await client.mirror(session, values)
            return client.post_interval(session)
        if kind == "der":
            point = session.config.der.connected_point if session.config.der else None
            values: Mapping[tuple[str, str], PointValue] = {}
            if point is not None and self.source is not None:
                values = await self.source.latest(site, {point[0]})
            await client.report_der(session, values)
            return client.post_interval(session)
        if kind == "responses":
            await client.post_responses(session)
            return 0.0
        if kind == "commands":
            await self._issue_commands(session)
            return 0.0
        raise ValueError(f"unknown task {task!r}")

    async def _issue_commands(self, session: SiteSession) -> None:
        assert self.client is not None and session.selection is not None
        now = self.clock()
        ttl = self.config.polling.command_ttl_s
        by_mrid = {e.mrid: e for e in session.events}
        for control, applied in session.selection.controls.items():
            gauge_value = float(applied.value)
            self.metrics.active_control.labels(session.site, control).set(gauge_value)
            self.metrics.control_from_event.labels(session.site, control).set(1 if applied.source == "event" else 0)
            previous = self._issued.get((session.site, control))
            expires = now + ttl
            event = by_mrid.get(applied.mrid) if applied.source == "event" else None
            if event is not None:
                _, end = window(event, session.config.lfdi)
                expires = min(expires, end - self.client.offset)
            if previous is not None and previous.value == applied.value and previous.mrid == applied.mrid \
                    and (now < previous.issued + (previous.expires - previous.issued) / 2
                         or expires <= previous.expires + 1.0):   # a renewal would not outlast it: the event ends then
                continue
            if expires - now < 1.0:      # ends within the second: let it lapse rather than command it
                continue
            command = Command(id=uuid.uuid4().hex, site=session.site, issued_ms=int(now * 1000),
                              expires_ms=int(expires * 1000), event=event.mrid if event else None,
                              control=control, value=applied.value)
            assert self.sink is not None
            await self.sink.issue(command)
            self.metrics.commands.labels(session.site, control).inc()
            self._issued[(session.site, control)] = _Issued(applied.value, applied.mrid, now, expires)
        for control in set(c for s, c in self._issued if s == session.site) - set(session.selection.controls):
            del self._issued[(session.site, control)]
            self.metrics.active_control.labels(session.site, control).set(math.nan)
            self.metrics.control_from_event.labels(session.site, control).set(0)
