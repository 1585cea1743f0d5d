"""Workload hardening for every pod-bearing kind: Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet,
ReplicationController, Job, CronJob and PodTemplate (any API version, patches and lists too).

Every container is checked: ``containers``, ``initContainers`` and ``ephemeralContainers``.
Container-level ``securityContext`` overrides the pod level for runAsNonRoot, runAsUser, runAsGroup
and seccompProfile, so a safe pod default cannot hide an unsafe container override.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import pulumi.runtime

from .props import (
    UNKNOWN, Resource, as_bool, as_int, dig, elements, entries, get, k8s_objects, k8s_type, label_is_true,
    resource_policy, strings, unknown_message,
)

WORKLOAD_KINDS = ("Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController",
                  "Job", "CronJob", "PodTemplate")
CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")

NEEDS_API_TOKEN = "ems.io/needs-api-token"


@dataclass(frozen=True)
class PodTemplate:
    """The pod part of a workload object: its metadata, its spec and where the spec lives."""

    kind: str
    obj: Any            # the whole Kubernetes object
    metadata: Any       # pod (template) metadata
    spec: Any           # pod spec (UNKNOWN when unknown)
    path: str           # e.g. "spec.template.spec"


def pod_templates(resource_type: str, props: Any) -> list[PodTemplate]:
    """Every pod template a resource declares (one per object; List kinds may hold several)."""
    out = []
    for kind, obj in k8s_objects(resource_type, props):
        if kind not in WORKLOAD_KINDS:
            # A custom resource that embeds a pod template (Argo Rollout, OpenKruise CloneSet, …)
            # gets the same checks as a Deployment.
            for path in (("spec", "template"), ("spec", "jobTemplate", "spec", "template")):
                template = dig(obj, *path)
                if template is not UNKNOWN and get(get(template, "spec"), "containers") is not None:
                    out.append(PodTemplate(kind, obj, get(template, "metadata"), get(template, "spec"),
                                           ".".join(path) + ".spec"))
            continue
        if kind == "Pod":
            out.append(PodTemplate(kind, obj, get(obj, "metadata"), get(obj, "spec"), "spec"))
        elif kind == "PodTemplate":
            out.append(PodTemplate(kind, obj, dig(obj, "template", "metadata"), dig(obj, "template", "spec"),
                                   "template.spec"))
        elif kind == "CronJob":
            template = dig(obj, "spec", "jobTemplate", "spec", "template")
            out.append(PodTemplate(kind, obj, get(template, "metadata"), get(template, "spec"),
                                   "spec.jobTemplate.spec.template.spec"))
        else:
            template = dig(obj, "spec", "template")
            out.append(PodTemplate(kind, obj, get(template, "metadata"), get(template, "spec"),
                                   "spec.template.spec"))
    return out


def containers(template: PodTemplate) -> Iterator[tuple[str, str, Any]]:
    """``(path, display name, container)`` for every container of every list; UNKNOWN lists yield once."""
    for field in CONTAINER_LISTS:
        items = elements(get(template.spec, field))
        if items is UNKNOWN:
            yield f"{template.path}.{field}", "?", UNKNOWN
            continue
        for i, container in enumerate(items):
            name = get(container, "name")
            label = name if isinstance(name, str) else f"#{i}"
            yield f"{template.path}.{field}[{i}]", label, container


def pod_volumes(template: PodTemplate) -> Iterator[tuple[str, Any]]:
    """``(path, volume)`` for every volume of the pod spec (a volume may be UNKNOWN); none when the spec has no
    volumes; an UNKNOWN list yields once, as ``("<spec path>.volumes", UNKNOWN)``."""
    volumes = elements(get(template.spec, "volumes"))
    if volumes is UNKNOWN:
        yield f"{template.path}.volumes", UNKNOWN
        return
    for i, volume in enumerate(volumes):
        yield f"{template.path}.volumes[{i}]", volume


def workload_identity(res: Resource, template: PodTemplate) -> set[str]:
    """Names an exemption may use: the Pulumi name, metadata.name and namespace/metadata.name."""
    names = {res.name}
    meta = get(template.obj, "metadata")
    name, namespace = get(meta, "name"), get(meta, "namespace")
    if isinstance(name, str):
        names.add(name)
        if isinstance(namespace, str):
            names.add(f"{namespace}/{name}")
    return names


def _for_each_container(res: Resource, rule) -> Iterator[str]:
    templates = pod_templates(res.resource_type, res.props)
    for template in templates:
        if template.spec is UNKNOWN:
            yield unknown_message(res.subject, template.path)
            continue
        pod_ctx = get(template.spec, "securityContext")
        for path, name, container in containers(template):
            if container is UNKNOWN:
                yield unknown_message(res.subject, path)
                continue
            subject = f"{res.subject}: container '{name}' ({path})"
            yield from rule(subject, path, container, pod_ctx, template)


def applies_to_pods(resource_type: str) -> bool:
    """Every Kubernetes type: the standard workload kinds, and custom kinds embedding a pod template."""
    return k8s_type(resource_type) is not None


_applies = applies_to_pods


# --------------------------------------------------------------------------- securityContext rules

SELINUX_TYPES = ("container_t", "container_init_t", "container_kvm_t", "container_engine_t")


def _privileged(res: Resource, _cfg: dict) -> Iterator[str]:
    """privileged, and its equivalents Pod Security "baseline" also forbids."""
    def rule(subject, path, container, pod_ctx, template):
        ctx = get(container, "securityContext")
        value = as_bool(get(ctx, "privileged"))
        if value is UNKNOWN:
            yield unknown_message(subject, f"{path}.securityContext.privileged")
        elif value:
            yield f"{subject}: securityContext.privileged is true; remove it or set it to false."
        proc = get(ctx, "procMount")
        if proc is UNKNOWN or proc not in (None, "Default"):
            yield f"{subject}: securityContext.procMount is {proc!r}; remove it (Default masks /proc)."
        host_process, _ = _effective(container, pod_ctx, "windowsOptions")
        if as_bool(get(host_process, "hostProcess")) is not False and get(host_process, "hostProcess") is not None:
            yield f"{subject}: windowsOptions.hostProcess is set; host processes are privileged — remove it."
        selinux, level = _effective(container, pod_ctx, "seLinuxOptions")
        se_type = get(selinux, "type")
        if se_type is UNKNOWN or (se_type is not None and se_type not in SELINUX_TYPES):
            yield (f"{subject}: seLinuxOptions.type is {se_type!r} at the {level} level; use one of "
                   f"{list(SELINUX_TYPES)} or leave it unset.")
        for key in ("user", "role"):
            if get(selinux, key) is not None:
                yield f"{subject}: seLinuxOptions.{key} is set at the {level} level; remove it."
        apparmor, level = _effective(container, pod_ctx, "appArmorProfile")
        aa_type = get(apparmor, "type")
        if aa_type is UNKNOWN or aa_type == "Unconfined":
            yield (f"{subject}: appArmorProfile.type is {aa_type!r} at the {level} level; use RuntimeDefault "
                   "or leave it unset.")
        annotations = get(template.metadata, "annotations")
        name = get(container, "name")
        note = get(annotations, f"container.apparmor.security.beta.kubernetes.io/{name}")
        if note is UNKNOWN or note == "unconfined":
            yield (f"{subject}: annotation container.apparmor.security.beta.kubernetes.io/{name} is {note!r}; "
                   "remove it (use runtime/default).")
    yield from _for_each_container(res, rule)


def _escalation(res: Resource, _cfg: dict) -> Iterator[str]:
    def rule(subject, path, container, _pod, _t):
        ctx = get(container, "securityContext")
        value = as_bool(get(ctx, "allowPrivilegeEscalation"))
        if value is UNKNOWN:
            yield unknown_message(subject, f"{path}.securityContext.allowPrivilegeEscalation")
        elif value is None:
            yield (f"{subject}: securityContext.allowPrivilegeEscalation is unset, and Kubernetes defaults it "
                   "to true; set it to false.")
        elif value:
            yield f"{subject}: securityContext.allowPrivilegeEscalation is true; set it to false."
    yield from _for_each_container(res, rule)


def _effective(container: Any, pod_ctx: Any, key: str) -> tuple[Any, str]:
    """The container-level value if set, else the pod-level one, with where it came from."""
    value = dig(container, "securityContext", key)
    if value is not None:
        return value, "container"
    value = get(pod_ctx, key)
    return value, "pod"


def _non_root(res: Resource, _cfg: dict) -> Iterator[str]:
    def rule(subject, path, container, pod_ctx, _t):
        non_root, level = _effective(container, pod_ctx, "runAsNonRoot")
        non_root = as_bool(non_root)
        if non_root is UNKNOWN:
            yield unknown_message(subject, f"securityContext.runAsNonRoot ({level} level)")
        elif non_root is not True:
            state = "unset" if non_root is None else "false"
            yield (f"{subject}: runAsNonRoot is {state} (container and pod securityContext); "
                   "set securityContext.runAsNonRoot: true and a non-zero runAsUser.")
        for key in ("runAsUser", "runAsGroup"):
            raw, level = _effective(container, pod_ctx, key)
            value = as_int(raw)
            if value is UNKNOWN:
                yield unknown_message(subject, f"securityContext.{key} ({level} level)")
            elif value == 0:
                yield (f"{subject}: {key} is 0 (root) at the {level} level; use a non-zero id "
                       "(runAsNonRoot does not make uid 0 safe, it makes the pod fail to start).")
    yield from _for_each_container(res, rule)


def _read_only_root(res: Resource, _cfg: dict) -> Iterator[str]:
    def rule(subject, path, container, _pod, _t):
        value = as_bool(dig(container, "securityContext", "readOnlyRootFilesystem"))
        if value is UNKNOWN:
            yield unknown_message(subject, f"{path}.securityContext.readOnlyRootFilesystem")
        elif value is not True:
            state = "unset" if value is None else "false"
            yield (f"{subject}: securityContext.readOnlyRootFilesystem is {state}; set it to true and mount an "
                   "emptyDir for paths the process writes.")
    yield from _for_each_container(res, rule)


def _capabilities(res: Resource, cfg: dict) -> Iterator[str]:
    allowed_add = {str(c).upper().removeprefix("CAP_") for c in cfg.get("allowedCapabilities") or []}

    def rule(subject, path, container, _pod, _t):
        caps = dig(container, "securityContext", "capabilities")
        drop, add = strings(get(caps, "drop")), strings(get(caps, "add"))
        if drop is UNKNOWN:
            yield unknown_message(subject, f"{path}.securityContext.capabilities.drop")
        elif "ALL" not in drop:
            yield (f"{subject}: securityContext.capabilities.drop is {drop}; it must contain \"ALL\" "
                   "(add back only what the process needs).")
        if add is UNKNOWN:
            yield unknown_message(subject, f"{path}.securityContext.capabilities.add")
        else:
            extra = [c for c in add if c.upper().removeprefix("CAP_") not in allowed_add]
            if extra:
                yield (f"{subject}: securityContext.capabilities.add is {add}; {extra} are not allowed "
                       f"(policy config allowedCapabilities: {sorted(allowed_add)}). Remove them.")
    yield from _for_each_container(res, rule)


def _seccomp(res: Resource, _cfg: dict) -> Iterator[str]:
    for template in pod_templates(res.resource_type, res.props):
        annotations = get(template.metadata, "annotations")
        for key, value in entries(annotations) if annotations is not UNKNOWN else []:
            if key.startswith("seccomp.security.alpha.kubernetes.io/") or key.startswith(
                    "container.seccomp.security.alpha.kubernetes.io/"):
                if value is UNKNOWN or str(value) not in ("runtime/default", "docker/default"):
                    yield (f"{res.subject}: annotation {key} is {value!r}; remove the deprecated seccomp "
                           "annotation and set securityContext.seccompProfile.type: RuntimeDefault.")

    def rule(subject, path, container, pod_ctx, _t):
        profile, level = _effective(container, pod_ctx, "seccompProfile")
        kind = get(profile, "type")
        if kind is UNKNOWN:
            yield unknown_message(subject, f"securityContext.seccompProfile.type ({level} level)")
        elif kind is None:
            yield (f"{subject}: no seccompProfile at container or pod level (the runtime default is Unconfined); "
                   "set securityContext.seccompProfile.type: RuntimeDefault on the pod.")
        elif kind != "RuntimeDefault":
            yield (f"{subject}: seccompProfile.type is {kind!r} at the {level} level; "
                   "only RuntimeDefault is allowed.")
    yield from _for_each_container(res, rule)


# --------------------------------------------------------------------------- host access

def _host_access(res: Resource, cfg: dict) -> Iterator[str]:
    exempt = {str(e) for e in cfg.get("exemptions") or []}
    for kind, obj in k8s_objects(res.resource_type, res.props):
        if kind == "PersistentVolume" and res.name not in exempt:
            host_path = dig(obj, "spec", "hostPath")
            if host_path is UNKNOWN:
                yield unknown_message(res.subject, "spec.hostPath")
            elif host_path is not None:
                yield (f"{res.subject}: spec.hostPath {get(host_path, 'path')!r} exposes a node directory to any "
                       "claim bound to it; use a CSI StorageClass (or a local volume with node affinity).")
    for template in pod_templates(res.resource_type, res.props):
        if workload_identity(res, template) & exempt:
            continue
        spec = template.spec
        if spec is UNKNOWN:
            yield unknown_message(res.subject, template.path)
            continue
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            value = as_bool(get(spec, key))
            if value is UNKNOWN:
                yield unknown_message(res.subject, f"{template.path}.{key}")
            elif value:
                yield (f"{res.subject}: {template.path}.{key} is true; remove it, or add the workload to the "
                       "policy config exemptions (pod-host-access) with a reason in review.")
        for where, volume in pod_volumes(template):
            host_path = get(volume, "hostPath")
            if host_path is UNKNOWN or volume is UNKNOWN:
                yield unknown_message(res.subject, where)
            elif host_path is not None:
                yield (f"{res.subject}: {where} ('{get(volume, 'name')}') mounts hostPath "
                       f"{get(host_path, 'path')!r}; use a PersistentVolumeClaim, ConfigMap or emptyDir.")
        for path, name, container in containers(template):
            if container is UNKNOWN:
                yield unknown_message(res.subject, path)
                continue
            ports = elements(get(container, "ports"))
            if ports is UNKNOWN:
                yield unknown_message(res.subject, f"{path}.ports")
                continue
            for p, port in enumerate(ports):
                host_port = as_int(get(port, "hostPort"))
                if host_port is UNKNOWN:
                    yield unknown_message(res.subject, f"{path}.ports[{p}].hostPort")
                elif host_port:
                    yield (f"{res.subject}: container '{name}' {path}.ports[{p}].hostPort is {host_port}; "
                           "remove hostPort and expose the port through a Service.")


# --------------------------------------------------------------------------- resources

def _resources(res: Resource, _cfg: dict) -> Iterator[str]:
    def rule(subject, path, container, _pod, _t):
        if ".ephemeralContainers[" in path:
            return  # the API forbids resources on ephemeral containers
        for section in ("requests", "limits"):
            values = dig(container, "resources", section)
            if values is UNKNOWN:
                yield unknown_message(subject, f"{path}.resources.{section}")
                continue
            missing = [k for k in ("cpu", "memory") if get(values, k) in (None, "")]
            unknown = [k for k in ("cpu", "memory") if get(values, k) is UNKNOWN]
            for key in unknown:
                yield unknown_message(subject, f"{path}.resources.{section}.{key}")
            if missing:
                yield (f"{subject}: resources.{section} has no {' or '.join(missing)}; "
                       f"set resources.{section}.cpu and resources.{section}.memory.")
    yield from _for_each_container(res, rule)


# --------------------------------------------------------------------------- images

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_DOCKER_HUB_ALIASES = {"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com", "docker.io"}


@dataclass(frozen=True)
class ImageRef:
    registry: str    # docker.io for bare names
    repository: str  # path without registry
    tag: Optional[str]
    digest: Optional[str]


def parse_image(image: str) -> ImageRef:
    """Split an image reference the way the container runtime does (docker/distribution reference)."""
    rest, digest = (image.split("@", 1) + [None])[:2] if "@" in image else (image, None)
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        registry, path = first.lower(), remainder
    else:
        registry, path = "docker.io", rest
    if registry in _DOCKER_HUB_ALIASES:
        registry = "docker.io"
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = last.split(":", 1)
        path = path[: len(path) - len(last)] + name
    return ImageRef(registry, path, tag, digest)


def _image_pinned(res: Resource, cfg: dict) -> Iterator[str]:
    forbidden = {str(t).lower() for t in cfg.get("forbiddenTags") or []}

    def rule(subject, path, container, _pod, _t):
        image = get(container, "image")
        if image is UNKNOWN:
            yield unknown_message(subject, f"{path}.image")
            return
        if not isinstance(image, str) or not image.strip():
            yield f"{subject}: image is empty; set an image with an explicit version tag or @sha256 digest."
            return
        ref = parse_image(image.strip())
        if ref.digest is not None:
            if not _DIGEST.match(ref.digest):
                yield f"{subject}: image {image!r} has a malformed digest; use @sha256:<64 hex digits>."
            return
        if not ref.tag:
            yield (f"{subject}: image {image!r} has no tag, so it floats to latest; "
                   "pin a version tag (e.g. :2.0.18) or an @sha256 digest.")
        elif ref.tag.lower() in forbidden:
            yield f"{subject}: image {image!r} uses the floating tag {ref.tag!r}; pin a version tag or an @sha256 digest."

    yield from _for_each_container(res, rule)


def registry_allowed(ref: ImageRef, allowed: list[str]) -> bool:
    full = f"{ref.registry}/{ref.repository}"
    for entry in allowed:
        entry = entry.strip().rstrip("/").lower()
        if entry in _DOCKER_HUB_ALIASES:
            entry = "docker.io"
        if ref.registry == entry or full.lower().startswith(entry + "/"):
            return True
    return False


def _for_each_image(res: Resource, check) -> Iterator[str]:
    """``check(subject, image)`` for every container's non-empty image; an unknown image is reported here,
    an empty one is left to container-image-pinned."""
    def rule(subject, path, container, _pod, _t):
        image = get(container, "image")
        if image is UNKNOWN:
            yield unknown_message(subject, f"{path}.image")
        elif isinstance(image, str) and image.strip():
            yield from check(subject, image)
    yield from _for_each_container(res, rule)


def _image_registry(res: Resource, cfg: dict) -> Iterator[str]:
    allowed = [str(r) for r in cfg.get("allowedRegistries") or []]

    def check(subject, image):
        ref = parse_image(image.strip())
        if not registry_allowed(ref, allowed):
            yield (f"{subject}: image {image!r} comes from registry {ref.registry!r}, which is not allowed; "
                   f"use one of {allowed} or add the registry to the policy config allowedRegistries.")
    yield from _for_each_image(res, check)


def stack_environment(cfg: dict) -> str:
    """The stack's environment from its config (PULUMI_CONFIG, as the CLI hands it over), else the default."""
    value = pulumi.runtime.get_config(str(cfg.get("environmentConfigKey")))
    if isinstance(value, str) and value.strip():
        return value.strip().strip('"')
    return str(cfg.get("defaultEnvironment"))


def _image_digest(res: Resource, cfg: dict) -> Iterator[str]:
    environment = stack_environment(cfg)
    if environment not in {str(e) for e in cfg.get("productionEnvironments") or []}:
        return

    def check(subject, image):
        digest = parse_image(image.strip()).digest
        if digest is None or not _DIGEST.match(digest):
            yield (f"{subject}: image {image!r} is not pinned by digest on a {environment!r} stack "
                   f"({cfg.get('environmentConfigKey')}); a tag can be moved, so deploy IMAGE@sha256:<64 hex>: set "
                   "ems:images, or take the release's digests (images.lock.json, written by the images workflow).")
    yield from _for_each_image(res, check)


# --------------------------------------------------------------------------- sysctls

# Namespaced sysctls Kubernetes (1.32) considers safe: allowed by every kubelet.
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
})


def _sysctls(res: Resource, cfg: dict) -> Iterator[str]:
    allowed = SAFE_SYSCTLS | {str(s).replace("/", ".") for s in cfg.get("allowedUnsafeSysctls") or []}
    for template in pod_templates(res.resource_type, res.props):
        items = elements(dig(template.spec, "securityContext", "sysctls"))
        where = f"{template.path}.securityContext.sysctls"
        if items is UNKNOWN:
            yield unknown_message(res.subject, where)
            continue
        for i, item in enumerate(items):
            name = get(item, "name")
            if name is UNKNOWN:
                yield unknown_message(res.subject, f"{where}[{i}].name")
            elif not isinstance(name, str) or name.replace("/", ".") not in allowed:
                yield (f"{res.subject}: {where}[{i}] sets {name!r}, an unsafe sysctl not in the allow-list; "
                       f"use a safe sysctl, set it at node level, or add it to allowedUnsafeSysctls "
                       f"(now {sorted(allowed - SAFE_SYSCTLS)}) and to the kubelet's allowedUnsafeSysctls.")


# --------------------------------------------------------------------------- secret volumes

def _mode_ok(mode: int, max_mode: int) -> bool:
    return mode & ~max_mode & 0o7777 == 0 and mode <= 0o7777


def _secret_modes(res: Resource, cfg: dict) -> Iterator[str]:
    max_mode = as_int(cfg.get("maxSecretMode"))

    def check_mode(where: str, raw: Any, default_applies: bool) -> Iterator[str]:
        mode = as_int(raw)
        if mode is UNKNOWN:
            yield unknown_message(res.subject, where)
        elif mode is None:
            if default_applies:
                yield (f"{res.subject}: {where} is unset, so Kubernetes uses 0644 (420), readable by every user "
                       f"in the container; set it to {max_mode:#o} ({max_mode}) or less, e.g. 0400 (256).")
        elif not _mode_ok(mode, max_mode):
            yield (f"{res.subject}: {where} is {mode:#o} ({mode}); secret files may have at most the bits of "
                   f"{max_mode:#o} ({max_mode}), e.g. 0400 (256) or 0440 (288).")

    for template in pod_templates(res.resource_type, res.props):
        for where, volume in pod_volumes(template):
            secret = get(volume, "secret")
            projected = get(volume, "projected")
            if UNKNOWN in (volume, secret, projected):
                yield unknown_message(res.subject, where)
                continue
            if secret is not None:
                yield from _secret_items(check_mode, f"{where}.secret", secret, default_applies=True)
            if projected is not None:
                sources = elements(get(projected, "sources"))
                if sources is UNKNOWN:
                    yield unknown_message(res.subject, f"{where}.projected.sources")
                    continue
                has_secret = any(get(s, "secret") is not None for s in sources)
                if has_secret:
                    yield from check_mode(f"{where}.projected.defaultMode", get(projected, "defaultMode"), True)
                for s, source in enumerate(sources):
                    inner = get(source, "secret")
                    if inner is not None:
                        yield from _secret_items(check_mode, f"{where}.projected.sources[{s}].secret", inner,
                                                 default_applies=False)


def _secret_items(check_mode, where: str, secret: Any, default_applies: bool) -> Iterator[str]:
    if default_applies:
        yield from check_mode(f"{where}.defaultMode", get(secret, "defaultMode"), True)
    items = elements(get(secret, "items"))
    if items is UNKNOWN:
        yield from check_mode(f"{where}.items", UNKNOWN, False)
        return
    for k, item in enumerate(items):
        yield from check_mode(f"{where}.items[{k}].mode", get(item, "mode"), False)


# --------------------------------------------------------------------------- policies

_EXEMPTIONS = {"exemptions": {
    "type": "array", "items": {"type": "string"}, "default": [],
    "description": "Workloads allowed host access, by Pulumi name, metadata.name or namespace/name."}}

DEFAULT_REGISTRIES = ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io", "public.ecr.aws"]

_SPEC = [
    ("container-privileged",
     "Prohibits privileged containers and their equivalents (Unmasked procMount, hostProcess, unconfined AppArmor, "
     "privileged SELinux types).", _privileged, None),
    ("container-privilege-escalation",
     "Requires every container to set securityContext.allowPrivilegeEscalation to false (unset counts as true).",
     _escalation, None),
    ("container-run-as-non-root",
     "Requires every container to run as non-root (runAsNonRoot true, runAsUser and runAsGroup not 0).",
     _non_root, None),
    ("container-readonly-root-filesystem", "Requires every container to have a read-only root filesystem.",
     _read_only_root, None),
    ("container-capabilities",
     "Requires every container to drop ALL capabilities and add back only allowed ones.",
     _capabilities, {"allowedCapabilities": {
         "type": "array", "items": {"type": "string"}, "default": [],
         "description": "Capabilities a container may add after dropping ALL (e.g. NET_BIND_SERVICE)."}}),
    ("pod-seccomp-runtime-default",
     "Requires the RuntimeDefault seccomp profile for every container (pod or container level).",
     _seccomp, None),
    ("pod-host-access",
     "Prohibits hostNetwork, hostPID, hostIPC, hostPath volumes and hostPort unless the workload is exempted.",
     _host_access, _EXEMPTIONS),
    ("container-resources", "Requires cpu and memory requests and limits on every container.", _resources, None),
    ("container-image-pinned",
     "Requires every image to carry an explicit version tag (not latest) or an @sha256 digest.",
     _image_pinned, {"forbiddenTags": {
         "type": "array", "items": {"type": "string"}, "default": ["latest"],
         "description": "Floating tags that do not count as pinned."}}),
    ("container-image-registry", "Requires every image to come from an allowed registry.",
     _image_registry, {"allowedRegistries": {
         "type": "array", "items": {"type": "string"}, "default": DEFAULT_REGISTRIES,
         "description": "Registries (or registry/path prefixes); bare image names count as docker.io."}}),
    ("container-image-digest",
     "Requires every image on a production stack to be pinned by @sha256 digest (a tag can be moved).",
     _image_digest, {
         "environmentConfigKey": {"type": "string", "default": "ems:environment",
                                  "description": "Stack config key naming the stack's environment."},
         "defaultEnvironment": {"type": "string", "default": "development",
                                "description": "Environment assumed when the stack does not set the key (the program's default)."},
         "productionEnvironments": {"type": "array", "items": {"type": "string"}, "default": ["production"],
                                    "description": "Environments whose images must all be pinned by digest."}}),
    ("pod-sysctls-allowed", "Restricts pod sysctls to the safe set and the configured unsafe allow-list.",
     _sysctls, {"allowedUnsafeSysctls": {
         "type": "array", "items": {"type": "string"}, "default": ["net.core.somaxconn"],
         "description": "Unsafe sysctls pods may set (the kubelet must allow them too)."}}),
    ("secret-volume-mode",
     "Requires Secret volumes to set defaultMode/mode within 0440 (unset means 0644).",
     _secret_modes, {"maxSecretMode": {
         "type": "integer", "default": 0o440,
         "description": "Most permissive file mode for secret files, decimal (288 = 0440)."}}),
]

POLICIES = [
    resource_policy(name=name, description=description, applies=_applies, check=check, config=config)
    for name, description, check, config in _SPEC
]


# --------------------------------------------------------------------------- token automount (pods)

def _projected_tokens(res: Resource, template: PodTemplate) -> Iterator[str]:
    for where, volume in pod_volumes(template):
        if volume is UNKNOWN:
            yield unknown_message(res.subject, where)
            continue
        sources = elements(dig(volume, "projected", "sources"))
        if sources is UNKNOWN:
            yield unknown_message(res.subject, f"{where}.projected.sources")
            continue
        for s, source in enumerate(sources):
            if get(source, "serviceAccountToken") is not None:
                yield (f"{res.subject}: {where}.projected.sources[{s}] mounts a service account "
                       f"token, which automountServiceAccountToken: false was meant to prevent; remove it, or annotate "
                       f"the pod template {NEEDS_API_TOKEN}: \"true\" if it calls the Kubernetes API.")


def pod_token_messages(res: Resource) -> Iterator[str]:
    """Pods must not automount the API token unless their template is annotated as needing it."""
    for template in pod_templates(res.resource_type, res.props):
        if template.spec is UNKNOWN:
            yield unknown_message(res.subject, template.path)
            continue
        if template.spec is None:
            continue  # a patch that leaves the pod template alone
        needs = label_is_true(get(template.metadata, "annotations"), NEEDS_API_TOKEN)
        if needs is not True:
            yield from _projected_tokens(res, template)
        value = as_bool(get(template.spec, "automountServiceAccountToken"))
        if value is UNKNOWN or needs is UNKNOWN:
            yield unknown_message(res.subject, f"{template.path}.automountServiceAccountToken")
        elif value is not False and not needs:
            state = "unset (inherits the service account, which defaults to true)" if value is None else "true"
            yield (f"{res.subject}: {template.path}.automountServiceAccountToken is {state}; set it to false, or "
                   f"annotate the pod template {NEEDS_API_TOKEN}: \"true\" if it calls the Kubernetes API.")
