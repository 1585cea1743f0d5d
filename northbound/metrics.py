"""Prometheus metrics of the north-bound client: ``ems_northbound_<what>_<unit>``.

The registry is a parameter (tests use a fresh ``CollectorRegistry()``); labels stay
bounded: function sets (``FUNCTION_SETS``), HTTP status codes, configured sites and
``ems_contract.command.CONTROLS``. Modules receive a ``NorthboundMetrics``; none
creates metrics of its own.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge

from ems_contract.command import CONTROLS, OUTCOMES
from ems_runtime.http_server import refused_connections_counter
from northbound.errors import BrokerError
from northbound.events import ResponseStatus

__all__ = ["NorthboundMetrics", "FUNCTION_SETS"]

FUNCTION_SETS = ("dcap", "time", "edev", "rg", "fsa", "derp", "dderc", "derc", "rsp", "mup", "mmr",
                 "der", "dercap", "derg", "ders")


class NorthboundMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        common = {"namespace": "ems", "subsystem": "northbound", "registry": self.registry}
        self.requests = Counter("requests", "Requests to the 2030.5 server by function set and outcome "
                                "(HTTP status, or 'error' when no answer came).", ["function_set", "outcome"], **common)
        self.documents_rejected = Counter("documents_rejected", "2030.5 documents or items refused, by reason.",
                                          ["reason"], **common)
        self.responses = Counter("responses", "Responses posted to the server, by 2030.5 status name.", ["status"],
                                 **common)
        self.registered = Gauge("registered", "1 when the site's EndDevice is registered (and its PIN matched).",
                                ["site"], **common)
        self.active_control = Gauge("active_control", "The control in force per site (W, or 1/0); NaN when none.",
                                    ["site", "control"], **common)
        self.control_from_event = Gauge("control_from_event", "1 when the control comes from a DERControl event, "
                                        "0 from a DefaultDERControl or none.", ["site", "control"], **common)
        self.commands = Counter("commands", "Commands issued toward the site.", ["site", "control"], **common)
        self.command_publishes = Counter("command_publishes", "Commands handed to the broker, by outcome "
                                         "(ok, or why not: unreachable, refused, timeout, no_subscribers).", ["outcome"], **common)
        self.command_results = Counter("command_results", "Results the sites reported for our commands, by outcome.",
                                       ["site", "outcome"], **common)
        self.command_results_ignored = Counter("command_results_ignored", "Command-result messages ignored, by "
                                               "reason (a contract reason code, unknown_command, wrong_site, "
                                               "duplicate, queue_full).", ["reason"], **common)
        self.manual_commands = Counter("manual_commands", "Operators' manual command requests (POST /v1/commands) "
                                       "by the caller's role and outcome (published, bad_request, unauthenticated, "
                                       "forbidden, not_published).", ["role", "outcome"], **common)
        # ems_northbound_operator_api_refused_connections_total: the manual-command listener's cap at work
        self.operator_api_refused = refused_connections_counter(self.registry, "northbound_operator_api")
        self.broker_connected = Gauge("broker_connected", "1 while connected to the platform's MQTT broker.", **common)
        self.last_poll = Gauge("last_poll_timestamp", "When the site's DER controls were last read in full.", ["site"],
                               unit="seconds", **common)
        self.last_post = Gauge("last_post_timestamp", "When the site's mirror readings were last accepted.", ["site"],
                               unit="seconds", **common)
        self.last_discovery = Gauge("last_discovery_timestamp", "When DeviceCapability was last read.",
                                    unit="seconds", **common)
        self.clock_offset = Gauge("server_clock_offset", "Server time minus local time, from the Time resource.",
                                  unit="seconds", **common)
        self.backoff = Gauge("backoff", "Current back-off delay of a failing task (0 when healthy).", ["task"],
                             unit="seconds", **common)
        for status in ResponseStatus:
            self.responses.labels(status.name.lower())
        for outcome in ("ok", *BrokerError.KINDS):
            self.command_publishes.labels(outcome)

    def init_site(self, site: str) -> None:
        """Create the site's label values so dashboards see them before the first event."""
        self.registered.labels(site).set(0)
        for control in CONTROLS:
            self.active_control.labels(site, control).set(math.nan)
            self.control_from_event.labels(site, control).set(0)
            self.commands.labels(site, control)
        for outcome in OUTCOMES:
            self.command_results.labels(site, outcome)
