"""Private-cloud stack policies: the stack config (PULUMI_CONFIG) decides; providers come from the engine."""

from __future__ import annotations

import json
from typing import Iterator

import pulumi.runtime
import pytest
from pulumi.runtime.config import CONFIG

from policy_engine import StackResource, check_stack, provider
from workload_fixtures import KIND_TYPES, workload

DEPLOY = KIND_TYPES["Deployment"]
DEFAULT_K8S = provider("default_4_34_2")


@pytest.fixture
def stack_config(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Set the stack config the way the CLI hands it to a pack: PULUMI_CONFIG in the environment."""
    saved = CONFIG.get()
    pulumi.runtime.set_all_config({})  # nothing cached in-process: only the environment counts

    def use(values: dict) -> None:
        monkeypatch.setenv("PULUMI_CONFIG", json.dumps(values))

    yield use
    CONFIG.set(saved)


def _stack() -> list[StackResource]:
    return [StackResource("pulumi:providers:kubernetes", "cluster", {}),
            StackResource(DEPLOY, "ingest", workload())]


def test_private_stack_clean(stack_config) -> None:
    stack_config({"ems:cloud": "private"})
    assert check_stack("private-cloud-no-aws", _stack()) == []
    assert check_stack("private-cloud-explicit-provider", _stack()) == []


def test_private_stack_with_aws_resource(stack_config) -> None:
    stack_config({"ems:cloud": "private"})
    bucket = StackResource("aws:s3/bucketV2:BucketV2", "logs", {})
    prov = StackResource("pulumi:providers:aws", "default_7_51_1", {})
    assert check_stack("private-cloud-no-aws", _stack() + [bucket, prov]) == [
        ("aws:s3/bucketV2:BucketV2 'logs' exists in a 'private' stack (ems:cloud); private and local stacks must not "
         "create or configure AWS resources — remove it or move it to an AWS stack.", bucket.urn),
        ("pulumi:providers:aws 'default_7_51_1' exists in a 'private' stack (ems:cloud); private and local stacks "
         "must not create or configure AWS resources — remove it or move it to an AWS stack.", prov.urn)]


def test_aws_stack_may_have_aws_and_default_providers(stack_config) -> None:
    stack_config({"ems:cloud": "aws"})
    stack = _stack() + [StackResource("aws:eks/cluster:Cluster", "eks", {}),
                        StackResource(DEPLOY, "x", workload(), prov=DEFAULT_K8S)]
    assert check_stack("private-cloud-no-aws", stack) == []
    assert check_stack("private-cloud-explicit-provider", stack) == []


def test_unset_cloud_uses_default_local(stack_config) -> None:
    stack_config({})
    bucket = StackResource("aws:s3/bucketV2:BucketV2", "logs", {})
    assert "in a 'local' stack" in check_stack("private-cloud-no-aws", [bucket])[0][0]
    assert check_stack("private-cloud-no-aws", [bucket], config={"defaultCloud": "aws"}) == []


def test_default_or_missing_provider_in_private_stack(stack_config) -> None:
    stack_config({"ems:cloud": "local"})
    default = StackResource(DEPLOY, "x", workload(), prov=DEFAULT_K8S)
    missing = StackResource("kubernetes:core/v1:ConfigMap", "cm", {}, no_provider=True)
    engine_default = StackResource("pulumi:providers:kubernetes", "default_4_34_2", {})
    found = check_stack("private-cloud-explicit-provider", _stack() + [default, missing, engine_default])
    assert found == [
        ("kubernetes:apps/v1:Deployment 'x' uses the default Kubernetes provider "
         "(urn:pulumi:dev::ems::pulumi:providers:kubernetes::default_4_34_2) in a 'local' stack; pass the cluster's "
         "kubernetes.Provider explicitly (opts providers=/provider=).", default.urn),
        ("kubernetes:core/v1:ConfigMap 'cm' has no provider reference in a 'local' stack; pass the cluster's "
         "kubernetes.Provider (opts providers=/provider=) so it cannot reach the default kubeconfig.", missing.urn),
        ("the default Kubernetes provider 'default_4_34_2' exists in a 'local' stack; pass an explicit "
         "kubernetes.Provider to every resource (and keep pulumi:disable-default-providers).", engine_default.urn)]


def test_component_types_are_not_custom_resources(stack_config) -> None:
    stack_config({"ems:cloud": "private"})
    chart = StackResource("kubernetes:helm.sh/v3:Chart", "chart", {}, no_provider=True)
    assert check_stack("private-cloud-explicit-provider", [chart]) == []
