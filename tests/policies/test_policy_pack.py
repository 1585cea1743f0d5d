"""The pack as a whole: metadata conventions, pins, and the pack started as the Pulumi CLI starts it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc
from pulumi_policy import EnforcementLevel

from policy_engine import PACK_DIR, POLICIES

ROOT = PACK_DIR.parents[1]
TESTS = Path(__file__).parent
ADVICE = {"node-unsafe-sysctls-allowed"}  # operational advice: a violation breaks pods, not security
VERB = re.compile(r"^(Prohibits|Requires|Restricts|Limits) ")


def test_names_descriptions_levels_and_config_defaults() -> None:
    assert len(POLICIES) >= 40
    for name, policy in POLICIES.items():
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", name), name
        assert VERB.match(policy.description), (name, policy.description)
        assert policy.description.endswith("."), name
        expected = EnforcementLevel.ADVISORY if name in ADVICE else EnforcementLevel.MANDATORY
        assert policy.enforcement_level is expected, name
        for key, prop in (policy.config_schema.properties.items() if policy.config_schema else []):
            assert "default" in prop and "type" in prop, (name, key)


def test_every_policy_has_tests() -> None:
    """Each policy name appears in a test module (the tests assert its messages)."""
    text = "\n".join(p.read_text() for p in TESTS.glob("test_policy_*.py") if p.name != "test_policy_pack.py")
    missing = [name for name in POLICIES if f'"{name}"' not in text]
    assert missing == []


def test_requirements_pins_match_the_project() -> None:
    def pins(path: Path) -> dict[str, str]:
        out = {}
        for line in path.read_text().splitlines():
            if "==" in line and not line.startswith("#"):
                name, version = line.split(";")[0].strip().split("==")      # a pin may carry a marker
                out[name.lower()] = version
        return out

    pack, project = pins(PACK_DIR / "requirements.txt"), pins(ROOT / "requirements.txt")
    assert set(pack) == {"pulumi", "pulumi-policy"}
    assert {k: project[k] for k in pack} == pack


def test_pulumi_policy_yaml_keeps_the_virtualenv_inside_the_pack() -> None:
    """`pulumi policy publish` uploads the pack directory: a virtualenv path outside it would not exist where it lands."""
    doc = yaml.safe_load((PACK_DIR / "PulumiPolicy.yaml").read_text())
    assert doc["runtime"]["name"] == "python" and doc["runtime"]["options"]["toolchain"] == "pip"
    venv = (PACK_DIR / doc["runtime"]["options"]["virtualenv"]).resolve()
    assert venv.parent == PACK_DIR.resolve(), venv
    assert "/policies/ems-guard/venv/" in (ROOT / ".gitignore").read_text().splitlines()


def _start_pack(python: str, pack_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """Start a pack exactly as the CLI does: `python -u -m pulumi.policy <engine> .` in the pack directory."""
    proc = subprocess.Popen([python, "-u", "-m", "pulumi.policy", "127.0.0.1:1", "."],
                            cwd=pack_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stdout.readline().decode().strip()  # the SDK prints the port first
    if not line.isdigit():
        proc.kill()
        pytest.fail(f"pack printed {line!r}; stderr: {proc.stderr.read().decode()[-2000:]}")
    return proc, int(line)


def test_the_pack_starts_from_its_own_virtualenv_built_from_its_requirements(tmp_path: Path) -> None:
    """What a CLI does with the published pack: a venv inside it from requirements.txt alone, then the pack.

    Offline: the wheels come from this virtualenv (tests/wheelhouse.py), pip sees no index and no
    machine-wide configuration.
    """
    from wheelhouse import build_wheelhouse

    pack = tmp_path / "ems-guard"
    shutil.copytree(PACK_DIR, pack, ignore=shutil.ignore_patterns("__pycache__", "venv"))
    requirements = [line.strip() for line in (pack / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    build_wheelhouse(requirements, tmp_path / "wheels")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    venv = pack / yaml.safe_load((pack / "PulumiPolicy.yaml").read_text())["runtime"]["options"]["virtualenv"]
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-index", "--find-links", str(tmp_path / "wheels"),
                                "-r", str(pack / "requirements.txt")], capture_output=True, text=True, timeout=300, env=env)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    proc, port = _start_pack(str(venv / "bin" / "python"), pack,
                             {**env, "PULUMI_CONFIG": '{"ems:cloud": "private"}', "PULUMI_PROJECT": "ems",
                              "PULUMI_STACK": "dev", "PULUMI_DRY_RUN": "true"})
    try:
        info = _stub(port).GetAnalyzerInfo(empty_pb2.Empty(), timeout=20)
        assert info.name == "ems-guard" and sorted(p.name for p in info.policies) == sorted(POLICIES)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_main_only_builds_the_pack() -> None:
    source = (PACK_DIR / "__main__.py").read_text()
    assert source.count("PolicyPack(") == 1
    assert "def " not in source


@pytest.fixture(scope="module")
def pack_port() -> int:
    """Start the pack exactly as the CLI does: `python -u -m pulumi.policy <engine> .` in the pack directory."""
    env = dict(os.environ, PULUMI_CONFIG='{"ems:cloud": "private"}', PULUMI_PROJECT="ems", PULUMI_STACK="dev",
               PULUMI_DRY_RUN="true")
    proc, port = _start_pack(sys.executable, PACK_DIR, env)
    try:
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _stub(port: int) -> analyzer_pb2_grpc.AnalyzerStub:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=20)
    return analyzer_pb2_grpc.AnalyzerStub(channel)


def test_pack_starts_and_describes_every_policy(pack_port: int) -> None:
    info = _stub(pack_port).GetAnalyzerInfo(empty_pb2.Empty(), timeout=20)
    assert info.name == "ems-guard"
    assert sorted(p.name for p in info.policies) == sorted(POLICIES)
    levels = {p.name: p.enforcementLevel for p in info.policies}
    assert {n for n, level in levels.items() if level == analyzer_pb2.ADVISORY} == ADVICE
    assert {level for n, level in levels.items() if n not in ADVICE} == {analyzer_pb2.MANDATORY}


def test_unknown_during_preview_is_a_mandatory_violation_over_grpc(pack_port: int) -> None:
    props = struct_pb2.Struct()
    props.update({"metadata": {"name": "x"}, "automountServiceAccountToken": "1c4a061d-8072-4f0a-a4cb-0ff528b18fe7"})
    request = analyzer_pb2.AnalyzeRequest(type="kubernetes:core/v1:ServiceAccount", properties=props,
                                          urn="urn:pulumi:dev::ems::kubernetes:core/v1:ServiceAccount::x", name="x")
    response = _stub(pack_port).Analyze(request, timeout=20)
    found = [(d.policyName, d.enforcementLevel, d.message) for d in response.diagnostics]
    description = POLICIES["serviceaccount-token-automount"].description  # the SDK prefixes it
    assert found == [("serviceaccount-token-automount", analyzer_pb2.MANDATORY,
                      f"{description}\nServiceAccount 'x': cannot verify automountServiceAccountToken "
                      "because it is unknown during preview; set it from a literal or stack config, or run `pulumi up` "
                      "only after a preview shows it")]


def test_stack_config_reaches_the_pack_process(pack_port: int) -> None:
    aws = analyzer_pb2.AnalyzerResource(type="aws:s3/bucketV2:BucketV2", urn="urn:pulumi:dev::ems::aws:s3/bucketV2:BucketV2::b",
                                        name="b", properties=struct_pb2.Struct())
    response = _stub(pack_port).AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(resources=[aws]), timeout=20)
    assert [d.policyName for d in response.diagnostics] == ["private-cloud-no-aws"]


def test_github_workflow_runs_the_offline_gate_and_the_real_preview() -> None:
    doc = yaml.safe_load((ROOT / ".github" / "workflows" / "policy.yml").read_text())
    jobs = doc["jobs"]
    offline = " ".join(step.get("run", "") for step in jobs["offline-gate"]["steps"])
    assert "make setup" in offline and ".venv/bin/emsctl policy --all-stacks" in offline
    preview = jobs["pulumi-preview"]
    assert any(step.get("uses", "").startswith("pulumi/actions@") for step in preview["steps"])
    assert "--policy-pack policies/ems-guard" in " ".join(step.get("run", "") for step in preview["steps"])
    assert preview["strategy"]["matrix"]["stack"] == "${{ fromJSON(needs.stacks.outputs.stacks) }}"
    assert "needs.stacks.outputs.backend == 'true'" in preview["if"]


def test_docs_list_every_policy_with_its_config_defaults() -> None:
    import json

    doc = (ROOT / "docs" / "policies.md").read_text()
    for name, policy in POLICIES.items():
        assert f"`{name}`" in doc, name
        for key, prop in (policy.config_schema.properties.items() if policy.config_schema else []):
            assert f"`{key}` = `{json.dumps(prop['default'])}`" in doc, (name, key)


def test_pack_also_starts_from_the_repository_root() -> None:
    """`python -u -m pulumi.policy <addr> policies/ems-guard` from the checkout prints a port too."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "pulumi.policy", "127.0.0.1:1", "policies/ems-guard"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode().strip()
        assert line.isdigit() and 0 < int(line) < 65536, (line, proc.stderr.read(2000) if not line else b"")
        assert proc.poll() is None  # serving until killed
    finally:
        proc.kill()
        proc.wait(timeout=10)
