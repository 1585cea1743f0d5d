"""The north-bound client's component under Pulumi mocks, and ``ems:northbound`` in the stack config.

Validation first (messages verbatim, nothing registered), the children and their wiring, a NetworkPolicy
that lets it reach only the broker and the utility server, the client key kept secret, and the generated
``northbound.toml`` read by the client's own parser (paths pointed at real files of the test PKI).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path

import pulumi
import pytest

from infra_mocks import RecordingMocks, make_ca_pem

MOCKS = RecordingMocks()
pulumi.runtime.set_mocks(MOCKS, project="ems", stack="test", preview=False)

import pulumi_kubernetes as k8s  # noqa: E402  (after the mocks)

from components.k8s_common import ComponentArgsError  # noqa: E402
from components.northbound import BASE, COMMAND_PORT, METRICS_PORT, NorthboundArgs, NorthboundClient, northbound_toml  # noqa: E402
from components.settings import NorthboundSettings, SettingsError, parse_settings  # noqa: E402
from devenv.pki import make_pki  # noqa: E402

CA = make_ca_pem()
SETTINGS = NorthboundSettings(server_url="https://dercs.utility.example.net", server_address="198.51.100.20",
                              utility_ca_certificate=CA, sites=("sub-01", "sub-02"), client_secret="utility-client")
ARGS = dict(namespace="ems", image="ghcr.io/ems-platform/northbound:0.1.0", settings=SETTINGS,
            broker_host="broker.ems.svc.cluster.local", broker_tls_secret="edge-ems-northbound-tls",
            identity="ems-northbound", commands_tls_secret="northbound-commands-tls", caller_identity="ems-api-gateway")


@pytest.fixture(autouse=True)
def fresh() -> None:
    pulumi.runtime.set_mocks(MOCKS, project="ems", stack="test", preview=False)
    MOCKS.resources.clear()


def run(build) -> None:
    pulumi.runtime.test(lambda: pulumi.Output.from_input(build()))()


def test_rejects_both_or_neither_certificate_source_before_any_child() -> None:
    with pytest.raises(ComponentArgsError, match=r"^nb: settings\.client_secret or settings\.client_certificate: exactly "
                                                 r"one must be given \(got None\)$"):
        NorthboundClient("nb", NorthboundArgs(**{**ARGS, "settings": replace(SETTINGS, client_secret=None)}))
    with pytest.raises(ComponentArgsError, match=r"^nb: settings\.client_key is required with settings\.client_certificate"):
        NorthboundClient("nb", NorthboundArgs(**{**ARGS, "settings": replace(SETTINGS, client_secret=None,
                                                                             client_certificate="PEM")}))
    assert MOCKS.resources == []


def test_children_probes_and_network_policy() -> None:
    got: list[object] = []

    def build():
        provider = k8s.Provider("k", render_yaml_to_directory="out/test")
        nb = NorthboundClient("nb", NorthboundArgs(**ARGS), opts=pulumi.ResourceOptions(providers=[provider]))
        return pulumi.Output.all(nb.deployment_name, nb.metrics_service_name).apply(got.append)

    run(build)
    assert got == [["northbound", "northbound-metrics"]]
    children = [r for r in MOCKS.resources if r.typ.startswith("kubernetes:")]
    assert sorted(r.typ for r in children) == sorted([
        "kubernetes:core/v1:ServiceAccount", "kubernetes:core/v1:ConfigMap", "kubernetes:core/v1:ConfigMap",
        "kubernetes:core/v1:Service", "kubernetes:core/v1:Service", "kubernetes:apps/v1:Deployment",
        "kubernetes:networking.k8s.io/v1:NetworkPolicy", "kubernetes:networking.k8s.io/v1:NetworkPolicy"])
    assert all(r.provider and "pulumi:providers:kubernetes::k" in r.provider for r in children)
    [deploy] = MOCKS.of_type("kubernetes:apps/v1:Deployment")
    spec = deploy.inputs["spec"]
    assert (spec["replicas"], spec["strategy"]) == (1, {"type": "Recreate"})    # never two clients at once
    pod = spec["template"]["spec"]
    [c] = pod["containers"]
    assert c["args"] == ["run", "--config", f"{BASE}/config/northbound.toml"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": METRICS_PORT, "scheme": "HTTP"}
    assert c["livenessProbe"]["tcpSocket"] == {"port": METRICS_PORT}          # a utility outage is no reason to restart
    assert c["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"},
                          {"name": "commands", "containerPort": COMMAND_PORT, "protocol": "TCP"}]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["client-tls"]["secret"]["secretName"] == "utility-client"
    assert volumes["broker-tls"]["secret"]["secretName"] == "edge-ems-northbound-tls"
    # The command listener's server certificate and its callers' CA bundle, from the platform PKI.
    assert volumes["commands-tls"]["secret"]["secretName"] == "northbound-commands-tls"
    assert {"name": "commands-tls", "mountPath": f"{BASE}/commands-tls", "readOnly": True} in c["volumeMounts"]
    assert pod["automountServiceAccountToken"] is False
    np, gateway_np = MOCKS.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
    assert np.inputs["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert np.inputs["spec"]["egress"] == [
        {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "broker", "app.kubernetes.io/part-of": "ems-platform"}}}],
         "ports": [{"protocol": "TCP", "port": 8883}]},
        {"to": [{"ipBlock": {"cidr": "198.51.100.20/32"}}], "ports": [{"protocol": "TCP", "port": 443}]}]
    assert np.inputs["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 9100}]
    # The command port: the API gateway's pods alone, on both sides (its ingress here, the gateway's egress).
    gateway_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "api-gateway",
                                                    "app.kubernetes.io/part-of": "ems-platform"}}}
    assert np.inputs["spec"]["ingress"][1] == {"from": [gateway_pods], "ports": [{"protocol": "TCP", "port": COMMAND_PORT}]}
    assert gateway_np.inputs["spec"] == {**gateway_pods, "policyTypes": ["Egress"], "egress": [
        {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "northbound",
                                                 "app.kubernetes.io/part-of": "ems-platform"}}}],
         "ports": [{"protocol": "TCP", "port": COMMAND_PORT}]}]}
    [commands] = [r for r in MOCKS.of_type("kubernetes:core/v1:Service") if r.inputs["metadata"]["name"] == "northbound-commands"]
    assert commands.inputs["spec"]["ports"] == [{"name": "northbound-commands", "port": COMMAND_PORT,
                                                 "targetPort": "commands", "protocol": "TCP"}]
    configs = {r.inputs["metadata"]["name"]: r.inputs["data"] for r in MOCKS.of_type("kubernetes:core/v1:ConfigMap")}
    assert configs["northbound-utility-ca"] == {"ca.crt": CA}
    assert configs["northbound-config"]["northbound.toml"] == northbound_toml(SETTINGS, ARGS["broker_host"], "ems-northbound",
                                                                                  "ems-api-gateway")


def test_a_client_certificate_from_secret_config_becomes_a_secret_resource() -> None:
    settings = replace(SETTINGS, client_secret=None, client_certificate="-----BEGIN CERTIFICATE-----x",
                       client_key=pulumi.Output.secret("-----BEGIN PRIVATE KEY-----k"))

    def build():
        nb = NorthboundClient("nb", NorthboundArgs(**{**ARGS, "settings": settings}))
        return nb.deployment_name

    run(build)
    [secret] = MOCKS.of_type("kubernetes:core/v1:Secret")
    assert secret.inputs["type"] == "kubernetes.io/tls"
    [deploy] = MOCKS.of_type("kubernetes:apps/v1:Deployment")
    volumes = {v["name"]: v for v in deploy.inputs["spec"]["template"]["spec"]["volumes"]}
    assert volumes["client-tls"]["secret"]["secretName"] == "northbound-client-tls"
    assert "PRIVATE KEY" not in json.dumps(deploy.inputs) and "PRIVATE KEY" not in json.dumps(
        [r.inputs for r in MOCKS.of_type("kubernetes:core/v1:ConfigMap")])


def test_generated_config_is_accepted_by_the_clients_own_parser(tmp_path: Path) -> None:
    from northbound.config import parse_config

    pki = make_pki(tmp_path / "pki")
    broker_pair, client_pair = pki.client("ems-northbound"), pki.client("utility-client")
    files = {f"{BASE}/utility/ca.crt": pki.ca, f"{BASE}/client/tls.crt": client_pair.cert,
             f"{BASE}/client/tls.key": client_pair.key, f"{BASE}/broker/ca.crt": pki.ca,
             f"{BASE}/broker/tls.crt": broker_pair.cert, f"{BASE}/broker/tls.key": broker_pair.key,
             f"{BASE}/commands-tls/tls.crt": pki.server.cert, f"{BASE}/commands-tls/tls.key": pki.server.key,
             f"{BASE}/commands-tls/ca.crt": pki.ca}
    text = northbound_toml(SETTINGS, "broker.ems.svc.cluster.local", "ems-northbound", "ems-api-gateway")
    for path, real in files.items():
        assert f'"{path}"' in text, path
        text = text.replace(f'"{path}"', json.dumps(str(real)))
    config = parse_config(tomllib.loads(text))
    assert config.server.url == SETTINGS.server_url and config.server.dcap == "/dcap"
    assert config.broker is not None and (config.broker.host, config.broker.port, config.broker.client_id) == (
        "broker.ems.svc.cluster.local", 8883, "ems-northbound")
    assert [s.site for s in config.sites] == ["sub-01", "sub-02"] and config.http.port == METRICS_PORT
    assert config.operator_api is not None and (config.operator_api.port, config.operator_api.client_cns) == (
        COMMAND_PORT, ("ems-api-gateway",))


PRIVATE = {"ems:cloud": "private", "ems:storageProvisioner": "csi.example.com", "ems:edgeSites": ["sub-01", "sub-02"]}
GOOD = {"serverUrl": "https://dercs.utility.example.net", "serverAddress": "198.51.100.20",
        "utilityCaCertificate": CA, "clientSecret": "utility-client"}


def settings_error(northbound: object, secrets: frozenset[str] = frozenset()) -> str:
    with pytest.raises(SettingsError) as info:
        parse_settings({**PRIVATE, "ems:northbound": northbound}, "t", secrets)
    return str(info.value)


def test_settings_defaults_and_disabled() -> None:
    s = parse_settings({**PRIVATE, "ems:northbound": json.dumps(GOOD)}, "t").platform.northbound
    assert s is not None and (s.server_port, s.dcap, s.sites) == (443, "/dcap", ("sub-01", "sub-02"))
    assert parse_settings({**PRIVATE, "ems:northbound": {**GOOD, "enabled": False}}, "t").platform.northbound is None
    assert parse_settings(PRIVATE, "t").platform.northbound is None
    # enabled is read like every boolean of the stack settings: true/false, or their text.
    assert parse_settings({**PRIVATE, "ems:northbound": {**GOOD, "enabled": "false"}}, "t").platform.northbound is None
    assert parse_settings({**PRIVATE, "ems:northbound": {**GOOD, "enabled": "true"}}, "t").platform.northbound is not None
    assert settings_error({**GOOD, "enabled": "yes"}) == "ems:northbound.enabled: yes must be true or false"


@pytest.mark.parametrize(("change", "message"), [
    ({"serverUrl": "http://dercs.utility.example.net"},
     "ems:northbound.serverUrl: http://dercs.utility.example.net must be an https:// URL with a host and no query "
     "(IEEE 2030.5 runs over TLS)"),
    ({"serverAddress": "dercs.utility.example.net"},
     "ems:northbound.serverAddress: dercs.utility.example.net is not an IP address (NetworkPolicies allow Modbus "
     "egress by address)"),
    ({"serverUrl": "https://dercs.utility.example.net:8443", "serverPort": 443},
     "ems:northbound.serverPort: 443 differs from the port of serverUrl https://dercs.utility.example.net:8443 (8443)"),
    ({"sites": ["sub-09"]}, "ems:northbound.sites[0]: sub-09 is not one of ems:edgeSites (sub-01, sub-02)"),
    ({"clientSecret": None},
     "ems:northbound.clientSecret: null or clientCertificate: exactly one is required (an existing kubernetes.io/tls "
     "Secret, or the PEM certificate with its key in the secret ems:northboundClientKey)"),
    ({"utilityCaCertificate": "hello"}, "ems:northbound.utilityCaCertificate: hello must be a PEM certificate "
                                        "(-----BEGIN CERTIFICATE----- …)"),
    ({"proxy": "x"}, "ems:northbound.proxy: x is not a known field; known: enabled, serverUrl, serverAddress, serverPort, "
                     "dcap, utilityCaCertificate, clientSecret, clientCertificate, sites, "
                     "operatorApiMaxConnections, operatorApiRequestTimeoutSeconds"),
])
def test_settings_errors_name_field_and_value(change: dict, message: str) -> None:
    assert settings_error({k: v for k, v in {**GOOD, **change}.items() if v is not None}) == message


def test_a_client_certificate_needs_its_key_as_a_secret() -> None:
    leaf = make_ca_pem(is_ca=False)
    body = {**{k: v for k, v in GOOD.items() if k != "clientSecret"}, "clientCertificate": leaf}
    assert settings_error(body) == ("ems:northboundClientKey: is required with ems:northbound.clientCertificate: pulumi "
                                    "config set --secret ems:northboundClientKey < client.key")
    s = parse_settings({**PRIVATE, "ems:northbound": body}, "t", frozenset({"northboundClientKey"})).platform.northbound
    assert s is not None and s.client_certificate == leaf
    assert settings_error({**body, "clientCertificate": CA}, frozenset({"northboundClientKey"})).endswith(
        "is a CA certificate; give the client's own certificate")
    with pytest.raises(SettingsError, match=r"^ems:northboundClientKey: \(hidden\) must be set as a secret"):
        parse_settings({**PRIVATE, "ems:northboundClientKey": "-----BEGIN PRIVATE KEY-----"}, "t")


@pytest.mark.parametrize(("port", "violations"), [(443, 0), (8443, 1)])
def test_the_generated_network_policy_meets_the_egress_rule_only_on_443(port: int, violations: int) -> None:
    from tests.policies.policy_engine import check

    settings = replace(SETTINGS, server_url=f"https://dercs.utility.example.net:{port}", server_port=port)
    run(lambda: NorthboundClient("nb", NorthboundArgs(**{**ARGS, "settings": settings})).deployment_name)
    np, gateway_np = MOCKS.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
    found = check("northbound-egress-utility-only", np.typ, np.inputs, name=np.name)
    assert len(found) == violations, found
    assert check("northbound-egress-utility-only", gateway_np.typ, gateway_np.inputs, name=gateway_np.name) == []
