"""Seq state shared by the ingest workers of one group, so that exactly one counts packet loss.

With several workers on one shared subscription each worker writes only its share of a site's
seqs; its own de-dup intervals have holes where the other workers' messages went. The loss count
(``ingest.dedup``) is therefore kept by one worker, the *accountant* (the first of the group's
``[state] workers``), over the union of what every worker wrote:

* after each durable commit every other worker publishes, for the sites the commit touched, its
  whole interval set on ``ems/v1/<its client id>/seen`` (QoS 1, the worker's own subtree: only it
  may publish there). A whole set, not the new seqs: a message that is lost is made good by the
  next one for the site, and receiving one twice changes nothing;
* the accountant subscribes to every other worker's topic (in its persistent session, so what
  is published while it is away waits for it), merges the sets into its group view (durable, in
  its de-dup store, committed with its own batch before the messages are acknowledged) and counts
  the holes of that view as today.

Payload (UTF-8 JSON, at most ``MAX_SEEN_BYTES``; a larger state is split over several)::

    {"v": 1, "worker": "ems-ingest-ingest-1", "sites": {"sub-07": [[1, 5000], [5101, 9000]], ...}}

intervals inclusive, ascending and disjoint, seqs 1..2**63-1. ``decode_seen`` is strict and raises
only ``SchemaError`` (reason ``bad_seen``); the worker dead-letters such a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import orjson

from ems_contract.telemetry import (MAX_INT64, MAX_PAYLOAD_BYTES, SchemaError, parse_json, shown, valid_id,
                                    worker_of_seen_topic)

__all__ = ["MAX_SEEN_BYTES", "GroupRole", "PeerSeen", "encode_seen", "decode_seen"]

MAX_SEEN_BYTES = MAX_PAYLOAD_BYTES
MAX_SITES_PER_MESSAGE = 1000
MAX_INTERVALS_PER_SITE = 100_000


@dataclass(frozen=True)
class GroupRole:
    """This worker's place in its group: ``workers`` lists every worker's client id (this one's
    too); the first is the accountant. A group of one is today's single worker: it accounts from
    its own intervals and shares nothing."""

    worker: str
    workers: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.workers and self.worker not in self.workers:
            raise ValueError(f"worker {self.worker!r} is not one of the group's workers {list(self.workers)}")

    @property
    def shared(self) -> bool:
        return len(self.workers) > 1

    @property
    def accountant(self) -> bool:
        return not self.workers or self.workers[0] == self.worker

    @property
    def peers(self) -> tuple[str, ...]:
        """The other workers, whose seen seqs the accountant receives."""
        return tuple(w for w in self.workers if w != self.worker)


@dataclass(frozen=True)
class PeerSeen:
    """A validated seen message: per site, the publishing worker's intervals (inclusive)."""

    worker: str
    sites: dict[str, list[tuple[int, int]]]


def encode_seen(worker: str, sites: dict[str, list[tuple[int, int]]]) -> Iterator[tuple[list[str], bytes]]:
    """``(sites, payload)`` messages carrying ``sites``' intervals, each within ``MAX_SEEN_BYTES``."""
    chunk: dict[str, list[list[int]]] = {}
    size = 0
    for site, pairs in sites.items():
        entry = [[lo, hi] for lo, hi in pairs[-MAX_INTERVALS_PER_SITE:]]
        cost = len(site) + 45 * len(entry) + 8                   # bytes of the entry at most
        if chunk and (size + cost > MAX_SEEN_BYTES - 200 or len(chunk) >= MAX_SITES_PER_MESSAGE):
            yield list(chunk), orjson.dumps({"v": 1, "worker": worker, "sites": chunk})
            chunk, size = {}, 0
        while cost > MAX_SEEN_BYTES - 200:                       # one site's set beyond a message: keep the newest
            entry = entry[len(entry) // 2:]
            cost = len(site) + 45 * len(entry) + 8
        chunk[site] = entry
        size += cost
    if chunk:
        yield list(chunk), orjson.dumps({"v": 1, "worker": worker, "sites": chunk})


def _bad(detail: str) -> SchemaError:
    return SchemaError("bad_seen", detail)


def decode_seen(payload: bytes, topic: str) -> PeerSeen:
    """Validate a seen message received on ``topic``; raises SchemaError naming the field."""
    if len(payload) > MAX_SEEN_BYTES:
        raise SchemaError("oversized", f"payload is {len(payload)} bytes; the limit is {MAX_SEEN_BYTES}")
    body = parse_json(payload)
    if not isinstance(body, dict) or type(body.get("v")) is not int or body.get("v") != 1:
        raise _bad(f"must be an object with v 1 (got {shown(body)})")
    worker = body.get("worker")
    if worker != worker_of_seen_topic(topic):
        raise _bad(f"worker {shown(worker)} does not match the topic {shown(topic)}")
    raw_sites = body.get("sites")
    if not isinstance(raw_sites, dict) or len(raw_sites) > MAX_SITES_PER_MESSAGE:
        raise _bad(f"sites must be an object of at most {MAX_SITES_PER_MESSAGE} sites (got {shown(raw_sites)})")
    sites: dict[str, list[tuple[int, int]]] = {}
    for site, raw in raw_sites.items():
        if not valid_id(site):
            raise _bad(f"site {shown(site)} is not a valid id")
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_INTERVALS_PER_SITE:
            raise _bad(f"sites.{site} must be a list of 1..{MAX_INTERVALS_PER_SITE} intervals (got {shown(raw)})")
        pairs = []
        previous = 0
        for i, pair in enumerate(raw):
            if (not isinstance(pair, list) or len(pair) != 2 or type(pair[0]) is not int or type(pair[1]) is not int
                    or not previous < pair[0] <= pair[1] <= MAX_INT64):
                raise _bad(f"sites.{site}[{i}] must be [lo, hi] with {previous} < lo <= hi <= {MAX_INT64}, "
                           f"ascending and disjoint (got {shown(pair)})")
            pairs.append((pair[0], pair[1]))
            previous = pair[1]
        sites[site] = pairs
    return PeerSeen(worker, sites)
