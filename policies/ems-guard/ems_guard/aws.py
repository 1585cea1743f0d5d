"""AWS rules: EKS endpoint exposure, secrets encryption and control-plane logs; EBS, launch-template
and StorageClass encryption; KMS key rotation.

AWS defaults are the trap: ``vpcConfig.endpointPublicAccess`` defaults to true and
``publicAccessCidrs`` to ["0.0.0.0/0"], EBS volumes are unencrypted unless asked.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Iterator, Optional

from pulumi_policy import EnforcementLevel, PolicyResource

from .ports import _is_public_cidr
from .props import (
    UNKNOWN, Resource, as_bool, dig, elements, get, is_unknown, k8s_objects, of_kinds, of_types, resource_policy, stack_policy, strings,
    unknown_message,
)

EKS_CLUSTER = "aws:eks/cluster:Cluster"


def _one(value: Any) -> Any:
    """pulumi-aws flattens MaxItems=1 blocks to an object; older shapes send a one-element list."""
    if is_unknown(value):
        return UNKNOWN
    if isinstance(value, Mapping):
        return value
    items = elements(value)
    return items[0] if items else None


def _eks_endpoint(res: Resource, _cfg: dict) -> Iterator[str]:
    vpc = _one(get(res.props, "vpcConfig"))
    if vpc is UNKNOWN:
        yield unknown_message(res.subject, "vpcConfig")
        return
    public = as_bool(get(vpc, "endpointPublicAccess"))
    if public is UNKNOWN:
        yield unknown_message(res.subject, "vpcConfig.endpointPublicAccess")
        return
    if public is False:
        return
    cidrs = strings(get(vpc, "publicAccessCidrs"))
    if cidrs is UNKNOWN:
        yield unknown_message(res.subject, "vpcConfig.publicAccessCidrs")
    elif not cidrs:
        state = "unset (defaults to true)" if public is None else "true"
        yield (f"{res.subject}: vpcConfig.endpointPublicAccess is {state} and publicAccessCidrs is unset, which "
               "AWS defaults to 0.0.0.0/0; set endpointPublicAccess: false (with endpointPrivateAccess: true) or "
               "list the operator CIDRs in publicAccessCidrs.")
    else:
        public_cidrs = [c for c in cidrs if _is_public_cidr(c)]
        if public_cidrs:
            yield (f"{res.subject}: vpcConfig.publicAccessCidrs include {public_cidrs}, exposing the Kubernetes API "
                   "to the internet; list only operator CIDRs or disable endpointPublicAccess.")


def _eks_encryption(res: Resource, _cfg: dict) -> Iterator[str]:
    config = _one(get(res.props, "encryptionConfig"))
    if config is UNKNOWN:
        yield unknown_message(res.subject, "encryptionConfig")
        return
    if config is None:
        yield (f"{res.subject}: encryptionConfig is unset, so Secrets are stored without envelope encryption; "
               "set encryptionConfig {provider: {keyArn: <KMS key>}, resources: [\"secrets\"]}.")
        return
    resources = strings(get(config, "resources"))
    key = dig(config, "provider", "keyArn")
    if resources is UNKNOWN:
        yield unknown_message(res.subject, "encryptionConfig.resources")
    elif "secrets" not in resources:
        yield f"{res.subject}: encryptionConfig.resources is {resources}; it must include \"secrets\"."
    if key is None or key == "":
        yield f"{res.subject}: encryptionConfig.provider.keyArn is unset; point it at a KMS key with rotation on."


def _eks_logging(res: Resource, cfg: dict) -> Iterator[str]:
    required = [str(t) for t in cfg.get("requiredLogTypes") or []]
    enabled = strings(get(res.props, "enabledClusterLogTypes"))
    if enabled is UNKNOWN:
        yield unknown_message(res.subject, "enabledClusterLogTypes")
        return
    missing = [t for t in required if t not in enabled]
    if missing:
        yield (f"{res.subject}: enabledClusterLogTypes is {enabled}; add {missing} "
               "(policy config requiredLogTypes) so control-plane actions are audited.")


def _ebs_encrypted(res: Resource, _cfg: dict) -> Iterator[str]:
    if res.resource_type == "aws:ebs/volume:Volume":
        value = as_bool(get(res.props, "encrypted"))
        if value is UNKNOWN:
            yield unknown_message(res.subject, "encrypted")
        elif value is not True:
            yield f"{res.subject}: encrypted is {value if value is not None else 'unset'}; set encrypted: true (and a kmsKeyId)."
        return
    mappings = elements(get(res.props, "blockDeviceMappings"))  # aws:ec2/launchTemplate:LaunchTemplate
    if mappings is UNKNOWN:
        yield unknown_message(res.subject, "blockDeviceMappings")
        return
    for i, mapping in enumerate(mappings):
        ebs = get(mapping, "ebs")
        if ebs is None:
            continue
        value = as_bool(get(ebs, "encrypted"))
        if value is UNKNOWN:
            yield unknown_message(res.subject, f"blockDeviceMappings[{i}].ebs.encrypted")
        elif value is not True:
            yield (f"{res.subject}: blockDeviceMappings[{i}].ebs.encrypted is {get(ebs, 'encrypted')!r}; "
                   "set it to \"true\" so node volumes are encrypted.")


EBS_PROVISIONERS = ("ebs.csi.aws.com", "kubernetes.io/aws-ebs")


def _storage_class(res: Resource, _cfg: dict) -> Iterator[str]:
    for _, obj in k8s_objects(res.resource_type, res.props):
        provisioner = get(obj, "provisioner")
        if provisioner is UNKNOWN:
            yield unknown_message(res.subject, "provisioner")
            continue
        if provisioner not in EBS_PROVISIONERS:
            continue
        value = dig(obj, "parameters", "encrypted")
        if value is UNKNOWN:
            yield unknown_message(res.subject, "parameters.encrypted")
        elif as_bool(value) is not True:
            shown = "unset" if value is None else repr(value)
            yield (f"{res.subject}: provisioner {provisioner} with parameters.encrypted {shown}; set "
                   "parameters.encrypted: \"true\" (and kmsKeyId) so EBS volumes are encrypted.")


def _kms_rotation(res: Resource, _cfg: dict) -> Iterator[str]:
    spec = get(res.props, "customerMasterKeySpec") or get(res.props, "keySpec")
    if spec is UNKNOWN:
        yield unknown_message(res.subject, "keySpec")
        return
    if spec not in (None, "SYMMETRIC_DEFAULT"):
        return  # AWS cannot rotate asymmetric or HMAC keys automatically
    value = as_bool(get(res.props, "enableKeyRotation"))
    if value is UNKNOWN:
        yield unknown_message(res.subject, "enableKeyRotation")
    elif value is not True:
        yield f"{res.subject}: enableKeyRotation is {value if value is not None else 'unset (false)'}; set it to true."


def _imdsv2(res: Resource, _cfg: dict) -> Iterator[str]:
    options = _one(get(res.props, "metadataOptions"))
    tokens = get(options, "httpTokens")
    endpoint = get(options, "httpEndpoint")
    if tokens is UNKNOWN or endpoint is UNKNOWN:
        yield unknown_message(res.subject, "metadataOptions")
    elif endpoint != "disabled" and tokens != "required":
        shown = "unset (IMDSv1 allowed)" if tokens is None else repr(tokens)
        yield (f"{res.subject}: metadataOptions.httpTokens is {shown}; set httpTokens: required (IMDSv2) and "
               "httpPutResponseHopLimit: 1 so pods cannot steal the node role's credentials.")


def _decode_user_data(value: Any) -> Any:
    if value is UNKNOWN:
        return UNKNOWN
    if not isinstance(value, str):
        return ""
    try:
        return base64.b64decode(value, validate=False).decode("utf-8", "replace") + "\n" + value
    except (ValueError, binascii.Error):
        return value


def _node_sysctls(resources: list[PolicyResource], cfg: dict) -> Iterator[tuple[str, Optional[str]]]:
    from .workloads import SAFE_SYSCTLS, pod_templates  # local: aws must not depend on workloads at import

    needed: dict[str, str] = {}
    for res in resources:
        for template in pod_templates(res.resource_type, res.props):
            for item in elements(dig(template.spec, "securityContext", "sysctls")) or []:
                name = get(item, "name")
                if isinstance(name, str) and name.replace("/", ".") not in SAFE_SYSCTLS:
                    needed.setdefault(name.replace("/", "."), res.name)
    if not needed:
        return
    templates = {r.urn: r for r in resources if r.resource_type == "aws:ec2/launchTemplate:LaunchTemplate"}
    for group in resources:
        if group.resource_type != "aws:eks/nodeGroup:NodeGroup":
            continue
        subject = f"NodeGroup '{group.name}'"
        deps = [d for d in group.property_dependencies.get("launchTemplate", []) + group.dependencies
                if d.urn in templates]
        if not deps:
            yield (f"{subject} has no launch template, so its kubelet rejects the unsafe sysctls "
                   f"{sorted(needed)} pods set (e.g. {next(iter(needed.values()))}); give it a launch template whose "
                   "user data sets kubelet allowedUnsafeSysctls."), group.urn
            continue
        text = _decode_user_data(get(deps[0].props, "userData"))
        if text is UNKNOWN:
            yield unknown_message(subject, "launch template userData"), group.urn
            continue
        missing = sorted(s for s in needed if s not in text)
        if missing:
            yield (f"{subject}: its launch template's user data does not allow {missing}, which pods set "
                   f"(e.g. {needed[missing[0]]}); add them to the kubelet's allowedUnsafeSysctls or the pods fail "
                   "with SysctlForbidden."), group.urn


POLICIES = [
    resource_policy(
        name="eks-endpoint-not-public",
        description="Prohibits an EKS API endpoint open to 0.0.0.0/0 (including the public-by-default settings).",
        applies=of_types(EKS_CLUSTER), check=_eks_endpoint),
    resource_policy(
        name="eks-secrets-encryption",
        description="Requires EKS envelope encryption of Secrets with a KMS key.",
        applies=of_types(EKS_CLUSTER), check=_eks_encryption),
    resource_policy(
        name="eks-control-plane-logging",
        description="Requires EKS control-plane logs (api, audit, authenticator by default).",
        applies=of_types(EKS_CLUSTER), check=_eks_logging,
        config={"requiredLogTypes": {"type": "array", "items": {"type": "string"},
                                     "default": ["api", "audit", "authenticator"],
                                     "description": "Log types enabledClusterLogTypes must include."}}),
    resource_policy(
        name="ebs-encryption",
        description="Requires EBS volumes and launch-template block devices to be encrypted.",
        applies=of_types("aws:ebs/volume:Volume", "aws:ec2/launchTemplate:LaunchTemplate"), check=_ebs_encrypted),
    resource_policy(
        name="storageclass-ebs-encryption",
        description="Requires EBS StorageClasses to set parameters.encrypted to \"true\".",
        applies=of_kinds("StorageClass"), check=_storage_class),
    resource_policy(
        name="launch-template-imdsv2",
        description="Requires launch templates to enforce IMDSv2 (metadataOptions.httpTokens required).",
        applies=of_types("aws:ec2/launchTemplate:LaunchTemplate"), check=_imdsv2),
    stack_policy(
        name="node-unsafe-sysctls-allowed",
        description=("Requires EKS node groups to allow, in their kubelet config, the unsafe sysctls pods set "
                     "(advice: otherwise the pods fail to start)."),
        check=_node_sysctls, level=EnforcementLevel.ADVISORY),
    resource_policy(
        name="kms-key-rotation",
        description="Requires symmetric KMS keys to rotate automatically.",
        applies=of_types("aws:kms/key:Key"), check=_kms_rotation),
]
