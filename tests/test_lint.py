"""The lint gate (scripts/lint.sh, run by ``make lint`` and ``make test``) can fail.

Each test copies the files one check reads into a temporary directory, runs the repository's
scripts/lint.sh on the copy with only that check selected, sees it pass, plants one defect of the
kind the check exists for, and sees the gate fail naming it. The repository is never edited.
The linters are the pinned ones in .venv (requirements-dev.txt, installed by ``make setup``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = ROOT / "scripts" / "lint.sh"
BANDIT_TARGETS = ("edge_agent", "ingest", "ems_contract", "ems_runtime", "northbound", "emsctl", "devenv", "policies/ems-guard")
CHECKOUT = re.compile(r"actions/checkout@[0-9a-f]{40} # v[0-9.]+")


def copy_tree(dest: Path, *names: str) -> Path:
    """Copies the named files and folders of the repository into ``dest`` (caches left out)."""
    for name in names:
        src, dst = ROOT / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst)
    return dest


def lint(tree: Path, *checks: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LINT_ONLY": " ".join(checks)}
    return subprocess.run([str(LINT), str(tree)], env=env, capture_output=True, text=True, timeout=120, check=False)


def assert_passes(tree: Path, *checks: str) -> None:
    result = lint(tree, *checks)
    assert result.returncode == 0, f"{checks} fail on an unmodified copy:\n{result.stdout}\n{result.stderr}"


def assert_fails(tree: Path, checks: tuple[str, ...], *expected: str) -> str:
    result = lint(tree, *checks)
    out = result.stdout + result.stderr
    assert result.returncode == 1, f"{checks} passed a planted defect:\n{out}"
    assert f"lint: FAILED: {' '.join(checks)}" in out
    for text in expected:
        assert text in out, f"{text!r} not reported:\n{out}"
    return out


def replace_once(path: Path, old: str | re.Pattern[str], new: str) -> None:
    text = path.read_text()
    if isinstance(old, re.Pattern):
        changed, count = old.subn(new, text, count=1)
    else:
        changed, count = text.replace(old, new, 1), text.count(old)
    assert count >= 1, f"{old!r} not in {path}: the planted defect would not be planted"
    path.write_text(changed)


# --- workflows: zizmor and actionlint ---------------------------------------------------------

def test_a_tag_pinned_action_fails_the_gate(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path, ".github")
    assert_passes(tree, "zizmor")
    replace_once(tree / ".github/workflows/policy.yml", CHECKOUT, "actions/checkout@v7")
    assert_fails(tree, ("zizmor",), "unpinned-uses", "actions/checkout@v7")


def test_an_event_expression_inside_run_fails_the_gate(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path, ".github")
    assert_passes(tree, "actionlint", "zizmor")
    replace_once(tree / ".github/workflows/policy.yml", "        run: make lint\n",
                 '        run: echo "linting ${{ github.event.pull_request.title }}" && make lint\n')
    out = assert_fails(tree, ("actionlint", "zizmor"), "template-injection")
    assert '"github.event.pull_request.title" is potentially untrusted' in out


def test_a_checkout_that_keeps_the_token_fails_the_gate(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path, ".github")
    replace_once(tree / ".github/workflows/policy.yml", "          persist-credentials: false\n", "          fetch-depth: 1\n")
    assert_fails(tree, ("zizmor",), "artipacked")


def test_dependabot_config_is_audited(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path, ".github")
    replace_once(tree / ".github/dependabot.yml", "    cooldown:\n      default-days: 7\n", "")
    assert_fails(tree, ("zizmor",), "dependabot-cooldown")


def test_every_action_is_pinned_by_hash_with_its_version_in_a_comment() -> None:
    uses = [line.strip() for path in sorted((ROOT / ".github/workflows").glob("*.y*ml"))
            for line in path.read_text().splitlines() if re.match(r"\s*(- )?uses:", line)]
    assert uses, "no `uses:` found in .github/workflows"
    for line in uses:
        ref = line.split("uses:", 1)[1].strip()
        if ref.startswith("./"):
            continue
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(\.\d+)*", ref), f"not pinned by hash + version: {line}"


# --- shell scripts: shellcheck ----------------------------------------------------------------

def test_an_unquoted_variable_in_a_script_fails_the_gate(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path, "scripts", ".ci")
    assert_passes(tree, "shellcheck")
    replace_once(tree / "scripts/demo.sh", '"$bin/emsctl" policy --all-stacks', '"$bin/emsctl" policy --all-stacks --render $seconds')
    assert_fails(tree, ("shellcheck",), "scripts/demo.sh", "SC2086")


def test_a_script_found_by_its_shebang_is_checked(tmp_path: Path) -> None:
    """`.ci/run` has no .sh extension; its `#!/usr/bin/env bash` line makes it a shell script."""
    tree = copy_tree(tmp_path, ".ci")
    replace_once(tree / ".ci/run", "make test\n", "make test $MAKEFLAGS_EXTRA\n")
    assert_fails(tree, ("shellcheck",), ".ci/run", "SC2086")


# --- Dockerfiles: hadolint and the remote-ADD check --------------------------------------------

def test_a_dockerfile_add_of_a_url_fails_the_gate(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path, "Dockerfile")
    assert_passes(tree, "hadolint")
    replace_once(tree / "Dockerfile", "WORKDIR /opt/ems\n", "WORKDIR /opt/ems\nADD https://example.com/tool.tar.gz /opt/tool/\n")
    assert_fails(tree, ("hadolint",), "ADD of a remote source without --checksum (https://example.com/tool.tar.gz)")


def test_hadolint_findings_fail_the_gate(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path, "Dockerfile")
    replace_once(tree / "Dockerfile", "USER 10001:10001\n", "USER 10001:10001\nRUN cd /tmp && ls\n")
    assert_fails(tree, ("hadolint",), "DL3003")


def _dockerfile_checker():
    spec = importlib.util.spec_from_file_location("check_dockerfile_add", ROOT / "scripts/check_dockerfile_add.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("dockerfile", "lines"), [
    ("FROM x\nADD https://h/a.tgz /opt/\n", [2]),
    ("FROM x\nadd --chown=1:1 \\\n    http://h/a \\\n    /opt/\n", [2]),
    ('FROM x\nADD ["git@github.com:o/r.git", "/src"]\n', [2]),
    ("FROM x\nONBUILD ADD ssh://h/r.git /src\n", [2]),
    ("# escape=`\nFROM x\nADD `\n  https://h/a /opt/\n", [3]),
    ("FROM x\nADD --checksum=sha256:" + "0" * 64 + " https://h/a.tgz /opt/\n", []),
    ("FROM x\nADD local.tgz /opt/\nCOPY --from=y /a /b\nRUN echo ADD https://h/a /x\n", []),
    ("FROM x\n# ADD https://h/a /x\nCOPY a /b\n", []),
])
def test_remote_add_check(tmp_path: Path, dockerfile: str, lines: list[int]) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text(dockerfile)
    problems = _dockerfile_checker().check(path)
    assert [int(p.split(":")[1]) for p in problems] == lines, problems


# --- Python: ruff and bandit ------------------------------------------------------------------

def test_a_ruff_finding_fails_the_gate(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path, "pyproject.toml", "edge_agent")
    assert_passes(tree, "ruff")
    (tree / "edge_agent" / "planted.py").write_text("def reading():\n    return undefined_register\n")
    assert_fails(tree, ("ruff",), "F821", "undefined_register")


def test_a_bandit_medium_finding_fails_the_gate(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path, *BANDIT_TARGETS)
    assert_passes(tree, "bandit")
    (tree / "ingest" / "planted.py").write_text("import yaml\n\n\ndef load(text):\n    return yaml.load(text)\n")
    assert_fails(tree, ("bandit",), "B506", "ingest/planted.py")


def test_a_nosec_without_test_id_and_reason_fails_the_gate(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path, *BANDIT_TARGETS)
    (tree / "ingest" / "planted.py").write_text(
        "import urllib.request\n\n\ndef fetch(url):\n    return urllib.request.urlopen(url)  # nosec\n")
    assert_fails(tree, ("bandit",), "ingest/planted.py:5:", "must name its tests and give a reason")
