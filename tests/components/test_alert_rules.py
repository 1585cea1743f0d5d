"""Every generated alert under the real ``promtool test rules``: it fires when it should and stays quiet otherwise.

The rules file is ``components.alerts.alert_rules()`` written to a temporary
folder, never a copy. Each case feeds series to promtool and states, per alert,
when it fires (labels and rendered summary; the runbook line is taken from the
rule) and when it must not. ``test_every_alert_has_a_case`` keeps the list complete.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.alerts import ALERT_NAMES, AlertThresholds, alert_rules

MAX_REPLICAS = 3
S1 = 'site="s1"'


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        raise RuntimeError("promtool is not installed: run `make setup` (scripts/install-system-packages.sh)")
    return path


def _runbooks(text: str) -> dict[str, str]:
    return {r["alert"]: r["annotations"]["runbook"] for r in yaml.safe_load(text)["groups"][0]["rules"]}


def fires(at: str, labels: dict[str, str], summary: str) -> dict[str, Any]:
    return {"eval_time": at, "labels": labels, "summary": summary}


def quiet(at: str) -> dict[str, Any]:
    return {"eval_time": at, "labels": None}


# alert → (input series {selector: values}, expectations in order). Values use promtool's expanding notation.
CASES: dict[str, tuple[dict[str, str], list[dict[str, Any]]]] = {
    "EmsSiteSilent": (
        {f"ems_ingest_site_last_message_timestamp_seconds{{{S1}}}": "0+60x10",          # stops at 10 min
         'ems_ingest_site_last_message_timestamp_seconds{site="s2"}': "0+60x40"},
        [quiet("8m"),
         fires("25m", {"site": "s1", "severity": "critical", "scope": "site"},
               "site s1 sent no telemetry for 15m 0s")]),
    "EmsSiteClockSkew": (
        {f'ems_ingest_site_clock_skew_seconds{{{S1},instance="i0"}}': "0 0 -120x20",
         'ems_ingest_site_clock_skew_seconds{site="s2",instance="i0"}': "5x30"},
        [quiet("6m"),                                                                   # not yet 10 min
         fires("15m", {"site": "s1", "severity": "warning", "scope": "site"},
               "site s1 clock is 2m 0s off the ingest's clock")]),
    "EmsSitePacketLoss": (
        {f"ems_ingest_site_readings_received_total{{{S1}}}": "0+100x40",
         f"ems_ingest_site_readings_lost_total{{{S1}}}": "0x9 5x30",                     # 5 lost at minute 10
         'ems_ingest_site_readings_received_total{site="s2"}': "0+100x40",
         'ems_ingest_site_readings_lost_total{site="s2"}': "0x40"},
        [quiet("8m"),
         fires("15m", {"site": "s1", "severity": "critical", "scope": "site"},
               "site s1 lost 0.3322% of its readings in 15 min (seq gaps not filled within the replay horizon)"),
         quiet("35m")]),                                                                # the window has moved on
    "EmsDuplicateReadings": (
        {"ems_ingest_duplicates_total": "0x10 0+60x50", "ems_ingest_readings_total": "0+100x60"},
        [quiet("12m"),
         fires("50m", {"severity": "warning", "scope": "platform"},
               "ingest: 60% of readings are duplicates (30 min)")]),
    "EmsDeadLetters": (
        {'ems_ingest_dead_letters_total{reason="bad_field"}': "0x5 3x30",
         'ems_ingest_dead_letters_total{reason="not_json"}': "0x35"},
        [fires("10m", {"reason": "bad_field", "severity": "warning", "scope": "platform"},
               "ingest dead-lettered 3 messages as bad_field in 10 min"),
         quiet("30m")]),
    "EmsEdgeSpoolDepthHigh": (
        {f"ems_edge_spool_depth{{{S1}}}": "200000x20", 'ems_edge_spool_depth{site="s2"}': "10x20"},
        [quiet("5m"),
         fires("15m", {"site": "s1", "severity": "warning", "scope": "site"},
               "site s1 spool holds 200000 unacknowledged readings")]),
    "EmsEdgeSpoolBacklogOld": (
        {f"ems_edge_spool_oldest_unacked_age_seconds{{{S1}}}": "2000x20",
         'ems_edge_spool_oldest_unacked_age_seconds{site="s2"}': "5x20"},
        [quiet("3m"),
         fires("10m", {"site": "s1", "severity": "warning", "scope": "site"},
               "site s1 oldest unacknowledged reading is 33m 20s old")]),
    "EmsEdgeSpoolDrops": (
        {f"ems_edge_spool_dropped_total{{{S1}}}": "0x5 40x30"},
        [fires("10m", {"site": "s1", "severity": "critical", "scope": "site"},
               "site s1 spool dropped 40 readings (spool full)"),
         quiet("30m")]),
    "EmsDeviceDown": (
        {f'ems_edge_device_up{{{S1},device="relay1"}}': "1x5 0x20",
         f'ems_edge_device_up{{{S1},device="relay2"}}': "1x25"},
        [quiet("8m"),
         fires("15m", {"site": "s1", "device": "relay1", "severity": "critical", "scope": "device"},
               "device relay1 at site s1 does not answer")]),
    "EmsAssetDeviceError": (
        {f'ems_twin_point_quality{{{S1},asset="tx1",point="load",quality="device_error",instance="a"}}': "1x20",
         f'ems_twin_point_quality{{{S1},asset="tx1",point="load",quality="device_error",instance="b"}}': "1x20",
         f'ems_twin_point_quality{{{S1},asset="tx2",point="load",quality="device_error"}}': "0x20"},
        [quiet("3m"),
         fires("10m", {"site": "s1", "asset": "tx1", "severity": "critical", "scope": "device"},
               "s1/tx1: 1 points in device_error")]),
    "EmsModbusExceptionRate": (
        {f'ems_edge_modbus_exceptions_total{{{S1},device="plc1",point="p1",code="2"}}': "0+10x30",
         f'ems_edge_reads_total{{{S1},device="plc1",outcome="ok"}}': "0+60x30",
         f'ems_edge_modbus_exceptions_total{{{S1},device="plc2",point="p1",code="2"}}': "0x30",
         f'ems_edge_reads_total{{{S1},device="plc2",outcome="ok"}}': "0+60x30"},
        [fires("25m", {"site": "s1", "device": "plc1", "severity": "warning", "scope": "device"},
               "device plc1 at site s1 answers 16.67% of reads with a Modbus exception")]),
    "EmsLoopFault": (
        {f'ems_twin_point_quality{{{S1},asset="ft1",point="flow",quality="loop_fault"}}': "0x3 1x20",
         f'ems_twin_point_quality{{{S1},asset="ft1",point="level",quality="good"}}': "1x25"},
        [quiet("6m"),
         fires("15m", {"site": "s1", "asset": "ft1", "point": "flow", "severity": "warning", "scope": "device"},
               "4-20 mA loop fault on s1/ft1/flow")]),
    "EmsPlcFault": (
        {f'ems_twin_fault_active{{{S1},asset="relay1",point="status",code="E04",severity="critical",'
         f'text="over-voltage",instance="a"}}': "1x10 0x10",
         f'ems_twin_fault_active{{{S1},asset="relay2",point="status",code="E07",severity="warning",'
         f'text="fan",instance="a"}}': "0x20"},
        [fires("5m", {"site": "s1", "asset": "relay1", "point": "status", "code": "E04", "text": "over-voltage",
                      "severity": "critical", "scope": "device"}, "E04 over-voltage on s1/relay1/status"),
         quiet("15m")]),                                                                 # cleared → resolved
    "EmsHotSpotAboveLimit": (
        {f'ems_twin_thermal_hot_spot_celsius{{{S1},asset="tx1"}}': "110 125x10",
         f'ems_twin_thermal_hot_spot_limit_celsius{{{S1},asset="tx1"}}': "120x10",
         f'ems_twin_thermal_hot_spot_celsius{{{S1},asset="tx2"}}': "90x10",
         f'ems_twin_thermal_hot_spot_limit_celsius{{{S1},asset="tx2"}}': "120x10"},
        [quiet("0m"),
         fires("5m", {"site": "s1", "asset": "tx1", "severity": "critical", "scope": "asset"},
               "s1/tx1 hot-spot is 5.0 K above its limit")]),
    "EmsAgeingRateHigh": (
        {f'ems_twin_thermal_ageing_rate{{{S1},asset="tx1"}}': "1.5x90",
         f'ems_twin_thermal_ageing_rate{{{S1},asset="tx2"}}': "0.9x90"},
        [quiet("30m"),                                                                  # above 1, not yet 60 min
         fires("70m", {"site": "s1", "asset": "tx1", "severity": "warning", "scope": "asset"},
               "s1/tx1 insulation ages 1.50× faster than normal")]),
    "EmsTopOilResidual": (
        {f'ems_twin_thermal_top_oil_residual_kelvin{{{S1},asset="tx1"}}': "-12x60",
         f'ems_twin_thermal_top_oil_residual_kelvin{{{S1},asset="tx2"}}': "2x60"},
        [quiet("20m"),
         fires("40m", {"site": "s1", "asset": "tx1", "severity": "warning", "scope": "asset"},
               "s1/tx1 measured top-oil differs from the model by 12.0 K")]),
    "EmsHotSpotLimitPredicted": (
        {f'ems_twin_thermal_time_to_hot_spot_limit_seconds{{{S1},asset="tx1"}}': "Inf Inf 3600x10",
         f'ems_twin_thermal_time_to_hot_spot_limit_seconds{{{S1},asset="tx2"}}': " ".join(["Inf"] * 12)},
        [quiet("1m"),
         fires("6m", {"site": "s1", "asset": "tx1", "severity": "warning", "scope": "asset"},
               "s1/tx1 reaches its hot-spot limit in 1h 0m 0s at the present load and ambient")]),
    "EmsIngestDown": (
        {'up{job="ems-ingest",instance="i0"}': "1x3 0x10", 'up{job="ems-ingest",instance="i1"}': "1x3 0x10"},
        [quiet("2m"),
         fires("10m", {"severity": "critical", "scope": "platform"}, "no ingest worker is up: telemetry is not stored")]),
    "EmsBrokerDown": (
        {'ems_ingest_broker_connected{instance="i0"}': "1x3 0x10", 'ems_ingest_broker_connected{instance="i1"}': "1x3 0x10"},
        [quiet("3m"),
         fires("10m", {"severity": "critical", "scope": "platform"}, "no ingest worker is connected to the MQTT broker")]),
    "EmsTsdbWriteFailing": (
        {"ems_ingest_write_retries_total": "0x5 0+5x20"},
        [quiet("5m"),
         fires("20m", {"severity": "critical", "scope": "platform"}, "the ingest cannot write to the TSDB (0.08 retries/s)")]),
    "EmsTwinApiDown": (
        {'up{job="ems-twin-api",instance="t0"}': "1x5 0x10"},
        [quiet("4m"),
         fires("14m", {"severity": "warning", "scope": "platform"},
               "the twin API is not scraped: thermal and fault alerts are blind")]),
    "EmsIngestAtMaxReplicas": (
        {**{f'up{{job="ems-ingest",instance="i{n}"}}': "1x40" for n in range(MAX_REPLICAS - 1)},
         f'up{{job="ems-ingest",instance="i{MAX_REPLICAS - 1}"}}': "0x10 1x30"},
        [quiet("9m"), quiet("20m"),                                                     # at the max, not yet 15 min
         fires("30m", {"severity": "warning", "scope": "platform"},
               f"ingest runs at the autoscaler's maximum ({MAX_REPLICAS} workers)")]),
    "EmsCertificateExpiring": (
        {'ems_ingest_certificate_expiry_timestamp_seconds{job="ems-ingest",instance="i0",certificate="broker-client"}':
            "864000x10",                                                                # 10 days after time 0
         'ems_twin_certificate_expiry_timestamp_seconds{job="ems-twin-api",instance="t0",certificate="server"}':
            "8640000x10"},                                                              # 100 days
        [fires("0m", {"job": "ems-ingest", "instance": "i0", "certificate": "broker-client", "severity": "warning",
                      "scope": "platform"}, "certificate broker-client of ems-ingest i0 expires in 10d 0h 0m 0s")]),
    "EmsWatchdog": (
        {},
        [fires("0m", {"severity": "info", "scope": "platform"}, "the alerting pipeline is alive")]),
}

# Quiet cases that need their own series (a state where the alert must not fire at all).
QUIET_CASES: dict[str, dict[str, str]] = {
    "EmsIngestDown": {'up{job="ems-ingest",instance="i0"}': "0x40", 'up{job="ems-ingest",instance="i1"}': "1x40"},
    "EmsBrokerDown": {'ems_ingest_broker_connected{instance="i0"}': "0x40",
                      'ems_ingest_broker_connected{instance="i1"}': "1x40"},
    "EmsTwinApiDown": {'up{job="ems-twin-api",instance="t0"}': "1x40"},
    "EmsDuplicateReadings": {"ems_ingest_duplicates_total": "0+5x60", "ems_ingest_readings_total": "0+100x60"},
    "EmsTsdbWriteFailing": {"ems_ingest_write_retries_total": "7x40"},
    "EmsModbusExceptionRate": {'ems_edge_modbus_exceptions_total{site="s1",device="plc1",point="p1",code="2"}': "0+1x30",
                               'ems_edge_reads_total{site="s1",device="plc1",outcome="ok"}': "0+60x30"},
    "EmsCertificateExpiring": {'ems_edge_certificate_expiry_timestamp_seconds{job="b",instance="x",certificate="c"}':
                               "3000000x10"},                                             # 34.7 days
}


def _test_file(rules: Path, runbooks: dict[str, str]) -> dict[str, Any]:
    tests = []
    for alert, (series, expectations) in CASES.items():
        checks = []
        for e in expectations:
            exp = [] if e["labels"] is None else [{
                "exp_labels": e["labels"], "exp_annotations": {"summary": e["summary"], "runbook": runbooks[alert]}}]
            checks.append({"eval_time": e["eval_time"], "alertname": alert, "exp_alerts": exp})
        tests.append({"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series.items()],
                      "alert_rule_test": checks})
    for alert, series in QUIET_CASES.items():
        tests.append({"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series.items()],
                      "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": []}
                                          for at in ("5m", "15m", "30m")]})
    return {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    assert set(CASES) == set(ALERT_NAMES)
    for alert, (_, expectations) in CASES.items():
        if alert == "EmsWatchdog":                       # always firing by design
            continue
        assert any(e["labels"] is None for e in expectations) or alert in QUIET_CASES, alert
        assert any(e["labels"] is not None for e in expectations), alert


def test_promtool_checks_the_generated_rules(tmp_path: Path) -> None:
    text = alert_rules(AlertThresholds(), ingest_max_replicas=MAX_REPLICAS)
    rules = tmp_path / "ems-alerts.yml"
    rules.write_text(text)
    check = subprocess.run([_promtool(), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in check.stdout
    spec = tmp_path / "ems-alerts.test.yml"
    spec.write_text(yaml.safe_dump(_test_file(rules, _runbooks(text)), sort_keys=False, allow_unicode=True))
    result = subprocess.run([_promtool(), "test", "rules", str(spec)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_case_that_is_wrong_fails_under_promtool(tmp_path: Path) -> None:
    """The harness can fail: a site that keeps sending must not be reported silent."""
    text = alert_rules(AlertThresholds(), ingest_max_replicas=MAX_REPLICAS)
    rules = tmp_path / "ems-alerts.yml"
    rules.write_text(text)
    wrong = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": 'ems_ingest_site_last_message_timestamp_seconds{site="s2"}', "values": "0+60x40"}],
        "alert_rule_test": [{"eval_time": "25m", "alertname": "EmsSiteSilent", "exp_alerts": [
            {"exp_labels": {"site": "s2", "severity": "critical", "scope": "site"}}]}]}]}
    spec = tmp_path / "wrong.test.yml"
    spec.write_text(yaml.safe_dump(wrong))
    result = subprocess.run([_promtool(), "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


def test_thresholds_change_the_rules() -> None:
    text = alert_rules(AlertThresholds(site_silent_minutes=30, hot_spot_limit_celsius=110.0, time_to_limit_minutes=60))
    rules = {r["alert"]: r for r in yaml.safe_load(text)["groups"][0]["rules"]}
    assert rules["EmsSiteSilent"]["expr"].endswith("> 1800")
    assert rules["EmsHotSpotAboveLimit"]["expr"] == "max by (site, asset) (ems_twin_thermal_hot_spot_celsius) > 110"
    assert rules["EmsHotSpotLimitPredicted"]["expr"].endswith("< 3600")


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_every_rule_has_severity_scope_summary_and_runbook(alert: str) -> None:
    rule = next(r for r in yaml.safe_load(alert_rules())["groups"][0]["rules"] if r["alert"] == alert)
    assert rule["labels"]["scope"] in ("site", "device", "asset", "platform")
    assert rule["labels"].get("severity") in ("critical", "warning", "info") or alert == "EmsPlcFault"
    assert rule["annotations"]["summary"] and rule["annotations"]["runbook"]


def test_docs_list_every_alert_with_its_runbook_line() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "alerts.md").read_text()
    for alert, runbook in _runbooks(alert_rules()).items():
        assert f"| `{alert}` |" in doc, alert
        assert runbook in doc, alert
