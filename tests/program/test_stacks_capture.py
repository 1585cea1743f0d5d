"""The stacks as the CLI would run them, through the TOOLS capture (emsctl.capture): config as
CLI strings, disable-default-providers enforced, StackReferences satisfied by evaluating the
referenced region stacks, outputs with their secrecy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from emsctl.capture import ProgramError, evaluate_stack
from emsctl.values import Secret, plain

ROOT = Path(__file__).resolve().parents[2]
STACKS = ("local", "private-dc1", "aws-us-east-1", "aws-eu-west-1", "global")


@pytest.mark.parametrize("stack", STACKS)
def test_stack_runs_as_the_cli_would(stack: str) -> None:
    cap = evaluate_stack(ROOT, stack)
    assert cap.resources, stack
    text = repr(plain(cap.outputs))
    assert "PRIVATE KEY" not in text, f"{stack}: key material in plain outputs"
    if stack.startswith("aws-"):
        assert isinstance(cap.outputs["kubeconfig"], Secret)
        assert isinstance(cap.outputs["nlb_arn"], str) and cap.outputs["region"] == stack[4:]
    if stack in ("local", "private-dc1"):
        assert not [r.urn for r in cap.resources if r.package == "aws" or r.type == "pulumi:providers:aws"]
    implicit = [r.urn for r in cap.resources if r.package in ("aws", "kubernetes") and r.custom and not r.provider]
    assert implicit == [], f"{stack}: on a default provider: {implicit}"


def test_global_endpoint_groups_point_at_the_region_nlbs() -> None:
    cap = evaluate_stack(ROOT, "global")
    arns = {evaluate_stack(ROOT, s).outputs["nlb_arn"] for s in ("aws-us-east-1", "aws-eu-west-1")}
    groups = cap.by_type("aws:globalaccelerator/endpointGroup:EndpointGroup")
    assert {plain(g.inputs)["endpointConfigurations"][0]["endpointId"] for g in groups} == arns


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    for name in ("Pulumi.yaml", "__main__.py", "images.lock.json"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "components", tmp_path / "components", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "stacks", tmp_path / "stacks")
    return tmp_path


@pytest.mark.parametrize(("edit", "message"), [
    (("ems:kubernetesVersion: \"1.36\"", "ems:kubernetesVersion: \"1.24\""), "ems:kubernetesVersion: 1.24 is below the supported minimum 1.26"),
    (("ems:kubernetesVersion: \"1.36\"", "ems:kubernetesVersion: \"1.29\""),
     "ems:kubernetesVersion: 1.29 is no longer offered by EKS (extended support ended 2026-03-23); new clusters: 1.32–1.36, "
     "standard support 1.35, 1.36 (EKS calendar as of 2026-12-06, components/kubernetes_versions.py)"),
    (("ems:cloud: aws", "ems:cloud: gcp"), "ems:cloud: gcp is not one of aws|private|local"),
    (("  ems:region: eu-west-1\n", ""), "ems:region: is required when ems:cloud is aws (e.g. eu-west-1)"),
    (("ems:edgeSites: [\"sub-eu-01\", \"sub-eu-02\"]", "ems:edgeSites: [\"sub-eu-01\", \"sub-eu-01\"]"), "ems:edgeSites[1]: sub-eu-01 is a duplicate; entries must be unique"),
    (("      minSize: 2\n      maxSize: 6", "      minSize: 7\n      maxSize: 6"), "ems:nodeGroups[0].minSize: 7 must not exceed maxSize 6"),
    (("ems:ingestMinReplicas: 2", "ems:ingestMinReplicas: two"), "ems:ingestMinReplicas: two must be an integer"),
])
def test_bad_config_is_one_clean_line(project_copy: Path, edit: tuple[str, str], message: str) -> None:
    path = project_copy / "stacks" / "Pulumi.aws-eu-west-1.yaml"
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ProgramError) as info:
        evaluate_stack(project_copy, "aws-eu-west-1", use_cache=False)
    assert info.value.message == message
    assert info.value.kind != "crash", info.value.traceback
