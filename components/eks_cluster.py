"""The AWS regional cluster: EKS with plain ``aws.eks``/``aws.iam``/``aws.kms`` resources.

Not ``pulumi_eks``: mocks and policy packs cannot see inside a remote component, and every
resource here must be visible to both. What it builds:

* control plane >= 1.26, private endpoint on; the public endpoint is off unless CIDRs are
  given (never 0.0.0.0/0); Secrets envelope-encrypted with a rotating KMS key; control
  plane logs api, audit, authenticator;
* one managed node group per configured group (label ``ems.io/pool``, taints), each with a
  launch template whose AL2023 ``NodeConfig`` lets the kubelet accept the unsafe sysctl
  ``net.core.somaxconn`` (DESIGN §5), IMDSv2 only, hop limit 1, encrypted root volume;
* the VPC CNI add-on with its network-policy agent on (so NetworkPolicies are enforced);
* the IAM OIDC provider, the EBS CSI driver add-on with its IRSA role, and the IRSA role of
  the AWS Load Balancer Controller (``TargetGroupBinding``, see ``aws_ingress.py``);
* a ``pulumi_kubernetes.Provider`` from a kubeconfig (a secret) that authenticates with
  ``aws eks get-token``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components.k8s_common import POOL_LABEL, ComponentArgsError
from components.kubernetes_versions import DEFAULT_KUBERNETES, MIN_KUBERNETES
from components.settings import NodeGroupSettings

LOG_TYPES = ["api", "audit", "authenticator"]
UNSAFE_SYSCTLS = ["net.core.somaxconn"]
EBS_CSI_SA = "system:serviceaccount:kube-system:ebs-csi-controller-sa"
LBC_SA = "system:serviceaccount:kube-system:aws-load-balancer-controller"
POLICY = "arn:aws:iam::aws:policy"


def node_user_data(unsafe_sysctls: list[str]) -> str:
    """Base64 MIME user data with an AL2023 NodeConfig that allows ``unsafe_sysctls``."""
    node_config = "\n".join([
        "---",
        "apiVersion: node.eks.aws/v1alpha1",
        "kind: NodeConfig",
        "spec:",
        "  kubelet:",
        "    config:",
        "      allowedUnsafeSysctls:",
        *[f"        - {s}" for s in unsafe_sysctls],
    ])
    mime = (
        'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="EMS"\n\n'
        f"--EMS\nContent-Type: application/node.eks.aws\n\n{node_config}\n\n--EMS--\n"
    )
    return base64.b64encode(mime.encode()).decode()


def addon_version(addon: str, kubernetes_version: pulumi.Input[str], parent: pulumi.Resource) -> pulumi.Output[str]:
    """The version of EKS add-on ``addon`` that EKS publishes as the default for ``kubernetes_version``.

    Pinned this way, the add-ons follow ``ems:kubernetesVersion``: raising it upgrades them in the same
    ``pulumi up`` instead of leaving add-ons built for the old control plane. The lookup runs on
    ``parent``'s AWS provider (the stacks disable the default one).
    """
    return aws.eks.get_addon_version_output(addon_name=addon, kubernetes_version=kubernetes_version,
                                            opts=pulumi.InvokeOutputOptions(parent=parent)).version


def kubeconfig(cluster_name: str, endpoint: str, ca_data: str, region: str) -> str:
    """A kubeconfig that authenticates with ``aws eks get-token`` (no static credentials)."""
    return json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster_name, "cluster": {"server": endpoint, "certificate-authority-data": ca_data}}],
        "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": cluster_name}}],
        "current-context": cluster_name,
        "users": [{"name": cluster_name, "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "aws",
            "args": ["eks", "get-token", "--cluster-name", cluster_name, "--region", region, "--output", "json"],
        }}}],
    })


def _assume(service: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]})


def _irsa_trust(provider_arn: str, issuer: str, subject: str) -> str:
    host = issuer.removeprefix("https://")
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow",
        "Principal": {"Federated": provider_arn},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {"StringEquals": {f"{host}:sub": subject, f"{host}:aud": "sts.amazonaws.com"}},
    }]})


@dataclass(frozen=True)
class EksClusterArgs:
    region: str
    """AWS region (for the kubeconfig's token command)."""
    vpc_id: pulumi.Input[str]
    """VPC of the cluster."""
    private_subnet_ids: pulumi.Input[list[str]]
    """Private subnets (>= 2 zones) for the control-plane ENIs and the nodes."""
    node_groups: tuple[NodeGroupSettings, ...]
    """Managed node groups; at least one ``interconnect`` and one ``nvme`` pool."""
    version: str = DEFAULT_KUBERNETES
    """Kubernetes version (>= 1.26; see components/kubernetes_versions.py). Defaults to DEFAULT_KUBERNETES (1.36)."""
    cluster_name: str | None = None
    """EKS cluster name (must match the subnets' ``kubernetes.io/cluster/<name>`` tags). Defaults to an auto-name."""
    public_endpoint_cidrs: tuple[str, ...] = ()
    """CIDRs allowed on the public API endpoint. Defaults to none: the public endpoint is off."""
    tags: tuple[tuple[str, str], ...] = ()
    """Tags on every AWS resource. Defaults to none."""


def validate_eks_args(name: str, args: EksClusterArgs) -> None:
    """Reject what EKS would accept but the platform must not (before any child exists)."""
    major, minor = (int(p) for p in args.version.split("."))
    if (major, minor) < MIN_KUBERNETES:
        raise ComponentArgsError(name, "version", args.version, f"is below the supported minimum {MIN_KUBERNETES[0]}.{MIN_KUBERNETES[1]}")
    for cidr in args.public_endpoint_cidrs:
        if cidr.endswith("/0"):
            raise ComponentArgsError(name, "public_endpoint_cidrs", cidr, "must not open the API to the whole internet")
    pools = {g.pool for g in args.node_groups}
    for needed in ("interconnect", "nvme"):
        if needed not in pools:
            raise ComponentArgsError(name, "node_groups", [g.name for g in args.node_groups], f"must include a {needed} pool")
    for g in args.node_groups:
        if not g.min_size <= g.desired_size <= g.max_size:
            raise ComponentArgsError(name, f"node_groups[{g.name}]", (g.min_size, g.desired_size, g.max_size), "must satisfy min <= desired <= max")


class EksCluster(pulumi.ComponentResource):
    """EKS control plane, node groups, add-ons, IRSA roles and a Kubernetes provider."""

    provider: k8s.Provider
    cluster_name: pulumi.Output[str]
    endpoint: pulumi.Output[str]
    certificate_authority: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    oidc_provider_arn: pulumi.Output[str]
    cluster_security_group_id: pulumi.Output[str]
    lb_controller_role_arn: pulumi.Output[str]
    kms_key_arn: pulumi.Output[str]

    def __init__(self, name: str, args: EksClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        validate_eks_args(name, args)
        super().__init__("ems:aws:EksCluster", name, None, opts)
        o = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)

        cluster_role = aws.iam.Role(f"{name}-cluster-role", assume_role_policy=_assume("eks.amazonaws.com"), tags=tags, opts=o)
        cluster_policy = aws.iam.RolePolicyAttachment(f"{name}-cluster-policy", role=cluster_role.name,
                                                      policy_arn=f"{POLICY}/AmazonEKSClusterPolicy", opts=o)
        key = aws.kms.Key(f"{name}-secrets-key", description=f"{name}: EKS Secrets envelope encryption",
                          enable_key_rotation=True, rotation_period_in_days=365, deletion_window_in_days=30, tags=tags, opts=o)
        public = bool(args.public_endpoint_cidrs)
        cluster = aws.eks.Cluster(
            f"{name}-eks",
            name=args.cluster_name,
            role_arn=cluster_role.arn,
            version=args.version,
            vpc_config={
                "subnet_ids": args.private_subnet_ids,
                "endpoint_private_access": True,
                "endpoint_public_access": public,
                "public_access_cidrs": list(args.public_endpoint_cidrs) if public else None,
            },
            encryption_config={"provider": {"key_arn": key.arn}, "resources": ["secrets"]},
            enabled_cluster_log_types=LOG_TYPES,
            access_config={"authentication_mode": "API", "bootstrap_cluster_creator_admin_permissions": True},
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[cluster_policy]),
        )
        issuer = cluster.identities[0].oidcs[0].issuer
        oidc = aws.iam.OpenIdConnectProvider(f"{name}-oidc", url=issuer, client_id_lists=["sts.amazonaws.com"], tags=tags, opts=o)

        node_role = aws.iam.Role(f"{name}-node-role", assume_role_policy=_assume("ec2.amazonaws.com"), tags=tags, opts=o)
        attachments = [
            aws.iam.RolePolicyAttachment(f"{name}-node-{short}", role=node_role.name, policy_arn=f"{POLICY}/{policy}", opts=o)
            for short, policy in (("worker", "AmazonEKSWorkerNodePolicy"), ("cni", "AmazonEKS_CNI_Policy"),
                                  ("ecr", "AmazonEC2ContainerRegistryReadOnly"))
        ]
        groups = [self._node_group(name, g, cluster, node_role, args, tags, attachments) for g in args.node_groups]

        # NetworkPolicies are only enforced on EKS when the VPC CNI's policy agent is on.
        aws.eks.Addon(
            f"{name}-vpc-cni", cluster_name=cluster.name, addon_name="vpc-cni",
            addon_version=addon_version("vpc-cni", cluster.version, self),
            configuration_values=json.dumps({"enableNetworkPolicy": "true"}),
            resolve_conflicts_on_create="OVERWRITE", resolve_conflicts_on_update="OVERWRITE",
            tags=tags, opts=o,
        )
        ebs_role = aws.iam.Role(
            f"{name}-ebs-csi-role",
            assume_role_policy=pulumi.Output.all(oidc.arn, issuer).apply(lambda v: _irsa_trust(v[0], v[1], EBS_CSI_SA)),
            tags=tags, opts=o,
        )
        ebs_policy = aws.iam.RolePolicyAttachment(f"{name}-ebs-csi-policy", role=ebs_role.name,
                                                  policy_arn=f"{POLICY}/service-role/AmazonEBSCSIDriverPolicy", opts=o)
        aws.eks.Addon(
            f"{name}-ebs-csi", cluster_name=cluster.name, addon_name="aws-ebs-csi-driver",
            addon_version=addon_version("aws-ebs-csi-driver", cluster.version, self),
            service_account_role_arn=ebs_role.arn, resolve_conflicts_on_create="OVERWRITE", resolve_conflicts_on_update="PRESERVE",
            tags=tags, opts=pulumi.ResourceOptions(parent=self, depends_on=[ebs_policy, *groups]),
        )
        lbc_role = aws.iam.Role(
            f"{name}-lb-controller-role",
            assume_role_policy=pulumi.Output.all(oidc.arn, issuer).apply(lambda v: _irsa_trust(v[0], v[1], LBC_SA)),
            tags=tags, opts=o,
        )
        aws.iam.RolePolicy(f"{name}-lb-controller-policy", role=lbc_role.id, policy=json.dumps({
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Resource": "*", "Action": [
                    "elasticloadbalancing:DescribeTargetGroups", "elasticloadbalancing:DescribeTargetHealth",
                    "elasticloadbalancing:DescribeLoadBalancers", "elasticloadbalancing:DescribeListeners",
                    "elasticloadbalancing:DescribeTags", "elasticloadbalancing:DescribeTargetGroupAttributes",
                    "elasticloadbalancing:DescribeLoadBalancerAttributes", "ec2:DescribeAvailabilityZones",
                    "ec2:DescribeInstances", "ec2:DescribeSubnets",
                    "ec2:DescribeVpcs", "ec2:DescribeSecurityGroups", "ec2:DescribeNetworkInterfaces"]},
                {"Effect": "Allow", "Resource": "arn:aws:elasticloadbalancing:*:*:targetgroup/*/*", "Action": [
                    "elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"]},
            ],
        }), opts=o)

        self.cluster_name = cluster.name
        self.endpoint = cluster.endpoint
        self.certificate_authority = cluster.certificate_authority.data
        self.kubeconfig = pulumi.Output.secret(pulumi.Output.all(cluster.name, cluster.endpoint, self.certificate_authority).apply(
            lambda v: kubeconfig(v[0], v[1], v[2], args.region)))
        self.provider = k8s.Provider(
            f"{name}-k8s", kubeconfig=self.kubeconfig, enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=groups),
        )
        self.oidc_provider_arn = oidc.arn
        self.cluster_security_group_id = cluster.vpc_config.cluster_security_group_id
        self.lb_controller_role_arn = lbc_role.arn
        self.kms_key_arn = key.arn
        self.register_outputs({
            "cluster_name": self.cluster_name, "endpoint": self.endpoint,
            "certificate_authority": self.certificate_authority, "kubeconfig": self.kubeconfig,
            "oidc_provider_arn": self.oidc_provider_arn, "cluster_security_group_id": self.cluster_security_group_id,
            "lb_controller_role_arn": self.lb_controller_role_arn, "kms_key_arn": self.kms_key_arn,
        })

    def _node_group(self, name: str, g: NodeGroupSettings, cluster: aws.eks.Cluster, node_role: aws.iam.Role,
                    args: EksClusterArgs, tags: dict[str, str], attachments: list[aws.iam.RolePolicyAttachment]) -> aws.eks.NodeGroup:
        o = pulumi.ResourceOptions(parent=self)
        template = aws.ec2.LaunchTemplate(
            f"{name}-{g.name}-lt",
            user_data=node_user_data(UNSAFE_SYSCTLS),
            metadata_options={"http_endpoint": "enabled", "http_tokens": "required", "http_put_response_hop_limit": 1},
            block_device_mappings=[{"device_name": "/dev/xvda", "ebs": {
                "volume_size": g.disk_size_gib, "volume_type": "gp3", "encrypted": "true", "delete_on_termination": "true"}}],
            tag_specifications=[{"resource_type": "instance", "tags": {**tags, POOL_LABEL: g.pool}}],
            update_default_version=True,
            tags=tags,
            opts=o,
        )
        return aws.eks.NodeGroup(
            f"{name}-{g.name}",
            cluster_name=cluster.name,
            node_role_arn=node_role.arn,
            subnet_ids=args.private_subnet_ids,
            version=args.version,
            ami_type="AL2023_x86_64_STANDARD",
            capacity_type=g.capacity_type,
            instance_types=list(g.instance_types),
            scaling_config={"min_size": g.min_size, "max_size": g.max_size, "desired_size": g.desired_size},
            update_config={"max_unavailable": 1},
            labels={POOL_LABEL: g.pool},
            taints=[{"key": t.key, "value": t.value or None, "effect": t.aws_effect} for t in g.taints] or None,
            launch_template={"id": template.id, "version": template.latest_version.apply(str)},
            tags={**tags, POOL_LABEL: g.pool},
            opts=pulumi.ResourceOptions(parent=self, depends_on=attachments, ignore_changes=["scalingConfig.desiredSize"]),
        )
