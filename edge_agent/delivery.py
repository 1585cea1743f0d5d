"""Delivery: spooled batches → MQTT messages → PUBACK → the spool lets go (``drain``).

::

    lease whole spool rows ─▶ group them into InFlight entries (about batch_max_readings readings)
      ─▶ payloads(): v1 messages, or v2 messages split at seq gaps ─▶ EdgeMqttLink.start_publish
      ─▶ PUBACK of every message of the oldest entries ─▶ Spool.ack_nowait(first, last)

A row leaves the spool only after the broker acknowledged all of its readings;
a lost connection or a missing PUBACK releases every lease, and the same rows
go out again after reconnecting (at-least-once; the ingest de-duplicates by
(site, seq)).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from edge_agent.batch import ReadingBatch
from edge_agent.errors import PublishError
from edge_agent.event_loop import TIMER_SLACK_S
from edge_agent.metrics import AgentMetrics
from edge_agent.mqtt_link import EdgeMqttLink
from edge_agent.spool import Spool
from ems_contract.telemetry import MAX_PAYLOAD_BYTES, encode_batch, telemetry_topic
from ems_contract.telemetry_v2 import Segment, encode_segments

__all__ = ["InFlight", "drain", "payloads"]


@dataclass(slots=True)
class InFlight:
    """Published spool rows awaiting their PUBACK: seqs ``first..last`` in one or more messages."""

    first: int
    last: int
    readings: int
    messages: int
    acked: "asyncio.Future[Any]"       # completes when every message of the entry is acknowledged
    started: float                     # time.monotonic() at publish


def payloads(site: str, batches: list[ReadingBatch], *, payload_format: str, max_readings: int,
             sent_ms: int) -> list[bytes]:
    """The messages that carry ``batches`` (sequenced, ascending): at most ``max_readings`` readings each.

    v1 messages fill up across batches and seq gaps; v2 messages hold one run of
    consecutive seqs each, so a gap starts a new one. A message over the
    contract's ``MAX_PAYLOAD_BYTES`` (long names in v1 reach it below 1000
    readings) is split in halves until each fits, so the ingest never refuses one as oversized.
    """
    out: list[bytes] = []
    if payload_format == "v1":
        readings = [r for b in batches for r in b.readings()]
        for i in range(0, len(readings), max_readings):
            _fit(lambda lo, hi, chunk=readings[i:i + max_readings]: encode_batch(site, chunk[lo:hi], sent_ms=sent_ms),
                 0, min(max_readings, len(readings) - i), out)
        return out
    runs: list[list[ReadingBatch]] = []
    after: int | None = None            # the seq after the last batch's
    for b in batches:
        if b.seq_first == after:
            runs[-1].append(b)
        else:
            runs.append([b])
        after = b.seq_first + len(b.ts_ms)
    for run in runs:
        segments = [(b.ts_ms, b.asset, b.point, b.unit, b.value, b.quality) for b in run]
        total = run[-1].seq_first + len(run[-1].ts_ms) - run[0].seq_first

        def encode(lo: int, hi: int, seq_first: int = run[0].seq_first, segments: list[Segment] = segments,
                   total: int = total) -> bytes:
            """Readings ``lo:hi`` of the run: the batches' own columns, sliced only where ``lo`` or ``hi`` cuts one."""
            if lo == 0 and hi == total:
                return encode_segments(site, seq_first, segments, sent_ms)
            part = []
            starts = list(accumulate([len(s[0]) for s in segments], initial=0))
            for segment, start, stop in zip(segments, starts, starts[1:]):
                if start < hi and lo < stop:
                    first, end = max(lo - start, 0), min(hi, stop) - start
                    part.append(segment if end - first == stop - start else
                                tuple(column[first:end] for column in segment))
            return encode_segments(site, seq_first + lo, part, sent_ms)
        for i in range(0, total, max_readings):
            _fit(encode, i, min(i + max_readings, total), out)
    return out


def _fit(encode: Callable[[int, int], bytes], lo: int, hi: int, out: list[bytes]) -> None:
    """Append ``encode(lo, hi)``, or the encodings of its halves when it exceeds ``MAX_PAYLOAD_BYTES``."""
    payload = encode(lo, hi)
    if len(payload) <= MAX_PAYLOAD_BYTES or hi - lo == 1:
        out.append(payload)
        return
    middle = (lo + hi) // 2
    _fit(encode, lo, middle, out)
    _fit(encode, middle, hi, out)


async def drain(spool: Spool, link: EdgeMqttLink, *, site: str, batch_max_readings: int = 1000,
                batch_max_delay_s: float = 0.5, payload_format: str = "v2", window: int = 8,
                ack_timeout_s: float = 30.0, metrics: AgentMetrics | None = None,
                flushing: asyncio.Event | None = None, clock: Callable[[], float] = time.time,
                logger: logging.Logger | None = None) -> None:
    """Publish spooled batches forever, oldest first; a row leaves the spool only after its PUBACK.

    A message carries up to ``batch_max_readings`` readings. It goes at once
    when the link has nothing in flight; otherwise it waits for the PUBACKs of
    earlier messages, for enough readings to fill it, or ``batch_max_delay_s``,
    whichever comes first (no wait once ``flushing`` is set), encoded as ``payload_format`` (``payloads``). Spool
    rows are never split between in-flight entries: an entry holds whole rows
    (one message, or several for a row larger than a message), so its PUBACKs
    release exactly those rows. Up to ``window`` entries are in flight. A lost
    connection or a missing PUBACK (``ack_timeout_s``) releases every lease, and
    the same rows go out again after reconnecting — at-least-once; the ingest
    de-duplicates by (site, seq).
    """
    log = logger or logging.getLogger(__name__)
    topic = telemetry_topic(site)
    flushing = flushing or asyncio.Event()

    async def next_batches(limit: int) -> list[ReadingBatch]:
        """Up to about ``limit`` readings once a full message is pending, nothing is in flight
        (an idle link sends at once: low latency at low load), the oldest waited
        ``batch_max_delay_s``, or flushing. Under load, readings gather while earlier
        messages await their PUBACK, so messages grow towards ``batch_max_readings``."""
        waiting_since: float | None = None
        while True:
            wake.clear()
            pending = spool.pending
            if not pending:
                await wake.wait()
                continue
            waiting_since = waiting_since or clock()
            due = pending >= batch_max_readings or not inflight or flushing.is_set() or \
                clock() - waiting_since >= batch_max_delay_s - TIMER_SLACK_S
            if due:
                batches = await spool.lease(limit)
                if batches:
                    return batches
                continue
            timer = loop.call_later(max(0.0, batch_max_delay_s - (clock() - waiting_since)), wake.set)
            try:
                await wake.wait()
            finally:
                timer.cancel()

    async def relay(event: asyncio.Event, *, once: bool = False) -> None:
        """Set ``wake`` whenever ``event`` is set: one task waits on it for the whole session, where a
        wait on the three events took three new tasks (then cancelled) each time the sender idled."""
        while True:
            await event.wait()
            wake.set()
            if once:
                return
            event.clear()

    # Oldest first. The sender fills free slots several entries at a time and the acker acks every
    # consecutive confirmed entry with one spool delete: fewer awaits per reading.
    inflight: deque[InFlight] = deque()
    added, freed = asyncio.Event(), asyncio.Event()
    wake = asyncio.Event()              # spool.changed, flushing or freed: next_batches looks again
    loop = asyncio.get_running_loop()

    def entries(batches: list[ReadingBatch]) -> list[list[ReadingBatch]]:
        """Whole rows grouped into entries of about ``batch_max_readings`` readings."""
        groups: list[list[ReadingBatch]] = []
        size = 0
        for b in batches:
            if not groups or size + len(b) > batch_max_readings:
                groups.append([])
                size = 0
            groups[-1].append(b)
            size += len(b)
        return groups

    async def sender() -> None:
        while True:
            while len(inflight) >= window:
                freed.clear()
                await freed.wait()
            batches = await next_batches(batch_max_readings * (window - len(inflight)))
            sent_ms = int(clock() * 1000)
            for group in entries(batches):
                futures = [link.start_publish(topic, payload) for payload in
                           payloads(site, group, payload_format=payload_format, max_readings=batch_max_readings,
                                    sent_ms=sent_ms)]
                acked = futures[0] if len(futures) == 1 else asyncio.gather(*futures)
                inflight.append(InFlight(group[0].seq_first, group[-1].seq_last, sum(len(b) for b in group),
                                         len(futures), acked, time.monotonic()))
            added.set()

    async def acker() -> None:
        while True:
            while not inflight:
                added.clear()
                await added.wait()
            head = inflight[0]
            if not head.acked.done():
                await asyncio.wait((head.acked,), timeout=ack_timeout_s)   # no shield, no task: it stays
                if not head.acked.done():
                    link.abort(f"no PUBACK within {ack_timeout_s:.0f}s for seq {head.first}..{head.last}")
                    raise PublishError(f"no PUBACK for seq {head.first}..{head.last}")
            head.acked.result()         # raises what failed the publish (e.g. the connection was lost)
            confirmed: list[InFlight] = []
            while inflight and inflight[0].acked.done() and not inflight[0].acked.cancelled() \
                    and inflight[0].acked.exception() is None:
                confirmed.append(inflight.popleft())
            freed.set()                 # the window has room (and may be idle)
            wake.set()
            # The delete rides on the spool's next group commit; the acker goes on to the next PUBACKs.
            spool.ack_nowait(confirmed[0].first, confirmed[-1].last)
            if metrics is not None:
                now = time.monotonic()
                for entry in confirmed:
                    metrics.publish_latency.observe(now - entry.started)
                metrics.messages_published.inc(sum(entry.messages for entry in confirmed))
                metrics.readings_published.inc(sum(entry.readings for entry in confirmed))

    backoff = 0.1
    while True:
        await link.wait_connected()
        spool.release_leases()          # whatever an earlier session leased and did not ack goes out again
        started = time.monotonic()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(relay(spool.changed))
                group.create_task(relay(flushing, once=True))
                group.create_task(sender())
                group.create_task(acker())
        except* PublishError as errors:
            log.info("delivery interrupted (%s); unacknowledged readings will be sent again",
                     errors.exceptions[0])
        finally:
            while inflight:
                inflight.popleft().acked.cancel()
        if link.connected:
            # Still connected: the broker rejected a message (e.g. not authorised). Retry, but slower each time.
            backoff = 0.1 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
            await asyncio.sleep(backoff)
