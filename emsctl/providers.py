"""What the resource providers would compute, emulated offline (no plugin, no cloud).

Two jobs, both deterministic so that a capture, a render and a policy run agree:

* :func:`check_inputs` — the provider's ``Check``: the inputs the engine would hand to a policy
  pack and to the provider. Only Kubernetes auto-naming is emulated: a Kubernetes object without
  ``metadata.name`` is named ``<logical name>-<8 hex>``, as pulumi-kubernetes does, except that
  the 8 hex digits are the first 8 of ``sha256(urn)`` instead of random ones (so repeated runs
  render identical manifests; a real ``pulumi up`` picks random digits once and keeps them).
* :func:`mock_outputs` / :func:`mock_call` — realistic outputs of a created resource and results
  of provider functions (``aws.get_availability_zones`` …), so programs that read them work.
  Outputs start from the inputs, then add what the cloud would compute (ids, ARNs, endpoints,
  PEMs). Secret inputs stay secret. Key and certificate PEMs are visibly fake placeholders.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from .values import SECRET_SIG, SIG_KEY

ACCOUNT_ID = "123456789012"

# Kubernetes kinds that are not namespaced (the provider puts no namespace in their id).
CLUSTER_SCOPED_KINDS = frozenset({
    "APIService", "CSIDriver", "CSINode", "CertificateSigningRequest", "ClusterRole", "ClusterRoleBinding",
    "CustomResourceDefinition", "FlowSchema", "IngressClass", "MutatingWebhookConfiguration", "Namespace",
    "Node", "PersistentVolume", "PriorityClass", "PriorityLevelConfiguration", "RuntimeClass", "StorageClass",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ValidatingWebhookConfiguration",
    "VolumeAttachment",
})

# Type tokens in the `kubernetes` package that are not single Kubernetes objects.
_NOT_OBJECT_MODULES = ("yaml", "helm.sh/", "kustomize", "yaml/v2", "apiextensions.k8s.io:CustomResource")


def kubernetes_kind(type_token: str) -> tuple[str, str] | None:
    """``(apiVersion, kind)`` if ``type_token`` declares one Kubernetes object, else None.

    ``kubernetes:apps/v1:Deployment`` → ``("apps/v1", "Deployment")``; ``kubernetes:core/v1:Service``
    → ``("v1", "Service")``. Lists, server-side-apply ``*Patch`` types, YAML/Helm/Kustomize
    components and providers are not objects.
    """
    parts = type_token.split(":")
    if len(parts) != 3 or parts[0] != "kubernetes":
        return None
    module, kind = parts[1], parts[2]
    if "/" not in module or module.startswith(("helm.sh/", "yaml/", "kustomize/")) or kind.endswith(("List", "Patch")):
        return None
    group, version = module.rsplit("/", 1)
    api_version = version if group == "core" else f"{group}/{version}"
    return api_version, kind


def _short_hash(urn: str, n: int = 8) -> str:
    return hashlib.sha256(urn.encode()).hexdigest()[:n]


def kubernetes_auto_name(name: str, urn: str) -> str:
    """The name pulumi-kubernetes gives an object without ``metadata.name`` (deterministic here)."""
    return f"{name}-{_short_hash(urn)}"


def _unsecret(value: Any) -> Any:
    if isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG:
        return _unsecret(value.get("value"))
    return value


def check_inputs(type_token: str, name: str, urn: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """The inputs after the provider's ``Check`` (wire form, see :mod:`emsctl.values`)."""
    if kubernetes_kind(type_token) is None:
        return inputs
    checked = dict(inputs)
    metadata = _unsecret(checked.get("metadata"))
    metadata = dict(metadata) if isinstance(metadata, dict) else {}
    if not metadata.get("name"):
        metadata["name"] = kubernetes_auto_name(name, urn)
        checked["metadata"] = metadata
    return checked


def _aws_service(type_token: str) -> str:
    module = type_token.split(":")[1].split("/")[0]
    return {"index": "iam"}.get(module, module)


def _pem(kind: str, seed: str) -> str:
    body = hashlib.sha256(seed.encode()).hexdigest()
    return f"-----BEGIN {kind}-----\nMOCK{body}\n-----END {kind}-----\n"


def mock_outputs(type_token: str, name: str, urn: str, inputs: dict[str, Any], region: str) -> tuple[str, dict[str, Any]]:
    """``(id, outputs)`` of a resource as its provider would return them after a create."""
    state = copy.deepcopy(inputs)
    package = type_token.split(":")[0]
    if package == "kubernetes":
        kind = kubernetes_kind(type_token)
        state = check_inputs(type_token, name, urn, state)
        if kind is None:
            return f"{name}-id", state
        metadata = _unsecret(state.get("metadata")) or {}
        obj_name = metadata.get("name")
        namespace = metadata.get("namespace") or "default"
        obj_id = obj_name if kind[1] in CLUSTER_SCOPED_KINDS else f"{namespace}/{obj_name}"
        if kind[1] == "Service":
            spec = _unsecret(state.get("spec")) or {}
            if spec.get("type") == "LoadBalancer":
                state["status"] = {"loadBalancer": {"ingress": [{"hostname": f"{obj_name}-{_short_hash(urn)}.elb.{region}.amazonaws.com"}]}}
            state.setdefault("spec", {})
            if isinstance(state["spec"], dict):
                state["spec"].setdefault("clusterIP", f"10.100.{int(_short_hash(urn, 2), 16)}.{int(_short_hash(urn + 'b', 2), 16)}")
        return obj_id, state
    if package == "tls":
        return _tls_outputs(type_token, name, urn, state)
    if package == "aws":
        return _aws_outputs(type_token, name, urn, state, region)
    if type_token.startswith("pulumi:providers:"):
        return _short_hash(urn, 32), state
    return f"{name}-id", state


def _tls_outputs(type_token: str, name: str, urn: str, state: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    kind = type_token.rsplit(":", 1)[-1]
    if kind == "PrivateKey":
        state.update({
            "privateKeyPem": _pem("PRIVATE KEY", urn), "privateKeyPemPkcs8": _pem("PRIVATE KEY", urn + "8"),
            "privateKeyOpenssh": _pem("OPENSSH PRIVATE KEY", urn), "publicKeyPem": _pem("PUBLIC KEY", urn),
            "publicKeyOpenssh": f"ecdsa-sha2-nistp256 MOCK{_short_hash(urn, 40)}\n",
            "publicKeyFingerprintMd5": ":".join(_short_hash(urn + "md5", 32)[i:i + 2] for i in range(0, 32, 2)),
            "publicKeyFingerprintSha256": f"SHA256:MOCK{_short_hash(urn + 'sha', 40)}",
        })
    elif kind in ("SelfSignedCert", "LocallySignedCert"):
        state.update({"certPem": _pem("CERTIFICATE", urn), "validityStartTime": "2026-01-01T00:00:00Z",
                      "validityEndTime": "2027-01-01T00:00:00Z", "readyForRenewal": False})
    elif kind == "CertRequest":
        state["certRequestPem"] = _pem("CERTIFICATE REQUEST", urn)
    return _short_hash(urn, 16), state


def _aws_outputs(type_token: str, name: str, urn: str, state: dict[str, Any], region: str) -> tuple[str, dict[str, Any]]:
    kind = type_token.rsplit(":", 1)[-1]
    phys = state.get("name") if isinstance(state.get("name"), str) else f"{name}-{_short_hash(urn, 7)}"
    service = _aws_service(type_token)
    res_id = f"{phys}" if service in ("iam", "eks", "s3") else f"{kind.lower()[:4]}-{_short_hash(urn, 17)}"
    state.setdefault("arn", f"arn:aws:{service}:{region}:{ACCOUNT_ID}:{kind.lower()}/{phys}")
    state.setdefault("tagsAll", _unsecret(state.get("tags")) or {})
    if "name" not in state and kind not in ("Vpc", "Subnet", "RouteTable", "Route", "RouteTableAssociation"):
        state["name"] = phys
    if kind == "Cluster" and service == "eks":
        issuer = f"https://oidc.eks.{region}.amazonaws.com/id/{_short_hash(urn, 32).upper()}"
        state.update({
            "endpoint": f"https://{_short_hash(urn, 32).upper()}.gr7.{region}.eks.amazonaws.com",
            "certificateAuthority": {"data": "TU9DSy1DQQ=="},
            "identities": [{"oidcs": [{"issuer": issuer}]}],
            "status": "ACTIVE", "platformVersion": "eks.1",
            "version": state.get("version", "1.29"),
        })
        vpc = state.get("vpcConfig")
        if isinstance(vpc, dict):
            vpc.setdefault("clusterSecurityGroupId", f"sg-{_short_hash(urn + 'csg', 17)}")
            vpc.setdefault("vpcId", f"vpc-{_short_hash(urn + 'vpc', 17)}")
    elif kind == "Vpc":
        state.setdefault("defaultSecurityGroupId", f"sg-{_short_hash(urn + 'dsg', 17)}")
        state.setdefault("mainRouteTableId", f"rtb-{_short_hash(urn + 'rt', 17)}")
    elif kind == "Key" and service == "kms":
        res_id = f"{_short_hash(urn, 8)}-{_short_hash(urn + 'a', 4)}-{_short_hash(urn + 'b', 4)}-{_short_hash(urn + 'c', 4)}-{_short_hash(urn + 'd', 12)}"
        state["arn"] = f"arn:aws:kms:{region}:{ACCOUNT_ID}:key/{res_id}"
        state["keyId"] = res_id
    elif kind == "Accelerator":
        state.update({"dnsName": f"{_short_hash(urn, 16)}.awsglobalaccelerator.com", "hostedZoneId": "Z2BJ6XQ5FK7U4H",
                      "ipSets": [{"ipFamily": "IPv4", "ipAddresses": ["75.2.0.1", "99.83.0.1"]}]})
    elif kind in ("LoadBalancer",) and service == "lb":
        state.update({"dnsName": f"{phys}-{_short_hash(urn, 10)}.elb.{region}.amazonaws.com", "zoneId": "Z35SXDOTRQ7X7K"})
    elif kind == "OpenIdConnectProvider":
        state["arn"] = f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/{str(state.get('url', '')).removeprefix('https://')}"
    elif kind in ("Role", "Policy", "InstanceProfile") and service == "iam":
        state["arn"] = f"arn:aws:iam::{ACCOUNT_ID}:{kind.lower()}/{phys}"
        state.setdefault("uniqueId", f"AROA{_short_hash(urn, 17).upper()}")
    elif kind == "HealthCheck":
        res_id = _short_hash(urn, 36)
    elif kind == "Zone":
        res_id = f"Z{_short_hash(urn, 20).upper()}"
        state.setdefault("zoneId", res_id)
        state.setdefault("nameServers", ["ns-1.awsdns-00.com", "ns-2.awsdns-00.net"])
    elif kind == "NodeGroup":
        state.setdefault("status", "ACTIVE")
    state.setdefault("id", res_id)
    return res_id, state


def _policy_document(args: dict[str, Any]) -> dict[str, Any]:
    statements = []
    for st in args.get("statements") or []:
        out: dict[str, Any] = {}
        if st.get("sid"):
            out["Sid"] = st["sid"]
        out["Effect"] = st.get("effect", "Allow")
        for key, aws_key in (("actions", "Action"), ("notActions", "NotAction"), ("resources", "Resource"),
                             ("notResources", "NotResource")):
            if st.get(key):
                vals = st[key]
                out[aws_key] = vals[0] if len(vals) == 1 else vals
        for key, aws_key in (("principals", "Principal"), ("notPrincipals", "NotPrincipal")):
            if st.get(key):
                out[aws_key] = {p["type"]: (p["identifiers"][0] if len(p["identifiers"]) == 1 else p["identifiers"])
                                for p in st[key]}
        if st.get("conditions"):
            cond: dict[str, dict[str, Any]] = {}
            for c in st["conditions"]:
                vals = c["values"]
                cond.setdefault(c["test"], {})[c["variable"]] = vals[0] if len(vals) == 1 else vals
            out["Condition"] = cond
        statements.append(out)
    doc = {"Version": args.get("version", "2012-10-17"), "Statement": statements}
    return {"json": json.dumps(doc, indent=2), "minifiedJson": json.dumps(doc, separators=(",", ":")), "id": "policy"}


def mock_call(token: str, args: dict[str, Any], region: str) -> dict[str, Any] | None:
    """The result of provider function ``token``, or None if it is not emulated."""
    if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
        zones = [f"{region}{s}" for s in "abc"]
        return {"id": region, "names": zones, "zoneIds": [f"use1-az{i}" for i in range(1, 4)], "state": "available",
                "groupNames": [region]}
    if token == "aws:index/getRegion:getRegion":
        return {"id": region, "name": region, "region": region, "endpoint": f"ec2.{region}.amazonaws.com",
                "description": region}
    if token == "aws:index/getCallerIdentity:getCallerIdentity":
        return {"id": ACCOUNT_ID, "accountId": ACCOUNT_ID, "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/emsctl",
                "userId": "AIDAEMSCTLMOCK"}
    if token == "aws:index/getPartition:getPartition":
        return {"id": "aws", "partition": "aws", "dnsSuffix": "amazonaws.com", "reverseDnsPrefix": "com.amazonaws"}
    if token == "aws:iam/getPolicyDocument:getPolicyDocument":
        return _policy_document(args)
    if token == "aws:eks/getAddonVersion:getAddonVersion":
        return {"id": args.get("addonName", "addon"), "addonName": args.get("addonName"),
                "kubernetesVersion": args.get("kubernetesVersion"), "version": "v1.30.0-eksbuild.1"}
    if token == "aws:ssm/getParameter:getParameter":
        return {"id": args.get("name"), "name": args.get("name"), "type": "String", "value": "ami-0123456789abcdef0",
                "arn": f"arn:aws:ssm:{region}:{ACCOUNT_ID}:parameter{args.get('name')}", "version": 1}
    return None
