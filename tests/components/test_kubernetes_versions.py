"""The supported Kubernetes range (components/kubernetes_versions.py) and the defaults and pins checked against it."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import yaml

from components.kubernetes_versions import (
    CALENDAR_AS_OF, CHART_KUBERNETES, DEFAULT_KUBERNETES, EKS_CALENDAR, eks_offered, eks_refusal, eks_standard,
    parse_version,
)
from components.settings import SettingsError, parse_settings

ROOT = Path(__file__).resolve().parents[2]
AWS = {"ems:cloud": "aws", "ems:region": "eu-west-1"}


def _stack_versions() -> dict[str, str]:
    out = {}
    for path in sorted((ROOT / "stacks").glob("Pulumi.*.yaml")):
        config = yaml.safe_load(path.read_text())["config"]
        if config.get("ems:role", "region") == "region":
            out[path.stem.split(".", 1)[1]] = config.get("ems:kubernetesVersion", DEFAULT_KUBERNETES)
    return out


def test_the_calendar_is_consistent() -> None:
    for version, (released, standard, extended) in EKS_CALENDAR.items():
        assert released < standard < extended, version
        assert 13 <= (standard - released).days / 30.44 <= 15, f"{version}: standard support is 14 months"
        assert 11 <= (extended - standard).days / 30.44 <= 13, f"{version}: extended support is 12 months"


def test_what_eks_offers_on_the_calendar_date() -> None:
    assert CALENDAR_AS_OF == date(2026, 12, 6)
    assert eks_offered() == ["1.32", "1.33", "1.34", "1.35", "1.36"]
    assert eks_standard() == ["1.35", "1.36"]
    # 1.34 left standard support four days before the calendar date.
    assert eks_standard(date(2026, 12, 1)) == ["1.34", "1.35", "1.36"]


def test_the_default_is_the_newest_version_in_standard_support() -> None:
    assert DEFAULT_KUBERNETES == eks_standard()[-1]
    assert parse_settings(AWS, "t").kubernetes_version == DEFAULT_KUBERNETES


def test_every_aws_stack_runs_a_version_in_eks_standard_support() -> None:
    versions = _stack_versions()
    aws = {name: v for name, v in versions.items() if name.startswith("aws-")}
    assert aws and all(v in eks_standard() for v in aws.values()), aws


@pytest.mark.parametrize("chart", sorted(CHART_KUBERNETES))
def test_pinned_charts_support_every_stack_version(chart: str) -> None:
    _, low, high = CHART_KUBERNETES[chart]
    for stack, version in {**_stack_versions(), "default": DEFAULT_KUBERNETES}.items():
        v = parse_version(version)
        assert v >= low and (high is None or v <= high), f"{chart} does not support {stack}'s Kubernetes {version}"


def test_an_aws_stack_on_a_version_eks_no_longer_offers_is_refused() -> None:
    with pytest.raises(SettingsError) as info:
        parse_settings({**AWS, "ems:kubernetesVersion": "1.29"}, "t")
    assert str(info.value) == (
        "ems:kubernetesVersion: 1.29 is no longer offered by EKS (extended support ended 2026-03-23); new clusters: "
        "1.32–1.36, standard support 1.35, 1.36 (EKS calendar as of 2026-12-06, components/kubernetes_versions.py)")
    assert eks_refusal("1.31") is not None and eks_refusal("1.32") is None and eks_refusal("1.37") is None
    # Private clusters and the local renderer are the utility's: any version from the platform's minimum.
    assert parse_settings({"ems:cloud": "private", "ems:kubernetesVersion": "1.29", "ems:storageProvisioner": "csi.example.com"}, "t").kubernetes_version == "1.29"


def test_eks_add_ons_follow_the_cluster_version() -> None:
    from infra_mocks import evaluate_stack

    ev = evaluate_stack("aws-eu-west-1", {"ems:kubernetesVersion": "1.35"})
    [cluster] = ev.of_type("aws:eks/cluster:Cluster")
    assert cluster.inputs["version"] == "1.35"
    lookups = [c for c in ev.mocks.calls if c[0] == "aws:eks/getAddonVersion:getAddonVersion"]
    assert sorted(c[1]["addonName"] for c in lookups) == ["aws-ebs-csi-driver", "vpc-cni"]
    assert all(c[1]["kubernetesVersion"] == "1.35" for c in lookups)
    assert all(c[2] and "pulumi:providers:aws" in c[2] for c in lookups), lookups  # the stack's provider, not a default
    addons = {a.inputs["addonName"]: a.inputs["addonVersion"] for a in ev.of_type("aws:eks/addon:Addon")}
    assert addons == {"vpc-cni": "v1.35-vpc-cni-eksbuild.1", "aws-ebs-csi-driver": "v1.35-aws-ebs-csi-driver-eksbuild.1"}
