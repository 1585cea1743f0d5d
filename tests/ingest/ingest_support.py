"""Test helpers for the ingest area: an edge-side publisher, a deterministic stream and exact sample checks.

``IngestProcess`` (``ems-ingest run`` as a subprocess) comes from ``devenv.demo_pipeline``.

The publisher speaks the real wire format (``ems_contract.telemetry.encode_batch``) over
mTLS with QoS 1 and waits for each PUBACK, as the edge agent does.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from devenv.demo_pipeline import IngestProcess
from devenv.mosquitto import MosquittoBroker
from devenv.pki import LocalPki
from devenv.prometheus import PrometheusServer
from ems_contract.telemetry import Reading, encode_batch, telemetry_topic

__all__ = ["IngestProcess", "EdgePublisher", "Stream", "stored", "lost_and_duplicated", "promql_count"]


class EdgePublisher:
    """Publishes telemetry batches like the edge agent: mTLS, QoS 1, waits for PUBACK."""

    def __init__(self, broker: MosquittoBroker, pki: LocalPki, name: str = "edge-test") -> None:
        pair = pki.client(name)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv5)
        self.client.tls_set(ca_certs=str(pki.ca), certfile=str(pair.cert), keyfile=str(pair.key),
                            tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.connect("127.0.0.1", broker.tls_port, keepalive=30)
        self.client.loop_start()

    def publish_raw(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published(), f"no PUBACK for {topic}"

    def publish(self, site: str, readings: list[Reading]) -> None:
        self.publish_raw(telemetry_topic(site), encode_batch(site, readings, int(time.time() * 1000)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass(frozen=True)
class Stream:
    """A deterministic reading stream of one site: seq 1..n, several series, values derived from seq."""

    site: str
    base_ms: int
    assets: tuple[str, ...] = ("tx1", "tx2")
    points: tuple[str, ...] = ("oil_temp", "load")

    def reading(self, seq: int) -> Reading:
        series = (seq - 1) % (len(self.assets) * len(self.points))
        asset = self.assets[series // len(self.points)]
        point = self.points[series % len(self.points)]
        # each series gets one sample per "round"; rounds are 1 s apart so timestamps never collide
        ts = self.base_ms + ((seq - 1) // (len(self.assets) * len(self.points))) * 1000
        return Reading(seq=seq, ts_ms=ts, asset=asset, point=point, value=round(seq * 0.25 + 10, 3),
                       unit="degC" if point == "oil_temp" else "A", quality="good")

    def batches(self, first: int, last: int, size: int) -> list[list[Reading]]:
        return [[self.reading(s) for s in range(lo, min(lo + size, last + 1))] for lo in range(first, last + 1, size)]

    def expected(self, first: int, last: int) -> dict[tuple[str, str], dict[int, float]]:
        out: dict[tuple[str, str], dict[int, float]] = {}
        for seq in range(first, last + 1):
            r = self.reading(seq)
            out.setdefault((r.asset, r.point), {})[r.ts_ms] = r.value  # type: ignore[assignment]
        return out


def stored(prometheus: PrometheusServer, site: str, start_ms: int, end_ms: int) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """Raw samples of ``ems_reading{site=...}`` per (asset, point)."""
    raw = prometheus.client().raw_samples(f'ems_reading{{site="{site}"}}', start_ms, end_ms)
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for key, samples in raw.items():
        labels = dict(key)
        out.setdefault((labels["asset"], labels["point"]), []).extend(samples)
    return out


def lost_and_duplicated(prometheus: PrometheusServer, stream: Stream, last_seq: int) -> tuple[int, int, int]:
    """(lost, duplicated, wrong) samples of seqs 1..last_seq; a duplicate is a second sample at one timestamp."""
    expected = stream.expected(1, last_seq)
    end_ms = stream.base_ms + (last_seq // 4 + 2) * 1000
    got = stored(prometheus, stream.site, stream.base_ms - 1, end_ms)
    lost = duplicated = wrong = 0
    for series, points in expected.items():
        samples = got.get(series, [])
        seen: dict[int, int] = {}
        for ts, value in samples:
            seen[ts] = seen.get(ts, 0) + 1
            if ts in points and points[ts] != value:
                wrong += 1
        for ts in points:
            if ts not in seen:
                lost += 1
        duplicated += sum(c - 1 for c in seen.values())
        wrong += sum(1 for ts in seen if ts not in points)
    return lost, duplicated, wrong


def promql_count(prometheus: PrometheusServer, site: str, end_ms: int, window_s: int = 3600) -> int:
    result = prometheus.client().query(f'sum(count_over_time(ems_reading{{site="{site}"}}[{window_s}s]))',
                                       at=end_ms / 1000)
    return int(float(result[0]["value"][1])) if result else 0
