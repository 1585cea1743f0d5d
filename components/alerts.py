"""The platform's alert rules: Prometheus alerting rules generated from the stack's thresholds.

``alert_rules(thresholds, ingest_max_replicas)`` returns the rules file the TSDB
loads (``rule_files`` in ``components/tsdb.py``); ``tests/components/test_alert_rules.py``
feeds the same text to ``promtool test rules``. Every alert carries the labels
``severity`` (critical | warning | info) and ``scope`` (site | device | asset |
platform: what Alertmanager groups and inhibits on) and the annotations
``summary`` (naming site, asset or point) and ``runbook`` (one line: what to do).
The list with runbook lines for humans is ``docs/alerts.md``.

Where the metrics come from (``docs/alerts.md``):

=====================================================  ==========================================
``ems_ingest_*``                                        ingest workers (scrape job ``ems-ingest``)
``ems_twin_*`` (thermal state, PLC faults, point        twin API, derived from every site's retained
quality)                                                twins (scrape job ``ems-twin-api``)
``ems_edge_*`` (spool, devices, Modbus exceptions)      edge agents that Prometheus can scrape: the
                                                        in-cluster protocol gateway (job ``ems-gateway``)
``ems_<component>_certificate_expiry_timestamp_seconds`` every process that loads a certificate
=====================================================  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

__all__ = ["AlertThresholds", "AlertReceiver", "alert_rules", "ALERT_NAMES", "SITE_SILENT", "SEVERITIES"]

SITE_SILENT = "EmsSiteSilent"
SEVERITIES = ("critical", "warning", "info")


@dataclass(frozen=True)
class AlertReceiver:
    """A webhook receiver (``ems:alertReceivers`` entry); its URL is in the secret ``ems:alertReceiverUrls``."""

    name: str
    severities: tuple[str, ...] = ("critical", "warning")
    """Severities it receives. Defaults to critical and warning."""
    send_resolved: bool = True
    """Also notify when an alert resolves. Defaults to true."""


@dataclass(frozen=True)
class AlertThresholds:
    """Thresholds of the generated rules (``ems:alerts`` in the stack config; docs/stack-config.md)."""

    site_silent_minutes: int = 10
    """A site with no telemetry message for this long is silent. Defaults to 10."""
    clock_skew_seconds: int = 60
    """A site clock further than this from the ingest's (sent_ms vs receipt). Defaults to 60."""
    loss_ratio: float = 0.001
    """Lost ÷ (lost + received) readings of a site over 15 minutes. Defaults to 0.001 (0.1 %)."""
    duplicate_ratio: float = 0.2
    """Duplicates ÷ readings over 30 minutes (replays make some; a loop makes many). Defaults to 0.2."""
    dead_letters_per_10m: int = 0
    """Dead letters of one reason in 10 minutes above this alert. Defaults to 0 (any)."""
    spool_depth: int = 100_000
    """Unacknowledged readings in an edge spool. Defaults to 100000."""
    spool_oldest_seconds: int = 900
    """Age of the oldest unacknowledged reading in an edge spool. Defaults to 900."""
    modbus_exception_ratio: float = 0.05
    """Modbus exception responses ÷ reads of a device over 10 minutes. Defaults to 0.05."""
    device_down_minutes: int = 5
    """A device unanswered (or its points in device_error) this long is down. Defaults to 5."""
    hot_spot_limit_celsius: float | None = None
    """Hot-spot limit for every transformer; None: each twin's own limit (IEC 60076-7: 120 °C). Defaults to None."""
    ageing_minutes: int = 60
    """Relative ageing rate above 1 for this long. Defaults to 60."""
    top_oil_residual_kelvin: float = 10.0
    """|measured − estimated top-oil| above this for 30 minutes: an early fault sign. Defaults to 10."""
    time_to_limit_minutes: int = 120
    """Predicted time to the hot-spot limit under this. Defaults to 120."""
    certificate_days: int = 30
    """A certificate expiring within this many days. Defaults to 30."""


def _alert(name: str, expr: str, severity: str, scope: str, summary: str, runbook: str,
           for_: str = "0m") -> dict[str, object]:
    labels = {"scope": scope}
    if severity:                 # PLC faults take their severity from the fault-code map (the metric's label)
        labels["severity"] = severity
    rule: dict[str, object] = {"alert": name, "expr": expr}
    if for_ != "0m":
        rule["for"] = for_
    rule["labels"] = labels
    rule["annotations"] = {"summary": summary, "runbook": runbook}
    return rule


def _rules(t: AlertThresholds, ingest_max_replicas: int) -> list[dict[str, object]]:
    site = "site {{ $labels.site }}"
    asset = "{{ $labels.site }}/{{ $labels.asset }}"
    hot_spot = ("max by (site, asset) (ems_twin_thermal_hot_spot_celsius) > "
                f"{t.hot_spot_limit_celsius:g}" if t.hot_spot_limit_celsius is not None else
                "max by (site, asset) (ems_twin_thermal_hot_spot_celsius - ems_twin_thermal_hot_spot_limit_celsius) > 0")
    certs = '{__name__=~"ems_[a-z]+_certificate_expiry_timestamp_seconds"}'
    return [
        # --- sites ---------------------------------------------------------------------------------------------
        _alert(SITE_SILENT,
               "time() - max by (site) (max_over_time(ems_ingest_site_last_message_timestamp_seconds[1d])) > "
               f"{t.site_silent_minutes * 60}",
               "critical", "site", f"{site} sent no telemetry for {{{{ $value | humanizeDuration }}}}",
               "Check the site's uplink and the edge agent (systemctl status ems-edge-agent; "
               "ems-edge status); its spool keeps readings until the link is back."),
        _alert("EmsSiteClockSkew", f"max by (site) (abs(ems_ingest_site_clock_skew_seconds)) > {t.clock_skew_seconds}",
               "warning", "site", f"{site} clock is {{{{ $value | humanizeDuration }}}} off the ingest's clock",
               "Check NTP on the edge node (timedatectl; chronyc tracking); readings outside the ingest's "
               "window are dead-lettered as too_old/future_timestamp.", "10m"),
        _alert("EmsSitePacketLoss",
               "sum by (site) (increase(ems_ingest_site_readings_lost_total[15m])) / clamp_min("
               "sum by (site) (increase(ems_ingest_site_readings_lost_total[15m])) + "
               "sum by (site) (increase(ems_ingest_site_readings_received_total[15m])), 1) > "
               f"{t.loss_ratio:g}",
               "critical", "site", f"{site} lost {{{{ $value | humanizePercentage }}}} of its readings in 15 min "
               "(seq gaps not filled within the replay horizon)",
               "Readings were dropped for good: check ems_edge_spool_dropped_total (spool cap) and the "
               "site's outage length against spool.max_readings; raise the cap or fix the uplink."),
        _alert("EmsDuplicateReadings",
               "sum(increase(ems_ingest_duplicates_total[30m])) / clamp_min("
               f"sum(increase(ems_ingest_readings_total[30m])), 1) > {t.duplicate_ratio:g}",
               "warning", "platform", "ingest: {{ $value | humanizePercentage }} of readings are duplicates (30 min)",
               "An edge agent is re-sending without acknowledgements: check its broker connection "
               "(ems_edge_broker_connects_total) and the ingest's ack path.", "15m"),
        _alert("EmsDeadLetters",
               f"sum by (reason) (increase(ems_ingest_dead_letters_total[10m])) > {t.dead_letters_per_10m}",
               "warning", "platform", "ingest dead-lettered {{ $value }} messages as {{ $labels.reason }} in 10 min",
               "Read ems/v1/deadletter/<reason> (mosquitto_sub) to see the payloads; fix the sender named in them."),
        # --- edge backlog --------------------------------------------------------------------------------------
        _alert("EmsEdgeSpoolDepthHigh", f"max by (site) (ems_edge_spool_depth) > {t.spool_depth}",
               "warning", "site", f"{site} spool holds {{{{ $value }}}} unacknowledged readings",
               "The uplink is slower than the polls: check the broker link and the site's bandwidth.", "10m"),
        _alert("EmsEdgeSpoolBacklogOld",
               f"max by (site) (ems_edge_spool_oldest_unacked_age_seconds) > {t.spool_oldest_seconds}",
               "warning", "site", f"{site} oldest unacknowledged reading is {{{{ $value | humanizeDuration }}}} old",
               "Readings wait in the spool: check the broker connection (ems_edge_broker_connected).", "5m"),
        _alert("EmsEdgeSpoolDrops", "sum by (site) (increase(ems_edge_spool_dropped_total[15m])) > 0",
               "critical", "site", f"{site} spool dropped {{{{ $value }}}} readings (spool full)",
               "Data is being lost at the edge: restore the uplink, then raise spool.max_readings if outages "
               "are this long."),
        # --- devices -------------------------------------------------------------------------------------------
        _alert("EmsDeviceDown", "max by (site, device) (ems_edge_device_up) == 0",
               "critical", "device", f"device {{{{ $labels.device }}}} at {site} does not answer",
               "Check the device's power and its Modbus/TCP or RS-485 gateway link.",
               f"{t.device_down_minutes}m"),
        _alert("EmsAssetDeviceError", 'count by (site, asset) (max by (site, asset, point) '
               '(ems_twin_point_quality{quality="device_error"}) == 1) > 0',
               "critical", "device", f"{asset}: {{{{ $value }}}} points in device_error",
               "The edge cannot read the asset's device: check the device and its link.",
               f"{t.device_down_minutes}m"),
        _alert("EmsModbusExceptionRate",
               "sum by (site, device) (rate(ems_edge_modbus_exceptions_total[10m])) / clamp_min("
               "sum by (site, device) (rate(ems_edge_reads_total[10m])), 1e-9) > "
               f"{t.modbus_exception_ratio:g}",
               "warning", "device", f"device {{{{ $labels.device }}}} at {site} answers "
               "{{ $value | humanizePercentage }} of reads with a Modbus exception",
               "Check the register map in sensors.conf against the device manual (illegal address = code 2).",
               "10m"),
        _alert("EmsLoopFault", 'max by (site, asset, point) (ems_twin_point_quality{quality="loop_fault"}) == 1 '
               "or max by (site, asset, point) (increase(ems_edge_loop_faults_total[10m])) > 0",
               "warning", "device", "4-20 mA loop fault on {{ $labels.site }}/{{ $labels.asset }}/{{ $labels.point }}",
               "Current outside 3.8..20.5 mA (NAMUR NE 43): check the transmitter's wiring and supply.", "5m"),
        # --- PLC fault codes -----------------------------------------------------------------------------------
        _alert("EmsPlcFault", "max by (site, asset, point, code, severity, text) (ems_twin_fault_active) == 1",
               "", "device", "{{ $labels.code }} {{ $labels.text }} on "
               "{{ $labels.site }}/{{ $labels.asset }}/{{ $labels.point }}",
               "The PLC reports this fault code: follow the device's manual for the code; it resolves when "
               "the register returns to a non-fault value."),
        # --- thermal -------------------------------------------------------------------------------------------
        _alert("EmsHotSpotAboveLimit", hot_spot, "critical", "asset",
               f"{asset} hot-spot is {{{{ $value | printf \"%.1f\" }}}} K above its limit"
               if t.hot_spot_limit_celsius is None else f"{asset} hot-spot is {{{{ $value | printf \"%.1f\" }}}} °C",
               "Reduce the transformer's load or start forced cooling; IEC 60076-7 limits apply."),
        _alert("EmsAgeingRateHigh", "max by (site, asset) (ems_twin_thermal_ageing_rate) > 1",
               "warning", "asset", f"{asset} insulation ages {{{{ $value | printf \"%.2f\" }}}}× faster than normal",
               "Sustained overload: plan load transfer; loss of life is in the twin (loss_of_life_h).",
               f"{t.ageing_minutes}m"),
        _alert("EmsTopOilResidual",
               f"max by (site, asset) (abs(ems_twin_thermal_top_oil_residual_kelvin)) > {t.top_oil_residual_kelvin:g}",
               "warning", "asset", f"{asset} measured top-oil differs from the model by {{{{ $value | printf \"%.1f\" }}}} K",
               "Early fault sign (cooling failure, sensor drift or wrong nameplate data): inspect cooling "
               "and the top-oil sensor.", "30m"),
        _alert("EmsHotSpotLimitPredicted",
               "min by (site, asset) (ems_twin_thermal_time_to_hot_spot_limit_seconds) < "
               f"{t.time_to_limit_minutes * 60}",
               "warning", "asset", f"{asset} reaches its hot-spot limit in {{{{ $value | humanizeDuration }}}} "
               "at the present load and ambient",
               "Act before the limit: shed or transfer load, or start cooling.", "2m"),
        # --- platform ------------------------------------------------------------------------------------------
        _alert("EmsIngestDown", 'sum(up{job="ems-ingest"}) == 0 or absent(up{job="ems-ingest"})',
               "critical", "platform", "no ingest worker is up: telemetry is not stored",
               "kubectl -n <ns> get pods -l app=ingest; kubectl logs; the edge spools keep the readings.", "2m"),
        _alert("EmsBrokerDown", 'max(ems_ingest_broker_connected) == 0',
               "critical", "platform", "no ingest worker is connected to the MQTT broker",
               "kubectl -n <ns> get pods -l app=broker; check its logs and the 8883 Service.", "2m"),
        _alert("EmsTsdbWriteFailing", "sum(rate(ems_ingest_write_retries_total[5m])) > 0",
               "critical", "platform", "the ingest cannot write to the TSDB ({{ $value | printf \"%.2f\" }} retries/s)",
               "kubectl -n <ns> get pods -l app=tsdb; check disk space of its volume.", "5m"),
        _alert("EmsTwinApiDown", 'sum(up{job="ems-twin-api"}) == 0 or absent(up{job="ems-twin-api"})',
               "warning", "platform", "the twin API is not scraped: thermal and fault alerts are blind",
               "kubectl -n <ns> get pods -l app=twin-api; check its logs.", "5m"),
        _alert("EmsIngestAtMaxReplicas", f'count(up{{job="ems-ingest"}} == 1) >= {ingest_max_replicas}',
               "warning", "platform", f"ingest runs at the autoscaler's maximum ({ingest_max_replicas} workers)",
               "Load exceeds what the HPA may add: raise ems:ingestMaxReplicas or the per-worker target.", "15m"),
        _alert("EmsCertificateExpiring",
               f"min by (job, instance, certificate) ({certs}) - time() < {t.certificate_days * 86400}",
               "warning", "platform", "certificate {{ $labels.certificate }} of {{ $labels.job }} {{ $labels.instance }} "
               "expires in {{ $value | humanizeDuration }}",
               "Renew it: pulumi up re-issues platform certificates; edge certificates via the site's PKI runbook."),
        _alert("EmsWatchdog", "vector(1)", "info", "platform", "the alerting pipeline is alive",
               "Always firing; the receiver pages when it stops arriving (the TSDB or Alertmanager is down)."),
    ]


ALERT_NAMES = tuple(r["alert"] for r in _rules(AlertThresholds(), 10))


def alert_rules(thresholds: AlertThresholds = AlertThresholds(), ingest_max_replicas: int = 10) -> str:
    """The Prometheus rules file (YAML) of every platform alert."""
    doc = {"groups": [{"name": "ems", "rules": _rules(thresholds, ingest_max_replicas)}]}
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000)
