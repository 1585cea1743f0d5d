"""emsctl.gate: packs started as the CLI starts them and driven over the Analyzer gRPC protocol."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import empty_pb2, json_format
from pulumi.runtime.proto import analyzer_pb2

from emsctl.capture import Capture
from emsctl.errors import ConfigError, PolicyPackError
from emsctl.gate import PackProcess, analyze_requests, analyze_stack_request, effective_config, engine_view, run_pack
from emsctl.values import SECRET_SIG, SIG_KEY

from emsctl_paths import BROKEN_PACK, EMS_GUARD, TINY_GUARD


def test_a_compliant_stack_passes_every_protocol_check(mini_dev: Capture) -> None:
    # tiny-guard's policies fail unless: config defaults arrive (Configure), numbers are floats,
    # explicit providers are sent, parents/dependencies/property dependencies reach AnalyzeStack,
    # secrets arrive unwrapped, and the process environment is the CLI's.
    run = run_pack(TINY_GUARD, mini_dev)
    assert run.violations == []
    assert (run.pack, run.stack) == ("tiny-guard", "dev")
    assert run.resources == len(mini_dev.resources) + 2  # + the stack + the default tls provider


def test_violations_carry_policy_level_urn_and_message(mini_dev: Capture) -> None:
    run = run_pack(TINY_GUARD, mini_dev, user_config={
        "service-ports": {"allowedPorts": [8883]},
        "min-replicas": {"enforcementLevel": "advisory", "minReplicas": 5},
    })
    found = sorted((v.policy, v.level, v.urn, v.message) for v in run.violations)
    assert found == [
        ("min-replicas", "advisory", "urn:pulumi:dev::mini::mini:app:App$kubernetes:apps/v1:Deployment::ingest-deploy",
         "replicas 3.0 (float) below 5.0"),
        ("service-ports", "mandatory", "urn:pulumi:dev::mini::mini:app:App$kubernetes:core/v1:Service::ingest-svc",
         "port 443.0 (float) is not in [8883.0]"),
    ]
    assert {v.description for v in run.violations} == {"Deployments run enough replicas.", "Services expose only allowed ports."}


def test_disabled_policies_do_not_run(mini_dev: Capture) -> None:
    run = run_pack(TINY_GUARD, mini_dev, user_config={"all": "disabled", "service-ports": {"allowedPorts": []}})
    assert run.violations == []


def test_engine_view_adds_the_stack_and_default_providers(mini_dev: Capture) -> None:
    resources, provider_of = engine_view(mini_dev)
    assert resources[0].type == "pulumi:pulumi:Stack" and resources[0].urn == mini_dev.stack_urn
    key = mini_dev.by_type("tls:index/privateKey:PrivateKey")[0]
    default_tls = provider_of[key.urn]
    assert default_tls.type == "pulumi:providers:tls"
    assert default_tls.urn == f"urn:pulumi:dev::mini::pulumi:providers:tls::default_{key.version.replace('.', '_')}"
    assert default_tls in resources
    deploy = mini_dev.by_type("kubernetes:apps/v1:Deployment")[0]
    assert provider_of[deploy.urn].urn == deploy.provider
    assert mini_dev.by_type("mini:app:App")[0].urn not in provider_of  # components have no provider


def test_requests_are_shaped_as_the_engine_sends_them(mini_dev: Capture) -> None:
    resources, provider_of = engine_view(mini_dev)
    requests = {r.urn: r for r in analyze_requests(resources, provider_of)}
    deploy = mini_dev.by_type("kubernetes:apps/v1:Deployment")[0]
    req = requests[deploy.urn]
    props = json_format.MessageToDict(req.properties)
    assert props["spec"]["replicas"] == 3.0 and isinstance(props["spec"]["replicas"], float)
    assert props["metadata"]["name"].startswith("ingest-deploy-")  # after the provider's Check (auto-name)
    assert req.options.parent == deploy.parent and req.provider.name == "k8s"
    assert json_format.MessageToDict(req.provider.properties) == {"context": "offline"}
    secret = mini_dev.by_type("kubernetes:core/v1:Secret")[0]
    wire = json_format.MessageToDict(requests[secret.urn].properties)["stringData"]
    assert wire[SIG_KEY] == SECRET_SIG and wire["value"]["tls.key"].startswith("-----BEGIN")
    stack_req = analyze_stack_request(resources, provider_of)
    item = next(r for r in stack_req.resources if r.urn == deploy.urn)
    assert item.parent == deploy.parent and list(item.dependencies) == list(deploy.dependencies)
    assert list(item.propertyDependencies["metadata"].urns) == list(deploy.property_dependencies["metadata"])


def _info() -> analyzer_pb2.AnalyzerInfo:
    info = analyzer_pb2.AnalyzerInfo(name="p", supportsConfig=True)
    a = info.policies.add(name="a", enforcementLevel=analyzer_pb2.MANDATORY)
    a.configSchema.properties.update({"ports": {"type": "array", "default": [443]}, "max": {"type": "number"}})
    b = info.policies.add(name="b", enforcementLevel=analyzer_pb2.ADVISORY)
    b.configSchema.properties.update({"x": {"type": "string"}})
    b.configSchema.required.append("x")
    info.initialConfig["b"].properties.update({"x": "from-pack"})
    return info


def test_effective_config_layers_defaults_initial_and_user_config() -> None:
    cfg = effective_config(_info(), None, "p")
    assert json_format.MessageToDict(cfg["a"].properties) == {"ports": [443.0]}
    assert cfg["a"].enforcementLevel == analyzer_pb2.MANDATORY
    assert json_format.MessageToDict(cfg["b"].properties) == {"x": "from-pack"}
    cfg = effective_config(_info(), {"a": {"enforcementLevel": "advisory", "max": 3}, "b": "disabled"}, "p")
    assert cfg["a"].enforcementLevel == analyzer_pb2.ADVISORY
    assert json_format.MessageToDict(cfg["a"].properties) == {"ports": [443.0], "max": 3.0}
    assert cfg["b"].enforcementLevel == analyzer_pb2.DISABLED


def test_effective_config_rejects_unknown_policies_bad_levels_and_missing_required() -> None:
    with pytest.raises(ConfigError, match=r"^policy config of p: nope: is not a policy of this pack \(a, b\)"):
        effective_config(_info(), {"nope": "mandatory"}, "p")
    with pytest.raises(ConfigError, match=r"^policy config of p: a: 'strict' must be one of advisory, mandatory, disabled, remediate"):
        effective_config(_info(), {"a": "strict"}, "p")
    info = _info()
    del info.initialConfig["b"]
    with pytest.raises(ConfigError, match=r"^policy config of p: b: requires x"):
        effective_config(info, None, "p")


def test_a_pack_that_cannot_load_is_a_pack_error(mini_dev: Capture) -> None:
    with pytest.raises(PolicyPackError, match=r"broken-pack: exited before printing its port \(code 1\): ImportError: ems_guard_missing"):
        run_pack(BROKEN_PACK, mini_dev)


def test_the_pack_process_is_ended_after_the_run(mini_dev: Capture) -> None:
    with PackProcess(TINY_GUARD, mini_dev) as pack:
        assert pack.proc is not None and pack.proc.poll() is None and pack.port > 0
        info = pack.call("GetAnalyzerInfo", empty_pb2.Empty())
        assert info.name == "tiny-guard"
        assert pack.environment()["PULUMI_STACK"] == "dev" and pack.environment()["PULUMI_DRY_RUN"] == "true"
    assert pack.proc.poll() is not None


def test_the_pack_virtualenv_comes_from_pulumipolicy_yaml(mini_dev: Capture, tmp_path: Path) -> None:
    # ems-guard's virtualenv lives inside the pack (created by the Pulumi CLI): once it exists, it runs the pack.
    pack_dir = tmp_path / "ems-guard"
    shutil.copytree(EMS_GUARD, pack_dir, ignore=shutil.ignore_patterns("__pycache__", "venv"))
    meta = yaml.safe_load((pack_dir / "PulumiPolicy.yaml").read_text())
    venv = (pack_dir / meta["runtime"]["options"]["virtualenv"]).absolute()
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    pack = PackProcess(pack_dir, mini_dev)
    assert pack.python == str(venv / "bin" / "python")
    assert pack.environment()["PULUMI_RUNTIME_VIRTUALENV"] == str(venv)
    # Before it exists (a checkout), the pack runs with emsctl's interpreter, the project's virtualenv.
    shutil.rmtree(venv)
    assert PackProcess(pack_dir, mini_dev).python == sys.executable
    # tiny-guard names no virtualenv: emsctl's own interpreter, and no PULUMI_RUNTIME_VIRTUALENV
    plain_pack = PackProcess(TINY_GUARD, mini_dev)
    assert plain_pack.python == sys.executable and "PULUMI_RUNTIME_VIRTUALENV" not in plain_pack.environment()


def test_the_pack_version_is_the_one_in_pulumipolicy_yaml(mini_dev: Capture) -> None:
    meta = yaml.safe_load((EMS_GUARD / "PulumiPolicy.yaml").read_text())
    assert run_pack(EMS_GUARD, mini_dev).version == str(meta["version"])
    assert run_pack(TINY_GUARD, mini_dev).version == "0.0.1"  # no version in its yaml: the SDK's
