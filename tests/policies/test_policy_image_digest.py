"""container-image-digest: on a production stack (ems:environment) every image is pinned by @sha256 digest."""

from __future__ import annotations

import pytest

from policy_engine import POLICIES, UNKNOWN_STRING_VALUE, check
from pulumi_policy import EnforcementLevel
import test_policy_private_cloud
from workload_fixtures import KIND_TYPES, first_container, workload

DEPLOY = KIND_TYPES["Deployment"]
stack_config = test_policy_private_cloud.stack_config    # the fixture: PULUMI_CONFIG as the CLI sets it
DIGEST = "sha256:" + "ab" * 32
TAGGED = "ghcr.io/ems-platform/ingest:0.1.0"


def _with_images(main: str, init: str = f"docker.io/library/eclipse-mosquitto@{DIGEST}") -> dict:
    """The compliant fixture workload with these images in its container and its init container."""
    obj = workload()
    first_container(obj)["image"] = main
    obj["spec"]["template"]["spec"]["initContainers"][0]["image"] = init
    return obj


def test_the_policy_is_mandatory() -> None:
    assert POLICIES["container-image-digest"].enforcement_level == EnforcementLevel.MANDATORY


def test_production_refuses_a_tag_only_image(stack_config) -> None:
    stack_config({"ems:environment": "production"})
    assert check("container-image-digest", DEPLOY, _with_images(TAGGED), name="ingest") == [
        "Deployment 'ingest': container 'app' (spec.template.spec.containers[0]): image "
        "'ghcr.io/ems-platform/ingest:0.1.0' is not pinned by digest on a 'production' stack (ems:environment); "
        "a tag can be moved, so deploy IMAGE@sha256:<64 hex>: set ems:images, or take the release's digests "
        "(images.lock.json, written by the images workflow)."]


def test_production_accepts_digests_with_or_without_a_tag(stack_config) -> None:
    stack_config({"ems:environment": "production"})
    obj = _with_images(f"{TAGGED}@{DIGEST}", init=f"docker.io/library/busybox@{DIGEST}")
    assert check("container-image-digest", DEPLOY, obj) == []


@pytest.mark.parametrize("image", [
    "ghcr.io/x/y@sha256:abc", f"ghcr.io/x/y@sha256:{'AB' * 32}", f"ghcr.io/x/y@sha512:{'ab' * 64}", "busybox"])
def test_production_refuses_malformed_or_missing_digests(stack_config, image: str) -> None:
    stack_config({"ems:environment": "production"})
    assert len(check("container-image-digest", DEPLOY, _with_images(image))) == 1


def test_init_containers_are_checked_too(stack_config) -> None:
    stack_config({"ems:environment": "production"})
    messages = check("container-image-digest", DEPLOY, _with_images(f"{TAGGED}@{DIGEST}", init="busybox:1.36"))
    assert len(messages) == 1 and "(spec.template.spec.initContainers[0])" in messages[0]


@pytest.mark.parametrize("config", [{}, {"ems:environment": "development"}, {"ems:environment": "staging"}])
def test_other_stacks_may_deploy_tags(stack_config, config: dict) -> None:
    stack_config(config)
    assert check("container-image-digest", DEPLOY, _with_images(TAGGED, init="busybox:1.36")) == []


def test_production_environments_are_configurable(stack_config) -> None:
    stack_config({"ems:environment": "staging"})
    cfg = {"productionEnvironments": ["production", "staging"]}
    assert len(check("container-image-digest", DEPLOY, _with_images(TAGGED), config=cfg)) == 1
    stack_config({"ems:tier": "prod"})
    cfg = {"environmentConfigKey": "ems:tier", "productionEnvironments": ["prod"]}
    assert "on a 'prod' stack (ems:tier)" in check("container-image-digest", DEPLOY, _with_images(TAGGED), config=cfg)[0]


def test_unknown_image_is_reported_on_production(stack_config) -> None:
    stack_config({"ems:environment": "production"})
    obj = _with_images(UNKNOWN_STRING_VALUE)
    assert "cannot verify spec.template.spec.containers[0].image" in check("container-image-digest", DEPLOY, obj)[0]
