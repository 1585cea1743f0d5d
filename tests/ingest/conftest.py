"""Fixtures of the ingest tests: a real Prometheus per test and ingest worker processes."""

from __future__ import annotations

import json
import queue

from pathlib import Path
from typing import Callable, Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devenv.mosquitto import MosquittoBroker
from devenv.pki import LocalPki
from devenv.prometheus import PrometheusServer
from ingest_support import EdgePublisher, IngestProcess


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[PrometheusServer]:
    """A real Prometheus with the remote-write receiver and a 30d out-of-order window."""
    server = PrometheusServer(tmp_path / "prometheus")
    server.start()
    yield server
    server.stop(kill=True)


@pytest.fixture
def ingest_factory(tmp_path: Path, broker: MosquittoBroker, pki: LocalPki,
                   prometheus: PrometheusServer) -> Iterator[Callable[..., IngestProcess]]:
    """``ingest_factory(client_id="ingest-0", **config)`` → a started ``ems-ingest run`` process."""
    started: list[IngestProcess] = []

    def start(client_id: str = "ingest-0", **config: object) -> IngestProcess:
        proc = IngestProcess(tmp_path / client_id, broker=broker, pki=pki, prometheus=prometheus,
                             client_id=client_id, **config)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def edge(broker: MosquittoBroker, pki: LocalPki) -> Iterator[EdgePublisher]:
    publisher = EdgePublisher(broker, pki)
    yield publisher
    publisher.close()


@pytest.fixture
def dead_letters(broker):
    """Messages on ems/v1/deadletter/# as (topic, decoded JSON), observed on the plain listener."""
    got: queue.Queue = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="deadletter-observer", protocol=paho.MQTTv5)
    client.on_message = lambda c, u, m: got.put((m.topic, json.loads(m.payload)))
    subscribed = queue.Queue()
    client.on_subscribe = lambda *a: subscribed.put(True)
    client.connect("127.0.0.1", broker.plain_port)
    client.loop_start()
    client.subscribe("ems/v1/deadletter/#", qos=1)
    subscribed.get(timeout=10)
    yield got
    client.disconnect()
    client.loop_stop()
