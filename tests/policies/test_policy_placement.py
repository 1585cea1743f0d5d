"""EMS placement and scaling policies."""

from __future__ import annotations

import pytest

from policy_engine import UNKNOWN_ARRAY_VALUE, UNKNOWN_STRING_VALUE, StackResource, check, check_stack
from workload_fixtures import KIND_TYPES, pod_spec, workload

DEPLOY = KIND_TYPES["Deployment"]
CRITICAL = {"app": "bridge", "ems.io/latency-critical": "true"}


def pinned(values: list[str], operator: str = "In") -> dict:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "ems.io/pool", "operator": operator, "values": values}]}]}}}


def test_latency_critical_affinity() -> None:
    ok = workload(spec=pod_spec(affinity=pinned(["interconnect"])), labels=CRITICAL)
    assert check("latency-critical-node-affinity", DEPLOY, ok) == []
    missing = workload(labels=CRITICAL)
    assert check("latency-critical-node-affinity", DEPLOY, missing, name="bridge") == [
        "Deployment 'bridge' is labelled ems.io/latency-critical: \"true\" but "
        "spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution does not pin every "
        "nodeSelectorTerm to ems.io/pool In [interconnect]; add a matchExpression {key: ems.io/pool, operator: In, "
        "values: [interconnect]} to each term (preferred affinity is not enough)."]
    for affinity in (pinned(["interconnect", "general"]), pinned(["nvme"], "NotIn"), pinned(["general"])):
        assert check("latency-critical-node-affinity", DEPLOY,
                     workload(spec=pod_spec(affinity=affinity), labels=CRITICAL)), affinity
    # a second, unconstrained term lets the scheduler pick any node
    loose = pinned(["interconnect"])
    loose["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"].append(
        {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]})
    assert check("latency-critical-node-affinity", DEPLOY, workload(spec=pod_spec(affinity=loose), labels=CRITICAL))
    assert check("latency-critical-node-affinity", DEPLOY, workload()) == []  # not latency-critical


def test_latency_critical_label_on_workload_metadata_only() -> None:
    obj = workload()
    obj["metadata"]["labels"]["ems.io/latency-critical"] = "True"
    assert check("latency-critical-node-affinity", DEPLOY, obj)


def test_latency_critical_unknown_terms_reported() -> None:
    aff = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": UNKNOWN_ARRAY_VALUE}}}
    msgs = check("latency-critical-node-affinity", DEPLOY, workload(spec=pod_spec(affinity=aff), labels=CRITICAL))
    assert "cannot verify spec.template.spec.affinity.nodeAffinity" in msgs[0]


HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"


def hpa(window: object | None, thermal: str = "true") -> dict:
    spec: dict = {"minReplicas": 2, "maxReplicas": 6}
    if window is not None:
        spec["behavior"] = {"scaleDown": {"stabilizationWindowSeconds": window}}
    return {"metadata": {"name": "tx", "labels": {"ems.io/thermal-asset": thermal}}, "spec": spec}


@pytest.mark.parametrize("window,ok", [(300, True), (600, True), (299, False), (None, False), (0, False)])
def test_thermal_hpa_cooldown(window: object, ok: bool) -> None:
    assert (check("thermal-hpa-cooldown", HPA, hpa(window)) == []) is ok


def test_thermal_hpa_message_and_config() -> None:
    assert check("thermal-hpa-cooldown", HPA, hpa(120), name="tx") == [
        "HorizontalPodAutoscaler 'tx' is a thermal asset (ems.io/thermal-asset: \"true\") but "
        "spec.behavior.scaleDown.stabilizationWindowSeconds is 120; set it to at least 300 (policy config "
        "thermalCooldownSeconds) so thermal inertia settles before scale-in (autoscaling/v2 is required for "
        "spec.behavior)."]
    assert check("thermal-hpa-cooldown", HPA, hpa(120), config={"thermalCooldownSeconds": 60}) == []
    assert check("thermal-hpa-cooldown", HPA, hpa(None, thermal="false")) == []
    assert check("thermal-hpa-cooldown", "kubernetes:autoscaling/v1:HorizontalPodAutoscaler", hpa(None))
    assert "cannot verify" in check("thermal-hpa-cooldown", HPA, hpa(UNKNOWN_STRING_VALUE))[0]


SC = "kubernetes:storage.k8s.io/v1:StorageClass"
STS = KIND_TYPES["StatefulSet"]
PVC = "kubernetes:core/v1:PersistentVolumeClaim"


def tsdb(storage_class: object | None) -> dict:
    obj = workload("StatefulSet", labels={"ems.io/component": "tsdb"})
    claim: dict = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "50Gi"}}}
    if storage_class is not None:
        claim["storageClassName"] = storage_class
    obj["spec"]["volumeClaimTemplates"] = [{"metadata": {"name": "data"}, "spec": claim}]
    return obj


def storage_class(name: str, provisioner: str) -> StackResource:
    return StackResource(SC, name, {"metadata": {"name": name}, "provisioner": provisioner,
                                    "parameters": {"encrypted": "true"}})


def test_tsdb_csi_storage() -> None:
    assert check_stack("tsdb-csi-storage", [storage_class("gp3", "ebs.csi.aws.com"),
                                            StackResource(STS, "tsdb", tsdb("gp3"))]) == []
    intree = [storage_class("gp2", "kubernetes.io/aws-ebs"), StackResource(STS, "tsdb", tsdb("gp2"))]
    assert check_stack("tsdb-csi-storage", intree)[0][0] == (
        "StatefulSet 'tsdb': TSDB claim spec.volumeClaimTemplates[0].spec uses StorageClass 'gp2' with provisioner "
        "'kubernetes.io/aws-ebs', which is not a CSI driver; use e.g. ebs.csi.aws.com or your private cloud's CSI "
        "driver (policy config csiProvisioners).")
    assert "storageClassName is unset" in check_stack("tsdb-csi-storage", [StackResource(STS, "t", tsdb(None))])[0][0]
    assert "is not a StorageClass of this stack" in check_stack(
        "tsdb-csi-storage", [StackResource(STS, "t", tsdb("fast"))])[0][0]
    local_path = [storage_class("lp", "rancher.io/local-path"), StackResource(STS, "t", tsdb("lp"))]
    assert check_stack("tsdb-csi-storage", local_path)
    assert check_stack("tsdb-csi-storage", local_path, config={"csiProvisioners": ["rancher.io/local-path"]}) == []


def test_tsdb_claim_with_unknown_class_follows_dependency() -> None:
    sc = StackResource(SC, "gp3", {"metadata": {"name": UNKNOWN_STRING_VALUE}, "provisioner": "ebs.csi.aws.com"})
    sts = StackResource(STS, "tsdb", tsdb(UNKNOWN_STRING_VALUE), property_dependencies={"spec": [sc]})
    assert check_stack("tsdb-csi-storage", [sc, sts]) == []
    orphan = StackResource(STS, "tsdb", tsdb(UNKNOWN_STRING_VALUE))
    assert "cannot verify spec.volumeClaimTemplates[0].spec.storageClassName" in check_stack(
        "tsdb-csi-storage", [orphan])[0][0]


def test_tsdb_pvc_and_non_tsdb_claims() -> None:
    pvc = {"metadata": {"name": "data", "labels": {"app.kubernetes.io/name": "prometheus"}},
           "spec": {"storageClassName": "hostpath"}}
    assert check_stack("tsdb-csi-storage", [storage_class("hostpath", "kubernetes.io/host-path"),
                                            StackResource(PVC, "data", pvc)])
    other = {"metadata": {"name": "cache", "labels": {"app": "cache"}}, "spec": {}}
    assert check_stack("tsdb-csi-storage", [StackResource(PVC, "cache", other)]) == []
