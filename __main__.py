"""ems: one region's EMS platform per stack, or the global load balancer (``ems:role: global``).

settings (``components/settings.py``) → cluster by ``ems:cloud`` (EKS, existing cluster or
local renderer) → its Kubernetes provider → one ``EmsPlatform`` → stack outputs. Providers
are always explicit: private and local stacks disable the default ``aws`` and
``kubernetes`` providers in their stack files, and create no AWS resource.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from components.aws_ingress import Backend, RegionalIngress, RegionalIngressArgs
from components.aws_network import RegionNetwork, RegionNetworkArgs
from components.eks_cluster import EksCluster, EksClusterArgs
from components.existing_cluster import ExistingCluster, ExistingClusterArgs
from components.global_lb import GlobalLoadBalancer, GlobalLoadBalancerArgs, RegionEndpoint
from components.local_render import LocalRender, LocalRenderArgs
from components.platform import EmsPlatform, EmsPlatformArgs
from components.settings import StackSettings, load_settings

GLOBAL_ACCELERATOR_REGION = "us-west-2"


def cluster_region_stack(settings: StackSettings) -> None:
    """A private or local region: an existing cluster's (or the renderer's) provider + the platform."""
    platform_settings = settings.platform
    assert platform_settings is not None
    cluster: ExistingCluster | LocalRender
    if settings.cloud == "private":
        assert settings.private is not None
        cluster = ExistingCluster("cluster", ExistingClusterArgs(kubeconfig=settings.private.kubeconfig, context=settings.private.kube_context))
    else:
        assert settings.local is not None
        cluster = LocalRender("cluster", LocalRenderArgs(directory=settings.local.render_directory))
        pulumi.export("render_directory", cluster.render_directory)
    platform = EmsPlatform("ems", EmsPlatformArgs(platform_settings, settings.cloud),
                           opts=pulumi.ResourceOptions(providers=[cluster.provider]))
    _export_platform(platform)


def aws_region_stack(settings: StackSettings) -> None:
    """An AWS region: VPC (or given subnets), EKS, the platform on it, and the regional NLB."""
    a = settings.aws
    assert a is not None and settings.platform is not None
    cluster_name = f"ems-{a.region}"
    # Tags go on every AWS resource through the provider's default_tags (not per resource).
    tags = {**dict(a.tags), "ems.io/stack": settings.stack}
    provider = aws.Provider("aws", region=a.region, default_tags={"tags": tags})
    on_aws = pulumi.ResourceOptions(providers=[provider])
    if a.vpc_id:
        # Bring-your-own network: the VPC's real CIDR feeds the node security-group rules.
        vpc = aws.ec2.get_vpc_output(id=a.vpc_id, opts=pulumi.InvokeOutputOptions(provider=provider))
        vpc_id, vpc_cidr = pulumi.Output.from_input(a.vpc_id), vpc.cidr_block
        private_ids, public_ids = pulumi.Output.from_input(list(a.private_subnet_ids)), pulumi.Output.from_input(list(a.public_subnet_ids))
    else:
        network = RegionNetwork("network", RegionNetworkArgs(a.availability_zones, a.vpc_cidr, cluster_name), opts=on_aws)
        vpc_id, vpc_cidr, private_ids, public_ids = network.vpc_id, network.vpc_cidr, network.private_subnet_ids, network.public_subnet_ids
    cluster = EksCluster("cluster", EksClusterArgs(
        region=a.region, vpc_id=vpc_id, private_subnet_ids=private_ids, node_groups=a.node_groups, cluster_name=cluster_name,
        version=settings.kubernetes_version, public_endpoint_cidrs=a.public_endpoint_cidrs,
    ), opts=on_aws)
    platform = EmsPlatform("ems", EmsPlatformArgs(settings.platform, "aws"),
                           opts=pulumi.ResourceOptions(providers=[cluster.provider]))
    ingress = RegionalIngress("ingress", RegionalIngressArgs(
        cluster_name=cluster.cluster_name, region=a.region, vpc_id=vpc_id, vpc_cidr=vpc_cidr,
        public_subnet_ids=public_ids, node_security_group_id=cluster.cluster_security_group_id,
        lb_controller_role_arn=cluster.lb_controller_role_arn, namespace=platform.namespace,
        backends=(Backend("broker", 8883, platform.broker_external_service_name),
                  Backend("api-gateway", 443, platform.api_gateway_service_name)),
    ), opts=pulumi.ResourceOptions(providers=[provider, cluster.provider]))
    _export_platform(platform)
    pulumi.export("region", a.region)
    pulumi.export("cluster_name", cluster.cluster_name)
    pulumi.export("cluster_endpoint", cluster.endpoint)
    pulumi.export("cluster_certificate_authority", cluster.certificate_authority)
    pulumi.export("kubeconfig", cluster.kubeconfig)  # secret: built with pulumi.Output.secret
    pulumi.export("nlb_arn", ingress.nlb_arn)
    pulumi.export("nlb_dns_name", ingress.nlb_dns_name)
    pulumi.export("nlb_zone_id", ingress.nlb_zone_id)
    pulumi.export("mqtt_endpoint", pulumi.Output.concat("mqtts://", ingress.nlb_dns_name, ":8883"))
    pulumi.export("api_endpoint", pulumi.Output.concat("https://", ingress.nlb_dns_name))


def _export_platform(platform: EmsPlatform) -> None:
    pulumi.export("namespace", platform.namespace)
    pulumi.export("ca_bundle_pem", platform.ca_cert_pem)
    pulumi.export("storage_class_name", platform.storage_class_name)
    pulumi.export("broker_service_name", platform.broker_external_service_name)
    pulumi.export("api_gateway_service_name", platform.api_gateway_service_name)
    pulumi.export("edge_client_secrets", platform.edge_client_secrets)


def global_stack(settings: StackSettings) -> None:
    """Global Accelerator (+ Route 53) over the region stacks named by ems:regionStacks."""
    g = settings.global_
    assert g is not None
    regions = []
    for stack in g.region_stacks:
        full = stack if "/" in stack else f"{pulumi.get_organization()}/{pulumi.get_project()}/{stack}"
        ref = pulumi.StackReference(f"ref-{stack.replace('/', '-')}", stack_name=full)
        regions.append(RegionEndpoint(
            key=stack.rsplit("/", 1)[-1],
            region=ref.require_output("region"),  # type: ignore[arg-type]
            nlb_arn=ref.require_output("nlb_arn"),  # type: ignore[arg-type]
            nlb_dns_name=ref.require_output("nlb_dns_name"),  # type: ignore[arg-type]
            nlb_zone_id=ref.require_output("nlb_zone_id"),  # type: ignore[arg-type]
        ))
    provider = aws.Provider("aws-global-accelerator", region=GLOBAL_ACCELERATOR_REGION,
                            default_tags={"tags": {**dict(settings.tags), "ems.io/stack": settings.stack}})
    lb = GlobalLoadBalancer("global", GlobalLoadBalancerArgs(
        regions=tuple(regions), accelerator_name=g.accelerator_name,
        health_check_interval_seconds=g.health_check_interval_seconds, dns_zone_id=g.dns_zone_id,
        mqtt_domain_name=g.mqtt_domain_name, api_domain_name=g.api_domain_name,
    ), opts=pulumi.ResourceOptions(providers=[provider]))
    pulumi.export("accelerator_arn", lb.accelerator_arn)
    pulumi.export("accelerator_dns_name", lb.accelerator_dns_name)
    pulumi.export("accelerator_static_ips", lb.static_ips)
    pulumi.export("listener_arns", lb.listener_arns)
    pulumi.export("region_stacks", list(g.region_stacks))
    if g.mqtt_domain_name:
        pulumi.export("mqtt_domain_name", g.mqtt_domain_name)
        pulumi.export("api_domain_name", g.api_domain_name)


def main() -> None:
    settings = load_settings()
    if settings.role == "global":
        global_stack(settings)
    elif settings.cloud == "aws":
        aws_region_stack(settings)
    else:
        cluster_region_stack(settings)


main()
