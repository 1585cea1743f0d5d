"""RBAC for people: least-privilege operator and viewer Roles bound to configured groups.

No wildcard appears in any verb, resource or API group. Neither role can read Secrets
(certificate keys live there); operators may restart pods and scale workloads, viewers
only read.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.k8s_common import ComponentArgsError, child, metadata

APP = "access"
READ = ["get", "list", "watch"]

VIEWER_RULES = [
    {"apiGroups": [""], "resources": ["pods", "pods/log", "services", "configmaps", "events", "persistentvolumeclaims"], "verbs": READ},
    {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "replicasets"], "verbs": READ},
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": READ},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": READ},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": READ},
]
OPERATOR_RULES = [
    *VIEWER_RULES,
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]},
    {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": ["patch"]},
    {"apiGroups": ["apps"], "resources": ["deployments/scale", "statefulsets/scale"], "verbs": ["get", "patch", "update"]},
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": ["patch"]},
]


@dataclass(frozen=True)
class AccessControlArgs:
    namespace: pulumi.Input[str]
    """Namespace the Roles grant access to."""
    operator_groups: tuple[str, ...] = ("ems-operators",)
    """Groups bound to the operator Role. Defaults to ``ems-operators``."""
    viewer_groups: tuple[str, ...] = ("ems-viewers",)
    """Groups bound to the viewer Role. Defaults to ``ems-viewers``."""


class AccessControl(pulumi.ComponentResource):
    """``ems-operator`` and ``ems-viewer`` Roles and their RoleBindings."""

    operator_role: pulumi.Output[str]
    viewer_role: pulumi.Output[str]

    def __init__(self, name: str, args: AccessControlArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        for field, groups in (("operator_groups", args.operator_groups), ("viewer_groups", args.viewer_groups)):
            if any(g in ("system:masters", "system:authenticated", "system:unauthenticated") for g in groups):
                raise ComponentArgsError(name, field, groups, "must not name a built-in system group")
        super().__init__("ems:rbac:AccessControl", name, None, opts)
        o = child(self)
        roles = {}
        for role, rules, groups in (("operator", OPERATOR_RULES, args.operator_groups), ("viewer", VIEWER_RULES, args.viewer_groups)):
            r = k8s.rbac.v1.Role(f"{name}-{role}", metadata=metadata(f"ems-{role}", args.namespace, APP), rules=rules, opts=o)
            roles[role] = r.metadata.name
            if groups:
                k8s.rbac.v1.RoleBinding(
                    f"{name}-{role}-binding",
                    metadata=metadata(f"ems-{role}", args.namespace, APP),
                    role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": r.metadata.name},
                    subjects=[{"kind": "Group", "name": g, "apiGroup": "rbac.authorization.k8s.io"} for g in groups],
                    opts=o,
                )
        self.operator_role = roles["operator"]
        self.viewer_role = roles["viewer"]
        self.register_outputs({"operator_role": self.operator_role, "viewer_role": self.viewer_role})
