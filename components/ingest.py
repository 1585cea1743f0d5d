"""Ingest workers: shared-subscription MQTT consumers that write to the TSDB, autoscaled on msg/s.

The HPA (``autoscaling/v2``) targets the pods metric ``ems_ingest_messages_per_second``
(served by prometheus-adapter from ``rate(ems_ingest_messages_total[1m])``) as an
AverageValue, and waits ``scale_down_stabilization_seconds`` before scaling down so that
slow thermal assets do not make it oscillate (label ``ems.io/thermal-asset: "true"``).

Kernel tuning (DESIGN §5): ``net.ipv4.tcp_fin_timeout`` is a *safe* namespaced sysctl and is
set on the pod; ``net.core.somaxconn`` is namespaced but *unsafe* for Kubernetes, so the pod
sets it only because the node group's kubelet allows it (``allowedUnsafeSysctls``, see
``components/eks_cluster.py``; private clusters must configure the same). No privileged pod.
``net.ipv4.tcp_low_latency`` is deliberately absent: it was removed from Linux in 4.14 and is
a no-op (or an error) on current kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.k8s_common import (
    THERMAL_LABEL, ComponentArgsError, Resources, child, container, empty_dir, metadata,
    pod_spec, selector, template_metadata,
)

APP = "ingest"
METRICS_PORT = 9100
METRIC = "ems_ingest_messages_per_second"
SYSCTLS = {"net.ipv4.tcp_fin_timeout": "15", "net.core.somaxconn": "1024"}


@dataclass(frozen=True)
class IngestArgs:
    namespace: pulumi.Input[str]
    """Namespace of every object."""
    image: str
    """Ingest image with an explicit tag."""
    broker_host: pulumi.Input[str]
    """In-namespace broker Service name (plain MQTT on 1883)."""
    remote_write_url: pulumi.Input[str]
    """TSDB remote-write endpoint."""
    min_replicas: int = 2
    """HPA lower bound. Defaults to 2."""
    max_replicas: int = 10
    """HPA upper bound. Defaults to 10."""
    target_messages_per_second: int = 500
    """Average msg/s per pod the HPA aims for. Defaults to 500."""
    scale_down_stabilization_seconds: int = 600
    """Scale-down stabilisation window (thermal cooldown). Defaults to 600."""
    resources: Resources = Resources("250m", "256Mi", "1", "512Mi")
    """Container requests/limits. Defaults to 250m/256Mi, limits 1 CPU/512Mi."""


class IngestWorkers(pulumi.ComponentResource):
    """Deployment, headless metrics Service, HPA and PodDisruptionBudget of the ingest tier."""

    deployment_name: pulumi.Output[str]
    metrics_service_name: pulumi.Output[str]
    hpa_name: pulumi.Output[str]

    def __init__(self, name: str, args: IngestArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if args.min_replicas < 1:
            raise ComponentArgsError(name, "min_replicas", args.min_replicas, "must be at least 1")
        if args.min_replicas > args.max_replicas:
            raise ComponentArgsError(name, "min_replicas", args.min_replicas, f"must not exceed max_replicas {args.max_replicas}")
        if not 0 <= args.scale_down_stabilization_seconds <= 3600:
            raise ComponentArgsError(name, "scale_down_stabilization_seconds", args.scale_down_stabilization_seconds, "must be 0..3600")
        super().__init__("ems:workloads:IngestWorkers", name, None, opts)
        o = child(self)
        ns = args.namespace
        sa = k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=metadata(APP, ns, APP), automount_service_account_token=False, opts=o)
        metrics_svc = k8s.core.v1.Service(
            f"{name}-metrics", metadata=metadata(f"{APP}-metrics", ns, APP),
            spec={"clusterIP": "None", "selector": selector(APP),
                  "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}]},
            opts=o,
        )
        worker = container(
            "ingest", args.image, args.resources,
            ports=[("metrics", METRICS_PORT)],
            env={
                "EMS_BROKER_HOST": args.broker_host,
                "EMS_BROKER_PORT": "1883",
                "EMS_REMOTE_WRITE_URL": args.remote_write_url,
                "EMS_METRICS_PORT": str(METRICS_PORT),
            },
            mounts=[("tmp", "/tmp")], writable=["tmp"],
            probe_port=METRICS_PORT, probe_path="/metrics",
        )
        deployment = k8s.apps.v1.Deployment(
            f"{name}-deploy",
            metadata=metadata(APP, ns, APP, **{THERMAL_LABEL: "true"}),
            spec={
                "replicas": args.min_replicas,
                "selector": {"matchLabels": selector(APP)},
                "template": {
                    "metadata": template_metadata(APP, [worker], **{THERMAL_LABEL: "true"}),
                    "spec": pod_spec([worker], service_account=sa.metadata.name, volumes=[empty_dir("tmp")],
                                     sysctls=SYSCTLS, pool="general", spread_app=APP),
                },
            },
            opts=o,
        )
        hpa = k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-hpa",
            metadata=metadata(APP, ns, APP, **{THERMAL_LABEL: "true"}),
            spec={
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment.metadata.name},
                "minReplicas": args.min_replicas,
                "maxReplicas": args.max_replicas,
                "metrics": [{
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": METRIC},
                        "target": {"type": "AverageValue", "averageValue": str(args.target_messages_per_second)},
                    },
                }],
                "behavior": {
                    "scaleDown": {
                        "stabilizationWindowSeconds": args.scale_down_stabilization_seconds,
                        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                    },
                    "scaleUp": {
                        "stabilizationWindowSeconds": 0,
                        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 30}],
                    },
                },
            },
            opts=o,
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb", metadata=metadata(APP, ns, APP),
            spec={"minAvailable": 1, "selector": {"matchLabels": selector(APP)}}, opts=o,
        )
        self.deployment_name = deployment.metadata.name
        self.metrics_service_name = metrics_svc.metadata.name
        self.hpa_name = hpa.metadata.name
        self.register_outputs({
            "deployment_name": self.deployment_name,
            "metrics_service_name": self.metrics_service_name,
            "hpa_name": self.hpa_name,
        })
