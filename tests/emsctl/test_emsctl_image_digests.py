"""A production stack and the image digests, end to end: the program, images.lock.json and the gate.

The project's own program and lock file, with one extra stack: the local stack declared
``ems:environment: production``. While the lock is empty (the release workflow has not run) the
program warns that it deploys the version tags, and the gate refuses every workload whose image has
no digest; with every image set by digest in ``ems:images`` the same stack passes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from components import image_lock
from components.settings import IMAGE_KEYS, Images
from emsctl.capture import evaluate_stack
from emsctl.cli import main

from emsctl_paths import REPO

DIGEST = "sha256:" + "5e" * 32        # a test value: these bytes exist nowhere, which the gate cannot tell


def _project(tmp_path: Path, **extra: object) -> Path:
    """The repository's program (symlinked) with stacks/Pulumi.prod-local.yaml = local + ``extra`` config."""
    project = tmp_path / "project"
    project.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in ("stacks", ".git", "out", "build", ".venv"):
            (project / entry.name).symlink_to(entry)
    stack = yaml.safe_load((REPO / "stacks" / "Pulumi.local.yaml").read_text())
    stack["config"].update({"ems:environment": "production", **extra})
    (project / "stacks").mkdir()
    (project / "stacks" / "Pulumi.prod-local.yaml").write_text(yaml.safe_dump(stack))
    return project


def _gate(project: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict]]:
    code = main(["policy", "--project", str(project), "--stack", "prod-local", "--json"])
    report = json.loads(capsys.readouterr().out)
    return code, [v for pack in report["packs"] for v in pack["violations"]]


@pytest.mark.timeout(300)
def test_production_stack_with_tag_defaults_fails_the_gate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lock = image_lock.load_lock()
    project = _project(tmp_path)
    code, violations = _gate(project, capsys)
    assert code != 0 and violations
    assert {v["policy"] for v in violations} == {"container-image-digest"}
    flagged = {m.group(1) for v in violations if (m := re.search(r"image '([^']+)' is not pinned by digest", v["message"]))}
    upstream = {ref for key, ref in vars(Images()).items() if not ref.startswith("ghcr.io/ems-platform/")}
    assert upstream <= flagged                                  # no digest for them anywhere in the repository
    built = {getattr(Images(), image_lock.snake(k)) for k in image_lock.BUILT_IMAGES} - {Images().northbound}
    assert (built <= flagged) is (not lock.published)           # the north-bound client is not deployed here
    if not lock.published:
        capture = evaluate_stack(project, "prod-local", use_cache=False)
        warnings = [d["message"] for d in capture.diagnostics if "no digest" in d.get("message", "")]
        assert warnings and "ems:images edgeAgent, ingest, northbound: no digest (images.lock.json holds no digest: the " \
            "release workflow has not published these images), so the stack deploys the tags ghcr.io/ems-platform/" \
            in warnings[0], capture.diagnostics


@pytest.mark.timeout(300)
def test_production_stack_with_every_image_by_digest_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = {key: f"{getattr(Images(), image_lock.snake(key)).rsplit(':', 1)[0]}@{DIGEST}" for key in IMAGE_KEYS}
    code, violations = _gate(_project(tmp_path, **{"ems:images": images}), capsys)
    assert (code, violations) == (0, [])
