"""The global load balancer: AWS Global Accelerator in front of every region's NLB.

TCP listeners on 8883 (MQTT/mTLS, client affinity by source IP so a site keeps its broker)
and 443; one endpoint group per region and listener, health-checked on the listener's port.
Optionally, Route 53 latency records (one per region, each with a TCP health check) give
DNS names that resolve to the nearest healthy region's NLB. The caller passes an AWS
provider in ``us-west-2`` (where the Global Accelerator API lives) for the accelerator;
Route 53 is global.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.k8s_common import ComponentArgsError

PORTS = {"mqtt": 8883, "api": 443}


@dataclass(frozen=True)
class RegionEndpoint:
    """One region stack's entry point (from its stack outputs)."""

    key: str
    """Stable short name (the region stack name) used in logical names."""
    region: pulumi.Input[str]
    nlb_arn: pulumi.Input[str]
    nlb_dns_name: pulumi.Input[str]
    nlb_zone_id: pulumi.Input[str]


@dataclass(frozen=True)
class GlobalLoadBalancerArgs:
    regions: tuple[RegionEndpoint, ...]
    """Region endpoints (at least one)."""
    accelerator_name: str = "ems-global"
    """Accelerator name. Defaults to ``ems-global``."""
    health_check_interval_seconds: int = 10
    """Endpoint-group health-check interval, 10 or 30. Defaults to 10."""
    dns_zone_id: str | None = None
    """Route 53 hosted zone for latency records. Defaults to none (no records)."""
    mqtt_domain_name: str | None = None
    """Latency-routed name of the brokers (requires ``dns_zone_id``)."""
    api_domain_name: str | None = None
    """Latency-routed name of the API gateways (requires ``dns_zone_id``)."""
    tags: tuple[tuple[str, str], ...] = ()
    """Tags. Defaults to none."""


class GlobalLoadBalancer(pulumi.ComponentResource):
    """Accelerator, listeners, endpoint groups and optional Route 53 latency records."""

    accelerator_arn: pulumi.Output[str]
    accelerator_dns_name: pulumi.Output[str]
    static_ips: pulumi.Output[list[str]]
    listener_arns: pulumi.Output[dict[str, str]]

    def __init__(self, name: str, args: GlobalLoadBalancerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if not args.regions:
            raise ComponentArgsError(name, "regions", args.regions, "must list at least one region")
        keys = [r.key for r in args.regions]
        if len(set(keys)) != len(keys):
            raise ComponentArgsError(name, "regions", keys, "must have distinct keys")
        if args.health_check_interval_seconds not in (10, 30):
            raise ComponentArgsError(name, "health_check_interval_seconds", args.health_check_interval_seconds, "must be 10 or 30")
        if args.dns_zone_id and not (args.mqtt_domain_name and args.api_domain_name):
            raise ComponentArgsError(name, "dns_zone_id", args.dns_zone_id, "needs mqtt_domain_name and api_domain_name")
        super().__init__("ems:global:GlobalLoadBalancer", name, None, opts)
        o = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        accelerator = aws.globalaccelerator.Accelerator(
            f"{name}-accelerator", name=args.accelerator_name, ip_address_type="IPV4", enabled=True, tags=tags, opts=o)
        listeners: dict[str, pulumi.Output[str]] = {}
        for role, port in PORTS.items():
            listener = aws.globalaccelerator.Listener(
                f"{name}-{role}-listener", accelerator_arn=accelerator.id, protocol="TCP",
                client_affinity="SOURCE_IP" if role == "mqtt" else "NONE",
                port_ranges=[{"from_port": port, "to_port": port}], opts=o,
            )
            listeners[role] = listener.id
            for r in args.regions:
                aws.globalaccelerator.EndpointGroup(
                    f"{name}-{role}-{_slug(r.key)}",
                    listener_arn=listener.id,
                    endpoint_group_region=r.region,
                    health_check_protocol="TCP",
                    health_check_port=port,
                    health_check_interval_seconds=args.health_check_interval_seconds,
                    threshold_count=3,
                    traffic_dial_percentage=100,
                    endpoint_configurations=[{"endpoint_id": r.nlb_arn, "weight": 100, "client_ip_preservation_enabled": False}],
                    opts=o,
                )
        if args.dns_zone_id:
            d = o
            for role, domain in (("mqtt", args.mqtt_domain_name), ("api", args.api_domain_name)):
                for r in args.regions:
                    check = aws.route53.HealthCheck(
                        f"{name}-{role}-{_slug(r.key)}-health", type="TCP", fqdn=r.nlb_dns_name, port=PORTS[role],
                        request_interval=args.health_check_interval_seconds, failure_threshold=3,
                        tags={**tags, "Name": f"{name}-{role}-{r.key}"}, opts=d,
                    )
                    aws.route53.Record(
                        f"{name}-{role}-{_slug(r.key)}-record", zone_id=args.dns_zone_id, name=domain, type="A",
                        set_identifier=r.key, latency_routing_policies=[{"region": r.region}],
                        aliases=[{"name": r.nlb_dns_name, "zone_id": r.nlb_zone_id, "evaluate_target_health": True}],
                        health_check_id=check.id, opts=d,
                    )
        self.accelerator_arn = accelerator.id
        self.accelerator_dns_name = accelerator.dns_name
        self.static_ips = accelerator.ip_sets.apply(
            lambda sets: [ip for s in (sets or []) for ip in ((s.get("ip_addresses") if isinstance(s, dict) else s.ip_addresses) or [])])
        self.listener_arns = pulumi.Output.from_input(listeners)  # type: ignore[arg-type]
        self.register_outputs({
            "accelerator_arn": self.accelerator_arn, "accelerator_dns_name": self.accelerator_dns_name,
            "static_ips": self.static_ips, "listener_arns": self.listener_arns,
        })


def _slug(key: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", key.lower()).strip("-")
