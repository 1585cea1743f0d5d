"""The stacks deploy alerting: the TSDB loads the rules generated from the stack's thresholds, Alertmanager runs
with its receivers' URLs only in a Secret, and NetworkPolicies let exactly the alerting flows through."""

from __future__ import annotations

import json

import yaml
from infra_mocks import evaluate_stack

from components.alerts import ALERT_NAMES

URL = "https://hooks.example/ems?token=T0K3N"


SECRET_SIG = "4dabf18193072939515e22adb298388d"          # Pulumi's marker of a secret value in resource inputs


def _secret_text(secret) -> str:  # type: ignore[no-untyped-def]
    """alertmanager.yml from the Secret's stringData, which must be a secret value as a whole."""
    data = secret.inputs["stringData"]
    assert data.get(SECRET_SIG) == "1b47061264138c4ac30d75fd1eb44270", "stringData is not a secret"
    return data["value"]["alertmanager.yml"]


def _named(ev, typ: str, name: str):  # type: ignore[no-untyped-def]
    [found] = [r for r in ev.of_type(typ) if r.inputs["metadata"]["name"] == name]
    return found


def test_a_stack_with_receivers_and_thresholds_deploys_rules_alertmanager_and_policies() -> None:
    ev = evaluate_stack("local", overrides={
        "ems:alerts": {"siteSilentMinutes": 30},
        "ems:alertReceivers": [{"name": "ops", "severities": ["critical"]}],
        "ems:alertReceiverUrls": json.dumps({"ops": URL}),
    }, secret_keys=("ems:alertReceiverUrls",))
    tsdb_conf = _named(ev, "kubernetes:core/v1:ConfigMap", "tsdb-config").inputs["data"]
    prom = yaml.safe_load(tsdb_conf["prometheus.yml"])
    assert prom["rule_files"] == ["ems-alerts.yml"]
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager.ems-system.svc.cluster.local:9093"]
    rules = {r["alert"]: r for r in yaml.safe_load(tsdb_conf["ems-alerts.yml"])["groups"][0]["rules"]}
    assert set(rules) == set(ALERT_NAMES) and rules["EmsSiteSilent"]["expr"].endswith("> 1800")
    secret = _named(ev, "kubernetes:core/v1:Secret", "alertmanager-config")
    am = yaml.safe_load(_secret_text(secret))
    assert am["receivers"][1] == {"name": "ops", "webhook_configs": [{"url": URL, "send_resolved": True}]}
    # The URL (a credential) appears in no ConfigMap and no other resource's inputs.
    for r in ev.resources:
        if r is not secret:
            assert "T0K3N" not in json.dumps(r.inputs, default=str), r.urn
    sts = _named(ev, "kubernetes:apps/v1:StatefulSet", "alertmanager")
    # Alertmanager, and the sidecar that makes it reload a changed alertmanager.yml (components/config_reload.py).
    c, reloader = sts.inputs["spec"]["template"]["spec"]["containers"]
    assert c["ports"] == [{"name": "http", "containerPort": 9093, "protocol": "TCP"}]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert reloader["name"] == "config-reloader" and "ports" not in reloader
    policies = {p.inputs["metadata"]["name"]: p.inputs["spec"] for p in ev.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
                if p.inputs["metadata"]["namespace"] == "ems-system"}
    def peers(rule: dict) -> list[str]:
        return [p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in rule.get("from", rule.get("to", []))]

    assert [(peers(r), [p["port"] for p in r["ports"]]) for r in policies["alertmanager"]["ingress"]] == [
        (["tsdb", "twin-api", "api-gateway"], [9093])]
    assert (["alertmanager"], [9093]) in [(peers(r), [p["port"] for p in r["ports"]]) for r in policies["api-gateway"]["egress"]]
    assert (["alertmanager"], [9093]) in [(peers(r), [p["port"] for p in r["ports"]]) for r in policies["tsdb"]["egress"]]
    assert [p["port"] for r in policies["alertmanager"]["egress"] for p in r["ports"]] == [443]


def test_a_stack_without_receivers_still_runs_alertmanager_with_the_null_receiver() -> None:
    ev = evaluate_stack("local")
    secret = _named(ev, "kubernetes:core/v1:Secret", "alertmanager-config")
    am = yaml.safe_load(_secret_text(secret))
    assert am["receivers"] == [{"name": "ems-null"}] and am["route"]["routes"] == []
