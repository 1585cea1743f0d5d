"""Prometheus metrics of the edge agent: ``ems_edge_<what>_<unit>``.

The registry is a parameter (tests use a fresh ``CollectorRegistry()``); labels
stay bounded (device, outcome, code). Modules receive an ``AgentMetrics``
instance; none creates metrics of its own.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["AgentMetrics", "READ_OUTCOMES"]

READ_OUTCOMES = ("ok", "timeout", "unreachable", "exception", "decode_error")


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        common = {"namespace": "ems", "subsystem": "edge", "registry": self.registry}
        # Modbus side
        self.polls = Counter("polls", "Poll cycles completed per device.", ["device"], **common)
        self.reads = Counter("reads", "Modbus read requests by outcome.", ["device", "outcome"], **common)
        self.exception_codes = Counter("modbus_exceptions", "Modbus exception responses by device, point and code.",
                                       ["device", "point", "code"], **common)
        self.poll_duration = Histogram("poll_duration", "Time to poll one device once.", ["device"],
                                       unit="seconds", **common)
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
