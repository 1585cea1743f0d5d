"""The north-bound client's egress: only its 2030.5 server's address, only TCP 443 — per rule, and over the
Analyzer gRPC protocol with the pack started as the Pulumi CLI starts it."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import pytest
from google.protobuf import struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

from policy_engine import PACK_DIR, POLICIES, UNKNOWN_STRING_VALUE, check

NP = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
NAME = "northbound-egress-utility-only"
BROKER = {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "broker"}}}],
          "ports": [{"protocol": "TCP", "port": 8883}]}


def policy(*egress: dict, app: str = "northbound") -> dict:
    return {"metadata": {"name": app, "namespace": "ems"},
            "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": app, "app.kubernetes.io/part-of": "ems"}},
                     "policyTypes": ["Ingress", "Egress"], "egress": list(egress)}}


def server(cidr: str = "198.51.100.20/32", port: object = 443, **extra: object) -> dict:
    return {"to": [{"ipBlock": {"cidr": cidr, **extra}}], "ports": [{"protocol": "TCP", "port": port}]}


def test_the_server_on_443_and_the_broker_pass() -> None:
    assert check(NAME, NP, policy(BROKER, server())) == []
    assert check(NAME, NP, policy(BROKER, server("2001:db8::20/128"))) == []


def test_other_ports_ranges_and_protocols_are_refused() -> None:
    assert check(NAME, NP, policy(BROKER, server(port=8443)), name="northbound-netpol") == [
        "NetworkPolicy 'northbound-netpol': spec.egress[1].ports[0] is TCP 8443; the north-bound client may reach the "
        "utility's 2030.5 server only on TCP 443."]
    udp = server()
    udp["ports"] = [{"protocol": "UDP", "port": 443}]
    ranged = server()
    ranged["ports"] = [{"protocol": "TCP", "port": 443, "endPort": 444}]
    assert len(check(NAME, NP, policy(udp))) == 1 and len(check(NAME, NP, policy(ranged))) == 1
    open_ports = server()
    del open_ports["ports"]
    assert check(NAME, NP, policy(open_ports), name="nb") == [
        "NetworkPolicy 'nb': spec.egress[0] has no ports, so it opens every port to 1 outside address(es); allow only "
        "TCP 443 (IEEE 2030.5 over TLS)."]


def test_ranges_exceptions_and_open_destinations_are_refused() -> None:
    assert check(NAME, NP, policy(server("0.0.0.0/0")), name="nb") == [
        "NetworkPolicy 'nb': spec.egress[0].to[0].ipBlock is 0.0.0.0/0; the north-bound client may leave the cluster "
        "only to the utility server's own address (a /32 or /128, no 'except')."]
    assert len(check(NAME, NP, policy(server("198.51.100.0/24")))) == 1
    assert len(check(NAME, NP, policy(server("198.51.100.20/32", **{"except": ["198.51.100.20/32"]})))) == 1
    assert check(NAME, NP, policy({"ports": [{"protocol": "TCP", "port": 443}]}), name="nb") == [
        "NetworkPolicy 'nb': spec.egress[0] has no 'to', so the north-bound client may reach any address; name the "
        "utility server as an ipBlock /32 (or /128) on port 443."]


def test_other_workloads_and_configured_ports() -> None:
    assert check(NAME, NP, policy(server("0.0.0.0/0", port=6443), app="metrics-adapter")) == []
    assert check(NAME, NP, policy(server(port=8443)), config={"utilityPorts": [443, 8443]}) == []
    assert check(NAME, NP, policy(server(port=8443), app="nb2030"), config={"northboundApp": "nb2030"}) != []


def test_unknown_address_during_preview_is_reported() -> None:
    found = check(NAME, NP, policy(server(UNKNOWN_STRING_VALUE)), name="nb")
    assert found == ["NetworkPolicy 'nb': cannot verify spec.egress[0].to[0].ipBlock.cidr because it is unknown during "
                     "preview; set it from a literal or stack config, or run `pulumi up` only after a preview shows it"]


@pytest.fixture(scope="module")
def stub() -> analyzer_pb2_grpc.AnalyzerStub:
    """The pack started exactly as the CLI starts it (`python -u -m pulumi.policy <engine> .`), as a gRPC stub."""
    env = dict(os.environ, PULUMI_CONFIG='{"ems:cloud": "private"}', PULUMI_PROJECT="ems", PULUMI_STACK="dev",
               PULUMI_DRY_RUN="true")
    proc = subprocess.Popen([sys.executable, "-u", "-m", "pulumi.policy", "127.0.0.1:1", "."],
                            cwd=PACK_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode().strip()
        if not line.isdigit():
            pytest.fail(f"pack printed {line!r}; stderr: {proc.stderr.read().decode()[-2000:]}")
        channel = grpc.insecure_channel(f"127.0.0.1:{line}")
        grpc.channel_ready_future(channel).result(timeout=20)
        yield analyzer_pb2_grpc.AnalyzerStub(channel)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _analyze(stub: analyzer_pb2_grpc.AnalyzerStub, props: dict) -> list[tuple[str, int, str]]:
    struct = struct_pb2.Struct()
    struct.update(props)
    request = analyzer_pb2.AnalyzeRequest(type=NP, properties=struct, urn=f"urn:pulumi:dev::ems::{NP}::nb", name="nb")
    response = stub.Analyze(request, timeout=20)
    return [(d.policyName, d.enforcementLevel, d.message) for d in response.diagnostics]


def test_over_grpc_a_non_443_server_port_is_a_mandatory_violation(stub: analyzer_pb2_grpc.AnalyzerStub) -> None:
    assert _analyze(stub, policy(BROKER, server())) == []
    description = POLICIES[NAME].description           # the SDK prefixes it
    assert _analyze(stub, policy(BROKER, server(port=8443))) == [(
        NAME, analyzer_pb2.MANDATORY,
        f"{description}\nNetworkPolicy 'nb': spec.egress[1].ports[0] is TCP 8443; the north-bound client may reach "
        "the utility's 2030.5 server only on TCP 443.")]
