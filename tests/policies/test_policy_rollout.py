"""pod-config-change-rolls: a workload mounting a ConfigMap or Secret carries the config digest or runs the reloader."""

from __future__ import annotations

import copy

import pytest
from google.protobuf import struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

from policy_engine import POLICIES, UNKNOWN_OBJECT_VALUE, UNKNOWN_STRING_VALUE, check
from test_policy_egress import stub  # noqa: F401  (the pack as a subprocess, spoken to over gRPC)
from workload_fixtures import CONFIG_DIGEST, KIND_TYPES, container, pod_spec, template_spec, workload

NAME = "pod-config-change-rolls"
DEPLOY = KIND_TYPES["Deployment"]
HINT = ("so a changed file never reaches a process that read it at start; add template_metadata(config=...) "
        "(components/k8s_common.py) or the reloader (components/config_reload.py), or list the workload in exemptions.")


def _without_digest(obj: dict, kind: str = "Deployment") -> dict:
    out = copy.deepcopy(obj)
    template = out if kind == "Pod" else out["spec"]["template"]
    template["metadata"].pop("annotations", None)
    return out


def _message(kind: str, volume: str, where: str, sources: str) -> str:
    return (f"{kind} 'ingest': volume {volume!r} ({where}) mounts {sources}, but the pod template has no "
            f"{CONFIG_DIGEST} annotation and no 'config-reloader' sidecar mounting it (with shareProcessNamespace: "
            f"true), {HINT}")


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet", "DaemonSet"])
def test_a_workload_mounting_a_secret_without_the_digest_names_the_workload_and_the_volume(kind: str) -> None:
    assert check(NAME, KIND_TYPES.get(kind, f"kubernetes:apps/v1:{kind}"), workload(kind), name="ingest") == []
    bad = _without_digest(workload(kind))
    assert check(NAME, KIND_TYPES.get(kind, f"kubernetes:apps/v1:{kind}"), bad, name="ingest") == [
        _message(kind, "tls", "spec.template.spec.volumes[0]", "Secret 'ingest-tls'")]


def test_config_maps_and_projected_sources_count_and_other_volumes_do_not() -> None:
    spec = pod_spec(volumes=[
        {"name": "scratch", "emptyDir": {}},
        {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}},
                                                    {"downwardAPI": {"items": []}}]}},
        {"name": "config", "configMap": {"name": "ingest-config"}},
        {"name": "certs", "projected": {"sources": [{"secret": {"name": "a-tls"}}, {"configMap": {"name": "ca"}}]}},
    ])
    assert check(NAME, DEPLOY, _without_digest(workload(spec=spec)), name="ingest") == [
        _message("Deployment", "config", "spec.template.spec.volumes[2]", "ConfigMap 'ingest-config'"),
        _message("Deployment", "certs", "spec.template.spec.volumes[3]", "Secret 'a-tls', ConfigMap 'ca'")]
    token_only = pod_spec(volumes=spec["volumes"][:2])
    assert check(NAME, DEPLOY, _without_digest(workload(spec=token_only))) == []


def test_the_reloader_sidecar_counts_only_where_it_mounts_the_volume_and_shares_the_process_namespace() -> None:
    reloader = {**container("config-reloader", "quay.io/prometheus/prometheus:v2.53.2"),
                "volumeMounts": [{"name": "tls", "mountPath": "/etc/tls"}]}
    spec = pod_spec(containers=[container(), reloader], shareProcessNamespace=True)
    assert check(NAME, DEPLOY, _without_digest(workload(spec=spec))) == []
    unshared = _without_digest(workload(spec={**spec, "shareProcessNamespace": False}))
    assert check(NAME, DEPLOY, unshared, name="ingest") == [
        _message("Deployment", "tls", "spec.template.spec.volumes[0]", "Secret 'ingest-tls'")]
    elsewhere = copy.deepcopy(spec)
    elsewhere["volumes"].append({"name": "config", "configMap": {"name": "c"}})
    assert check(NAME, DEPLOY, _without_digest(workload(spec=elsewhere)), name="ingest") == [
        _message("Deployment", "config", "spec.template.spec.volumes[1]", "ConfigMap 'c'")]


def test_an_empty_digest_is_missing_an_unknown_one_is_there_and_exemptions_apply() -> None:
    obj = workload()
    obj["spec"]["template"]["metadata"]["annotations"][CONFIG_DIGEST] = " "
    assert len(check(NAME, DEPLOY, obj)) == 1
    obj["spec"]["template"]["metadata"]["annotations"][CONFIG_DIGEST] = UNKNOWN_STRING_VALUE    # a computed digest
    assert check(NAME, DEPLOY, obj) == []
    assert check(NAME, DEPLOY, _without_digest(workload()), name="ingest", config={"exemptions": ["ems/ingest"]}) == []
    assert check(NAME, DEPLOY, _without_digest(workload()), config={"annotation": "example.com/other"}) != []


def test_unknown_annotations_or_volumes_cannot_pass() -> None:
    obj = _without_digest(workload())
    obj["spec"]["template"]["metadata"]["annotations"] = UNKNOWN_OBJECT_VALUE
    assert check(NAME, DEPLOY, obj) == [
        "Deployment 'res': cannot verify spec.template.metadata.annotations because it is unknown during preview; "
        "set it from a literal or stack config, or run `pulumi up` only after a preview shows it"]
    obj = _without_digest(workload())
    template_spec(obj)["volumes"][0]["secret"] = UNKNOWN_OBJECT_VALUE
    assert check(NAME, DEPLOY, obj) == [
        "Deployment 'res': cannot verify spec.template.spec.volumes[0] because it is unknown during preview; "
        "set it from a literal or stack config, or run `pulumi up` only after a preview shows it"]


def test_pods_jobs_and_patches_that_leave_the_template_alone_are_not_its_business() -> None:
    assert check(NAME, KIND_TYPES["Pod"], _without_digest(workload("Pod"), "Pod")) == []
    assert check(NAME, KIND_TYPES["Job"], _without_digest(workload("Job"))) == []
    assert check(NAME, "kubernetes:apps/v1:DeploymentPatch", {"metadata": {"name": "x"}, "spec": {"replicas": 3}}) == []


def test_over_grpc_a_workload_without_the_digest_is_a_mandatory_violation(stub: analyzer_pb2_grpc.AnalyzerStub) -> None:  # noqa: F811
    def analyze(props: dict) -> list[tuple[str, int, str]]:
        struct = struct_pb2.Struct()
        struct.update(props)
        request = analyzer_pb2.AnalyzeRequest(type=DEPLOY, properties=struct, urn=f"urn:pulumi:dev::ems::{DEPLOY}::ingest",
                                              name="ingest")
        return [(d.policyName, d.enforcementLevel, d.message) for d in stub.Analyze(request, timeout=20).diagnostics
                if d.policyName == NAME]

    assert analyze(workload()) == []
    assert analyze(_without_digest(workload())) == [
        (NAME, analyzer_pb2.MANDATORY, f"{POLICIES[NAME].description}\n"
         + _message("Deployment", "tls", "spec.template.spec.volumes[0]", "Secret 'ingest-tls'"))]
