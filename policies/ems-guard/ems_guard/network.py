"""Stack policies on NetworkPolicies: default deny per namespace, and a specific policy per workload.

Namespaces are matched by name; when a namespace name is unknown during preview (it comes from a
``Namespace`` resource's output) the rule follows the ``metadata`` property dependency to that
Namespace resource, so workloads and policies in the same not-yet-named namespace still match.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

from pulumi_policy import PolicyResource

from .props import (
    UNKNOWN, dig, elements, entries, get, k8s_type, stack_policy, strings, unknown_message,
)
from .workloads import WORKLOAD_KINDS, pod_templates


def resource_kind(resource: PolicyResource) -> Optional[str]:
    parsed = k8s_type(resource.resource_type)
    return None if parsed is None or parsed.patch or parsed.is_list else parsed.kind


def subject(resource: PolicyResource) -> str:
    return f"{resource_kind(resource) or resource.resource_type} '{resource.name}'"


def namespace_of(resource: PolicyResource, meta: Any) -> Any:
    """The namespace key of a namespaced object: its name, ``urn:<Namespace URN>`` or UNKNOWN."""
    namespace = get(meta, "namespace")
    if isinstance(namespace, str) and namespace:
        return namespace
    if namespace is UNKNOWN:
        candidates = list(resource.property_dependencies.get("metadata", [])) + list(resource.dependencies)
        for dep in candidates:
            if resource_kind(dep) == "Namespace":
                name = dig(dep.props, "metadata", "name")
                return name if isinstance(name, str) and name else f"urn:{dep.urn}"
        return UNKNOWN
    provider_ns = get(resource.provider.props, "namespace") if resource.provider is not None else None
    return provider_ns if isinstance(provider_ns, str) and provider_ns else "default"


def selector_matches(selector: Any, labels: dict) -> Any:
    """Kubernetes label-selector semantics; UNKNOWN if the selector is unknown."""
    match_labels = entries(get(selector, "matchLabels"))
    expressions = elements(get(selector, "matchExpressions"))
    if match_labels is UNKNOWN or expressions is UNKNOWN:
        return UNKNOWN
    for key, value in match_labels:
        if value is UNKNOWN:
            return UNKNOWN
        if not isinstance(value, str) or labels.get(key) != value:
            return False
    for expr in expressions:
        key, op, values = get(expr, "key"), get(expr, "operator"), strings(get(expr, "values"))
        if UNKNOWN in (key, op, values):
            return UNKNOWN
        if not isinstance(key, str):
            return False  # not a valid selector: it selects nothing
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def selector_is_empty(selector: Any) -> Any:
    match_labels = entries(get(selector, "matchLabels"))
    expressions = elements(get(selector, "matchExpressions"))
    if match_labels is UNKNOWN or expressions is UNKNOWN:
        return UNKNOWN
    return not match_labels and not expressions


def _network_policies(resources: list[PolicyResource]) -> list[tuple[PolicyResource, Any, Any]]:
    out = []
    for res in resources:
        if resource_kind(res) == "NetworkPolicy":
            out.append((res, namespace_of(res, get(res.props, "metadata")), get(res.props, "spec")))
    return out


def _workloads(resources: list[PolicyResource]) -> Iterator[tuple[PolicyResource, Any, Any]]:
    """``(resource, namespace key, pod labels)`` for every workload (pods owned by others excluded)."""
    for res in resources:
        if resource_kind(res) not in WORKLOAD_KINDS:
            continue
        for template in pod_templates(res.resource_type, res.props):
            labels = entries(get(template.metadata, "labels"))
            if labels is not UNKNOWN and any(v is UNKNOWN for _, v in labels):
                labels = UNKNOWN
            yield res, namespace_of(res, get(template.obj, "metadata")), (
                UNKNOWN if labels is UNKNOWN else {k: v for k, v in sorted(labels)})


def _is_default_deny(spec: Any) -> Any:
    empty = selector_is_empty(get(spec, "podSelector"))
    types = strings(get(spec, "policyTypes"))
    ingress, egress = elements(get(spec, "ingress")), elements(get(spec, "egress"))
    if UNKNOWN in (empty, types, ingress, egress):
        return UNKNOWN
    return bool(empty and {"Ingress", "Egress"} <= set(types) and not ingress and not egress)


def _undoes_default_deny(spec: Any) -> list[str]:
    """Rule lists of an every-pod policy that allow everything (no peers, no ports)."""
    if selector_is_empty(get(spec, "podSelector")) is not True:
        return []
    found = []
    for direction, peers in (("ingress", "from"), ("egress", "to")):
        rules = elements(get(spec, direction))
        if rules is UNKNOWN:
            continue
        for i, rule in enumerate(rules):
            if rule is not UNKNOWN and get(rule, peers) is None and get(rule, "ports") is None:
                found.append(f"spec.{direction}[{i}]")
    return found


def _default_deny(resources: list[PolicyResource], _cfg: dict) -> Iterator[tuple[str, Optional[str]]]:
    denied: set[str] = set()
    undecided = []
    for res, namespace, spec in _network_policies(resources):
        for where in _undoes_default_deny(spec):
            yield (f"{subject(res)}: {where} allows all traffic for every pod of its namespace (empty podSelector, "
                   "no peers, no ports), which undoes the default deny; name the peers and ports."), res.urn
        verdict = _is_default_deny(spec)
        if verdict is UNKNOWN:
            undecided.append(res)
        elif verdict and namespace is not UNKNOWN:
            denied.add(namespace)
    reported: set[Any] = set()
    for res, namespace, _ in _workloads(resources):
        if namespace is UNKNOWN:
            yield unknown_message(subject(res), "metadata.namespace",
                                  "needed to find its namespace's default-deny NetworkPolicy"), res.urn
            continue
        if namespace in denied or namespace in reported:
            continue
        reported.add(namespace)
        shown = namespace if not namespace.startswith("urn:") else f"of Namespace {namespace[4:]}"
        extra = (f" ({len(undecided)} NetworkPolicies could not be evaluated during preview: "
                 f"{', '.join(r.name for r in undecided)})") if undecided else ""
        yield (f"namespace {shown!r} runs workloads (e.g. {subject(res)}) but has no default-deny NetworkPolicy"
               f"{extra}; add one with podSelector: {{}}, policyTypes: [Ingress, Egress] and no rules."), res.urn


def _coverage(resources: list[PolicyResource], _cfg: dict) -> Iterator[tuple[str, Optional[str]]]:
    policies = []
    for res, namespace, spec in _network_policies(resources):
        selector = get(spec, "podSelector")
        empty = selector_is_empty(selector)
        if empty is True:
            continue  # the default deny selects every pod; it is not an allow policy for this workload
        policies.append((res, namespace, selector))
    for res, namespace, labels in _workloads(resources):
        if namespace is UNKNOWN or labels is UNKNOWN:
            yield unknown_message(subject(res), "metadata.namespace / pod labels",
                                  "needed to match NetworkPolicy podSelectors"), res.urn
            continue
        verdicts = [selector_matches(sel, labels) for _, ns, sel in policies if ns == namespace or ns is UNKNOWN]
        if True in verdicts:
            continue
        if UNKNOWN in verdicts:
            yield unknown_message(subject(res), "the podSelector of a NetworkPolicy in its namespace"), res.urn
            continue
        yield (f"{subject(res)} (pod labels {labels}) in namespace {namespace!r} is selected by no NetworkPolicy "
               "with a non-empty podSelector; add one whose podSelector.matchLabels match the pod template "
               "labels and that allows only the traffic it needs."), res.urn


POLICIES = [
    stack_policy(
        name="namespace-default-deny",
        description=("Requires a default-deny NetworkPolicy (empty podSelector, policyTypes Ingress and Egress, "
                     "no rules) in every namespace that runs workloads."),
        check=_default_deny),
    stack_policy(
        name="workload-network-policy",
        description="Requires every workload's pods to be selected by a workload-specific NetworkPolicy.",
        check=_coverage),
]


