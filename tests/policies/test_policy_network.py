"""Stack policies on NetworkPolicies: default deny per namespace and per-workload coverage."""

from __future__ import annotations

from policy_engine import UNKNOWN_STRING_VALUE, StackResource, check_stack, urn
from workload_fixtures import KIND_TYPES, workload

NP = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
NS = "kubernetes:core/v1:Namespace"
DEPLOY = KIND_TYPES["Deployment"]


def deny(namespace: str = "ems", **spec) -> dict:
    return {"metadata": {"name": "default-deny", "namespace": namespace},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], **spec}}


def allow(labels: dict, namespace: str = "ems") -> dict:
    return {"metadata": {"name": "allow", "namespace": namespace},
            "spec": {"podSelector": {"matchLabels": labels}, "policyTypes": ["Ingress"],
                     "ingress": [{"ports": [{"port": 8883}]}]}}


def test_default_deny_present() -> None:
    stack = [StackResource(DEPLOY, "ingest", workload()), StackResource(NP, "deny", deny())]
    assert check_stack("namespace-default-deny", stack) == []


def test_default_deny_missing_or_not_a_deny() -> None:
    d = StackResource(DEPLOY, "ingest", workload())
    assert check_stack("namespace-default-deny", [d]) == [(
        "namespace 'ems' runs workloads (e.g. Deployment 'ingest') but has no default-deny NetworkPolicy; add one "
        "with podSelector: {}, policyTypes: [Ingress, Egress] and no rules.", d.urn)]
    for spec in ({"policyTypes": ["Ingress"]}, {"ingress": [{}]}, {"podSelector": {"matchLabels": {"a": "b"}}}):
        found = check_stack("namespace-default-deny", [d, StackResource(NP, "deny", deny(**spec))])
        assert len(found) == (2 if "ingress" in spec else 1), spec  # an allow-all rule is also reported as such
    other_ns = StackResource(NP, "deny", deny("other"))
    assert len(check_stack("namespace-default-deny", [d, other_ns])) == 1


def test_default_deny_follows_unknown_namespace_to_namespace_resource() -> None:
    ns = StackResource(NS, "ems-ns", {"metadata": {"name": UNKNOWN_STRING_VALUE}})
    w = workload(namespace=UNKNOWN_STRING_VALUE)
    d = StackResource(DEPLOY, "ingest", w, property_dependencies={"metadata": [ns]})
    np = StackResource(NP, "deny", deny(UNKNOWN_STRING_VALUE), property_dependencies={"metadata": [ns]})
    assert check_stack("namespace-default-deny", [ns, d, np]) == []
    found = check_stack("namespace-default-deny", [ns, d])
    assert found == [(f"namespace 'of Namespace {urn(NS, 'ems-ns')}' runs workloads (e.g. Deployment 'ingest') but "
                      "has no default-deny NetworkPolicy; add one with podSelector: {}, policyTypes: [Ingress, Egress] "
                      "and no rules.", d.urn)]
    orphan = StackResource(DEPLOY, "ingest", w)
    assert check_stack("namespace-default-deny", [ns, orphan, np])[0][0].startswith(
        "Deployment 'ingest': cannot verify metadata.namespace because it is unknown during preview")


def test_default_namespace_comes_from_provider_or_default() -> None:
    w = workload()
    del w["metadata"]["namespace"]
    d = StackResource(DEPLOY, "ingest", w)
    assert "namespace 'default'" in check_stack("namespace-default-deny", [d])[0][0]


def test_workload_selected_by_specific_policy() -> None:
    d = StackResource(DEPLOY, "ingest", workload(labels={"app.kubernetes.io/name": "ingest", "tier": "data"}))
    stack = [d, StackResource(NP, "deny", deny())]
    assert check_stack("workload-network-policy", stack) == [(
        "Deployment 'ingest' (pod labels {'app.kubernetes.io/name': 'ingest', 'tier': 'data'}) in namespace 'ems' is "
        "selected by no NetworkPolicy with a non-empty podSelector; add one whose podSelector.matchLabels match the "
        "pod template labels and that allows only the traffic it needs.", d.urn)]
    assert check_stack("workload-network-policy", stack + [
        StackResource(NP, "allow", allow({"app.kubernetes.io/name": "ingest"}))]) == []
    assert len(check_stack("workload-network-policy", stack + [
        StackResource(NP, "allow", allow({"app.kubernetes.io/name": "other"}))])) == 1
    assert len(check_stack("workload-network-policy", stack + [
        StackResource(NP, "allow", allow({"app.kubernetes.io/name": "ingest"}, namespace="other"))])) == 1


def test_match_expressions() -> None:
    d = StackResource(DEPLOY, "ingest", workload(labels={"app": "ingest"}))
    expr = allow({})
    expr["spec"]["podSelector"] = {"matchExpressions": [{"key": "app", "operator": "In", "values": ["ingest"]}]}
    assert check_stack("workload-network-policy", [d, StackResource(NP, "e", expr)]) == []
    expr["spec"]["podSelector"] = {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["ingest"]}]}
    assert len(check_stack("workload-network-policy", [d, StackResource(NP, "e", expr)])) == 1


def test_cronjob_pods_are_matched_by_template_labels() -> None:
    c = StackResource(KIND_TYPES["CronJob"], "compact", workload("CronJob", labels={"app": "compact"}))
    assert check_stack("workload-network-policy", [c, StackResource(NP, "a", allow({"app": "compact"}))]) == []


def test_allow_all_policy_undoing_default_deny() -> None:
    d = StackResource(DEPLOY, "ingest", workload())
    allow_all = StackResource(NP, "allow-all", {"metadata": {"namespace": "ems"}, "spec": {
        "podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}})
    assert check_stack("namespace-default-deny", [d, StackResource(NP, "deny", deny()), allow_all]) == [(
        "NetworkPolicy 'allow-all': spec.egress[0] allows all traffic for every pod of its namespace (empty "
        "podSelector, no peers, no ports), which undoes the default deny; name the peers and ports.",
        allow_all.urn)]
    dns = StackResource(NP, "dns", {"metadata": {"namespace": "ems"}, "spec": {
        "podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}})
    assert check_stack("namespace-default-deny", [d, StackResource(NP, "deny", deny()), dns]) == []
