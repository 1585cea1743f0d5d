"""The ingest worker: broker → validate → de-duplicate → TSDB → acknowledge.

One thread runs the pipeline; paho's thread only queues messages. A batch is
the messages that arrived within ``batch.max_delay_s`` (up to
``batch.max_readings`` readings), processed strictly in arrival order:

1. validate each payload, v1 or v2 (``ems_contract.telemetry_v2.decode_telemetry_columns``: a v2
   message stays columns, and so do its samples, ``ingest.samples``, up to the request
   encoder); a bad one becomes
   a dead letter ``{reason, detail, topic, payload excerpt, size, sha256}`` on
   ``ems/v1/deadletter/<reason>``;
2. drop readings whose (site, seq) this worker already wrote (``SeenSeqs``),
   count null values, dead-letter readings whose measurement time is further in the
   future than ``max_future_s`` or older than ``max_age_s`` (``future_timestamp`` /
   ``too_old``, counted per site: nothing a site sends may move the TSDB's "now"),
   turn the rest into samples of ``ems_reading``;
3. remote-write the samples in one request, retrying transient failures with
   exponential backoff (capped at ``tsdb.max_backoff_s``) for as long as it
   takes; a permanent rejection is bisected down to the offending samples,
   which are dead-lettered as ``tsdb_rejected`` while the rest is written;
4. publish the dead letters (QoS 1, waits for the broker's PUBACK), each bounded to
   ``MAX_DEADLETTER_BYTES`` whatever the message was; a message whose dead letter cannot
   be published within ``deadletter_timeout_s`` is left unacknowledged (and its seqs
   unmarked), so the broker redelivers it after a reconnect — the others go on;
5. commit the seen seqs (SQLite), then PUBACK every other message of the batch in order.
   The commit is pipelined: the worker stages batch N's seqs in memory, hands the
   durable write (the fsync) to its commit thread and goes on with batch N+1 (collect,
   decode, remote write); before N+1's own commit, and whenever the queue runs dry, it
   waits for N's write to finish and only then PUBACKs N's messages. So a message is
   still acknowledged only after its samples are in the TSDB *and* its seqs are on disk;
   commits are written one at a time, and acknowledgements go out in batch order. A
   crash while N's write is in flight leaves N (and N+1) unacknowledged: the broker
   redelivers, the dedup file does not hold them, the samples are written again and
   Prometheus ignores identical samples. A failing write stops the worker (nothing of
   that batch acknowledged).

In a group of workers (``role``, ``[state] workers``; ``ingest.seq_share``) every worker but the
first publishes, once a commit is durable, its seq intervals of the sites that commit touched on
``ems/v1/<its client id>/seen``; the first, the packet-loss accountant, receives those messages
with its telemetry, folds them into its group view in the same commit and acknowledges them after
it, like any message.

One message can never stop the worker: any failure while handling it (not only a
``SchemaError``) dead-letters that message as ``unprocessable`` and the batch goes
on; a sample the TSDB client cannot even encode is isolated by the same bisection
as one the TSDB refuses. Anything that stops the batch before step 5 leaves its
messages unacknowledged: the broker redelivers them and the rewrite is idempotent.
``health()`` is what the liveness probe asks: the loop beats at least every few
seconds (also while it retries an unavailable TSDB) and paho's network thread lives. On SIGTERM the worker
unsubscribes, finishes the batch in hand and what the broker already sent
(bounded by ``shutdown_grace_s``), acknowledges, and exits.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import logging
import operator
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import compress, repeat
from typing import Callable

from ems_contract.telemetry import (QUALITIES, Batch, SchemaError, deadletter_topic, seen_topic, shown, telemetry_topic,
                                    worker_of_seen_topic)
from ems_contract.telemetry_v2 import Columns, decode_telemetry_columns
from ingest.dedup import SeenSeqs
from ingest.errors import BrokerError, TsdbRejected, TsdbUnavailable
from ingest.metrics import IngestMetrics
from ingest.mqtt import Incoming, MqttLink
from ingest.remote_write import RemoteWriter, labels_of
from ingest.samples import Labels, Sample, SampleBatch, SampleColumns
from ingest.seq_share import GroupRole, PeerSeen, decode_seen, encode_seen

__all__ = ["IngestWorker", "DeadLetter", "MAX_DEADLETTER_BYTES", "tune_gc"]

log = logging.getLogger(__name__)

MAX_DEADLETTER_BYTES = 128 * 1024
"""Upper bound of one dead letter: far below the broker's 1 MiB ``max_packet_size``."""
_EXCERPT_BYTES = 16 * 1024          # of the original payload; JSON escaping may grow it at most 6x
_MAX_LISTED_READINGS = 300          # per dead letter of refused readings (each entry is < 300 bytes)
_DETAIL_CHARS = 1000


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    payload: bytes            # the JSON document published on deadletter_topic(reason)


class _Abandoned(Exception):
    """The batch in hand cannot finish before the shutdown deadline; leave it unacknowledged."""


@dataclass(slots=True)
class _Item:
    """One received message on its way through a batch."""

    incoming: Incoming
    batch: Batch | Columns | None
    error: SchemaError | None
    seqs: list[int] = field(default_factory=list)          # marked seen by this batch
    peer: PeerSeen | None = None                            # another worker's seen seqs (the accountant's)
    letters: list[DeadLetter] = field(default_factory=list)
    undelivered: bool = False                               # a dead letter of it could not be published


@dataclass(slots=True)
class _Commit:
    """A written batch whose seqs are being made durable on the commit thread; acked when done."""

    done: list[_Item]
    write: Future
    share: list[tuple[list[str], bytes]] = field(default_factory=list)   # seen messages to publish once durable


_SEQ = operator.attrgetter("seq")
_QUALITY_COUNT = len(QUALITIES)
_MAX_CACHED_SERIES = 100_000    # label sets kept across messages; the cache starts over beyond it


class IngestWorker:
    """Drains ``link.incoming`` into the TSDB until ``request_stop()``; see the module docstring."""

    def __init__(self, *, link: MqttLink, writer: RemoteWriter, seen: SeenSeqs, metrics: IngestMetrics,
                 max_readings: int = 2000, max_delay_s: float = 0.2, max_backoff_s: float = 30.0,
                 shutdown_grace_s: float = 20.0, max_future_s: float = 300.0, max_age_s: float = 72 * 3600.0,
                 deadletter_timeout_s: float = 30.0, stall_after_s: float = 120.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, role: GroupRole | None = None) -> None:
        self.link = link
        self.role = role
        self._unshared: set[str] = set()        # sites whose last seen message did not reach the broker
        self.writer = writer
        self.seen = seen
        self.metrics = metrics
        self.max_readings = max_readings
        self.max_delay_s = max_delay_s
        self.max_backoff_s = max_backoff_s
        self.shutdown_grace_s = shutdown_grace_s
        self.max_future_ms = int(max_future_s * 1000)
        self.max_age_ms = int(max_age_s * 1000)
        self.deadletter_timeout_s = deadletter_timeout_s
        self.stall_after_s = stall_after_s
        self.clock = clock
        self.wall = wall
        self.sleep = sleep
        self.stopping = threading.Event()
        self._deadline: float | None = None
        self._beat = clock()
        self._running = False
        self._series: dict[tuple[str, str, str, str, str], tuple] = {}
        self._label_tables: dict[tuple, list[Labels]] = {}   # (site, *points table) → label sets, v2
        self._label_entries = 0
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dedup-commit")
        self._committing: _Commit | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the worker to finish (safe from a signal handler)."""
        if not self.stopping.is_set():
            self._deadline = self.clock() + self.shutdown_grace_s
            self.stopping.set()

    def health(self) -> tuple[bool, str]:
        """(alive, why): False when the loop stopped beating or paho's network thread died."""
        if not self._running:
            return False, "worker loop not running"
        stalled = self.clock() - self._beat
        if stalled > self.stall_after_s:
            return False, f"worker loop made no progress for {stalled:.0f}s"
        if not self.link.network_alive:
            return False, "MQTT network thread is not running"
        return True, "ok"

    def run(self) -> None:
        """Process batches until ``request_stop``; then drain what was delivered, and return."""
        self._running = True
        try:
            self._run()
            self._finish_commit()
        finally:
            self._running = False
            self._committer.shutdown(wait=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            self._beat = self.clock()
            if self._committing is not None and self.link.incoming.empty():
                self._finish_commit()               # nothing to overlap with: acknowledge now
            items = self._collect()
            if items:
                self.process(items)
        log.info("stopping: unsubscribing and finishing the messages in hand (grace %.0fs)", self.shutdown_grace_s)
        self.link.unsubscribe_all()
        quiet_since = self.clock()
        while self._deadline is not None and self.clock() < self._deadline:
            self._beat = self.clock()
            if self._committing is not None and self.link.incoming.empty():
                self._finish_commit()
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
        readings = _size(items[0].batch)
        deadline = self.clock() + self.max_delay_s
        while readings < self.max_readings:
            remaining = deadline - self.clock()
            try:
                message = incoming.get(timeout=remaining) if remaining > 0 else incoming.get_nowait()
            except queue.Empty:
                break
            item = self._decode(message)
            items.append(item)
            readings += _size(item.batch)
        self.metrics.queue_depth.set(incoming.qsize() + len(items))
        return items

    def _decode(self, message: Incoming) -> _Item:
        try:
            if self.role is not None and self.role.shared and worker_of_seen_topic(message.topic) is not None:
                return _Item(message, None, None, peer=decode_seen(message.payload, message.topic))
            return _Item(message, decode_telemetry_columns(message.payload, message.topic), None)
        except SchemaError as exc:
            return _Item(message, None, exc)
        except Exception as exc:  # noqa: BLE001 - one message must never stop the worker
            log.exception("unexpected failure decoding a message on %s; dead-lettering it", shown(message.topic))
            return _Item(message, None, SchemaError("unprocessable", f"{type(exc).__name__}: {shown(str(exc))}"))

    def process(self, items: list[_Item]) -> bool:
        """Write, dead-letter, commit and acknowledge one batch; False when it was left unacknowledged."""
        samples = SampleBatch()
        counts = {"duplicate": 0, "null": 0, "future_timestamp": 0, "too_old": 0}
        now_ms = int(self.wall() * 1000)
        for item in items:
            if item.peer is not None:
                for site, pairs in item.peer.sites.items():
                    self.seen.merge_peer(site, pairs)
                continue
            if item.error is None:
                try:
                    samples.extend(self._samples(item, now_ms, counts))
                except Exception as exc:  # noqa: BLE001 - one message must never stop the worker
                    log.exception("unexpected failure handling a message of site %s; dead-lettering it",
                                  item.batch.site if item.batch else "?")
                    self._unmark(item)
                    item.letters.clear()
                    item.error = SchemaError("unprocessable", f"{type(exc).__name__}: {shown(str(exc))}")
            if item.error is not None:
                item.letters.append(_bad_message(item.incoming, item.error))
        try:
            rejected = self._write(samples)
            for item, letter in _rejected_samples(rejected, items):
                item.letters.append(letter)
            self._publish_letters(items)
        except _Abandoned as exc:
            self.seen.rollback()
            self._finish_commit()
            log.warning("batch of %d messages left unacknowledged: %s", len(items), exc)
            return False
        for item in items:
            if item.undelivered:
                self._unmark(item)
        self._finish_commit()                   # the previous batch: durable, then acked (order kept)
        received: dict[str, int] = {}
        for item in items:
            if item.batch is not None and item.seqs and not item.undelivered:
                received[item.batch.site] = received.get(item.batch.site, 0) + len(item.seqs)
        for site, n in received.items():
            self.metrics.site_received.labels(site).inc(n)
        for site, n in self.seen.account_losses(now_ms).items():   # no persist is running now
            self.metrics.site_lost.labels(site).inc(n)
            log.warning("site %s: %d readings lost (seq gaps not filled within %d s)", site, n,
                        self.seen.loss_horizon_ms // 1000)
        rows = self.seen.stage(now_ms)
        done = [item for item in items if not item.undelivered]
        if rows:
            write = self._committer.submit(self.seen.persist, rows)
        else:                                   # nothing new to record (all duplicates or dead letters)
            write = Future()
            write.set_result(None)
        self._committing = _Commit(done, write, self._seen_messages(rows))
        self.metrics.messages_done(len(done))
        self.metrics.readings.labels("written").inc(len(samples) - len(rejected))
        self.metrics.readings.labels("rejected").inc(len(rejected))
        self.metrics.readings.labels("duplicate").inc(counts["duplicate"])
        self.metrics.readings.labels("null").inc(counts["null"])
        self.metrics.readings.labels("future_timestamp").inc(counts["future_timestamp"])
        self.metrics.readings.labels("too_old").inc(counts["too_old"])
        self.metrics.duplicates.inc(counts["duplicate"])
        for item in done:
            for letter in item.letters:
                self.metrics.dead_letters.labels(letter.reason).inc()
        self.metrics.sites.set(self.seen.site_count)
        self.metrics.queue_depth.set(self.link.incoming.qsize())
        return True

    def _finish_commit(self) -> None:
        """Wait until the batch in the commit thread is durable, then PUBACK its messages in order.

        A failed write raises (the worker stops; none of that batch is acknowledged)."""
        commit, self._committing = self._committing, None
        if commit is None:
            return
        commit.write.result()
        done = commit.done
        for sites, payload in commit.share:
            self._share(sites, payload)
        acked = sum(1 for item in done if self.link.ack(item.incoming))
        if acked < len(done):
            log.info("%d of %d messages arrived on an earlier connection and are not acknowledged on this one; "
                     "copies the broker redelivers are recognised as duplicates", len(done) - acked, len(done))

    def _seen_messages(self, rows: list) -> list[tuple[list[str], bytes]]:
        """The seen messages of a staged commit: this worker's intervals of every site the commit
        touched (and of those whose last message failed), when it shares with an accountant."""
        if self.role is None or not self.role.shared or self.role.accountant:
            return []
        sites = {row[1] for row in rows if row[0] == "seen"} | self._unshared
        self._unshared.clear()
        return list(encode_seen(self.role.worker, {site: self.seen.intervals(site) for site in sorted(sites)}))

    def _share(self, sites: list[str], payload: bytes) -> None:
        """Publish one seen message; on failure its sites go into the next one (a whole set each time)."""
        assert self.role is not None
        try:
            self.link.publish(seen_topic(self.role.worker), payload, qos=1,
                              timeout=max(0.1, self._remaining(default=10.0)))
        except BrokerError as exc:
            self._unshared.update(sites)
            log.warning("seen seqs of %d sites not shared with the accountant yet (%s); they go with the next commit",
                        len(sites), exc)

    def _samples(self, item: _Item, now_ms: int, counts: dict[str, int]) -> list[Sample] | SampleColumns:
        """The samples of one valid message; marks its new seqs seen and dead-letters its readings
        whose measurement time the TSDB must not see."""
        batch = item.batch
        assert batch is not None
        site = batch.site
        self.metrics.site_clock_skew.labels(site).set((batch.sent_ms - now_ms) / 1000)
        self.metrics.site_last_message.labels(site).set(now_ms / 1000)
        earliest, latest = now_ms - self.max_age_ms, now_ms + self.max_future_ms
        series = self._series
        if len(series) > _MAX_CACHED_SERIES:
            series.clear()
        if isinstance(batch, Columns):
            fast = self._column_samples(item, batch, earliest, latest, counts)
            if fast is not None:
                return fast
            batch = batch.batch()
        samples: list[Sample] = []
        clock_rejected: dict[str, list] = {}
        seen, mark, taken, add = self.seen.seen, self.seen.mark, item.seqs.append, samples.append
        readings = batch.readings
        lo, hi = batch.seq_first, batch.seq_last
        # The usual message: seqs exactly lo..hi in order (always so in v2), none seen before. Check and
        # mark the range at once instead of two set operations per reading.
        fresh = (len(readings) == hi - lo + 1 and readings[0].seq == lo and readings[-1].seq == hi
                 and list(map(_SEQ, readings)) == list(range(lo, hi + 1))
                 and self.seen.mark_new_range(site, lo, hi))
        if fresh:
            item.seqs.extend(range(lo, hi + 1))
        for reading in readings:
            seq = reading.seq
            if not fresh:
                if seen(site, seq):
                    counts["duplicate"] += 1
                    continue
                mark(site, seq)
                taken(seq)
            if not earliest <= reading.ts_ms <= latest:
                clock_rejected.setdefault("future_timestamp" if reading.ts_ms > latest else "too_old", []).append(reading)
                continue
            if reading.value is None:
                counts["null"] += 1
                continue
            key = (site, reading.asset, reading.point, reading.quality, reading.unit)
            labels = series.get(key)
            if labels is None:
                labels = series[key] = labels_of(*key)
            add(Sample(labels, reading.ts_ms, reading.value, site, seq))
        for reason, readings in clock_rejected.items():
            counts[reason] += len(readings)
            self.metrics.clock_rejected.labels(site, reason).inc(len(readings))
            limit = "ahead of" if reason == "future_timestamp" else "older than"
            allowed = self.max_future_ms if reason == "future_timestamp" else self.max_age_ms
            detail = (f"{len(readings)} readings measured {limit} the ingest's clock allows "
                      f"({allowed // 1000}s; clock {now_ms} ms)")
            item.letters.extend(_readings_letters(reason, detail, site,
                                                  [_reading_doc(site, r.seq, r.ts_ms, r.value, r.asset, r.point,
                                                                r.unit, r.quality) for r in readings]))
            log.warning("site %s: %d readings dead-lettered as %s (ts_ms %d..%d, worker clock %d)", site,
                        len(readings), reason, min(r.ts_ms for r in readings), max(r.ts_ms for r in readings), now_ms)
        return samples

    def _column_samples(self, item: _Item, columns: Columns, earliest: int, latest: int,
                        counts: dict[str, int]) -> SampleColumns | None:
        """The samples of a v2 message as its columns, when all of it is new and inside the clock
        window (the usual case); None, with nothing marked, when a reading needs the per-reading path."""
        site, lo, hi, base, dt = columns.site, columns.seq_first, columns.seq_last, columns.base_ms, columns.dt
        if not (earliest <= base + min(dt) and base + max(dt) <= latest):
            return None
        if not self.seen.mark_new_range(site, lo, hi):
            return None
        item.seqs.extend(range(lo, hi + 1))
        values = columns.val
        # Each reading's label set is table[point index * len(QUALITIES) + quality], from a table
        # built once per points table of a site; the samples stay columns (no tuple per reading).
        table = self._label_tables.get((site, *columns.points))
        if table is None:
            table = self._label_table(site, columns.points)
        p, q, dt, seqs = columns.p, columns.q, columns.dt, range(lo, hi + 1)
        nulls = values.count(None)
        if nulls:                                   # a null value has no sample
            keep = list(map(operator.is_not, values, repeat(None)))
            p, q, dt, values, seqs = (list(compress(column, keep)) for column in (p, q, dt, values, seqs))
        counts["null"] += nulls
        return SampleColumns(table, _QUALITY_COUNT, p, q, base, dt, values, site, seqs)

    def _label_table(self, site: str, points: list[tuple[str, str, str]]) -> list[Labels]:
        """The label sets of a v2 points table, indexed by point index * len(QUALITIES) + quality."""
        table = [labels_of(site, asset, point, quality, unit) for asset, point, unit in points for quality in QUALITIES]
        self._label_entries += len(table)
        if self._label_entries > _MAX_CACHED_SERIES:        # bounded whatever the sites send: start over
            self._label_tables.clear()
            self._label_entries = len(table)
        self._label_tables[(site, *points)] = table
        return table

    def _unmark(self, item: _Item) -> None:
        if item.batch is not None and item.seqs:
            self.seen.unmark(item.batch.site, item.seqs)
        item.seqs.clear()

    def _publish_letters(self, items: list[_Item]) -> None:
        """Publish every item's dead letters; an item whose letter cannot go out is marked undelivered.

        After the first failure the batch's remaining letters are not tried (the broker is away or
        refusing us: each would wait as long); their items stay unacknowledged and come back.
        """
        failed = False
        for item in items:
            for letter in item.letters:
                if failed:
                    item.undelivered = True
                    break
                try:
                    self._publish_retrying(letter)
                except BrokerError as exc:
                    failed = item.undelivered = True
                    self.metrics.dead_letters_undelivered.inc()
                    log.error("dead letter (%s, %d bytes) not delivered: %s; its message stays unacknowledged "
                              "and comes back after a reconnect", letter.reason, len(letter.payload), exc)
                    break

    def _remaining(self, default: float) -> float:
        if self._deadline is None:
            return default
        return max(0.0, self._deadline - self.clock())

    def _publish_retrying(self, letter: DeadLetter) -> None:
        """Publish one dead letter, retrying for up to ``deadletter_timeout_s``; raises BrokerError after."""
        give_up = self.clock() + self.deadletter_timeout_s
        while True:
            self._beat = self.clock()
            try:
                self.link.publish(deadletter_topic(letter.reason), letter.payload, qos=1,
                                  timeout=max(0.1, min(give_up - self.clock(), self._remaining(default=30.0))))
                return
            except BrokerError as exc:
                if self.stopping.is_set() and self._remaining(0.0) <= 0:
                    raise _Abandoned(f"dead letter not delivered at shutdown: {exc}") from exc
                if self.clock() >= give_up:
                    raise
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
            self._beat = self.clock()
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


def tune_gc() -> tuple[int, int, int]:
    """Set this process's garbage collector for the worker; returns the thresholds it replaced.

    The data path allocates a few objects per reading and builds no reference cycles: the young
    generation is collected every 50,000 allocations instead of 700 (at the default, collecting
    took about a quarter of the pipeline's CPU), and what start-up built is left out of every
    collection (``gc.freeze``). Call once, when start-up is done.
    """
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 10, 10)
    return previous


def _size(batch: Batch | Columns | None) -> int:
    """Readings in a decoded message (0 for one that failed validation)."""
    if batch is None:
        return 0
    return batch.count if isinstance(batch, Columns) else len(batch.readings)


def _bad_message(message: Incoming, error: SchemaError) -> DeadLetter:
    """The dead letter of a message that could not be taken: bounded, whatever the message was."""
    payload = message.payload
    body: dict[str, object] = {"reason": error.reason, "detail": _clip(error.detail), "topic": _clip(message.topic, 300),
                               "received_ms": int(time.time() * 1000), "payload_bytes": len(payload),
                               "payload_sha256": hashlib.sha256(payload).hexdigest()}
    excerpt = payload[:_EXCERPT_BYTES]
    body["truncated"] = len(excerpt) < len(payload)
    try:
        text = excerpt.decode("utf-8")
        body["payload"] = text
    except UnicodeDecodeError:
        body["payload_b64"] = base64.b64encode(excerpt).decode()
    doc = json.dumps(body, separators=(",", ":")).encode()
    if len(doc) > MAX_DEADLETTER_BYTES:                  # cannot happen with the bounds above; never exceed it
        body.pop("payload", None)
        body.pop("payload_b64", None)
        body["truncated"] = True
        doc = json.dumps(body, separators=(",", ":")).encode()
    return DeadLetter(error.reason, doc)


def _clip(text: str, limit: int = _DETAIL_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}…({len(text)} chars)"


def _reading_doc(site: str, seq: int, ts_ms: int, value: float | None, asset: str, point: str, unit: str,
                 quality: str) -> dict[str, object]:
    return {"site": site, "asset": asset, "point": point, "unit": unit, "quality": quality, "seq": seq,
            "ts_ms": ts_ms, "value": value}


def _readings_letters(reason: str, detail: str, site: str, readings: list[dict[str, object]]) -> list[DeadLetter]:
    """Dead letters listing refused readings, at most ``_MAX_LISTED_READINGS`` each (so each stays bounded)."""
    letters = []
    for start in range(0, len(readings), _MAX_LISTED_READINGS):
        chunk = readings[start:start + _MAX_LISTED_READINGS]
        body = {"reason": reason, "detail": _clip(detail), "topic": telemetry_topic(site),
                "received_ms": int(time.time() * 1000), "readings": chunk}
        letters.append(DeadLetter(reason, json.dumps(body, separators=(",", ":")).encode()))
    return letters


def _rejected_samples(rejected: list[tuple[Sample, TsdbRejected]],
                      items: list[_Item]) -> list[tuple[_Item, DeadLetter]]:
    """Dead letters ``tsdb_rejected``: per message and TSDB answer, listing the rejected readings."""
    if not rejected:                     # the usual case: no (site, seq) → message index to build
        return []
    owner = {(item.batch.site, seq): item for item in items if item.batch is not None and item.error is None
             for seq in item.seqs}
    groups: dict[tuple[int, str], tuple[_Item, list[Sample]]] = {}
    for sample, exc in rejected:
        item = owner[(sample.site, sample.seq)]
        groups.setdefault((id(item), str(exc)), (item, []))[1].append(sample)
    out = []
    for (_, detail), (item, samples) in groups.items():
        docs = []
        for s in samples:
            labels = dict(s.labels)
            docs.append(_reading_doc(s.site, s.seq, s.ts_ms, s.value, labels["asset"], labels["point"],
                                     labels["unit"], labels["quality"]))
        out.extend((item, letter) for letter in _readings_letters("tsdb_rejected", detail, samples[0].site, docs))
    return out
