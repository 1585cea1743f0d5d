"""Compliant Kubernetes objects (engine-shaped camelCase) that each test then breaks in one place."""

from __future__ import annotations

import copy
from typing import Any

CONFIG_DIGEST = "ems.io/config-sha256"
KIND_TYPES = {
    "Pod": "kubernetes:core/v1:Pod",
    "Deployment": "kubernetes:apps/v1:Deployment",
    "StatefulSet": "kubernetes:apps/v1:StatefulSet",
    "DaemonSet": "kubernetes:apps/v1:DaemonSet",
    "ReplicaSet": "kubernetes:apps/v1:ReplicaSet",
    "Job": "kubernetes:batch/v1:Job",
    "CronJob": "kubernetes:batch/v1:CronJob",
}


def container(name: str = "app", image: str = "ghcr.io/ems-platform/ingest:1.4.2") -> dict:
    return {
        "name": name,
        "image": image,
        "ports": [{"containerPort": 8883, "name": "mqtts"}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"cpu": "500m", "memory": "256Mi"}},
    }


def pod_spec(**overrides: Any) -> dict:
    spec = {
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container()],
        "initContainers": [container("init", "eclipse-mosquitto:2.0.18")],
        "volumes": [{"name": "tls", "secret": {"secretName": "ingest-tls", "defaultMode": 256}}],
    }
    spec.update(overrides)
    return spec


def workload(kind: str = "Deployment", spec: dict | None = None, labels: dict | None = None,
             namespace: str = "ems") -> dict:
    """A compliant object of ``kind`` wrapping ``spec`` (a pod spec) at the kind's template path."""
    spec = copy.deepcopy(spec) if spec is not None else pod_spec()
    labels = labels if labels is not None else {"app.kubernetes.io/name": "ingest"}
    meta = {"name": "ingest", "namespace": namespace, "labels": dict(labels)}
    # The config digest: the pod mounts a Secret (policy pod-config-change-rolls).
    template = {"metadata": {"labels": dict(labels), "annotations": {CONFIG_DIGEST: "0" * 64}}, "spec": spec}
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
    if kind == "CronJob":
        return {"metadata": meta, "spec": {"schedule": "*/5 * * * *",
                                           "jobTemplate": {"spec": {"template": template}}}}
    if kind == "Job":
        return {"metadata": meta, "spec": {"template": template}}
    return {"metadata": meta, "spec": {"selector": {"matchLabels": dict(labels)}, "template": template}}


def first_container(obj: dict, kind: str = "Deployment") -> dict:
    return template_spec(obj, kind)["containers"][0]


def template_spec(obj: dict, kind: str = "Deployment") -> dict:
    if kind == "Pod":
        return obj["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]
