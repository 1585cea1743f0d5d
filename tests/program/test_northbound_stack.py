"""The north-bound client in the stack files: deployed where a utility server is configured (private-dc1),
absent where it is disabled (local) or unset (AWS stacks), with its own broker certificate identity, and
scraped by the TSDB where it runs (the rendered prometheus.yml checked by promtool)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from infra_mocks import evaluate_stack

DEPLOY = "kubernetes:apps/v1:Deployment"
NP = "kubernetes:networking.k8s.io/v1:NetworkPolicy"


def _prometheus_yml(ev) -> str:
    return next(c.inputs["data"]["prometheus.yml"] for c in ev.of_type("kubernetes:core/v1:ConfigMap")
                if c.inputs["metadata"]["name"] == "tsdb-config")


def _northbound(ev) -> list:
    return [d for d in ev.of_type(DEPLOY) if d.inputs["metadata"]["name"] == "northbound"]


def test_private_dc1_deploys_it_with_its_own_identity_and_egress() -> None:
    ev = evaluate_stack("private-dc1")
    [deploy] = _northbound(ev)
    volumes = {v["name"]: v for v in deploy.inputs["spec"]["template"]["spec"]["volumes"]}
    assert volumes["broker-tls"]["secret"]["secretName"] == "edge-ems-northbound-tls"
    assert volumes["client-tls"]["secret"]["secretName"] == "utility-2030-5-client"
    secrets = [s for s in ev.of_type("kubernetes:core/v1:Secret") if s.inputs["metadata"]["name"] == "edge-ems-northbound-tls"]
    assert [s.inputs["metadata"]["namespace"] for s in secrets] == ["ems-system"]   # the platform PKI issued its identity (default ems:namespace)
    [policy] = [p for p in ev.of_type(NP) if p.inputs["metadata"]["name"] == "northbound"]
    assert {"to": [{"ipBlock": {"cidr": "198.51.100.20/32"}}], "ports": [{"protocol": "TCP", "port": 443}]} \
        in policy.inputs["spec"]["egress"]
    toml = next(c.inputs["data"]["northbound.toml"] for c in ev.of_type("kubernetes:core/v1:ConfigMap")
                if c.inputs["metadata"]["name"] == "northbound-config")
    assert '[sites.sub-01]' in toml and '[sites.sub-02]' in toml and '[sites.sub-03]' not in toml


@pytest.mark.parametrize("name", ["local", "aws-eu-west-1"])
def test_no_client_without_a_configured_server(name: str) -> None:
    ev = evaluate_stack(name)
    assert _northbound(ev) == []
    assert not [p for p in ev.of_type(NP) if p.inputs["metadata"]["name"] == "northbound"]


def test_the_tsdb_scrapes_it_through_its_metrics_service_where_it_runs(tmp_path: Path) -> None:
    ev = evaluate_stack("private-dc1")
    text = _prometheus_yml(ev)
    jobs = {job["job_name"]: job for job in yaml.safe_load(text)["scrape_configs"]}
    [service] = [s for s in ev.of_type("kubernetes:core/v1:Service") if s.inputs["metadata"]["name"] == "northbound-metrics"]
    namespace = service.inputs["metadata"]["namespace"]
    [spec] = service.inputs["spec"]["ports"]
    port = {"port": int(spec["port"])}       # the mocks hand numbers back as floats
    assert jobs["ems-northbound"]["static_configs"] == [
        {"targets": [f"northbound-metrics.{namespace}.svc.cluster.local:{port['port']}"]}]
    assert "ems-ingest" in jobs
    # The client's NetworkPolicy lets the TSDB pods in on that port.
    [policy] = [p for p in ev.of_type(NP) if p.inputs["metadata"]["name"] == "northbound"]
    [rule] = [r for r in policy.inputs["spec"]["ingress"] if int(r["ports"][0]["port"]) == port["port"]]
    assert [peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"]] == ["tsdb"]
    assert [(p["protocol"], int(p["port"])) for p in rule["ports"]] == [("TCP", port["port"])]
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/install-system-packages.sh installs Prometheus"
    [data] = [c.inputs["data"] for c in ev.of_type("kubernetes:core/v1:ConfigMap")
              if c.inputs["metadata"]["name"] == "tsdb-config"]
    for name, content in data.items():      # prometheus.yml and the rules file it loads, as mounted
        (tmp_path / name).write_text(content)
    result = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["local", "aws-eu-west-1"])
def test_no_scrape_job_without_the_client(name: str) -> None:
    jobs = [job["job_name"] for job in yaml.safe_load(_prometheus_yml(evaluate_stack(name)))["scrape_configs"]]
    assert "ems-northbound" not in jobs and "ems-ingest" in jobs


def _gateway_conf(ev) -> str:
    return next(c.inputs["data"]["nginx.conf"] for c in ev.of_type("kubernetes:core/v1:ConfigMap")
                if c.inputs["metadata"]["name"] == "api-gateway-config")


def test_the_gateway_routes_manual_commands_to_it_and_only_the_gateway_reaches_that_port() -> None:
    ev = evaluate_stack("private-dc1")
    [service] = [s for s in ev.of_type("kubernetes:core/v1:Service") if s.inputs["metadata"]["name"] == "northbound-commands"]
    namespace = service.inputs["metadata"]["namespace"]
    [spec] = service.inputs["spec"]["ports"]
    port = int(spec["port"])
    conf = _gateway_conf(ev)
    assert f"server northbound-commands.{namespace}.svc.cluster.local:{port} max_fails=0;" in conf
    assert 'location ~ "^/v1/commands(/[A-Za-z0-9_-]{1,64})?$"' in conf and "zone=ems_commands" in conf
    toml = next(c.inputs["data"]["northbound.toml"] for c in ev.of_type("kubernetes:core/v1:ConfigMap")
                if c.inputs["metadata"]["name"] == "northbound-config")
    assert f"[operator_api]\nhost = \"0.0.0.0\"\nport = {port}" in toml
    # Over mTLS: nginx verifies the listener's certificate by the Service name and presents its own client certificate;
    # the listener serves the gateway's CN alone, with the platform PKI's certificate for the command Service.
    host = f"northbound-commands.{namespace}.svc.cluster.local"
    [location] = re.findall(r'location ~ "\^/v1/commands[^"]*" \{(.*?)\n        \}', conf, re.S)
    for directive in ("proxy_pass https://ems_northbound;", "proxy_ssl_verify on;", f"proxy_ssl_name {host};",
                      "proxy_ssl_trusted_certificate /etc/nginx/tls/ca.crt;",
                      "proxy_ssl_certificate /etc/nginx/upstream-tls/tls.crt;",
                      "proxy_ssl_certificate_key /etc/nginx/upstream-tls/tls.key;"):
        assert directive in location, directive
    # (tests/components/test_northbound_component.py reads this file with the client's own parser)
    operator_api = tomllib.loads(toml)["operator_api"]
    assert (operator_api["client_cns"], operator_api["cert"], operator_api["key"], operator_api["client_ca"]) == (
        ["ems-api-gateway"], *(f"/etc/ems/northbound/commands-tls/{f}" for f in ("tls.crt", "tls.key", "ca.crt")))
    [deploy] = [d for d in ev.of_type("kubernetes:apps/v1:Deployment") if d.inputs["metadata"]["name"] == "northbound"]
    volumes = {v["name"]: v for v in deploy.inputs["spec"]["template"]["spec"]["volumes"]}
    assert volumes["commands-tls"]["secret"]["secretName"] == "northbound-commands-tls"
    [csr] = [r for r in ev.of_type("tls:index/certRequest:CertRequest") if r.name.endswith("-pki-northbound-commands-csr")]
    assert host in csr.inputs["dnsNames"]
    [cert] = [r for r in ev.of_type("tls:index/locallySignedCert:LocallySignedCert") if r.name == csr.name.replace("-csr", "-cert")]
    assert "server_auth" in cert.inputs["allowedUses"]
    [secret] = [r for r in ev.of_type("kubernetes:core/v1:Secret") if r.inputs["metadata"]["name"] == "northbound-commands-tls"]
    assert secret.inputs["type"] == "kubernetes.io/tls" and secret.inputs["metadata"]["namespace"] == namespace
    [policy] = [p for p in ev.of_type(NP) if p.inputs["metadata"]["name"] == "northbound"]
    [rule] = [r for r in policy.inputs["spec"]["ingress"] if int(r["ports"][0]["port"]) == port]
    assert [peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"]] == ["api-gateway"]
    [egress] = [p for p in ev.of_type(NP) if p.inputs["metadata"]["name"] == "api-gateway-to-northbound"]
    assert egress.inputs["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "api-gateway"
    assert [(p["protocol"], int(p["port"])) for r in egress.inputs["spec"]["egress"] for p in r["ports"]] == [("TCP", port)]


@pytest.mark.parametrize("name", ["local", "aws-eu-west-1"])
def test_no_command_route_without_the_client(name: str) -> None:
    ev = evaluate_stack(name)
    conf = _gateway_conf(ev)
    assert "/v1/commands" not in conf and "northbound" not in conf and "ems_commands" not in conf
    assert not [r for r in ev.of_type("kubernetes:core/v1:Secret") if r.inputs["metadata"]["name"] == "northbound-commands-tls"]
