"""Stack policy: an internet-facing 443/8883 listener must front a workload that requires client authentication.

A listener is internet-facing when its Service is a ``LoadBalancer`` without an internal-LB
annotation, a ``NodePort``, or the target of a ``TargetGroupBinding`` (the region NLB,
``components/aws_ingress.py``). The workloads behind it are those in the Service's namespace whose
pod labels its selector matches. Each must declare how callers authenticate in the annotation
``ems.io/client-auth`` (rendered by the component from the same settings as its proxy or broker
config): on 8883 only ``mtls-required``; on 443 ``mtls-required``, ``mtls``, ``oidc`` or
``mtls+oidc``. A missing annotation or ``none`` is a violation.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

from pulumi_policy import PolicyResource

from .network import _workloads, namespace_of, resource_kind, selector_matches, subject
from .ports import _internal_lb
from .props import UNKNOWN, as_int, dig, elements, entries, get, stack_policy

ANNOTATION = "ems.io/client-auth"
DEFAULT_REQUIRED = {"443": ["mtls-required", "mtls", "oidc", "mtls+oidc"], "8883": ["mtls-required"]}

_CONFIG = {
    "requiredClientAuth": {
        "type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}},
        "default": DEFAULT_REQUIRED,
        "description": f"Internet-facing port → the {ANNOTATION} values its workloads may declare.",
    },
}


def _bound_services(resources: list[PolicyResource]) -> set[tuple[Any, str]]:
    """(namespace, Service name) of every TargetGroupBinding's serviceRef."""
    bound = set()
    for res in resources:
        if resource_kind(res) == "TargetGroupBinding":
            name = dig(res.props, "spec", "serviceRef", "name")
            if isinstance(name, str):
                bound.add((namespace_of(res, get(res.props, "metadata")), name))
    return bound


def _external_ports(res: PolicyResource, bound: set[tuple[Any, str]]) -> list[int]:
    meta, spec = get(res.props, "metadata"), get(res.props, "spec")
    kind = get(spec, "type") or "ClusterIP"
    exposed = (kind == "NodePort" or (kind == "LoadBalancer" and _internal_lb(get(meta, "annotations")) is False)
               or (namespace_of(res, meta), get(meta, "name")) in bound)
    if not exposed:
        return []
    ports = elements(get(spec, "ports"))
    return [] if ports is UNKNOWN else [p for p in (as_int(get(port, "port")) for port in ports) if isinstance(p, int)]


def _client_auth(resources: list[PolicyResource], cfg: dict) -> Iterator[tuple[str, Optional[str]]]:
    required = {as_int(port): list(values) for port, values in (cfg.get("requiredClientAuth") or {}).items()}
    bound = _bound_services(resources)
    workloads = list(_workloads(resources))
    for svc in resources:
        if resource_kind(svc) != "Service":
            continue
        ports = [p for p in _external_ports(svc, bound) if p in required]
        selector = entries(dig(svc.props, "spec", "selector"))
        if not ports or selector is UNKNOWN or not selector:
            continue
        namespace = namespace_of(svc, get(svc.props, "metadata"))
        for res, ns, labels in workloads:
            if ns != namespace or labels is UNKNOWN or selector_matches({"matchLabels": dict(selector)}, labels) is not True:
                continue
            declared = dig(res.props, "metadata", "annotations", ANNOTATION)
            if declared is UNKNOWN:
                continue
            for port in ports:
                if declared not in required[port]:
                    yield (f"{subject(svc)} exposes {port} to the internet and selects {subject(res)}, whose "
                           f"metadata.annotations['{ANNOTATION}'] is {declared!r}; a listener on {port} must require "
                           f"client authentication: declare one of {required[port]} and configure it "
                           "(ems:apiAuth for the gateway, require_certificate for the broker)."), res.urn


POLICIES = [
    stack_policy(
        name="external-listener-client-auth",
        description=("Requires every workload behind an internet-facing 443 or 8883 listener to require client "
                     "authentication (mTLS or OIDC bearer tokens on 443, mTLS on 8883)."),
        check=_client_auth, config=_CONFIG),
]
