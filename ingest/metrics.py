"""Prometheus metrics of an ingest worker: ``ems_ingest_<what>_<unit>``, served on port 9100.

The registry is a parameter (tests use a fresh ``CollectorRegistry()``). Label
values are bounded and initialised at zero: ``outcome`` is one of
``READING_OUTCOMES``; dead-letter ``reason`` is a schema reason code or
``tsdb_rejected``.

``ems_ingest_messages_total`` is what the autoscaler scales on: the
prometheus-adapter turns ``rate(ems_ingest_messages_total[1m])`` into the pods
metric ``ems_ingest_messages_per_second`` (docs/ingest.md). The gauge of the
same name here is the worker's own 60-second average, for dashboards.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["IngestMetrics", "READING_OUTCOMES", "CLOCK_REASONS", "DEAD_LETTER_REASONS", "RateWindow"]

# written: accepted by the TSDB; duplicate: (site, seq) already written; null: value null (device_error/stale),
# counted and not written; rejected: the TSDB refused it permanently (dead-lettered); future_timestamp /
# too_old: measured outside the window the ingest passes to the TSDB (dead-lettered, counted per site too).
READING_OUTCOMES = ("written", "duplicate", "null", "rejected", "future_timestamp", "too_old")
CLOCK_REASONS = ("future_timestamp", "too_old")
DEAD_LETTER_REASONS = ("oversized", "not_json", "too_deep", "bad_encoding", "bad_version", "bad_id", "bad_topic",
                       "site_mismatch", "bad_field", "bad_value", "bad_seq", "unprocessable", "tsdb_rejected",
                       *CLOCK_REASONS)


class RateWindow:
    """Events per second over the last ``window_s`` seconds, in one-second buckets."""

    def __init__(self, window_s: int = 60, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self.started = clock()
        self._buckets: collections.deque[list[int]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        second = int(self.clock())
        with self._lock:
            if self._buckets and self._buckets[-1][0] == second:
                self._buckets[-1][1] += n
            else:
                self._buckets.append([second, n])

    def rate(self) -> float:
        now = self.clock()
        horizon = int(now) - self.window_s
        with self._lock:
            while self._buckets and self._buckets[0][0] <= horizon:
                self._buckets.popleft()
            total = sum(n for _, n in self._buckets)
        span = min(float(self.window_s), max(now - self.started, 1.0))
        return total / span


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        common = {"namespace": "ems", "subsystem": "ingest", "registry": self.registry}
        self.messages = Counter("messages", "Telemetry messages handled: written or dead-lettered (a redelivered copy counts again).",
                                **common)
        self.readings = Counter("readings", "Readings by outcome.", ["outcome"], **common)
        self.duplicates = Counter("duplicates", "Readings dropped because their (site, seq) was already written.",
                                  **common)
        self.dead_letters = Counter("dead_letters", "Messages or readings dead-lettered, by reason.", ["reason"],
                                    **common)
        self.dead_letters_undelivered = Counter(
            "dead_letters_undelivered", "Dead letters the broker did not take in time (their message stays unacknowledged).",
            **common)
        # Per site: the broker lets only the stack's sites publish telemetry, so the label is bounded.
        self.clock_rejected = Counter("clock_rejected_readings", "Readings dead-lettered for their measurement time, "
                                      "by site and reason (future_timestamp: the site's clock is ahead).",
                                      ["site", "reason"], **common)
        self.site_clock_skew = Gauge("site_clock_skew", "A site's sent_ms minus this worker's clock at receipt, "
                                     "latest message (positive: the site's clock is ahead; includes transit time).",
                                     ["site"], unit="seconds", **common)
        self.site_last_message = Gauge("site_last_message_timestamp", "When this worker last received a telemetry "
                                       "message of the site (its wall clock).", ["site"], unit="seconds", **common)
        self.site_received = Counter("site_readings_received", "Readings of the site this worker saw for the first "
                                     "time (new seqs).", ["site"], **common)
        self.site_lost = Counter("site_readings_lost", "Seqs of the site in gaps not filled within the loss horizon "
                                 "(dedup.SeenSeqs.account_losses).", ["site"], **common)
        self.write_duration = Histogram("write_duration", "Time of one successful remote write to the TSDB.",
                                        unit="seconds", buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                        **common)
        self.write_retries = Counter("write_retries", "Remote writes retried after a transient failure.", **common)
        self.messages_per_second = Gauge("messages_per_second",
                                         "Messages acknowledged per second, averaged over the last 60 s by this worker.",
                                         **common)
        self.queue_depth = Gauge("queue_depth", "Messages received and not yet acknowledged.", **common)
        self.broker_connected = Gauge("broker_connected", "1 while connected to the broker.", **common)
        self.sites = Gauge("dedup_sites", "Sites with de-duplication state.", **common)
        for outcome in READING_OUTCOMES:
            self.readings.labels(outcome)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        self.rate = RateWindow(60, clock)
        self.messages_per_second.set_function(self.rate.rate)

    def messages_done(self, n: int) -> None:
        self.messages.inc(n)
        self.rate.add(n)
