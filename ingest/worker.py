"""The ingest worker: broker → validate → de-duplicate → TSDB → acknowledge.

One thread runs the pipeline; paho's thread only queues messages. A batch is
the messages that arrived within ``batch.max_delay_s`` (up to
``batch.max_readings`` readings), processed strictly in arrival order:

1. validate each payload (``ems_contract.telemetry.decode_batch``); a bad one becomes
   a dead letter ``{reason, detail, topic, payload}`` on ``ems/v1/deadletter/<reason>``;
2. drop readings whose (site, seq) this worker already wrote (``SeenSeqs``),
   count null values, turn the rest into samples of ``ems_reading``;
3. remote-write the samples in one request, retrying transient failures with
   exponential backoff (capped at ``tsdb.max_backoff_s``) for as long as it
   takes; a permanent rejection is bisected down to the offending samples,
   which are dead-lettered as ``tsdb_rejected`` while the rest is written;
4. publish the dead letters (QoS 1, waits for the broker's PUBACK);
5. commit the seen seqs (SQLite), then PUBACK every message of the batch in order.

Anything that stops the batch before step 5 leaves its messages unacknowledged:
the broker redelivers them and the rewrite is idempotent. On SIGTERM the worker
unsubscribes, finishes the batch in hand and what the broker already sent
(bounded by ``shutdown_grace_s``), acknowledges, and exits.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ems_contract.telemetry import MAX_PAYLOAD_BYTES, Batch, SchemaError, deadletter_topic, decode_batch, telemetry_topic
from ingest.dedup import SeenSeqs
from ingest.errors import BrokerError, TsdbRejected, TsdbUnavailable
from ingest.metrics import IngestMetrics
from ingest.mqtt import Incoming, MqttLink
from ingest.remote_write import RemoteWriter, Sample, series_labels

__all__ = ["IngestWorker", "DeadLetter"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    payload: bytes            # the JSON document published on deadletter_topic(reason)


class _Abandoned(Exception):
    """The batch in hand cannot finish before the shutdown deadline; leave it unacknowledged."""


@dataclass(slots=True)
class _Item:
    incoming: Incoming
    batch: Batch | None
    error: SchemaError | None


class IngestWorker:
    """Drains ``link.incoming`` into the TSDB until ``request_stop()``; see the module docstring."""

    def __init__(self, *, link: MqttLink, writer: RemoteWriter, seen: SeenSeqs, metrics: IngestMetrics,
                 max_readings: int = 2000, max_delay_s: float = 0.2, max_backoff_s: float = 30.0,
                 shutdown_grace_s: float = 20.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.link = link
        self.writer = writer
        self.seen = seen
        self.metrics = metrics
        self.max_readings = max_readings
        self.max_delay_s = max_delay_s
        self.max_backoff_s = max_backoff_s
        self.shutdown_grace_s = shutdown_grace_s
        self.clock = clock
        self.sleep = sleep
        self.stopping = threading.Event()
        self._deadline: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the worker to finish (safe from a signal handler)."""
        if not self.stopping.is_set():
            self._deadline = self.clock() + self.shutdown_grace_s
            self.stopping.set()

    def run(self) -> None:
        """Process batches until ``request_stop``; then drain what was delivered, and return."""
        while not self.stopping.is_set():
            items = self._collect()
            if items:
                self.process(items)
        log.info("stopping: unsubscribing and finishing the messages in hand (grace %.0fs)", self.shutdown_grace_s)
        self.link.unsubscribe_all()
        quiet_since = self.clock()
        while self._deadline is not None and self.clock() < self._deadline:
            items = self._collect()
            if items:
                if not self.process(items):
                    break
                quiet_since = self.clock()
            elif self.clock() - quiet_since > 0.5:
                break
        left = self.link.incoming.qsize()
        if left:
            log.warning("exiting with %d messages unacknowledged; the broker redelivers them", left)

    # -- pipeline ----------------------------------------------------------------------------------
    def _collect(self) -> list[_Item]:
        incoming = self.link.incoming
        try:
            first = incoming.get(timeout=0.2)
        except queue.Empty:
            return []
        items = [self._decode(first)]
        readings = len(items[0].batch.readings) if items[0].batch else 0
        deadline = self.clock() + self.max_delay_s
        while readings < self.max_readings:
            remaining = deadline - self.clock()
            try:
                message = incoming.get(timeout=remaining) if remaining > 0 else incoming.get_nowait()
            except queue.Empty:
                break
            item = self._decode(message)
            items.append(item)
            readings += len(item.batch.readings) if item.batch else 0
        self.metrics.queue_depth.set(incoming.qsize() + len(items))
        return items

    @staticmethod
    def _decode(message: Incoming) -> _Item:
        try:
            return _Item(message, decode_batch(message.payload, message.topic), None)
        except SchemaError as exc:
            return _Item(message, None, exc)

    def process(self, items: list[_Item]) -> bool:
        """Write, dead-letter, commit and acknowledge one batch; False when it was left unacknowledged."""
        samples: list[Sample] = []
        dead: list[DeadLetter] = []
        counts = {"duplicate": 0, "null": 0}
        for item in items:
            if item.error is not None:
                dead.append(_bad_message(item.incoming, item.error))
                continue
            site = item.batch.site
            for reading in item.batch.readings:
                if self.seen.seen(site, reading.seq):
                    counts["duplicate"] += 1
                    continue
                self.seen.mark(site, reading.seq)
                if reading.value is None:
                    counts["null"] += 1
                    continue
                samples.append(Sample(series_labels(site, reading), reading.ts_ms, reading.value, site, reading.seq))
        try:
            rejected = self._write(samples)
            dead.extend(_rejected_samples(rejected))
            for letter in dead:
                self._publish_retrying(letter)
        except _Abandoned as exc:
            self.seen.rollback()
            log.warning("batch of %d messages left unacknowledged: %s", len(items), exc)
            return False
        self.seen.commit()
        acked = sum(1 for item in items if self.link.ack(item.incoming))
        self.metrics.messages_done(len(items))
        self.metrics.readings.labels("written").inc(len(samples) - len(rejected))
        self.metrics.readings.labels("rejected").inc(len(rejected))
        self.metrics.readings.labels("duplicate").inc(counts["duplicate"])
        self.metrics.readings.labels("null").inc(counts["null"])
        self.metrics.duplicates.inc(counts["duplicate"])
        for letter in dead:
            self.metrics.dead_letters.labels(letter.reason).inc()
        self.metrics.sites.set(self.seen.site_count)
        self.metrics.queue_depth.set(self.link.incoming.qsize())
        if acked < len(items):
            log.info("%d of %d messages arrived on an earlier connection and are not acknowledged on this one; "
                     "copies the broker redelivers are recognised as duplicates", len(items) - acked, len(items))
        return True

    def _remaining(self, default: float) -> float:
        if self._deadline is None:
            return default
        return max(0.0, self._deadline - self.clock())

    def _publish_retrying(self, letter: DeadLetter) -> None:
        while True:
            try:
                self.link.publish(deadletter_topic(letter.reason), letter.payload, qos=1,
                                  timeout=min(30.0, self._remaining(default=30.0)))
                return
            except BrokerError as exc:
                if self.stopping.is_set() and self._remaining(0.0) <= 0:
                    raise _Abandoned(f"dead letter not delivered at shutdown: {exc}") from exc
                log.warning("dead letter (%s) not delivered yet, retrying: %s", letter.reason, exc)
                self.sleep(0.5)

    def _write(self, samples: list[Sample]) -> list[tuple[Sample, TsdbRejected]]:
        """Write every sample; returns the permanently rejected ones (found by bisection)."""
        if not samples:
            return []
        try:
            self._write_retrying(samples)
            return []
        except TsdbRejected as exc:
            if len(samples) == 1:
                log.warning("TSDB rejected site %s seq %d: %s", samples[0].site, samples[0].seq, exc)
                return [(samples[0], exc)]
        ordered = sorted(samples, key=lambda s: (s.labels, s.ts_ms))
        half = len(ordered) // 2
        return self._write(ordered[:half]) + self._write(ordered[half:])

    def _write_retrying(self, samples: list[Sample]) -> None:
        backoff = 0.1
        while True:
            try:
                self.metrics.write_duration.observe(self.writer.write(samples))
                return
            except TsdbUnavailable as exc:
                self.metrics.write_retries.inc()
                if self.stopping.is_set() and self._remaining(0.0) <= backoff:
                    raise _Abandoned(f"TSDB still unavailable at shutdown: {exc}") from exc
                log.warning("remote write of %d samples failed, retrying in %.1fs: %s", len(samples), backoff, exc)
                self.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)


def _bad_message(message: Incoming, error: SchemaError) -> DeadLetter:
    body: dict[str, object] = {"reason": error.reason, "detail": error.detail, "topic": message.topic,
                               "received_ms": int(time.time() * 1000), "payload_bytes": len(message.payload)}
    original = message.payload[:MAX_PAYLOAD_BYTES]
    body["truncated"] = len(original) < len(message.payload)
    try:
        body["payload"] = original.decode("utf-8")
    except UnicodeDecodeError:
        body["payload_b64"] = base64.b64encode(original).decode()
    return DeadLetter(error.reason, json.dumps(body, separators=(",", ":")).encode())


def _rejected_samples(rejected: list[tuple[Sample, TsdbRejected]]) -> list[DeadLetter]:
    """One dead letter per site and TSDB answer, listing the rejected readings."""
    groups: dict[tuple[str, str], list[Sample]] = {}
    for sample, exc in rejected:
        groups.setdefault((sample.site, str(exc)), []).append(sample)
    letters = []
    for (site, detail), samples in groups.items():
        readings = [{**{k: v for k, v in s.labels if k != "__name__"}, "seq": s.seq, "ts_ms": s.ts_ms,
                     "value": s.value} for s in samples]
        body = {"reason": "tsdb_rejected", "detail": detail, "topic": telemetry_topic(site),
                "received_ms": int(time.time() * 1000), "readings": readings}
        letters.append(DeadLetter("tsdb_rejected", json.dumps(body, separators=(",", ":")).encode()))
    return letters
