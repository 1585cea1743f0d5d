"""emsctl.render: one YAML file per Kubernetes object, exactly the fields the program set."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from emsctl.capture import Capture
from emsctl.providers import kubernetes_auto_name
from emsctl.render import REDACTED, RenderError, kubernetes_objects, manifest_of, render
from emsctl.values import plain

K8S_VERSION = "1.29.0"


@pytest.fixture(scope="module")
def rendered(mini_dev: Capture, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("render")
    files = render(mini_dev, out)
    docs = {}
    for path in files:
        loaded = list(yaml.safe_load_all(path.read_text()))
        assert len(loaded) == 1, f"{path} holds {len(loaded)} documents"
        docs[str(path.relative_to(out))] = loaded[0]
    return docs


def _walk(value, path=""):
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")


def test_one_file_per_object_named_like_render_yaml_to_directory(rendered: dict, mini_dev: Capture) -> None:
    cm = mini_dev.by_type("kubernetes:core/v1:ConfigMap")[0]
    dep = mini_dev.by_type("kubernetes:apps/v1:Deployment")[0]
    assert sorted(rendered) == sorted([
        "1-manifest/v1-namespace-default-edge.yaml",
        "1-manifest/v1-service-edge-ingest.yaml",
        f"1-manifest/v1-configmap-edge-{kubernetes_auto_name('settings', cm.urn)}.yaml",
        f"1-manifest/apps_v1-deployment-edge-{kubernetes_auto_name('ingest-deploy', dep.urn)}.yaml",
        f"1-manifest/v1-secret-edge-{kubernetes_auto_name('tls', mini_dev.by_type('kubernetes:core/v1:Secret')[0].urn)}.yaml",
    ])


def test_manifests_round_trip_with_the_programs_fields_and_integers(rendered: dict, mini_dev: Capture) -> None:
    for obj in kubernetes_objects(mini_dev):
        doc = next(d for d in rendered.values() if d["kind"] == obj.kind)
        assert doc == obj.manifest
        assert list(doc)[:3] == ["apiVersion", "kind", "metadata"]
        for path, value in _walk(doc):
            assert value is not None, f"{obj.kind}{path} is null"
            assert not isinstance(value, float), f"{obj.kind}{path} is a float: {value!r}"
    dep = next(d for d in rendered.values() if d["kind"] == "Deployment")
    program = plain(mini_dev.by_type("kubernetes:apps/v1:Deployment")[0].inputs)
    assert dep["spec"] == program["spec"]  # nothing added, nothing lost
    assert type(dep["spec"]["replicas"]) is int and dep["spec"]["replicas"] == 3
    assert set(dep["metadata"]) == {"name", "namespace", "labels"}


def test_names_are_resolved_as_the_provider_would_and_match_the_programs_view(rendered: dict, mini_dev: Capture) -> None:
    cm = next(d for d in rendered.values() if d["kind"] == "ConfigMap")
    assert cm["metadata"]["name"] == mini_dev.outputs["configmap"]  # what the program saw as metadata.name
    svc = next(d for d in rendered.values() if d["kind"] == "Service")
    assert svc["metadata"] == {"name": "ingest", "namespace": "edge"}  # explicit name kept, namespace from metadata
    ns = next(d for d in rendered.values() if d["kind"] == "Namespace")
    assert "namespace" not in ns["metadata"]


def test_secret_values_are_redacted_but_fields_stay(rendered: dict) -> None:
    secret = next(d for d in rendered.values() if d["kind"] == "Secret")
    assert secret["stringData"] == {"tls.key": REDACTED, "tls.crt": REDACTED, "token": REDACTED}
    assert secret["type"] == "kubernetes.io/tls"
    for doc in rendered.values():
        assert "PRIVATE KEY" not in yaml.safe_dump(doc)


def test_rendered_manifests_are_valid_kubernetes_1_29_objects_under_the_strict_schema(rendered: dict) -> None:
    for name, doc in rendered.items():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError naming the field


def test_the_strict_schema_rejects_an_unknown_field() -> None:
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "nmespace": "typo"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="nmespace"):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_two_objects_with_one_identity_on_one_cluster_are_an_error(mini_dev: Capture, tmp_path: Path) -> None:
    svc = mini_dev.by_type("kubernetes:core/v1:Service")[0]
    twin = type(svc)(**{**svc.__dict__, "urn": svc.urn.replace("ingest-svc", "ingest-svc-copy"), "name": "ingest-svc-copy"})
    clone = type(mini_dev)(**{**mini_dev.__dict__, "resources": mini_dev.resources + [twin]})
    with pytest.raises(RenderError, match=r"^Service 'ingest' in namespace edge is declared twice on one cluster"):
        render(clone, tmp_path)


def test_non_kubernetes_resources_and_components_are_not_rendered(mini_dev: Capture) -> None:
    for r in mini_dev.resources:
        if r.type in ("mini:app:App", "pulumi:providers:kubernetes", "tls:index/privateKey:PrivateKey"):
            assert manifest_of(r) is None, r.urn


def test_objects_on_two_clusters_get_a_tree_each_and_stale_files_go(mini_dev: Capture, tmp_path: Path) -> None:
    svc = mini_dev.by_type("kubernetes:core/v1:Service")[0]
    other = "urn:pulumi:dev::mini::pulumi:pulumi:Stack$pulumi:providers:kubernetes::dr-site"
    moved = type(svc)(**{**svc.__dict__, "provider": other})
    clone = type(mini_dev)(**{**mini_dev.__dict__, "resources": [moved if r is svc else r for r in mini_dev.resources]})
    stale = tmp_path / "k8s" / "1-manifest" / "v1-service-edge-removed.yaml"
    stale.parent.mkdir(parents=True)
    stale.write_text("kind: Service\n")
    files = render(clone, tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files if "/dr-site/" in f.as_posix()] == \
        ["dr-site/1-manifest/v1-service-edge-ingest.yaml"]
    assert len([f for f in files if f.relative_to(tmp_path).parts[0] == "k8s"]) == 4
    assert not stale.exists()
