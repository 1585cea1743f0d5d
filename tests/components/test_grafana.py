"""Grafana: validation (messages verbatim), provisioning files, hardening, NetworkPolicies, and the stacks that deploy it."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import pulumi
import pytest
import yaml

from infra_mocks import RecordingMocks, evaluate_stack

MOCKS = RecordingMocks()
pulumi.runtime.set_mocks(MOCKS, project="ems", stack="test", preview=False)

from components.grafana import (  # noqa: E402  (after the mocks)
    DATASOURCE_UID, Grafana, GrafanaArgs, dashboard_provider_yaml, datasource_yaml, grafana_ini, load_dashboards,
)
from components.k8s_common import ComponentArgsError  # noqa: E402

ARGS = dict(namespace="ems", image="docker.io/grafana/grafana:11.3.0", tsdb_url="http://tsdb.ems.svc.cluster.local:9090",
            root_url="https://api.ems.example.net/grafana/")


@pytest.fixture(autouse=True)
def fresh() -> None:
    pulumi.runtime.set_mocks(MOCKS, project="ems", stack="test", preview=False)
    MOCKS.resources.clear()


def run(build) -> None:
    pulumi.runtime.test(lambda: pulumi.Output.from_input(build()))()


@pytest.mark.parametrize("field, value, message", [
    ("replicas", 0, r"^grafana: replicas must be 1\.\.10 \(got 0\)$"),
    ("root_url", "http://api/grafana/", r"^grafana: root_url must be an https:// URL ending in /grafana/ \(got 'http://api/grafana/'\)$"),
    ("role_header", "x-ems-user", r"^grafana: role_header must differ from user_header \(got 'x-ems-user'\)$"),
])
def test_grafana_rejects_bad_arguments(field: str, value: object, message: str) -> None:
    with pytest.raises(ComponentArgsError, match=message):
        Grafana("grafana", GrafanaArgs(**{**ARGS, field: value}))  # type: ignore[arg-type]


def _board(uid: str, datasource: str = DATASOURCE_UID) -> str:
    return json.dumps({"uid": uid, "title": uid, "panels": [
        {"id": 1, "datasource": {"uid": datasource}, "targets": [{"datasource": {"uid": datasource}, "expr": "up"}]}]})


@pytest.mark.parametrize("files, message", [
    ({"a.json": "{"}, r"^g: dashboards/a\.json is not JSON"),
    ({"a.json": _board("x"), "b.json": _board("x")}, r"^g: dashboards/b\.json uid is already used by a\.json \(got 'x'\)$"),
    ({"a.json": _board("x", "other")}, r"^g: dashboards/a\.json panel 1 datasource must be ems-tsdb \(got \['other'\]\)$"),
    ({"a.json": "[]"}, r"^g: dashboards/a\.json uid must be a dashboard object with a uid and a title \(got \[\]\)$"),
    ({}, r"^g: dashboards holds no \*\.json dashboard"),
])
def test_load_dashboards_names_the_bad_file(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ComponentArgsError, match=message):
        load_dashboards("g", tmp_path)


def test_the_repository_dashboards_load() -> None:
    assert set(load_dashboards("g")) == {"fleet.json", "site.json", "transformer.json", "pipeline.json"}


def test_provisioning_files_parse_and_say_what_grafana_needs() -> None:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(grafana_ini("https://api/grafana/", "X-Ems-User", "X-Ems-Grafana-Role", login_form=False))
    assert ini["auth.proxy"]["enabled"] == "true" and ini["auth.proxy"]["header_name"] == "X-Ems-User"
    assert ini["auth.proxy"]["headers"] == "Role:X-Ems-Grafana-Role"
    assert ini["auth.anonymous"]["enabled"] == "false" and ini["auth"]["disable_login_form"] == "true"
    assert ini["auth.basic"]["enabled"] == "false" and "admin_password" not in ini["security"]
    assert ini["server"]["root_url"] == "https://api/grafana/" and ini["server"]["serve_from_sub_path"] == "true"
    assert ini["analytics"]["reporting_enabled"] == "false" and ini["users"]["auto_assign_org_role"] == "Viewer"
    with_login = configparser.ConfigParser(interpolation=None)
    with_login.read_string(grafana_ini("https://api/grafana/", "X-Ems-User", "X-Ems-Grafana-Role", login_form=True))
    assert with_login["security"]["admin_password"] == "$__file{/etc/grafana/admin/password}"
    assert with_login["auth"]["disable_login_form"] == "false"
    [source] = yaml.safe_load(datasource_yaml("http://tsdb:9090"))["datasources"]
    assert source == {"name": "EMS TSDB", "uid": "ems-tsdb", "type": "prometheus", "access": "proxy",
                      "url": "http://tsdb:9090", "isDefault": True, "editable": False,
                      "jsonData": {"httpMethod": "POST", "timeInterval": "15s"}}
    [provider] = yaml.safe_load(dashboard_provider_yaml())["providers"]
    assert provider["options"]["path"] == "/etc/grafana/dashboards" and provider["allowUiUpdates"] is False


def test_grafana_is_hardened_provisioned_and_reachable_only_from_the_gateway() -> None:
    run(lambda: Grafana("grafana", GrafanaArgs(**ARGS)).service_name)  # type: ignore[arg-type]
    [deploy] = MOCKS.of_type("kubernetes:apps/v1:Deployment")
    pod = deploy.inputs["spec"]["template"]["spec"]
    [c] = pod["containers"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] == 472 and sc["readOnlyRootFilesystem"] and sc["capabilities"] == {"drop": ["ALL"]}
    assert c["readinessProbe"]["tcpSocket"]["port"] == 3000 and c["livenessProbe"]["tcpSocket"]["port"] == 3000
    assert pod["automountServiceAccountToken"] is False
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m["readOnly"]}
    assert writable == {"/var/lib/grafana", "/var/log/grafana", "/tmp"}
    assert not MOCKS.of_type("kubernetes:core/v1:Secret"), "no admin Secret without a configured password"
    maps = {m.inputs["metadata"]["name"]: m.inputs["data"] for m in MOCKS.of_type("kubernetes:core/v1:ConfigMap")}
    assert set(maps["grafana-dashboards"]) == {"fleet.json", "site.json", "transformer.json", "pipeline.json"}
    assert "http://tsdb.ems.svc.cluster.local:9090" in maps["grafana-config"]["datasources.yaml"]
    [svc] = MOCKS.of_type("kubernetes:core/v1:Service")
    assert svc.inputs["spec"]["type"] == "ClusterIP" and [p["port"] for p in svc.inputs["spec"]["ports"]] == [3000]
    policies = {p.inputs["metadata"]["name"]: p.inputs["spec"] for p in MOCKS.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")}
    gateway = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "api-gateway", "app.kubernetes.io/part-of": "ems-platform"}}}
    assert policies["grafana"]["ingress"] == [{"from": [gateway], "ports": [{"protocol": "TCP", "port": 3000}]}]
    assert [r["ports"] for r in policies["grafana"]["egress"]] == [[{"protocol": "TCP", "port": 9090}]]
    assert policies["api-gateway-to-grafana"]["policyTypes"] == ["Egress"]
    assert policies["tsdb-from-grafana"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 9090}]


def test_admin_password_is_a_secret_mounted_as_a_file() -> None:
    run(lambda: Grafana("grafana", GrafanaArgs(**ARGS, admin_password=pulumi.Output.secret("s3cret"))).service_name)  # type: ignore[arg-type]
    [secret] = MOCKS.of_type("kubernetes:core/v1:Secret")
    assert secret.inputs["metadata"]["name"] == "grafana-admin"
    [deploy] = MOCKS.of_type("kubernetes:apps/v1:Deployment")
    mounts = {m["mountPath"]: m for m in deploy.inputs["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/etc/grafana/admin"]["readOnly"] is True
    [conf] = [m for m in MOCKS.of_type("kubernetes:core/v1:ConfigMap") if m.inputs["metadata"]["name"] == "grafana-config"]
    assert "s3cret" not in json.dumps(conf.inputs) and "admin_password = $__file{" in conf.inputs["data"]["grafana.ini"]


@pytest.mark.parametrize("stack", ["local", "private-dc1", "aws-eu-west-1"])
def test_region_stacks_deploy_grafana_behind_the_gateway(stack: str) -> None:
    ev = evaluate_stack(stack)
    deploys = [d for d in ev.of_type("kubernetes:apps/v1:Deployment") if d.inputs["metadata"]["name"] == "grafana"]
    assert len(deploys) == 1, stack
    [conf] = [m for m in ev.of_type("kubernetes:core/v1:ConfigMap") if m.inputs["metadata"]["name"] == "grafana-config"]
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(conf.inputs["data"]["grafana.ini"])
    assert ini["server"]["root_url"].startswith("https://") and ini["server"]["root_url"].endswith("/grafana/")


def test_grafana_can_be_turned_off() -> None:
    ev = evaluate_stack("local", {"ems:grafana": {"enabled": False}})
    assert not [d for d in ev.of_type("kubernetes:apps/v1:Deployment") if d.inputs["metadata"]["name"] == "grafana"]


def test_admin_password_comes_only_from_a_secret_config_value() -> None:
    ev = evaluate_stack("local", {"ems:grafanaAdminPassword": "pw-from-secret"}, secret_keys=("ems:grafanaAdminPassword",))
    assert [s.inputs["metadata"]["name"] for s in ev.of_type("kubernetes:core/v1:Secret")
            if s.inputs["metadata"]["name"] == "grafana-admin"] == ["grafana-admin"]
    with pytest.raises(Exception, match=r"grafanaAdminPassword: \(hidden\) must be stored as a secret"):
        evaluate_stack("local", {"ems:grafanaAdminPassword": "plain"})


def test_twin_api_config_takes_the_alertmanager_url_for_the_operator_page() -> None:
    from components.twin_api import twin_api_toml, validate_twin_api_toml

    text = twin_api_toml("broker.ems.svc", "http://tsdb:9090", "http://alertmanager.ems.svc:9093")
    validate_twin_api_toml("twin", text)        # the ingest's own parser accepts it
    assert 'alertmanager_url = "http://alertmanager.ems.svc:9093"' in text
    assert "alertmanager_url" not in twin_api_toml("broker.ems.svc", "http://tsdb:9090")
