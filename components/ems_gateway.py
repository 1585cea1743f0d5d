"""The protocol gateway ``deployment/ems-gateway``: the edge agent polling RS-485 gateways from interconnect nodes.

The field manual addresses it as ``kubectl logs -f deployment/ems-gateway -n ems-system`` and
``kubectl rollout restart deployment/ems-gateway``, so its Deployment is named ``ems-gateway``
(a contract name, like the manual's paths). One replica with the ``Recreate`` strategy: a
restart stops the old pod (SIGTERM flushes what it can) before the new one mounts the same
spool claim, so the spool is never shared and never lost; readings that were spooled but
not yet acknowledged are published by the new pod. The audit log is where the manual says,
``/var/log/ems/telemetry-audit.log``, on a volume of its own. The agent logs JSON
lines to stdout (``kubectl logs``), never to a file.

It is latency-critical (``ems.io/latency-critical: "true"``) and therefore carries a
*required* node affinity to ``ems.io/pool In [interconnect]``. Its sensors.conf is generated
from the stack's ``ems:modbusGateways`` (one device per gateway, framing per gateway:
Modbus TCP or RTU over TCP); it publishes to the broker over mTLS with its own client
certificate.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from dataclasses import dataclass
from typing import Any, Sequence

import pulumi
import pulumi_kubernetes as k8s

from components.k8s_common import (
    LATENCY_LABEL, ComponentArgsError, Resources, child, config_volume, container, metadata,
    pod_spec, secret_volume, selector, template_metadata,
)
from components.settings import ModbusGateway

APP = "ems-gateway"
HTTP_PORT = 9100
SPOOL_DIR = "/var/lib/ems"
AUDIT_DIR = "/var/log/ems"
AUDIT_LOG = f"{AUDIT_DIR}/telemetry-audit.log"
CONFIG_PATH = "/etc/ems/conf/sensors.conf"


def sensors_conf(site: str, broker_host: str, gateways: Sequence[ModbusGateway]) -> str:
    """The edge agent's sensors.conf (TOML) for the gateway; strings are JSON-quoted (valid TOML)."""
    q = json.dumps
    lines = [
        f"site = {q(site)}",
        "",
        "[broker]",
        f"host = {q(broker_host)}",
        "port = 8883",
        'ca = "/etc/ems/tls/ca.crt"',
        'cert = "/etc/ems/tls/tls.crt"',
        'key = "/etc/ems/tls/tls.key"',
        "",
        "[spool]",
        f"path = {q(SPOOL_DIR + '/spool')}",
        "",
        "[audit]",
        f"path = {q(AUDIT_LOG)}",
        "",
        "[twin]",
        f"cache_path = {q(SPOOL_DIR + '/twin.json')}",
        "",
        "[http]",
        'host = "0.0.0.0"',
        f"port = {HTTP_PORT}",
    ]
    for gw in gateways:
        lines += ["", "[[devices]]", f"name = {q(gw.name)}", f"host = {q(gw.host)}", f"port = {gw.port}",
                  f"unit = {gw.unit}", f"transport = {q(gw.transport)}"]
        for point in gw.points:
            lines += ["", "[[devices.points]]"]
            tables = {k: v for k, v in point.items() if isinstance(v, dict)}
            lines += [f"{k} = {q(v)}" for k, v in point.items() if k not in tables]
            for table, values in tables.items():
                lines += [f"[devices.points.{table}]"] + [f"{k} = {q(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def validate_sensors_conf(name: str, text: str) -> None:
    """Check the generated sensors.conf with the edge agent's own parser (one source of truth)."""
    from edge_agent.config import parse_config
    from edge_agent.errors import ConfigError

    try:
        parse_config(text, PurePosixPath(CONFIG_PATH), check_files=False)  # type: ignore[arg-type]
    except ConfigError as exc:
        # The agent's own field, value and reason: the message stays one line, with the value shortened alone.
        raise ComponentArgsError(name, f"gateways (sensors.conf {exc.path})", exc.value, exc.reason) from exc


@dataclass(frozen=True)
class EmsGatewayArgs:
    namespace: pulumi.Input[str]
    """Namespace of every object."""
    image: str
    """Edge agent image with an explicit tag."""
    site: str
    """Site id the gateway publishes as (CN of its client certificate)."""
    broker_host: str
    """Broker Service DNS name (8883, mTLS)."""
    tls_secret: pulumi.Input[str]
    """``kubernetes.io/tls`` Secret with the gateway's client certificate."""
    storage_class: pulumi.Input[str]
    """StorageClass of the spool and audit volumes."""
    gateways: tuple[ModbusGateway, ...] = ()
    """RS-485 gateways to poll (at least one)."""
    spool_size: str = "10Gi"
    """Spool volume size (``/var/lib/ems``: spool and twin cache). Defaults to 10Gi."""
    audit_size: str = "10Gi"
    """Audit volume size (``/var/log/ems``). Defaults to 10Gi."""
    resources: Resources = Resources("100m", "128Mi", "500m", "256Mi")
    """Container requests/limits. Defaults to 100m/128Mi, limits 500m/256Mi."""


def _claim(name: str, claim: str, args: EmsGatewayArgs, size: str, o: pulumi.ResourceOptions) -> k8s.core.v1.PersistentVolumeClaim:
    return k8s.core.v1.PersistentVolumeClaim(
        name, metadata=metadata(claim, args.namespace, APP),
        spec={"accessModes": ["ReadWriteOnce"], "storageClassName": args.storage_class,
              "resources": {"requests": {"storage": size}}},
        opts=o,
    )


class EmsGateway(pulumi.ComponentResource):
    """The ``ems-gateway`` Deployment on interconnect nodes: config, spool and audit claims, PodDisruptionBudget."""

    config_map_name: pulumi.Output[str]
    deployment_name: pulumi.Output[str]
    gateway_addresses: pulumi.Output[list[str]]

    def __init__(self, name: str, args: EmsGatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if not args.gateways:
            raise ComponentArgsError(name, "gateways", args.gateways, "must list at least one RS-485 gateway")
        names = [g.name for g in args.gateways]
        if len(set(names)) != len(names):
            raise ComponentArgsError(name, "gateways", names, "must have unique names")
        conf_text = sensors_conf(args.site, args.broker_host, args.gateways)
        validate_sensors_conf(name, conf_text)
        # Formerly the StatefulSet "modbus-bridge" (component ems:workloads:ModbusBridge).
        renamed = pulumi.ResourceOptions(aliases=[pulumi.Alias(type_="ems:workloads:ModbusBridge")])
        super().__init__("ems:workloads:EmsGateway", name, None, pulumi.ResourceOptions.merge(opts, renamed))
        o = child(self)
        ns = args.namespace
        extra = {LATENCY_LABEL: "true"}
        sa = k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=metadata(APP, ns, APP), automount_service_account_token=False, opts=o)
        conf = k8s.core.v1.ConfigMap(
            f"{name}-config", metadata=metadata(f"{APP}-config", ns, APP),
            data={"sensors.conf": conf_text}, opts=o,
        )
        spool = _claim(f"{name}-spool", f"{APP}-spool", args, args.spool_size, o)
        audit = _claim(f"{name}-audit", f"{APP}-audit", args, args.audit_size, o)
        agent = container(
            "edge-agent", args.image, args.resources,
            # Log lines to stdout: collectors that rank stderr as errors would file every line as one.
            args=["--log-stream", "stdout", "run", "--config", CONFIG_PATH],
            ports=[("metrics", HTTP_PORT)],
            env={"EMS_RS485_GATEWAYS": ",".join(f"{g.host}:{g.port}" for g in args.gateways)},
            mounts=[("config", "/etc/ems/conf"), ("tls", "/etc/ems/tls"), ("spool", SPOOL_DIR), ("audit", AUDIT_DIR)],
            writable=["spool", "audit"],
            probe_port=HTTP_PORT, probe_path="/healthz",
        )
        k8s.core.v1.Service(
            f"{name}-svc", metadata=metadata(APP, ns, APP),
            spec={"selector": selector(APP),
                  "ports": [{"name": "metrics", "port": HTTP_PORT, "targetPort": "metrics", "protocol": "TCP"}]},
            opts=o,
        )
        volumes: list[dict[str, Any]] = [
            config_volume("config", conf.metadata.name), secret_volume("tls", args.tls_secret),
            {"name": "spool", "persistentVolumeClaim": {"claimName": spool.metadata.name}},
            {"name": "audit", "persistentVolumeClaim": {"claimName": audit.metadata.name}},
        ]
        deployment = k8s.apps.v1.Deployment(
            f"{name}-deploy",
            metadata=metadata(APP, ns, APP, **extra),
            spec={
                "replicas": 1,
                # Recreate, not RollingUpdate: two pods would share (or wait forever for) one RWO spool.
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": selector(APP)},
                "template": {
                    # The agent reloads only gain and offset in place; the rest of sensors.conf is read at start, so a
                    # change recreates the pod (the spool claim keeps every unacknowledged reading).
                    "metadata": template_metadata(APP, [agent], config={"sensors.conf": conf_text}, **extra),
                    "spec": {**pod_spec([agent], service_account=sa.metadata.name, volumes=volumes,
                                        pool="interconnect", required_pool=True),
                             # Time for SIGTERM to flush the spool (the agent's --shutdown-grace is 10 s).
                             "terminationGracePeriodSeconds": 30},
                },
            },
            opts=o,
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb", metadata=metadata(APP, ns, APP),
            spec={"maxUnavailable": 1, "selector": {"matchLabels": selector(APP)}}, opts=o,
        )
        self.config_map_name = conf.metadata.name
        self.deployment_name = deployment.metadata.name
        self.gateway_addresses = pulumi.Output.from_input([f"{g.host}:{g.port}" for g in args.gateways])
        self.register_outputs({"config_map_name": self.config_map_name, "deployment_name": self.deployment_name,
                               "gateway_addresses": self.gateway_addresses})


__all__ = ["APP", "AUDIT_LOG", "EmsGateway", "EmsGatewayArgs", "sensors_conf", "validate_sensors_conf"]
