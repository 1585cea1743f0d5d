"""Renewed certificates reach running pods, and every StatefulSet is governed by a headless Service.

A pod reads a mounted ``kubernetes.io/tls`` Secret either only at start — then its template carries
``ems.io/tls-sha256`` over that certificate and the trust bundle, so a renewal rolls it — or it re-reads the files
itself. Under the Pulumi mocks each certificate of the ``private-dc1`` stack (every optional workload) is renewed in
turn: exactly the workloads that mount it and do not reload it in place must get a new pod-template annotation.
"""

from __future__ import annotations

import functools
import re
from typing import Any
from unittest import mock

import pulumi
import pytest

from infra_mocks import Evaluation, RecordingMocks, evaluate_stack

WORKLOADS = ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet", "kubernetes:apps/v1:DaemonSet")
STACK = "private-dc1"
SIGNED = "tls:index/locallySignedCert:LocallySignedCert"
ROOT_CA = "tls:index/selfSignedCert:SelfSignedCert"
SECRET_SIG = "4dabf18193072939515e22adb298388d"       # Pulumi's marker of a secret value in serialized inputs

RELOADED_IN_PLACE = {
    # (workload, volume): the process re-reads these files itself (ems_runtime.file_watch.CertificateWatch)
    ("ingest", "tls"): "tests/ingest/test_ingest_cert_rotation.py, test_ingest_mqtt_cert_reload.py",
    ("twin-api", "mqtt-tls"): "ingest.mqtt.MqttLink, as the ingest",
    ("twin-api", "server-tls"): "tests/ingest/test_twin_api_cert_rotation.py",
    ("ems-gateway", "tls"): "tests/edge_agent/test_fault.py::test_client_certificate_rotated_while_publishing",
    ("northbound", "commands-tls"): "tests/northbound/test_operator_api.py (renewed server certificate)",
}
"""What reloads by itself, and the test that shows it; every other mounted certificate must roll its pods."""


def _renewing(renewed: frozenset[str]):
    """``RecordingMocks.new_resource`` whose certificates named in ``renewed`` come back with a new PEM."""
    original = RecordingMocks.new_resource

    @functools.wraps(original)
    def new_resource(self: RecordingMocks, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        rid, outputs = original(self, args)
        if args.typ in (SIGNED, ROOT_CA) and args.name in renewed:
            renewed_pem = outputs["cert_pem"] + "-renewed"
            outputs = {**outputs, "cert_pem": renewed_pem, "certPem": renewed_pem}
        return rid, outputs
    return mock.patch.object(RecordingMocks, "new_resource", new_resource)


@functools.lru_cache(maxsize=None)
def _evaluate(renewed: frozenset[str] = frozenset()) -> Evaluation:
    with _renewing(renewed):
        return evaluate_stack(STACK)


def _annotations(ev: Evaluation) -> dict[str, dict[str, Any]]:
    return {w.inputs["metadata"]["name"]: w.inputs["spec"]["template"]["metadata"].get("annotations", {})
            for typ in WORKLOADS for w in ev.of_type(typ)}


def _tls_secrets(ev: Evaluation) -> dict[str, str]:
    """Name of each ``kubernetes.io/tls`` Secret the program makes → the certificate resource in its ``tls.crt``."""
    prefix = "-----BEGIN CERTIFICATE-----"         # the mocks' cert_pem: this, then the resource's name
    found = {}
    for s in ev.of_type("kubernetes:core/v1:Secret"):
        data = s.inputs.get("stringData") or {}
        data = data.get("value", {}) if SECRET_SIG in data else data      # the mocks' record of a secret-wrapped input
        cert = data.get("tls.crt")
        if s.inputs.get("type") == "kubernetes.io/tls" and isinstance(cert, str) and cert.startswith(prefix):
            found[s.inputs["metadata"]["name"]] = cert[len(prefix):]
    return found


def _mounts(ev: Evaluation) -> dict[str, set[tuple[str, str]]]:
    """Secret name → the (workload, volume) pairs that mount it, directly or in a projected volume."""
    found: dict[str, set[tuple[str, str]]] = {}
    for typ in WORKLOADS:
        for w in ev.of_type(typ):
            for volume in w.inputs["spec"]["template"]["spec"].get("volumes", []):
                names = [(volume.get("secret") or {}).get("secretName")]
                names += [(s.get("secret") or {}).get("name") for s in (volume.get("projected") or {}).get("sources", [])]
                for name in filter(None, names):
                    found.setdefault(name, set()).add((w.inputs["metadata"]["name"], volume["name"]))
    return found


def _rolled(renewed: frozenset[str]) -> set[str]:
    before, after = _annotations(_evaluate()), _annotations(_evaluate(renewed))
    assert before.keys() == after.keys()
    return {name for name in before if before[name] != after[name]}


@pytest.fixture(scope="module")
def baseline() -> Evaluation:
    return _evaluate()


def test_every_mounted_certificate_either_rolls_its_pods_or_is_reloaded_in_place(baseline: Evaluation) -> None:
    secrets, mounts = _tls_secrets(baseline), _mounts(baseline)
    mounted = {name: pairs for name, pairs in mounts.items() if name in secrets}
    assert {"edge-ems-northbound-tls", "metrics-adapter-tls", "broker-tls", "api-gateway-tls", "twin-api-tls"} <= set(mounted)
    for secret, pairs in sorted(mounted.items()):
        expected = {workload for workload, volume in pairs if (workload, volume) not in RELOADED_IN_PLACE}
        assert _rolled(frozenset({secrets[secret]})) == expected, secret


def test_a_renewed_northbound_broker_certificate_recreates_only_the_northbound_pod(baseline: Evaluation) -> None:
    cert = _tls_secrets(baseline)["edge-ems-northbound-tls"]
    assert _rolled(frozenset({cert})) == {"northbound"}
    assert _rolled(frozenset({_tls_secrets(baseline)["metrics-adapter-tls"]})) == {"metrics-adapter"}
    # The certificates the processes reload themselves roll nothing.
    assert _rolled(frozenset({_tls_secrets(baseline)["northbound-commands-tls"]})) == set()
    assert _rolled(frozenset({_tls_secrets(baseline)["twin-api-tls"]})) == set()


def test_a_new_root_ca_rolls_every_pod_that_reads_the_bundle_only_at_start(baseline: Evaluation) -> None:
    [ca] = baseline.of_type(ROOT_CA)
    assert _rolled(frozenset({ca.name})) == {"broker", "api-gateway", "metrics-adapter", "northbound"}


def test_every_statefulset_is_governed_by_a_headless_service_of_its_namespace(baseline: Evaluation) -> None:
    services = {(s.inputs["metadata"]["namespace"], s.inputs["metadata"]["name"]): s.inputs["spec"]
                for s in baseline.of_type("kubernetes:core/v1:Service")}
    governing = {}
    for sts in baseline.of_type("kubernetes:apps/v1:StatefulSet"):
        meta, spec = sts.inputs["metadata"], sts.inputs["spec"]
        service = services.get((meta["namespace"], spec["serviceName"]))
        assert service is not None, f"{meta['name']}: serviceName {spec['serviceName']!r} names no Service in {meta['namespace']}"
        # It selects the StatefulSet's pods: the endpoints carry their hostnames (hence the SRV targets) only then.
        assert service["selector"].items() <= spec["template"]["metadata"]["labels"].items(), meta["name"]
        assert service.get("clusterIP") == "None", f"{meta['name']}: serviceName {spec['serviceName']!r} is not headless"
        governing[meta["name"]] = spec["serviceName"]
    assert governing["twin-api"] == "twin-api-metrics"
    assert governing["alertmanager"] == "alertmanager-headless"


def test_alertmanager_gossip_is_off_or_its_peers_are_pod_names_of_the_governing_service(baseline: Evaluation) -> None:
    """Alertmanager's cluster peers (``--cluster.peer=HOST:PORT``) resolve only as ``<pod>.<governing headless
    Service>``; with one replica gossip is off (an empty ``--cluster.listen-address``) and there are none."""
    [sts] = [s for s in baseline.of_type("kubernetes:apps/v1:StatefulSet") if s.inputs["metadata"]["name"] == "alertmanager"]
    meta, spec = sts.inputs["metadata"], sts.inputs["spec"]
    [am] = [c for c in spec["template"]["spec"]["containers"] if c["name"] == "alertmanager"]
    peers = [a.split("=", 1)[1] for a in am["args"] if a.startswith("--cluster.peer=")]
    pods = {f"{meta['name']}-{n}.{spec['serviceName']}.{meta['namespace']}.svc" for n in range(int(spec["replicas"]))}
    if "--cluster.listen-address=" in am["args"]:
        assert peers == [] and spec["replicas"] == 1
    else:
        assert peers and {p.rsplit(":", 1)[0].removesuffix(".cluster.local") for p in peers} <= pods, peers


def test_the_twin_api_scrape_job_takes_the_pod_name_from_the_srv_target() -> None:
    """The SRV targets of a governing headless Service are ``<pod>.<service>.<ns>.svc.cluster.local`` (Prometheus trims
    the final dot); the job's relabelling must give ``pod`` = the StatefulSet pod's name, not a dashed IP."""
    from components.tsdb import pod_address_regex
    from components.twin_api import METRICS_SERVICE

    regex = re.compile(pod_address_regex(METRICS_SERVICE))
    match = regex.fullmatch("twin-api-1.twin-api-metrics.ems.svc.cluster.local:9100")
    assert match is not None and match.group(1, 2) == ("twin-api-1", "ems")
    # Under a non-governing Service the records name the pod by its address: no pod name to take.
    assert regex.fullmatch("10-1-2-3.twin-api-metrics.ems.svc.cluster.local:9100").group(1) == "10-1-2-3"
    assert regex.fullmatch("twin-api-1.twin-api.ems.svc.cluster.local:9100") is None
