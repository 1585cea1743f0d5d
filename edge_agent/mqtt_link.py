"""The edge agent's MQTT link: an asyncio connection over paho-mqtt (the edge agent's only paho importer).

``EdgeMqttLink`` (named for its side; the ingest's consuming link is
``ingest.mqtt.MqttLink``) drives paho from the event loop the way aiomqtt does,
with no paho network thread: only the blocking TCP connect and TLS handshake run in an
executor thread (``Client.connect``); after that the socket is watched with
``loop.add_reader`` / ``add_writer`` and ``loop_misc`` runs once a second for
keepalive. A fresh paho ``Client`` is made for every connection attempt, so a
message paho still holds from a dead connection is never re-sent behind our
back: the spool is the only source of re-sends.

* MQTT v5 first; with ``protocol="auto"`` a broker that answers "unsupported
  protocol version" (CONNACK code 1, as MQTT 3.1.1 prescribes) is retried with
  v3.1.1, and that choice is kept. A connection merely cut before CONNACK is a
  link problem, not a reason to downgrade.
* mTLS: CA, client certificate and key (checked by :meth:`EdgeMqttLink.open`). Rotation: every
  ``cert_check_s`` the inode, mtime and size of the CA, certificate and key files are compared
  (cheap; ``ems_runtime.file_watch.CertificateWatch``, shared with the ingest and the twin API); when
  they changed and the content differs, a fresh context is built. A pair that does not load or match (half
  written, key of another certificate) is logged once, naming the files, and the loaded one kept.
  A good pair switches the connection without loss or duplicates: new publishes are held, the
  messages in flight get their PUBACKs (awaited, not polled), the link disconnects cleanly and reconnects with the new
  context, then the held messages go out on the new connection.
* Reconnect matched to the outage (``reconnect_delay``): during the first
  ``fast_window_s`` of an outage, retries every ``fast_retry_s`` (± half, jitter),
  so a broker restart costs seconds, not a grown backoff; after that,
  exponential backoff with full jitter (``backoff_initial_s`` doubling up to
  ``backoff_max_s``), so a long outage or a refusing broker is not hammered.
* ``publish()`` returns after the PUBACK for its message id, or raises
  :class:`PublishError` when the connection drops first (the caller re-sends).
* Last will ``offline`` and birth ``online``, retained, on ``status_topic(site)``.
* ``subscribe(topic, handler)``: QoS 1 on every connection (each starts clean); each message
  on that exact topic is handed to ``handler(topic, payload)`` on the event loop (the command
  path, ``edge_agent.commands``). A refused subscription is logged as an error.

Errors: paho's return codes and socket/TLS errors become ``PublishError``
(unreachable, lost, no PUBACK) or ``BrokerRefused`` (certificate or identity
refused; one line naming the broker and the certificate).

What is published when, and when the spool lets go of it, is ``edge_agent.delivery``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.errors import BrokerRefused, ConfigError, PublishError
from edge_agent.metrics import AgentMetrics
from ems_contract.telemetry import status_topic
from ems_runtime.file_watch import CertificateWatch
from ems_runtime.tls import broker_client_context, error_reason

__all__ = ["TlsFiles", "EdgeMqttLink", "backoff_delay", "reconnect_delay", "PROTOCOLS"]

PROTOCOLS = ("auto", "mqttv5", "mqttv311")
CONNECT_OUTCOMES = ("ok", "refused", "unreachable", "error")
_UNSUPPORTED_PROTOCOL = 132          # MQTT v5 CONNACK "Unsupported Protocol Version" (paho maps v3 rc 1 to it)
# TLS alerts a broker sends when it rejects the client certificate ("decrypt error": the signature does
# not verify, e.g. a certificate from a different CA that carries the trusted CA's name).
_CERT_ALERTS = ("unknown ca", "bad certificate", "decrypt error", "certificate required", "certificate unknown",
                "certificate expired", "certificate revoked", "unsupported certificate", "access denied")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for mTLS: the CA that signed the broker's certificate, our certificate and key."""

    ca: Path
    cert: Path
    key: Path


def _ssl_context(tls: TlsFiles) -> ssl.SSLContext:
    """A client context verifying the broker (hostname included) and presenting our certificate."""
    return broker_client_context(tls.ca, tls.cert, tls.key, ConfigError)


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max_s, initial_s × 2**attempt)].

    Full jitter keeps a fleet of agents that lost the same broker from
    reconnecting in lock-step when it comes back.
    """
    return rng.uniform(0, min(max_s, initial_s * 2 ** min(attempt, 32)))


def reconnect_delay(attempt: int, outage_s: float, rng: random.Random, *, fast_retry_s: float = 0.5,
                    fast_window_s: float = 10.0, initial_s: float = 0.5, max_s: float = 30.0) -> float:
    """Seconds before reconnect attempt ``attempt`` (0-based) of an outage that began ``outage_s`` ago.

    Within ``fast_window_s``: uniform in [fast_retry_s / 2, fast_retry_s × 1.5] (short outages end
    quickly; the jitter keeps a fleet from retrying in step). After it: ``backoff_delay`` counted
    from the first attempt past the window.
    """
    if outage_s < fast_window_s:
        return rng.uniform(fast_retry_s / 2, fast_retry_s * 1.5)
    fast_attempts = int(fast_window_s / fast_retry_s)
    return backoff_delay(max(0, attempt - fast_attempts), initial_s, max_s, rng)


class EdgeMqttLink:
    """One logical MQTT connection that keeps reconnecting; an async context manager.

    Parameters: ``host``, ``port``, ``client_id``, ``site`` (for the status
    topic), ``tls`` (None = plain MQTT, for local tests only), ``keepalive_s``
    (default 30), ``protocol`` (``auto`` | ``mqttv5`` | ``mqttv311``),
    ``inflight_max`` (QoS 1 messages awaiting PUBACK, default 32),
    ``connect_timeout_s`` (default 10), ``fast_retry_s`` (0.5) and ``fast_window_s``
    (10) for the first retries of an outage, ``backoff_initial_s`` (0.5) and
    ``backoff_max_s`` (30) after them (``reconnect_delay``), ``rng`` (for the
    jitter), ``metrics``, ``logger``, ``cert_check_s`` (5: how often the certificate and key
    files are checked for a rotation), ``switch_drain_s`` (10: how long a certificate switch
    waits for the PUBACKs of the messages in flight before it disconnects anyway).
    Constructing does no I/O; ``open()`` checks the TLS files (ConfigError).
    """

    def __init__(self, *, host: str, port: int, client_id: str, site: str, tls: TlsFiles | None,
                 keepalive_s: int = 30, protocol: str = "auto", inflight_max: int = 32,
                 connect_timeout_s: float = 10.0, fast_retry_s: float = 0.5, fast_window_s: float = 10.0,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0, rng: random.Random | None = None, metrics: AgentMetrics | None = None,
                 logger: logging.Logger | None = None, cert_check_s: float = 5.0,
                 switch_drain_s: float = 10.0) -> None:
        if protocol not in PROTOCOLS:
            raise ConfigError("broker.protocol", protocol, f"must be one of {', '.join(PROTOCOLS)}")
        self.host, self.port, self.client_id, self.site, self.tls = host, port, client_id, site, tls
        self.keepalive_s = keepalive_s
        self.protocol = protocol
        self.inflight_max = inflight_max
        self.connect_timeout_s = connect_timeout_s
        self.fast_retry_s = fast_retry_s
        self.fast_window_s = fast_window_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.rng = rng or random.Random()
        self.metrics = metrics
        self.log = logger or logging.getLogger(__name__)
        self.cert_check_s = cert_check_s
        self.switch_drain_s = switch_drain_s
        self.status_topic = status_topic(site)
        if metrics is not None:
            for outcome in CONNECT_OUTCOMES:        # known label values start at zero (dashboards, rate())
                metrics.broker_connects.labels(outcome)
        self.protocol_in_use: str | None = None
        self._v311_only = protocol == "mqttv311"
        self._context: ssl.SSLContext | None = None
        self._client: paho.Client | None = None
        self._write_watch: Any = None      # the socket watched for writability (after a short write), if any
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._connected = asyncio.Event()
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._socket_errors: list[str] = []
        self._misc_task: asyncio.Task | None = None
        self._supervisor: asyncio.Task | None = None
        self._closing = False
        self._subscriptions: dict[str, Callable[[str, bytes], None]] = {}
        # Certificate rotation: the watch on the loaded files, and the publishes held while the
        # connection switches to the new certificate.
        self._rotation = CertificateWatch(tls.cert, tls.key, tls.ca, lambda: _ssl_context(tls), errors=(ConfigError,),
                                          logger=self.log) if tls is not None else None
        self._switching = False
        self._held: list[tuple[str, bytes, bool, asyncio.Future[None]]] = []
        self._watcher: asyncio.Task | None = None
        self.certificate_switches = 0
        self.last_error: Exception | None = None
        # Connects (TCP + TLS handshake) block: they run here. Our own pool, so close() need not wait
        # for a connect stuck on a dead link (asyncio.run waits for the default executor's threads).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mqtt-connect")

    # -- lifecycle ---------------------------------------------------------
    async def __aenter__(self) -> "EdgeMqttLink":
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self) -> None:
        """Check the TLS files and build the TLS context (raises ConfigError naming the file)."""
        if self._rotation is not None and self._context is None:
            self._context = self._rotation.first()

    def start(self) -> None:
        """Keep connected in the background (reconnecting with backoff) until close()."""
        if self._supervisor is None:
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name="mqtt-link")
        if self._watcher is None and self._rotation is not None and self.cert_check_s > 0:
            self._watcher = asyncio.get_running_loop().create_task(
                self._rotation.watch_async(self.cert_check_s, self._switch_certificate), name="mqtt-tls-watch")

    async def close(self, timeout: float = 3.0) -> None:
        """Publish ``offline`` (retained), disconnect cleanly (no last will) and stop reconnecting."""
        self._closing = True
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if self._supervisor is not None:
            self._supervisor.cancel()
            try:
                await self._supervisor
            except asyncio.CancelledError:
                pass
            self._supervisor = None
        client = self._client
        if client is not None and self._connected.is_set():
            try:
                await asyncio.wait_for(self.publish(self.status_topic, b"offline", retain=True), timeout)
            except (PublishError, asyncio.TimeoutError):
                pass
            lost = self._lost
            client.disconnect()
            if lost is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(lost), timeout)
                except asyncio.TimeoutError:
                    pass
        self._drop(client, PublishError("link closed"))
        self._release_held(PublishError("link closed"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    def subscribe(self, topic: str, handler: Callable[[str, bytes], None]) -> None:
        """Subscribe to ``topic`` (exact, QoS 1) from the next connection on; ``handler`` gets its messages."""
        self._subscriptions[topic] = handler

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until connected (CONNACK received); raises asyncio.TimeoutError after ``timeout``."""
        await asyncio.wait_for(self._connected.wait(), timeout)

    # -- connecting --------------------------------------------------------
    async def _supervise(self) -> None:
        attempt = 0
        outage_since = time.monotonic()
        while not self._closing:
            if not self._connected.is_set():
                try:
                    await self.connect()
                except PublishError as exc:      # BrokerRefused included: the broker may be fixed later
                    self.last_error = exc
                    self._release_held(exc)     # never sent: the caller sends them again
                    delay = reconnect_delay(attempt, time.monotonic() - outage_since, self.rng,
                                            fast_retry_s=self.fast_retry_s, fast_window_s=self.fast_window_s,
                                            initial_s=self.backoff_initial_s, max_s=self.backoff_max_s)
                    attempt += 1
                    say = self.log.warning if attempt == 1 or delay >= 5 else self.log.debug   # no log flood
                    say("%s; retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    continue
            attempt = 0
            if self._closing:
                # close() cancelled us, but on Python 3.11 a cancel that meets a wait_for whose inner
                # future has just completed (the birth PUBACK) is swallowed: do not wait for a loss.
                return
            assert self._lost is not None
            await asyncio.shield(self._lost)
            outage_since = time.monotonic()

    async def connect(self) -> None:
        """One connection attempt (with the v3.1.1 fallback under ``auto``); returns once connected.

        Raises BrokerRefused (certificate or identity refused, protocol not
        supported) or PublishError (unreachable, dropped before CONNACK).
        """
        if self._connected.is_set():
            return
        try:
            await self._connect_once(MQTTProtocolVersion.MQTTv311 if self._v311_only else MQTTProtocolVersion.MQTTv5)
        except _ProtocolUnsupported as exc:
            if self.protocol != "auto" or self._v311_only:
                raise BrokerRefused(f"broker {self.host}:{self.port} does not support MQTT "
                                    f"{'3.1.1' if self._v311_only else 'v5'} ({exc})") from None
            self.log.info("broker %s:%d does not speak MQTT v5 (%s); falling back to 3.1.1", self.host, self.port, exc)
            self._v311_only = True
            try:
                await self._connect_once(MQTTProtocolVersion.MQTTv311)
            except _ProtocolUnsupported as exc2:
                raise BrokerRefused(f"broker {self.host}:{self.port} refused MQTT v5 and 3.1.1 ({exc2})") from None

    async def _connect_once(self, protocol: MQTTProtocolVersion) -> None:
        loop = asyncio.get_running_loop()
        self._loop, self._loop_thread = loop, threading.get_ident()
        self.open()
        v5 = protocol == MQTTProtocolVersion.MQTTv5
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=None if v5 else True, protocol=protocol)
        client.connect_timeout = self.connect_timeout_s
        client.max_inflight_messages_set(self.inflight_max)
        client.max_queued_messages_set(0)
        client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        if self._context is not None:
            client.tls_set_context(self._context)
        client.enable_logger(_PahoLog(self, debug=self.log.isEnabledFor(logging.DEBUG)))  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._socket_errors = []
        self._connack = loop.create_future()
        self._lost = loop.create_future()
        self._client = client
        where = f"broker {self.host}:{self.port}"
        try:
            kwargs: dict[str, Any] = {"clean_start": True} if v5 else {}
            rc = await loop.run_in_executor(
                self._executor, lambda: client.connect(self.host, self.port, self.keepalive_s, **kwargs))
        except ssl.SSLCertVerificationError as exc:
            self._count("refused")
            raise BrokerRefused(f"{where}: its certificate is not trusted ({exc.verify_message}; "
                                f"CA file {self.tls.ca if self.tls else '-'})") from exc
        except ssl.SSLError as exc:
            # A certificate alert in the handshake (TLS 1.2) is a refusal; anything else (EOF, reset) is the link.
            self._socket_errors.append(str(exc))
            alert = self._cert_alert()
            if alert:
                self._count("refused")
                raise BrokerRefused(self._tls_refusal(alert)) from exc
            self._count("unreachable")
            raise PublishError(f"{where}: TLS handshake failed ({error_reason(exc)})") from exc
        except (OSError, socket.timeout) as exc:
            self._count("unreachable")
            raise PublishError(f"{where} unreachable ({error_reason(exc)})") from exc
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            alert = await self._diagnose()
            self._count("refused" if alert else "error")
            if alert:
                raise BrokerRefused(self._tls_refusal(alert))
            raise PublishError(f"{where}: connect failed ({paho.error_string(rc)})")
        sock = client.socket()
        assert sock is not None
        # A message larger than one TLS record leaves a short last segment; Nagle would hold it
        # until the broker's delayed ACK (~40 ms on Linux) and every large message would wait for it.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop.add_reader(sock, self._on_readable, client)
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        if client.want_write():
            self._watch_write(client, sock)
        try:
            reason = await asyncio.wait_for(asyncio.shield(self._connack), self.connect_timeout_s)
        except asyncio.TimeoutError:
            self._drop(client, PublishError("no CONNACK"))
            self._count("error")
            raise PublishError(f"{where}: no CONNACK within {self.connect_timeout_s:.0f}s") from None
        except _ConnectionLostEarly:
            alert = await self._diagnose()
            self._count("refused" if alert else "error")
            if alert:
                raise BrokerRefused(self._tls_refusal(alert)) from None
            errors = "; ".join(self._socket_errors) or "connection closed"
            raise PublishError(f"{where}: connection lost before CONNACK ({errors})") from None
        if reason.is_failure:
            self._drop(client, PublishError("refused"))
            self._count("refused")
            if reason.value == _UNSUPPORTED_PROTOCOL:
                raise _ProtocolUnsupported(str(reason))
            raise BrokerRefused(f"{where} refused the connection: {reason} (client id {self.client_id!r}"
                                f"{', certificate ' + str(self.tls.cert) if self.tls else ''})")
        self.protocol_in_use = "mqttv5" if v5 else "mqttv311"
        if self._subscriptions:
            client.subscribe([(topic, 1) for topic in self._subscriptions])
        self._misc_task = loop.create_task(self._misc_loop(client))
        self._connected.set()
        self._switching = False
        held, self._held = self._held, []
        for topic, payload, retain, future in held:      # held during a certificate switch: send them now
            self._send(client, topic, payload, retain, future)
        self._count("ok")
        if self.metrics is not None:
            self.metrics.broker_connected.set(1)
        self.log.info("connected to broker %s:%d as %s (%s)", self.host, self.port, self.client_id,
                      self.protocol_in_use)
        try:
            await asyncio.wait_for(self.publish(self.status_topic, b"online", retain=True), self.connect_timeout_s)
        except asyncio.TimeoutError:
            self.abort("no PUBACK for the birth message")
            raise PublishError(f"{where}: no PUBACK for the birth message") from None

    async def _diagnose(self) -> str | None:
        """Why did a TLS connection die before CONNACK? The broker's certificate alert, or None.

        The alert may have been lost in a race (our CONNECT write hit the reset
        first), so when the log has none, one probe connection asks again: after
        the handshake, a broker that accepted our certificate sends nothing
        until CONNECT, one that refused it sends the alert.
        """
        alert = self._cert_alert()
        if alert or self._context is None:
            return alert
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._probe_tls)

    def _probe_tls(self) -> str | None:
        assert self._context is not None
        try:
            with socket.create_connection((self.host, self.port), timeout=min(self.connect_timeout_s, 3.0)) as raw:
                with self._context.wrap_socket(raw, server_hostname=self.host) as tls:
                    tls.settimeout(1.0)
                    tls.recv(1)
        except ssl.SSLError as exc:
            self._socket_errors.append(str(exc))
            return self._cert_alert()
        except OSError:
            return None
        return None

    def _tls_refusal(self, reason: str) -> str:
        cert = f" {self.tls.cert}" if self.tls else ""
        return f"broker {self.host}:{self.port} refused the client certificate{cert} (TLS: {reason})"

    def _cert_alert(self) -> str | None:
        """The TLS alert text when the broker rejected our certificate during the handshake, else None."""
        for line in self._socket_errors:
            low = line.lower()
            if "alert" in low and any(word in low for word in _CERT_ALERTS):
                found = re.search(r"\]\s*([^\[\]()]*alert[^\[\]()]*?)\s*(\(|$)", low)
                return found.group(1) if found else low
        return None

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.broker_connects.labels(outcome).inc()

    async def _misc_loop(self, client: paho.Client) -> None:
        while True:
            await asyncio.sleep(1.0)
            if client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return

    def abort(self, why: str) -> None:
        """Drop the current connection now (e.g. a PUBACK never came); the supervisor reconnects."""
        if self._client is not None:
            self.log.warning("broker %s:%d: dropping the connection: %s", self.host, self.port, why)
            self._drop(self._client, PublishError(why))

    def _drop(self, client: paho.Client | None, exc: PublishError) -> None:
        """Close the socket without DISCONNECT (so the broker sends our will) and retire this paho client."""
        if client is not None:
            sock = client.socket()
            if sock is not None:
                self._on_socket_close(client, None, sock)
                # paho still holds the closed socket and closes it again when collected: detach first
                client.on_socket_close = client.on_socket_register_write = None
                client.on_socket_unregister_write = None
                sock.close()
            if client is self._client:
                self._client = None      # a fresh Client is made for the next connection
        self._lost_connection(exc)

    def _lost_connection(self, exc: PublishError) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if self.metrics is not None:
            self.metrics.broker_connected.set(0)
        if self._misc_task is not None:
            self._misc_task.cancel()
            self._misc_task = None
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(PublishError(f"connection lost before PUBACK ({exc})"))
                future.exception()          # retrieved: a caller that gave up must not log "never retrieved"
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(_ConnectionLostEarly())
            self._connack.exception()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if was_connected and self._switching:
            self.log.info("disconnected from broker %s:%d to switch the certificate", self.host, self.port)
        elif was_connected and self._closing:
            self.log.info("disconnected from broker %s:%d", self.host, self.port)
        elif was_connected:
            self.log.warning("connection to broker %s:%d lost (%s)", self.host, self.port, exc)

    # -- paho callbacks (all on the event loop thread) ------------------------
    def _on_readable(self, client: paho.Client) -> None:
        client.loop_read()
        sock = client.socket()
        # TLS may hold decrypted bytes the OS socket no longer signals: read them too.
        while isinstance(sock, ssl.SSLSocket) and sock.pending() and client.socket() is sock:
            client.loop_read()

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # paho has bytes to send: write them on the loop's next pass rather than wait for the socket to
        # signal writable (it nearly always is). Watching it cost two epoll_ctl calls and a loop pass per
        # message; the messages published in one pass now go out in one loop_write.
        asyncio.get_running_loop().call_soon(self._write_now, client, sock)

    def _write_now(self, client: paho.Client, sock: Any) -> None:
        if client.socket() is not sock:
            return                          # that connection is gone; the next one writes its own
        client.loop_write()
        if client.want_write() and client.socket() is sock:
            # The socket's buffer is full. paho registers a writer only once until everything is written,
            # so watch the socket here; the unregister callback removes the watch.
            self._watch_write(client, sock)

    def _watch_write(self, client: paho.Client, sock: Any) -> None:
        asyncio.get_running_loop().add_writer(sock, client.loop_write)
        self._write_watch = sock

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # paho calls this after every message written; the socket is watched only after a short write.
        if self._write_watch is sock:
            asyncio.get_running_loop().remove_writer(sock)
            self._write_watch = None

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock)
        loop.remove_writer(sock)
        if self._write_watch is sock:
            self._write_watch = None

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Any) -> None:
        if client is self._client and self._connack is not None and not self._connack.done():
            self._connack.set_result(reason)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode,
                       properties: Any) -> None:
        if client is not self._client:
            return
        error = PublishError(self._socket_errors[-1] if self._socket_errors else str(reason))
        if threading.get_ident() == self._loop_thread:
            self._lost_connection(error)
        else:       # paho failed the CONNECT write inside connect(), on the executor thread
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._lost_connection, error)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        future = self._pending.pop(mid, None) if client is self._client else None
        if future is None or future.done():
            return
        if reason.is_failure:
            future.set_exception(PublishError(f"broker rejected the message: {reason}"))
        else:
            future.set_result(None)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        handler = self._subscriptions.get(message.topic) if client is self._client else None
        if handler is not None:
            handler(message.topic, bytes(message.payload))

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode],
                      properties: Any) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            self.log.error("broker %s:%d refused the subscription to %s (%s)", self.host, self.port,
                           ", ".join(self._subscriptions), ", ".join(refused))

    # -- certificate rotation ----------------------------------------------
    async def check_certificate(self) -> bool:
        """Switch to the certificate and key on disk if they changed and load as a matching pair.

        Returns True when a switch was started. A changed pair that does not load is logged once
        per state of the files, and the loaded certificate stays in use.
        """
        assert self._rotation is not None
        context = self._rotation.check()
        if context is None:
            return False
        await self._switch_certificate(context)
        return True

    async def _switch_certificate(self, context: ssl.SSLContext) -> None:
        assert self.tls is not None
        self._context = context
        self.certificate_switches += 1
        self.log.info("certificate %s and key %s changed; reconnecting to broker %s:%d with them",
                      self.tls.cert, self.tls.key, self.host, self.port)
        if self._connected.is_set():
            await self._switch_connection()

    async def _switch_connection(self) -> None:
        """Hold new publishes, let the ones in flight get their PUBACKs, disconnect cleanly.

        The supervisor then reconnects with the new context and the held messages go out on the
        new connection: none is lost and none is sent twice.
        """
        self._switching = True
        in_flight = list(self._pending.values())
        if in_flight:
            # Each future completes at its PUBACK, or fails when the connection drops: nothing to poll.
            await asyncio.wait(in_flight, timeout=self.switch_drain_s)
        client = self._client
        unacknowledged = sum(not future.done() for future in in_flight)
        if unacknowledged:
            self.log.warning("broker %s:%d: %d messages still without PUBACK after %.0fs; switching anyway "
                             "(they will be sent again)", self.host, self.port, unacknowledged,
                             self.switch_drain_s)
        self.log.info("switching the certificate: %d messages were in flight, %d held for the new connection",
                      len(in_flight), len(self._held))
        if client is not None and self._connected.is_set():
            client.disconnect()          # clean: no last will; the new connection publishes "online"
        elif not self._connected.is_set() and not self._held:
            self._switching = False

    def _release_held(self, exc: PublishError) -> None:
        """Fail the publishes held for a switch that did not connect (never sent: the caller re-sends)."""
        self._switching = False
        held, self._held = self._held, []
        for _, _, _, future in held:
            if not future.done():
                future.set_exception(PublishError(f"not sent: {exc}"))
                future.exception()

    # -- publishing --------------------------------------------------------
    def start_publish(self, topic: str, payload: bytes, *, retain: bool = False) -> "asyncio.Future[None]":
        """Queue one QoS 1 message; the future completes at its PUBACK or fails with PublishError.

        During a certificate switch the message is held and sent on the new connection.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._switching:
            self._held.append((topic, payload, retain, future))
            return future
        client = self._client
        if client is None or not self._connected.is_set():
            raise PublishError(f"not connected to broker {self.host}:{self.port}")
        self._send(client, topic, payload, retain, future)
        if future.done():
            future.result()          # raises the PublishError
        return future

    def _send(self, client: paho.Client, topic: str, payload: bytes, retain: bool,
              future: "asyncio.Future[None]") -> None:
        info = client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            future.set_exception(PublishError(f"publish to {topic} failed ({paho.error_string(info.rc)})"))
            future.exception()
            return
        self._pending[info.mid] = future

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish with QoS 1 and return after the broker's PUBACK; raises PublishError otherwise."""
        await self.start_publish(topic, payload, retain=retain)


class _PahoLog:
    """Takes paho's log calls (it calls ``log(level, fmt, *args)`` for every packet sent and received).

    Error messages are kept in the link's ``_socket_errors`` (they explain a refused handshake or
    a lost connection); the rest reach the link's logger only when it logs debug. Nothing is
    formatted otherwise: paho's ``on_log`` callback would format a line for every PUBLISH and PUBACK.
    """

    def __init__(self, link: EdgeMqttLink, *, debug: bool) -> None:
        self.link = link
        self.debug = debug

    def log(self, level: int, fmt: str, *args: Any) -> None:
        if level >= logging.ERROR:
            self.link._socket_errors.append(fmt % args)
        elif self.debug:
            self.link.log.log(level, "paho: %s", fmt % args)


class _ProtocolUnsupported(Exception):
    """Internal: the broker does not speak the protocol version we tried."""


class _ConnectionLostEarly(Exception):
    """Internal: the socket closed before CONNACK."""
