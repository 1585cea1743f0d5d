"""The north-bound client's MQTT boundary: the only module of ``northbound`` that imports paho.

``CommandLink`` is one paho 2.x client (MQTT v5, mTLS with the platform's broker
certificate) whose network loop runs in paho's own thread (``loop_start``) and
reconnects with backoff (1..30 s). It does two things:

* ``publish(topic, payload)`` — a coroutine that returns once the broker sent its
  PUBACK (QoS 1) and raises ``BrokerError`` when it cannot: ``unreachable`` (not
  connected: nothing is handed to paho, so nothing is queued behind our back),
  ``refused`` (PUBACK with a failure reason code, e.g. 135 not authorised),
  ``no_subscribers`` (PUBACK reason 16: the broker took the message and delivered
  it to nobody — the site is not connected or has not subscribed yet; sessions
  of the edge start clean, so nothing was queued for it) or ``timeout`` (no
  PUBACK within ``publish_timeout_s``; paho may still deliver it after a
  reconnect — a command carries its expiry, so a late copy is refused by the
  edge, and its id is never reused).
* every message on the ``subscriptions`` (re-subscribed on each connect, QoS 1)
  goes to ``incoming``, a bounded ``queue.Queue`` of ``Received``; when it is full
  the message is dropped and counted (``dropped``), never blocking paho's thread.

Nothing of paho leaves this module; the callbacks never raise (an exception there
would end paho's network thread).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ems_runtime.tls import broker_client_context
from northbound.errors import BrokerError, ConfigError

__all__ = ["BrokerTls", "CommandLink", "Received", "broker_context"]

log = logging.getLogger(__name__)

NO_MATCHING_SUBSCRIBERS = 16
"""MQTT v5 PUBACK reason "No matching subscribers": a success for the broker, a lost command for us."""


@dataclass(frozen=True)
class BrokerTls:
    """PEM files for the broker connection: the platform CA, our certificate and key."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class Received:
    """One message from a subscription: its topic (escaped if not UTF-8) and raw payload."""

    topic: str
    payload: bytes


def broker_context(tls: BrokerTls) -> ssl.SSLContext:
    """A TLS client context verifying the broker and presenting our certificate; ConfigError naming the file."""
    return broker_client_context(tls.ca, tls.cert, tls.key, ConfigError)


class CommandLink:
    """One MQTT v5 connection to the platform broker; constructing does no I/O, ``start()`` connects.

    ``tls`` None means plain MQTT (local tests only). ``queue_max`` bounds ``incoming``.
    """

    def __init__(self, host: str, port: int, tls: BrokerTls | None, *, client_id: str = "ems-northbound",
                 subscriptions: tuple[str, ...] = (), keepalive_s: int = 30, publish_timeout_s: float = 5.0,
                 queue_max: int = 1000) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.subscriptions = subscriptions
        self.publish_timeout_s = publish_timeout_s
        self.incoming: queue.Queue[Received] = queue.Queue(maxsize=queue_max)
        self.dropped = 0
        self.last_error = ""
        self._keepalive_s = keepalive_s
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[None], str]] = {}
        self._early: dict[int, tuple[str, str] | None] = {}      # PUBACKs that arrived before publish() registered the mid
        self._abandoned: dict[int, None] = {}        # mids whose publish() timed out (oldest first)
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        if tls is not None:
            self._client.tls_set_context(broker_context(tls))
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Connect in the background (paho's thread), reconnecting until ``stop()``."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        self._client.connect_async(self.host, self.port, keepalive=self._keepalive_s, clean_start=True,
                                   properties=props)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for loop, future, _ in waiting.values():
            loop.call_soon_threadsafe(_fail, future, BrokerError("unreachable", "the link was closed"))

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected (True) or ``timeout`` (False)."""
        return self._connected.wait(timeout)

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish with QoS 1 and return after the broker's PUBACK; raises BrokerError (see module doc)."""
        if not self._connected.is_set():
            raise BrokerError("unreachable", f"not connected to {self.host}:{self.port}"
                              + (f" ({self.last_error})" if self.last_error else ""))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        # Not under self._lock: paho calls on_publish holding its own message lock, which publish() takes too.
        info = self._client.publish(topic, payload, qos=1, retain=False)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerError("unreachable", f"publish to {topic}: {paho.error_string(info.rc)}")
        with self._lock:
            if info.mid in self._early:
                _settle(future, self._early.pop(info.mid), topic)
            else:
                self._waiting[info.mid] = (loop, future, topic)
        try:
            await asyncio.wait_for(future, self.publish_timeout_s)
        except asyncio.TimeoutError:
            raise BrokerError("timeout", f"publish to {topic}: no PUBACK within {self.publish_timeout_s:g} s") from None
        finally:
            with self._lock:
                if self._waiting.pop(info.mid, None) is not None and not future.done():
                    self._abandoned[info.mid] = None     # its PUBACK may still come: never settle another with it
                    if len(self._abandoned) > 1000:
                        self._abandoned.pop(next(iter(self._abandoned)))

    # -- paho callbacks (paho's thread): never raise ------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = f"connection refused: {reason_code}"
            log.warning("broker %s:%s refused %s: %s", self.host, self.port, self.client_id, reason_code)
            return
        self.last_error = ""
        self._connected.set()
        log.info("connected to broker %s:%s", self.host, self.port)
        if self.subscriptions:
            client.subscribe([(topic, SubscribeOptions(qos=1)) for topic in self.subscriptions])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            self.last_error = f"subscription refused: {', '.join(failed)}"
            log.error("broker refused subscriptions %s: %s", self.subscriptions, ", ".join(failed))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set():
            log.warning("disconnected from broker %s:%s: %s", self.host, self.port, reason_code)
        self._connected.clear()
        self.last_error = str(reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        failure: tuple[str, str] | None = None
        if reason_code.is_failure:
            failure = ("refused", f"PUBACK {reason_code}")
        elif reason_code.value == NO_MATCHING_SUBSCRIBERS:
            failure = ("no_subscribers", f"PUBACK {reason_code}: no site is subscribed")
        with self._lock:
            if self._abandoned.pop(mid, 0) is None:
                return
            waiting = self._waiting.pop(mid, None)
            if waiting is None:
                self._early[mid] = failure
                return
        loop, future, topic = waiting
        loop.call_soon_threadsafe(_settle, future, failure, topic)

    def _on_message(self, client, userdata, message) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = bytes(message._topic).decode("utf-8", "backslashreplace")  # noqa: SLF001 - paho keeps raw bytes
        try:
            self.incoming.put_nowait(Received(topic, bytes(message.payload)))
        except queue.Full:
            self.dropped += 1


def _settle(future: asyncio.Future[None], failure: tuple[str, str] | None, topic: str) -> None:
    if future.done():
        return
    if failure is None:
        future.set_result(None)
    else:
        kind, detail = failure
        future.set_exception(BrokerError(kind, f"publish to {topic}: {detail}"))


def _fail(future: asyncio.Future[None], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
