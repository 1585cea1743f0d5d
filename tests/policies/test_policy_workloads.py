"""Workload hardening policies on every pod-bearing kind, with engine-shaped inputs."""

from __future__ import annotations

import pytest

from policy_engine import POLICIES, UNKNOWN_BOOLEAN_VALUE, UNKNOWN_STRING_VALUE, check
from workload_fixtures import KIND_TYPES, container, first_container, pod_spec, template_spec, workload

WORKLOAD_POLICIES = [
    "container-ports-allowed",
    "container-privileged", "container-privilege-escalation", "container-run-as-non-root",
    "container-readonly-root-filesystem", "container-capabilities", "pod-seccomp-runtime-default",
    "pod-host-access", "container-resources", "container-image-pinned", "container-image-registry",
    "pod-sysctls-allowed", "secret-volume-mode", "serviceaccount-token-automount",
    "latency-critical-node-affinity",
]
DEPLOY = KIND_TYPES["Deployment"]


@pytest.mark.parametrize("kind", sorted(KIND_TYPES))
@pytest.mark.parametrize("policy", WORKLOAD_POLICIES)
def test_compliant_workload_passes(kind: str, policy: str) -> None:
    assert check(policy, KIND_TYPES[kind], workload(kind), name="ingest") == []


@pytest.mark.parametrize("kind", sorted(KIND_TYPES))
def test_every_kind_is_checked(kind: str) -> None:
    obj = workload(kind)
    first_container(obj, kind)["securityContext"]["privileged"] = True
    assert check("container-privileged", KIND_TYPES[kind], obj, name="ingest") == [
        f"{kind} 'ingest': container 'app' ({_path(kind)}.containers[0]): securityContext.privileged is true; "
        "remove it or set it to false."]


def _path(kind: str) -> str:
    return {"Pod": "spec", "CronJob": "spec.jobTemplate.spec.template.spec"}.get(kind, "spec.template.spec")


def test_init_and_ephemeral_containers_are_checked() -> None:
    spec = pod_spec(ephemeralContainers=[{"name": "debug", "image": "busybox:1.36",
                                          "securityContext": {"privileged": True}}])
    spec["initContainers"][0]["securityContext"]["privileged"] = True
    messages = check("container-privileged", DEPLOY, workload(spec=spec), name="ingest")
    assert [m.split(":")[1].strip() for m in messages] == [
        "container 'init' (spec.template.spec.initContainers[0])",
        "container 'debug' (spec.template.spec.ephemeralContainers[0])"]


def test_patch_and_other_api_versions_are_checked() -> None:
    obj = workload()
    first_container(obj)["securityContext"]["privileged"] = True
    assert check("container-privileged", "kubernetes:apps/v1:DeploymentPatch", obj)
    assert check("container-privileged", "kubernetes:extensions/v1beta1:Deployment", obj)
    items = {"items": [workload(), obj]}
    assert len(check("container-privileged", "kubernetes:apps/v1:DeploymentList", items)) == 1


def test_privilege_escalation_unset_counts_as_true() -> None:
    obj = workload()
    del first_container(obj)["securityContext"]["allowPrivilegeEscalation"]
    assert check("container-privilege-escalation", DEPLOY, obj, name="ingest") == [
        "Deployment 'ingest': container 'app' (spec.template.spec.containers[0]): "
        "securityContext.allowPrivilegeEscalation is unset, and Kubernetes defaults it to true; set it to false."]
    first_container(obj)["securityContext"]["allowPrivilegeEscalation"] = True
    assert "is true; set it to false" in check("container-privilege-escalation", DEPLOY, obj)[0]


def test_unknown_security_field_is_reported_not_passed() -> None:
    obj = workload()
    first_container(obj)["securityContext"]["allowPrivilegeEscalation"] = UNKNOWN_BOOLEAN_VALUE
    assert check("container-privilege-escalation", DEPLOY, obj, name="ingest") == [
        "Deployment 'ingest': container 'app' (spec.template.spec.containers[0]): cannot verify "
        "spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation because it is unknown during "
        "preview; set it from a literal or stack config, or run `pulumi up` only after a preview shows it"]


def test_unknown_whole_pod_spec_is_reported() -> None:
    obj = workload()
    obj["spec"]["template"]["spec"] = "dd056dcd-154b-4c76-9bd3-c8f88648b5ff"  # UNKNOWN_OBJECT_VALUE
    for policy in ("container-privileged", "pod-host-access", "serviceaccount-token-automount"):
        assert check(policy, DEPLOY, obj) == [
            "Deployment 'res': cannot verify spec.template.spec because it is unknown during preview; "
            "set it from a literal or stack config, or run `pulumi up` only after a preview shows it"], policy


def test_run_as_root_variants() -> None:
    spec = pod_spec()
    del spec["securityContext"]["runAsNonRoot"]
    msgs = check("container-run-as-non-root", DEPLOY, workload(spec=spec))
    assert len(msgs) == 2 and all("runAsNonRoot is unset" in m for m in msgs)  # app and init
    # pod-level true, container override false
    obj = workload()
    first_container(obj)["securityContext"]["runAsNonRoot"] = False
    assert ["runAsNonRoot is false" in m for m in check("container-run-as-non-root", DEPLOY, obj)] == [True]
    # runAsUser 0 with runAsNonRoot true is still root
    obj = workload()
    first_container(obj)["securityContext"]["runAsUser"] = 0
    assert check("container-run-as-non-root", DEPLOY, obj) == [
        "Deployment 'res': container 'app' (spec.template.spec.containers[0]): runAsUser is 0 (root) at the "
        "container level; use a non-zero id (runAsNonRoot does not make uid 0 safe, it makes the pod fail to start)."]


def test_security_context_only_at_container_level_is_enough_for_non_root() -> None:
    spec = pod_spec(securityContext={"seccompProfile": {"type": "RuntimeDefault"}})
    for c in spec["containers"] + spec["initContainers"]:
        c["securityContext"].update(runAsNonRoot=True, runAsUser=1000)
    assert check("container-run-as-non-root", DEPLOY, workload(spec=spec)) == []


def test_read_only_root_filesystem() -> None:
    obj = workload()
    del first_container(obj)["securityContext"]["readOnlyRootFilesystem"]
    assert "readOnlyRootFilesystem is unset; set it to true" in check(
        "container-readonly-root-filesystem", DEPLOY, obj)[0]


def test_capabilities_drop_all_and_add() -> None:
    obj = workload()
    caps = first_container(obj)["securityContext"]["capabilities"]
    caps["add"] = ["NET_ADMIN"]
    caps["drop"] = ["NET_RAW"]
    assert check("container-capabilities", DEPLOY, obj) == [
        "Deployment 'res': container 'app' (spec.template.spec.containers[0]): securityContext.capabilities.drop "
        "is ['NET_RAW']; it must contain \"ALL\" (add back only what the process needs).",
        "Deployment 'res': container 'app' (spec.template.spec.containers[0]): securityContext.capabilities.add is "
        "['NET_ADMIN']; ['NET_ADMIN'] are not allowed (policy config allowedCapabilities: []). Remove them."]
    caps["drop"] = ["ALL"]
    caps["add"] = ["NET_BIND_SERVICE"]
    assert check("container-capabilities", DEPLOY, obj, config={"allowedCapabilities": ["NET_BIND_SERVICE"]}) == []
    del first_container(obj)["securityContext"]["capabilities"]
    assert "drop is []" in check("container-capabilities", DEPLOY, obj)[0]


@pytest.mark.parametrize("profile,expected", [
    ({"type": "Unconfined"}, "seccompProfile.type is 'Unconfined' at the container level"),
    ({"type": "Localhost", "localhostProfile": "x.json"}, "seccompProfile.type is 'Localhost' at the container level"),
])
def test_seccomp_container_override(profile: dict, expected: str) -> None:
    obj = workload()
    first_container(obj)["securityContext"]["seccompProfile"] = profile
    msgs = check("pod-seccomp-runtime-default", DEPLOY, obj)
    assert len(msgs) == 1 and expected in msgs[0]


def test_seccomp_unset_and_deprecated_annotation() -> None:
    spec = pod_spec()
    del spec["securityContext"]["seccompProfile"]
    msgs = check("pod-seccomp-runtime-default", DEPLOY, workload(spec=spec))
    assert len(msgs) == 2 and "no seccompProfile at container or pod level" in msgs[0]
    obj = workload()
    obj["spec"]["template"]["metadata"]["annotations"] = {"seccomp.security.alpha.kubernetes.io/pod": "unconfined"}
    assert "remove the deprecated seccomp annotation" in check("pod-seccomp-runtime-default", DEPLOY, obj)[0]


def test_host_access_and_exemptions() -> None:
    spec = pod_spec(hostNetwork=True, hostPID=True, hostIPC=False,
                    volumes=[{"name": "root", "hostPath": {"path": "/"}}])
    spec["containers"][0]["ports"] = [{"containerPort": 1883, "hostPort": 1883}]
    msgs = check("pod-host-access", DEPLOY, workload(spec=spec), name="bridge")
    assert msgs == [
        "Deployment 'bridge': spec.template.spec.hostNetwork is true; remove it, or add the workload to the policy "
        "config exemptions (pod-host-access) with a reason in review.",
        "Deployment 'bridge': spec.template.spec.hostPID is true; remove it, or add the workload to the policy "
        "config exemptions (pod-host-access) with a reason in review.",
        "Deployment 'bridge': spec.template.spec.volumes[0] ('root') mounts hostPath '/'; use a "
        "PersistentVolumeClaim, ConfigMap or emptyDir.",
        "Deployment 'bridge': container 'app' spec.template.spec.containers[0].ports[0].hostPort is 1883; remove "
        "hostPort and expose the port through a Service."]
    for exemption in ("bridge", "ingest", "ems/ingest"):
        assert check("pod-host-access", DEPLOY, workload(spec=spec), name="bridge",
                     config={"exemptions": [exemption]}) == []
    assert len(check("pod-host-access", DEPLOY, workload(spec=spec), name="bridge",
                     config={"exemptions": ["other"]})) == 4


def test_resources_requests_and_limits() -> None:
    obj = workload()
    first_container(obj)["resources"] = {"requests": {"cpu": "100m"}}
    assert check("container-resources", DEPLOY, obj) == [
        "Deployment 'res': container 'app' (spec.template.spec.containers[0]): resources.requests has no memory; "
        "set resources.requests.cpu and resources.requests.memory.",
        "Deployment 'res': container 'app' (spec.template.spec.containers[0]): resources.limits has no cpu or "
        "memory; set resources.limits.cpu and resources.limits.memory."]


@pytest.mark.parametrize("image,ok", [
    ("ghcr.io/x/y", False), ("ghcr.io/x/y:latest", False), ("eclipse-mosquitto", False),
    ("eclipse-mosquitto:LATEST", False), ("registry.k8s.io:443/pause", False),
    ("ghcr.io/x/y@sha256:" + "a" * 64, True), ("ghcr.io/x/y@sha256:abc", False),
    ("ghcr.io/x/y:1.2.3", True), ("eclipse-mosquitto:2.0.18", True), ("localhost:5000/y:1", True), ("", False),
])
def test_image_pinned(image: str, ok: bool) -> None:
    obj = workload()
    first_container(obj)["image"] = image
    msgs = check("container-image-pinned", DEPLOY, obj)
    assert (msgs == []) is ok, msgs


@pytest.mark.parametrize("image,ok", [
    ("eclipse-mosquitto:2.0.18", True), ("docker.io/library/redis:7", True), ("index.docker.io/x/y:1", True),
    ("quay.io/prometheus/prometheus:v2.42.0", True), ("public.ecr.aws/x/y:1", True),
    ("ghcr.io.evil.example/x/y:1", False), ("evil.example/ghcr.io/x:1", False), ("localhost:5000/y:1", False),
    ("123456789012.dkr.ecr.eu-west-1.amazonaws.com/ems/ingest:1", False),
])
def test_image_registry(image: str, ok: bool) -> None:
    obj = workload()
    first_container(obj)["image"] = image
    msgs = check("container-image-registry", DEPLOY, obj)
    assert (msgs == []) is ok, msgs


def test_image_registry_config_accepts_own_registry_prefix() -> None:
    obj = workload()
    first_container(obj)["image"] = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/ems/ingest:1"
    cfg = {"allowedRegistries": ["docker.io", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/ems"]}
    assert check("container-image-registry", DEPLOY, obj, config=cfg) == []
    first_container(obj)["image"] = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/other/x:1"
    assert check("container-image-registry", DEPLOY, obj, config=cfg)


def test_image_unknown_is_reported() -> None:
    obj = workload()
    first_container(obj)["image"] = UNKNOWN_STRING_VALUE
    assert "cannot verify spec.template.spec.containers[0].image" in check("container-image-pinned", DEPLOY, obj)[0]


def test_sysctls() -> None:
    spec = pod_spec()
    spec["securityContext"]["sysctls"] = [{"name": "net.core.somaxconn", "value": "1024"},
                                          {"name": "net.ipv4.tcp_fin_timeout", "value": "15"},
                                          {"name": "kernel.msgmax", "value": "65536"}]
    assert check("pod-sysctls-allowed", DEPLOY, workload(spec=spec)) == [
        "Deployment 'res': spec.template.spec.securityContext.sysctls[2] sets 'kernel.msgmax', an unsafe sysctl not "
        "in the allow-list; use a safe sysctl, set it at node level, or add it to allowedUnsafeSysctls (now "
        "['net.core.somaxconn']) and to the kubelet's allowedUnsafeSysctls."]
    assert len(check("pod-sysctls-allowed", DEPLOY, workload(spec=spec), config={"allowedUnsafeSysctls": []})) == 2


@pytest.mark.parametrize("volume,expected", [
    ({"secret": {"secretName": "s"}}, "defaultMode is unset, so Kubernetes uses 0644 (420)"),
    ({"secret": {"secretName": "s", "defaultMode": 420}}, "defaultMode is 0o644 (420)"),
    ({"secret": {"secretName": "s", "defaultMode": 0o407}}, "defaultMode is 0o407 (263)"),
    ({"secret": {"secretName": "s", "defaultMode": 256, "items": [{"key": "k", "path": "k", "mode": 0o777}]}},
     "items[0].mode is 0o777 (511)"),
    ({"projected": {"sources": [{"secret": {"name": "s"}}]}}, "projected.defaultMode is unset"),
])
def test_secret_volume_mode(volume: dict, expected: str) -> None:
    spec = pod_spec(volumes=[{"name": "v", **volume}])
    msgs = check("secret-volume-mode", DEPLOY, workload(spec=spec))
    assert len(msgs) == 1 and expected in msgs[0], msgs


def test_secret_volume_mode_accepts_0440_and_0400() -> None:
    for mode in (0o440, 0o400, 0o040):
        spec = pod_spec(volumes=[{"name": "v", "secret": {"secretName": "s", "defaultMode": mode}}])
        assert check("secret-volume-mode", DEPLOY, workload(spec=spec)) == []


def test_pod_token_automount() -> None:
    spec = pod_spec()
    del spec["automountServiceAccountToken"]
    obj = workload(spec=spec)
    assert check("serviceaccount-token-automount", DEPLOY, obj) == [
        "Deployment 'res': spec.template.spec.automountServiceAccountToken is unset (inherits the service account, "
        "which defaults to true); set it to false, or annotate the pod template ems.io/needs-api-token: \"true\" if "
        "it calls the Kubernetes API."]
    obj["spec"]["template"]["metadata"]["annotations"] = {"ems.io/needs-api-token": "true"}
    assert check("serviceaccount-token-automount", DEPLOY, obj) == []


def test_all_workload_policies_are_mandatory() -> None:
    assert {POLICIES[p].enforcement_level.value for p in WORKLOAD_POLICIES} == {"mandatory"}


def test_container_fixture_is_compliant_for_other_images() -> None:
    # guards the fixtures: the init container uses a bare Docker Hub name
    assert container("x", "eclipse-mosquitto:2.0.18")["image"] == "eclipse-mosquitto:2.0.18"
    assert template_spec(workload("Pod"), "Pod")["containers"][0]["name"] == "app"


@pytest.mark.parametrize("where,ctx,expected", [
    ("container", {"procMount": "Unmasked"}, "securityContext.procMount is 'Unmasked'"),
    ("container", {"seLinuxOptions": {"type": "spc_t"}}, "seLinuxOptions.type is 'spc_t' at the container level"),
    ("pod", {"seLinuxOptions": {"type": "unconfined_t"}}, "seLinuxOptions.type is 'unconfined_t' at the pod level"),
    ("container", {"appArmorProfile": {"type": "Unconfined"}}, "appArmorProfile.type is 'Unconfined'"),
    ("container", {"windowsOptions": {"hostProcess": True}}, "windowsOptions.hostProcess is set"),
])
def test_privileged_equivalents(where: str, ctx: dict, expected: str) -> None:
    obj = workload()
    target = first_container(obj)["securityContext"] if where == "container" else template_spec(obj)["securityContext"]
    target.update(ctx)
    msgs = check("container-privileged", DEPLOY, obj)
    assert msgs and expected in msgs[0], msgs


def test_apparmor_annotation_unconfined() -> None:
    obj = workload()
    obj["spec"]["template"]["metadata"]["annotations"] = {
        "container.apparmor.security.beta.kubernetes.io/app": "unconfined"}
    assert "remove it (use runtime/default)" in check("container-privileged", DEPLOY, obj)[0]


def test_host_path_persistent_volume() -> None:
    pv = {"spec": {"capacity": {"storage": "1Gi"}, "hostPath": {"path": "/etc"}, "accessModes": ["ReadWriteOnce"]}}
    assert check("pod-host-access", "kubernetes:core/v1:PersistentVolume", pv, name="pv") == [
        "PersistentVolume 'pv': spec.hostPath '/etc' exposes a node directory to any claim bound to it; use a CSI "
        "StorageClass (or a local volume with node affinity)."]


def test_custom_resource_with_pod_template_is_checked() -> None:
    rollout = workload()
    first_container(rollout)["securityContext"]["privileged"] = True
    msgs = check("container-privileged", "kubernetes:argoproj.io/v1alpha1:Rollout", rollout, name="r")
    assert msgs == ["Rollout 'r': container 'app' (spec.template.spec.containers[0]): securityContext.privileged is "
                    "true; remove it or set it to false."]
    assert check("container-privileged", "kubernetes:core/v1:ConfigMap", {"data": {"a": "b"}}) == []


def test_patch_without_pod_template_is_not_a_pod() -> None:
    patch = {"metadata": {"name": "ingest"}, "spec": {"replicas": 3}}
    for policy in WORKLOAD_POLICIES:
        assert check(policy, "kubernetes:apps/v1:DeploymentPatch", patch) == [], policy


VOLUME_POLICIES = ("pod-config-change-rolls", "pod-host-access", "secret-volume-mode", "serviceaccount-token-automount")


@pytest.mark.parametrize("volumes, where", [
    ("dd056dcd-154b-4c76-9bd3-c8f88648b5ff", "spec.template.spec.volumes"),                           # the list
    ([{"name": "scratch", "emptyDir": {}}, "dd056dcd-154b-4c76-9bd3-c8f88648b5ff"], "spec.template.spec.volumes[1]"),
])
def test_every_volume_policy_names_an_unknown_volume_by_the_same_path(volumes: object, where: str) -> None:
    """The policies that read pod volumes walk them with one iterator, so an unknown one is named alike by each."""
    obj = workload(spec=pod_spec(volumes=volumes))
    del obj["spec"]["template"]["metadata"]["annotations"]      # no config digest: pod-config-change-rolls reads the volumes
    for policy in VOLUME_POLICIES:
        assert check(policy, DEPLOY, obj, name="ingest") == [
            f"Deployment 'ingest': cannot verify {where} because it is unknown during preview; "
            "set it from a literal or stack config, or run `pulumi up` only after a preview shows it"], policy
