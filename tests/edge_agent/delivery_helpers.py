"""Test helpers for the delivery side: a QoS 1 subscriber that records everything it receives.

The subscriber uses the broker's plain listener with a persistent session
(clean_session=False, fixed client id), so messages published while it is
disconnected — or while the broker restarts — are queued for it, and
``collect`` de-duplicates readings by (site, seq).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from ems_contract.telemetry import Reading
from ems_contract.telemetry_v2 import decode_telemetry


@dataclass
class Received:
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def telemetry(self) -> list[Reading]:
        with self.lock:
            msgs = list(self.messages)
        out: list[Reading] = []
        for topic, payload, _ in msgs:
            if topic.endswith("/telemetry"):
                out.extend(decode_telemetry(payload, topic=topic).readings)
        return out

    def seq_counts(self) -> Counter:
        return Counter(r.seq for r in self.telemetry())

    def unique_seqs(self) -> set[int]:
        return set(self.seq_counts())

    def on_topic(self, topic: str) -> list[tuple[bytes, bool]]:
        with self.lock:
            return [(p, r) for t, p, r in self.messages if t == topic]


class Subscriber:
    """A paho subscriber on the plain port; ``received`` fills in from paho's thread."""

    def __init__(self, port: int, topic: str = "ems/v1/#", client_id: str = "test-observer") -> None:
        self.port = port
        self.topic = topic
        self.received = Received()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                                  protocol=paho.MQTTv311)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.reconnect_delay_set(0.1, 0.5)

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client, userdata, msg) -> None:
        with self.received.lock:
            self.received.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def start(self, timeout: float = 10.0) -> "Subscriber":
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError("subscriber did not get SUBACK")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def wait_for(self, predicate, timeout: float = 20.0, interval: float = 0.1) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.received):
                return True
            time.sleep(interval)
        return predicate(self.received)
