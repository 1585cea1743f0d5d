"""Shared building blocks for the in-cluster components: errors, labels and hardened pod specs.

Every container the platform declares goes through :func:`container`, so the hardening of
the cross-team contract (non-root, read-only root filesystem, no privilege escalation, all
capabilities dropped, RuntimeDefault seccomp, requests and limits) lives in one place.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pulumi
import pulumi_tls as tls

from ems_contract.config_file import FIELD_CHARS, message_parts, one_line

PART_OF = "ems-platform"
POOL_LABEL = "ems.io/pool"
LATENCY_LABEL = "ems.io/latency-critical"
THERMAL_LABEL = "ems.io/thermal-asset"
NEEDS_TOKEN_ANNOTATION = "ems.io/needs-api-token"
POD_NAME_ENV = "POD_NAME"  # set from the downward API for per-pod mounts (see container)
SECRET_FILE_MODE = 0o440  # decimal 288: the contract's ceiling for secret volumes
# High, non-system ids (scanners flag ids below 10000: they may collide with host users).
DEFAULT_UID = 10001


class ComponentArgsError(pulumi.RunError):
    """Bad component arguments; the CLI prints the message as one line, without a traceback."""

    def __init__(self, component: str, field: str, value: object, reason: str) -> None:
        self.component, self.field, self.value = component, field, value
        shown_field, shown_value, shown_reason = message_parts(field, value, reason)      # one bounded line
        super().__init__(f"{one_line(component, FIELD_CHARS)}: {shown_field} {shown_reason} (got {shown_value})")


def labels(app: str, **extra: str) -> dict[str, str]:
    """The labels every object of ``app`` carries (the selector uses only the first two)."""
    return {"app.kubernetes.io/name": app, "app.kubernetes.io/part-of": PART_OF, **extra}


def selector(app: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": app, "app.kubernetes.io/part-of": PART_OF}


def metadata(name: str, namespace: pulumi.Input[str] | None, app: str, *, annotations: Mapping[str, str] | None = None, **extra: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels(app, **extra)}
    if namespace is not None:
        meta["namespace"] = namespace
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


@dataclass(frozen=True)
class Resources:
    """Requests and limits of one container (both always set)."""

    cpu_request: str
    memory_request: str
    cpu_limit: str
    memory_limit: str
    ephemeral_request: str = "64Mi"
    ephemeral_limit: str = "512Mi"

    def spec(self) -> dict[str, dict[str, str]]:
        return {
            "requests": {"cpu": self.cpu_request, "memory": self.memory_request, "ephemeral-storage": self.ephemeral_request},
            "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit, "ephemeral-storage": self.ephemeral_limit},
        }


def container(
    name: str,
    image: str,
    resources: Resources,
    *,
    ports: Sequence[tuple[str, int]] = (),
    args: Sequence[str] | None = None,
    command: Sequence[str] | None = None,
    env: Mapping[str, pulumi.Input[str]] | None = None,
    mounts: Sequence[tuple[str, str]] = (),
    pod_name_env: bool = False,
    writable: Sequence[str] = (),
    run_as_user: int = DEFAULT_UID,
    probe_port: int | None = None,
    probe_path: str | None = None,
    probe_scheme: str = "HTTP",
    liveness_path: str | None = None,
) -> dict[str, Any]:
    """A hardened container: ``mounts`` are (volume, path) pairs, read-only unless the volume is in ``writable``.

    ``probe_port`` gets a readiness probe (``probe_path`` over ``probe_scheme``, else TCP) and a TCP
    liveness probe; ``liveness_path`` makes liveness an HTTP check of that path instead, for
    processes whose health endpoint reports a dead or stalled worker (not a busy dependency).

    ``pod_name_env`` puts the pod's name (downward API) first in the environment as ``POD_NAME``, so
    later values may say ``$(POD_NAME)``: with :func:`per_pod_secrets_volume` mounted whole, each pod of a
    StatefulSet names its own files by path (:func:`components.ingest.pod_tls_env`). Mounted whole, not by
    ``subPathExpr``: the kubelet never updates a ``subPath`` mount, but swaps a whole volume's files in place
    when a Secret changes, so a renewed certificate reaches the running process.
    """
    spec: dict[str, Any] = {
        "name": name,
        "image": image,
        # Tags are pinned, but Always re-checks them against the registry (a re-pushed tag
        # or a node-local image another pod pulled with other credentials is not trusted).
        "imagePullPolicy": "Always",
        "resources": resources.spec(),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": run_as_user,
            "runAsGroup": run_as_user,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if ports:
        spec["ports"] = [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports]
    if command is not None:
        spec["command"] = list(command)
    if args is not None:
        spec["args"] = list(args)
    if env:
        spec["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if pod_name_env:
        spec["env"] = [{"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}, *spec.get("env", [])]
    if mounts:
        spec["volumeMounts"] = [{"name": v, "mountPath": p, "readOnly": v not in writable} for v, p in mounts]
    if probe_port is not None:
        if probe_path is not None:
            action: dict[str, Any] = {"httpGet": {"path": probe_path, "port": probe_port, "scheme": probe_scheme}}
        else:
            action = {"tcpSocket": {"port": probe_port}}
        spec["readinessProbe"] = {**action, "periodSeconds": 10, "timeoutSeconds": 3}
        # Liveness asks "is the process listening" or, with liveness_path, "is its worker alive":
        # never about a dependency, whose outage a restart would not cure.
        alive: dict[str, Any] = ({"httpGet": {"path": liveness_path, "port": probe_port, "scheme": probe_scheme}}
                                 if liveness_path else {"tcpSocket": {"port": probe_port}})
        spec["livenessProbe"] = {**alive, "initialDelaySeconds": 10, "periodSeconds": 20,
                                 "timeoutSeconds": 3, "failureThreshold": 6}
    return spec


def pod_spec(
    containers: Sequence[dict[str, Any]],
    *,
    service_account: pulumi.Input[str],
    volumes: Sequence[dict[str, Any]] = (),
    pool: str | None = None,
    required_pool: bool = False,
    sysctls: Mapping[str, str] | None = None,
    fs_group: int = DEFAULT_UID,
    automount_token: bool = False,
    spread_app: str | None = None,
    share_process_namespace: bool = False,
) -> dict[str, Any]:
    """A pod spec: RuntimeDefault seccomp at pod level too, token automount off unless asked.

    ``pool`` adds a toleration for the pool's taint and node affinity to ``ems.io/pool``:
    required when ``required_pool`` (latency-critical), preferred otherwise. ``spread_app``
    prefers replicas of that app on different nodes. ``share_process_namespace`` lets a sidecar
    signal the main process (``components/config_reload.py``).
    """
    spec: dict[str, Any] = {
        "serviceAccountName": service_account,
        "automountServiceAccountToken": automount_token,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "fsGroup": fs_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": list(containers),
    }
    if share_process_namespace:
        spec["shareProcessNamespace"] = True
    if sysctls:
        spec["securityContext"]["sysctls"] = [{"name": k, "value": v} for k, v in sysctls.items()]
    if volumes:
        spec["volumes"] = list(volumes)
    if pool is not None:
        term = {"matchExpressions": [{"key": POOL_LABEL, "operator": "In", "values": [pool]}]}
        if required_pool:
            affinity = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
        else:
            affinity = {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference": term}]}
        spec["affinity"] = {"nodeAffinity": affinity}
        spec["tolerations"] = [{"key": POOL_LABEL, "operator": "Equal", "value": pool, "effect": "NoSchedule"}]
    if spread_app is not None:
        spec.setdefault("affinity", {})["podAntiAffinity"] = {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": selector(spread_app)}},
        }]}
    return spec


def template_metadata(app: str, containers: Sequence[dict[str, Any]], *,
                      annotations: Mapping[str, pulumi.Input[str]] | None = None,
                      config: Mapping[str, pulumi.Input[str]] | None = None, config_key: pulumi.Input[str] | None = None,
                      **extra: str) -> dict[str, Any]:
    """Pod template metadata: labels plus the AppArmor runtime/default profile per container.

    ``config`` (file name → content) is what the pod's processes read only at start: it adds
    ``ems.io/config-sha256`` = :func:`content_digest` (under ``config_key`` for contents of a Secret), so a changed
    file rolls the pods and an unchanged one leaves them alone. Defaults to none: the pod reads no config, or
    reloads it in place.

    Kubernetes 1.29 has no ``securityContext.appArmorProfile`` field yet (1.30), so the
    profile is set with the beta annotation that 1.30+ still honours.
    """
    notes: dict[str, pulumi.Input[str]] = {
        f"container.apparmor.security.beta.kubernetes.io/{c['name']}": "runtime/default" for c in containers}
    if config is not None:
        notes[CONFIG_HASH_ANNOTATION] = content_digest(config, key=config_key)
    return {"labels": labels(app, **extra), "annotations": {**notes, **(annotations or {})}}


TLS_HASH_ANNOTATION = "ems.io/tls-sha256"
CONFIG_HASH_ANNOTATION = "ems.io/config-sha256"


def tls_annotation(digest: pulumi.Input[str] | None) -> dict[str, pulumi.Input[str]]:
    """``{ems.io/tls-sha256: digest}`` for a pod template (a new certificate or trust bundle rolls the pods), or {}."""
    return {} if digest is None else {TLS_HASH_ANNOTATION: digest}


def _digest(files: Mapping[str, str], key: str | None) -> str:
    h = hashlib.sha256() if key is None else hmac.new(key.encode(), digestmod=hashlib.sha256)
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return h.hexdigest()


def content_digest(files: Mapping[str, pulumi.Input[str]], *, key: pulumi.Input[str] | None = None) -> pulumi.Input[str]:
    """Hex SHA-256 over ``files`` (file name → content): each name and content NUL-terminated, in name order.

    Deterministic: the same files give the same digest on every run, whatever the mapping's order, so an
    unchanged config never rolls a pod. Plain strings give a ``str``; any ``Output`` among them gives an ``Output``.

    Contents of a Kubernetes Secret need ``key`` (a secret Output, :func:`digest_key`): the digest is then
    HMAC-SHA256 under it and, revealing nothing without the key, a plain (not secret) value. A bare SHA-256 of a
    short secret — a password, a token — could be found by guessing and hashing candidates, so a secret content
    without ``key`` raises ValueError (in the apply: only Outputs are secret) rather than putting it in an annotation.
    """
    names = sorted(files)
    values = [files[n] for n in names]
    if key is None and all(isinstance(v, str) for v in values):
        return _digest(dict(zip(names, values)), None)      # type: ignore[arg-type]
    contents = pulumi.Output.all(*values)
    if key is not None:
        keyed = pulumi.Output.all(key, contents).apply(lambda kc: _digest(dict(zip(names, kc[1])), kc[0]))
        return pulumi.Output.unsecret(keyed)

    def unkeyed(secret_and_contents: list[Any]) -> str:
        secret, texts = secret_and_contents
        if secret:
            raise ValueError(f"content_digest: {', '.join(names)}: secret content needs a key (digest_key)")
        return _digest(dict(zip(names, texts)), None)
    return pulumi.Output.all(pulumi.Output.from_input(contents.is_secret()), contents).apply(unkeyed)


def digest_key(name: str, parent: pulumi.Resource) -> pulumi.Output[str]:
    """A secret HMAC key for :func:`content_digest`: the PEM of ``tls.PrivateKey`` ``<name>-digest-key``, a child of
    ``parent``. Random once, then kept in the stack's state (encrypted), so digests stay the same across runs.
    pulumi-tls is the program's one source of stable secret randomness (no other provider plugin needed)."""
    key = tls.PrivateKey(f"{name}-digest-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child(parent))
    return pulumi.Output.secret(key.private_key_pem)


def secret_volume(name: str, secret_name: pulumi.Input[str]) -> dict[str, Any]:
    return {"name": name, "secret": {"secretName": secret_name, "defaultMode": SECRET_FILE_MODE}}


def per_pod_secrets_volume(name: str, secrets: Sequence[tuple[str, pulumi.Input[str]]]) -> dict[str, Any]:
    """One projected volume holding each pod's ``kubernetes.io/tls`` Secret in a directory named after the pod.

    ``secrets`` are (pod name, Secret name) pairs; pod ``p`` finds ``p/ca.crt``, ``p/tls.crt`` and ``p/tls.key``
    (mode 0440). Every pod that mounts it sees every pod's files: a StatefulSet's pods are one role (see
    ``docs/deploy.md`` on what that costs); each picks its own by path (``pod_name_env`` of :func:`container`).
    """
    return {"name": name, "projected": {"defaultMode": SECRET_FILE_MODE, "sources": [
        {"secret": {"name": secret, "items": [{"key": key, "path": f"{pod}/{key}"} for key in ("ca.crt", "tls.crt", "tls.key")]}}
        for pod, secret in secrets]}}


def config_volume(name: str, config_map: pulumi.Input[str]) -> dict[str, Any]:
    return {"name": name, "configMap": {"name": config_map, "defaultMode": 0o444}}


def empty_dir(name: str, size: str = "64Mi") -> dict[str, Any]:
    return {"name": name, "emptyDir": {"sizeLimit": size}}


def child(parent: pulumi.Resource, **kwargs: Any) -> pulumi.ResourceOptions:
    """Options for a child resource: parented, provider inherited from the component."""
    return pulumi.ResourceOptions(parent=parent, **kwargs)
