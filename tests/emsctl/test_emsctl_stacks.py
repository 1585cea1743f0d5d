"""Smoke test over the project's own stacks (INFRA's stacks/): each evaluates offline and renders
manifests that are valid Kubernetes objects under the strict schemas of 1.29 and of the stack's own
``ems:kubernetesVersion`` (default: components/kubernetes_versions.py DEFAULT_KUBERNETES)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from emsctl.capture import evaluate_stack, list_stacks
from emsctl.render import render

from emsctl_paths import REPO

STACKS = list_stacks(REPO)
CORE_GROUPS = ("", "apps", "batch", "policy", "autoscaling")


def _is_core(api_version: str) -> bool:
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    return group in CORE_GROUPS or group.endswith(".k8s.io")


def test_the_project_has_the_stacks_the_issue_names() -> None:
    assert {"aws-us-east-1", "aws-eu-west-1", "global", "private-dc1", "local"} <= set(STACKS)


@pytest.mark.parametrize("stack", STACKS)
def test_stack_evaluates_and_renders_strictly_valid_manifests(stack: str, tmp_path: Path) -> None:
    from components.kubernetes_versions import DEFAULT_KUBERNETES

    cap = evaluate_stack(REPO, stack)
    assert cap.resources, f"{stack} declared nothing"
    own = str(cap.config.values.get("ems:kubernetesVersion", DEFAULT_KUBERNETES)).strip('"')
    schemas = sorted({"1.29.0", f"{own}.0"})
    files = render(cap, tmp_path)
    checked = 0
    for path in files:
        doc = yaml.safe_load(path.read_text())
        if not _is_core(doc["apiVersion"]):
            continue  # custom resources (e.g. elbv2.k8s.aws TargetGroupBinding) have no schema in the core set
        for schema in schemas:
            try:
                kubernetes_validate.validate(doc, schema, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{stack}: {path.name} (Kubernetes {schema}): {exc.message} at {'.'.join(map(str, exc.path))}")
        checked += 1
    if stack != "global":  # the global stack only builds the AWS global load balancer
        assert checked > 20, f"{stack}: only {checked} core Kubernetes objects rendered"
