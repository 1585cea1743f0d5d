"""Components under Pulumi mocks: validation first (messages verbatim), children, providers, outputs."""

from __future__ import annotations

import base64
import json
import re
import socket
import tomllib

import pulumi
import pytest

from infra_mocks import RecordingMocks

MOCKS = RecordingMocks()
pulumi.runtime.set_mocks(MOCKS, project="ems", stack="test", preview=False)

import pulumi_kubernetes as k8s  # noqa: E402  (after the mocks)

from components.api_gateway import ApiGateway, ApiGatewayArgs  # noqa: E402
from components.aws_ingress import Backend, RegionalIngress, RegionalIngressArgs  # noqa: E402
from components.aws_network import plan_subnets  # noqa: E402
from components.broker import BrokerArgs, MqttBroker  # noqa: E402
from components.eks_cluster import EksCluster, EksClusterArgs, node_user_data  # noqa: E402
from components.global_lb import GlobalLoadBalancer, GlobalLoadBalancerArgs  # noqa: E402
from components.ingest import IngestArgs, IngestWorkers  # noqa: E402
from components.k8s_common import ComponentArgsError  # noqa: E402
from components.ems_gateway import EmsGateway, EmsGatewayArgs  # noqa: E402
from components.pki import ClientCert, Pki, PkiArgs, ServerCert  # noqa: E402
from components.settings import DEFAULT_NODE_GROUPS, ModbusGateway, NodeGroupSettings  # noqa: E402
from components.twin_api import TwinApi, TwinApiArgs, twin_api_toml  # noqa: E402

SERVER = ServerCert("broker", "broker.ems.svc", ("broker.ems.svc",), "broker-tls")


@pytest.fixture(autouse=True)
def fresh() -> None:
    # Other test modules install their own mocks when collected or run; re-install ours.
    pulumi.runtime.set_mocks(MOCKS, project="ems", stack="test", preview=False)
    MOCKS.resources.clear()


def test_ingest_rejects_min_above_max() -> None:
    with pytest.raises(ComponentArgsError, match=r"^ingest: min_replicas must not exceed max_replicas 2 \(got 5\)$"):
        IngestWorkers("ingest", IngestArgs(namespace="ems", image="ghcr.io/x/ingest:1", broker_host="broker", identity="ems-ingest",
                                           tls_secrets=("t0", "t1"), storage_class="sc", remote_write_url="http://tsdb",
                                           min_replicas=5, max_replicas=2))
    assert MOCKS.resources == []


def test_pki_rejects_leaf_longer_than_398_days() -> None:
    with pytest.raises(ComponentArgsError, match=r"^pki: leaf_validity_hours must be 1\.\.9552 \(398 days\) \(got 10000\)$"):
        Pki("pki", PkiArgs(namespace="ems", client_namespace="c", servers=(SERVER,), leaf_validity_hours=10000))


def test_pki_rejects_duplicate_identities() -> None:
    with pytest.raises(ComponentArgsError, match=r"^pki: edge_sites must be unique \(including in_cluster_clients and service_clients\)"):
        Pki("pki", PkiArgs(namespace="ems", client_namespace="c", servers=(SERVER,), edge_sites=("a",), in_cluster_clients=("a",)))
    with pytest.raises(ComponentArgsError, match=r"^pki: edge_sites must be unique .* \(got \('a', 'a'\)\)$"):
        Pki("pki", PkiArgs(namespace="ems", client_namespace="c", servers=(SERVER,), edge_sites=("a",),
                           service_clients=(ClientCert("gw", "a", "gw-tls"),)))
    with pytest.raises(ComponentArgsError, match=r"^pki: servers must have distinct roles \(service_clients included\)"):
        Pki("pki", PkiArgs(namespace="ems", client_namespace="c", servers=(SERVER,),
                           service_clients=(ClientCert(SERVER.role, "gw", "gw-tls"),)))


def test_gateway_rejects_node_port() -> None:
    with pytest.raises(ComponentArgsError, match=r"^api: external_service_type must be LoadBalancer or ClusterIP \(got 'NodePort'\)$"):
        ApiGateway("api", ApiGatewayArgs(namespace="ems", image="nginxinc/nginx-unprivileged:1", tls_secret="t", tsdb_host="tsdb",
                                         twin_api_host="twin-api", external_service_type="NodePort"))


def test_bridge_checks_sensors_conf_with_the_edge_agent_parser() -> None:
    bad = ModbusGateway("gw", "10.0.0.1", points_json=json.dumps([{"id": "S1", "asset": "a", "name": "n", "address": 70000}]))
    with pytest.raises(ComponentArgsError, match=r"^bridge: gateways \(sensors\.conf devices\[0\]\.points\[0\]\.address\) "
                                                        r"must be 0\.\.65535 \(got 70000\)$"):
        EmsGateway("bridge", EmsGatewayArgs(namespace="ems", image="ghcr.io/x/agent:1", site="ems-bridge",
                                            broker_host="broker", tls_secret="t", storage_class="sc", gateways=(bad,)))


def test_eks_rejects_old_versions_open_endpoints_and_missing_pools() -> None:
    base = dict(region="eu-west-1", vpc_id="vpc-1", private_subnet_ids=["subnet-a", "subnet-b"], node_groups=DEFAULT_NODE_GROUPS)
    with pytest.raises(ComponentArgsError, match=r"^cluster: version is below the supported minimum 1\.26 \(got '1\.25'\)$"):
        EksCluster("cluster", EksClusterArgs(**base, version="1.25"))
    with pytest.raises(ComponentArgsError, match=r"public_endpoint_cidrs must not open the API to the whole internet"):
        EksCluster("cluster", EksClusterArgs(**base, public_endpoint_cidrs=("0.0.0.0/0",)))
    only_general = (NodeGroupSettings("g", "general", ("m6i.large",), 1, 2, 1),)
    with pytest.raises(ComponentArgsError, match=r"node_groups must include a interconnect pool"):
        EksCluster("cluster", EksClusterArgs(**{**base, "node_groups": only_general}))
    assert MOCKS.resources == []


def test_ingress_exposes_only_8883_and_443() -> None:
    with pytest.raises(ComponentArgsError, match=r"backends\[broker\]\.port must be 8883 or 443"):
        RegionalIngress("ingress", RegionalIngressArgs(
            cluster_name="c", region="eu-west-1", vpc_id="v", vpc_cidr="10.0.0.0/16", public_subnet_ids=["s"],
            node_security_group_id="sg", lb_controller_role_arn="r", namespace="ems", backends=(Backend("broker", 1883, "broker"),)))


def test_global_lb_needs_a_region() -> None:
    with pytest.raises(ComponentArgsError, match=r"^global: regions must list at least one region \(got \(\)\)$"):
        GlobalLoadBalancer("global", GlobalLoadBalancerArgs(regions=()))


def test_subnet_plan_stays_inside_the_vpc_without_overlap() -> None:
    import ipaddress

    private, public = plan_subnets("10.40.0.0/16", 3)
    nets = [ipaddress.ip_network(c) for c in private + public]
    assert all(n.subnet_of(ipaddress.ip_network("10.40.0.0/16")) for n in nets)
    assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])
    assert private[0] == "10.40.0.0/19" and public[0] == "10.40.128.0/21"


def test_node_user_data_allows_somaxconn() -> None:
    text = base64.b64decode(node_user_data(["net.core.somaxconn"])).decode()
    assert "kind: NodeConfig" in text and "allowedUnsafeSysctls:\n        - net.core.somaxconn" in text


def run(build) -> None:
    """Build under the mock runtime and wait until every registration has finished."""
    pulumi.runtime.test(lambda: pulumi.Output.from_input(build()))()


def test_pki_children_are_parented_named_and_keys_stay_secret() -> None:
    def build():
        provider = k8s.Provider("k", render_yaml_to_directory="out/test")
        pki = Pki("pki", PkiArgs(namespace="ems", client_namespace="creds", servers=(SERVER,), edge_sites=("s1", "s2")),
                  opts=pulumi.ResourceOptions(providers=[provider]))
        return pki.client_secrets

    run(build)
    names = [r.name for r in MOCKS.resources]
    assert {"pki-ca-key", "pki-ca", "pki-broker-cert", "pki-site-s1-cert", "pki-site-s2-secret"} <= set(names)
    secrets = [r for r in MOCKS.of_type("kubernetes:core/v1:Secret")]
    assert all(r.provider and "pulumi:providers:kubernetes::k" in r.provider for r in secrets), [r.urn for r in secrets]
    client = [r for r in secrets if r.inputs["metadata"]["namespace"] == "creds"]
    assert len(client) == 2 and all(r.inputs["type"] == "kubernetes.io/tls" for r in client)
    certs = MOCKS.of_type("tls:index/locallySignedCert:LocallySignedCert")
    uses = {r.name: r.inputs["allowedUses"] for r in certs}
    assert "server_auth" in uses["pki-broker-cert"] and "client_auth" in uses["pki-site-s1-cert"]
    keys = MOCKS.of_type("tls:index/privateKey:PrivateKey")
    assert all(k.inputs["algorithm"] == "ECDSA" for k in keys)


def test_bridge_is_latency_critical_and_pinned_to_interconnect() -> None:
    gw = ModbusGateway("gw", "10.0.0.1", 502, 1, json.dumps([{"id": "S1", "asset": "a", "name": "n", "address": 3}]))
    got: list[object] = []

    def build():
        bridge = EmsGateway("bridge", EmsGatewayArgs(namespace="ems", image="ghcr.io/x/agent:1", site="ems-bridge",
                                                     broker_host="broker", tls_secret="t", storage_class="sc", gateways=(gw,)))
        return bridge.gateway_addresses.apply(got.append)

    run(build)
    assert got == [["10.0.0.1:502"]]
    [deploy] = MOCKS.of_type("kubernetes:apps/v1:Deployment")
    assert MOCKS.of_type("kubernetes:apps/v1:StatefulSet") == []
    pod = deploy.inputs["spec"]["template"]
    assert pod["metadata"]["labels"]["ems.io/latency-critical"] == "true"
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "ems.io/pool", "operator": "In", "values": ["interconnect"]}]}]
    [conf] = MOCKS.of_type("kubernetes:core/v1:ConfigMap")
    assert 'host = "10.0.0.1"' in conf.inputs["data"]["sensors.conf"]


def test_ingest_config_is_checked_with_the_ingest_parser() -> None:
    from components.ingest import ingest_toml, validate_ingest_toml
    from ingest.config import parse_config

    text = ingest_toml("broker.ems.svc.cluster.local", "http://tsdb.ems.svc.cluster.local:9090/api/v1/write")
    validate_ingest_toml("ingest", text)
    broker = parse_config(tomllib.loads(text), check_files=False).broker
    assert (broker.tls, broker.port, broker.group) == (True, 8883, "ems-ingest")
    assert (str(broker.ca), str(broker.cert), str(broker.key)) == ("/etc/ems/tls/ca.crt", "/etc/ems/tls/tls.crt", "/etc/ems/tls/tls.key")
    # One file for every pod: no shared client id (the broker takes each worker's certificate CN as its id).
    assert "client_id" not in tomllib.loads(text)["broker"] and broker.client_id == f"ems-ingest-{socket.gethostname()}"[:64]
    with pytest.raises(ComponentArgsError, match=r"^ingest: ingest\.toml tsdb\.remote_write_url must be an http"):
        validate_ingest_toml("ingest", ingest_toml("broker", "ftp://tsdb/x"))


def test_tsdb_scrape_config_labels_ingest_series_with_pod_and_namespace() -> None:
    import re

    import yaml

    from components.tsdb import pod_address_regex, prometheus_config

    conf = yaml.safe_load(prometheus_config("72h", "ingest-metrics", "ems", "metrics"))
    assert conf["storage"]["tsdb"]["out_of_order_time_window"] == "72h"
    [job] = conf["scrape_configs"]
    assert job["dns_sd_configs"] == [{"names": ["_metrics._tcp.ingest-metrics.ems.svc.cluster.local"], "type": "SRV", "refresh_interval": "30s"}]
    regex = re.compile(pod_address_regex("ingest-metrics"))
    for address in ("ingest-3.ingest-metrics.ems.svc.cluster.local:9100", "ingest-3.ingest-metrics.ems.svc.cluster.local.:9100"):
        match = regex.fullmatch(address)
        assert match and match.expand(r"\1 \2") == "ingest-3 ems", address
    assert regex.fullmatch("ingest-3.other.ems.svc.cluster.local:9100") is None
    labels = {r["target_label"]: r["replacement"] for r in job["relabel_configs"]}
    assert labels == {"pod": "$1", "namespace": "$2"}


def test_prometheus_accepts_the_generated_config(tmp_path) -> None:
    import shutil
    import subprocess

    from components.tsdb import prometheus_config

    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/install-system-packages.sh installs Prometheus"
    path = tmp_path / "prometheus.yml"
    for twin in (None, "twin-api-metrics"):
        text = prometheus_config("168h", "ingest-metrics", "ems", "metrics", twin)
        path.write_text(text)
        result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert ("_metrics._tcp.twin-api-metrics.ems.svc.cluster.local" in text) == (twin is not None)


def _locations(conf: str) -> list[tuple[str, str, str]]:
    """(regex, required role, upstream) of every routed location in a rendered nginx.conf."""
    import re
    return re.findall(r"location ~ \"([^\"]+)\" \{\n\s+set \$ems_required (\w+);.*?proxy_pass \w+://ems_(\w+);", conf, re.S)


def test_nginx_config_authenticates_every_route_and_routes_nothing_else() -> None:
    import re

    from components.api_gateway import NginxPlan, Upstream, nginx_config
    from components.gateway_settings import GatewayAuthSettings

    conf = nginx_config(NginxPlan(auth=GatewayAuthSettings(), tsdb=Upstream("tsdb.ems.svc.cluster.local", 9090),
                                  twin_api=Upstream("twin-api.ems.svc.cluster.local", 8443, "twin-api.ems.svc.cluster.local")))
    assert "listen 443 ssl;" in conf and "ssl_verify_client optional;" in conf
    locations = _locations(conf)
    assert conf.count("auth_request /_ems_authz;") == len(locations) == 5     # no alertmanager or grafana configured

    def route(path: str) -> tuple[str, str] | None:
        found = [(role, up) for regex, role, up in locations if re.search(regex, path)]
        assert len(found) <= 1, path
        return found[0] if found else None
    assert route("/api/v1/query_range") == ("viewer", "tsdb") and route("/v1/assets/sub-07/tx1") == ("viewer", "twin_api")
    assert route("/api/v1/status/flags") == ("admin", "tsdb")
    assert [route(p) for p in ("/api/v1/write", "/api/v1/admin/tsdb/snapshot", "/v1/authz", "/metrics", "/federate",
                               "/-/reload", "/v1/assets/a/b/c", "/api/v2/silences")] == [None] * 8
    # The verifier is asked over TLS that checks the platform CA and the twin API's name; Authorization never goes upstream.
    assert "proxy_ssl_name twin-api.ems.svc.cluster.local;" in conf and "proxy_ssl_trusted_certificate /etc/nginx/tls/ca.crt;" in conf
    assert conf.count('proxy_set_header Authorization "";') == len(locations)


def test_nginx_config_follows_the_client_certificate_mode_and_limits() -> None:
    from components.api_gateway import NginxPlan, Upstream, nginx_config
    from components.gateway_settings import GatewayAuthSettings
    from ems_contract.oidc import OidcSettings

    oidc = OidcSettings("https://idp/r", "ems", "https://idp/jwks", (("g", "viewer"),))
    plan = lambda **kw: NginxPlan(auth=GatewayAuthSettings(**kw), tsdb=Upstream("t", 9090), twin_api=Upstream("w", 8443, "w"))  # noqa: E731
    required = nginx_config(plan(client_certs="required"))
    assert "ssl_verify_client optional;" in required           # the handshake admits the kubelet's probe of /healthz
    assert required.count("if ($ssl_client_verify != SUCCESS) { return 496; }") == len(_locations(required)) == 5
    off = nginx_config(plan(client_certs="off", oidc=oidc))
    assert "ssl_verify_client off;" in off and "ssl_client_certificate" not in off
    limited = nginx_config(plan(rate_per_second=7, burst=9, max_body_bytes=2048, max_header_bytes=4096, promql_timeout_seconds=12))
    assert "rate=7r/s;" in limited and "burst=9 nodelay;" in limited and "client_max_body_size 2048;" in limited
    assert "large_client_header_buffers 4 4k;" in limited and "proxy_read_timeout 17s;" in limited
    with pytest.raises(ValueError, match="twin_api must be an HTTPS upstream"):
        nginx_config(NginxPlan(auth=GatewayAuthSettings(), tsdb=Upstream("t", 9090), twin_api=Upstream("w", 8443)))


BROKER_ARGS = dict(namespace="ems", image="eclipse-mosquitto:2", tls_secret="t", storage_class="sc", ingest_group="ems-ingest",
                   ingest_identities=("ems-ingest-ingest-0", "ems-ingest-ingest-1"), clients=("s1",),
                   twin_identities=("ems-twin-api-twin-api-0",))
LABELS = "must be DNS labels other than 'deadletter'"


@pytest.mark.parametrize(("field", "value", "bad", "allowed"), [
    ("ingest_identities", (), (), "must name at least one worker"),
    *[("ingest_identities", (cn,), cn, LABELS) for cn in ("deadletter", "Ingest", "ems-ingest\n", "ems-ingest\nuser x", "")],
    ("ingest_identities", ("w0", "w0"), "w0", "must be distinct certificate identities ('w0' is already in ingest_identities)"),
    ("ingest_identities", ("s1",), "s1", "must be distinct certificate identities ('s1' is already in clients)"),
    *[("clients", ("s1", cn), cn, LABELS) for cn in ("deadletter", "s/#", "s1\nuser x")],
    ("clients", ("s1", "s1"), "s1", "must be distinct certificate identities ('s1' is already in clients)"),
    *[("twin_identities", (cn,), cn, LABELS) for cn in ("deadletter", "Twin", "ems-twin-api\nuser x")],
    ("twin_identities", ("s1",), "s1", "must be distinct certificate identities ('s1' is already in clients)"),
    ("twin_identities", ("ems-ingest-ingest-1",), "ems-ingest-ingest-1",
     "must be distinct certificate identities ('ems-ingest-ingest-1' is already in ingest_identities)"),
    ("twin_identities", ("t0", "t0"), "t0", "must be distinct certificate identities ('t0' is already in twin_identities)"),
    ("ingest_group", "ems-ingest/x", "ems-ingest/x", "must be a DNS label"),
    ("dynsec_plugin", "mosquitto_dynamic_security.so", "mosquitto_dynamic_security.so", "must be an absolute path to a .so file, without spaces"),
    ("dynsec_plugin", "/usr/lib/x.so\nallow_anonymous true\n/y.so", "/usr/lib/x.so\nallow_anonymous true\n/y.so",
     "must be an absolute path to a .so file, without spaces"),
])
def test_broker_rejects_bad_identities_and_access_control_arguments(field: str, value: object, bad: object, allowed: str) -> None:
    """One CN is one username, one client id and one session: identities are plain labels, distinct across roles."""
    with pytest.raises(ComponentArgsError, match=rf"^broker: {field} {re.escape(allowed)} \(got {re.escape(repr(bad))}\)$"):
        MqttBroker("broker", BrokerArgs(**{**BROKER_ARGS, field: value}))  # type: ignore[arg-type]
    assert MOCKS.resources == []


def test_bridge_needs_a_gateway() -> None:
    with pytest.raises(ComponentArgsError, match=r"^bridge: gateways must list at least one RS-485 gateway \(got \(\)\)$"):
        EmsGateway("bridge", EmsGatewayArgs(namespace="ems", image="ghcr.io/x/agent:1", site="ems-bridge",
                                            broker_host="broker", tls_secret="t", storage_class="sc"))


TWIN_ARGS = dict(namespace="ems", image="ghcr.io/x/ingest:1", broker_host="broker.ems.svc.cluster.local",
                 mqtt_tls_secrets=("edge-ems-twin-api-twin-api-0-tls", "edge-ems-twin-api-twin-api-1-tls"),
                 server_tls_secret="twin-api-tls", tsdb_url="http://tsdb:9090")


def test_twin_api_rejects_zero_replicas() -> None:
    with pytest.raises(ComponentArgsError, match=r"^twin: replicas must be at least 1 \(got 0\)$"):
        TwinApi("twin", TwinApiArgs(**TWIN_ARGS, replicas=0))  # type: ignore[arg-type]
    assert MOCKS.resources == []


def test_twin_api_needs_one_certificate_per_replica() -> None:
    with pytest.raises(ComponentArgsError, match=r"^twin: mqtt_tls_secrets must hold one Secret per replica \(3\) \(got 2\)$"):
        TwinApi("twin", TwinApiArgs(**TWIN_ARGS, replicas=3))  # type: ignore[arg-type]
    assert MOCKS.resources == []


def test_ingest_needs_one_certificate_per_worker_up_to_the_maximum() -> None:
    with pytest.raises(ComponentArgsError, match=r"^ingest: tls_secrets must hold one Secret per worker up to max_replicas 3 "
                                                 r"\(got 2\)$"):
        IngestWorkers("ingest", IngestArgs(namespace="ems", image="ghcr.io/x/ingest:1", broker_host="broker", identity="ems-ingest",
                                           tls_secrets=("t0", "t1"), storage_class="sc", remote_write_url="http://tsdb",
                                           min_replicas=1, max_replicas=3))
    assert MOCKS.resources == []


def test_twin_api_config_is_checked_with_the_ingest_parser() -> None:
    with pytest.raises(ComponentArgsError, match=r"^twin: ingest\.toml tsdb\.remote_write_url must be an "
                                                 r"http:// or https:// URL with a host \(got 'ftp://tsdb/api/v1/write'\)$"):
        TwinApi("twin", TwinApiArgs(**{**TWIN_ARGS, "tsdb_url": "ftp://tsdb"}))  # type: ignore[arg-type]
    assert MOCKS.resources == []


def test_twin_api_children_and_outputs() -> None:
    got: list[object] = []

    def build():
        provider = k8s.Provider("k", render_yaml_to_directory="out/test")
        api = TwinApi("twin", TwinApiArgs(**TWIN_ARGS), opts=pulumi.ResourceOptions(providers=[provider]))  # type: ignore[arg-type]
        return pulumi.Output.all(api.service_name, api.statefulset_name).apply(got.append)

    run(build)
    assert got == [["twin-api", "twin-api"]]
    children = [r for r in MOCKS.resources if r.typ.startswith("kubernetes:") and r.typ != "pulumi:providers:kubernetes"]
    assert sorted(r.typ for r in children) == sorted([
        "kubernetes:core/v1:ServiceAccount", "kubernetes:core/v1:ConfigMap", "kubernetes:core/v1:Service",
        "kubernetes:core/v1:Service", "kubernetes:apps/v1:StatefulSet", "kubernetes:policy/v1:PodDisruptionBudget"])
    # The second Service is headless: the TSDB scrapes each replica's metrics port (the verifier's counters).
    [metrics_svc] = [r for r in MOCKS.of_type("kubernetes:core/v1:Service") if r.inputs["metadata"]["name"] == "twin-api-metrics"]
    assert metrics_svc.inputs["spec"]["clusterIP"] == "None" and metrics_svc.inputs["spec"]["ports"][0]["port"] == 9100
    # Parented: every child inherits the component's provider.
    assert all(r.provider and "pulumi:providers:kubernetes::k" in r.provider for r in children), [r.urn for r in children]
    [sts] = MOCKS.of_type("kubernetes:apps/v1:StatefulSet")
    [conf] = MOCKS.of_type("kubernetes:core/v1:ConfigMap")
    assert conf.inputs["data"]["ingest.toml"] == twin_api_toml(TWIN_ARGS["broker_host"], "http://tsdb:9090")
    pod = sts.inputs["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "ghcr.io/x/ingest:1"
    # Every replica's client certificate in one volume, a directory per pod; each replica names its own by path.
    [mqtt_tls] = [v for v in pod["volumes"] if v["name"] == "mqtt-tls"]
    assert [(src["secret"]["name"], [i["path"] for i in src["secret"]["items"]]) for src in mqtt_tls["projected"]["sources"]] == [
        (secret, [f"twin-api-{n}/ca.crt", f"twin-api-{n}/tls.crt", f"twin-api-{n}/tls.key"])
        for n, secret in enumerate(TWIN_ARGS["mqtt_tls_secrets"])]
    assert mqtt_tls["projected"]["defaultMode"] == 0o440
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "mqtt-tls"]
    assert mount == {"name": "mqtt-tls", "mountPath": "/etc/ems/mqtt-tls", "readOnly": True}    # whole: the kubelet updates it
    assert pod["containers"][0]["env"] == [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        *({"name": f"EMS_BROKER_{k}", "value": f"/etc/ems/mqtt-tls/$(POD_NAME)/{f}"} for k, f in
          (("CA", "ca.crt"), ("CERT", "tls.crt"), ("KEY", "tls.key")))]
    assert (sts.inputs["spec"]["replicas"], sts.inputs["spec"]["serviceName"]) == (2, "twin-api-metrics")   # the headless one


def test_operator_and_grafana_routes_exist_only_with_their_upstreams() -> None:
    from components.api_gateway import NginxPlan, Upstream, nginx_config
    from components.gateway_settings import GatewayAuthSettings

    conf = nginx_config(NginxPlan(auth=GatewayAuthSettings(), tsdb=Upstream("t", 9090), twin_api=Upstream("w", 8443, "w"),
                                  alertmanager=Upstream("am", 9093), grafana=Upstream("gf", 3000)))
    routes = {(role, up) for _, role, up in _locations(conf)}
    assert ("operator", "alertmanager") in routes and ("viewer", "grafana") in routes
    assert "proxy_set_header X-Ems-Grafana-Role $ems_grafana_role;" in conf

def test_gateway_declares_the_client_authentication_its_config_requires() -> None:
    from components.api_gateway import NginxPlan, Upstream, _client_auth, nginx_config
    from components.gateway_settings import GatewayAuthSettings
    from ems_contract.oidc import OidcSettings

    oidc = OidcSettings("https://idp/r", "ems", "https://idp/jwks", (("g", "viewer"),))
    for settings, annotation, verify in ((GatewayAuthSettings(client_certs="required"), "mtls-required", "optional"),
                                         (GatewayAuthSettings(), "mtls", "optional"),
                                         (GatewayAuthSettings(oidc=oidc), "mtls+oidc", "optional"),
                                         (GatewayAuthSettings(client_certs="off", oidc=oidc), "oidc", "off")):
        assert _client_auth(settings) == annotation
        conf = nginx_config(NginxPlan(auth=settings, tsdb=Upstream("t", 9090), twin_api=Upstream("w", 8443, "w")))
        assert f"ssl_verify_client {verify};" in conf
