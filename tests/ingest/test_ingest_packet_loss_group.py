"""Packet loss with two ingest workers on one shared subscription: the group's counter is the real loss.

Two ``ems-ingest run`` processes share ``$share/ems-ingest/...`` on a real Mosquitto, write to a real
Prometheus and are scraped by it. An edge publisher sends two sites' streams, alternating v1 and v2
payloads; from one site it leaves out whole messages and single readings on purpose. Each worker
writes about half of every stream, so either worker alone sees the other's half as holes. With
``[state] workers`` the first worker counts loss over what both wrote (``ingest.seq_share``): after
the 3 s horizon ``sum by (site) (ems_ingest_site_readings_lost_total)`` in Prometheus must be exactly
the number left out, and 0 for the site that lost nothing, and stay so.
"""

from __future__ import annotations

import time

import pytest

from devenv.demo_pipeline import IngestProcess
from devenv.prometheus import PrometheusServer
from ems_contract.telemetry import Reading, encode_batch, telemetry_topic
from ems_contract.telemetry_v2 import contiguous_runs, encode_batch_v2

pytestmark = pytest.mark.integration
LOSSY, CLEAN = "sub-lossy", "sub-clean"
WORKERS = ("ingest-a", "ingest-b")
PER_MESSAGE = 10
DROPPED_MESSAGES = {5, 6, 17, 30}          # whole messages never published
DROPPED_SEQS = {403, 404, 517}             # single readings left out of the messages that carry their neighbours


class _Site:
    """One site's stream: message ``m`` carries seqs ``m*10+1 .. m*10+10`` (minus what is dropped)."""

    def __init__(self, name: str, lossy: bool) -> None:
        self.name, self.lossy, self.next_message, self.dropped = name, lossy, 0, 0
        self.base_ms = int(time.time() * 1000) - 60_000

    def publish_next(self, edge) -> None:  # type: ignore[no-untyped-def]
        m = self.next_message
        self.next_message += 1
        seqs = [m * PER_MESSAGE + i for i in range(1, PER_MESSAGE + 1)]
        if self.lossy and m in DROPPED_MESSAGES:
            self.dropped += len(seqs)
            return
        if self.lossy:
            self.dropped += sum(1 for s in seqs if s in DROPPED_SEQS)
            seqs = [s for s in seqs if s not in DROPPED_SEQS]
        readings = [Reading(s, self.base_ms + s, "tx1", f"p{s % 3}", s * 0.5, "kW") for s in seqs]
        sent_ms = int(time.time() * 1000)
        if m % 2:
            edge.publish_raw(telemetry_topic(self.name), encode_batch(self.name, readings, sent_ms))
        else:                                # v2 needs consecutive seqs: one message per run, as the edge sends
            for start, stop in contiguous_runs([r.seq for r in readings]):
                edge.publish_raw(telemetry_topic(self.name), encode_batch_v2(self.name, readings[start:stop], sent_ms))


def _lost_by_site(prometheus: PrometheusServer) -> dict[str, float]:
    result = prometheus.client().query("sum by (site) (ems_ingest_site_readings_lost_total)")
    return {r["metric"]["site"]: float(r["value"][1]) for r in result}


def _wait(what: str, check, timeout: float, tick) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        tick()


def test_two_workers_count_exactly_the_readings_left_out(tmp_path, broker, pki, edge) -> None:
    prometheus = PrometheusServer(tmp_path / "prometheus")
    workers = [IngestProcess(tmp_path / w, broker=broker, pki=pki, prometheus=prometheus, client_id=w,
                             workers=WORKERS, loss_horizon_s=3, max_delay_s=0.02) for w in WORKERS]
    prometheus.scrape_targets = tuple(f"127.0.0.1:{w.metrics_port}" for w in workers)
    lossy, clean = _Site(LOSSY, lossy=True), _Site(CLEAN, lossy=False)
    try:
        prometheus.start()
        for worker in workers:
            worker.start()

        ticks = [0]

        def tick() -> None:                   # the streams go on: a site keeps sending, the workers keep committing
            lossy.publish_next(edge)
            if ticks[0] % 3 != 2:             # not in lockstep: the shared subscription's round robin must not
                clean.publish_next(edge)      # hand each worker one whole site
            ticks[0] += 1
            time.sleep(0.05)

        for _ in range(60):
            tick()
        expected = float(lossy.dropped)
        assert expected == len(DROPPED_MESSAGES) * PER_MESSAGE + len(DROPPED_SEQS)
        for worker in workers:                # both took a share of both streams
            for site in (LOSSY, CLEAN):
                assert worker.metric(f'ems_ingest_site_readings_received_total{{site="{site}"}}') > 50, worker.tail()
        _wait(f"Prometheus to show {expected:.0f} lost readings of {LOSSY}",
              lambda: _lost_by_site(prometheus).get(LOSSY) == expected, 60, tick)
        deadline = time.monotonic() + 6       # twice the horizon more: nothing else is counted, for either site
        while time.monotonic() < deadline:
            tick()
        time.sleep(2)                         # one more scrape
        assert _lost_by_site(prometheus) == {LOSSY: expected, CLEAN: 0.0} or \
            _lost_by_site(prometheus) == {LOSSY: expected}
        accountant, other = workers
        assert accountant.metric(f'ems_ingest_site_readings_lost_total{{site="{LOSSY}"}}') == expected
        assert accountant.metric(f'ems_ingest_site_readings_lost_total{{site="{CLEAN}"}}') == 0
        assert not any(key.startswith("ems_ingest_site_readings_lost_total{") for key in other.metrics())
    finally:
        for worker in workers:
            worker.stop()
        prometheus.stop(kill=True)
