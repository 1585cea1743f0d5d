"""The emsctl command line: summaries, render, gate, and exit codes with one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from emsctl.cli import main

from emsctl_paths import BROKEN_PACK, MINI, REFS, TINY_GUARD

EMSCTL = Path(sys.executable).with_name("emsctl")


def test_preview_prints_types_components_and_total(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "--stack", "dev", "--project", str(MINI)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Stack mini/dev: 8 resources (7 custom, 1 component) evaluated offline in ")
    assert "  1  kubernetes:apps/v1:Deployment\n" in out
    assert "  mini:app:App ingest: 2 resources (Deployment 1, Service 1)\n" in out
    assert "note: config mini:apiToken is a secure value" in out
    assert "MOCK" not in out  # secret outputs are never printed


def test_preview_json_and_render(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["preview", "--stack", "dev", "--project", str(MINI), "--render", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["total"] == 8 and summary["byType"]["kubernetes:core/v1:Service"] == 1
    assert summary["components"][0]["byType"] == {"kubernetes:apps/v1:Deployment": 1, "kubernetes:core/v1:Service": 1}
    assert summary["outputs"]["caKey"] == "[secret]"
    assert summary["rendered"]["files"] == 5 == len(list(tmp_path.rglob("*.yaml")))


@pytest.mark.parametrize(("stack", "code", "line"), [
    ("badcfg", 2, "emsctl: error: mini/badcfg: mini:replicas must be at least 1 (got 0)"),
    ("wrongtype", 2, "emsctl: error: Pulumi.wrongtype.yaml: mini:replicas: 'many' must be of type integer (declared in Pulumi.yaml)"),
    ("slip", 2, "emsctl: error: mini/slip: Default provider for 'kubernetes' disabled. 'kubernetes:core/v1:Namespace' "
                "resource 'slipped' must use an explicit provider (stack config pulumi:disable-default-providers)"),
    ("crash", 3, "emsctl: error: mini/crash: KeyError: 'boom'"),
])
def test_bad_config_is_one_line_and_exit_2_through_the_console_script(stack: str, code: int, line: str) -> None:
    proc = subprocess.run([str(EMSCTL), "preview", "--stack", stack, "--project", str(MINI)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == code
    assert proc.stderr.splitlines() == [line]
    assert proc.stdout == ""


def test_verbose_shows_the_traceback_of_a_crash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "--stack", "crash", "--project", str(MINI), "--verbose"]) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'boom'" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["preview"])
    assert exc.value.code == 2
    assert main(["preview", "--stack", "dev", "--project", str(MINI.parent)]) == 2
    assert capsys.readouterr().err.strip().endswith("is not a Pulumi project (no Pulumi.yaml)")


def test_policy_gate_exit_codes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = ["policy", "--stack", "dev", "--project", str(MINI), "--pack", str(TINY_GUARD)]
    assert main(base) == 0
    assert capsys.readouterr().out == "tiny-guard: 0 mandatory, 0 advisory violations in 10 resources (1 stack)\n"

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"service-ports": {"allowedPorts": [8883]}, "configmap-team": "mandatory"}))
    assert main(base + ["--pack-config", str(config)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "[mandatory] tiny-guard/service-ports: Services expose only allowed ports.",
        "    dev: urn:pulumi:dev::mini::mini:app:App$kubernetes:core/v1:Service::ingest-svc",
        "        port 443.0 (float) is not in [8883.0]",
        "tiny-guard: 1 mandatory, 0 advisory violations in 10 resources (1 stack)",
    ]
    config.write_text("{not json")
    assert main(base + ["--pack-config", str(config)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert main(["policy", "--stack", "dev", "--project", str(MINI), "--pack", str(MINI)]) == 2
    assert main(["policy", "--stack", "dev", "--project", str(MINI), "--pack", str(BROKEN_PACK)]) == 3


def test_policy_json_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "--stack", "dev", "--project", str(MINI), "--pack", str(TINY_GUARD), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mandatory"] == 0 and report["stacks"] == 1
    assert report["packs"][0]["name"] == "tiny-guard" and report["packs"][0]["resources"] == 10


def test_all_stacks_checks_the_others_when_one_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["policy", "--all-stacks", "--project", str(REFS), "--pack", str(TINY_GUARD), "--json"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 2
    assert report["stacks"] == 3 and sorted(report["packs"][0]["stacks"]) == ["east", "global", "west"]
    assert [f["stack"] for f in report["failedStacks"]] == ["loop", "nodefault"]
    assert captured.err.splitlines()[0] == "emsctl: error: refs/loop: StackReference cycle: loop -> loop"
    assert captured.err.splitlines()[1].startswith("emsctl: error: refs/nodefault: Default provider for 'aws' disabled.")
