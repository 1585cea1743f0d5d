"""Pulumi mocks shared by the component and program tests: realistic outputs, every resource recorded."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pulumi


@dataclass
class Registered:
    typ: str
    name: str
    inputs: dict[str, Any]
    provider: str | None
    urn: str


@dataclass
class RecordingMocks(pulumi.runtime.Mocks):
    """Records every registered resource; fills in the outputs real providers would compute."""

    resources: list[Registered] = field(default_factory=list)
    stack_outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        outputs = dict(args.inputs)
        typ, name = args.typ, args.name
        if typ.startswith("tls:"):
            outputs.update(private_key_pem=f"-----BEGIN PRIVATE KEY-----{name}", cert_pem=f"-----BEGIN CERTIFICATE-----{name}",
                           cert_request_pem=f"-----BEGIN CERTIFICATE REQUEST-----{name}", public_key_pem=f"pub-{name}")
            outputs.update(privateKeyPem=outputs["private_key_pem"], certPem=outputs["cert_pem"], certRequestPem=outputs["cert_request_pem"])
        elif typ.startswith("kubernetes:") and "metadata" in outputs:
            meta = dict(outputs["metadata"] or {})
            meta.setdefault("name", f"{name}-x1y2z3")
            outputs["metadata"] = meta
        elif typ.startswith("aws:"):
            outputs.setdefault("arn", f"arn:aws:{typ.split(':')[1]}:us-east-1:123456789012:{name}")
            if typ == "aws:eks/cluster:Cluster":
                outputs.update(endpoint=f"https://{name}.eks.amazonaws.com", name=outputs.get("name") or name,
                               certificateAuthority={"data": "Q0E="},
                               identities=[{"oidcs": [{"issuer": f"https://oidc.eks.us-east-1.amazonaws.com/id/{name}"}]}],
                               vpcConfig={**outputs.get("vpcConfig", {}), "clusterSecurityGroupId": "sg-0123456789abcdef0"})
            if typ == "aws:lb/loadBalancer:LoadBalancer":
                outputs.update(dnsName=f"{name}.elb.amazonaws.com", zoneId="Z26RNL4JYFTOTI")
            if typ == "aws:globalaccelerator/accelerator:Accelerator":
                outputs.update(dnsName=f"{name}.awsglobalaccelerator.com", hostedZoneId="Z2BJ6XQ5FK7U4H")
        if typ == "pulumi:pulumi:StackReference":
            outputs["outputs"] = self.stack_outputs.get(outputs.get("name", name), {})
        with self._lock:
            self.resources.append(Registered(typ, name, dict(args.inputs), args.provider, f"urn:{typ}::{name}"))
        return f"{name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.typ == typ]
