"""Alertmanager config (routes, grouping by site, inhibition, webhook receivers from the secret) and the TSDB's
alerting config, checked with the real amtool/promtool where a file is produced."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from components.alertmanager import alertmanager_config, check_url
from components.alerts import AlertReceiver, alert_rules
from components.tsdb import RULES_FILE, AlertingTargets, prometheus_config


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: run `make setup` (scripts/install-system-packages.sh)")
    return path


def test_routes_group_by_site_inhibit_device_alerts_of_a_silent_site_and_amtool_accepts_it(tmp_path: Path) -> None:
    receivers = (AlertReceiver("ops"), AlertReceiver("oncall", severities=("critical",), send_resolved=False))
    text = alertmanager_config(receivers, {"ops": "https://hooks.example/ops?token=s3cret",
                                           "oncall": "http://pager.example:8080/hook"})
    doc = yaml.safe_load(text)
    assert doc["route"]["group_by"] == ["alertname", "site"]
    assert [(r["receiver"], r["matchers"]) for r in doc["route"]["routes"]] == [
        ("ops", ['severity=~"critical|warning"']), ("oncall", ['severity=~"critical"'])]
    assert {"source_matchers": ['alertname="EmsSiteSilent"'], "target_matchers": ['scope=~"device|asset"'],
            "equal": ["site"]} in doc["inhibit_rules"]
    assert doc["receivers"][2] == {"name": "oncall", "webhook_configs": [
        {"url": "http://pager.example:8080/hook", "send_resolved": False}]}
    path = tmp_path / "alertmanager.yml"
    path.write_text(text)
    check = subprocess.run([_tool("amtool"), "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("urls,message", [
    ({}, "ems:alertReceiverUrls has no URL for receiver(s) ops"),
    ({"ops": "https://a.example", "other": "https://b.example"},
     "ems:alertReceiverUrls names receiver(s) other not in ems:alertReceivers"),
    ({"ops": "ftp://a.example/s3cret"}, "ems:alertReceiverUrls.ops must be an http:// or https:// URL with a host"),
    ({"ops": "https:///path-only"}, "ems:alertReceiverUrls.ops must be an http:// or https:// URL with a host"),
])
def test_bad_receiver_urls_are_named_by_receiver_never_by_value(urls: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        alertmanager_config((AlertReceiver("ops"),), urls)
    assert str(caught.value) == message and "s3cret" not in str(caught.value)
    with pytest.raises(ValueError, match="at most 2048"):
        check_url("ops", "https://a.example/" + "x" * 3000)


def test_the_tsdb_config_loads_the_generated_rules_and_points_at_the_alertmanager(tmp_path: Path) -> None:
    targets = AlertingTargets(rules=alert_rules(), alertmanager="alertmanager.ems.svc.cluster.local:9093",
                              gateway="ems-gateway.ems.svc.cluster.local:9100", gateway_site="ems-bridge")
    text = prometheus_config("72h", "ingest-metrics", "ems", "metrics", "twin-api-metrics", targets)
    doc = yaml.safe_load(text)
    assert doc["rule_files"] == [RULES_FILE]
    assert doc["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager.ems.svc.cluster.local:9093"]
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    assert set(jobs) == {"ems-ingest", "ems-twin-api", "ems-gateway"}
    assert jobs["ems-gateway"]["relabel_configs"] == [{"target_label": "site", "replacement": "ems-bridge"}]
    (tmp_path / "prometheus.yml").write_text(text)
    (tmp_path / RULES_FILE).write_text(targets.rules)
    check = subprocess.run([_tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 1 rule files found" in check.stdout
