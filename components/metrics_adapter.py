"""prometheus-adapter: serves ``ems_ingest_messages_per_second`` on custom.metrics.k8s.io.

The rule (contract): ``rate(ems_ingest_messages_total[1m])`` per pod becomes the pods
metric ``ems_ingest_messages_per_second``. The adapter is an aggregated API server, so it is
the one workload that needs a Kubernetes API token (annotated ``ems.io/needs-api-token``).
Its serving certificate comes from the platform PKI and the APIService pins the CA bundle,
so the API server verifies it (no ``insecureSkipTLSVerify``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.k8s_common import (
    NEEDS_TOKEN_ANNOTATION, Resources, child, config_volume, container, empty_dir, metadata,
    pod_spec, secret_volume, selector, template_metadata, tls_annotation,
)

APP = "metrics-adapter"
PORT = 6443

RULES = """\
rules:
  - seriesQuery: 'ems_ingest_messages_total{namespace!="",pod!=""}'
    resources:
      overrides:
        namespace: {resource: "namespace"}
        pod: {resource: "pod"}
    name:
      matches: "^ems_ingest_messages_total$"
      as: "ems_ingest_messages_per_second"
    metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)'
"""


@dataclass(frozen=True)
class MetricsAdapterArgs:
    namespace: pulumi.Input[str]
    """Namespace of the adapter (the platform namespace)."""
    image: str
    """prometheus-adapter image with an explicit tag."""
    prometheus_url: pulumi.Input[str]
    """Query URL of the TSDB."""
    tls_secret: pulumi.Input[str]
    """``kubernetes.io/tls`` Secret of the adapter's serving certificate (SAN ``<service>.<ns>.svc``)."""
    ca_cert_pem: pulumi.Input[str]
    """CA certificate that signed it; pinned in the APIService."""
    resources: Resources = Resources("100m", "128Mi", "500m", "512Mi")
    """Container requests/limits. Defaults to 100m/128Mi, limits 500m/512Mi."""
    tls_digest: pulumi.Input[str] | None = None
    """Digest of ``tls_secret``'s certificate and the trust bundle (``k8s_common.content_digest``), the pod template's
    ``ems.io/tls-sha256``: a renewed serving certificate rolls the two replicas one by one. (The adapter's API-server
    library may re-read its certificate files by itself; that is not verified here, and a roll is certain and cheap.)
    Defaults to none (no annotation)."""


class MetricsAdapter(pulumi.ComponentResource):
    """Adapter Deployment, Service (6443), RBAC and the custom-metrics APIService."""

    service_name: pulumi.Output[str]
    api_service_name: pulumi.Output[str]

    def __init__(self, name: str, args: MetricsAdapterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ems:workloads:MetricsAdapter", name, None, opts)
        o = child(self)
        ns = args.namespace
        sa = k8s.core.v1.ServiceAccount(
            f"{name}-sa", metadata=metadata(APP, ns, APP, annotations={NEEDS_TOKEN_ANNOTATION: "true"}),
            automount_service_account_token=True, opts=o,
        )
        sa_subject = [{"kind": "ServiceAccount", "name": sa.metadata.name, "namespace": ns}]
        k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-auth-delegator", metadata=metadata(pulumi.Output.concat(ns, "-adapter-auth-delegator"), None, APP),  # type: ignore[arg-type]
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
            subjects=sa_subject, opts=o,
        )
        k8s.rbac.v1.RoleBinding(
            f"{name}-auth-reader", metadata=metadata(pulumi.Output.concat(ns, "-adapter-auth-reader"), "kube-system", APP),  # type: ignore[arg-type]
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "extension-apiserver-authentication-reader"},
            subjects=sa_subject, opts=o,
        )
        reader = k8s.rbac.v1.ClusterRole(
            f"{name}-resource-reader", metadata=metadata(pulumi.Output.concat(ns, "-adapter-resource-reader"), None, APP),  # type: ignore[arg-type]
            rules=[{"apiGroups": [""], "resources": ["pods", "namespaces", "nodes", "services"], "verbs": ["get", "list", "watch"]}],
            opts=o,
        )
        k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-resource-reader", metadata=metadata(pulumi.Output.concat(ns, "-adapter-resource-reader"), None, APP),  # type: ignore[arg-type]
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": reader.metadata.name},
            subjects=sa_subject, opts=o,
        )
        # The HPA controller reads exactly one custom metric.
        metric_reader = k8s.rbac.v1.ClusterRole(
            f"{name}-metric-reader", metadata=metadata(pulumi.Output.concat(ns, "-ingest-metric-reader"), None, APP),  # type: ignore[arg-type]
            rules=[{"apiGroups": ["custom.metrics.k8s.io"], "resources": ["pods/ems_ingest_messages_per_second"], "verbs": ["get", "list"]}],
            opts=o,
        )
        k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-hpa-metric-reader", metadata=metadata(pulumi.Output.concat(ns, "-hpa-ingest-metric-reader"), None, APP),  # type: ignore[arg-type]
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": metric_reader.metadata.name},
            subjects=[{"kind": "ServiceAccount", "name": "horizontal-pod-autoscaler", "namespace": "kube-system"}],
            opts=o,
        )
        config = {"config.yaml": RULES}
        conf = k8s.core.v1.ConfigMap(f"{name}-config", metadata=metadata(f"{APP}-config", ns, APP), data=config, opts=o)
        svc = k8s.core.v1.Service(
            f"{name}-svc", metadata=metadata(APP, ns, APP),
            spec={"type": "ClusterIP", "selector": selector(APP),
                  "ports": [{"name": "adapter", "port": PORT, "targetPort": "adapter", "protocol": "TCP"}]},
            opts=o,
        )
        adapter = container(
            "adapter", args.image, args.resources,
            args=[
                pulumi.Output.concat("--prometheus-url=", args.prometheus_url),  # type: ignore[list-item]
                "--config=/etc/adapter/config.yaml",
                f"--secure-port={PORT}",
                "--tls-cert-file=/var/run/serving-cert/tls.crt",
                "--tls-private-key-file=/var/run/serving-cert/tls.key",
                "--metrics-relist-interval=1m",
            ],
            ports=[("adapter", PORT)],
            mounts=[("config", "/etc/adapter"), ("serving-cert", "/var/run/serving-cert"), ("tmp", "/tmp")],
            writable=["tmp"],
            probe_port=PORT, probe_path="/healthz", probe_scheme="HTTPS",
        )
        k8s.apps.v1.Deployment(
            f"{name}-deploy", metadata=metadata(APP, ns, APP),
            spec={
                "replicas": 2,
                "selector": {"matchLabels": selector(APP)},
                "template": {
                    # The adapter reads its rules only at start: a change rolls the two replicas one by one.
                    "metadata": template_metadata(APP, [adapter], config=config,
                                                  annotations={NEEDS_TOKEN_ANNOTATION: "true", **tls_annotation(args.tls_digest)}),
                    "spec": pod_spec([adapter], service_account=sa.metadata.name, automount_token=True, spread_app=APP,
                                     volumes=[config_volume("config", conf.metadata.name),
                                              secret_volume("serving-cert", args.tls_secret), empty_dir("tmp")]),
                },
            },
            opts=o,
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb", metadata=metadata(APP, ns, APP),
            spec={"minAvailable": 1, "selector": {"matchLabels": selector(APP)}}, opts=o,
        )
        api = k8s.apiregistration.v1.APIService(
            f"{name}-apiservice",
            metadata=metadata("v1beta1.custom.metrics.k8s.io", None, APP),
            spec={
                "group": "custom.metrics.k8s.io",
                "version": "v1beta1",
                "service": {"name": svc.metadata.name, "namespace": ns, "port": PORT},
                "caBundle": pulumi.Output.from_input(args.ca_cert_pem).apply(lambda pem: base64.b64encode(pem.encode()).decode()),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
            opts=o,
        )
        self.service_name = svc.metadata.name
        self.api_service_name = api.metadata.name
        self.register_outputs({"service_name": self.service_name, "api_service_name": self.api_service_name})
