"""The in-cluster Modbus bridge: the edge agent polling RS-485 gateways from interconnect nodes.

It is latency-critical (``ems.io/latency-critical: "true"``) and therefore carries a
*required* node affinity to ``ems.io/pool In [interconnect]`` — the nodes closest to the
utility interconnects. Its sensors.conf is generated from the stack's ``ems:modbusGateways``
(one device per gateway); it publishes to the broker over mTLS with its own client
certificate and spools to a persistent volume so a restart loses nothing.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from dataclasses import dataclass
from typing import Sequence

import pulumi
import pulumi_kubernetes as k8s

from components.k8s_common import (
    LATENCY_LABEL, ComponentArgsError, Resources, child, config_volume, container, labels, metadata,
    pod_spec, secret_volume, selector, template_metadata,
)
from components.settings import ModbusGateway

APP = "modbus-bridge"
HTTP_PORT = 9100


def sensors_conf(site: str, broker_host: str, gateways: Sequence[ModbusGateway]) -> str:
    """The edge agent's sensors.conf (TOML) for the bridge; strings are JSON-quoted (valid TOML)."""
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
        'path = "/var/lib/ems/spool"',
        "",
        "[audit]",
        'path = "/var/lib/ems/telemetry-audit.log"',
        "",
        "[twin]",
        'cache_path = "/var/lib/ems/twin.json"',
        "",
        "[http]",
        'host = "0.0.0.0"',
        f"port = {HTTP_PORT}",
    ]
    for gw in gateways:
        lines += ["", "[[devices]]", f"name = {q(gw.name)}", f"host = {q(gw.host)}", f"port = {gw.port}",
                  f"unit = {gw.unit}", 'transport = "rtu-over-tcp"']
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
        parse_config(text, PurePosixPath("/etc/ems/conf/sensors.conf"), check_files=False)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise ComponentArgsError(name, "gateways", str(exc), "produce an invalid sensors.conf") from exc


@dataclass(frozen=True)
class ModbusBridgeArgs:
    namespace: pulumi.Input[str]
    """Namespace of every object."""
    image: str
    """Edge agent image with an explicit tag."""
    site: str
    """Site id the bridge publishes as (CN of its client certificate)."""
    broker_host: str
    """Broker Service DNS name (8883, mTLS)."""
    tls_secret: pulumi.Input[str]
    """``kubernetes.io/tls`` Secret with the bridge's client certificate."""
    storage_class: pulumi.Input[str]
    """StorageClass of the spool volume."""
    gateways: tuple[ModbusGateway, ...] = ()
    """RS-485 gateways to poll (at least one)."""
    spool_size: str = "10Gi"
    """Spool volume size. Defaults to 10Gi."""
    resources: Resources = Resources("100m", "128Mi", "500m", "256Mi")
    """Container requests/limits. Defaults to 100m/128Mi, limits 500m/256Mi."""


class ModbusBridge(pulumi.ComponentResource):
    """Edge-agent StatefulSet on interconnect nodes, its config and PodDisruptionBudget."""

    config_map_name: pulumi.Output[str]
    gateway_addresses: pulumi.Output[list[str]]

    def __init__(self, name: str, args: ModbusBridgeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if not args.gateways:
            raise ComponentArgsError(name, "gateways", args.gateways, "must list at least one RS-485 gateway")
        names = [g.name for g in args.gateways]
        if len(set(names)) != len(names):
            raise ComponentArgsError(name, "gateways", names, "must have unique names")
        conf_text = sensors_conf(args.site, args.broker_host, args.gateways)
        validate_sensors_conf(name, conf_text)
        super().__init__("ems:workloads:ModbusBridge", name, None, opts)
        o = child(self)
        ns = args.namespace
        extra = {LATENCY_LABEL: "true"}
        sa = k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=metadata(APP, ns, APP), automount_service_account_token=False, opts=o)
        conf = k8s.core.v1.ConfigMap(
            f"{name}-config", metadata=metadata(f"{APP}-config", ns, APP),
            data={"sensors.conf": conf_text}, opts=o,
        )
        agent = container(
            "edge-agent", args.image, args.resources,
            args=["run", "--config", "/etc/ems/conf/sensors.conf"],
            ports=[("metrics", HTTP_PORT)],
            env={"EMS_RS485_GATEWAYS": ",".join(f"{g.host}:{g.port}" for g in args.gateways)},
            mounts=[("config", "/etc/ems/conf"), ("tls", "/etc/ems/tls"), ("data", "/var/lib/ems")],
            writable=["data"],
            probe_port=HTTP_PORT, probe_path="/healthz",
        )
        # Governing headless Service of the StatefulSet; it also names the metrics endpoint.
        headless = k8s.core.v1.Service(
            f"{name}-headless", metadata=metadata(APP, ns, APP),
            spec={"clusterIP": "None", "selector": selector(APP),
                  "ports": [{"name": "metrics", "port": HTTP_PORT, "targetPort": "metrics", "protocol": "TCP"}]},
            opts=o,
        )
        k8s.apps.v1.StatefulSet(
            f"{name}-sts",
            metadata=metadata(APP, ns, APP, **extra),
            spec={
                "serviceName": headless.metadata.name,
                "replicas": 1,
                "selector": {"matchLabels": selector(APP)},
                "template": {
                    "metadata": template_metadata(APP, [agent], **extra),
                    "spec": pod_spec(
                        [agent], service_account=sa.metadata.name,
                        volumes=[config_volume("config", conf.metadata.name), secret_volume("tls", args.tls_secret)],
                        pool="interconnect", required_pool=True,
                    ),
                },
                "volumeClaimTemplates": [{
                    "metadata": {"name": "data", "labels": labels(APP)},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": args.storage_class,
                        "resources": {"requests": {"storage": args.spool_size}},
                    },
                }],
            },
            opts=o,
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb", metadata=metadata(APP, ns, APP),
            spec={"maxUnavailable": 1, "selector": {"matchLabels": selector(APP)}}, opts=o,
        )
        self.config_map_name = conf.metadata.name
        self.gateway_addresses = pulumi.Output.from_input([f"{g.host}:{g.port}" for g in args.gateways])
        self.register_outputs({"config_map_name": self.config_map_name, "gateway_addresses": self.gateway_addresses})
