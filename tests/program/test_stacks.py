"""Every stack file evaluated under Pulumi mocks; assertions on the resource graph."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from infra_mocks import STACKS, Evaluation, Registered, evaluate_stack, region_outputs_for_global

WORKLOAD_KINDS = ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet")
HARDENING = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "privileged": False}

_cache: dict[str, Evaluation] = {}


def stack(name: str) -> Evaluation:
    if name not in _cache:
        outputs = region_outputs_for_global() if name == "global" else None
        _cache[name] = evaluate_stack(name, stack_outputs=outputs)
    return _cache[name]


REGION_STACKS = [s for s in STACKS if s != "global"]


def workloads(ev: Evaluation) -> Iterator[Registered]:
    for typ in WORKLOAD_KINDS:
        yield from ev.of_type(typ)


def pod_labels(r: Registered) -> dict[str, str]:
    return r.inputs["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, Any], lbls: dict[str, str]) -> bool:
    return all(lbls.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


@pytest.mark.parametrize("name", STACKS)
def test_every_stack_evaluates(name: str) -> None:
    ev = stack(name)
    assert ev.resources, f"{name}: nothing registered"
    assert all(r.typ.split(":")[0] in ("aws", "kubernetes", "tls", "ems", "pulumi") for r in ev.resources)


@pytest.mark.parametrize("name", ["private-dc1", "local"])
def test_private_stacks_create_no_aws_resource_and_use_explicit_providers(name: str) -> None:
    ev = stack(name)
    aws = [r.urn for r in ev.resources if r.typ.startswith("aws:") or r.typ == "pulumi:providers:aws"]
    assert aws == [], f"{name}: AWS resources {aws}"
    k8s = [r for r in ev.resources if r.typ.startswith("kubernetes:")]
    assert k8s and all(r.provider and "pulumi:providers:kubernetes" in r.provider for r in k8s), \
        [r.urn for r in k8s if not r.provider]


@pytest.mark.parametrize("name", REGION_STACKS)
def test_no_external_service_on_1883_or_502(name: str) -> None:
    for svc in stack(name).of_type("kubernetes:core/v1:Service"):
        spec = svc.inputs["spec"]
        ports = {p["port"] for p in spec["ports"]}
        if spec.get("type") in ("LoadBalancer", "NodePort"):
            assert ports <= {8883, 443}, f"{svc.urn}: external ports {ports}"
        assert ports <= {1883, 8883, 502, 443, 9090, 9100, 6443, 53, 8443, 3000, 9093, 8444}, f"{svc.urn}: {ports}"


@pytest.mark.parametrize("name", REGION_STACKS)
def test_every_workload_pod_is_selected_by_a_non_default_network_policy(name: str) -> None:
    ev = stack(name)
    policies = ev.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
    by_ns: dict[str, list[dict[str, Any]]] = {}
    for p in policies:
        by_ns.setdefault(p.inputs["metadata"]["namespace"], []).append(p.inputs["spec"])
    ns = "ems-system"  # the default ems:namespace
    deny = [s for s in by_ns[ns] if s["podSelector"] == {} and s["policyTypes"] == ["Ingress", "Egress"] and s["ingress"] == [] and s["egress"] == []]
    assert deny, f"{name}: no default-deny policy in {ns}"
    for w in workloads(ev):
        lbls = pod_labels(w)
        specific = [s for s in by_ns[w.inputs["metadata"]["namespace"]] if s["podSelector"] and selects(s["podSelector"], lbls)]
        assert specific, f"{w.urn}: no NetworkPolicy selects pods {lbls}"
    assert "ems-system-edge-credentials" in by_ns, f"{name}: credentials namespace has no default deny"


@pytest.mark.parametrize("name", REGION_STACKS)
def test_latency_critical_workloads_require_interconnect_nodes(name: str) -> None:
    critical = [w for w in workloads(stack(name)) if pod_labels(w).get("ems.io/latency-critical") == "true"]
    assert critical, f"{name}: ems-gateway must be latency-critical"
    for w in critical:
        required = w.inputs["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        expr = required["nodeSelectorTerms"][0]["matchExpressions"][0]
        assert expr == {"key": "ems.io/pool", "operator": "In", "values": ["interconnect"]}, w.urn


@pytest.mark.parametrize("name", REGION_STACKS)
def test_tsdb_claims_storage_from_the_csi_class_on_nvme_nodes(name: str) -> None:
    ev = stack(name)
    [sc] = ev.of_type("kubernetes:storage.k8s.io/v1:StorageClass")
    assert sc.inputs["volumeBindingMode"] == "WaitForFirstConsumer" and sc.inputs["allowVolumeExpansion"] is True
    [tsdb] = [w for w in ev.of_type("kubernetes:apps/v1:StatefulSet") if w.inputs["metadata"]["name"] == "tsdb"]
    [claim] = tsdb.inputs["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == sc.inputs["metadata"]["name"]
    pod = tsdb.inputs["spec"]["template"]["spec"]
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["nvme"]
    conf = [c for c in ev.of_type("kubernetes:core/v1:ConfigMap") if c.inputs["metadata"]["name"] == "tsdb-config"][0]
    assert "out_of_order_time_window:" in conf.inputs["data"]["prometheus.yml"]
    assert "--web.enable-remote-write-receiver" in pod["containers"][0]["args"]


def test_aws_storage_class_is_encrypted_gp3_on_the_ebs_csi_driver() -> None:
    [sc] = stack("aws-us-east-1").of_type("kubernetes:storage.k8s.io/v1:StorageClass")
    assert sc.inputs["provisioner"] == "ebs.csi.aws.com"
    assert sc.inputs["parameters"]["type"] == "gp3" and sc.inputs["parameters"]["encrypted"] == "true"
    [sc] = stack("private-dc1").of_type("kubernetes:storage.k8s.io/v1:StorageClass")
    assert sc.inputs["provisioner"] == "csi.trident.netapp.io"


@pytest.mark.parametrize("name", REGION_STACKS)
def test_every_container_is_hardened(name: str) -> None:
    for w in workloads(stack(name)):
        pod = w.inputs["spec"]["template"]["spec"]
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, w.urn
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert {k: sc[k] for k in HARDENING} == HARDENING, f"{w.urn}/{c['name']}"
            assert sc["capabilities"] == {"drop": ["ALL"]}, w.urn
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]), w.urn
            assert ":" in c["image"].rsplit("/", 1)[-1] and not c["image"].endswith(":latest"), c["image"]
        for v in pod.get("volumes", []):
            if "secret" in v:
                assert v["secret"]["defaultMode"] <= 0o440, w.urn
        token = pod["automountServiceAccountToken"]
        annotated = (w.inputs["spec"]["template"]["metadata"].get("annotations") or {}).get("ems.io/needs-api-token") == "true"
        assert token is annotated, w.urn


@pytest.mark.parametrize("name", REGION_STACKS)
def test_service_accounts_mount_tokens_only_when_annotated(name: str) -> None:
    for sa in stack(name).of_type("kubernetes:core/v1:ServiceAccount"):
        annotated = (sa.inputs["metadata"].get("annotations") or {}).get("ems.io/needs-api-token") == "true"
        assert sa.inputs["automountServiceAccountToken"] is annotated, sa.urn


@pytest.mark.parametrize("name", REGION_STACKS)
def test_rbac_has_no_wildcards(name: str) -> None:
    ev = stack(name)
    for typ in ("kubernetes:rbac.authorization.k8s.io/v1:Role", "kubernetes:rbac.authorization.k8s.io/v1:ClusterRole"):
        for role in ev.of_type(typ):
            for rule in role.inputs["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[field], f"{role.urn}: {field} {rule[field]}"
            assert all("secrets" not in rule["resources"] for rule in role.inputs["rules"]), role.urn


@pytest.mark.parametrize("name", REGION_STACKS)
def test_ingest_tier_sysctls_and_thermal_hpa(name: str) -> None:
    ev = stack(name)
    [ingest] = [d for d in ev.of_type("kubernetes:apps/v1:StatefulSet") if d.inputs["metadata"]["name"] == "ingest"]
    sysctls = {s["name"]: s["value"] for s in ingest.inputs["spec"]["template"]["spec"]["securityContext"]["sysctls"]}
    assert sysctls == {"net.ipv4.tcp_fin_timeout": "15", "net.core.somaxconn": "1024"}
    assert not any("tcp_low_latency" in json.dumps(r.inputs) for r in ev.resources)
    [hpa] = ev.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")
    assert hpa.inputs["metadata"]["labels"]["ems.io/thermal-asset"] == "true"
    assert hpa.inputs["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    [metric] = hpa.inputs["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "ems_ingest_messages_per_second"
    assert metric["pods"]["target"]["type"] == "AverageValue"


def test_hpa_target_and_window_come_from_config() -> None:
    ev = evaluate_stack("local", {"ems:ingestTargetMessagesPerSecond": 1234, "ems:ingestScaleDownStabilizationSeconds": 900})
    [hpa] = ev.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")
    assert hpa.inputs["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 900
    assert hpa.inputs["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "1234"


@pytest.mark.parametrize("name", REGION_STACKS)
def test_one_client_certificate_per_edge_site_and_no_key_in_plain_outputs(name: str) -> None:
    ev = stack(name)
    sites = json.loads(evaluate_config(name)["ems:edgeSites"])
    secrets = [s for s in ev.of_type("kubernetes:core/v1:Secret") if s.inputs["metadata"]["namespace"] == "ems-system-edge-credentials"]
    assert sorted(s.inputs["metadata"]["labels"]["ems.io/edge-site"] for s in secrets) == sorted(sites)
    assert all(s.inputs["type"] == "kubernetes.io/tls" for s in secrets)
    cas = [c for c in ev.of_type("tls:index/selfSignedCert:SelfSignedCert")]
    assert len(cas) == 1 and cas[0].inputs["isCaCertificate"] is True
    for cert in ev.of_type("tls:index/locallySignedCert:LocallySignedCert"):
        assert cert.inputs["validityPeriodHours"] <= 398 * 24 and not cert.inputs.get("isCaCertificate")
    for key, value in ev.outputs.items():
        assert "PRIVATE KEY" not in json.dumps(value, default=str) or key in ev.secret_outputs, key


def evaluate_config(name: str) -> dict[str, str]:
    from infra_mocks import stack_config

    return stack_config(name)


def test_aws_cluster_control_plane_settings() -> None:
    ev = stack("aws-us-east-1")
    [cluster] = ev.of_type("aws:eks/cluster:Cluster")
    vpc = cluster.inputs["vpcConfig"]
    assert vpc["endpointPrivateAccess"] is True
    assert "0.0.0.0/0" not in vpc.get("publicAccessCidrs", [])
    assert cluster.inputs["enabledClusterLogTypes"] == ["api", "audit", "authenticator"]
    assert cluster.inputs["encryptionConfig"]["resources"] == ["secrets"]
    [key] = ev.of_type("aws:kms/key:Key")
    assert key.inputs["enableKeyRotation"] is True
    assert float(cluster.inputs["version"]) >= 1.26
    groups = {g.inputs["labels"]["ems.io/pool"]: g for g in ev.of_type("aws:eks/nodeGroup:NodeGroup")}
    assert {"interconnect", "nvme"} <= set(groups)
    assert groups["interconnect"].inputs["taints"][0]["effect"] == "NO_SCHEDULE"
    for lt in ev.of_type("aws:ec2/launchTemplate:LaunchTemplate"):
        import base64
        assert "allowedUnsafeSysctls" in base64.b64decode(lt.inputs["userData"]).decode()
        assert "net.core.somaxconn" in base64.b64decode(lt.inputs["userData"]).decode()
    addons = {a.inputs["addonName"]: a for a in ev.of_type("aws:eks/addon:Addon")}
    assert addons["aws-ebs-csi-driver"].inputs["serviceAccountRoleArn"]
    assert json.loads(addons["vpc-cni"].inputs["configurationValues"]) == {"enableNetworkPolicy": "true"}
    subnets = ev.of_type("aws:ec2/subnet:Subnet")
    assert cluster.inputs["name"] == "ems-us-east-1"
    assert all(s.inputs["tags"].get("kubernetes.io/cluster/ems-us-east-1") == "shared" for s in subnets)
    assert len({s.inputs["availabilityZone"] for s in subnets if "private" in s.name}) >= 2
    [provider] = [r for r in ev.resources if r.typ == "pulumi:providers:kubernetes"]
    assert "kubeconfig" in ev.secret_outputs


def test_region_stack_binds_broker_and_gateway_to_its_nlb() -> None:
    ev = stack("aws-eu-west-1")
    bindings = ev.of_type("kubernetes:elbv2.k8s.aws/v1beta1:TargetGroupBinding")
    assert sorted(b.inputs["spec"]["serviceRef"]["port"] for b in bindings) == [443, 8883]
    assert sorted(l.inputs["port"] for l in ev.of_type("aws:lb/listener:Listener")) == [443, 8883]
    [nlb] = ev.of_type("aws:lb/loadBalancer:LoadBalancer")
    assert nlb.inputs["loadBalancerType"] == "network"
    assert {"nlb_arn", "nlb_dns_name", "nlb_zone_id", "region"} <= set(ev.outputs)


def test_global_stack_joins_every_region() -> None:
    ev = stack("global")
    refs = ev.of_type("pulumi:pulumi:StackReference")
    assert sorted(r.inputs["name"] for r in refs) == ["organization/ems/aws-eu-west-1", "organization/ems/aws-us-east-1"]
    listeners = ev.of_type("aws:globalaccelerator/listener:Listener")
    assert sorted(l.inputs["portRanges"][0]["fromPort"] for l in listeners) == [443, 8883]
    groups = ev.of_type("aws:globalaccelerator/endpointGroup:EndpointGroup")
    assert len(groups) == 4
    assert {g.inputs["endpointGroupRegion"] for g in groups} == {"us-east-1", "eu-west-1"}
    assert all(g.inputs["healthCheckProtocol"] == "TCP" for g in groups)
    regions = region_outputs_for_global()
    assert {g.inputs["endpointConfigurations"][0]["endpointId"] for g in groups} == {o["nlb_arn"] for o in regions.values()}
    assert len({o["nlb_arn"] for o in regions.values()}) == 2
    [provider] = [r for r in ev.resources if r.typ == "pulumi:providers:aws"]
    assert provider.inputs["region"] == "us-west-2"
    records = ev.of_type("aws:route53/record:Record")
    assert len(records) == 4 and all(r.inputs["healthCheckId"] for r in records)


def test_bad_stack_config_fails_with_one_clean_line() -> None:
    import pulumi

    with pytest.raises(pulumi.RunError, match=r"^ems:kubernetesVersion: 1\.24 is below the supported minimum 1\.26$"):
        evaluate_stack("aws-us-east-1", {"ems:kubernetesVersion": "1.24"})


def test_bring_your_own_network_creates_no_vpc_and_admits_the_real_vpc_cidr() -> None:
    ev = evaluate_stack("aws-eu-west-1", {
        "ems:vpcId": "vpc-0a1b2c3d4e5f60718",
        "ems:privateSubnetIds": ["subnet-0aaa1111", "subnet-0bbb2222"],
        "ems:publicSubnetIds": ["subnet-0ccc3333", "subnet-0ddd4444"],
    })
    assert ev.of_type("aws:ec2/vpc:Vpc") == [] and ev.of_type("aws:ec2/subnet:Subnet") == []
    [cluster] = ev.of_type("aws:eks/cluster:Cluster")
    assert cluster.inputs["vpcConfig"]["subnetIds"] == ["subnet-0aaa1111", "subnet-0bbb2222"]
    [nlb] = ev.of_type("aws:lb/loadBalancer:LoadBalancer")
    assert nlb.inputs["subnets"] == ["subnet-0ccc3333", "subnet-0ddd4444"]
    rules = ev.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
    assert {r.inputs["cidrIpv4"] for r in rules} == {"10.99.0.0/16"}


def test_public_endpoint_is_off_without_cidrs() -> None:
    ev = evaluate_stack("aws-eu-west-1", {"ems:publicEndpointCidrs": None})
    [cluster] = ev.of_type("aws:eks/cluster:Cluster")
    assert cluster.inputs["vpcConfig"]["endpointPublicAccess"] is False
    assert "publicAccessCidrs" not in cluster.inputs["vpcConfig"]


def test_aws_tags_reach_every_resource_through_the_provider() -> None:
    ev = stack("aws-us-east-1")
    [provider] = [r for r in ev.resources if r.typ == "pulumi:providers:aws"]
    tags = json.loads(provider.inputs["defaultTags"])["tags"] if isinstance(provider.inputs["defaultTags"], str) else provider.inputs["defaultTags"]["tags"]
    assert tags == {"owner": "ems-platform", "cost-centre": "grid-ops", "ems.io/stack": "aws-us-east-1"}
    assert all(r.provider and "pulumi:providers:aws::aws" in r.provider for r in ev.resources if r.typ.startswith("aws:"))


@pytest.mark.parametrize("name", REGION_STACKS)
def test_hpa_scaled_workloads_leave_replicas_to_the_hpa(name: str) -> None:
    ev = stack(name)
    targets = {h.inputs["spec"]["scaleTargetRef"]["name"] for h in ev.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")}
    for w in workloads(ev):
        if w.inputs["metadata"]["name"] in targets:
            assert "replicas" not in w.inputs["spec"], w.urn


def _rules(ev: Evaluation, direction: str) -> Iterator[tuple[str, dict[str, Any], int]]:
    for p in ev.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy"):
        for rule in p.inputs["spec"].get(direction, []):
            for port in rule.get("ports", []):
                yield p.inputs["metadata"]["name"], rule, port["port"]


def test_modbus_and_plain_mqtt_stay_inside() -> None:
    ev = stack("private-dc1")
    modbus = [(name, rule) for name, rule, port in _rules(ev, "egress") if port == 502]
    assert [name for name, _ in modbus] == ["ems-gateway", "ems-gateway"]
    assert sorted(r["to"][0]["ipBlock"]["cidr"] for _, r in modbus) == ["10.60.4.21/32", "10.60.4.22/32"]
    assert not [name for name, _, port in _rules(ev, "ingress") if port == 502]
    # Plain MQTT listens on the broker pod's loopback (operators' kubectl exec/port-forward): no flow to allow.
    assert [(name, port) for d in ("ingress", "egress") for name, _, port in _rules(ev, d) if port == 1883] == []
    mqtts = {name: rule for name, rule, port in _rules(ev, "egress") if port == 8883}
    assert set(mqtts) == {"ingest", "ems-gateway", "twin-api", "northbound"}   # northbound: ems:northbound is set
    [broker] = [w for w in workloads(ev) if w.inputs["metadata"]["name"] == "broker"]
    for rule in mqtts.values():
        [peer] = rule["to"]
        assert set(peer) == {"podSelector"} and selects(peer["podSelector"], pod_labels(broker)), rule
    # The broker offers only 8883 to the network: Services, container ports and the kubelet's probes.
    services = [s for s in ev.of_type("kubernetes:core/v1:Service") if s.inputs["metadata"]["name"].startswith("broker")]
    assert len(services) == 3 and {p["port"] for s in services for p in s.inputs["spec"]["ports"]} == {8883}
    [mosquitto] = broker.inputs["spec"]["template"]["spec"]["containers"]
    assert [p["containerPort"] for p in mosquitto["ports"]] == [8883]
    assert mosquitto["readinessProbe"]["tcpSocket"] == mosquitto["livenessProbe"]["tcpSocket"] == {"port": 8883}
    [conf] = [c.inputs["data"]["mosquitto.conf"] for c in ev.of_type("kubernetes:core/v1:ConfigMap")
              if c.inputs["metadata"]["name"] == "broker-config"]
    assert [line for line in conf.splitlines() if line.startswith("listener ")] == ["listener 8883", "listener 1883 127.0.0.1"]


@pytest.mark.parametrize("name", REGION_STACKS)
def test_ingest_consumes_over_mtls_with_its_own_certificate_identity(name: str) -> None:
    import tomllib

    from components.k8s_common import content_digest
    from ingest.config import parse_config

    ev = stack(name)
    config = evaluate_config(name)
    ns = config.get("ems:namespace", "ems-system")
    identity = "ems-ingest"  # identities do not follow the namespace (components/platform.py IDENTITY_PREFIX)
    # One certificate per worker up to the HPA's maximum: CN <identity>-ingest-<n> for pod ingest-<n>.
    [hpa] = [h for h in ev.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler") if h.inputs["metadata"]["name"] == "ingest"]
    workers = [f"{identity}-ingest-{n}" for n in range(int(hpa.inputs["spec"]["maxReplicas"]))]
    assert len(workers) == int(config.get("ems:ingestMaxReplicas", 10))
    [ingest] = [d for d in ev.of_type("kubernetes:apps/v1:StatefulSet") if d.inputs["metadata"]["name"] == "ingest"]
    pod = ingest.inputs["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["projected"] == {"defaultMode": 0o440, "sources": [
        {"secret": {"name": f"edge-{cn}-tls", "items": [{"key": f, "path": f"ingest-{n}/{f}"} for f in ("ca.crt", "tls.crt", "tls.key")]}}
        for n, cn in enumerate(workers)]}
    # The volume is mounted whole (the kubelet updates it in place on renewal); each pod names its own directory's
    # files, and sends its CN as its client id (the broker would use it anyway).
    [c] = pod["containers"]
    [mount] = [m for m in c["volumeMounts"] if m["name"] == "tls"]
    assert mount == {"name": "tls", "mountPath": "/etc/ems/tls", "readOnly": True}
    assert c["env"] == [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "EMS_BROKER_CLIENT_ID", "value": f"{identity}-$(POD_NAME)"},
                        {"name": "EMS_BROKER_CA", "value": "/etc/ems/tls/$(POD_NAME)/ca.crt"},
                        {"name": "EMS_BROKER_CERT", "value": "/etc/ems/tls/$(POD_NAME)/tls.crt"},
                        {"name": "EMS_BROKER_KEY", "value": "/etc/ems/tls/$(POD_NAME)/tls.key"}]
    [conf] = [c for c in ev.of_type("kubernetes:core/v1:ConfigMap") if c.inputs["metadata"]["name"] == "ingest-config"]
    ingest_config = parse_config(tomllib.loads(conf.inputs["data"]["ingest.toml"]), check_files=False)
    broker = ingest_config.broker
    assert list(ingest_config.state.workers) == list(workers)     # the first of them counts the group's packet loss
    assert (broker.tls, broker.port, broker.host) == (True, 8883, f"broker.{ns}.svc.cluster.local")
    assert {str(broker.ca), str(broker.cert), str(broker.key)} == {f"/etc/ems/tls/{f}" for f in ("ca.crt", "tls.crt", "tls.key")}
    # The certificates: CN = the worker's identity, client auth, kubernetes.io/tls Secrets in the workload namespace.
    for cn in workers:
        [secret] = [s for s in ev.of_type("kubernetes:core/v1:Secret") if s.inputs["metadata"]["name"] == f"edge-{cn}-tls"]
        assert secret.inputs["type"] == "kubernetes.io/tls" and secret.inputs["metadata"]["namespace"] == ns
        [csr] = [c for c in ev.of_type("tls:index/certRequest:CertRequest") if c.inputs["subject"]["commonName"] == cn]
        [cert] = [c for c in ev.of_type("tls:index/locallySignedCert:LocallySignedCert") if c.name == csr.name.replace("-csr", "-cert")]
        assert "client_auth" in cert.inputs["allowedUses"] and "server_auth" not in cert.inputs["allowedUses"]
    assert not [c for c in ev.of_type("tls:index/certRequest:CertRequest") if c.inputs["subject"]["commonName"] == identity]
    # The broker's server certificate names the host the ingest connects to (hostname verification).
    [server_csr] = [c for c in ev.of_type("tls:index/certRequest:CertRequest") if c.name.endswith("-pki-broker-csr")]
    assert broker.host in server_csr.inputs["dnsNames"]
    [data] = [c.inputs["data"] for c in ev.of_type("kubernetes:core/v1:ConfigMap") if c.inputs["metadata"]["name"] == "broker-config"]
    # 8883: the certificate's CN is username and client id; dynamic security from the stack's identities; only the
    # ingest workers may join the group their ingest.toml names.
    assert "\nuse_identity_as_username true\n" in data["mosquitto.conf"]
    assert "\nuse_username_as_clientid true\n" in data["mosquitto.conf"].split("listener 1883")[0].split("listener 8883")[1]
    assert "\nplugin /usr/lib/mosquitto_dynamic_security.so\nplugin_opt_config_file /mosquitto/config/dynamic-security.json\n" \
        in data["mosquitto.conf"]
    dynsec = json.loads(data["dynamic-security.json"])
    roles = {r["rolename"]: r["acls"] for r in dynsec["roles"]}
    grants = {c["username"]: [(a["acltype"], a["topic"]) for r in c["roles"] for a in roles[r["rolename"]]] for c in dynsec["clients"]}
    sites = json.loads(config["ems:edgeSites"])
    bridge = ["ems-bridge"] if config.get("ems:modbusGateways") else []
    twins = [f"ems-twin-api-twin-api-{n}" for n in range(2)]
    # The north-bound identity exists (and may command its sites) only where ems:northbound is enabled.
    nb_config = json.loads(config["ems:northbound"]) if "ems:northbound" in config else {"enabled": False}
    northbound = ["ems-northbound"] if nb_config.get("enabled", True) else []
    assert sorted(grants) == sorted([*sites, *bridge, *workers, *twins, *northbound])
    # Every subtree denies publishing a command to itself (the deny comes first): only the north-bound client commands.
    own = lambda cn: [("publishClientSend", f"ems/v1/{cn}/command")] + [  # noqa: E731
        (kind, f"ems/v1/{cn}/#") for kind in ("publishClientSend", "publishClientReceive", "subscribePattern")]
    denies = [(a["topic"], a["priority"]) for r in dynsec["roles"] for a in r["acls"] if not a["allow"]]
    assert sorted(denies) == sorted((f"ems/v1/{cn}/command", 1) for cn in (*sites, *bridge, *workers, *northbound))
    for cn in northbound:
        assert grants[cn] == [*own(cn), ("subscribeLiteral", "ems/v1/+/command-result")] + [
            grant for site in nb_config.get("sites", sites) for grant in (
                ("publishClientSend", f"ems/v1/{site}/command"), ("subscribeLiteral", f"ems/v1/{site}/command-result"),
                ("publishClientReceive", f"ems/v1/{site}/command-result"))]
    assert all(grants[cn] == own(cn) for cn in (*sites, *bridge))
    assert all(grants[cn] == [*own(cn), ("subscribeLiteral", f"$share/{broker.group}/ems/v1/+/telemetry"),
                              ("publishClientReceive", "ems/v1/+/telemetry"), ("publishClientSend", "ems/v1/deadletter/#")]
               + [(kind, f"ems/v1/{peer}/seen") for peer in workers for kind in ("subscribeLiteral", "publishClientReceive")]
               for cn in workers)
    assert all(grants[cn] == [("subscribeLiteral", "ems/v1/+/twin/+"), ("publishClientReceive", "ems/v1/+/twin/+")] for cn in twins)
    assert dynsec["defaultACLAccess"] == {"publishClientSend": False, "publishClientReceive": False, "subscribe": False, "unsubscribe": True}
    [sts] = [w for w in ev.of_type("kubernetes:apps/v1:StatefulSet") if w.inputs["metadata"]["name"] == "broker"]
    assert sts.inputs["spec"]["template"]["metadata"]["annotations"]["ems.io/config-sha256"] == content_digest(data)
    # 1883 (anonymous tools): loopback only, read-only, its own ACL file.
    assert "listener 1883 127.0.0.1\nallow_anonymous true\nacl_file /mosquitto/config/acl-plain\n" in data["mosquitto.conf"]
    assert [line for line in data["acl-plain"].splitlines() if not line.startswith("#")] == ["topic read ems/v1/#"]


@pytest.mark.parametrize("site", ["ems-ingest", "ems-ingest-ingest-2", "ems-ingest-ingest-99", "ems-bridge", "ems-twin-api",
                                  "ems-twin-api-twin-api-0", "ems-northbound", "ems-northbound-1", "deadletter",
                                  "ems-api-gateway"])
def test_reserved_identities_are_not_edge_sites(site: str) -> None:
    with pytest.raises(Exception, match=rf"settings\.edge_sites .*\(got '{site}'\)"):
        evaluate_stack("local", {"ems:edgeSites": json.dumps(["sub-01", site])})


def test_without_gateways_there_is_no_ems_gateway() -> None:
    ev = evaluate_stack("local", {"ems:modbusGateways": None})
    names = {r.inputs["metadata"]["name"] for r in ev.resources if r.typ.startswith("kubernetes:") and "metadata" in r.inputs}
    assert "ems-gateway" not in names and "edge-ems-bridge-tls" not in names
    [dynsec] = [json.loads(c.inputs["data"]["dynamic-security.json"]) for c in ev.of_type("kubernetes:core/v1:ConfigMap")
                if c.inputs["metadata"]["name"] == "broker-config"]
    assert [c["username"] for c in dynsec["clients"]] == ["sub-07", "sub-12", "ems-ingest-ingest-0", "ems-ingest-ingest-1",
                                                          "ems-ingest-ingest-2", "ems-twin-api-twin-api-0", "ems-twin-api-twin-api-1"]
    assert not [r for r in ev.resources if r.typ == "ems:workloads:EmsGateway"]


def test_regions_can_share_one_ca() -> None:
    from infra_mocks import make_ca_pem

    pem = make_ca_pem()
    ev = evaluate_stack("aws-eu-west-1", {"ems:caCertificate": pem, "ems:caPrivateKey": "-----BEGIN PRIVATE KEY-----shared"},
                        secret_keys=("ems:caPrivateKey",))
    assert ev.of_type("tls:index/selfSignedCert:SelfSignedCert") == []
    certs = ev.of_type("tls:index/locallySignedCert:LocallySignedCert")
    assert certs and all(c.inputs["caCertPem"] == pem for c in certs)
    assert ev.outputs["ca_bundle_pem"] == pem


def test_additional_cas_are_trusted_by_every_verifier_and_roll_the_processes_that_read_them_at_start() -> None:
    import base64

    from infra_mocks import make_ca_pem

    signing, other = make_ca_pem(), make_ca_pem()
    shared = {"ems:caCertificate": signing, "ems:caPrivateKey": "-----BEGIN PRIVATE KEY-----shared"}
    alone = evaluate_stack("aws-eu-west-1", shared, secret_keys=("ems:caPrivateKey",))
    both = evaluate_stack("aws-eu-west-1", {**shared, "ems:additionalCaCertificates": json.dumps([other])},
                          secret_keys=("ems:caPrivateKey",))
    bundle = signing.strip() + "\n" + other.strip() + "\n"
    assert both.outputs["ca_bundle_pem"] == bundle and alone.outputs["ca_bundle_pem"] == signing
    # Every certificate Secret (servers, sites, in-cluster clients, the gateway's client) carries the bundle as ca.crt;
    # only the signing CA signs.
    tls_data = {x.inputs["metadata"]["name"]: x.inputs["stringData"]["value"]      # secret: the key is in it
                for x in both.of_type("kubernetes:core/v1:Secret") if x.inputs.get("type") == "kubernetes.io/tls"}
    assert len(tls_data) > 10 and "api-gateway-client-tls" in tls_data and "edge-sub-eu-01-tls" in tls_data
    assert [name for name, data in tls_data.items() if data["ca.crt"] != bundle] == []
    assert all(c.inputs["caCertPem"] == signing for c in both.of_type("tls:index/locallySignedCert:LocallySignedCert"))
    [api_service] = both.of_type("kubernetes:apiregistration.k8s.io/v1:APIService")
    assert base64.b64decode(api_service.inputs["spec"]["caBundle"]).decode() == bundle
    # Mosquitto and nginx read cafile / ssl_client_certificate only at start: the bundle is in their pod templates'
    # tls annotation, so changing it rolls them; the ingest and twin API reload it in place and are not rolled.
    def annotations(ev, kind: str, name: str) -> dict:
        return _named(ev, kind, name).inputs["spec"]["template"]["metadata"]["annotations"]
    for kind, name in (("kubernetes:apps/v1:StatefulSet", "broker"), ("kubernetes:apps/v1:Deployment", "api-gateway")):
        before, after = annotations(alone, kind, name)["ems.io/tls-sha256"], annotations(both, kind, name)["ems.io/tls-sha256"]
        assert len(before) == 64 and before != after, name
    for name in ("ingest", "twin-api"):
        assert "ems.io/tls-sha256" not in annotations(both, "kubernetes:apps/v1:StatefulSet", name)


def test_a_plain_text_secret_is_rejected() -> None:
    import pulumi

    with pytest.raises(pulumi.RunError, match=r"^ems:kubeconfig: \(hidden\) must be stored as a secret: pulumi config set --secret ems:kubeconfig$"):
        evaluate_stack("private-dc1", {"ems:kubeconfig": "apiVersion: v1"})


def _named(ev: Evaluation, typ: str, name: str) -> Registered:
    [found] = [r for r in ev.of_type(typ) if r.inputs["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("name", REGION_STACKS)
def test_twin_api_is_deployed_behind_the_gateway_over_tls(name: str) -> None:
    import re
    import tomllib

    from ingest.config import parse_config

    ev, config = stack(name), evaluate_config(name)
    ns = config.get("ems:namespace", "ems-system")
    host, identity = f"twin-api.{ns}.svc.cluster.local", "ems-twin-api"
    replicas = [f"{identity}-twin-api-{n}" for n in range(2)]
    # A StatefulSet (a stable ordinal, hence its own client certificate, per replica): the ingest image running
    # `ems-ingest twin-api`, hardened, two replicas, its own SA without a token, no volume claim.
    deploy = _named(ev, "kubernetes:apps/v1:StatefulSet", "twin-api")
    assert "volumeClaimTemplates" not in deploy.inputs["spec"] and deploy.inputs["spec"]["serviceName"] == "twin-api-metrics"
    assert not [d for d in ev.of_type("kubernetes:apps/v1:Deployment") if d.inputs["metadata"]["name"] == "twin-api"]
    [ingest] = [w for w in ev.of_type("kubernetes:apps/v1:StatefulSet") if w.inputs["metadata"]["name"] == "ingest"]
    pod = deploy.inputs["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["image"] == ingest.inputs["spec"]["template"]["spec"]["containers"][0]["image"]
    assert c["args"] == ["twin-api", "--config", "/etc/ems/twin-api/ingest.toml"] and "command" not in c
    assert c["ports"] == [{"name": "https", "containerPort": 8443, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]
    assert {k: c["securityContext"][k] for k in HARDENING} == HARDENING and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"])
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8443, "scheme": "HTTPS"}
    assert pod["automountServiceAccountToken"] is False and deploy.inputs["spec"]["replicas"] == 2
    sa = _named(ev, "kubernetes:core/v1:ServiceAccount", "twin-api")
    assert sa.inputs["automountServiceAccountToken"] is False
    # Mounts: config read-only, the replica's own broker client identity (its pod's directory of a projected volume)
    # and the server certificate as 0440 Secrets, /tmp writable.
    mounts = {m["mountPath"]: (m["name"], m["readOnly"], m.get("subPathExpr")) for m in c["volumeMounts"]}
    assert mounts == {"/etc/ems/twin-api": ("config", True, None), "/etc/ems/mqtt-tls": ("mqtt-tls", True, None),
                      "/etc/ems/server-tls": ("server-tls", True, None), "/tmp": ("tmp", False, None)}
    assert c["env"] == [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        *({"name": f"EMS_BROKER_{k}", "value": f"/etc/ems/mqtt-tls/$(POD_NAME)/{f}"}
                          for k, f in (("CA", "ca.crt"), ("CERT", "tls.crt"), ("KEY", "tls.key")))]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["mqtt-tls"]["projected"] == {"defaultMode": 0o440, "sources": [
        {"secret": {"name": f"edge-{cn}-tls", "items": [{"key": f, "path": f"twin-api-{n}/{f}"} for f in ("ca.crt", "tls.crt", "tls.key")]}}
        for n, cn in enumerate(replicas)]}
    assert volumes["server-tls"]["secret"] == {"secretName": "twin-api-tls", "defaultMode": 0o440}
    pdb = _named(ev, "kubernetes:policy/v1:PodDisruptionBudget", "twin-api")
    assert pdb.inputs["spec"]["selector"]["matchLabels"] == deploy.inputs["spec"]["selector"]["matchLabels"]
    # Its config, read back with the ingest's own parser: mTLS to the broker, HTTPS on 8443 with the mounted files.
    conf = _named(ev, "kubernetes:core/v1:ConfigMap", "twin-api-config")
    parsed = parse_config(tomllib.loads(conf.inputs["data"]["ingest.toml"]), check_files=False)
    assert (parsed.broker.tls, parsed.broker.port, parsed.broker.host) == (True, 8883, f"broker.{ns}.svc.cluster.local")
    assert str(parsed.broker.cert) == "/etc/ems/mqtt-tls/tls.crt" and str(parsed.broker.ca) == "/etc/ems/mqtt-tls/ca.crt"
    assert parsed.twin_api is not None and parsed.twin_api.port == 8443
    assert (str(parsed.twin_api.cert), str(parsed.twin_api.key)) == ("/etc/ems/server-tls/tls.crt", "/etc/ems/server-tls/tls.key")
    assert parsed.tsdb.query_url == f"http://tsdb.{ns}.svc.cluster.local:9090"
    # Certificates: a client identity (client_auth) and a server certificate naming the host Envoy connects to.
    for cn in replicas:
        [client_csr] = [r for r in ev.of_type("tls:index/certRequest:CertRequest") if r.inputs["subject"]["commonName"] == cn]
        [client_cert] = [r for r in ev.of_type("tls:index/locallySignedCert:LocallySignedCert")
                         if r.name == client_csr.name.replace("-csr", "-cert")]
        assert "client_auth" in client_cert.inputs["allowedUses"] and "server_auth" not in client_cert.inputs["allowedUses"]
    [server_csr] = [r for r in ev.of_type("tls:index/certRequest:CertRequest") if r.name.endswith("-pki-twin-api-csr")]
    assert host in server_csr.inputs["dnsNames"]
    [server_cert] = [r for r in ev.of_type("tls:index/locallySignedCert:LocallySignedCert") if r.name == server_csr.name.replace("-csr", "-cert")]
    assert "server_auth" in server_cert.inputs["allowedUses"]
    assert _named(ev, "kubernetes:core/v1:Secret", "twin-api-tls").inputs["type"] == "kubernetes.io/tls"
    # The Service: ClusterIP only, 8443 only (metrics are scraped per replica through twin-api-metrics), selecting the pods.
    svc = _named(ev, "kubernetes:core/v1:Service", "twin-api")
    assert svc.inputs["spec"]["type"] == "ClusterIP" and [p["port"] for p in svc.inputs["spec"]["ports"]] == [8443]
    assert selects({"matchLabels": svc.inputs["spec"]["selector"]}, pod_labels(deploy))
    # The gateway routes the twin paths (and nothing else) to it, and asks its verifier about every caller, over TLS
    # that verifies the CA and the name.
    nginx = _named(ev, "kubernetes:core/v1:ConfigMap", "api-gateway-config").inputs["data"]["nginx.conf"]
    locations = re.findall(r"location ~ \"([^\"]+)\" \{.*?proxy_pass \w+://ems_(\w+);", nginx, re.S)

    def target(path: str) -> str | None:
        found = [up for regex, up in locations if re.search(regex, path)]
        return found[0] if found else ("direct" if path == "/healthz" and "location = /healthz" in nginx else None)
    assert [target(p) for p in ("/v1/assets/sub-07/tx1", "/v1/assets/sub-07", "/v1/query", "/api/v1/query", "/healthz")] == \
        ["twin_api", "twin_api", "twin_api", "tsdb", "direct"]
    assert [target(p) for p in ("/v1/assets", "/v1/assets/a/b/c", "/v1/admin", "/api/v1/write", "/v1/authz")] == [None] * 5
    assert f"upstream ems_twin_api {{\n        server {host}:8443 max_fails=0;" in nginx
    assert "proxy_pass https://ems_twin_api/v1/authz;" in nginx
    assert f"proxy_ssl_name {host};" in nginx and "proxy_ssl_trusted_certificate /etc/nginx/tls/ca.crt;" in nginx
    assert parsed.twin_api.auth is not None          # the twin API serves the verifier the gateway asks
    gateway = _named(ev, "kubernetes:apps/v1:Deployment", "api-gateway")
    gw_volumes = {v["name"]: v for v in gateway.inputs["spec"]["template"]["spec"]["volumes"]}
    assert gw_volumes["tls"]["secret"]["secretName"] == "api-gateway-tls"    # its Secret carries ca.crt (components/pki.py)
    # The gateway presents its own client certificate (CN ems-api-gateway, client auth only) to the twin API, which
    # serves nobody else: no in-cluster client can go around the gateway and set the identity headers itself.
    assert gw_volumes["upstream-tls"]["secret"]["secretName"] == "api-gateway-client-tls"
    [gw_container] = gateway.inputs["spec"]["template"]["spec"]["containers"]
    assert {"name": "upstream-tls", "mountPath": "/etc/nginx/upstream-tls", "readOnly": True} in gw_container["volumeMounts"]
    # (and, where ems:northbound is set, to the north-bound's command listener: every HTTPS upstream gets it)
    assert nginx.count("proxy_ssl_certificate /etc/nginx/upstream-tls/tls.crt;\n") == nginx.count("proxy_pass https://ems_") >= 3
    assert nginx.count("proxy_ssl_certificate_key /etc/nginx/upstream-tls/tls.key;\n") == nginx.count("proxy_pass https://ems_")
    assert nginx.count("proxy_pass https://ems_twin_api") >= 3
    [gw_csr] = [r for r in ev.of_type("tls:index/certRequest:CertRequest") if r.inputs["subject"]["commonName"] == "ems-api-gateway"]
    [gw_cert] = [r for r in ev.of_type("tls:index/locallySignedCert:LocallySignedCert") if r.name == gw_csr.name.replace("-csr", "-cert")]
    assert "client_auth" in gw_cert.inputs["allowedUses"] and "server_auth" not in gw_cert.inputs["allowedUses"]
    gw_secret = _named(ev, "kubernetes:core/v1:Secret", "api-gateway-client-tls")
    assert gw_secret.inputs["type"] == "kubernetes.io/tls" and gw_secret.inputs["metadata"]["namespace"] == ns
    assert (str(parsed.twin_api.client_ca), parsed.twin_api.client_cns) == ("/etc/ems/server-tls/ca.crt", ("ems-api-gateway",))
    # NetworkPolicies: gateway → twin-api 8443, tsdb → twin-api 9100 (metrics); twin-api → broker 8883 and tsdb 9090.
    policies = {p.inputs["metadata"]["name"]: p.inputs["spec"] for p in ev.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
                if p.inputs["metadata"]["namespace"] == ns}
    selecting = [n for n, s in policies.items() if s["podSelector"] and selects(s["podSelector"], pod_labels(deploy))]
    assert selecting == ["twin-api"]
    twin_policy = policies["twin-api"]
    peer = lambda rule: [(selects(p["podSelector"], pod_labels(gateway)), p) for p in rule["from" if "from" in rule else "to"]]  # noqa: E731
    assert [(r["ports"], [ok for ok, _ in peer(r)]) for r in twin_policy["ingress"]] == [
        ([{"protocol": "TCP", "port": 8443}], [True]), ([{"protocol": "TCP", "port": 9100}], [False])]
    [scrape] = [p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in twin_policy["ingress"][1]["from"]]
    assert scrape == "tsdb"                               # the TSDB scrapes the verifier's counters, nobody else
    egress = [(r["ports"], [p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] if "podSelector" in p else p["ipBlock"]["cidr"]
                            for p in r["to"]]) for r in twin_policy["egress"]]
    # With an OIDC issuer (ems:apiAuth.oidc) the verifier fetches its JWKS over HTTPS, and only then.
    idp = [([{"protocol": "TCP", "port": 443}], ["0.0.0.0/0"])] if "oidc" in json.loads(config.get("ems:apiAuth") or "{}") else []
    # The operator page's firing alerts come from the Alertmanager.
    alerts = [([{"protocol": "TCP", "port": 9093}], ["alertmanager"])]
    assert egress == [([{"protocol": "TCP", "port": 8883}], ["broker"]), ([{"protocol": "TCP", "port": 9090}], ["tsdb"]),
                      *alerts, *idp]
    twin_toml = _named(ev, "kubernetes:core/v1:ConfigMap", "twin-api-config").inputs["data"]["ingest.toml"]
    assert 'alertmanager_url = "http://alertmanager.ems-system.svc.cluster.local:9093"' in twin_toml
    assert {"to": [{"podSelector": {"matchLabels": deploy.inputs["spec"]["selector"]["matchLabels"]}}],
            "ports": [{"protocol": "TCP", "port": 8443}]} in policies["api-gateway"]["egress"]
    [tsdb_in] = policies["tsdb"]["ingress"]
    assert any(selects(p["podSelector"], pod_labels(deploy)) for p in tsdb_in["from"])


def _ems_gateway(ev: Evaluation) -> tuple[Registered, dict[str, Any]]:
    """The field manual's ``deployment/ems-gateway`` and its parsed sensors.conf."""
    import tomllib

    deploy = _named(ev, "kubernetes:apps/v1:Deployment", "ems-gateway")
    conf = _named(ev, "kubernetes:core/v1:ConfigMap", "ems-gateway-config")
    return deploy, tomllib.loads(conf.inputs["data"]["sensors.conf"])


@pytest.mark.parametrize("name", REGION_STACKS)
def test_the_manual_s_ems_gateway_is_a_recreated_deployment_in_ems_system(name: str) -> None:
    """`kubectl logs -f deployment/ems-gateway -n ems-system` and `rollout restart` address it; its spool and
    audit log survive the restart on claims that one pod at a time mounts."""
    ev = stack(name)
    deploy, conf = _ems_gateway(ev)
    assert deploy.inputs["metadata"]["namespace"] == "ems-system"
    spec = deploy.inputs["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    assert not [s for s in ev.of_type("kubernetes:apps/v1:StatefulSet") if "gateway" in s.inputs["metadata"]["name"]]
    pod = spec["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"spool": "ems-gateway-spool", "audit": "ems-gateway-audit"}
    pvcs = {p.inputs["metadata"]["name"]: p.inputs for p in ev.of_type("kubernetes:core/v1:PersistentVolumeClaim")}
    [sc] = ev.of_type("kubernetes:storage.k8s.io/v1:StorageClass")
    for claim in claims.values():
        assert pvcs[claim]["metadata"]["namespace"] == "ems-system"
        assert pvcs[claim]["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert pvcs[claim]["spec"]["storageClassName"] == sc.inputs["metadata"]["name"]
    [c] = pod["containers"]
    mounts = {m["mountPath"]: (m["name"], m["readOnly"]) for m in c["volumeMounts"]}
    assert mounts["/var/lib/ems"] == ("spool", False) and mounts["/var/log/ems"] == ("audit", False)
    assert mounts["/etc/ems/conf"] == ("config", True) and mounts["/etc/ems/tls"] == ("tls", True)
    assert c["args"] == ["--log-stream", "stdout", "run", "--config", "/etc/ems/conf/sensors.conf"]
    assert conf["audit"]["path"] == "/var/log/ems/telemetry-audit.log"
    assert conf["spool"]["path"].startswith("/var/lib/ems/")
    assert deploy.inputs["metadata"]["labels"]["ems.io/latency-critical"] == "true"


def test_the_workload_namespace_stays_configurable() -> None:
    ev = evaluate_stack("local", {"ems:namespace": "grid-ops"})
    deploy, conf = _ems_gateway(ev)
    assert deploy.inputs["metadata"]["namespace"] == "grid-ops"
    assert conf["broker"]["host"] == "broker.grid-ops.svc.cluster.local"
    assert {n.inputs["metadata"]["name"] for n in ev.of_type("kubernetes:core/v1:Namespace")} == {"grid-ops", "grid-ops-edge-credentials"}
    # The MQTT identities (certificate CNs) do not move with the namespace.
    assert conf["site"] == "ems-bridge"


def test_each_gateway_keeps_its_framing() -> None:
    gateways = [
        {"name": "gw-tcp", "host": "10.20.0.10", "points": [{"id": "S1", "asset": "a", "name": "n", "address": 0}]},
        {"name": "gw-rtu", "host": "10.20.0.11", "port": 4001, "unit": 7, "transport": "rtu-over-tcp",
         "points": [{"id": "S2", "asset": "a", "name": "m", "address": 1}, {"id": "S3", "asset": "b", "name": "k", "address": 5}]},
    ]
    _, conf = _ems_gateway(evaluate_stack("local", {"ems:modbusGateways": json.dumps(gateways)}))
    devices = {d["name"]: d for d in conf["devices"]}
    assert (devices["gw-tcp"]["transport"], devices["gw-tcp"]["port"], devices["gw-tcp"]["unit"]) == ("tcp", 502, 1)
    assert (devices["gw-rtu"]["transport"], devices["gw-rtu"]["port"], devices["gw-rtu"]["unit"]) == ("rtu-over-tcp", 4001, 7)
    assert [p["id"] for p in devices["gw-tcp"]["points"]] == ["S1"]
    assert [p["id"] for p in devices["gw-rtu"]["points"]] == ["S2", "S3"]
    with pytest.raises(Exception, match=r"^ems:modbusGateways\[0\]\.transport: rtu is not one of tcp\|rtu-over-tcp$"):
        evaluate_stack("local", {"ems:modbusGateways": json.dumps([{**gateways[0], "transport": "rtu"}])})


@pytest.mark.parametrize("name", REGION_STACKS)
def test_gateway_authentication_follows_the_stack(name: str) -> None:
    import tomllib

    from components.gateway_settings import parse_gateway_auth
    from ingest.config import parse_config

    ev, config = stack(name), evaluate_config(name)
    auth = parse_gateway_auth(json.loads(config.get("ems:apiAuth") or "null"))
    gateway = _named(ev, "kubernetes:apps/v1:Deployment", "api-gateway")
    nginx = _named(ev, "kubernetes:core/v1:ConfigMap", "api-gateway-config").inputs["data"]["nginx.conf"]
    verify = "off" if auth.client_certs == "off" else "optional"
    assert f"ssl_verify_client {verify};" in nginx and f"rate={auth.rate_per_second}r/s;" in nginx
    assert ("return 496;" in nginx) == (auth.client_certs == "required")
    expected = "mtls-required" if auth.client_certs == "required" else "+".join(
        m for m, on in (("mtls", auth.client_certs != "off"), ("oidc", auth.oidc is not None)) if on)
    assert gateway.inputs["metadata"]["annotations"]["ems.io/client-auth"] == expected
    # The verifier in the twin API gets the same issuer and mappings.
    twin = parse_config(tomllib.loads(_named(ev, "kubernetes:core/v1:ConfigMap", "twin-api-config").inputs["data"]["ingest.toml"]),
                        check_files=False).twin_api
    assert twin.auth.cert_cn_roles == auth.cert_cn_roles
    assert (twin.auth.oidc.issuer, twin.auth.oidc.audience, twin.auth.oidc.jwks_url) == \
        (auth.oidc.issuer, auth.oidc.audience, auth.oidc.jwks_url) if auth.oidc else twin.auth.oidc is None
    # PromQL limits on the TSDB itself.
    tsdb = _named(ev, "kubernetes:apps/v1:StatefulSet", "tsdb")
    args = tsdb.inputs["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--query.timeout={auth.promql_timeout_seconds}s" in args and f"--query.max-samples={auth.promql_max_samples}" in args


@pytest.mark.parametrize("name", REGION_STACKS)
def test_grafana_is_routed_by_the_gateway_where_it_is_deployed(name: str) -> None:
    ev, config = stack(name), evaluate_config(name)
    enabled = json.loads(config.get("ems:grafana") or "{}").get("enabled", True)
    nginx = _named(ev, "kubernetes:core/v1:ConfigMap", "api-gateway-config").inputs["data"]["nginx.conf"]
    grafana = [d for d in ev.of_type("kubernetes:apps/v1:Deployment") if d.inputs["metadata"]["name"] == "grafana"]
    assert bool(grafana) == enabled
    assert ("grafana.ems-system.svc.cluster.local:3000" in nginx) == enabled
    # Operators' silences go to the Alertmanager (the route is off without an upstream).
    assert "alertmanager.ems-system.svc.cluster.local:9093" in nginx
