"""The MQTT boundary of the ingest: the only module that imports paho.

``MqttLink`` is one paho 2.x client (MQTT v5, mTLS) whose network loop runs in
paho's own thread (``loop_start``) and reconnects with backoff. Incoming
messages go to a ``queue.Queue`` as ``Incoming`` records; nothing else of paho
leaves this module.

Telemetry consumers use ``manual_ack=True``: a message is acknowledged
(PUBACK) only when the worker calls ``ack(incoming)`` after the TSDB accepted
its samples. The session is persistent (``clean_start=False`` and a session
expiry), so unacknowledged messages of a crashed worker are redelivered when it
reconnects with the same client id. ``receive_maximum`` bounds how many
unacknowledged messages the broker sends us, which bounds the queue.

A PUBACK is only sent on the connection the message arrived on: after a
reconnect the broker redelivers every unacknowledged message (same packet id,
DUP set), and acknowledging the stale copy could acknowledge a *different*
message that reused the packet id. The redelivered copy is then processed
(de-duplicated) and acknowledged normally.

The client certificate rotates without a restart: every ``cert_check_s`` the CA,
certificate and key files are checked (``ems_runtime.file_watch.CertificateWatch``, as
the edge agent does); when their content changed and loads as a matching pair, the link
disconnects cleanly (DISCONNECT: the persistent session stays) and connects
again with the new certificate. Messages received on the old connection and not
yet acknowledged are not acknowledged on the new one (above): the broker
redelivers them and the worker's (site, seq) de-duplication drops the copies. A
pair that does not load (half written, key of another certificate) is logged
once and the loaded certificate stays in use.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ems_runtime.file_watch import CertificateWatch
from ems_runtime.tls import broker_client_context
from ingest.errors import BrokerError, ConfigError

__all__ = ["Incoming", "MqttLink", "TlsFiles"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def client_context(tls: TlsFiles) -> ssl.SSLContext:
    """A client context verifying the broker (hostname included) and presenting our certificate and key.

    Files that do not load raise ``ConfigError`` naming ``broker.ca`` or ``broker.cert``.
    """
    return broker_client_context(tls.ca, tls.cert, tls.key, ConfigError)


@dataclass(slots=True)
class Incoming:
    """One received PUBLISH."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool
    generation: int                       # which connection it arrived on
    received: float = field(default_factory=time.monotonic)


class MqttLink:
    """One MQTT v5 client (mTLS unless ``tls`` is None), with subscriptions restored on every (re)connect.

    ``manual_ack``: the caller acknowledges QoS 1 messages with ``ack``.
    ``persistent``: ``clean_start=False`` with ``session_expiry_s``; otherwise a clean session.
    ``cert_check_s``: how often the TLS files are checked for a rotation (0: never).
    """

    def __init__(self, host: str, port: int, tls: TlsFiles | None, client_id: str, *, subscriptions: tuple[str, ...],
                 manual_ack: bool, persistent: bool, session_expiry_s: int = 0, receive_maximum: int = 1000,
                 keepalive_s: int = 30, incoming: "queue.Queue[Incoming] | None" = None,
                 on_connection_change=None, cert_check_s: float = 5.0) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.tls = tls
        self.cert_check_s = cert_check_s
        self.certificate_switches = 0
        self.subscriptions = subscriptions
        self.incoming: queue.Queue[Incoming] = incoming if incoming is not None else queue.Queue()
        self._persistent = persistent
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._keepalive_s = keepalive_s
        self._on_connection_change = on_connection_change
        self._lock = threading.Lock()
        self._generation = 0
        self._connected = threading.Event()
        self._disconnected = threading.Event()   # paho's thread saw the connection end (a certificate switch waits)
        self._subscribed = threading.Event()
        self._last_error = ""
        self._unsubscribing = False
        self._unsubscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5,
                                   manual_ack=manual_ack)
        self._rotation = CertificateWatch(tls.cert, tls.key, tls.ca, lambda: client_context(tls), errors=(ConfigError,),
                                          logger=log) if tls is not None else None
        if self._rotation is not None:
            self._client.tls_set_context(self._rotation.first())
        self._running = False
        self._lifecycle = threading.Lock()       # start/stop vs. a certificate switch
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_unsubscribe = lambda *args: self._unsubscribed.set()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start connecting in the background (paho's thread); see ``wait_connected``."""
        with self._lifecycle:
            self._connect_in_background()
            self._running = True
        if self._watcher is None and self._rotation is not None and self.cert_check_s > 0:
            self._watcher = threading.Thread(target=self._rotation.watch, args=(self._stopping, self.cert_check_s,
                                                                                self._switch_certificate),
                                             name="mqtt-tls-watch", daemon=True)
            self._watcher.start()

    def _connect_in_background(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry_s if self._persistent else 0
        props.ReceiveMaximum = self._receive_maximum
        self._client.connect_async(self.host, self.port, keepalive=self._keepalive_s,
                                   clean_start=not self._persistent, properties=props)
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> None:
        """Block until connected and subscribed; raises BrokerError naming the last failure."""
        if not (self._connected.wait(timeout) and self._subscribed.wait(max(0.1, timeout))):
            raise BrokerError(f"not connected to {self.host}:{self.port} after {timeout:.0f}s"
                              + (f": {self._last_error}" if self._last_error else ""))

    def unsubscribe_all(self, timeout: float = 5.0) -> bool:
        """Stop new deliveries (graceful shutdown): unsubscribe, and do not subscribe again on reconnect.

        Returns True when the broker confirmed (UNSUBACK) within ``timeout``. Messages the broker
        routed to us before still arrive and are processed.
        """
        self._unsubscribing = True
        if not self.connected or not self.subscriptions:
            return False
        self._unsubscribed.clear()
        rc, _mid = self._client.unsubscribe(list(self.subscriptions))
        return rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._unsubscribed.wait(timeout)

    def stop(self) -> None:
        self._stopping.set()
        with self._lifecycle:
            self._running = False
            self._client.disconnect()
            self._client.loop_stop()
        if self._watcher is not None:
            self._watcher.join(5)

    # -- client certificate rotation ---------------------------------------------------------------
    def check_certificate(self) -> bool:
        """Reconnect with the CA, certificate and key on disk if they changed and load as a matching pair.

        Returns True when the link switched. A changed pair that does not load is logged once per state
        of the files, and the loaded certificate stays in use.
        """
        assert self._rotation is not None
        context = self._rotation.check()
        return context is not None and self._switch_certificate(context)

    def _switch_certificate(self, context: ssl.SSLContext) -> bool:
        """Reconnect with ``context`` (the rotated files); False when the link is stopped."""
        tls = self.tls
        assert tls is not None
        with self._lifecycle:
            if not self._running:
                return False
            log.info("certificate %s and key %s changed; reconnecting to %s:%s with them", tls.cert, tls.key,
                     self.host, self.port)
            # paho offers no way to replace a configured context; it reads this one at every connect.
            self._client._ssl_context = context  # noqa: SLF001
            self._disconnected.clear()
            connected = self._connected.is_set()
            self._client.disconnect()        # clean: the broker keeps the session and its unacknowledged messages
            if connected:
                self._disconnected.wait(5)   # paho's thread sends DISCONNECT and closes the socket
            self._client.loop_stop()
            with self._lock:                 # nothing of the old connection is acknowledged from here on
                self._connected.clear()
                self._subscribed.clear()
            self._connect_in_background()
            self.certificate_switches += 1
        return True

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def network_alive(self) -> bool:
        """True while paho's network thread (``loop_start``) runs: it reads, reconnects and acknowledges."""
        thread = getattr(self._client, "_thread", None)     # paho 2.x keeps loop_start's thread here
        return thread is not None and thread.is_alive()

    @property
    def generation(self) -> int:
        return self._generation

    # -- operations ------------------------------------------------------------------------------
    def ack(self, message: Incoming) -> bool:
        """PUBACK ``message`` if it arrived on the current connection; False when it was not sent."""
        if message.qos == 0:
            return True
        with self._lock:
            if message.generation != self._generation or not self._connected.is_set():
                return False
            rc = self._client.ack(message.mid, message.qos)
        return rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                timeout: float = 10.0, stop: threading.Event | None = None) -> None:
        """Publish and wait for the broker's PUBACK (QoS 1), across reconnects, up to ``timeout``.

        Raises BrokerError on timeout, on ``stop`` or when paho refuses the message.
        """
        deadline = time.monotonic() + timeout

        def expired() -> bool:
            return time.monotonic() > deadline or (stop is not None and stop.is_set())

        while True:
            while not self._connected.wait(0.2):
                if expired():
                    raise BrokerError(f"publish to {topic}: not connected to the broker within {timeout:.0f}s")
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                continue                      # lost the connection in between; publish again once back
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise BrokerError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
            while not expired():
                try:
                    info.wait_for_publish(0.5)
                except (RuntimeError, ValueError) as exc:
                    raise BrokerError(f"publish to {topic} failed: {exc}") from exc
                if info.is_published():
                    return
            raise BrokerError(f"publish to {topic} not acknowledged within {timeout:.0f}s")

    # -- paho callbacks (paho's thread) ------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._last_error = f"connection refused: {reason_code}"
            log.warning("broker %s:%s refused %s: %s", self.host, self.port, self.client_id, reason_code)
            return
        with self._lock:
            self._generation += 1
            self._connected.set()
        log.info("connected to %s:%s as %s (session present: %s)", self.host, self.port, self.client_id,
                 flags.session_present)
        if self.subscriptions and not self._unsubscribing:
            options = SubscribeOptions(qos=1)
            client.subscribe([(topic, options) for topic in self.subscriptions])
        else:
            self._subscribed.set()
        if self._on_connection_change:
            self._on_connection_change(True)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            self._last_error = f"subscription refused: {', '.join(failed)}"
            log.error("broker refused subscription %s: %s", self.subscriptions, ", ".join(failed))
            return
        self._subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            was = self._connected.is_set()
            self._connected.clear()
            self._subscribed.clear()
        self._disconnected.set()
        if was:
            log.warning("disconnected from %s:%s: %s", self.host, self.port, reason_code)
            if self._on_connection_change:
                self._on_connection_change(False)
        else:
            self._last_error = str(reason_code)

    def _on_message(self, client, userdata, message) -> None:
        # Runs on paho's network thread: an exception here would end that thread (no more reads,
        # acks or reconnects), so nothing a message carries may raise. A topic that is not valid
        # UTF-8 (the broker should refuse it) is passed on escaped, for the consumer to reject.
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = bytes(message._topic).decode("utf-8", "backslashreplace")  # noqa: SLF001 - paho keeps raw bytes
        self.incoming.put(Incoming(topic, message.payload, message.mid, message.qos, message.retain,
                                   self._generation))
