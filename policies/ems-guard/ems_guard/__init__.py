"""Validators of the `ems-guard` CrossGuard pack, one module per domain.

* ``props``         reading properties as the engine sends them (camelCase keys, float numbers,
                    read-only proxies, unknown values during preview) and building policies
* ``ports``         Service / Ingress / NetworkPolicy / security-group / Global Accelerator ports
* ``network``       default-deny and NetworkPolicy coverage (stack policies)
* ``egress``        the north-bound client leaves the cluster only to its 2030.5 server on 443
* ``client_auth``   internet-facing 443/8883 listeners front workloads that require client authentication
* ``rbac``          Roles, ClusterRoles, bindings, ServiceAccount token automount
* ``workloads``     container and pod hardening for every pod-bearing kind
* ``rollout``       a mounted ConfigMap or Secret rolls the pods on a change, or is reloaded in place
* ``placement``     EMS node placement, TSDB storage, thermal autoscaling
* ``pki``           pulumi-tls keys and certificates
* ``aws``           EKS, EBS, StorageClass and KMS encryption/exposure
* ``private_cloud`` private/local stacks: no AWS, explicit Kubernetes providers

``all_policies()`` lists every policy in pack order; only ``__main__.py`` builds the PolicyPack.
"""

from __future__ import annotations

from pulumi_policy import Policy


def all_policies() -> list[Policy]:
    """Every policy of the pack, grouped by domain (imported lazily so each module stays standalone)."""
    from . import aws, client_auth, egress, network, pki, placement, ports, private_cloud, rbac, rollout, workloads

    policies: list[Policy] = []
    for module in (ports, network, egress, client_auth, rbac, workloads, rollout, placement, pki, aws, private_cloud):
        policies.extend(module.POLICIES)
    return policies
