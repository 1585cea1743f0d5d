"""No input makes a policy crash (a crash would fail the whole Analyze call): every leaf of every
sample resource is replaced, one at a time, by an unknown and by values of the wrong type.
Replacing a leaf with an unknown must never make a violating resource pass silently either."""

from __future__ import annotations

import copy
from typing import Any, Iterator

import pytest

from policy_engine import (  # first: puts the pack directory on sys.path
    POLICIES, UNKNOWN_ARRAY_VALUE, UNKNOWN_OBJECT_VALUE, UNKNOWN_STRING_VALUE, StackResource, check, check_stack,
)
from ems_guard.props import INTERNAL_ERROR  # noqa: E402
from pulumi_policy import ResourceValidationPolicy, StackValidationPolicy
from workload_fixtures import KIND_TYPES, workload

SAMPLES: dict[str, tuple[str, dict]] = {
    "deployment": (KIND_TYPES["Deployment"], workload()),
    "cronjob": (KIND_TYPES["CronJob"], workload("CronJob")),
    "service": ("kubernetes:core/v1:Service", {
        "metadata": {"annotations": {"service.beta.kubernetes.io/aws-load-balancer-scheme": "internal"}},
        "spec": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/8"],
                 "ports": [{"port": 502, "targetPort": 502}]}}),
    "ingress": ("kubernetes:networking.k8s.io/v1:Ingress", {"spec": {
        "tls": [{"hosts": ["a"]}], "rules": [{"http": {"paths": [
            {"backend": {"service": {"name": "a", "port": {"number": 443}}}}]}}]}}),
    "netpol": ("kubernetes:networking.k8s.io/v1:NetworkPolicy", {"spec": {
        "podSelector": {"matchLabels": {"a": "b"}}, "ingress": [{"ports": [{"port": 8883, "endPort": 8883}]}]}}),
    "clusterrole": ("kubernetes:rbac.authorization.k8s.io/v1:ClusterRole", {
        "metadata": {"labels": {"x": "y"}}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
    "binding": ("kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding", {
        "roleRef": {"name": "cluster-admin"}, "subjects": [{"kind": "Group", "name": "ems:platform-admins"}]}),
    "sa": ("kubernetes:core/v1:ServiceAccount", {"metadata": {"annotations": {}}, "automountServiceAccountToken": False}),
    "hpa": ("kubernetes:autoscaling/v2:HorizontalPodAutoscaler", {
        "metadata": {"labels": {"ems.io/thermal-asset": "true"}},
        "spec": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}}}}),
    "sc": ("kubernetes:storage.k8s.io/v1:StorageClass", {"provisioner": "ebs.csi.aws.com",
                                                         "parameters": {"encrypted": "true"}}),
    "sg": ("aws:ec2/securityGroup:SecurityGroup", {"ingress": [
        {"protocol": "tcp", "fromPort": 443, "toPort": 443, "cidrBlocks": ["0.0.0.0/0"], "ipv6CidrBlocks": []}]}),
    "sgrule": ("aws:ec2/securityGroupRule:SecurityGroupRule", {
        "type": "ingress", "protocol": "tcp", "fromPort": 443, "toPort": 443, "cidrBlocks": ["0.0.0.0/0"]}),
    "ga": ("aws:globalaccelerator/listener:Listener", {"protocol": "TCP",
                                                        "portRanges": [{"fromPort": 443, "toPort": 443}]}),
    "eks": ("aws:eks/cluster:Cluster", {
        "vpcConfig": {"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]},
        "encryptionConfig": {"provider": {"keyArn": "arn"}, "resources": ["secrets"]},
        "enabledClusterLogTypes": ["api", "audit", "authenticator"]}),
    "lt": ("aws:ec2/launchTemplate:LaunchTemplate", {"blockDeviceMappings": [{"ebs": {"encrypted": "true"}}],
                                                     "metadataOptions": {"httpTokens": "required"}}),
    "kms": ("aws:kms/key:Key", {"enableKeyRotation": True}),
    "key": ("tls:index/privateKey:PrivateKey", {"algorithm": "RSA", "rsaBits": 4096}),
    "cert": ("tls:index/locallySignedCert:LocallySignedCert", {
        "validityPeriodHours": 100, "isCaCertificate": False, "allowedUses": ["server_auth"]}),
}

WRONG_TYPES = ["x", 7, 7.5, True, [], ["x", 1], {}, {"a": [1]}, None]


def _leaves(obj: Any, path: tuple = ()) -> Iterator[tuple]:
    if isinstance(obj, dict):
        if not obj:
            yield path
        for key, value in obj.items():
            yield from _leaves(value, path + (key,))
    elif isinstance(obj, list):
        if not obj:
            yield path
        for i, value in enumerate(obj):
            yield from _leaves(value, path + (i,))
    else:
        yield path


def _replace(obj: Any, path: tuple, value: Any) -> Any:
    out = copy.deepcopy(obj)
    if not path:
        return value
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def _unknown_for(value: Any) -> str:
    if isinstance(value, list):
        return UNKNOWN_ARRAY_VALUE
    if isinstance(value, dict):
        return UNKNOWN_OBJECT_VALUE
    return UNKNOWN_STRING_VALUE


RESOURCE_POLICIES = sorted(n for n, p in POLICIES.items() if isinstance(p, ResourceValidationPolicy))


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_samples_are_compliant(sample: str) -> None:
    resource_type, props = SAMPLES[sample]
    assert {p: check(p, resource_type, props) for p in RESOURCE_POLICIES if check(p, resource_type, props)} == {}


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_no_policy_crashes_on_unknown_or_wrongly_typed_leaves(sample: str) -> None:
    resource_type, props = SAMPLES[sample]
    crashes = []
    for path in _leaves(props):
        current = props
        for key in path:
            current = current[key]
        for value in [_unknown_for(current), *WRONG_TYPES]:
            mutated = _replace(props, path, value)
            for policy in RESOURCE_POLICIES:
                # raising would abort Analyze; the fail-closed guard's message means a crash was caught
                crashes += [(path, value, policy, m) for m in check(policy, resource_type, mutated)
                            if INTERNAL_ERROR in m]
    assert crashes == []


STACK_POLICIES = sorted(n for n, p in POLICIES.items() if isinstance(p, StackValidationPolicy))


def _stack(props: dict[str, dict]) -> list[StackResource]:
    sc = StackResource("kubernetes:storage.k8s.io/v1:StorageClass", "sc", props["sc"])
    csr = StackResource("tls:index/certRequest:CertRequest", "csr", props["csr"])
    return [
        sc, csr,
        StackResource(KIND_TYPES["StatefulSet"], "tsdb", props["sts"], property_dependencies={"spec": [sc]}),
        StackResource("kubernetes:networking.k8s.io/v1:NetworkPolicy", "np", props["np"]),
        StackResource("tls:index/locallySignedCert:LocallySignedCert", "cert", props["cert"],
                      property_dependencies={"certRequestPem": [csr]}),
    ]


def test_no_stack_policy_crashes_on_unknown_or_wrongly_typed_leaves() -> None:
    sts = workload("StatefulSet", labels={"ems.io/component": "tsdb"})
    sts["spec"]["volumeClaimTemplates"] = [{"metadata": {"name": "d"}, "spec": {"storageClassName": "sc"}}]
    base = {
        "sc": {"metadata": {"name": "sc"}, "provisioner": "ebs.csi.aws.com"},
        "csr": {"dnsNames": ["a.example"], "ipAddresses": []},
        "sts": sts,
        "np": {"metadata": {"namespace": "ems"}, "spec": {
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["x"]}]},
            "policyTypes": ["Ingress", "Egress"]}},
        "cert": {"isCaCertificate": False, "allowedUses": ["server_auth"]},
    }
    crashes = []
    for part, props in base.items():
        for path in _leaves(props):
            current = props
            for key in path:
                current = current[key]
            for value in [_unknown_for(current), *WRONG_TYPES]:
                mutated = dict(base, **{part: _replace(props, path, value)})
                for policy in STACK_POLICIES:
                    crashes += [(part, path, value, policy, m) for m, _ in check_stack(policy, _stack(mutated))
                                if INTERNAL_ERROR in m]
    assert crashes == []


def test_every_unknown_subtree_of_a_violating_deployment_is_still_reported() -> None:
    """Whatever part of a violating Deployment is unknown, privileged containers are not let through."""
    bad = workload()
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    path = ("spec", "template", "spec", "containers", 0, "securityContext", "privileged")
    for depth in range(1, len(path) + 1):
        prefix = path[:depth]
        current = bad
        for key in prefix:
            current = current[key]
        mutated = _replace(bad, prefix, _unknown_for(current))
        assert check("container-privileged", KIND_TYPES["Deployment"], mutated), prefix


def _with(obj: dict, path: tuple, value: Any) -> dict:
    return _replace(obj, path, value)


C0 = ("spec", "template", "spec", "containers", 0)
POD = ("spec", "template", "spec")
VIOLATIONS = [
    ("container-privilege-escalation", KIND_TYPES["Deployment"], workload(), C0 + ("securityContext", "allowPrivilegeEscalation"), True),
    ("container-run-as-non-root", KIND_TYPES["Deployment"], workload(), POD + ("securityContext", "runAsNonRoot"), False),
    ("container-capabilities", KIND_TYPES["Deployment"], workload(), C0 + ("securityContext", "capabilities", "drop"), ["NET_RAW"]),
    ("container-image-pinned", KIND_TYPES["Deployment"], workload(), C0 + ("image",), "ghcr.io/x/y:latest"),
    ("pod-host-access", KIND_TYPES["Deployment"], workload(), POD + ("hostNetwork",), True),
    ("secret-volume-mode", KIND_TYPES["Deployment"], workload(), POD + ("volumes", 0, "secret", "defaultMode"), 420),
    ("pod-config-change-rolls", KIND_TYPES["Deployment"], workload(), ("spec", "template", "metadata", "annotations"), {}),
    ("serviceaccount-token-automount", KIND_TYPES["Deployment"], workload(), POD + ("automountServiceAccountToken",), True),
    ("service-external-ports", SAMPLES["service"][0], SAMPLES["service"][1], ("spec", "loadBalancerSourceRanges"), []),
    ("service-ports-allowed", SAMPLES["service"][0], SAMPLES["service"][1], ("spec", "ports", 0, "port"), 22),
    ("networkpolicy-ingress-ports", SAMPLES["netpol"][0], SAMPLES["netpol"][1], ("spec", "ingress", 0, "ports", 0, "port"), 22),
    ("rbac-no-wildcards", SAMPLES["clusterrole"][0], SAMPLES["clusterrole"][1], ("rules", 0, "verbs"), ["*"]),
    ("rbac-cluster-admin-binding", SAMPLES["binding"][0], SAMPLES["binding"][1], ("subjects", 0, "name"), "devs"),
    ("security-group-public-ingress", SAMPLES["sg"][0], SAMPLES["sg"][1], ("ingress", 0, "fromPort"), 22),
    ("eks-endpoint-not-public", SAMPLES["eks"][0], SAMPLES["eks"][1], ("vpcConfig", "publicAccessCidrs"), ["0.0.0.0/0"]),
    ("tls-key-strength", SAMPLES["key"][0], SAMPLES["key"][1], ("rsaBits",), 2048),
    ("tls-cert-lifetime", SAMPLES["cert"][0], SAMPLES["cert"][1], ("validityPeriodHours",), 87600),
    ("thermal-hpa-cooldown", SAMPLES["hpa"][0], SAMPLES["hpa"][1], ("spec", "behavior", "scaleDown", "stabilizationWindowSeconds"), 10),
    ("kms-key-rotation", SAMPLES["kms"][0], SAMPLES["kms"][1], ("enableKeyRotation",), False),
]


@pytest.mark.parametrize("policy,resource_type,props,path,bad", VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_unknown_anywhere_above_a_violation_is_still_reported(policy: str, resource_type: str, props: dict,
                                                              path: tuple, bad: Any) -> None:
    violating = _with(props, path, bad)
    assert check(policy, resource_type, violating), "the violation itself must be caught"
    for depth in range(1, len(path) + 1):
        prefix = path[:depth]
        current = violating
        for key in prefix:
            current = current[key]
        assert check(policy, resource_type, _with(violating, prefix, _unknown_for(current))), prefix
