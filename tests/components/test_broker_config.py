"""The broker's generated mosquitto.conf, dynamic-security file and 1883 ACL, run by the real
Mosquitto with Debian's dynsec plugin (paths and ports rewritten to a temp dir): mTLS on 8883
for every workload client, CN = username = client id, a site confined to ems/v1/<its site>/,
only the ingest workers' identities in the ingest's shared group (a site's attempt refused with
SUBACK 135, no message lost to it), dead letters written by the ingest, unknown identities
refused, a worker's session (in-flight and queued readings) out of reach of every other
certificate, 1883 read-only for anonymous tools and on loopback only, the twin API's identities reading retained
twins only — and the generated ingest.toml files driving the ingest's own MQTT client against it."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from components.broker import CONFIG_DIR, MQTT_PORT, MQTTS_PORT, dynsec_config, mosquitto_conf, plain_acl
from components.ingest import SHARED_GROUP, TLS_DIR, ingest_toml, validate_ingest_toml, worker_identities
from components.twin_api import MQTT_TLS_DIR, replica_identities, twin_api_toml
from devenv.mosquitto import find_dynsec_plugin, find_mosquitto, free_port, wait_for_port
from devenv.pki import LocalPki, make_pki
from ems_contract.command import command_result_topic, command_topic
from ems_contract.telemetry import (deadletter_topic, encode_twin, seen_topic, telemetry_subscription, telemetry_topic,
                                    twin_topic)
from ingest.config import parse_config
from ingest.mqtt import Incoming, MqttLink, TlsFiles
from ingest.twin_api import TWIN_SUBSCRIPTION

pytestmark = pytest.mark.integration

INGEST = "ems-ingest"            # the platform's ingest identity prefix for namespace "ems"
WORKERS = worker_identities(INGEST, 2)      # ems-ingest-ingest-0 and -1: one certificate per worker
BRIDGE = "ems-bridge"
TWIN = "ems-twin-api"            # the twin read API's identity prefix
TWINS = replica_identities(TWIN, 2)         # ems-twin-api-twin-api-0 and -1: one certificate per replica
SITES = ("sub-07", "sub-08", "sub-09")    # the stack's edge sites
NORTHBOUND = "ems-northbound"             # the north-bound client's identity
NORTHBOUND_SITES = ("sub-07", "sub-08")   # the sites it may command (sub-09 is not one of them)
REFUSED = 135                    # MQTT v5 PUBACK / SUBACK reason "Not authorized"
GRANTED_QOS1 = 1
NO_SUBSCRIBERS = 16              # MQTT v5 PUBACK reason "No matching subscribers" (a success)


@dataclass
class RunningBroker:
    proc: subprocess.Popen
    tls_port: int
    plain_port: int
    config_dir: Path

    def __iter__(self):
        return iter((self.tls_port, self.plain_port))


def _start_broker(tmp_path: Path, pki: LocalPki) -> RunningBroker:
    """The generated config files (for SITES, BRIDGE, WORKERS and TWINS) in ``tmp_path/config``, run by the real Mosquitto."""
    tls_port, plain_port = free_port(), free_port()
    (tmp_path / "data").mkdir()
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "dynamic-security.json").write_text(dynsec_config((*SITES, BRIDGE), WORKERS, SHARED_GROUP, TWINS,
                                                                     (NORTHBOUND,), NORTHBOUND_SITES))
    (config_dir / "acl-plain").write_text(plain_acl())
    conf = (mosquitto_conf(find_dynsec_plugin())
            .replace("/mosquitto/tls/ca.crt", str(pki.ca))
            .replace("/mosquitto/tls/tls.crt", str(pki.server.cert))
            .replace("/mosquitto/tls/tls.key", str(pki.server.key))
            .replace("/mosquitto/data/", f"{tmp_path}/data/")
            .replace(f"{CONFIG_DIR}/", f"{config_dir}/")
            .replace(f"listener {MQTTS_PORT}\n", f"listener {tls_port} 127.0.0.1\n")
            .replace(f"listener {MQTT_PORT} ", f"listener {plain_port} ")     # the generated bind address stays
            .replace("log_dest stdout", f"log_dest file {tmp_path}/broker.log\nlog_type all"))
    assert str(tls_port) in conf and str(plain_port) in conf and "/mosquitto/" not in conf
    if os.geteuid() == 0:  # in the pod it runs as uid 10001; as root it would switch to "mosquitto"
        conf = "user root\n" + conf
    (tmp_path / "mosquitto.conf").write_text(conf)
    with open(tmp_path / "stdout", "wb") as log:
        proc = subprocess.Popen([find_mosquitto(), "-c", str(tmp_path / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(tls_port, 10, proc)
        wait_for_port(plain_port, 10, proc)
    except Exception:
        proc.kill()
        proc.wait(10)
        raise
    return RunningBroker(proc, tls_port, plain_port, config_dir)


@pytest.fixture
def broker(tmp_path: Path, pki: LocalPki):
    running = _start_broker(tmp_path, pki)
    try:
        yield running
    finally:
        running.proc.kill()
        running.proc.wait(10)


class Peer:
    """A raw MQTT v5 client (over mTLS with ``identity``'s certificate, or plain without one)
    that records PUBACK reasons, received topics and whether the broker had a session for it.

    On 8883 the broker replaces ``client_id`` by the certificate's CN, and one CN holds one
    connection: a second Peer with the same certificate takes the first one's connection."""

    def __init__(self, pki: LocalPki, port: int, identity: str | None, client_id: str, *, username: str | None = None,
                 clean_start: bool = True, session_expiry_s: int = 0, host: str = "127.0.0.1") -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if identity is not None:
            pair = pki.client(identity)
            self.client.tls_set(ca_certs=str(pki.ca), certfile=str(pair.cert), keyfile=str(pair.key))
        if username is not None:
            self.client.username_pw_set(username)
        self.acks: dict[int, int] = {}
        self.received: "queue.Queue[str]" = queue.Queue()
        connected, self._subacks = threading.Event(), threading.Semaphore(0)
        self.session_present: bool | None = None

        def on_connect(c, u, flags, rc, props=None) -> None:
            if not rc.is_failure:
                self.session_present = flags.session_present
                connected.set()
        self.client.on_connect = on_connect
        self.client.on_publish = lambda c, u, mid, rc, props=None: self.acks.__setitem__(mid, rc.value)
        self.granted: list[int] = []
        self.client.on_subscribe = lambda c, u, mid, rcs, props=None: (self.granted.extend(r.value for r in rcs),
                                                                        self._subacks.release())
        self.client.on_message = lambda c, u, msg: self.received.put(msg.topic)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry_s
        self.client.connect(host, port, clean_start=clean_start, properties=props)
        self.client.loop_start()
        assert connected.wait(5), f"{identity}: the mTLS connection was not accepted"

    def subscribe(self, *filters: str) -> None:
        for f in filters:
            self.client.subscribe(f, qos=1)
            assert self._subacks.acquire(timeout=5), f"no SUBACK for {f}"

    def publish(self, topic: str, payload: bytes = b"{}", *, retain: bool = False) -> int:
        """Publish QoS 1 and return the broker's PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)
        return self.acks[info.mid]

    def topics_until(self, marker: str) -> list[str]:
        """Everything received before (and including) ``marker``, which must arrive within 5 s."""
        seen: list[str] = []
        while marker not in seen:
            seen.append(self.received.get(timeout=5))
        return seen

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish_once(pki: LocalPki, port: int, identity: str, topic: str) -> int:
    """PUBACK reason of one QoS 1 publish on a fresh connection. (Mosquitto 2.0.11 with
    ``max_queued_messages 0`` closes a client's connection after refusing its publish.) No other
    connection of ``identity`` may be open: this one would take it over."""
    peer = Peer(pki, port, identity, f"{identity}-once")
    try:
        return peer.publish(topic, b"forged")
    finally:
        peer.close()


def _ingest_worker(pki: LocalPki, port: int, pod: str, tmp_path: Path) -> MqttLink:
    """The ingest's own MQTT client, configured from the generated ingest.toml (cert paths and port
    rewritten to this test's files), with pod ``pod``'s own certificate and the client id its pod gets."""
    pair = pki.client(f"{INGEST}-{pod}")
    text = (ingest_toml("localhost", "http://127.0.0.1:9/api/v1/write")
            .replace(f"{TLS_DIR}/ca.crt", str(pki.ca)).replace(f"{TLS_DIR}/tls.crt", str(pair.cert))
            .replace(f"{TLS_DIR}/tls.key", str(pair.key)).replace(f"port = {MQTTS_PORT}", f"port = {port}"))
    raw = tomllib.loads(text)
    raw["broker"]["client_id"] = f"{INGEST}-{pod}"      # what EMS_BROKER_CLIENT_ID gives pod <pod>
    b = parse_config(raw, tmp_path).broker
    assert b.tls and b.cert == pair.cert
    link = MqttLink(b.host, b.port, TlsFiles(b.ca, b.cert, b.key), b.client_id,
                    subscriptions=(telemetry_subscription(b.group),), manual_ack=True, persistent=True,
                    session_expiry_s=b.session_expiry_s, receive_maximum=b.receive_maximum)
    link.start()
    link.wait_connected(10)
    return link


def test_ingest_workers_share_the_telemetry_of_every_site_over_mtls(broker, pki: LocalPki, tmp_path: Path) -> None:
    tls_port, _ = broker
    workers = [_ingest_worker(pki, tls_port, f"ingest-{i}", tmp_path) for i in range(2)]
    sites = [Peer(pki, tls_port, site, f"edge-{site}") for site in ("sub-07", "sub-08")]
    try:
        for i in range(4):
            for site, name in zip(sites, ("sub-07", "sub-08")):
                assert site.publish(telemetry_topic(name), str(i).encode()) == 0
        per_worker: list[list[Incoming]] = [[], []]
        deadline = time.monotonic() + 10
        while sum(map(len, per_worker)) < 8 and time.monotonic() < deadline:
            for w, link in enumerate(workers):
                try:
                    message = link.incoming.get(timeout=0.05)
                except queue.Empty:
                    continue
                assert link.ack(message)
                per_worker[w].append(message)
        # Two certificates, two client ids: neither session took the other over.
        assert all(link.connected for link in workers)
        topics = sorted(m.topic for w in per_worker for m in w)
        assert topics == sorted([telemetry_topic("sub-07")] * 4 + [telemetry_topic("sub-08")] * 4)
        assert per_worker[0] and per_worker[1], "the shared subscription did not split the load"
        assert workers[0].incoming.empty() and workers[1].incoming.empty()
    finally:
        for peer in sites:
            peer.close()
        for link in workers:
            link.stop()


def test_the_ingest_identity_writes_dead_letters_and_nothing_else(broker, pki: LocalPki) -> None:
    tls_port, plain_port = broker
    tool = Peer(pki, plain_port, None, "operator-tool")     # 1883: an in-namespace tool watching everything
    ingest, other = Peer(pki, tls_port, WORKERS[0], WORKERS[0]), WORKERS[1]   # two workers, one role
    own = f"ems/v1/{WORKERS[0]}/marker"
    site = Peer(pki, tls_port, "sub-07", "edge-sub-07")
    try:
        tool.subscribe("ems/v1/#")
        # Not twins, status or dead letters; not telemetry outside its group, nor through another group.
        ingest.subscribe("ems/v1/+/twin/+", "ems/v1/sub-07/status", "ems/v1/deadletter/#", telemetry_subscription(),
                         telemetry_subscription("other"), "$share/ems-ingest/ems/v1/#", telemetry_subscription(SHARED_GROUP))
        assert ingest.granted == [REFUSED] * 6 + [GRANTED_QOS1]
        assert ingest.publish(deadletter_topic("bad_json")) == 0
        assert _publish_once(pki, tls_port, other, telemetry_topic("sub-07")) == REFUSED   # cannot forge readings
        assert _publish_once(pki, tls_port, other, "ems/v1/sub-07/twin/tx1") == REFUSED
        assert site.publish("ems/v1/sub-07/twin/tx1") == 0
        assert site.publish("ems/v1/sub-07/status") == 0
        assert ingest.publish(own) == 0                                      # its own subtree, like every identity
        assert tool.topics_until(own) == [deadletter_topic("bad_json"), "ems/v1/sub-07/twin/tx1", "ems/v1/sub-07/status", own]
        ingest.subscribe(own)
        assert ingest.granted[-1] == GRANTED_QOS1
        assert ingest.publish(own) == 0
        # Neither twins, nor status, nor dead letters (even its own) are delivered to the ingest identity.
        assert ingest.topics_until(own) == [own]
    finally:
        for peer in (site, ingest, tool):
            peer.close()


def test_a_site_reads_and_writes_only_its_own_subtree(broker, pki: LocalPki) -> None:
    tls_port, plain_port = broker
    tool = Peer(pki, plain_port, None, "operator-tool")
    victim = Peer(pki, tls_port, "sub-07", "edge-sub-07")
    tool.subscribe("ems/v1/#")
    assert _publish_once(pki, tls_port, "sub-09", telemetry_topic("sub-07")) == REFUSED
    assert _publish_once(pki, tls_port, "sub-09", deadletter_topic("bad_json")) == REFUSED
    # Presenting a worker's name as the CONNECT username and client id changes nothing: the CN is both.
    spy = Peer(pki, tls_port, "sub-09", WORKERS[0], username=WORKERS[0])
    try:
        # Dynamic security checks every SUBSCRIBE: only the site's own subtree is granted.
        spy.subscribe(telemetry_topic("sub-07"), telemetry_subscription(), "$share/spies/ems/v1/+/telemetry",
                      "$share/spies/#", "#", "ems/v1/sub-09/#")
        assert spy.granted == [REFUSED] * 5 + [GRANTED_QOS1]
        assert victim.publish(telemetry_topic("sub-07")) == 0
        assert victim.publish("ems/v1/sub-07/twin/tx1") == 0
        assert spy.publish(telemetry_topic("sub-09")) == 0
        assert set(spy.topics_until(telemetry_topic("sub-09"))) == {telemetry_topic("sub-09")}
        assert tool.topics_until(telemetry_topic("sub-09")) == [
            telemetry_topic("sub-07"), "ems/v1/sub-07/twin/tx1", telemetry_topic("sub-09")]
    finally:
        for peer in (spy, victim, tool):
            peer.close()


def test_only_the_northbound_identity_publishes_commands_and_only_for_its_sites(broker, pki: LocalPki) -> None:
    tls_port, plain_port = broker
    tool = Peer(pki, plain_port, None, "operator-tool")
    site = Peer(pki, tls_port, "sub-07", "edge-sub-07")
    other = Peer(pki, tls_port, "sub-09", "edge-sub-09")
    northbound = Peer(pki, tls_port, NORTHBOUND, NORTHBOUND)
    try:
        tool.subscribe("ems/v1/#")
        # A site reads its own command topic and no other.
        site.subscribe(command_topic("sub-07"), command_topic("sub-08"), "ems/v1/+/command", command_result_topic("sub-08"))
        assert site.granted == [GRANTED_QOS1, REFUSED, REFUSED, REFUSED]
        # The north-bound client reads results (all through one filter, or per site), never commands or telemetry.
        northbound.subscribe("ems/v1/+/command-result", command_result_topic("sub-07"), command_result_topic("sub-09"),
                             command_topic("sub-07"), "ems/v1/+/telemetry", "ems/v1/#")
        assert northbound.granted == [GRANTED_QOS1, GRANTED_QOS1, REFUSED, REFUSED, REFUSED, REFUSED]
        assert northbound.publish(command_topic("sub-07"), b"set") == 0
        assert site.topics_until(command_topic("sub-07")) == [command_topic("sub-07")]
        assert other.publish(command_result_topic("sub-09")) == 0          # its own result: allowed, not delivered
        assert site.publish(command_result_topic("sub-07")) == 0
        assert set(northbound.topics_until(command_result_topic("sub-07"))) == {command_result_topic("sub-07")}
        assert tool.topics_until(command_result_topic("sub-07")) == [
            command_topic("sub-07"), command_result_topic("sub-09"), command_result_topic("sub-07")]
    finally:
        for peer in (northbound, other, site):
            peer.close()
    try:
        # Sites never publish commands (not even to themselves) nor another site's results; other identities neither;
        # the north-bound client commands only its own sites and cannot forge results.
        for identity, topic in (("sub-07", command_topic("sub-07")), ("sub-07", command_topic("sub-08")),
                                ("sub-09", command_topic("sub-09")), ("sub-09", command_result_topic("sub-07")),
                                (BRIDGE, command_topic(BRIDGE)), (WORKERS[0], command_topic("sub-07")),
                                (TWINS[0], command_topic("sub-07")), ("sub-99", command_topic("sub-07")),
                                (NORTHBOUND, command_topic("sub-09")), (NORTHBOUND, command_topic(NORTHBOUND)),
                                (NORTHBOUND, command_result_topic("sub-07")), (NORTHBOUND, telemetry_topic("sub-07"))):
            assert _publish_once(pki, tls_port, identity, topic) == REFUSED, (identity, topic)
        assert _publish_once(pki, tls_port, NORTHBOUND, command_topic("sub-08")) in (0, NO_SUBSCRIBERS)
        marker = "ems/v1/sub-08/marker"
        assert _publish_once(pki, tls_port, "sub-08", marker) == 0
        assert tool.topics_until(marker) == [command_topic("sub-08"), marker]     # nothing forged got through
    finally:
        tool.close()


def _drain(workers: list[MqttLink], count: int, timeout: float = 10) -> list[Incoming]:
    """Up to ``count`` messages from the workers (each acknowledged), within ``timeout`` seconds."""
    got: list[Incoming] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        for link in workers:
            try:
                message = link.incoming.get(timeout=0.05)
            except queue.Empty:
                continue
            assert link.ack(message)
            got.append(message)
    return got


def test_a_site_certificate_cannot_join_the_ingest_group(broker, pki: LocalPki, tmp_path: Path) -> None:
    tls_port, _ = broker
    workers = [_ingest_worker(pki, tls_port, f"ingest-{i}", tmp_path) for i in range(2)]
    victim = Peer(pki, tls_port, "sub-07", "edge-sub-07")
    names = ("sub-09", BRIDGE)
    hijackers = [Peer(pki, tls_port, cn, f"edge-{cn}") for cn in names]
    try:
        for hijacker, cn in zip(hijackers, names):
            # The ingest's exact shared subscription, one site's telemetry in its group, and a
            # share of the hijacker's own subtree: all refused.
            hijacker.subscribe(telemetry_subscription(SHARED_GROUP), f"$share/{SHARED_GROUP}/ems/v1/sub-07/telemetry",
                               f"$share/{SHARED_GROUP}/ems/v1/{cn}/#")
            assert hijacker.granted == [REFUSED] * 3
        for i in range(10):
            assert victim.publish(telemetry_topic("sub-07"), str(i).encode()) == 0
        got = _drain(workers, 10)
        assert sorted(m.payload for m in got) == [str(i).encode() for i in range(10)]   # 10 of 10, each once
        assert {m.topic for m in got} == {telemetry_topic("sub-07")}
        assert _drain(workers, 1, timeout=0.5) == []
        for hijacker, cn in zip(hijackers, names):
            hijacker.subscribe(f"ems/v1/{cn}/marker")
            assert hijacker.granted == [REFUSED] * 3 + [GRANTED_QOS1]
            assert hijacker.publish(f"ems/v1/{cn}/marker") == 0
            assert hijacker.topics_until(f"ems/v1/{cn}/marker") == [f"ems/v1/{cn}/marker"]   # none of the telemetry
    finally:
        for peer in (victim, *hijackers):
            peer.close()
        for link in workers:
            link.stop()


def test_a_certificate_the_stack_does_not_list_may_do_nothing(broker, pki: LocalPki) -> None:
    tls_port, plain_port = broker
    tool = Peer(pki, plain_port, None, "operator-tool")
    stranger = Peer(pki, tls_port, "sub-99", "edge-sub-99")      # signed by the CA, not an edge site of the stack
    try:
        tool.subscribe("ems/v1/#")
        stranger.subscribe("ems/v1/sub-99/#", telemetry_subscription(SHARED_GROUP))
        assert stranger.granted == [REFUSED, REFUSED]
        stranger.close()
        assert _publish_once(pki, tls_port, "sub-99", telemetry_topic("sub-99")) == REFUSED
        assert _publish_once(pki, tls_port, "sub-99", "$CONTROL/dynamic-security/v1") == REFUSED
        assert _publish_once(pki, tls_port, "sub-07", "$CONTROL/dynamic-security/v1") == REFUSED
        site = Peer(pki, tls_port, "sub-08", "edge-sub-08")
        try:
            assert site.publish(telemetry_topic("sub-08")) == 0
        finally:
            site.close()
        assert tool.topics_until(telemetry_topic("sub-08")) == [telemetry_topic("sub-08")]
    finally:
        for peer in (stranger, tool):
            peer.close()          # a second disconnect of the stranger is a no-op


def test_the_dynsec_file_is_only_read(tmp_path: Path, pki: LocalPki) -> None:
    """The plugin never writes its file (start, traffic, SIGTERM): a read-only ConfigMap mount is enough."""
    running = _start_broker(tmp_path, pki)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in running.config_dir.iterdir()}
    try:
        site = Peer(pki, running.tls_port, "sub-07", "edge-sub-07")
        site.subscribe(telemetry_subscription(SHARED_GROUP), "ems/v1/sub-07/#")
        assert site.granted == [REFUSED, GRANTED_QOS1] and site.publish(telemetry_topic("sub-07")) == 0
        site.close()
    finally:
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(10) == 0
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in running.config_dir.iterdir()}
    assert after == before
    assert json.loads(before["dynamic-security.json"][0])["defaultACLAccess"]["subscribe"] is False


def test_anonymous_tools_on_1883_observe_telemetry_but_cannot_forge_it(broker, pki: LocalPki, tmp_path: Path) -> None:
    tls_port, plain_port = broker
    worker = _ingest_worker(pki, tls_port, "ingest-0", tmp_path)
    tool = Peer(pki, plain_port, None, "operator-tool")
    site = Peer(pki, tls_port, "sub-07", "edge-sub-07")
    try:
        tool.subscribe("ems/v1/#")
        assert _publish_plain_once(pki, plain_port, telemetry_topic("sub-08")) == REFUSED
        assert _publish_plain_once(pki, plain_port, deadletter_topic("bad_json")) == REFUSED
        assert site.publish(telemetry_topic("sub-07"), b"real") == 0
        # The tool sees the real reading and nothing forged; the ingest receives only the real one.
        assert tool.topics_until(telemetry_topic("sub-07")) == [telemetry_topic("sub-07")]
        message = worker.incoming.get(timeout=5)
        assert (message.topic, message.payload) == (telemetry_topic("sub-07"), b"real")
        assert worker.ack(message)
        assert site.publish("ems/v1/sub-07/marker") == 0
        assert tool.topics_until("ems/v1/sub-07/marker") == ["ems/v1/sub-07/marker"]
        assert worker.incoming.empty()
    finally:
        for peer in (site, tool):
            peer.close()
        worker.stop()


def _publish_plain_once(pki: LocalPki, port: int, topic: str) -> int:
    """PUBACK reason of one anonymous QoS 1 publish on 1883, on a fresh connection."""
    peer = Peer(pki, port, None, "anonymous-once")
    try:
        return peer.publish(topic, b"forged")
    finally:
        peer.close()


POD_NETWORK = "127.0.0.2"     # another address of this host: stands for the broker pod's IP, which other pods dial


def test_the_plain_listener_is_out_of_reach_of_the_pod_network(broker, pki: LocalPki, tmp_path: Path) -> None:
    """1883 listens on loopback: a client dialling another address of the host (as a pod dials the broker pod's
    IP) is refused at TCP, so it can neither take worker ingest-0's session by its client id nor subscribe at all;
    the worker gets all 10 stranded readings back. The same client on loopback (kubectl exec / port-forward) still
    takes the session — why the listener must not be reachable from anywhere else."""
    tls_port, plain_port = broker
    with socket.socket() as elsewhere:                  # the address works here: the refusal is the bind address's
        elsewhere.bind((POD_NETWORK, 0))
        elsewhere.listen()
        socket.create_connection(elsewhere.getsockname(), timeout=2).close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((POD_NETWORK, plain_port), timeout=2)
    site = Peer(pki, tls_port, "sub-07", "edge-sub-07")
    try:
        _strand_readings(pki, tls_port, tmp_path, site)
        with pytest.raises(ConnectionRefusedError):
            Peer(pki, plain_port, None, f"{INGEST}-ingest-0", clean_start=False, session_expiry_s=3600, host=POD_NETWORK)
        assert _resume_worker(pki, tls_port, tmp_path) == STRANDED
        _strand_readings(pki, tls_port, tmp_path, site)
        thief = Peer(pki, plain_port, None, f"{INGEST}-ingest-0", clean_start=False, session_expiry_s=3600)
        try:
            assert thief.session_present is True            # on loopback the anonymous client resumes the worker's session
            assert sorted(thief.received.get(timeout=5).encode() for _ in range(10)) == [
                telemetry_topic("sub-07").encode()] * 10
        finally:
            thief.close()
    finally:
        site.close()


def test_an_offline_site_gets_no_subscribers_unless_a_loopback_tool_watches_its_commands(broker, pki: LocalPki) -> None:
    """The north-bound's re-issue for an offline site hangs on PUBACK 16. A subscription matching the command topic
    hides it even though the 1883 ACL never delivers a command to the tool; one on telemetry does not."""
    tls_port, plain_port = broker
    assert _publish_once(pki, tls_port, NORTHBOUND, command_topic("sub-08")) == NO_SUBSCRIBERS
    watcher = Peer(pki, plain_port, None, "operator-tool")
    try:
        watcher.subscribe(telemetry_subscription())
        assert _publish_once(pki, tls_port, NORTHBOUND, command_topic("sub-08")) == NO_SUBSCRIBERS
        watcher.subscribe("ems/v1/#")
        assert _publish_once(pki, tls_port, NORTHBOUND, command_topic("sub-08")) == 0
    finally:
        watcher.close()


def test_edge_listener_rejects_clients_without_a_certificate_of_the_platform_ca(broker, pki: LocalPki, tmp_path: Path) -> None:
    tls_port, _ = broker
    anonymous = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="anon", protocol=mqtt.MQTTv5)
    anonymous.tls_set(ca_certs=str(pki.ca))
    foreign_pki = make_pki(tmp_path / "foreign")                  # a valid chain, but not the platform's CA
    foreign_pair = foreign_pki.client(WORKERS[0])
    foreign = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="foreign", protocol=mqtt.MQTTv5)
    foreign.tls_set(ca_certs=str(pki.ca), certfile=str(foreign_pair.cert), keyfile=str(foreign_pair.key))
    for client in (anonymous, foreign):
        with pytest.raises(OSError):
            client.connect("127.0.0.1", tls_port)
            client.loop(2)
            client.loop(2)
            if not client.is_connected():
                raise ConnectionRefusedError("not connected")


def _twin_api(pki: LocalPki, port: int, tmp_path: Path, identity: str = TWINS[0]):
    """The real twin API (``ingest.twin_api.build``) from the generated twin-api ingest.toml: replica
    ``identity``'s certificate towards the broker, HTTPS on a free port with the test server certificate."""
    from components.twin_api import PORT, SERVER_TLS_DIR
    from ingest.twin_api import build

    pair = pki.client(identity)
    text = (twin_api_toml("localhost", "http://127.0.0.1:9")
            .replace(f"{MQTT_TLS_DIR}/ca.crt", str(pki.ca)).replace(f"{MQTT_TLS_DIR}/tls.crt", str(pair.cert))
            .replace(f"{MQTT_TLS_DIR}/tls.key", str(pair.key)).replace(f"port = {MQTTS_PORT}", f"port = {port}")
            .replace(f"{SERVER_TLS_DIR}/tls.crt", str(pki.server.cert)).replace(f"{SERVER_TLS_DIR}/tls.key", str(pki.server.key))
            .replace(f"port = {PORT}", f"port = {free_port()}").replace('host = "0.0.0.0"', 'host = "127.0.0.1"'))
    config = parse_config(tomllib.loads(text), tmp_path)
    assert config.broker.cert == pair.cert and config.twin_api is not None and config.twin_api.cert == pki.server.cert
    return build(config)


def _get_twin(api, path: str, pki: LocalPki) -> tuple[int, dict]:
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context(cafile=str(pki.ca))
    try:
        with urllib.request.urlopen(f"https://localhost:{api.port}{path}", context=context, timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_the_twin_identity_receives_retained_twins_and_nothing_else(broker, pki: LocalPki, tmp_path: Path) -> None:
    tls_port, plain_port = broker
    tool = Peer(pki, plain_port, None, "operator-tool")
    site = Peer(pki, tls_port, "sub-07", "edge-sub-07")
    twin_doc = encode_twin("sub-07", "tx1", 1_700_000_000_000, {"oil_temp": {"value": 61.5, "unit": "Cel", "quality": "good",
                                                                              "ts_ms": 1_700_000_000_000}})
    try:
        tool.subscribe("ems/v1/#")
        assert _publish_once(pki, tls_port, "sub-08", twin_topic("sub-07", "tx2")) == REFUSED   # only its own twins
        # Retained before the twin API exists: it must get it on subscribe.
        assert site.publish(twin_topic("sub-07", "tx1"), twin_doc, retain=True) == 0
        assert site.publish(telemetry_topic("sub-07"), b"reading") == 0
        with _twin_api(pki, tls_port, tmp_path) as api:
            deadline = time.monotonic() + 10
            while (got := _get_twin(api, "/v1/assets/sub-07/tx1", pki))[0] != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert got == (200, {**json.loads(twin_doc), "received_ms": got[1].get("received_ms")})
            assert _get_twin(api, "/healthz", pki) == (200, {"status": "ok"})
            assert api.store.rejected_total == 0

        spy = Peer(pki, tls_port, TWINS[1], "ems-twin-api-spy")
        try:
            # Exactly the twin filter: not telemetry, status, dead letters, a wider or narrower twin filter, or a share.
            spy.subscribe(telemetry_subscription(), telemetry_subscription(SHARED_GROUP), "ems/v1/#", "ems/v1/sub-07/status",
                          deadletter_topic("#"), "ems/v1/+/twin/#", "ems/v1/sub-07/twin/+", f"$share/twins/{TWIN_SUBSCRIPTION}",
                          f"ems/v1/{TWINS[1]}/#", TWIN_SUBSCRIPTION)
            assert spy.granted == [REFUSED] * 9 + [GRANTED_QOS1]
            assert site.publish(telemetry_topic("sub-07"), b"reading") == 0
            assert site.publish("ems/v1/sub-07/status") == 0
            assert site.publish(twin_topic("sub-07", "tx2"), b"marker") == 0
            # The retained twin, then the marker twin: no telemetry or status in between.
            assert spy.topics_until(twin_topic("sub-07", "tx2")) == [twin_topic("sub-07", "tx1"), twin_topic("sub-07", "tx2")]
        finally:
            spy.close()
        # No publish at all: not a twin (retained or not), not telemetry, not dead letters, not a subtree of its own.
        for topic in (twin_topic("sub-07", "tx1"), telemetry_topic("sub-07"), deadletter_topic("bad_json"), f"ems/v1/{TWINS[1]}/x"):
            assert _publish_once(pki, tls_port, TWINS[1], topic) == REFUSED, topic
        assert site.publish("ems/v1/sub-07/marker") == 0
        assert tool.topics_until("ems/v1/sub-07/marker") == [
            twin_topic("sub-07", "tx1"), telemetry_topic("sub-07"), telemetry_topic("sub-07"), "ems/v1/sub-07/status",
            twin_topic("sub-07", "tx2"), "ems/v1/sub-07/marker"]
    finally:
        for peer in (site, tool):
            peer.close()


# --------------------------------------------------------------------------- sessions belong to certificates

def _strand_readings(pki: LocalPki, port: int, tmp_path: Path, site: Peer) -> None:
    """Leave 10 readings in worker ingest-0's persistent session: 5 delivered and never acknowledged
    (the worker stopped before writing them), then 5 queued while it is offline."""
    worker = _ingest_worker(pki, port, "ingest-0", tmp_path)
    try:
        for i in range(5):
            assert site.publish(telemetry_topic("sub-07"), f"in-flight-{i}".encode()) == 0
        in_flight = [worker.incoming.get(timeout=5) for _ in range(5)]
        assert sorted(m.payload for m in in_flight) == [f"in-flight-{i}".encode() for i in range(5)]
    finally:
        worker.stop()                  # no PUBACK for any of them: the session holds all five
    for i in range(5):
        assert site.publish(telemetry_topic("sub-07"), f"queued-{i}".encode()) == 0


def _resume_worker(pki: LocalPki, port: int, tmp_path: Path) -> list[bytes]:
    """Worker ingest-0 back with its own certificate: every reading it receives (acknowledged), sorted."""
    worker = _ingest_worker(pki, port, "ingest-0", tmp_path)
    try:
        got = _drain([worker], 10)
        assert _drain([worker], 1, timeout=0.5) == [], "more than the stranded readings"
        return sorted(m.payload for m in got)
    finally:
        worker.stop()


STRANDED = sorted([f"in-flight-{i}".encode() for i in range(5)] + [f"queued-{i}".encode() for i in range(5)])


def test_a_worker_resumes_its_own_session_with_every_stranded_reading(broker, pki: LocalPki, tmp_path: Path) -> None:
    """The control: nobody interferes, the worker gets its 10 readings back (the in-flight ones redelivered)."""
    tls_port, _ = broker
    site = Peer(pki, tls_port, "sub-07", "edge-sub-07")
    try:
        _strand_readings(pki, tls_port, tmp_path, site)
        assert _resume_worker(pki, tls_port, tmp_path) == STRANDED
    finally:
        site.close()


@pytest.mark.parametrize("clean_start", [True, False], ids=["clean-start", "resume"])
@pytest.mark.parametrize("intruder", ["sub-08", "sub-99", BRIDGE, TWINS[0], WORKERS[1]],
                         ids=["listed-site", "unlisted-cn", "bridge", "twin-api", "other-worker"])
def test_no_other_certificate_can_take_or_wipe_a_worker_session(broker, pki: LocalPki, tmp_path: Path, intruder: str,
                                                                clean_start: bool) -> None:
    """A certificate of the CA — a listed site, a CN in no stack, another workload, even another ingest
    worker — connecting with worker ingest-0's client id gets a session of its own CN: it neither
    resumes the worker's session (no session present, nothing delivered) nor wipes it (clean start),
    and the worker afterwards receives all 10 stranded readings, each once. (Without
    ``use_username_as_clientid`` the worker got none of them back.)"""
    tls_port, _ = broker
    site = Peer(pki, tls_port, "sub-07", "edge-sub-07")
    try:
        _strand_readings(pki, tls_port, tmp_path, site)
        thief = Peer(pki, tls_port, intruder, f"{INGEST}-ingest-0", username=f"{INGEST}-ingest-0",
                     clean_start=clean_start, session_expiry_s=3600)
        try:
            assert thief.session_present is False          # not the worker's session: a new one of its own CN
            thief.subscribe(telemetry_subscription(SHARED_GROUP))
            # Only an ingest worker's certificate may join the group; none gets the worker's readings.
            assert thief.granted == [GRANTED_QOS1 if intruder in WORKERS else REFUSED]
            with pytest.raises(queue.Empty):
                thief.received.get(timeout=1)
        finally:
            thief.close()
        assert _resume_worker(pki, tls_port, tmp_path) == STRANDED
    finally:
        site.close()


def test_one_certificate_holds_one_connection_so_each_twin_replica_has_its_own(broker, pki: LocalPki, tmp_path: Path) -> None:
    """Two connections with one certificate take the client id from each other (why every twin API
    replica and every ingest worker has its own); two replicas with their own certificates both hold
    the retained twin and keep their connection."""
    tls_port, _ = broker
    first = Peer(pki, tls_port, TWINS[0], "replica-a")
    lost = threading.Event()
    first.client.on_disconnect = lambda *args: lost.set()
    first.client.reconnect_delay_set(30, 30)                        # no reconnect (and takeover back) during the test
    second = Peer(pki, tls_port, TWINS[0], "replica-b")             # another client id, the same certificate
    try:
        assert lost.wait(5), "the broker kept both connections of one certificate"
    finally:
        for peer in (second, first):
            peer.close()

    site = Peer(pki, tls_port, "sub-07", "edge-sub-07")
    twin_doc = encode_twin("sub-07", "tx1", 1_700_000_000_000, {"oil_temp": {"value": 61.5, "unit": "Cel", "quality": "good",
                                                                              "ts_ms": 1_700_000_000_000}})
    try:
        assert site.publish(twin_topic("sub-07", "tx1"), twin_doc, retain=True) == NO_SUBSCRIBERS   # retained all the same
        with _twin_api(pki, tls_port, tmp_path / "a", TWINS[0]) as api_a, _twin_api(pki, tls_port, tmp_path / "b", TWINS[1]) as api_b:
            for api in (api_a, api_b):
                deadline = time.monotonic() + 10
                while _get_twin(api, "/v1/assets/sub-07/tx1", pki)[0] != 200 and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert _get_twin(api, "/v1/assets/sub-07/tx1", pki)[0] == 200
            time.sleep(2)                                        # a takeover would show as a reconnect here
            assert (api_a.link.generation, api_b.link.generation) == (1, 1)
            assert api_a.link.connected and api_b.link.connected
    finally:
        site.close()


def test_edge_agents_get_their_site_id_as_client_id_whatever_they_send(broker, pki: LocalPki, tmp_path: Path) -> None:
    """The edge agent's own MQTT link (as in the field and the Modbus bridge) with its default client id
    ``edge-<site>``: two sites that both send ``edge-sub-07`` keep their own connections (the broker uses
    each certificate's CN), and every reading of both reaches the ingest."""
    import asyncio

    from edge_agent.mqtt_link import EdgeMqttLink as EdgeLink, TlsFiles as EdgeTls

    tls_port, _ = broker
    worker = _ingest_worker(pki, tls_port, "ingest-0", tmp_path)

    async def publish_from_both() -> list[int]:
        links = []
        for site in ("sub-07", BRIDGE):
            pair = pki.client(site)
            link = EdgeLink(host="127.0.0.1", port=tls_port, client_id="edge-sub-07", site=site,
                            tls=EdgeTls(pki.ca, pair.cert, pair.key))
            link.open()
            link.start()
            links.append(link)
        try:
            for link in links:
                await link.wait_connected(10)
            for i in range(3):
                for link in links:
                    await asyncio.wait_for(link.publish(telemetry_topic(link.site), f"{link.site}-{i}".encode()), 10)
            return [int(link.connected) for link in links]
        finally:
            for link in links:
                await link.close()

    try:
        assert asyncio.run(publish_from_both()) == [1, 1]
        got = _drain([worker], 6)
        assert sorted(m.payload for m in got) == sorted(f"{site}-{i}".encode() for site in ("sub-07", BRIDGE) for i in range(3))
    finally:
        worker.stop()
    log = (tmp_path / "broker.log").read_text()
    assert " as sub-07 (" in log and f" as {BRIDGE} (" in log and " as edge-sub-07 (" not in log
    assert "already connected" not in log


def test_the_loss_accountant_reads_what_the_other_workers_wrote_and_nobody_forges_it(broker, pki: LocalPki) -> None:
    tls_port, _ = broker
    text = ingest_toml("localhost", "http://127.0.0.1:9/api/v1/write", workers=WORKERS)
    assert validate_ingest_toml("ingest", text).state.workers == WORKERS      # the generated file names the group
    accountant = Peer(pki, tls_port, WORKERS[0], WORKERS[0])
    writer = Peer(pki, tls_port, WORKERS[1], WORKERS[1])
    site = Peer(pki, tls_port, "sub-07", "edge-sub-07")
    try:
        accountant.subscribe(seen_topic(WORKERS[1]))
        site.subscribe(seen_topic(WORKERS[1]), seen_topic(WORKERS[0]))
        assert accountant.granted == [GRANTED_QOS1] and site.granted == [REFUSED, REFUSED]
        assert _publish_once(pki, tls_port, "sub-07", seen_topic(WORKERS[1])) == REFUSED   # a site cannot forge it
        assert writer.publish(seen_topic(WORKERS[1])) == 0                              # a worker's own subtree
        assert accountant.topics_until(seen_topic(WORKERS[1])) == [seen_topic(WORKERS[1])]
    finally:
        for peer in (accountant, writer, site):
            peer.close()
