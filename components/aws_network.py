"""The region's VPC: private subnets for nodes, public subnets for the NLB, one NAT per zone.

Address plan (for a ``/P`` VPC): the lower half holds up to four private subnets of
``/P+3`` (room for VPC-CNI pod IPs), the upper half public subnets of ``/P+5``. Subnets are
tagged for Kubernetes load-balancer discovery. A NAT gateway per zone keeps a zone outage
from cutting the others' egress.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.k8s_common import ComponentArgsError

MAX_ZONES = 4


def plan_subnets(cidr: str, zones: int) -> tuple[list[str], list[str]]:
    """(private, public) CIDRs for ``zones`` zones inside ``cidr``."""
    network = ipaddress.ip_network(cidr)
    lower, upper = network.subnets(prefixlen_diff=1)
    private = [str(n) for n in list(lower.subnets(prefixlen_diff=2))[:zones]]
    public = [str(n) for n in list(upper.subnets(prefixlen_diff=4))[:zones]]
    return private, public


@dataclass(frozen=True)
class RegionNetworkArgs:
    availability_zones: tuple[str, ...]
    """Zones to span (2..4)."""
    cidr: str = "10.40.0.0/16"
    """VPC CIDR (IPv4, /20 or larger). Defaults to 10.40.0.0/16."""
    cluster_name: str = "ems"
    """Cluster name, for the ``kubernetes.io/cluster/<name>`` subnet tags. Defaults to ``ems``."""
    tags: tuple[tuple[str, str], ...] = ()
    """Tags on every resource. Defaults to none."""


class RegionNetwork(pulumi.ComponentResource):
    """VPC, internet gateway, public/private subnets, NAT gateways and route tables."""

    vpc_id: pulumi.Output[str]
    vpc_cidr: pulumi.Output[str]
    private_subnet_ids: pulumi.Output[list[str]]
    public_subnet_ids: pulumi.Output[list[str]]

    def __init__(self, name: str, args: RegionNetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if not 2 <= len(args.availability_zones) <= MAX_ZONES:
            raise ComponentArgsError(name, "availability_zones", args.availability_zones, f"must list 2..{MAX_ZONES} zones")
        network = ipaddress.ip_network(args.cidr)
        if network.version != 4 or network.prefixlen > 20:
            raise ComponentArgsError(name, "cidr", args.cidr, "must be an IPv4 block of /20 or larger")
        super().__init__("ems:aws:RegionNetwork", name, None, opts)
        o = pulumi.ResourceOptions(parent=self)
        base = dict(args.tags)
        tags = lambda role, **extra: {**base, "Name": f"{name}-{role}", **extra}  # noqa: E731
        cluster_tag = {f"kubernetes.io/cluster/{args.cluster_name}": "shared"}

        vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=args.cidr, enable_dns_hostnames=True, enable_dns_support=True, tags=tags("vpc"), opts=o)
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=tags("igw"), opts=o)
        public_rt = aws.ec2.RouteTable(f"{name}-public-rt", vpc_id=vpc.id,
                                       routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}], tags=tags("public-rt"), opts=o)
        private_cidrs, public_cidrs = plan_subnets(args.cidr, len(args.availability_zones))
        private_ids, public_ids = [], []
        for zone, private_cidr, public_cidr in zip(args.availability_zones, private_cidrs, public_cidrs):
            public = aws.ec2.Subnet(
                f"{name}-public-{zone}", vpc_id=vpc.id, availability_zone=zone, cidr_block=public_cidr,
                map_public_ip_on_launch=False, tags=tags(f"public-{zone}", **cluster_tag, **{"kubernetes.io/role/elb": "1"}), opts=o,
            )
            aws.ec2.RouteTableAssociation(f"{name}-public-{zone}-rta", subnet_id=public.id, route_table_id=public_rt.id, opts=o)
            eip = aws.ec2.Eip(f"{name}-nat-{zone}-eip", domain="vpc", tags=tags(f"nat-{zone}"), opts=o)
            nat = aws.ec2.NatGateway(f"{name}-nat-{zone}", allocation_id=eip.id, subnet_id=public.id, tags=tags(f"nat-{zone}"),
                                     opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]))
            private = aws.ec2.Subnet(
                f"{name}-private-{zone}", vpc_id=vpc.id, availability_zone=zone, cidr_block=private_cidr,
                tags=tags(f"private-{zone}", **cluster_tag, **{"kubernetes.io/role/internal-elb": "1"}), opts=o,
            )
            rt = aws.ec2.RouteTable(f"{name}-private-{zone}-rt", vpc_id=vpc.id,
                                    routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id}], tags=tags(f"private-{zone}-rt"), opts=o)
            aws.ec2.RouteTableAssociation(f"{name}-private-{zone}-rta", subnet_id=private.id, route_table_id=rt.id, opts=o)
            private_ids.append(private.id)
            public_ids.append(public.id)

        self.vpc_id = vpc.id
        self.vpc_cidr = vpc.cidr_block
        self.private_subnet_ids = pulumi.Output.all(*private_ids)  # type: ignore[assignment]
        self.public_subnet_ids = pulumi.Output.all(*public_ids)  # type: ignore[assignment]
        self.register_outputs({
            "vpc_id": self.vpc_id, "vpc_cidr": self.vpc_cidr,
            "private_subnet_ids": self.private_subnet_ids, "public_subnet_ids": self.public_subnet_ids,
        })
