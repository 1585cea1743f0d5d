"""The gate with the real ems-guard pack on a program full of deliberate violations."""

from __future__ import annotations

import json

import pytest

from emsctl.cli import main

from emsctl_paths import EMS_GUARD, VIOLATIONS

# policy → logical names of the resources that break it in tests/fixtures/violations/__main__.py
EXPECTED = {
    "service-ports-allowed": {"odd-port"},
    "service-external-ports": {"public-mqtt-plain"},
    "ingress-ports": {"plain-ingress"},
    "networkpolicy-ingress-ports": {"ssh-allow"},
    "security-group-public-ingress": {"ssh-open-sg"},
    "global-accelerator-listener-ports": {"http-listener"},
    "namespace-default-deny": {"insecure-app"},
    "workload-network-policy": {"insecure-app", "foreign-registry"},
    "rbac-no-wildcards": {"wildcard-role"},
    "rbac-no-escalation-verbs": {"escalating-role"},
    "rbac-no-aggregation": {"aggregated-role"},
    "rbac-no-cluster-secret-read": {"secret-reader"},
    "rbac-cluster-admin-binding": {"admin-for-developers"},
    "rbac-forbidden-subjects": {"anonymous-binding"},
    "serviceaccount-token-automount": {"token-mounting-sa", "insecure-app"},
    "container-privileged": {"insecure-app"},
    "container-privilege-escalation": {"insecure-app"},
    "container-run-as-non-root": {"insecure-app"},
    "container-readonly-root-filesystem": {"insecure-app"},
    "container-capabilities": {"insecure-app"},
    "pod-seccomp-runtime-default": {"insecure-app"},
    "pod-host-access": {"insecure-app"},
    "container-resources": {"insecure-app"},
    "container-image-pinned": {"insecure-app"},
    "container-image-registry": {"foreign-registry"},
    "pod-sysctls-allowed": {"insecure-app"},
    "secret-volume-mode": {"insecure-app"},
    "pod-config-change-rolls": {"insecure-app"},
    "latency-critical-node-affinity": {"insecure-app"},
    "thermal-hpa-cooldown": {"thermal-hpa"},
    "tsdb-csi-storage": {"tsdb-claim"},
    "tls-key-strength": {"weak-rsa-key"},
    "tls-cert-lifetime": {"long-lived-server-cert"},
    "tls-ca-usage": {"leaf-claiming-ca"},
    "tls-cert-purpose": {"long-lived-server-cert"},
    "eks-endpoint-not-public": {"public-cluster"},
    "eks-secrets-encryption": {"public-cluster"},
    "eks-control-plane-logging": {"public-cluster"},
    "ebs-encryption": {"plain-volume"},
    "storageclass-ebs-encryption": {"unencrypted-ebs"},
    "kms-key-rotation": {"static-key"},
    "private-cloud-no-aws": {"ssh-open-sg", "public-cluster", "plain-volume", "static-key", "accel", "http-listener",
                             "cluster-role"},
    "private-cloud-explicit-provider": {"default-provider-cm"},
}


@pytest.fixture(scope="module")
def report() -> dict:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["policy", "--stack", "bad", "--project", str(VIOLATIONS), "--pack", str(EMS_GUARD), "--json"])
    data = json.loads(out.getvalue())
    data["exit"] = code
    return data


def test_the_gate_fails_on_the_violations_fixture(report: dict) -> None:
    assert report["exit"] == 1
    assert report["mandatory"] >= sum(len(v) for v in EXPECTED.values())


@pytest.mark.parametrize("policy", sorted(EXPECTED))
def test_each_deliberate_violation_is_named(report: dict, policy: str) -> None:
    found = {v["urn"].rsplit("::", 1)[-1] for v in report["packs"][0]["violations"] if v["policy"] == policy}
    missing = EXPECTED[policy] - found
    assert not missing, f"{policy} did not report {sorted(missing)} (reported: {sorted(found)})"
    assert all(v["enforcementLevel"] == "mandatory" for v in report["packs"][0]["violations"] if v["policy"] == policy)


def test_text_output_groups_by_policy_with_urn_and_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "--stack", "bad", "--project", str(VIOLATIONS), "--pack", str(EMS_GUARD)]) == 1
    out = capsys.readouterr().out
    assert "[mandatory] ems-guard/rbac-no-wildcards: " in out
    assert "    bad: urn:pulumi:bad::ems-violations::pulumi:pulumi:Stack$kubernetes:rbac.authorization.k8s.io/v1:ClusterRole::wildcard-role\n" in out
    assert out.rstrip().splitlines()[-1].startswith("ems-guard: ") and "violations in" in out.rstrip().splitlines()[-1]
