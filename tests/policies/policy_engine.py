"""Drive ems-guard validators with inputs shaped exactly as the engine sends them.

The SDK's ``_PolicyAnalyzerServicer.Analyze`` does: protobuf Struct → ``json_format.MessageToDict``
→ ``deserialize_properties`` → ``unknown_checking_proxy``; config arrives the same way (Struct →
dict, numbers as floats). These helpers repeat that path, so every number is a float, every mapping
and list a read-only proxy, and an ``UNKNOWN_*`` sentinel raises on access as it does in preview.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Optional

from google.protobuf import json_format, struct_pb2
from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.deserialize import deserialize_properties
from pulumi_policy.proxy import (  # noqa: F401  (re-exported for the tests)
    UNKNOWN_ARRAY_VALUE,
    UNKNOWN_BOOLEAN_VALUE,
    UNKNOWN_NUMBER_VALUE,
    UNKNOWN_OBJECT_VALUE,
    UNKNOWN_STRING_VALUE,
    unknown_checking_proxy,
)

PACK_DIR = Path(__file__).resolve().parents[2] / "policies" / "ems-guard"
if str(PACK_DIR) not in sys.path:
    sys.path.insert(0, str(PACK_DIR))

from ems_guard import all_policies  # noqa: E402

STACK, PROJECT = "dev", "ems"
POLICIES = {p.name: p for p in all_policies()}


def urn(resource_type: str, name: str) -> str:
    return f"urn:pulumi:{STACK}::{PROJECT}::{resource_type}::{name}"


def engine_props(props: Mapping[str, Any]) -> Any:
    """Round-trip through a protobuf Struct as the gRPC request does, then proxy like the SDK."""
    struct = struct_pb2.Struct()
    struct.update(dict(props))
    return unknown_checking_proxy(deserialize_properties(json_format.MessageToDict(struct)))


def engine_config(config: Optional[Mapping[str, Any]]) -> Optional[dict]:
    if config is None:
        return None
    struct = struct_pb2.Struct()
    struct.update(dict(config))
    return json_format.MessageToDict(struct)


def provider(name: str = "cluster", pkg: str = "kubernetes", props: Optional[Mapping[str, Any]] = None
             ) -> PolicyProviderResource:
    t = f"pulumi:providers:{pkg}"
    return PolicyProviderResource(t, engine_props(props or {}), urn(t, name), name)


def _opts(parent: Optional[str] = None) -> PolicyResourceOptions:
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], parent)


def check(policy_name: str, resource_type: str, props: Mapping[str, Any], *, name: str = "res",
          config: Optional[Mapping[str, Any]] = None) -> list[str]:
    """Run one resource policy on one resource; return the violation messages."""
    policy = POLICIES[policy_name]
    assert isinstance(policy, ResourceValidationPolicy)
    args = ResourceValidationArgs(resource_type, engine_props(props), urn(resource_type, name), name, _opts(),
                                  provider(), engine_config(config))
    messages: list[str] = []

    def report(message: str, urn_: Optional[str] = None) -> None:
        messages.append(message)

    policy.validate(args, report)
    return messages


class StackResource:
    """A resource for a stack validation, with dependencies by index into the stack list."""

    def __init__(self, resource_type: str, name: str, props: Mapping[str, Any], *,
                 prov: Optional[PolicyProviderResource] = None, no_provider: bool = False,
                 property_dependencies: Optional[Mapping[str, list["StackResource"]]] = None,
                 dependencies: Optional[list["StackResource"]] = None) -> None:
        self.resource_type, self.name, self.props = resource_type, name, props
        self.prov = None if no_provider else (prov or (provider() if resource_type.startswith("kubernetes:") else None))
        self.property_dependencies = property_dependencies or {}
        self.dependencies = dependencies or []

    @property
    def urn(self) -> str:
        return urn(self.resource_type, self.name)


def check_stack(policy_name: str, resources: list[StackResource], *,
                config: Optional[Mapping[str, Any]] = None) -> list[tuple[str, Optional[str]]]:
    """Run one stack policy; return ``(message, urn)`` pairs."""
    policy = POLICIES[policy_name]
    assert isinstance(policy, StackValidationPolicy)
    built: dict[str, PolicyResource] = {}
    for r in resources:
        built[r.urn] = PolicyResource(r.resource_type, engine_props(r.props), r.urn, r.name, _opts(), r.prov,
                                      None, [], {})
    for r in resources:
        res = built[r.urn]
        res.dependencies = [built[d.urn] for d in r.dependencies]
        res.property_dependencies = {k: [built[d.urn] for d in v] for k, v in r.property_dependencies.items()}
    args = StackValidationArgs(list(built.values()), engine_config(config))
    found: list[tuple[str, Optional[str]]] = []
    policy.validate(args, lambda message, urn_=None: found.append((message, urn_)))
    return found
