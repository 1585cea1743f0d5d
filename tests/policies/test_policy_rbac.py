"""RBAC and ServiceAccount policies."""

from __future__ import annotations

import pytest

from policy_engine import UNKNOWN_ARRAY_VALUE, UNKNOWN_STRING_VALUE, check

ROLE = "kubernetes:rbac.authorization.k8s.io/v1:Role"
CROLE = "kubernetes:rbac.authorization.k8s.io/v1:ClusterRole"
CRB = "kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding"
RB = "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding"
SA = "kubernetes:core/v1:ServiceAccount"

READ_PODS = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}


def role(*rules: dict) -> dict:
    return {"metadata": {"name": "reader"}, "rules": list(rules)}


def test_wildcards_in_any_rule() -> None:
    assert check("rbac-no-wildcards", ROLE, role(READ_PODS)) == []
    hidden = role(READ_PODS, {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["*"]})
    assert check("rbac-no-wildcards", ROLE, hidden, name="reader") == [
        "Role 'reader': rules[1].verbs is ['*']; wildcards are not allowed — list the exact verbs the workload needs."]
    sub = role({"apiGroups": [""], "resources": ["pods/*"], "verbs": ["get"]})
    assert "rules[0].resources is ['pods/*']" in check("rbac-no-wildcards", CROLE, sub)[0]
    groups = role({"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]})
    assert "rules[0].apiGroups" in check("rbac-no-wildcards", "kubernetes:rbac.authorization.k8s.io/v1:RolePatch",
                                         groups)[0]


def test_wildcard_rules_unknown_is_reported() -> None:
    assert "cannot verify rules because it is unknown" in check(
        "rbac-no-wildcards", ROLE, {"rules": UNKNOWN_ARRAY_VALUE})[0]


@pytest.mark.parametrize("verb", ["bind", "escalate", "impersonate"])
def test_escalation_verbs(verb: str) -> None:
    r = role(READ_PODS, {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
                         "verbs": ["get", verb]})
    assert check("rbac-no-escalation-verbs", CROLE, r, name="r") == [
        f"ClusterRole 'r': rules[1].verbs grants ['{verb}'], which let a subject raise its own privileges; remove them."]


def test_token_minting() -> None:
    r = role({"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]})
    assert "serviceaccounts/token" in check("rbac-no-escalation-verbs", ROLE, r)[0]


def test_aggregation() -> None:
    agg = {"metadata": {"name": "agg"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "y"}}]}}
    assert "aggregationRule is set" in check("rbac-no-aggregation", CROLE, agg)[0]
    inject = {"metadata": {"name": "i", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
              "rules": [READ_PODS]}
    assert "injects these rules into a built-in role" in check("rbac-no-aggregation", CROLE, inject)[0]
    assert check("rbac-no-aggregation", CROLE, role(READ_PODS)) == []


@pytest.mark.parametrize("rule,bad", [
    ({"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}, True),
    ({"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}, False),
    ({"apiGroups": ["*"], "resources": ["*"], "verbs": ["get"]}, True),
    ({"apiGroups": ["apps"], "resources": ["secrets"], "verbs": ["get"]}, False),
])
def test_cluster_secret_read(rule: dict, bad: bool) -> None:
    msgs = check("rbac-no-cluster-secret-read", CROLE, role(READ_PODS, rule))
    assert bool(msgs) is bad
    assert check("rbac-no-cluster-secret-read", ROLE, role(rule)) == []  # namespaced Role is fine


def binding(role_name: str, *subjects: dict) -> dict:
    return {"metadata": {"name": "b"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                                   "name": role_name}, "subjects": list(subjects)}


ADMINS = {"kind": "Group", "name": "ems:platform-admins", "apiGroup": "rbac.authorization.k8s.io"}


def test_cluster_admin_binding() -> None:
    assert check("rbac-cluster-admin-binding", CRB, binding("cluster-admin", ADMINS)) == []
    sa = {"kind": "ServiceAccount", "name": "ci", "namespace": "ems"}
    assert check("rbac-cluster-admin-binding", CRB, binding("cluster-admin", ADMINS, sa), name="b") == [
        "ClusterRoleBinding 'b': binds cluster-admin to ServiceAccount 'ci'; only the Group 'ems:platform-admins' "
        "(policy config adminGroup) may hold cluster-admin."]
    other = {"kind": "Group", "name": "ops"}
    assert check("rbac-cluster-admin-binding", RB, binding("cluster-admin", other), config={"adminGroup": "ops"}) == []
    assert "reads every Secret" in check("rbac-cluster-admin-binding", CRB, binding("edit", other))[0]
    assert check("rbac-cluster-admin-binding", RB, binding("edit", other)) == []


def test_cluster_admin_binding_unknown_role_is_reported() -> None:
    b = binding("cluster-admin", ADMINS)
    b["roleRef"]["name"] = UNKNOWN_STRING_VALUE
    assert "cannot verify roleRef.name" in check("rbac-cluster-admin-binding", CRB, b)[0]


@pytest.mark.parametrize("name", ["system:anonymous", "system:unauthenticated", "system:masters", "system:serviceaccounts",
                                  "system:authenticated"])
def test_forbidden_subjects(name: str) -> None:
    b = binding("view", {"kind": "Group", "name": name})
    assert check("rbac-forbidden-subjects", RB, b, name="b") == [
        f"RoleBinding 'b': subjects[0] is Group '{name}'; bindings to anonymous, unauthenticated or system:masters "
        "subjects are not allowed."]
    assert check("rbac-forbidden-subjects", RB, binding("view", ADMINS)) == []


def test_service_account_automount() -> None:
    assert check("serviceaccount-token-automount", SA, {"metadata": {"name": "x"}}, name="x") == [
        "ServiceAccount 'x': automountServiceAccountToken is unset (defaults to true); set it to false, or annotate "
        "the ServiceAccount ems.io/needs-api-token: \"true\" if its pods call the Kubernetes API."]
    assert check("serviceaccount-token-automount", SA, {"automountServiceAccountToken": False}) == []
    assert check("serviceaccount-token-automount", SA, {
        "metadata": {"annotations": {"ems.io/needs-api-token": "true"}}, "automountServiceAccountToken": True}) == []
    assert check("serviceaccount-token-automount", SA, {"automountServiceAccountToken": True})


def test_node_proxy() -> None:
    r = role({"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]})
    assert check("rbac-no-escalation-verbs", CROLE, r, name="r") == [
        "ClusterRole 'r': rules[0] grants ['get'] on nodes/proxy, which reaches the kubelet API (exec in any pod of "
        "the node); remove it."]


def test_projected_token_and_legacy_token_secret() -> None:
    from workload_fixtures import KIND_TYPES, pod_spec, workload

    spec = pod_spec(volumes=[{"name": "tok", "projected": {"defaultMode": 256, "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}]}}])
    obj = workload(spec=spec)
    assert check("serviceaccount-token-automount", KIND_TYPES["Deployment"], obj, name="x") == [
        "Deployment 'x': spec.template.spec.volumes[0].projected.sources[0] mounts a service account token, which "
        "automountServiceAccountToken: false was meant to prevent; remove it, or annotate the pod template "
        "ems.io/needs-api-token: \"true\" if it calls the Kubernetes API."]
    obj["spec"]["template"]["metadata"]["annotations"] = {"ems.io/needs-api-token": "true"}
    assert check("serviceaccount-token-automount", KIND_TYPES["Deployment"], obj) == []
    secret = {"metadata": {"annotations": {"kubernetes.io/service-account.name": "ci"}},
              "type": "kubernetes.io/service-account-token"}
    assert "creates a long-lived API token" in check("serviceaccount-token-automount", "kubernetes:core/v1:Secret",
                                                     secret)[0]
    assert check("serviceaccount-token-automount", "kubernetes:core/v1:Secret", {"type": "Opaque"}) == []
