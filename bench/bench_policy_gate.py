"""Offline policy gate (emsctl policy) time: the project's largest stack and a synthetic 5,000-resource stack.

For each: capture time (evaluation under mocks), gate time (pack start, GetAnalyzerInfo,
Configure, one Analyze per resource, AnalyzeStack, shutdown) and time per resource, with the
real ``policies/ems-guard`` pack. The synthetic program declares workloads in groups of five
resources (Deployment, Service, ConfigMap, ServiceAccount, NetworkPolicy) on an explicit provider.

    python -m bench policy_gate
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from emsctl.capture import evaluate_stack, list_stacks
from emsctl.gate import run_pack

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "policies" / "ems-guard"
SYNTHETIC_RESOURCES = 5000

_PROGRAM = '''
import pulumi
import pulumi_kubernetes as k8s

groups = pulumi.Config().require_int("groups")
provider = k8s.Provider("cluster", context="offline")
opts = pulumi.ResourceOptions(provider=provider)
k8s.core.v1.Namespace("ems", metadata={"name": "ems"}, opts=opts)
k8s.networking.v1.NetworkPolicy("default-deny", metadata={"namespace": "ems"}, opts=opts,
                                spec={"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
hardening = {"allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
             "runAsNonRoot": True, "runAsUser": 10001, "capabilities": {"drop": ["ALL"]},
             "seccompProfile": {"type": "RuntimeDefault"}}
for i in range(groups):
    app = f"app-{i:05d}"
    labels = {"app": app}
    k8s.core.v1.ServiceAccount(f"{app}-sa", metadata={"namespace": "ems"}, automount_service_account_token=False, opts=opts)
    k8s.core.v1.ConfigMap(f"{app}-cm", metadata={"namespace": "ems"}, data={"index": str(i)}, opts=opts)
    k8s.apps.v1.Deployment(f"{app}-deploy", metadata={"namespace": "ems", "labels": labels}, opts=opts, spec={
        "replicas": 2, "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {
            "automountServiceAccountToken": False, "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "image": "ghcr.io/ems/app:1.0.0", "securityContext": hardening,
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                                          "limits": {"cpu": "100m", "memory": "64Mi"}}}]}}})
    k8s.core.v1.Service(f"{app}-svc", metadata={"namespace": "ems"}, opts=opts,
                        spec={"selector": labels, "ports": [{"name": "https", "port": 443}]})
    k8s.networking.v1.NetworkPolicy(f"{app}-np", metadata={"namespace": "ems"}, opts=opts, spec={
        "podSelector": {"matchLabels": labels}, "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"ports": [{"port": 443, "protocol": "TCP"}]}]})
'''


def synthetic_project(root: Path, resources: int) -> str:
    (root / "stacks").mkdir(parents=True)
    (root / "Pulumi.yaml").write_text("name: synthetic\nruntime: python\nstackConfigDir: stacks\n")
    (root / "__main__.py").write_text(_PROGRAM)
    groups = max(1, round((resources - 4) / 5))  # + stack, provider, namespace, default-deny policy
    (root / "stacks" / "Pulumi.big.yaml").write_text(f"config:\n  synthetic:groups: {groups}\n")
    return "big"


def measure(label: str, project: Path, stack: str) -> float:
    started = time.monotonic()
    cap = evaluate_stack(project, stack, use_cache=False)
    capture_s = time.monotonic() - started
    run = run_pack(PACK, cap)
    per_res_ms = 1000 * run.seconds / run.resources
    mandatory = sum(1 for v in run.violations if v.level in ("mandatory", "remediate"))
    print(f"  {label:<28} {run.resources:>9} {capture_s:>9.2f} {run.seconds:>8.2f} {run.analyze_seconds:>9.2f} "
          f"{run.analyze_stack_seconds:>8.2f} {per_res_ms:>8.3f} {mandatory:>9} {len(run.violations) - mandatory:>8}",
          flush=True)
    return run.seconds / run.resources


def main() -> None:
    print(f"pack {PACK.relative_to(REPO)} (one pack process per stack, Analyze per resource + AnalyzeStack)")
    print(f"  {'stack':<28} {'resources':>9} {'capture s':>9} {'gate s':>8} {'Analyze s':>9} {'Stack s':>8} "
          f"{'ms/res':>8} {'mandatory':>9} {'advisory':>8}")
    sizes = {s: len(evaluate_stack(REPO, s).resources) for s in list_stacks(REPO)}
    largest = max(sizes, key=sizes.get)
    small = measure(f"{largest} (largest)", REPO, largest)
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        stack = synthetic_project(Path(tmp), SYNTHETIC_RESOURCES)
        big = measure(f"synthetic ({SYNTHETIC_RESOURCES} resources)", Path(tmp), stack)
    print(f"  time per resource, synthetic / largest: x{big / small:.2f} "
          "(gate time includes starting the pack; Analyze and AnalyzeStack time is mostly the pack's own work)")


if __name__ == "__main__":
    main()
