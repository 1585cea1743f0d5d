"""``--unknowns`` / ``evaluate_stack(preview=True)``: the program runs as a first `pulumi preview`."""

from __future__ import annotations

from pathlib import Path

import pytest

from emsctl.capture import Capture, evaluate_stack
from emsctl.cli import main
from emsctl.render import render
from emsctl.values import UNKNOWN, Secret

from emsctl_paths import MINI, TINY_GUARD


@pytest.fixture(scope="module")
def mini_preview() -> Capture:
    return evaluate_stack(MINI, "dev", preview=True)


def test_cloud_computed_values_are_unknown_and_inputs_known(mini_preview: Capture, mini_dev: Capture) -> None:
    assert mini_preview.outputs["caKey"] is UNKNOWN  # a tls output, computed by the provider
    assert mini_preview.outputs["configmap"] == mini_dev.outputs["configmap"]  # Check's auto-name is known
    secret = mini_preview.by_type("kubernetes:core/v1:Secret")[0]
    assert secret.inputs["stringData"] == Secret(UNKNOWN)  # derived from the key: unknown, still secret
    assert sorted(r.urn for r in mini_preview.resources) == sorted(r.urn for r in mini_dev.resources)


def test_render_drops_unknown_fields(mini_preview: Capture, tmp_path: Path) -> None:
    files = render(mini_preview, tmp_path)
    secret = next(f for f in files if "-secret-" in f.name).read_text()
    assert "stringData" not in secret and "kind: Secret" in secret


def test_the_pack_sees_unknowns_as_the_engine_encodes_them(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["policy", "--stack", "dev", "--project", str(MINI), "--pack", str(TINY_GUARD), "--unknowns"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0  # the SDK reports a policy it cannot run during preview as advisory
    assert out[0] == "[advisory] tiny-guard/secret-sources: TLS Secrets carry PEM key material."
    assert out[2].strip() == ("can't run policy 'secret-sources' from policy pack 'tiny-guard@v0.0.1' during preview: "
                              "string value at .stringData can't be known during preview")
    assert out[-1] == "tiny-guard: 0 mandatory, 1 advisory violations in 10 resources (1 stack)"
