"""Ingest workers: shared-subscription MQTT consumers that write to the TSDB, autoscaled on msg/s.

A StatefulSet, not a Deployment: each worker keeps its de-duplication database on its own
volume and needs a stable MQTT client id (``ems-ingest-<pod name>``, the ingest's default
from the hostname) so the broker's persistent session — and the QoS 1 messages it holds for
a crashed worker — survive a restart. Its ``ingest.toml`` is generated here and checked with
the ingest's own parser.

The workers connect to the broker with mTLS on 8883, each with its own client certificate from
the platform PKI: worker ``ingest-<n>`` presents CN ``<identity>-ingest-<n>`` (see
:func:`worker_identities`), which the broker takes as its MQTT username *and* client id
(``use_username_as_clientid``, ``components/broker.py``), so a worker's persistent session — and
the readings queued in it while the worker is down — can be resumed or wiped only with that
worker's certificate. One certificate per ordinal up to the HPA's ``max_replicas``; the Secrets
(``tls_secrets``) are projected into one volume, one directory per pod name, mounted whole at
``/etc/ems/tls`` (mode 0440, read through the pod's fsGroup); each pod names its own files by path
(``EMS_BROKER_CA``/``CERT``/``KEY`` = ``/etc/ems/tls/$(POD_NAME)/…``, :func:`pod_tls_env`), so the
kubelet's in-place update of a renewed Secret reaches the running worker, which reloads it
(``ems_runtime/file_watch.py``); a ``subPath`` mount would never be updated. A pod with an ordinal
beyond ``max_replicas`` has no files and does not start. The client id the worker sends
(``EMS_BROKER_CLIENT_ID`` = its CN) only keeps its logs honest.

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

import json
import re
import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import pulumi
import pulumi_kubernetes as k8s

from components.k8s_common import (
    POD_NAME_ENV, THERMAL_LABEL, ComponentArgsError, Resources, child, config_volume, container,
    empty_dir, labels, metadata, per_pod_secrets_volume, pod_spec, selector, template_metadata,
)

if TYPE_CHECKING:                      # the parser is imported lazily: only validation needs it
    from ingest.config import IngestConfig

APP = "ingest"
METRICS_PORT = 9100
METRIC = "ems_ingest_messages_per_second"
STATE_DIR = "/var/lib/ems-ingest"


TLS_DIR = "/etc/ems/tls"
MQTTS_PORT = 8883
SHARED_GROUP = "ems-ingest"
"""The workers' shared-subscription group: ``$share/ems-ingest/ems/v1/+/telemetry`` (the broker lets only the ingest workers' identities join it)."""


def mtls_broker_section(broker_host: str, tls_dir: str) -> list[str]:
    """The ``[broker]`` lines of an in-cluster ``ems-ingest`` config: mTLS on 8883 with the
    ``kubernetes.io/tls`` files under ``tls_dir`` (ca.crt, tls.crt, tls.key); in the pods
    :func:`pod_tls_env` points them at the pod's own directory below it."""
    q = json.dumps
    return ["[broker]", f"host = {q(broker_host)}", "tls = true", f"port = {MQTTS_PORT}",
            f"# in the pods EMS_BROKER_CA, EMS_BROKER_CERT and EMS_BROKER_KEY name the pod's own files: {tls_dir}/<pod name>/",
            f"ca = {q(tls_dir + '/ca.crt')}", f"cert = {q(tls_dir + '/tls.crt')}", f"key = {q(tls_dir + '/tls.key')}"]


def pod_tls_env(tls_dir: str) -> dict[str, str]:
    """The environment that points a pod's ``[broker]`` ca, cert and key at its own directory of a
    :func:`~components.k8s_common.per_pod_secrets_volume` mounted whole at ``tls_dir`` (needs ``pod_name_env``)."""
    own = f"{tls_dir}/$({POD_NAME_ENV})"
    return {"EMS_BROKER_CA": f"{own}/ca.crt", "EMS_BROKER_CERT": f"{own}/tls.crt", "EMS_BROKER_KEY": f"{own}/tls.key"}


_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def duration_s(text: str) -> float:
    """Seconds of a Prometheus duration such as ``72h`` or ``1d12h`` (validated by the stack settings)."""
    return float(sum(int(n) * _UNIT_S[unit] for n, unit in _DURATION_PART.findall(text)))


def ingest_toml(broker_host: str, remote_write_url: str, max_age_s: float = 72 * 3600.0,
                workers: Sequence[str] = ()) -> str:
    """The workers' ingest.toml: mTLS to the broker on 8883 (files from the mounted Secret), remote write to the TSDB.

    ``max_age_s`` is the TSDB's out-of-order window: older readings are dead-lettered by the
    worker instead of being refused by the TSDB.

    ``workers`` (every worker's client id, ``worker_identities``) makes the first of them count the
    group's packet loss over what all of them wrote (``[state] workers``, ``ingest.seq_share``).

    No ``client_id``: one file serves every pod; the broker takes each worker's certificate CN as
    its client id, and the pod's environment (``EMS_BROKER_CLIENT_ID``) says the same.
    """
    q = json.dumps
    return "\n".join([
        *mtls_broker_section(broker_host, TLS_DIR),
        f"group = {q(SHARED_GROUP)}", "",
        "[tsdb]", f"remote_write_url = {q(remote_write_url)}", "",
        "[state]", f"dir = {q(STATE_DIR)}", *([f"workers = {q(list(workers))}"] if workers else []), "",
        "[metrics]", 'host = "0.0.0.0"', f"port = {METRICS_PORT}", "",
        "[time]", f"max_age_s = {max_age_s:g}", "",
    ])


def worker_identities(identity: str, count: int) -> tuple[str, ...]:
    """Certificate CN of worker ``ingest-<n>`` for n < ``count``: ``<identity>-ingest-<n>`` (the pod name after the
    role's identity, e.g. ``ems-ingest-ingest-0`` — the client id the workers used before ids were bound to certificates)."""
    return tuple(f"{identity}-{APP}-{n}" for n in range(count))


def validate_ingest_toml(name: str, text: str) -> IngestConfig:
    """Check a generated file with the ingest's own parser (one source of truth); returns the parsed config."""
    from ingest.config import parse_config
    from ingest.errors import ConfigError

    try:
        return parse_config(tomllib.loads(text), check_files=False)  # the certificate files exist only in the pod
    except ConfigError as exc:
        # The ingest's own field, value and reason: the message stays one line, with the value shortened alone.
        raise ComponentArgsError(name, f"ingest.toml {exc.field}", exc.value, exc.reason) from exc
SYSCTLS = {"net.ipv4.tcp_fin_timeout": "15", "net.core.somaxconn": "1024"}


@dataclass(frozen=True)
class IngestArgs:
    namespace: pulumi.Input[str]
    """Namespace of every object."""
    image: str
    """Ingest image with an explicit tag."""
    broker_host: str
    """Broker Service DNS name (mTLS on 8883); must be one of the broker certificate's DNS SANs."""
    identity: str
    """The workers' identity prefix: worker ``ingest-<n>`` is CN (= MQTT username and client id) ``<identity>-ingest-<n>``."""
    tls_secrets: tuple[pulumi.Input[str], ...]
    """``kubernetes.io/tls`` Secrets (tls.crt, tls.key, ca.crt), one per worker: index n is pod ``ingest-<n>``'s
    certificate, CN ``worker_identities(identity, max_replicas)[n]``. Exactly ``max_replicas`` of them."""
    remote_write_url: str
    """TSDB remote-write endpoint."""
    storage_class: pulumi.Input[str]
    """StorageClass of each worker's de-duplication volume."""
    state_size: str = "5Gi"
    """Size of each worker's state volume. Defaults to 5Gi."""
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
    reading_window: str = "72h"
    """The TSDB's out-of-order window (Prometheus duration): older readings are dead-lettered by the workers. Defaults to 72h."""


class IngestWorkers(pulumi.ComponentResource):
    """StatefulSet, config, headless metrics Service, HPA and PodDisruptionBudget of the ingest tier."""

    statefulset_name: pulumi.Output[str]
    metrics_service_name: pulumi.Output[str]
    hpa_name: pulumi.Output[str]

    def __init__(self, name: str, args: IngestArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if args.min_replicas < 1:
            raise ComponentArgsError(name, "min_replicas", args.min_replicas, "must be at least 1")
        if args.min_replicas > args.max_replicas:
            raise ComponentArgsError(name, "min_replicas", args.min_replicas, f"must not exceed max_replicas {args.max_replicas}")
        if not 0 <= args.scale_down_stabilization_seconds <= 3600:
            raise ComponentArgsError(name, "scale_down_stabilization_seconds", args.scale_down_stabilization_seconds, "must be 0..3600")
        if len(args.tls_secrets) != args.max_replicas:
            raise ComponentArgsError(name, "tls_secrets", len(args.tls_secrets),
                                     f"must hold one Secret per worker up to max_replicas {args.max_replicas}")
        conf_text = ingest_toml(args.broker_host, args.remote_write_url, duration_s(args.reading_window),
                                worker_identities(args.identity, args.max_replicas))
        validate_ingest_toml(name, conf_text)
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
        conf = k8s.core.v1.ConfigMap(f"{name}-config", metadata=metadata(f"{APP}-config", ns, APP),
                                     data={"ingest.toml": conf_text}, opts=o)
        worker = container(
            "ingest", args.image, args.resources,
            args=["run", "--config", "/etc/ems/ingest/ingest.toml"],
            ports=[("metrics", METRICS_PORT)],
            env={"EMS_BROKER_CLIENT_ID": f"{args.identity}-$({POD_NAME_ENV})", **pod_tls_env(TLS_DIR)},
            mounts=[("config", "/etc/ems/ingest"), ("state", STATE_DIR), ("tls", TLS_DIR), ("tmp", "/tmp")],
            pod_name_env=True,
            writable=["state", "tmp"],
            probe_port=METRICS_PORT, probe_path="/metrics", liveness_path="/healthz",
        )
        workers = k8s.apps.v1.StatefulSet(
            f"{name}-sts",
            metadata=metadata(APP, ns, APP, **{THERMAL_LABEL: "true"}),
            spec={
                "serviceName": metrics_svc.metadata.name,
                # No "replicas": the HPA owns the count (a value here would be reset on every update).
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": selector(APP)},
                "template": {
                    # ingest.toml is read only at start: a change rolls the workers (sessions persist at the broker).
                    "metadata": template_metadata(APP, [worker], config={"ingest.toml": conf_text}, **{THERMAL_LABEL: "true"}),
                    "spec": pod_spec([worker], service_account=sa.metadata.name,
                                     volumes=[config_volume("config", conf.metadata.name),
                                              per_pod_secrets_volume("tls", [(f"{APP}-{n}", secret) for n, secret
                                                                              in enumerate(args.tls_secrets)]),
                                              empty_dir("tmp")],
                                     sysctls=SYSCTLS, pool="general", spread_app=APP),
                },
                "volumeClaimTemplates": [{
                    "metadata": {"name": "state", "labels": labels(APP)},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": args.storage_class,
                        "resources": {"requests": {"storage": args.state_size}},
                    },
                }],
            },
            opts=o,
        )
        hpa = k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-hpa",
            metadata=metadata(APP, ns, APP, **{THERMAL_LABEL: "true"}),
            spec={
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": workers.metadata.name},
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
        self.statefulset_name = workers.metadata.name
        self.metrics_service_name = metrics_svc.metadata.name
        self.hpa_name = hpa.metadata.name
        self.register_outputs({
            "statefulset_name": self.statefulset_name,
            "metrics_service_name": self.metrics_service_name,
            "hpa_name": self.hpa_name,
        })
