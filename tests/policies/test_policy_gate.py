"""ems-guard end to end through the offline gate (`emsctl policy`): the real program's stacks must
pass, and a hostile program written with the real provider SDKs must be caught resource by resource.

The gate runs each program under Pulumi mocks, starts this pack as the CLI does and speaks the
Analyzer gRPC protocol (TOOLS owns it; this file only checks what the pack says).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from policy_engine import PACK_DIR

ROOT = PACK_DIR.parents[1]
HOSTILE = Path(__file__).parent / "hostile"
STACKS = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))


def gate(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "emsctl.cli", "policy", "--json", "--pack", str(PACK_DIR), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["failedStacks"] == [], proc.stderr[-3000:]
    return report


def _violations(report: dict) -> list[dict]:
    return [v for pack in report["packs"] for v in pack["violations"]]


@pytest.fixture(scope="module")
def infra_report() -> dict:
    return gate("--all-stacks")


def test_there_are_stacks() -> None:
    assert {"local", "global"} <= set(STACKS), STACKS


@pytest.mark.parametrize("stack", STACKS)
def test_infra_stack_has_no_mandatory_violation(infra_report: dict, stack: str) -> None:
    found = [f"{v['policy']}: {v['urn']}: {v['message']}" for v in _violations(infra_report)
             if v["stack"] == stack and v["enforcementLevel"] == "mandatory"]
    assert found == []


# resource name → every policy that must flag it (and no other policy may).
EXPECTED = {
    "untagged-image": {"container-image-pinned"},
    "latest-image": {"container-image-pinned"},
    "cap-net-admin": {"container-capabilities"},
    "drop-missing": {"container-capabilities"},
    "host-port": {"pod-host-access"},
    "escalation-unset": {"container-privilege-escalation"},
    "seccomp-unconfined": {"pod-seccomp-runtime-default"},
    "seccomp-localhost": {"pod-seccomp-runtime-default"},
    "root-uid": {"container-run-as-non-root"},
    "pod-level-only-nonroot-container-root": {"container-run-as-non-root"},
    "secret-0644": {"secret-volume-mode"},
    "secret-default-mode-unset": {"secret-volume-mode"},
    "config-no-rollout": {"pod-config-change-rolls"},
    "writable-root": {"container-readonly-root-filesystem"},
    "no-limits": {"container-resources"},
    "evil-registry": {"container-image-registry"},
    "ssh-port": {"container-ports-allowed", "external-listener-client-auth"},  # its 443 LoadBalancer: no client auth declared
    "lb-443-to-22": {"service-ports-allowed"},
    "unsafe-sysctl": {"pod-sysctls-allowed"},
    "wildcard-second-rule": {"rbac-no-wildcards"},
    "aggregated": {"rbac-no-aggregation"},
    "secret-reader": {"rbac-no-cluster-secret-read"},
    "admin-for-ci": {"rbac-cluster-admin-binding"},
    "token-automount": {"serviceaccount-token-automount"},
    "nodeport-1883": {"service-external-ports"},
    "lb-502-no-ranges": {"service-external-ports"},
    "thermal-no-cooldown": {"thermal-hpa-cooldown"},
    "sg-ssh-world": {"security-group-public-ingress"},
    "sg-rule-all-v6": {"security-group-public-ingress"},
    "eks-public-default": {"eks-endpoint-not-public", "eks-secrets-encryption", "eks-control-plane-logging"},
    "kms-no-rotation": {"kms-key-rotation"},
    "ebs-unencrypted": {"ebs-encryption"},
    "imdsv1-template": {"launch-template-imdsv2"},
    "ga-udp-all": {"global-accelerator-listener-ports"},
    "rsa-2048": {"tls-key-strength"},
    "ecdsa-default-curve": {"tls-key-strength"},
    "ten-year-leaf": {"tls-cert-lifetime"},
    "server-without-server-auth": {"tls-cert-purpose"},
}


@pytest.fixture(scope="module")
def hostile_aws() -> dict:
    return gate("--project", str(HOSTILE), "--stack", "aws")


def _by_resource(report: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for v in _violations(report):
        out.setdefault(v["urn"].rsplit("::", 1)[-1], set()).add(v["policy"])
    return out


def test_hostile_resources_are_each_caught_by_the_right_policy(hostile_aws: dict) -> None:
    found = _by_resource(hostile_aws)
    assert {name: found.get(name, set()) for name in EXPECTED} == EXPECTED
    assert all(v["enforcementLevel"] == "mandatory" for v in _violations(hostile_aws))


def test_good_resources_pass_every_policy(hostile_aws: dict) -> None:
    found = _by_resource(hostile_aws)
    assert {name: policies for name, policies in found.items() if name.startswith("good-")} == {}
    assert set(found) <= set(EXPECTED)


def test_private_stack_flags_every_aws_resource_and_only_the_default_provider_resource() -> None:
    found = _by_resource(gate("--project", str(HOSTILE), "--stack", "private"))
    aws = {"sg-ssh-world", "sg-rule-all-v6", "good-sg", "eks-public-default", "kms-no-rotation", "ebs-unencrypted",
           "imdsv1-template",
           "ga-udp-all"}
    flagged = {name for name, policies in found.items() if "private-cloud-no-aws" in policies}
    providers = {name for name in flagged if name.startswith("default_")}  # the engine's default aws provider
    assert len(providers) == 1 and flagged - providers == aws
    explicit = {name for name, policies in found.items() if "private-cloud-explicit-provider" in policies}
    assert {n for n in explicit if not n.startswith("default_")} == {"default-provider-cm"}
