"""The broker's generated mosquitto.conf and ACL, run by a real Mosquitto (paths and ports
rewritten to a temp dir): mTLS on the edge listener, CN = username, a site confined to
ems/v1/<its site>/, plain MQTT for in-namespace consumers."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from components.broker import ACL, MOSQUITTO_CONF, MQTT_PORT, MQTTS_PORT
from devenv.mosquitto import find_mosquitto, free_port, wait_for_port
from devenv.pki import LocalPki

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(tmp_path: Path, pki: LocalPki):
    tls_port, plain_port = free_port(), free_port()
    (tmp_path / "data").mkdir()
    (tmp_path / "acl").write_text(ACL)
    conf = (MOSQUITTO_CONF
            .replace("/mosquitto/tls/ca.crt", str(pki.ca))
            .replace("/mosquitto/tls/tls.crt", str(pki.server.cert))
            .replace("/mosquitto/tls/tls.key", str(pki.server.key))
            .replace("/mosquitto/data/", f"{tmp_path}/data/")
            .replace("/mosquitto/config/acl", str(tmp_path / "acl"))
            .replace(f"listener {MQTTS_PORT}\n", f"listener {tls_port} 127.0.0.1\n")
            .replace(f"listener {MQTT_PORT}\n", f"listener {plain_port} 127.0.0.1\n")
            .replace("log_dest stdout", f"log_dest file {tmp_path}/broker.log\nlog_type all"))
    assert str(tls_port) in conf and str(plain_port) in conf
    if os.geteuid() == 0:  # in the pod it runs as uid 10001; as root it would switch to "mosquitto"
        conf = "user root\n" + conf
    (tmp_path / "mosquitto.conf").write_text(conf)
    log = open(tmp_path / "stdout", "wb")
    proc = subprocess.Popen([find_mosquitto(), "-c", str(tmp_path / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(tls_port, 10, proc)
        wait_for_port(plain_port, 10, proc)
        yield tls_port, plain_port
    finally:
        proc.kill()
        proc.wait(10)
        log.close()


def _client(name: str, protocol: int = mqtt.MQTTv311) -> mqtt.Client:
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=protocol)


def test_site_publishes_only_its_own_topics_and_consumers_read_on_1883(broker, pki: LocalPki) -> None:
    tls_port, plain_port = broker
    received: list[str] = []
    got = threading.Event()
    subscribed = threading.Event()
    consumer = _client("ingest-0")
    consumer.on_subscribe = lambda *a: subscribed.set()
    consumer.on_message = lambda c, u, msg: (received.append(msg.topic), got.set())
    consumer.connect("127.0.0.1", plain_port)
    consumer.subscribe("ems/v1/#", qos=1)
    consumer.loop_start()
    # MQTT v5 (what the edge agent negotiates first): a refused PUBLISH gets PUBACK reason 135.
    site = _client("edge-sub-07", mqtt.MQTTv5)
    cert = pki.client("sub-07")
    site.tls_set(ca_certs=str(pki.ca), certfile=str(cert.cert), keyfile=str(cert.key))
    site_connected = threading.Event()
    acks: dict[int, int] = {}
    site.on_connect = lambda c, u, flags, rc, props=None: site_connected.set() if not rc.is_failure else None
    site.on_publish = lambda c, u, mid, rc, props=None: acks.__setitem__(mid, rc.value)
    site.connect("127.0.0.1", tls_port)
    site.loop_start()
    try:
        assert subscribed.wait(5)
        assert site_connected.wait(5), "the site's mTLS connection was not accepted"
        forged = site.publish("ems/v1/sub-99/telemetry", b"forged", qos=1)
        mine = site.publish("ems/v1/sub-07/telemetry", b"mine", qos=1)
        forged.wait_for_publish(5)
        mine.wait_for_publish(5)
        assert acks == {forged.mid: 135, mine.mid: 0}, acks   # 135: not authorized
        assert got.wait(5)
        consumer.publish("ems/v1/probe", b"x", qos=1).wait_for_publish(5)  # a marker after both
        for _ in range(50):
            if "ems/v1/probe" in received:
                break
            threading.Event().wait(0.1)
        assert received == ["ems/v1/sub-07/telemetry", "ems/v1/probe"]
    finally:
        site.loop_stop()
        consumer.loop_stop()


def test_edge_listener_rejects_clients_without_a_certificate(broker, pki: LocalPki) -> None:
    tls_port, _ = broker
    anonymous = _client("anon")
    anonymous.tls_set(ca_certs=str(pki.ca))
    with pytest.raises(OSError):
        anonymous.connect("127.0.0.1", tls_port)
        anonymous.loop(2)
        anonymous.loop(2)
        if not anonymous.is_connected():
            raise ConnectionRefusedError("not connected")
