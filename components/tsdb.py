"""The PromQL time-series database: Prometheus as a StatefulSet on NVMe nodes.

The ingest writes through the remote-write receiver (``--web.enable-remote-write-receiver``)
with the readings' own timestamps; a spool replayed after an outage therefore arrives late,
so ``storage.tsdb.out_of_order_time_window`` is the edge spool's horizon. Prometheus scrapes
the ingest workers' metrics through DNS SRV discovery of their headless Service, so it needs
no Kubernetes API token: the SRV targets are the StatefulSet pods' stable names
(``ingest-0.ingest-metrics.<ns>.svc.cluster.local``), from which relabelling derives the
``pod`` and ``namespace`` labels that prometheus-adapter maps onto Kubernetes objects.

Alerting: the rules file ``ems-alerts.yml`` (``components/alerts.py``, from the stack's
thresholds) sits beside ``prometheus.yml`` in the ConfigMap and is loaded through
``rule_files``; ``alerting`` points at the Alertmanager Service. Two more scrape jobs feed
the alerts: ``ems-twin-api`` (twin-derived metrics: thermal state, PLC faults, point
quality, and each replica's verifier counters; SRV discovery of the headless
``twin-api-metrics`` Service, like the ingest) and
``ems-gateway`` (the in-cluster protocol gateway's edge agent: spool, devices, Modbus
exceptions), labelled with its site. Where the stack deploys ``ems-northbound``, the job
``ems-northbound`` scrapes its single replica through its metrics Service.

A changed ``prometheus.yml`` or rules file is reloaded in place (``components/config_reload.py``: a sidecar
sends SIGHUP), not by a restart, which would stop queries, rules and remote write until the WAL is replayed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.k8s_common import (
    Resources, child, config_volume, container, labels, metadata, pod_spec, selector, template_metadata,
)
from components.config_reload import DEFAULT_CONTAINER_ANNOTATION, reloader_container

APP = "tsdb"
PORT = 9090
PROMETHEUS_UID = 65534
CONFIG_DIR = "/etc/prometheus"


def pod_address_regex(service: str) -> str:
    """RE2 (fully anchored) over a SRV target ``<pod>.<service>.<namespace>.svc…:<port>``."""
    return rf"([^.]+)\.{re.escape(service)}\.([^.]+)\.svc(\.[^:]*)?:[0-9]+"


def _srv_job(job: str, service: str, namespace: str, port_name: str) -> str:
    regex = pod_address_regex(service)
    return f"""\
  - job_name: {job}
    dns_sd_configs:
      - names: ["_{port_name}._tcp.{service}.{namespace}.svc.cluster.local"]
        type: SRV
        refresh_interval: 30s
    relabel_configs:
      - source_labels: [__address__]
        regex: '{regex}'
        target_label: pod
        replacement: '$1'
      - source_labels: [__address__]
        regex: '{regex}'
        target_label: namespace
        replacement: '$2'
"""


RULES_FILE = "ems-alerts.yml"


@dataclass(frozen=True)
class AlertingTargets:
    """What the TSDB alerts through and scrapes for the alert rules (all DNS names inside the cluster); the twin
    API's metrics come from its own SRV job (``twin_api_service``)."""

    rules: str
    """The rules file text (``components.alerts.alert_rules``)."""
    alertmanager: str
    """Alertmanager ``host:port``."""
    gateway: str | None = None
    """The protocol gateway's (ems-gateway) metrics ``host:port``; None: no gateway. Defaults to None."""
    gateway_site: str = ""
    """The gateway's site id (label ``site`` of its metrics). Defaults to empty."""


def _alerting_sections(targets: AlertingTargets) -> str:
    jobs = ""
    if targets.gateway:
        jobs += f"""\
  - job_name: ems-gateway
    static_configs:
      - targets: ["{targets.gateway}"]
    relabel_configs:
      - target_label: site
        replacement: '{targets.gateway_site}'
"""
    return jobs


def prometheus_config(out_of_order_window: str, service: str, namespace: str, port_name: str,
                      twin_api_service: str | None = None, alerting: AlertingTargets | None = None) -> str:
    """prometheus.yml: out-of-order window, the ingest scrape job and (``twin_api_service``) the twin API's
    (SRV discovery + pod/namespace labels) and, with ``alerting``, the rules file, the Alertmanager and the
    jobs the alerts read."""
    twin_job = _srv_job("ems-twin-api", twin_api_service, namespace, port_name) if twin_api_service else ""
    alert_head = "" if alerting is None else f"""\
rule_files:
  - {RULES_FILE}
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["{alerting.alertmanager}"]
"""
    return f"""\
global:
  scrape_interval: 15s
  evaluation_interval: 15s
storage:
  tsdb:
    out_of_order_time_window: {out_of_order_window}
{alert_head}scrape_configs:
{_srv_job("ems-ingest", service, namespace, port_name)}{twin_job}""" + ("" if alerting is None else _alerting_sections(alerting))


def northbound_scrape_job(target: str) -> str:
    """The ``ems-northbound`` scrape job (one replica behind its ClusterIP Service ``host:port``), to append
    to the ``scrape_configs`` list that ends :func:`prometheus_config`'s text."""
    return f"""\
  - job_name: ems-northbound
    static_configs:
      - targets: ["{target}"]
"""


@dataclass(frozen=True)
class TsdbArgs:
    namespace: pulumi.Input[str]
    """Namespace of every object."""
    image: str
    """Prometheus image with an explicit tag."""
    storage_class: pulumi.Input[str]
    """StorageClass of the data volumes (volumeClaimTemplates)."""
    namespace_name: str
    """The namespace's name (plain text, for DNS names in the Prometheus config)."""
    scrape_service: str = "ingest-metrics"
    """Headless Service governing the ingest StatefulSet. Defaults to ``ingest-metrics``."""
    scrape_port_name: str = "metrics"
    """Name of its metrics port (the SRV record's service). Defaults to ``metrics``."""
    twin_api_scrape_service: str | None = None
    """Headless Service of the twin API's metrics (same port name), scraped as job ``ems-twin-api``. Defaults to none."""
    out_of_order_window: str = "72h"
    """Accept samples this far in the past (the edge spool horizon). Defaults to 72h."""
    retention: str = "30d"
    """How long samples are kept. Defaults to 30d."""
    storage_size: str = "200Gi"
    """Size of each data volume. Defaults to 200Gi."""
    resources: Resources = Resources("500m", "2Gi", "2", "8Gi")
    """Container requests/limits. Defaults to 500m/2Gi, limits 2 CPU/8Gi."""
    query_timeout_seconds: int = 30
    """PromQL evaluation timeout (``--query.timeout``; a query's own ``timeout`` is capped by it). Defaults to 30."""
    query_max_samples: int = 5_000_000
    """Samples one query may load (``--query.max-samples``; beyond → 422). Defaults to 5,000,000."""
    alerting: AlertingTargets | None = None
    """Alert rules, Alertmanager and the alert scrape jobs; None: no alerting. Defaults to None."""
    northbound_metrics: str | None = None
    """The north-bound client's metrics ``host:port`` to scrape; None: not deployed. Defaults to None."""


class Tsdb(pulumi.ComponentResource):
    """Prometheus StatefulSet pinned to ``ems.io/pool=nvme`` with a headless Service on 9090."""

    service_name: pulumi.Output[str]
    remote_write_url: pulumi.Output[str]
    query_url: pulumi.Output[str]

    def __init__(self, name: str, args: TsdbArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ems:workloads:Tsdb", name, None, opts)
        o = child(self)
        ns = args.namespace
        sa = k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=metadata(APP, ns, APP), automount_service_account_token=False, opts=o)
        config = {"prometheus.yml": prometheus_config(args.out_of_order_window, args.scrape_service, args.namespace_name,
                                                      args.scrape_port_name, args.twin_api_scrape_service, args.alerting)
                  + (northbound_scrape_job(args.northbound_metrics) if args.northbound_metrics else ""),
                  **({RULES_FILE: args.alerting.rules} if args.alerting else {})}
        conf = k8s.core.v1.ConfigMap(f"{name}-config", metadata=metadata(f"{APP}-config", ns, APP), data=config, opts=o)
        svc = k8s.core.v1.Service(
            f"{name}-svc", metadata=metadata(APP, ns, APP),
            spec={"clusterIP": "None", "selector": selector(APP),
                  "ports": [{"name": "tsdb", "port": PORT, "targetPort": "tsdb", "protocol": "TCP"}]},
            opts=o,
        )
        prometheus = container(
            "prometheus", args.image, args.resources,
            args=[
                f"--config.file={CONFIG_DIR}/prometheus.yml",
                "--storage.tsdb.path=/prometheus",
                f"--storage.tsdb.retention.time={args.retention}",
                "--web.enable-remote-write-receiver",
                f"--web.listen-address=:{PORT}",
                f"--query.timeout={args.query_timeout_seconds}s",
                f"--query.max-samples={args.query_max_samples}",
            ],
            ports=[("tsdb", PORT)],
            mounts=[("config", CONFIG_DIR), ("data", "/prometheus")],
            writable=["data"],
            run_as_user=PROMETHEUS_UID,
            probe_port=PORT, probe_path="/-/ready",
        )
        reloader = reloader_container(args.image, "prometheus", [f"{CONFIG_DIR}/{f}" for f in sorted(config)],
                                      [("config", CONFIG_DIR)], run_as_user=PROMETHEUS_UID)
        k8s.apps.v1.StatefulSet(
            f"{name}-sts",
            metadata=metadata(APP, ns, APP),
            spec={
                "serviceName": svc.metadata.name,
                "replicas": 1,
                "selector": {"matchLabels": selector(APP)},
                "template": {
                    # prometheus.yml and the rules are reloaded in place (SIGHUP from the sidecar): a restart would
                    # stop queries, rules and remote write until the WAL is replayed (docs/deploy.md).
                    "metadata": template_metadata(APP, [prometheus, reloader],
                                                  annotations={DEFAULT_CONTAINER_ANNOTATION: "prometheus"}),
                    "spec": pod_spec(
                        [prometheus, reloader], service_account=sa.metadata.name, fs_group=PROMETHEUS_UID,
                        share_process_namespace=True,
                        volumes=[config_volume("config", conf.metadata.name)],
                        pool="nvme", required_pool=True,
                    ),
                },
                "volumeClaimTemplates": [{
                    "metadata": {"name": "data", "labels": labels(APP)},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": args.storage_class,
                        "resources": {"requests": {"storage": args.storage_size}},
                    },
                }],
            },
            opts=o,
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb", metadata=metadata(APP, ns, APP),
            spec={"maxUnavailable": 1, "selector": {"matchLabels": selector(APP)}}, opts=o,
        )
        self.service_name = svc.metadata.name
        base = pulumi.Output.concat("http://", svc.metadata.name, ".", ns, ".svc:", str(PORT))
        self.remote_write_url = pulumi.Output.concat(base, "/api/v1/write")
        self.query_url = base
        self.register_outputs({"service_name": self.service_name, "remote_write_url": self.remote_write_url, "query_url": self.query_url})
