"""Prometheus metrics of the edge agent: ``ems_edge_<what>_<unit>``.

The registry is a parameter (tests use a fresh ``CollectorRegistry()``); labels
stay bounded (device, outcome, code). Modules receive an ``AgentMetrics``
instance; none creates metrics of its own.

What happens at every poll of every device (polls, successful reads, poll
durations, suppressed samples) is tallied in plain numbers (``DeviceTally``)
and added to the Prometheus metrics when the registry is collected — a scrape,
or a test's ``get_sample_value`` — so the hot path takes no lock per poll and
the exposition is still exact.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

__all__ = ["AgentMetrics", "DeviceTally", "READ_OUTCOMES"]

READ_OUTCOMES = ("ok", "timeout", "unreachable", "exception", "decode_error")


class _BeforeCollect:
    """A collector with no samples of its own, registered before every metric of ``AgentMetrics``:
    the registry collects in registration order, so the tallies are added just before they are read."""

    def __init__(self) -> None:
        self.flushes: list[Callable[[], None]] = []

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for flush in self.flushes:
            flush()
        return iter(())


class DeviceTally:
    """One device's per-poll counts, kept in plain numbers by the event loop and added to the metrics
    by ``flush`` (at collection, from whichever thread collects).

    Each number has one writer: the loop only ever increments, ``flush`` only records what it
    has added, so nothing is lost between the two without a lock on the hot path."""

    def __init__(self, metrics: "AgentMetrics", device: str) -> None:
        self.polls = 0
        self.reads_ok = 0
        self.suppressed = 0
        self.duration_sum = 0.0
        self.duration_counts = [0] * len(metrics.poll_duration_buckets)
        self._bounds = metrics.poll_duration_buckets
        self._added = (0, 0, 0, 0.0, [0] * len(self._bounds))
        self._lock = threading.Lock()
        self._polls = metrics.polls.labels(device)
        self._reads_ok = metrics.reads.labels(device, "ok")
        self._suppressed = metrics.readings_suppressed
        self._duration = metrics.poll_duration.labels(device)

    def poll(self, seconds: float) -> None:
        """Count one poll that took ``seconds``."""
        self.polls += 1
        self.duration_sum += seconds
        self.duration_counts[bisect_left(self._bounds, seconds)] += 1

    def flush(self) -> None:
        """Add what was counted since the last flush to the Prometheus metrics."""
        with self._lock:
            polls, reads_ok, suppressed, duration_sum = self.polls, self.reads_ok, self.suppressed, self.duration_sum
            counts = list(self.duration_counts)
            added_polls, added_reads, added_suppressed, added_sum, added_counts = self._added
            if polls != added_polls:
                self._polls.inc(polls - added_polls)
            if reads_ok != added_reads:
                self._reads_ok.inc(reads_ok - added_reads)
            if suppressed != added_suppressed:
                self._suppressed.inc(suppressed - added_suppressed)
            if counts != added_counts:
                # prometheus_client 0.26 keeps a histogram child's per-bucket counts and sum as
                # ``_buckets``/``_sum`` (tests/edge_agent/test_metrics.py checks this against observe())
                for bucket, now, before in zip(self._duration._buckets, counts, added_counts):
                    if now != before:
                        bucket.inc(now - before)
                self._duration._sum.inc(duration_sum - added_sum)
            self._added = (polls, reads_ok, suppressed, duration_sum, counts)


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._before_collect = _BeforeCollect()
        self.registry.register(self._before_collect)        # type: ignore[arg-type]
        self._tallies: dict[str, DeviceTally] = {}
        common = {"namespace": "ems", "subsystem": "edge", "registry": self.registry}
        # Modbus side
        self.polls = Counter("polls", "Poll cycles completed per device.", ["device"], **common)
        self.reads = Counter("reads", "Modbus read requests by outcome.", ["device", "outcome"], **common)
        self.exception_codes = Counter("modbus_exceptions", "Modbus exception responses by device, point and code.",
                                       ["device", "point", "code"], **common)
        self.poll_duration_buckets = Histogram.DEFAULT_BUCKETS
        self.poll_duration = Histogram("poll_duration", "Time to poll one device once.", ["device"],
                                       unit="seconds", buckets=self.poll_duration_buckets, **common)
        self.device_up = Gauge("device_up", "1 when the device answered its last poll.", ["device"], **common)
        self.readings_accepted = Counter("readings_accepted", "Readings that passed report-by-exception and were spooled.",
                                         **common)
        self.readings_suppressed = Counter("readings_suppressed", "Samples inside their deadband and heartbeat.", **common)
        self.loop_faults = Counter("loop_faults", "4-20 mA samples outside 3.8..20.5 mA.", ["device", "point"], **common)
        self.read_retries = Counter("read_retries", "Modbus requests repeated after a timeout, lost connection or busy device.",
                                    ["device"], **common)
        self.device_connects = Counter("device_connects", "TCP connection attempts to Modbus devices by outcome.",
                                       ["device", "outcome"], **common)
        # Spool and publishing side
        self.readings_published = Counter("readings_published", "Readings acknowledged by the broker (PUBACK).", **common)
        self.messages_published = Counter("messages_published", "MQTT messages acknowledged by the broker.", **common)
        self.publish_latency = Histogram("publish_latency", "Time from publish to PUBACK.", unit="seconds", **common)
        self.spool_depth = Gauge("spool_depth", "Readings in the spool not yet acknowledged.", **common)
        self.spool_oldest_age = Gauge("spool_oldest_unacked_age", "Age of the oldest unacknowledged reading.",
                                      unit="seconds", **common)
        self.spool_dropped = Counter("spool_dropped", "Readings dropped because the spool was full (audited).", **common)
        self.spool_quarantined = Counter("spool_quarantined", "Corrupt spool records moved aside.", **common)
        self.broker_connected = Gauge("broker_connected", "1 while connected to the broker.", **common)
        self.broker_connects = Counter("broker_connects", "Connection attempts to the broker by outcome.", ["outcome"],
                                       **common)
        self.config_reloads = Counter("config_reloads", "Calibration reloads by outcome.", ["outcome"], **common)
        # Control side (edge_agent.commands)
        self.commands = Counter("commands", "Command messages by outcome (applied, rejected, expired, failed, "
                                "ignored: unreadable without an id, or the queue was full).", ["outcome"], **common)
        self.command_writes = Counter("command_writes", "Modbus writes for commands and the fail-safe by outcome.",
                                      ["kind", "outcome"], **common)
        self.control_value = Gauge("control_value", "Last value written for each control (1/0 for on/off).",
                                   ["control"], **common)
        self.command_results_pending = Gauge("command_results_pending", "Command results waiting for the broker.",
                                             **common)

    def init_device(self, device: str) -> None:
        """Create the device's label values at zero so dashboards see them before the first error."""
        self.polls.labels(device)
        self.read_retries.labels(device)
        for outcome in ("ok", "failed"):
            self.device_connects.labels(device, outcome)
        for outcome in READ_OUTCOMES:
            self.reads.labels(device, outcome)
        self.device_up.labels(device).set(0)

    def tally(self, device: str) -> DeviceTally:
        """The device's ``DeviceTally`` (one per device name, however often its poller restarts)."""
        tally = self._tallies.get(device)
        if tally is None:
            tally = self._tallies[device] = DeviceTally(self, device)
            self._before_collect.flushes.append(tally.flush)
        return tally
