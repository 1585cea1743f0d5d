"""``DeviceTally``: per-poll counts kept in plain numbers and added to the Prometheus metrics at collection
give exactly the exposition that counting each poll on the metrics directly gives."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, generate_latest

from edge_agent.metrics import AgentMetrics

DURATIONS = [0.0001, 0.005, 0.0050001, 0.3, 7.5, 12.0, 0.02, 0.0]


def exposition(metrics: AgentMetrics) -> list[bytes]:
    """The registry's samples, without the ``_created`` times (two registries are created apart)."""
    return [line for line in generate_latest(metrics.registry).splitlines() if b"_created" not in line]


def test_a_tally_exposes_what_observing_each_poll_exposes() -> None:
    tallied, direct = AgentMetrics(CollectorRegistry()), AgentMetrics(CollectorRegistry())
    tally = tallied.tally("d")
    assert tallied.tally("d") is tally                  # one per device, however often its poller restarts
    for step, seconds in enumerate(DURATIONS):
        tally.poll(seconds)
        tally.reads_ok += 2
        tally.suppressed += step
        direct.poll_duration.labels("d").observe(seconds)
        direct.polls.labels("d").inc()
        direct.reads.labels("d", "ok").inc(2)
        direct.readings_suppressed.inc(step)
        if step in (2, 5):                              # collected midway: nothing counted twice
            assert exposition(tallied) == exposition(direct)
    assert exposition(tallied) == exposition(direct)
    assert tallied.registry.get_sample_value("ems_edge_poll_duration_seconds_bucket",
                                             {"device": "d", "le": "0.005"}) == 3.0


def test_polls_counted_while_another_thread_scrapes_are_all_counted() -> None:
    metrics = AgentMetrics(CollectorRegistry())
    tally = metrics.tally("d")
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            generate_latest(metrics.registry)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for _ in range(20000):
            tally.poll(0.001)
            tally.reads_ok += 1
    finally:
        done.set()
        scraper.join()
    assert metrics.registry.get_sample_value("ems_edge_polls_total", {"device": "d"}) == 20000
    assert metrics.registry.get_sample_value("ems_edge_reads_total", {"device": "d", "outcome": "ok"}) == 20000
    assert metrics.registry.get_sample_value("ems_edge_poll_duration_seconds_count", {"device": "d"}) == 20000
