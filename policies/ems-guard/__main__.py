"""The `ems-guard` CrossGuard policy pack: port, network, RBAC, hardening, placement, PKI, AWS and
private-cloud rules for the ems-platform program (see docs/policies.md).

Only this file builds the PolicyPack: its constructor starts the Analyzer gRPC server, prints the
port and blocks. The policies live in the ``ems_guard`` package next to this file.
"""

from pulumi_policy import EnforcementLevel, PolicyPack

from ems_guard import all_policies

PolicyPack(
    name="ems-guard",
    description="Enforces the ems-platform port plan, network isolation, RBAC, workload hardening, "
                "placement, mTLS PKI, AWS and private-cloud rules.",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=all_policies(),
)
