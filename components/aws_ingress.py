"""The region's public entry: a Pulumi-owned NLB bound to the broker and API gateway Services.

Why not a ``type: LoadBalancer`` Service: Global Accelerator needs the NLB's ARN as an
endpoint, and an NLB created by a controller is invisible to Pulumi (its ARN is not a stack
output and it is replaced whenever the Service is). So the region stack creates the NLB,
its TCP listeners on 8883 and 443 (TLS and mTLS pass through to the pods) and IP target
groups, and the AWS Load Balancer Controller (installed here with its IRSA role) keeps the
targets in sync with the ClusterIP Services through ``TargetGroupBinding`` objects
(``elbv2.k8s.aws/v1beta1``). Node security-group rules admit 8883/443 from the VPC only
(the NLB's addresses; client IPs are not preserved for IP targets).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components.k8s_common import ComponentArgsError, labels
from components.kubernetes_versions import CHART_KUBERNETES

LBC_CHART_VERSION = CHART_KUBERNETES["aws-load-balancer-controller"][0]
LBC_REPOSITORY = "https://aws.github.io/eks-charts"


@dataclass(frozen=True)
class Backend:
    """One exposed port: NLB listener ``port`` → Service ``service_name`` (same port)."""

    role: str
    port: int
    service_name: pulumi.Input[str]


@dataclass(frozen=True)
class RegionalIngressArgs:
    cluster_name: pulumi.Input[str]
    """EKS cluster name (for the controller)."""
    region: str
    """AWS region (for the controller)."""
    vpc_id: pulumi.Input[str]
    """VPC of the cluster."""
    vpc_cidr: pulumi.Input[str]
    """VPC CIDR admitted on the node security group."""
    public_subnet_ids: pulumi.Input[list[str]]
    """Subnets of the internet-facing NLB."""
    node_security_group_id: pulumi.Input[str]
    """Security group of the nodes (the EKS cluster security group)."""
    lb_controller_role_arn: pulumi.Input[str]
    """IRSA role of the AWS Load Balancer Controller."""
    namespace: pulumi.Input[str]
    """Namespace of the bound Services."""
    backends: tuple[Backend, ...]
    """Ports to expose; only 8883 and 443 are allowed."""
    tags: tuple[tuple[str, str], ...] = ()
    """Tags on every AWS resource. Defaults to none."""


class RegionalIngress(pulumi.ComponentResource):
    """NLB + listeners + IP target groups + TargetGroupBindings (+ the controller that serves them)."""

    nlb_arn: pulumi.Output[str]
    nlb_dns_name: pulumi.Output[str]
    nlb_zone_id: pulumi.Output[str]
    target_group_arns: pulumi.Output[dict[str, str]]

    def __init__(self, name: str, args: RegionalIngressArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        for b in args.backends:
            if b.port not in (8883, 443):
                raise ComponentArgsError(name, f"backends[{b.role}].port", b.port, "must be 8883 or 443 (the only external ports)")
        if not args.backends:
            raise ComponentArgsError(name, "backends", args.backends, "must expose at least one port")
        super().__init__("ems:aws:RegionalIngress", name, None, opts)
        o = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        controller = k8s.helm.v3.Release(
            f"{name}-lb-controller",
            chart="aws-load-balancer-controller",
            version=LBC_CHART_VERSION,
            repository_opts={"repo": LBC_REPOSITORY},
            namespace="kube-system",
            values={
                "clusterName": args.cluster_name,
                "region": args.region,
                "vpcId": args.vpc_id,
                "replicaCount": 2,
                "serviceAccount": {"create": True, "name": "aws-load-balancer-controller",
                                   "annotations": {"eks.amazonaws.com/role-arn": args.lb_controller_role_arn}},
                # Only TargetGroupBindings: the controller must not provision load balancers itself.
                "enableServiceMutatorWebhook": False,
                "createIngressClassResource": False,
                "enableShield": False,
                "enableWaf": False,
                "enableWafv2": False,
            },
            opts=o,
        )
        nlb = aws.lb.LoadBalancer(
            f"{name}-nlb", load_balancer_type="network", internal=False, subnets=args.public_subnet_ids,
            enable_cross_zone_load_balancing=True, enable_deletion_protection=True, ip_address_type="ipv4",
            tags=tags, opts=o,
        )
        target_groups: dict[str, pulumi.Output[str]] = {}
        for b in args.backends:
            tg = aws.lb.TargetGroup(
                f"{name}-{b.role}-tg", port=b.port, protocol="TCP", target_type="ip", vpc_id=args.vpc_id,
                deregistration_delay=30, connection_termination=True,
                health_check={"protocol": "TCP", "port": "traffic-port", "interval": 10, "healthy_threshold": 3, "unhealthy_threshold": 3},
                tags=tags, opts=o,
            )
            aws.lb.Listener(f"{name}-{b.role}-listener", load_balancer_arn=nlb.arn, port=b.port, protocol="TCP",
                            default_actions=[{"type": "forward", "target_group_arn": tg.arn}], tags=tags, opts=o)
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-{b.role}-from-nlb", security_group_id=args.node_security_group_id, cidr_ipv4=args.vpc_cidr,
                ip_protocol="tcp", from_port=b.port, to_port=b.port, description=f"NLB to {b.role} pods", tags=tags, opts=o,
            )
            k8s.apiextensions.CustomResource(
                f"{name}-{b.role}-binding",
                api_version="elbv2.k8s.aws/v1beta1",
                kind="TargetGroupBinding",
                metadata={"name": f"{b.role}-{b.port}", "namespace": args.namespace, "labels": labels(b.role)},
                spec={"serviceRef": {"name": b.service_name, "port": b.port}, "targetGroupARN": tg.arn, "targetType": "ip"},
                opts=pulumi.ResourceOptions(parent=self, depends_on=[controller]),
            )
            target_groups[b.role] = tg.arn
        self.nlb_arn = nlb.arn
        self.nlb_dns_name = nlb.dns_name
        self.nlb_zone_id = nlb.zone_id
        self.target_group_arns = pulumi.Output.from_input(target_groups)  # type: ignore[arg-type]
        self.register_outputs({
            "nlb_arn": self.nlb_arn, "nlb_dns_name": self.nlb_dns_name,
            "nlb_zone_id": self.nlb_zone_id, "target_group_arns": self.target_group_arns,
        })
