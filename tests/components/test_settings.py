"""Stack-config validation: the pure parser, messages asserted verbatim."""

from __future__ import annotations

import json

import pulumi
import pytest
from hypothesis import given, settings, strategies as st

from infra_mocks import make_ca_pem

from components.settings import (
    DEFAULT_NODE_GROUPS,
    SettingsError,
    parse_settings,
)

AWS = {"ems:cloud": "aws", "ems:region": "eu-west-1"}


def error(raw: dict[str, object]) -> str:
    with pytest.raises(SettingsError) as info:
        parse_settings(raw, "test")
    assert isinstance(info.value, pulumi.RunError)
    return str(info.value)


def test_minimal_aws_stack_gets_documented_defaults() -> None:
    s = parse_settings(AWS, "aws-eu-west-1")
    assert s.cloud == "aws" and s.role == "region" and s.kubernetes_version == "1.36"
    assert s.aws is not None and s.aws.region == "eu-west-1"
    assert s.aws.availability_zones == ("eu-west-1a", "eu-west-1b")
    assert s.aws.node_groups == DEFAULT_NODE_GROUPS
    assert s.aws.public_endpoint_cidrs == ()
    assert s.platform is not None and s.platform.storage_provisioner == "ebs.csi.aws.com"
    assert s.platform.ingest_scale_down_stabilization_seconds == 600


def test_structured_values_arrive_as_json_strings_under_the_runtime() -> None:
    raw = {**AWS, "ems:edgeSites": json.dumps(["site-a", "site-b"]), "ems:ingestMinReplicas": "3"}
    s = parse_settings(raw, "t")
    assert s.platform.edge_sites == ("site-a", "site-b")
    assert s.platform.ingest_min_replicas == 3


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "ems:cloud: is required (one of aws|private|local)"),
        ({"ems:cloud": "gcp"}, "ems:cloud: gcp is not one of aws|private|local"),
        ({"ems:cloud": "aws"}, "ems:region: is required when ems:cloud is aws (e.g. eu-west-1)"),
        ({**AWS, "ems:kubernetesVersion": "1.24"}, "ems:kubernetesVersion: 1.24 is below the supported minimum 1.26"),
        ({**AWS, "ems:kubernetesVersion": "1.3"},
         "ems:kubernetesVersion: 1.3 is below the supported minimum 1.26 (an unquoted 1.30 in YAML arrives as 1.3: quote it)"),
        ({**AWS, "ems:kubernetesVersion": 1.3}, 'ems:kubernetesVersion: 1.3 must be a quoted string such as "1.29" (YAML reads 1.30 as the number 1.3)'),
        ({**AWS, "ems:edgeSites": ["a", "b", "a"]}, "ems:edgeSites[2]: a is a duplicate; entries must be unique"),
        ({**AWS, "ems:edgeSites": "not json"}, 'ems:edgeSites: "not json" must be a list (JSON/YAML list)'),
        ({**AWS, "ems:edgeSites": ["Site_A"]}, "ems:edgeSites[0]: Site_A must be a DNS label (lowercase letters, digits, '-', at most 63)"),
        ({**AWS, "ems:ingestMinReplicas": "two"}, "ems:ingestMinReplicas: two must be an integer"),
        ({**AWS, "ems:twinApiMaxConnections": "9" * 5000}, "ems:twinApiMaxConnections: " + "9" * 60 + "…" + "9" * 20
         + " must be an integer of at most 40 characters"),
        ({**AWS, "ems:twinApiMaxConnections": 10**5000},
         "ems:twinApiMaxConnections: <an integer of about 5001 digits> must be at most 4096"),
        ({**AWS, "ems:ingestMinReplicas": True}, "ems:ingestMinReplicas: true must be an integer"),
        ({**AWS, "ems:ingestMinReplicas": 5, "ems:ingestMaxReplicas": 2}, "ems:ingestMinReplicas: 5 must not exceed ems:ingestMaxReplicas 2"),
        ({**AWS, "ems:ingestMaxReplicas": 1000}, "ems:ingestMaxReplicas: 1000 must be at most 64"),
        ({**AWS, "ems:ingestScaleDownStabilizationSeconds": 4000}, "ems:ingestScaleDownStabilizationSeconds: 4000 must be at most 3600"),
        ({**AWS, "ems:vpcCidr": "10.40.0.1/16"}, "ems:vpcCidr: 10.40.0.1/16 is not a valid CIDR block (e.g. 10.40.0.0/16, host bits zero)"),
        ({**AWS, "ems:publicEndpointCidrs": ["0.0.0.0/0"]}, "ems:publicEndpointCidrs[0]: 0.0.0.0/0 would open the Kubernetes API to the whole internet; list your operator networks"),
        ({**AWS, "ems:availabilityZones": ["eu-west-1a"]}, 'ems:availabilityZones: ["eu-west-1a"] must have at least 2 entries'),
        ({**AWS, "ems:availabilityZones": ["eu-west-1a", "us-east-1b"]}, "ems:availabilityZones[1]: us-east-1b is not a zone of region eu-west-1 (e.g. eu-west-1a)"),
        ({**AWS, "ems:vpcId": "vpc-0123abcd"}, "ems:privateSubnetIds: is required when ems:vpcId is set (bring all of vpcId, privateSubnetIds, publicSubnetIds, or none)"),
        ({**AWS, "ems:images": {"tsdb": "quay.io/prometheus/prometheus:latest"}}, "ems:images.tsdb: quay.io/prometheus/prometheus:latest uses the mutable tag latest; pin a version or digest"),
        ({**AWS, "ems:images": {"tsdb": "quay.io/prometheus/prometheus"}}, "ems:images.tsdb: quay.io/prometheus/prometheus needs an explicit tag or digest"),
        ({**AWS, "ems:images": {"tsdb": "evil.example.com/prom:1"}}, "ems:images.tsdb: evil.example.com/prom:1 is not from an allowed registry (docker.io, ghcr.io, quay.io, registry.k8s.io, public.ecr.aws)"),
        ({**AWS, "ems:images": {"kibana": "elastic/kibana:8.15.0"}}, "ems:images.kibana: elastic/kibana:8.15.0 is not a known image; known: broker, tsdb, edgeAgent, ingest, apiGateway, metricsAdapter, northbound, grafana, alertmanager"),
        ({**AWS, "ems:modbusGateways": [{"name": "gw1", "host": "rtu.local", "points": [{"id": "S1"}]}]}, "ems:modbusGateways[0].host: rtu.local is not an IP address (NetworkPolicies allow Modbus egress by address)"),
        ({**AWS, "ems:modbusGateways": [{"name": "gw1", "host": "10.0.0.5", "points": [{"id": "S1"}]}, {"name": "gw1", "host": "10.0.0.6", "points": [{"id": "S2"}]}]}, "ems:modbusGateways[1].name: gw1 is a duplicate; gateway names must be unique"),
        ({**AWS, "ems:modbusGateways": [{"name": "gw1"}]}, "ems:modbusGateways[0].host: is required"),
        ({**AWS, "ems:modbusGateways": [{"name": "gw1", "host": "10.0.0.5", "points": []}]}, "ems:modbusGateways[0].points: [] must be a non-empty list of point objects (id, asset, name, address, ...)"),
        ({**AWS, "ems:spoolHorizon": "3 days"}, 'ems:spoolHorizon: "3 days" must be a Prometheus duration such as 72h or 30d'),
        ({**AWS, "ems:certValidityHours": 10000}, "ems:certValidityHours: 10000 must be at most 9552"),
        ({**AWS, "ems:storageProvisioner": "csi.example.com"}, "ems:storageProvisioner: csi.example.com is not one of ebs.csi.aws.com"),
        ({"ems:cloud": "private"}, "ems:storageProvisioner: is required when ems:cloud is private (your CSI driver, e.g. csi.trident.netapp.io)"),
        ({**AWS, "ems:clodu": "aws"}, "ems:clodu: aws is not a known key; see docs/stack-config.md"),
        ({"ems:cloud": "private", "ems:storageProvisioner": "csi.x.io", "ems:nodeGroups": []}, "ems:nodeGroups: [] does not apply to this stack (ems:cloud private, ems:role region); it is for ems:cloud aws region stacks"),
        ({**AWS, "ems:renderDirectory": "out"}, "ems:renderDirectory: out does not apply to this stack (ems:cloud aws, ems:role region); it is for ems:cloud local"),
        ({"ems:cloud": "aws", "ems:role": "global", "ems:regionStacks": ["a"], "ems:edgeSites": ["s"]}, 'ems:edgeSites: ["s"] does not apply to this stack (ems:cloud aws, ems:role global); it is for region stacks (ems:role region)'),
        ({"ems:cloud": "local", "ems:regionStacks": ["a"]}, 'ems:regionStacks: ["a"] does not apply to this stack (ems:cloud local, ems:role region); it is for ems:role global'),
        ({"ems:cloud": "local", "ems:role": "global"}, "ems:cloud: local must be aws for ems:role global (the global load balancer is AWS Global Accelerator)"),
        ({"ems:cloud": "aws", "ems:role": "global"}, "ems:regionStacks: is required when ems:role is global (the region stacks to join)"),
        ({"ems:cloud": "aws", "ems:role": "global", "ems:regionStacks": ["a"], "ems:dnsZoneId": "Z0123456789ABC"}, "ems:mqttDomainName: is required when ems:dnsZoneId is set (Route 53 latency records)"),
        ({"ems:cloud": "aws", "ems:role": "global", "ems:regionStacks": ["a"], "ems:healthCheckIntervalSeconds": 15}, "ems:healthCheckIntervalSeconds: 15 is not one of 10|30 (Global Accelerator health-check intervals)"),
    ],
)
def test_bad_config_names_key_value_and_what_is_allowed(raw: dict[str, object], message: str) -> None:
    assert error(raw) == message


GROUP = {"name": "ic", "pool": "interconnect", "instanceTypes": ["c6in.xlarge"], "minSize": 1, "maxSize": 3}
NVME = {"name": "nv", "pool": "nvme", "instanceTypes": ["i4i.xlarge"], "minSize": 1, "maxSize": 2}


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([{**GROUP, "minSize": 5, "maxSize": 3}, NVME], "ems:nodeGroups[0].minSize: 5 must not exceed maxSize 3"),
        ([{**GROUP, "desiredSize": 9}, NVME], "ems:nodeGroups[0].desiredSize: 9 must be between minSize 1 and maxSize 3"),
        ([GROUP], 'ems:nodeGroups: ["ic"] has no group with pool nvme; the platform needs interconnect and nvme pools'),
        ([GROUP, {**NVME, "name": "ic"}], "ems:nodeGroups[1].name: ic is a duplicate; node group names must be unique"),
        ([{**GROUP, "pool": "gpu"}, NVME], "ems:nodeGroups[0].pool: gpu is not one of interconnect|nvme|general"),
        ([{**GROUP, "taints": [{"key": "k", "effect": "NO_SCHEDULE"}]}, NVME], "ems:nodeGroups[0].taints[0].effect: NO_SCHEDULE is not one of NoSchedule|PreferNoSchedule|NoExecute"),
        ([{**GROUP, "minSize": "1"}, NVME, {"name": "x"}], "ems:nodeGroups[2].pool: is required"),
    ],
)
def test_node_group_errors(groups: list[object], message: str) -> None:
    assert error({**AWS, "ems:nodeGroups": groups}) == message


def test_node_groups_parse_taints_and_desired_default() -> None:
    s = parse_settings({**AWS, "ems:nodeGroups": json.dumps([{**GROUP, "taints": [{"key": "ems.io/pool", "value": "interconnect", "effect": "NoSchedule"}]}, NVME])}, "t")
    ic = s.aws.node_groups[0]
    assert ic.desired_size == 1 and ic.taints[0].aws_effect == "NO_SCHEDULE"


def test_global_stack_needs_no_platform() -> None:
    s = parse_settings({"ems:cloud": "aws", "ems:role": "global", "ems:regionStacks": '["aws-us-east-1","aws-eu-west-1"]'}, "global")
    assert s.platform is None and s.global_.region_stacks == ("aws-us-east-1", "aws-eu-west-1")


def test_private_and_local() -> None:
    p = parse_settings({"ems:cloud": "private", "ems:storageProvisioner": "csi.trident.netapp.io", "ems:kubeContext": "dc1"}, "p")
    assert p.private.kube_context == "dc1" and p.aws is None and p.platform.storage_provisioner == "csi.trident.netapp.io"
    loc = parse_settings({"ems:cloud": "local"}, "local")
    assert loc.local.render_directory == "out/rendered/local"


def test_docs_table_documents_exactly_the_known_keys() -> None:
    import re
    from pathlib import Path

    from components.settings import KNOWN_KEYS, Images

    doc = (Path(__file__).resolve().parents[2] / "docs" / "stack-config.md").read_text()
    rows = set(re.findall(r"^\| `([A-Za-z]+)` \|", doc, re.M))
    assert rows == set(KNOWN_KEYS), (rows ^ set(KNOWN_KEYS))
    for image in vars(Images()).values():
        assert image in doc, image


def test_shared_ca_needs_its_key_as_a_secret() -> None:
    pem = make_ca_pem()
    assert error({**AWS, "ems:caCertificate": pem}) == \
        "ems:caPrivateKey: is required when ems:caCertificate is set: pulumi config set --secret ems:caPrivateKey < ca.key"
    assert parse_settings({**AWS, "ems:caCertificate": pem}, "t", frozenset({"caPrivateKey"})).platform.ca_certificate == pem
    with pytest.raises(SettingsError, match=r"^ems:caCertificate: is required when ems:caPrivateKey is set"):
        parse_settings(AWS, "t", frozenset({"caPrivateKey"}))
    with pytest.raises(SettingsError, match=r"^ems:caCertificate: .* is not a CA certificate \(basicConstraints CA:FALSE\)$"):
        parse_settings({**AWS, "ems:caCertificate": make_ca_pem(is_ca=False)}, "t", frozenset({"caPrivateKey"}))
    with pytest.raises(SettingsError, match=r"^ems:caCertificate: hello must be a PEM certificate"):
        parse_settings({**AWS, "ems:caCertificate": "hello"}, "t", frozenset({"caPrivateKey"}))
    message = str(pytest.raises(SettingsError, parse_settings, {**AWS, "ems:caCertificate": make_ca_pem(is_ca=False)}, "t",
                                frozenset({"caPrivateKey"})).value)
    assert "\n" not in message and len(message) < 250, message


def test_additional_cas_are_checked_one_by_one() -> None:
    signing, old, new = make_ca_pem(), make_ca_pem(), make_ca_pem()
    shared = {**AWS, "ems:caCertificate": signing}
    keys = frozenset({"caPrivateKey"})
    parsed = parse_settings({**shared, "ems:additionalCaCertificates": json.dumps([old, new])}, "t", keys).platform
    assert parsed.additional_ca_certificates == (old, new) and parsed.ca_certificate == signing
    assert parse_settings(AWS, "t").platform.additional_ca_certificates == ()
    cases = [
        ([old, "hello"], r"^ems:additionalCaCertificates\[1\]: hello must be a PEM certificate"),
        ([make_ca_pem(is_ca=False)], r"^ems:additionalCaCertificates\[0\]: .* is not a CA certificate \(basicConstraints CA:FALSE\)$"),
        ([old, old.replace("\n", "\r\n")], r"^ems:additionalCaCertificates\[1\]: .* is a duplicate; entries must be unique$"),
        ([old + new], r"^ems:additionalCaCertificates\[0\]: .* must hold exactly one certificate \(one list entry per CA\)$"),
        ([make_ca_pem(valid_days=-1)], r"^ems:additionalCaCertificates\[0\]: .* expired on \d{4}-\d\d-\d\d: it can no longer"),
        ([old, signing], r"^ems:additionalCaCertificates\[1\]: .* is ems:caCertificate itself, which is trusted anyway"),
        ([make_ca_pem() for _ in range(5)], r"^ems:additionalCaCertificates: \[.* holds 5 certificates; at most 4: a rotation"),
        ("not json", r"^ems:additionalCaCertificates: \"not json\" must be a list of PEM CA certificates"),
    ]
    for value, message in cases:
        raw = value if isinstance(value, str) else json.dumps(value)
        with pytest.raises(SettingsError, match=message) as caught:
            parse_settings({**shared, "ems:additionalCaCertificates": raw}, "t", keys)
        assert "\n" not in str(caught.value) and len(str(caught.value)) < 300, str(caught.value)


# -- alerting: thresholds and receivers ----------------------------------------------------------------------------

@pytest.mark.parametrize("raw,message", [
    ({**AWS, "ems:alerts": {"siteSilentMinutes": 0}}, "ems:alerts.siteSilentMinutes: 0 must be at least 1"),
    ({**AWS, "ems:alerts": {"lossRatio": 2}}, "ems:alerts.lossRatio: 2 must be a number in 0..1"),
    ({**AWS, "ems:alerts": {"hotSpotLimitCelsius": "hot"}}, "ems:alerts.hotSpotLimitCelsius: hot must be a number in 40..200"),
    ({**AWS, "ems:alerts": {"silentMinutes": 5}}, "ems:alerts.silentMinutes: 5 is not a known field; known: "
     "siteSilentMinutes, clockSkewSeconds, lossRatio, duplicateRatio, deadLettersPer10m, spoolDepth, spoolOldestSeconds, "
     "modbusExceptionRatio, deviceDownMinutes, hotSpotLimitCelsius, ageingMinutes, topOilResidualKelvin, "
     "timeToLimitMinutes, certificateDays"),
    ({**AWS, "ems:alertReceivers": [{"name": "Ops"}]}, "ems:alertReceivers[0].name: Ops must be a DNS label (lowercase letters, digits, '-')"),
    ({**AWS, "ems:alertReceivers": [{"name": "ops", "severities": ["page"]}]},
     "ems:alertReceivers[0].severities[0]: page is not one of critical|warning|info"),
    ({**AWS, "ems:alertReceivers": [{"name": "ops", "sendResolved": "yes"}]},
     "ems:alertReceivers[0].sendResolved: yes must be true or false"),
    ({**AWS, "ems:alertReceivers": [{"name": "ops"}]},
     "ems:alertReceiverUrls: is required when ems:alertReceivers is set: pulumi config set --secret "
     "ems:alertReceiverUrls '{\"<receiver>\": \"https://…\"}'"),
])
def test_bad_alert_settings_name_the_field_and_value(raw: dict[str, object], message: str) -> None:
    assert error(raw) == message


def test_alert_settings_reach_the_platform_settings() -> None:
    s = parse_settings({**AWS, "ems:alerts": {"siteSilentMinutes": 30, "lossRatio": 0.01},
                        "ems:alertReceivers": [{"name": "ops", "severities": ["critical"]}]}, "t",
                       frozenset({"alertReceiverUrls"}))
    assert s.platform is not None
    assert (s.platform.alerts.site_silent_minutes, s.platform.alerts.loss_ratio) == (30, 0.01)
    assert s.platform.alert_receivers[0].severities == ("critical",)
    quiet = parse_settings({**AWS, "ems:alertReceivers": [{"name": "ops", "sendResolved": "false"}]}, "t",
                           frozenset({"alertReceiverUrls"}))
    assert quiet.platform is not None and quiet.platform.alert_receivers[0].send_resolved is False


_huge_integer = st.one_of(st.integers(), st.sampled_from([10**5000, -10**5000, 2**64]),
                          st.integers(0, 6000).map(lambda n: 10**n))
_integer_keys = st.sampled_from(["ingestMinReplicas", "ingestMaxReplicas", "twinApiMaxConnections",
                                 "ingestScaleDownStabilizationSeconds"])


@settings(max_examples=150, deadline=None)
@given(_integer_keys, st.one_of(_huge_integer, st.integers(0, 4000).map(lambda n: str(-(10**n))),
                                st.integers(1, 6000).map(lambda n: "9" * n), st.text(max_size=50)))
def test_any_integer_setting_is_accepted_or_refused_in_one_line_naming_the_key(key: str, value: object) -> None:
    """The review's case: "9"*5000 made int() raise ValueError (4,300-digit limit), 10**5000 failed in json.dumps."""
    try:
        parse_settings({**AWS, f"ems:{key}": value}, "test")
    except SettingsError as exc:
        message = str(exc)
        assert f"ems:{key}" in message and "\n" not in message and len(message) < 400, message[:400]
