"""emsctl.capture: what a program registers under mocks, with config as the CLI passes it."""

from __future__ import annotations

import pytest

from emsctl.capture import SECURE_PLACEHOLDER, Capture, evaluate_stack, list_stacks, load_project
from emsctl.errors import ConfigError, ProgramError
from emsctl.providers import kubernetes_auto_name
from emsctl.values import Secret, plain

from emsctl_paths import FIXTURES, MINI, REFS

STACK = "urn:pulumi:dev::mini::pulumi:pulumi:Stack::mini-dev"
TOP = "urn:pulumi:dev::mini::pulumi:pulumi:Stack$"  # URN prefix of the stack's direct children
PROVIDER = f"{TOP}pulumi:providers:kubernetes::k8s"


def one(cap: Capture, token: str):
    found = cap.by_type(token)
    assert len(found) == 1, [r.urn for r in found]
    return found[0]


def test_records_every_resource_with_urn_type_and_kind(mini_dev: Capture) -> None:
    types = sorted(r.type for r in mini_dev.resources)
    assert types == sorted([
        "pulumi:providers:kubernetes", "kubernetes:core/v1:Namespace", "mini:app:App", "kubernetes:apps/v1:Deployment",
        "kubernetes:core/v1:Service", "tls:index/privateKey:PrivateKey", "kubernetes:core/v1:Secret",
        "kubernetes:core/v1:ConfigMap"])
    app = one(mini_dev, "mini:app:App")
    assert app.custom is False and app.urn == "urn:pulumi:dev::mini::pulumi:pulumi:Stack$mini:app:App::ingest"
    assert mini_dev.stack_urn == STACK


def test_parents_and_providers_follow_the_component_tree(mini_dev: Capture) -> None:
    app = one(mini_dev, "mini:app:App")
    deploy = one(mini_dev, "kubernetes:apps/v1:Deployment")
    assert deploy.urn == "urn:pulumi:dev::mini::mini:app:App$kubernetes:apps/v1:Deployment::ingest-deploy"
    assert deploy.parent == app.urn and app.parent == STACK
    # providers= on the component reaches its children; provider= on a plain resource is explicit
    assert deploy.provider == PROVIDER and deploy.provider_ref.startswith(PROVIDER + "::")
    assert one(mini_dev, "kubernetes:core/v1:Namespace").provider == PROVIDER
    assert one(mini_dev, "tls:index/privateKey:PrivateKey").provider is None  # the default tls provider
    service = one(mini_dev, "kubernetes:core/v1:Service")
    assert sorted(r.urn for r in mini_dev.children(app.urn)) == sorted([deploy.urn, service.urn])


def test_dependencies_and_property_dependencies(mini_dev: Capture) -> None:
    ns = one(mini_dev, "kubernetes:core/v1:Namespace")
    key = one(mini_dev, "tls:index/privateKey:PrivateKey")
    secret = one(mini_dev, "kubernetes:core/v1:Secret")
    deploy = one(mini_dev, "kubernetes:apps/v1:Deployment")
    assert ns.urn in deploy.dependencies
    assert deploy.property_dependencies["metadata"] == (ns.urn,)
    assert key.urn in secret.property_dependencies["stringData"]
    # depends_on=[app] expands to the component's children, as the SDK does
    assert deploy.urn in secret.dependencies
    assert ns.urn in secret.property_dependencies["metadata"]


def test_inputs_are_plain_python_with_integers_and_secrets_marked(mini_dev: Capture) -> None:
    deploy = one(mini_dev, "kubernetes:apps/v1:Deployment").inputs
    assert deploy["spec"]["replicas"] == 3 and type(deploy["spec"]["replicas"]) is int
    ports = deploy["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert [type(p["containerPort"]) for p in ports] == [int, int]
    assert deploy["apiVersion"] == "apps/v1" and deploy["kind"] == "Deployment"
    secret = one(mini_dev, "kubernetes:core/v1:Secret").inputs
    assert isinstance(secret["stringData"], Secret)  # a secret input makes the whole map secret, as in the SDK
    assert plain(secret["stringData"])["tls.key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert "MOCK" not in repr(secret)


def test_config_reaches_the_program_as_the_cli_passes_it(mini_dev: Capture) -> None:
    # integer from the stack file, object and list config, project default (mini:team) from Pulumi.yaml
    values = mini_dev.config.values
    assert values["mini:replicas"] == "3" and values["mini:ports"] == "[8883, 443]"
    assert values["mini:team"] == "grid"
    assert values["kubernetes:context"] == "offline"
    labels = one(mini_dev, "kubernetes:apps/v1:Deployment").inputs["metadata"]["labels"]
    assert labels == {"app": "ingest", "tier": "ingest", "ems.io/latency-critical": "true"}
    assert one(mini_dev, "kubernetes:core/v1:ConfigMap").inputs["data"] == {"team": "grid", "replicas": "3"}
    assert one(mini_dev, "pulumi:providers:kubernetes").inputs["context"] == "offline"


def test_secure_config_becomes_a_secret_placeholder(mini_dev: Capture) -> None:
    assert mini_dev.secure_keys == ("mini:apiToken",)
    assert mini_dev.config.values["mini:apiToken"] == SECURE_PLACEHOLDER
    assert "mini:apiToken" in mini_dev.config.secret_keys
    string_data = plain(one(mini_dev, "kubernetes:core/v1:Secret").inputs["stringData"])
    assert string_data["token"] == SECURE_PLACEHOLDER


def test_stack_outputs_keep_secrets_and_provider_computed_names(mini_dev: Capture) -> None:
    out = mini_dev.outputs
    assert out["namespace"] == "edge" and out["service"] == "ingest" and out["ports"] == [8883, 443]
    cm = one(mini_dev, "kubernetes:core/v1:ConfigMap")
    assert out["configmap"] == kubernetes_auto_name("settings", cm.urn)
    assert isinstance(out["caKey"], Secret)  # additionalSecretOutputs of tls.PrivateKey


def test_disabled_default_provider_fails_loudly() -> None:
    with pytest.raises(ProgramError) as err:
        evaluate_stack(MINI, "slip")
    assert err.value.kind == "run"
    assert err.value.message == (
        "Default provider for 'kubernetes' disabled. 'kubernetes:core/v1:Namespace' resource 'slipped' must use an "
        "explicit provider (stack config pulumi:disable-default-providers)")


def test_disabled_default_provider_also_guards_function_calls() -> None:
    with pytest.raises(ProgramError) as err:
        evaluate_stack(REFS, "nodefault")
    assert err.value.kind == "run" and err.value.message == (
        "Default provider for 'aws' disabled. 'aws:index/getAvailabilityZones:getAvailabilityZones' function call "
        "must use an explicit provider (stack config pulumi:disable-default-providers)")


def test_an_error_logged_by_the_program_fails_the_evaluation() -> None:
    with pytest.raises(ProgramError) as err:
        evaluate_stack(MINI, "logerror")
    assert (err.value.kind, err.value.message) == ("run", "mini: refusing to deploy on a Friday")


def test_run_error_is_one_line_and_a_crash_keeps_its_traceback() -> None:
    with pytest.raises(ProgramError) as err:
        evaluate_stack(MINI, "badcfg")
    assert (err.value.kind, err.value.message) == ("run", "mini:replicas must be at least 1 (got 0)")
    with pytest.raises(ProgramError) as crash:
        evaluate_stack(MINI, "crash")
    assert crash.value.kind == "crash" and crash.value.message == "KeyError: 'boom'"
    assert "Traceback" in crash.value.traceback and "__main__.py" in crash.value.traceback


def test_typed_project_config_and_missing_stack_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"^Pulumi.wrongtype.yaml: mini:replicas: 'many' must be of type integer"):
        evaluate_stack(MINI, "wrongtype")
    with pytest.raises(ConfigError, match=r"^--stack: 'nope' has no stack file .*\(stacks of mini: badcfg, crash, dev, logerror, slip, wrongtype\)"):
        evaluate_stack(MINI, "nope")
    with pytest.raises(ConfigError, match="is not a Pulumi project"):
        load_project(FIXTURES)


def test_list_stacks_reads_the_stack_config_dir() -> None:
    assert list_stacks(MINI) == ["badcfg", "crash", "dev", "logerror", "slip", "wrongtype"]
    assert list_stacks(REFS) == ["east", "global", "loop", "nodefault", "west"]


def test_stack_reference_evaluates_the_referenced_stacks(refs_global: Capture) -> None:
    assert refs_global.outputs["endpoints"] == ["mqtt.us-east-1.example.net", "mqtt.eu-west-1.example.net"]
    # a secret output of the referenced stack stays secret through get_output
    assert refs_global.outputs["east-token-is-secret"] == Secret(True)
    refs = refs_global.by_type("pulumi:pulumi:StackReference")
    assert sorted(r.name for r in refs) == ["organization/refs/east", "organization/refs/west"]
    assert all(r.read for r in refs)
    east = evaluate_stack(REFS, "east")
    assert east.outputs["zones"] == ["us-east-1a", "us-east-1b", "us-east-1c"]  # aws.get_availability_zones


def test_stack_reference_cycle_is_an_error() -> None:
    with pytest.raises(ProgramError) as err:
        evaluate_stack(REFS, "loop")
    assert "StackReference cycle: loop -> loop" in err.value.message and err.value.kind == "run"


def test_evaluations_do_not_share_modules_config_or_cwd() -> None:
    alpha = evaluate_stack(FIXTURES / "isolation" / "alpha", "one")
    beta = evaluate_stack(FIXTURES / "isolation" / "beta", "one")
    again = evaluate_stack(FIXTURES / "isolation" / "alpha", "one", use_cache=False)
    for cap, name in ((alpha, "alpha"), (beta, "beta"), (again, "alpha")):
        assert cap.outputs["flavour"] == name  # its own helpers.py, not the other project's
        assert cap.outputs["marker"] == f"from-{name}"
        assert cap.outputs["project"] == name
        assert cap.outputs["foreign"] == []
        assert cap.outputs["cwd"].endswith(f"isolation/{name}")
