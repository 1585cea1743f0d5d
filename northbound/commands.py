"""Commands out to the sites over MQTT, their results back, and what each result means in 2030.5.

``MqttCommandSink`` is the ``CommandSink`` of the control path: ``issue`` encodes a
``Command`` with the contract (``ems_contract.command``) and publishes it on
``ems/v1/<site>/command`` (QoS 1, returns after the PUBACK); an id is published at
most once, ever (a second ``issue`` with a known id is a bug and raises). ``results``
drains what arrived on the sites' ``ems/v1/<site>/command-result`` topics: each
payload is hostile until ``decode_result`` accepted it for that topic; a bad one is
counted by reason and dropped, as is a result for an id we never issued (or issued
to another site), or a second result for the same id. Each good one comes back as
an ``Outcome`` with the command it answers.

How an outcome becomes a 2030.5 Response status (IEEE 2030.5 Table 27, the values
of envoy-schema's ``ResponseType``), for commands that came from a DERControl
(DefaultDERControl commands have no event to answer; their outcomes are metrics only)::

    applied   → 2   Event started (the control is in effect at the site; *completed*, 3,
                    follows at the event's end, as for any started event)
    rejected  → 252 Rejected – control parameter not applicable (the site refused to
                    apply it: outside its bounds, no writable point, a replay …)
    failed    → 252 likewise: the site tried and could not put it into effect; 2030.5 has
                    no status for "tried and failed", and 252 is the one that tells the
                    utility this device does not carry out the control
    expired   → 254 Rejected – event received after it had expired

The edge's ``reason`` has no field in a 2030.5 Response: it is logged with the event
and counted (``ems_northbound_command_results_total{outcome}``).
"""

from __future__ import annotations

import logging
import queue
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

from ems_contract.command import Command, CommandResult, command_result_topic, command_topic, decode_result, \
    encode_command
from ems_contract.telemetry import SchemaError
from northbound.command_link import CommandLink
from northbound.errors import BrokerError
from northbound.events import ResponseStatus
from northbound.metrics import NorthboundMetrics

__all__ = ["MqttCommandSink", "Outcome", "response_status", "result_subscriptions", "KEEP_AFTER_EXPIRY_S"]

log = logging.getLogger(__name__)

KEEP_AFTER_EXPIRY_S = 600
"""How long after its expiry a command's result is still matched (a slow or reconnecting site)."""
MAX_OUTSTANDING = 10_000
MAX_RESULTS_PER_DRAIN = 1000

_STATUS = {"applied": ResponseStatus.STARTED, "rejected": ResponseStatus.REJECTED_NOT_APPLICABLE,
           "failed": ResponseStatus.REJECTED_NOT_APPLICABLE, "expired": ResponseStatus.REJECTED_LATE}


def response_status(outcome: str) -> ResponseStatus:
    """The 2030.5 Response status for an edge outcome (module docstring); KeyError for an unknown one."""
    return _STATUS[outcome]


def result_subscriptions(sites: Iterable[str]) -> tuple[str, ...]:
    """One result topic per site: a broker that grants only our sites refuses a ``+`` filter as a whole."""
    return tuple(command_result_topic(site) for site in sorted(sites))


@dataclass(frozen=True, slots=True)
class Outcome:
    """A site's result for a command we issued."""

    command: Command
    result: CommandResult


class MqttCommandSink:
    """Publishes commands on the link and matches the sites' results to them (module docstring)."""

    confirms = True
    """Results come back: the service posts *started* only once the site applied the control."""

    def __init__(self, link: CommandLink, metrics: NorthboundMetrics, sites: Iterable[str],
                 clock: Callable[[], float] = time.time) -> None:
        self.link = link
        self.metrics = metrics
        self.sites = frozenset(sites)
        self.clock = clock
        self._outstanding: OrderedDict[str, Command] = OrderedDict()    # id → command, in issue order
        self._answered: set[str] = set()
        self._dropped_seen = 0

    async def issue(self, command: Command) -> None:
        """Publish ``command`` (QoS 1, after PUBACK); BrokerError when the broker did not take it."""
        if command.id in self._outstanding:
            raise ValueError(f"command id {command.id} was issued before; ids are never reused")
        payload = encode_command(command)
        self._remember(command)            # before publishing: a late delivery's result still finds its command
        try:
            await self.link.publish(command_topic(command.site), payload)
        except BrokerError as exc:
            self.metrics.command_publishes.labels(exc.kind).inc()
            raise
        self.metrics.command_publishes.labels("ok").inc()
        log.info("command %s → site %s: %s=%s until %d (event %s)", command.id, command.site, command.control,
                 command.value, command.expires_ms, command.event or "default")

    def _remember(self, command: Command) -> None:
        self._outstanding[command.id] = command
        horizon_ms = (self.clock() - KEEP_AFTER_EXPIRY_S) * 1000
        while self._outstanding:
            oldest = next(iter(self._outstanding.values()))
            if oldest.expires_ms >= horizon_ms and len(self._outstanding) <= MAX_OUTSTANDING:
                break
            self._outstanding.popitem(last=False)
            self._answered.discard(oldest.id)

    def results(self) -> list[Outcome]:
        """Every good result received since the last call (at most ``MAX_RESULTS_PER_DRAIN``); never raises."""
        outcomes: list[Outcome] = []
        if self.link.dropped != self._dropped_seen:
            self.metrics.command_results_ignored.labels("queue_full").inc(self.link.dropped - self._dropped_seen)
            self._dropped_seen = self.link.dropped
        for _ in range(MAX_RESULTS_PER_DRAIN):
            try:
                received = self.link.incoming.get_nowait()
            except queue.Empty:
                break
            outcome = self._match(received.topic, received.payload)
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    def _match(self, topic: str, payload: bytes) -> Outcome | None:
        try:
            result = decode_result(payload, topic)
        except SchemaError as exc:
            self.metrics.command_results_ignored.labels(exc.reason).inc()
            log.warning("command result on %s refused: %s", topic[:120], exc.reason)
            return None
        command = self._outstanding.get(result.id)
        if result.site not in self.sites or command is None:
            self.metrics.command_results_ignored.labels("unknown_command").inc()
            log.warning("command result from %s for unknown command %s ignored", result.site, result.id)
            return None
        if command.site != result.site:
            self.metrics.command_results_ignored.labels("wrong_site").inc()
            log.warning("site %s answered command %s of site %s: ignored", result.site, result.id, command.site)
            return None
        if result.id in self._answered:
            self.metrics.command_results_ignored.labels("duplicate").inc()
            return None
        self._answered.add(result.id)
        self.metrics.command_results.labels(result.site, result.outcome).inc()
        log.info("command %s at site %s: %s%s", result.id, result.site, result.outcome,
                 f" ({result.reason})" if result.reason else "")
        return Outcome(command, result)
