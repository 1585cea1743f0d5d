"""Pulumi mocks shared by the component and program tests: realistic outputs, every resource recorded."""

from __future__ import annotations

import asyncio
import json
import runpy
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pulumi
import yaml


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
    calls: list[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)
    """Every provider function invoked: (token, arguments, provider reference)."""
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
            service = typ.split(":")[1].split("/")[0]
            outputs.setdefault("arn", f"arn:aws:{service}:{pulumi.get_stack()}:123456789012:{name}")
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
        with self._lock:
            self.calls.append((args.token, dict(args.args), args.provider))
        if args.token == "aws:eks/getAddonVersion:getAddonVersion":
            addon, version = args.args.get("addonName"), args.args.get("kubernetesVersion")
            return {"id": addon, "addonName": addon, "kubernetesVersion": version, "version": f"v{version}-{addon}-eksbuild.1"}, []
        if args.token == "aws:ec2/getVpc:getVpc":
            return {"id": args.args.get("id"), "cidrBlock": "10.99.0.0/16"}, []
        return {}, []

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.typ == typ]


# --------------------------------------------------------------------------- whole stacks

ROOT = Path(__file__).resolve().parents[2]
STACKS = ("local", "private-dc1", "aws-us-east-1", "aws-eu-west-1", "global")


def stack_config(stack: str) -> dict[str, Any]:
    """The stack file's config as the Pulumi runtime delivers it: structured values as JSON text."""
    doc = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text()) or {}
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in (doc.get("config") or {}).items()}


@dataclass
class Evaluation:
    stack: str
    mocks: RecordingMocks
    outputs: dict[str, Any]
    secret_outputs: set[str]

    @property
    def resources(self) -> list[Registered]:
        return self.mocks.resources

    def of_type(self, typ: str) -> list[Registered]:
        return self.mocks.of_type(typ)


def evaluate_stack(stack: str, overrides: dict[str, Any] | None = None,
                   stack_outputs: dict[str, dict[str, Any]] | None = None,
                   secret_keys: tuple[str, ...] = ()) -> Evaluation:
    """Run ``__main__.py`` for ``stack`` under mocks; return every resource and the stack outputs."""
    config = stack_config(stack)
    for k, v in (overrides or {}).items():
        if v is None:
            config.pop(k, None)
        else:
            config[k] = v if isinstance(v, str) else json.dumps(v)
    mocks = RecordingMocks(stack_outputs=stack_outputs or {})
    pulumi.runtime.set_mocks(mocks, project="ems", stack=stack, preview=False, organization="organization")
    pulumi.runtime.set_all_config(config, list(secret_keys))
    exports: dict[str, Any] = {}

    async def collect() -> tuple[dict[str, Any], set[str]]:
        values, secrets = {}, set()
        for key, value in exports.items():
            out = pulumi.Output.from_input(value)
            values[key] = await out.future()
            if await out.is_secret():
                secrets.add(key)
        return values, secrets

    def run() -> pulumi.Output[Any]:
        with mock.patch("pulumi.export", side_effect=exports.__setitem__):
            runpy.run_path(str(ROOT / "__main__.py"), run_name="__pulumi_main__")
        return pulumi.Output.from_input(asyncio.ensure_future(collect()))

    result: dict[str, Any] = {}
    wrapped = pulumi.runtime.test(lambda: run().apply(lambda r: result.update(values=r[0], secrets=r[1])))
    wrapped()
    return Evaluation(stack, mocks, result["values"], result["secrets"])


def region_outputs_for_global() -> dict[str, dict[str, Any]]:
    """Evaluate the region stacks named by the global stack file; key their outputs by full name."""
    names = json.loads(stack_config("global")["ems:regionStacks"])
    return {f"organization/ems/{n}": evaluate_stack(n).outputs for n in names}


def make_ca_pem(is_ca: bool = True, valid_days: int = 30) -> str:
    """A self-signed certificate (a CA unless ``is_ca`` is False), PEM; ``valid_days`` below zero: expired that long ago."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "utility root")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=max(0, -valid_days) + 1))
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()
