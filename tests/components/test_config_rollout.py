"""Config changes reach running pods: every pod template that reads config only at start carries
``ems.io/config-sha256`` (``k8s_common.content_digest``), which follows that config and nothing else; the TSDB
and Alertmanager reload theirs in place instead (a ``config-reloader`` sidecar, tests/components/test_config_reload.py).

Whole stacks are evaluated under the Pulumi mocks twice, once with one ``ems:`` value changed; exactly the
workloads that read the changed file must get a new annotation, and the same inputs must give the same one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pulumi
import pytest

from infra_mocks import Evaluation, RecordingMocks, evaluate_stack

MOCKS = RecordingMocks()
pulumi.runtime.set_mocks(MOCKS, project="ems", stack="test", preview=False)

from components.ingest import IngestArgs, IngestWorkers  # noqa: E402  (after the mocks)
from components.k8s_common import CONFIG_HASH_ANNOTATION, TLS_HASH_ANNOTATION, content_digest  # noqa: E402
from components.metrics_adapter import MetricsAdapter, MetricsAdapterArgs  # noqa: E402

WORKLOADS = ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet")
STACK = "private-dc1"          # every optional workload: protocol gateway, north-bound client, Grafana, client certificates
RECEIVERS = {"ems:alertReceivers": json.dumps([{"name": "ops"}])}
URL_A, URL_B = "https://hooks.example.net/T0/a7Xq-token-one", "https://hooks.example.net/T0/a7Xq-token-two"
PASSWORD_A, PASSWORD_B = "correct-horse-7", "correct-horse-8"
SECRET_KEYS = ("ems:alertReceiverUrls", "ems:grafanaAdminPassword")


def _with_secrets(url: str = URL_A, password: str = PASSWORD_A, **overrides: Any) -> dict[str, Any]:
    return {**RECEIVERS, "ems:alertReceiverUrls": json.dumps({"ops": url}), "ems:grafanaAdminPassword": password,
            **overrides}


def _evaluate(overrides: dict[str, Any]) -> Evaluation:
    return evaluate_stack(STACK, overrides, secret_keys=SECRET_KEYS)


def _annotations(ev: Evaluation) -> dict[str, dict[str, Any]]:
    """Workload name → its pod template's annotations."""
    return {w.inputs["metadata"]["name"]: w.inputs["spec"]["template"]["metadata"].get("annotations", {})
            for typ in WORKLOADS for w in ev.of_type(typ)}


def _config_hashes(ev: Evaluation) -> dict[str, Any]:
    return {name: notes.get(CONFIG_HASH_ANNOTATION) for name, notes in _annotations(ev).items()}


@pytest.fixture(scope="module")
def baseline() -> Evaluation:
    return _evaluate(_with_secrets())


def _config_files(ev: Evaluation) -> dict[str, Any]:
    """ConfigMap and Secret name → its data (Secrets' secret-wrapped, compared as they are)."""
    return {r.inputs["metadata"]["name"]: r.inputs.get("data") or r.inputs.get("stringData")
            for typ in ("kubernetes:core/v1:ConfigMap", "kubernetes:core/v1:Secret") for r in ev.of_type(typ)
            if r.inputs.get("type") != "kubernetes.io/tls"}


def _changed(base: Evaluation, other: Evaluation) -> set[str]:
    before, after = _config_hashes(base), _config_hashes(other)
    assert before.keys() == after.keys()
    return {name for name in before if before[name] != after[name]}


def test_every_workload_that_mounts_config_rolls_on_a_plain_hex_config_hash_or_reloads_in_place(baseline: Evaluation) -> None:
    config_maps = {c.inputs["metadata"]["name"] for c in baseline.of_type("kubernetes:core/v1:ConfigMap")}
    opaque = {s.inputs["metadata"]["name"] for s in baseline.of_type("kubernetes:core/v1:Secret")
              if s.inputs.get("type") != "kubernetes.io/tls"}
    mounting = set()
    for typ in WORKLOADS:
        for w in baseline.of_type(typ):
            for volume in w.inputs["spec"]["template"]["spec"].get("volumes", []):
                name = (volume.get("configMap") or {}).get("name") or (volume.get("secret") or {}).get("secretName")
                if name in config_maps | opaque:
                    mounting.add(w.inputs["metadata"]["name"])
    reloading = {"tsdb": ("prometheus", ["ems-alerts.yml", "prometheus.yml"]), "alertmanager": ("alertmanager", ["alertmanager.yml"])}
    assert mounting == {*reloading, "broker", "ems-gateway", "ingest", "metrics-adapter", "twin-api", "api-gateway",
                        "northbound", "grafana"}
    hashes = _config_hashes(baseline)
    rolling = mounting - set(reloading)
    # A str, not a secret-wrapped value: the pod template (and its diff) stays readable.
    assert {name: type(hashes[name]).__name__ for name in rolling} == {name: "str" for name in rolling}
    assert all(len(hashes[name]) == 64 and int(hashes[name], 16) >= 0 for name in rolling)
    # The two that reload: no hash, a reloader that shares the process namespace and watches every mounted file.
    for w in (w for typ in WORKLOADS for w in baseline.of_type(typ) if w.inputs["metadata"]["name"] in reloading):
        name, pod = w.inputs["metadata"]["name"], w.inputs["spec"]["template"]["spec"]
        assert hashes[name] is None and pod["shareProcessNamespace"] is True
        main, reloader = pod["containers"]
        assert reloader["name"] == "config-reloader" and reloader["image"] == main["image"]
        assert reloader["securityContext"]["runAsUser"] == main["securityContext"]["runAsUser"]
        config_mount = next(m for m in main["volumeMounts"] if m["name"] == "config")
        assert reloader["volumeMounts"] == [config_mount]
        process, files = reloading[name]
        watched = " ".join(f"{config_mount['mountPath']}/{f}" for f in files)
        assert f"cat {watched} | sha256sum" in reloader["command"][2] and f"pidof {process}" in reloader["command"][2]


def test_the_same_inputs_give_the_same_annotations(baseline: Evaluation) -> None:
    again = _evaluate(_with_secrets())
    assert _annotations(again) == _annotations(baseline)
    assert _changed(baseline, again) == set()


@pytest.mark.parametrize(("overrides", "rolled"), [
    ({"ems:alerts": {"siteSilentMinutes": 15}}, set()),                                 # the TSDB reloads its rules
    ({"ems:apiAuth": {"clientCerts": "required", "certCnRoles": {"scada-dc1": "operator"}, "ratePerSecond": 7}},
     {"api-gateway"}),                                                                  # nginx.conf only
    ({"ems:apiAuth": {"clientCerts": "required", "certCnRoles": {"scada-dc1": "viewer"}}}, {"twin-api"}),  # verifier tables
    ({"ems:alertReceiverUrls": json.dumps({"ops": URL_B})}, set()),                    # Alertmanager reloads
    ({"ems:grafanaAdminPassword": PASSWORD_B}, {"grafana"}),
    ({"ems:grafana": {"rootUrl": "https://grafana.dc1.ems.example.net/grafana/"}}, {"grafana"}),
    ({"ems:edgeSites": ["sub-01", "sub-02", "sub-03", "sub-04", "sub-05"]}, {"broker"}),  # dynamic-security.json
    # ingest.toml's reading window is the TSDB's out-of-order window: both files change; the ingest rolls.
    ({"ems:spoolHorizon": "96h"}, {"ingest"}),
], ids=["alerts", "gateway-limits", "verifier-roles", "receiver-url", "grafana-password", "grafana-root-url", "edge-sites",
        "spool-horizon"])
def test_changing_one_config_rolls_exactly_the_pods_that_read_it(baseline: Evaluation, overrides: dict[str, Any],
                                                                 rolled: set[str]) -> None:
    changed = _evaluate(_with_secrets(**overrides))
    assert _changed(baseline, changed) == rolled
    assert _config_files(baseline) != _config_files(changed)              # the change did reach a config file
    # Configuration is not certificates: no TLS annotation moves.
    assert {n: a.get(TLS_HASH_ANNOTATION) for n, a in _annotations(changed).items()} == \
        {n: a.get(TLS_HASH_ANNOTATION) for n, a in _annotations(baseline).items()}


def test_gateway_points_and_northbound_server_roll_only_their_own_pod(baseline: Evaluation) -> None:
    from infra_mocks import stack_config

    config = stack_config(STACK)
    gateways = json.loads(config["ems:modbusGateways"])
    gateways[0]["points"][0]["deadband_percent"] = 0.7
    assert _changed(baseline, _evaluate(_with_secrets(**{"ems:modbusGateways": gateways}))) == {"ems-gateway"}
    northbound = {**json.loads(config["ems:northbound"]), "serverUrl": "https://dercs-2.utility.example.net"}
    assert _changed(baseline, _evaluate(_with_secrets(**{"ems:northbound": northbound}))) == {"northbound"}


def test_secrets_stay_out_of_plain_inputs_outputs_and_guessable_digests(baseline: Evaluation) -> None:
    secret_objects = {"alertmanager-config", "grafana-admin"}
    for r in baseline.resources:
        if r.typ == "kubernetes:core/v1:Secret" and r.inputs["metadata"]["name"] in secret_objects:
            continue
        text = json.dumps(r.inputs, default=str)
        assert PASSWORD_A not in text and "a7Xq-token-one" not in text, r.urn
    outputs = json.dumps(baseline.outputs, default=str)
    assert PASSWORD_A not in outputs and "a7Xq-token-one" not in outputs
    # Someone who reads the Deployment and guesses the secret right still cannot confirm the guess: the digests of
    # Secret contents are keyed. (The unkeyed digest of the true content is what a bare SHA-256 would have shown.)
    hashes = _config_hashes(baseline)
    [grafana_config] = [c for c in baseline.of_type("kubernetes:core/v1:ConfigMap") if c.inputs["metadata"]["name"] == "grafana-config"]
    assert hashes["grafana"] != content_digest({**grafana_config.inputs["data"], "admin/password": PASSWORD_A})
    # The key: one ECDSA key per component with a secret in its digest (Alertmanager reloads: no digest, no key).
    keys = [k for k in baseline.of_type("tls:index/privateKey:PrivateKey") if k.name.endswith("-digest-key")]
    assert sorted(k.name for k in keys) == ["ems-grafana-digest-key"]
    assert all((k.inputs["algorithm"], k.inputs["ecdsaCurve"]) == ("ECDSA", "P256") for k in keys)


# --------------------------------------------------------------------------- content_digest itself

@pytest.fixture
def mocks() -> RecordingMocks:
    pulumi.runtime.set_mocks(MOCKS, project="ems", stack="test", preview=False)
    MOCKS.resources.clear()
    return MOCKS


def _resolve(value: pulumi.Input[Any]) -> tuple[Any, bool]:
    got: list[tuple[Any, bool]] = []

    def build() -> pulumi.Output[Any]:
        out = pulumi.Output.from_input(value)
        return pulumi.Output.all(out, pulumi.Output.from_input(out.is_secret())).apply(lambda v: got.append((v[0], v[1])))
    pulumi.runtime.test(build)()
    return got[0]


def test_content_digest_is_sha256_over_names_and_contents_in_name_order(mocks: RecordingMocks) -> None:
    files = {"b.conf": "two", "a.conf": "one"}
    expected = hashlib.sha256(b"a.conf\0one\0b.conf\0two\0").hexdigest()
    assert content_digest(files) == expected == content_digest(dict(reversed(list(files.items()))))
    assert content_digest({"a.conf": "one", "b.conf": "twO"}) != expected
    assert content_digest({"a.conf": "one", "c.conf": "two"}) != expected           # a renamed file is a change
    assert content_digest({"a.conf": "one\0b.conf", "": "two"}) != expected         # names and contents cannot slide
    # Outputs give the same value, as an Output, not secret.
    assert _resolve(content_digest({"a.conf": pulumi.Output.from_input("one"), "b.conf": "two"})) == (expected, False)


def test_content_digest_keys_secret_contents_and_refuses_them_unkeyed(mocks: RecordingMocks) -> None:
    secret = pulumi.Output.secret("token=abc")
    key = pulumi.Output.secret("k" * 32)
    digest, is_secret = _resolve(content_digest({"f": secret}, key=key))
    assert digest == hmac.new(b"k" * 32, b"f\0token=abc\0", hashlib.sha256).hexdigest() and is_secret is False
    assert digest != content_digest({"f": "token=abc"})
    with pytest.raises(Exception, match=r"^content_digest: f: secret content needs a key \(digest_key\)$"):
        _resolve(content_digest({"f": pulumi.Output.secret("token=abc")}))


def test_components_without_stack_knobs_follow_their_config_map(mocks: RecordingMocks) -> None:
    """The ingest and the metrics adapter: the annotation is the digest of the ConfigMap they mount, and only it moves."""
    def ingest(url: str) -> None:
        IngestWorkers("ingest", IngestArgs(namespace="ems", image="ghcr.io/x/ingest:1", broker_host="broker", identity="ems-ingest",
                                           tls_secrets=("t0", "t1"), storage_class="sc", remote_write_url=url,
                                           min_replicas=1, max_replicas=2))
        MetricsAdapter("adapter", MetricsAdapterArgs(namespace="ems", image="x/adapter:1", prometheus_url="http://tsdb:9090",
                                                      tls_secret="a-tls", ca_cert_pem="pem"))

    def built(url: str) -> dict[str, tuple[Any, Any]]:
        MOCKS.resources.clear()
        pulumi.runtime.test(lambda: ingest(url))()
        maps = {c.inputs["metadata"]["name"]: c.inputs["data"] for c in MOCKS.of_type("kubernetes:core/v1:ConfigMap")}
        return {w.inputs["metadata"]["name"]: (w.inputs["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION],
                                               content_digest(maps[f"{w.inputs['metadata']['name']}-config"]))
                for typ in WORKLOADS for w in MOCKS.of_type(typ)}

    one, same, other = built("http://tsdb:9090/api/v1/write"), built("http://tsdb:9090/api/v1/write"), built("http://tsdb-2:9090/api/v1/write")
    assert all(annotation == digest for annotation, digest in one.values()) and set(one) == {"ingest", "metrics-adapter"}
    assert one == same
    assert {n for n in one if one[n][0] != other[n][0]} == {"ingest"}
