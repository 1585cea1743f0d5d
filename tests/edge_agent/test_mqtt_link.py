"""EdgeMqttLink against a real Mosquitto with mTLS (certificates from the suite's PKI)."""

from __future__ import annotations

import asyncio
import socket
import os
import signal
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from devenv.mosquitto import MosquittoBroker, free_port
from devenv.pki import LocalPki, make_pki
from edge_agent.errors import BrokerRefused, ConfigError, PublishError
from edge_agent.metrics import AgentMetrics
from edge_agent.mqtt_link import EdgeMqttLink, TlsFiles
from ems_contract.telemetry import status_topic
from tests.edge_agent.delivery_helpers import Subscriber

pytestmark = pytest.mark.integration


def _link(broker: MosquittoBroker, pki: LocalPki, *, site: str = "site1", client: str = "edge-site1",
          **kwargs) -> EdgeMqttLink:
    pair = pki.client(client)
    return EdgeMqttLink(host="127.0.0.1", port=broker.tls_port, client_id=client, site=site,
                    tls=TlsFiles(pki.ca, pair.cert, pair.key), keepalive_s=5, connect_timeout_s=5,
                    backoff_initial_s=0.1, backoff_max_s=0.5, **kwargs)


def test_publish_returns_after_puback_and_status_is_retained(broker: MosquittoBroker, pki: LocalPki) -> None:
    sub = Subscriber(broker.plain_port).start()
    registry = CollectorRegistry()

    async def go() -> str | None:
        async with _link(broker, pki, metrics=AgentMetrics(registry)) as link:
            await link.connect()
            for i in range(5):
                await link.publish("ems/v1/site1/test", f"m{i}".encode())
            assert registry.get_sample_value("ems_edge_broker_connected") == 1
            return link.protocol_in_use

    try:
        assert asyncio.run(go()) == "mqttv5"
        assert sub.wait_for(lambda r: len(r.on_topic("ems/v1/site1/test")) == 5)
        assert [p for p, _ in sub.received.on_topic("ems/v1/site1/test")] == [f"m{i}".encode() for i in range(5)]
        # birth then the clean-shutdown "offline", both retained for late subscribers
        assert sub.wait_for(lambda r: [p for p, _ in r.on_topic(status_topic("site1"))] == [b"online", b"offline"])
        assert registry.get_sample_value("ems_edge_broker_connects_total", {"outcome": "ok"}) == 1
    finally:
        sub.stop()
    late = Subscriber(broker.plain_port, topic=status_topic("site1"), client_id="late").start()
    try:
        assert late.wait_for(lambda r: r.on_topic(status_topic("site1")) == [(b"offline", True)], timeout=5)
    finally:
        late.stop()


def test_last_will_says_offline_when_the_connection_dies(broker: MosquittoBroker, pki: LocalPki) -> None:
    sub = Subscriber(broker.plain_port, topic=status_topic("site1")).start()

    async def go() -> None:
        link = _link(broker, pki)
        link.open()
        await link.connect()
        link.abort("test: socket closed without DISCONNECT")

    try:
        asyncio.run(go())
        assert sub.wait_for(lambda r: [p for p, _ in r.on_topic(status_topic("site1"))] == [b"online", b"offline"])
    finally:
        sub.stop()


@pytest.mark.parametrize("ca_name, alert", [("rogue-ca", "unknown ca"), ("ems-dev-ca", "decrypt error")])
def test_untrusted_client_certificate_is_one_clear_error(broker: MosquittoBroker, pki: LocalPki,
                                                         tmp_path: Path, ca_name: str, alert: str) -> None:
    # signed by a CA the broker does not trust (second case: a forged CA with the trusted CA's name)
    rogue = make_pki(tmp_path / "rogue", ca_name=ca_name).client("edge-site1")
    link = EdgeMqttLink(host="127.0.0.1", port=broker.tls_port, client_id="edge-site1", site="site1",
                    tls=TlsFiles(pki.ca, rogue.cert, rogue.key), connect_timeout_s=5)

    async def go() -> None:
        async with link:
            await link.connect()

    with pytest.raises(BrokerRefused) as err:
        asyncio.run(go())
    message = str(err.value)
    assert "\n" not in message
    assert f"broker 127.0.0.1:{broker.tls_port} refused the client certificate {rogue.cert}" in message
    assert message.endswith(f"(TLS: tlsv1 alert {alert})")


def test_untrusted_broker_certificate_is_refused(broker: MosquittoBroker, pki: LocalPki, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other", ca_name="other-ca")
    pair = pki.client("edge-site1")
    link = EdgeMqttLink(host="127.0.0.1", port=broker.tls_port, client_id="edge-site1", site="site1",
                    tls=TlsFiles(other.ca, pair.cert, pair.key), connect_timeout_s=5)

    async def go() -> None:
        async with link:
            await link.connect()

    with pytest.raises(BrokerRefused, match=r"its certificate is not trusted \(self-signed certificate in certificate chain; CA file .*other/ca.crt\)$"):
        asyncio.run(go())


def test_unreadable_key_is_a_config_error(pki: LocalPki, tmp_path: Path) -> None:
    pair = pki.client("edge-site1")
    link = EdgeMqttLink(host="127.0.0.1", port=1, client_id="x", site="site1",
                    tls=TlsFiles(pki.ca, pair.cert, tmp_path / "missing.key"))
    with pytest.raises(ConfigError, match=r"^broker.cert: '.*edge-site1.crt' and broker.key '.*missing.key' are not"):
        link.open()


def test_unreachable_broker_is_a_publish_error() -> None:
    link = EdgeMqttLink(host="127.0.0.1", port=free_port(), client_id="x", site="site1", tls=None, connect_timeout_s=2)

    async def go() -> None:
        await link.connect()

    with pytest.raises(PublishError, match=r"unreachable \(Connection refused\)"):
        asyncio.run(go())


def test_publish_raises_when_the_connection_drops_before_puback(broker: MosquittoBroker, pki: LocalPki) -> None:
    async def go() -> None:
        async with _link(broker, pki) as link:
            await link.connect()
            assert broker.proc is not None
            os.kill(broker.proc.pid, signal.SIGSTOP)        # the broker can no longer answer
            try:
                future = link.start_publish("ems/v1/site1/test", b"x")
                await asyncio.sleep(0.2)
                assert not future.done()
            finally:
                os.kill(broker.proc.pid, signal.SIGKILL)
            with pytest.raises(PublishError, match="connection lost before PUBACK"):
                await asyncio.wait_for(future, 10)
            assert not link.connected

    asyncio.run(go())


def test_link_reconnects_after_a_broker_restart(broker: MosquittoBroker, pki: LocalPki) -> None:
    async def go() -> None:
        async with _link(broker, pki) as link:
            link.start()
            await link.wait_connected(10)
            await asyncio.get_running_loop().run_in_executor(None, lambda: broker.restart(kill=True))
            await asyncio.sleep(0.3)
            await link.wait_connected(15)
            await link.publish("ems/v1/site1/test", b"after restart")

    asyncio.run(go())



class _V311OnlyFront:
    """In front of the real broker's plain listener: answers an MQTT v5 CONNECT the way a 3.1.1-only broker
    must (CONNACK return code 1, "unacceptable protocol version", then close) and pipes everything else."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.refused = 0
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.read(64)                 # CONNECT: fixed header, "MQTT", protocol level
        level = head[head.find(b"MQTT") + 4] if b"MQTT" in head else None
        if level == 5:
            self.refused += 1
            writer.write(b"\x20\x02\x00\x01")
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        up_writer.write(head)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)


def test_auto_protocol_falls_back_to_311_and_mqttv5_only_refuses(broker: MosquittoBroker) -> None:
    sub = Subscriber(broker.plain_port, topic="ems/v1/site1/test").start()

    async def go() -> tuple[str | None, int, str]:
        front = _V311OnlyFront(broker.plain_port)
        port = await front.start()
        link = EdgeMqttLink(host="127.0.0.1", port=port, client_id="edge-old", site="site1", tls=None)
        await link.connect()
        await link.publish("ems/v1/site1/test", b"via 3.1.1")
        await link.close()
        strict = EdgeMqttLink(host="127.0.0.1", port=port, client_id="edge-v5", site="site1", tls=None,
                          protocol="mqttv5")
        with pytest.raises(BrokerRefused) as err:
            await strict.connect()
        return link.protocol_in_use, front.refused, str(err.value)

    try:
        protocol, refused, message = asyncio.run(go())
        assert protocol == "mqttv311" and refused == 2
        assert message.startswith("broker 127.0.0.1:") and "does not support MQTT v5" in message
        assert sub.wait_for(lambda r: [p for p, _ in r.on_topic("ems/v1/site1/test")] == [b"via 3.1.1"])
    finally:
        sub.stop()


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    import random

    from edge_agent.mqtt_link import backoff_delay

    rng = random.Random(42)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (3, 4.0), (6, 30.0), (60, 30.0)]:
        delays = [backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling    # spread over the whole range


def test_reconnect_retries_fast_through_a_short_outage_then_backs_off() -> None:
    import random

    from edge_agent.mqtt_link import reconnect_delay

    rng = random.Random(3)
    elapsed, attempt, schedule = 0.0, 0, []
    while elapsed < 120:
        delay = reconnect_delay(attempt, elapsed, rng)
        schedule.append((elapsed, delay))
        elapsed += delay
        attempt += 1
    early = [d for t, d in schedule if t < 10]
    late = [d for t, d in schedule if t >= 40]
    assert len(early) >= 13 and all(0.25 <= d <= 0.75 for d in early)   # a broker back after 4 s is found in < 1 s
    assert max(late) > 5 and all(d <= 30 for d in late)                 # a long outage is not hammered
    assert len(schedule) < 60


def test_a_burst_larger_than_the_socket_buffer_is_written_in_full(broker: MosquittoBroker, pki: LocalPki) -> None:
    """Messages are written on the loop's next pass; what the socket cannot take then is written as it drains."""
    sub = Subscriber(broker.plain_port).start()
    payloads = [bytes([i]) * 200_000 for i in range(60)]           # 12 MB in one pass of the loop

    async def go() -> bool:
        async with _link(broker, pki) as link:
            await link.connect()
            assert link._client is not None
            # A small send buffer, so the first write cannot take the burst whatever the machine's TCP tuning.
            link._client.socket().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32_768)
            futures = [link.start_publish("ems/v1/site1/test", p) for p in payloads]
            await asyncio.sleep(0)                                  # the first write: far from all of it
            partial = link._client is not None and link._client.want_write()
            await asyncio.wait_for(asyncio.gather(*futures), 60)
            # written in full: the socket is no longer watched for writability (no wake-up per loop pass)
            sock = link._client.socket()
            assert sock is not None and not asyncio.get_running_loop().remove_writer(sock)
            return partial

    try:
        assert asyncio.run(go())
        assert sub.wait_for(lambda r: len(r.on_topic("ems/v1/site1/test")) == 60, timeout=30)
        assert [p for p, _ in sub.received.on_topic("ems/v1/site1/test")] == payloads
    finally:
        sub.stop()
