"""Delivery (drain and payloads): spooled batches to a real Mosquitto with mTLS, and the message split."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from devenv.mosquitto import MosquittoBroker
from devenv.pki import LocalPki
from edge_agent.batch import ReadingBatch
from edge_agent.delivery import drain, payloads
from edge_agent.errors import PublishError
from edge_agent.metrics import AgentMetrics
from edge_agent.mqtt_link import EdgeMqttLink, TlsFiles
from edge_agent.spool import Spool
from ems_contract.telemetry import MAX_PAYLOAD_BYTES, telemetry_topic
from ems_contract.telemetry_v2 import decode_telemetry
from tests.edge_agent.delivery_helpers import Subscriber


def _link(broker: MosquittoBroker, pki: LocalPki, *, site: str = "site1", client: str = "edge-site1",
          **kwargs) -> EdgeMqttLink:
    pair = pki.client(client)
    return EdgeMqttLink(host="127.0.0.1", port=broker.tls_port, client_id=client, site=site,
                        tls=TlsFiles(pki.ca, pair.cert, pair.key), keepalive_s=5, connect_timeout_s=5,
                        backoff_initial_s=0.1, backoff_max_s=0.5, **kwargs)


@pytest.mark.integration
@pytest.mark.parametrize("payload_format", ["v1", "v2"])
def test_drain_delivers_every_spooled_reading_in_batches(broker: MosquittoBroker, pki: LocalPki,
                                                         tmp_path: Path, payload_format: str) -> None:
    sub = Subscriber(broker.plain_port, topic=telemetry_topic("site1")).start()
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)

    async def go() -> int:
        async with Spool(tmp_path, site="site1", fsync_batch=50, metrics=metrics) as spool, \
                _link(broker, pki, metrics=metrics) as link:
            for first in range(0, 730, 73):           # ten device reads of 73 readings
                batch = ReadingBatch()
                for i in range(first, first + 73):
                    batch.add(1_764_000_000_000 + i, "tx1", f"p{i % 7}", float(i), "kW", "good", "S1")
                await spool.append(batch)
            await spool.flush()
            assert spool.depth == 730
            link.start()
            task = asyncio.create_task(drain(spool, link, site="site1", batch_max_readings=100,
                                             batch_max_delay_s=0.2, payload_format=payload_format, metrics=metrics))
            for _ in range(200):
                if spool.depth == 0:
                    break
                await asyncio.sleep(0.05)
            task.cancel()
            return spool.depth

    try:
        assert asyncio.run(go()) == 0
        assert sub.wait_for(lambda r: len(r.telemetry()) >= 730)
        counts = sub.received.seq_counts()
        assert set(counts) == set(range(1, 731))
        assert max(counts.values()) == 1
        per_message = [decode_telemetry(p).seq_last - decode_telemetry(p).seq_first + 1
                       for _, p, _ in sub.received.messages]
        assert per_message == [73] * 10              # whole spool rows: one row of 73 per message of at most 100
        assert {json.loads(p)["v"] for _, p, _ in sub.received.messages} == {int(payload_format[1:])}
        assert registry.get_sample_value("ems_edge_readings_published_total") == 730
        assert registry.get_sample_value("ems_edge_messages_published_total") == 10
    finally:
        sub.stop()


def _sequenced(seq_first: int, n: int) -> ReadingBatch:
    batch = ReadingBatch()
    for i in range(n):
        batch.add(1_764_000_000_000 + i, "tx1", f"p{i}", float(i), "kW", "good", f"S{i}")
    return batch.sequenced(seq_first, 1)


def test_payloads_fill_v1_messages_and_split_v2_at_seq_gaps_and_size() -> None:
    batches = [_sequenced(1, 250), _sequenced(251, 30), _sequenced(300, 30)]     # 281..299 dropped: a gap
    v1 = [decode_telemetry(p) for p in payloads("s1", batches, payload_format="v1", max_readings=100, sent_ms=5)]
    v2 = [decode_telemetry(p) for p in payloads("s1", batches, payload_format="v2", max_readings=100, sent_ms=5)]
    assert [(m.seq_first, m.seq_last, len(m.readings)) for m in v1] == \
        [(1, 100, 100), (101, 200, 100), (201, 319, 100), (320, 329, 10)]
    assert [(m.seq_first, m.seq_last) for m in v2] == [(1, 100), (101, 200), (201, 280), (300, 329)]
    everything = [r for b in batches for r in b.readings()]
    assert [r for m in v1 for r in m.readings] == everything == [r for m in v2 for r in m.readings]



@pytest.mark.parametrize("payload_format", ["v1", "v2"])
def test_a_message_over_the_size_limit_is_split_until_every_part_fits(payload_format: str) -> None:
    """1000 readings with 64-character names are ~300 KB as v1, over MAX_PAYLOAD_BYTES: never sent as one."""
    batch = ReadingBatch()
    for i in range(1000):
        batch.add(1_764_000_000_000 + i, f"{'a' * 60}{i % 7:04d}", f"{'p' * 60}{i:04d}", i + 0.123456789, "u" * 32,
                  "good", f"S{i}")
    sent = payloads("s1", [batch.sequenced(1, 1)], payload_format=payload_format, max_readings=1000, sent_ms=5)
    assert all(len(p) <= MAX_PAYLOAD_BYTES for p in sent)
    if payload_format == "v1":
        assert len(sent) > 1                          # one message would have been refused as oversized
    decoded = [decode_telemetry(p) for p in sent]
    assert [r for m in decoded for r in m.readings] == list(batch.sequenced(1, 1).readings())


class _FakeLink:
    """What drain uses of EdgeMqttLink; the test completes each message's future (its PUBACK) itself."""

    def __init__(self) -> None:
        self.sent: list[tuple[tuple[int, int], asyncio.Future[None]]] = []
        self.aborted: list[str] = []
        self.connected = True
        self.up = asyncio.Event()
        self.up.set()

    async def wait_connected(self) -> None:
        await self.up.wait()

    def start_publish(self, topic: str, payload: bytes) -> asyncio.Future[None]:
        message = decode_telemetry(payload)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent.append(((message.seq_first, message.seq_last), future))
        return future

    def abort(self, why: str) -> None:
        self.aborted.append(why)
        self.connected = False
        self.up.clear()

    def ranges(self) -> list[tuple[int, int]]:
        return [seqs for seqs, _ in self.sent]


async def _until(condition, timeout: float = 5.0) -> bool:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


async def _spool_ten(spool: Spool) -> None:
    await spool.append(_sequenced(0, 10).sequenced(0, 0))
    await spool.flush()


def test_drain_wakes_on_a_commit_a_puback_its_delay_and_flushing(tmp_path: Path) -> None:
    """An idle link sends a commit at once; with a message in flight, fewer readings than a message wait
    for its PUBACK, for batch_max_delay_s, or for flushing, whichever comes first."""

    async def go() -> None:
        link = _FakeLink()
        flushing = asyncio.Event()
        async with Spool(tmp_path, site="s1", fsync_batch=10_000, flush_interval_s=0.05) as spool:
            task = asyncio.create_task(drain(spool, link, site="s1", batch_max_readings=100, batch_max_delay_s=0.5,
                                             flushing=flushing))  # type: ignore[arg-type]
            await _spool_ten(spool)
            assert await _until(lambda: link.ranges() == [(1, 10)])         # idle link: at once
            await _spool_ten(spool)
            await asyncio.sleep(0.25)
            assert link.ranges() == [(1, 10)]                                # in flight, 10 < 100: waits
            link.sent[0][1].set_result(None)
            assert await _until(lambda: link.ranges() == [(1, 10), (11, 20)])  # the PUBACK freed the link
            assert await _until(lambda: spool.depth == 10)                    # 1..10 acked (next commit)
            await _spool_ten(spool)
            started = asyncio.get_running_loop().time()
            assert await _until(lambda: len(link.sent) == 3)                  # 21..30 after batch_max_delay_s
            assert asyncio.get_running_loop().time() - started >= 0.45
            await _spool_ten(spool)
            await asyncio.sleep(0.1)
            assert len(link.sent) == 3
            flushing.set()
            assert await _until(lambda: link.ranges()[3:] == [(31, 40)])      # flushing: no wait
            assert not link.aborted
            task.cancel()

    asyncio.run(go())


def test_drain_sends_again_after_a_missing_puback_or_a_failed_publish(tmp_path: Path) -> None:
    async def go() -> None:
        link = _FakeLink()
        async with Spool(tmp_path, site="s1", fsync_batch=10_000, flush_interval_s=0.05) as spool:
            task = asyncio.create_task(drain(spool, link, site="s1", ack_timeout_s=0.3))  # type: ignore[arg-type]
            await _spool_ten(spool)
            assert await _until(lambda: len(link.aborted) == 1)               # no PUBACK within 0.3 s
            assert "no PUBACK" in link.aborted[0]
            link.connected = True
            link.up.set()                                                     # reconnected: the same seqs again
            assert await _until(lambda: link.ranges() == [(1, 10), (1, 10)])
            link.sent[1][1].set_exception(PublishError("connection lost"))    # still connected: retried
            assert await _until(lambda: link.ranges() == [(1, 10)] * 3)
            link.sent[2][1].set_result(None)
            assert await _until(lambda: spool.depth == 0)
            assert len(link.aborted) == 1
            task.cancel()

    asyncio.run(go())
