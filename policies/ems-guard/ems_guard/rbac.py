"""RBAC rules: Roles, ClusterRoles and their bindings, and ServiceAccount token automount.

Every rule of a role is checked (a wildcard hidden in the second rule counts), patches and every API
version included. Aggregated ClusterRoles are refused: their rules come from label selectors the
pack cannot see, and ``aggregate-to-*`` labels inject rules into the built-in admin/edit/view roles.
"""

from __future__ import annotations

from typing import Any, Iterator

from .props import (
    UNKNOWN, Resource, dig, elements, entries, get, k8s_objects, label_is_true, of_kinds, resource_policy,
    strings, unknown_message,
)
from .workloads import NEEDS_API_TOKEN, applies_to_pods, pod_token_messages

RBAC = "rbac.authorization.k8s.io"
ROLE_KINDS = ("Role", "ClusterRole")
BINDING_KINDS = ("RoleBinding", "ClusterRoleBinding")
READ_VERBS = {"get", "list", "watch", "*"}
# Built-in ClusterRoles that read every Secret of their scope.
SECRET_READING_ROLES = {"cluster-admin", "admin", "edit"}


def _rules(res: Resource) -> Iterator[tuple[str, str, Any]]:
    """``(kind, path, rule)`` for every rule of every role object; UNKNOWN rules yield once."""
    for kind, obj in k8s_objects(res.resource_type, res.props):
        items = elements(get(obj, "rules"))
        if items is UNKNOWN:
            yield kind, "rules", UNKNOWN
            continue
        for i, rule in enumerate(items):
            yield kind, f"rules[{i}]", rule


def _wildcards(res: Resource, _cfg: dict) -> Iterator[str]:
    for _, path, rule in _rules(res):
        if rule is UNKNOWN:
            yield unknown_message(res.subject, path)
            continue
        for field in ("verbs", "resources", "apiGroups", "nonResourceURLs", "resourceNames"):
            values = strings(get(rule, field))
            if values is UNKNOWN:
                yield unknown_message(res.subject, f"{path}.{field}")
            elif any("*" in v for v in values):
                yield (f"{res.subject}: {path}.{field} is {values}; wildcards are not allowed — "
                       f"list the exact {field} the workload needs.")


def _escalation_verbs(res: Resource, cfg: dict) -> Iterator[str]:
    forbidden = {str(v) for v in cfg.get("forbiddenVerbs") or []}
    for _, path, rule in _rules(res):
        verbs = strings(get(rule, "verbs")) if rule is not UNKNOWN else UNKNOWN
        if verbs is UNKNOWN:
            yield unknown_message(res.subject, f"{path}.verbs")
            continue
        bad = sorted(set(verbs) & forbidden)
        if bad:
            yield (f"{res.subject}: {path}.verbs grants {bad}, which let a subject raise its own privileges; "
                   "remove them.")
        resources = strings(get(rule, "resources"))
        if resources is not UNKNOWN and "nodes/proxy" in resources:
            yield (f"{res.subject}: {path} grants {verbs} on nodes/proxy, which reaches the kubelet API (exec in any "
                   "pod of the node); remove it.")
        if resources is UNKNOWN and "create" in verbs:
            yield unknown_message(res.subject, f"{path}.resources", "needed to rule out minting service-account tokens")
        elif resources is not UNKNOWN and "serviceaccounts/token" in resources and "create" in verbs:
            yield (f"{res.subject}: {path} grants create on serviceaccounts/token (minting tokens for any service "
                   "account); remove it.")


def _aggregation(res: Resource, _cfg: dict) -> Iterator[str]:
    for kind, obj in k8s_objects(res.resource_type, res.props):
        if kind != "ClusterRole":
            continue
        rule = get(obj, "aggregationRule")
        if rule is UNKNOWN:
            yield unknown_message(res.subject, "aggregationRule")
        elif rule is not None:
            yield (f"{res.subject}: aggregationRule is set, so its rules come from other roles by label and "
                   "cannot be checked; list the rules explicitly.")
        labels = dig(obj, "metadata", "labels")
        if labels is UNKNOWN:
            yield unknown_message(res.subject, "metadata.labels")
            continue
        for key, value in entries(labels):
            if key.startswith(f"{RBAC}/aggregate-to-") and value is not None:
                yield (f"{res.subject}: label {key}={value!r} injects these rules into a built-in role; "
                       "remove the label and bind the role explicitly.")


def _cluster_secret_read(res: Resource, _cfg: dict) -> Iterator[str]:
    for kind, path, rule in _rules(res):
        if kind != "ClusterRole":
            continue
        if rule is UNKNOWN:
            yield unknown_message(res.subject, path)
            continue
        groups, resources, verbs = (strings(get(rule, f)) for f in ("apiGroups", "resources", "verbs"))
        if UNKNOWN in (groups, resources, verbs):
            yield unknown_message(res.subject, path)
            continue
        core = not groups or any(g in ("", "*") for g in groups)
        secrets = any(r in ("secrets", "*") for r in resources)
        reads = set(verbs) & READ_VERBS
        if core and secrets and reads:
            yield (f"{res.subject}: {path} grants {sorted(reads)} on secrets in every namespace; use a "
                   "namespaced Role with resourceNames for the secrets the workload needs.")


def _subjects(obj: Any) -> Any:
    return elements(get(obj, "subjects"))


def _cluster_admin(res: Resource, cfg: dict) -> Iterator[str]:
    admin_group = str(cfg.get("adminGroup"))
    for kind, obj in k8s_objects(res.resource_type, res.props):
        role = get(get(obj, "roleRef"), "name")
        if role is UNKNOWN:
            yield unknown_message(res.subject, "roleRef.name")
            continue
        if not isinstance(role, str) or role not in SECRET_READING_ROLES:
            continue
        if kind == "ClusterRoleBinding" and role in ("admin", "edit"):
            yield (f"{res.subject}: binds the built-in ClusterRole {role!r} cluster-wide, which reads every Secret; "
                   "use a RoleBinding in one namespace or a narrower role.")
            continue
        if role != "cluster-admin":
            continue
        subjects = _subjects(obj)
        if subjects is UNKNOWN:
            yield unknown_message(res.subject, "subjects")
            continue
        for i, subject in enumerate(subjects):
            s_kind, s_name = get(subject, "kind"), get(subject, "name")
            if UNKNOWN in (s_kind, s_name):
                yield unknown_message(res.subject, f"subjects[{i}]")
            elif s_kind != "Group" or s_name != admin_group:
                yield (f"{res.subject}: binds cluster-admin to {s_kind} {s_name!r}; only the Group "
                       f"{admin_group!r} (policy config adminGroup) may hold cluster-admin.")


def _forbidden_subjects(res: Resource, cfg: dict) -> Iterator[str]:
    forbidden = {str(s) for s in cfg.get("forbiddenSubjects") or []}
    for _, obj in k8s_objects(res.resource_type, res.props):
        subjects = _subjects(obj)
        if subjects is UNKNOWN:
            yield unknown_message(res.subject, "subjects")
            continue
        for i, subject in enumerate(subjects):
            name = get(subject, "name")
            if name is UNKNOWN:
                yield unknown_message(res.subject, f"subjects[{i}].name")
            elif isinstance(name, str) and name.strip() in forbidden:
                yield (f"{res.subject}: subjects[{i}] is {get(subject, 'kind')} {name!r}; bindings to "
                       "anonymous, unauthenticated or system:masters subjects are not allowed.")


def _token_automount(res: Resource, _cfg: dict) -> Iterator[str]:
    for kind, obj in k8s_objects(res.resource_type, res.props):
        if kind == "Secret":
            secret_type = get(obj, "type")
            if secret_type is UNKNOWN:
                yield unknown_message(res.subject, "type")
            elif secret_type == "kubernetes.io/service-account-token":
                yield (f"{res.subject}: type kubernetes.io/service-account-token creates a long-lived API token; "
                       "use short-lived projected tokens (and only for pods annotated "
                       f"{NEEDS_API_TOKEN}: \"true\").")
            continue
        if kind != "ServiceAccount":
            continue
        needs = label_is_true(dig(obj, "metadata", "annotations"), NEEDS_API_TOKEN)
        raw = get(obj, "automountServiceAccountToken")
        if UNKNOWN in (needs, raw):
            yield unknown_message(res.subject, "automountServiceAccountToken")
        elif raw is not False and not needs:
            state = "unset (defaults to true)" if raw is None else repr(raw)
            yield (f"{res.subject}: automountServiceAccountToken is {state}; set it to false, or annotate the "
                   f"ServiceAccount {NEEDS_API_TOKEN}: \"true\" if its pods call the Kubernetes API.")
    yield from pod_token_messages(res)


POLICIES = [
    resource_policy(
        name="rbac-no-wildcards",
        description="Prohibits `*` in the verbs, resources, apiGroups, nonResourceURLs or resourceNames of any role rule.",
        applies=of_kinds(*ROLE_KINDS, group=RBAC), check=_wildcards),
    resource_policy(
        name="rbac-no-escalation-verbs",
        description=("Prohibits the bind, escalate and impersonate verbs, minting service-account tokens and "
                     "nodes/proxy."),
        applies=of_kinds(*ROLE_KINDS, group=RBAC), check=_escalation_verbs,
        config={"forbiddenVerbs": {"type": "array", "items": {"type": "string"},
                                   "default": ["bind", "escalate", "impersonate"],
                                   "description": "Verbs no role may grant."}}),
    resource_policy(
        name="rbac-no-aggregation",
        description="Prohibits aggregated ClusterRoles and aggregate-to-* labels.",
        applies=of_kinds("ClusterRole", group=RBAC), check=_aggregation),
    resource_policy(
        name="rbac-no-cluster-secret-read",
        description="Prohibits ClusterRoles that read Secrets in every namespace.",
        applies=of_kinds("ClusterRole", group=RBAC), check=_cluster_secret_read),
    resource_policy(
        name="rbac-cluster-admin-binding",
        description="Restricts cluster-admin bindings to the configured admin group and forbids cluster-wide admin/edit.",
        applies=of_kinds(*BINDING_KINDS, group=RBAC), check=_cluster_admin,
        config={"adminGroup": {"type": "string", "default": "ems:platform-admins",
                               "description": "The only Group that may be bound to cluster-admin."}}),
    resource_policy(
        name="rbac-forbidden-subjects",
        description=("Prohibits bindings to system:anonymous, system:unauthenticated, system:authenticated, "
                     "system:masters and system:serviceaccounts."),
        applies=of_kinds(*BINDING_KINDS, group=RBAC), check=_forbidden_subjects,
        config={"forbiddenSubjects": {"type": "array", "items": {"type": "string"},
                                      "default": ["system:anonymous", "system:unauthenticated",
                                                  "system:authenticated", "system:masters",
                                                  "system:serviceaccounts"],
                                      "description": "Subject names no binding may name."}}),
    resource_policy(
        name="serviceaccount-token-automount",
        description=("Requires ServiceAccounts and pods to disable API token automount unless annotated "
                     "ems.io/needs-api-token: \"true\" (projected tokens and legacy token Secrets included)."),
        applies=applies_to_pods,
        check=_token_automount),
]
