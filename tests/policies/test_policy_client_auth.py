"""Stack policy external-listener-client-auth: internet-facing 443/8883 must front workloads that require client auth."""

from __future__ import annotations

import grpc
from google.protobuf import struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

from policy_engine import StackResource, check_stack
from test_policy_pack import pack_port  # noqa: F401 - the fixture that starts the pack as the CLI does
from workload_fixtures import KIND_TYPES, workload

SVC = "kubernetes:core/v1:Service"
TGB = "kubernetes:elbv2.k8s.aws/v1beta1:TargetGroupBinding"
DEPLOY = KIND_TYPES["Deployment"]
STS = KIND_TYPES["StatefulSet"]
GATEWAY = {"app.kubernetes.io/name": "api-gateway"}
BROKER = {"app.kubernetes.io/name": "broker"}


def service(port: int, labels: dict, kind: str = "LoadBalancer", annotations: dict | None = None, name: str = "svc") -> dict:
    return {"metadata": {"name": name, "namespace": "ems", "annotations": annotations or {}},
            "spec": {"type": kind, "selector": labels, "ports": [{"name": "p", "port": port, "targetPort": port}]}}


def declared(labels: dict, value: str | None, kind: str = "Deployment") -> dict:
    obj = workload(kind, labels=labels)
    if value is not None:
        obj["metadata"]["annotations"] = {"ems.io/client-auth": value}
    return obj


def test_compliant_gateway_and_broker() -> None:
    stack = [StackResource(SVC, "gw-svc", service(443, GATEWAY)), StackResource(DEPLOY, "gw", declared(GATEWAY, "mtls+oidc")),
             StackResource(SVC, "mq-svc", service(8883, BROKER)), StackResource(STS, "mq", declared(BROKER, "mtls-required", "StatefulSet"))]
    assert check_stack("external-listener-client-auth", stack) == []
    for value in ("mtls", "oidc", "mtls-required"):
        assert check_stack("external-listener-client-auth", [stack[0], StackResource(DEPLOY, "gw", declared(GATEWAY, value))]) == []


def test_gateway_without_client_auth_is_refused() -> None:
    gw = StackResource(DEPLOY, "gw", declared(GATEWAY, "none"))
    assert check_stack("external-listener-client-auth", [StackResource(SVC, "gw-svc", service(443, GATEWAY)), gw]) == [(
        "Service 'gw-svc' exposes 443 to the internet and selects Deployment 'gw', whose "
        "metadata.annotations['ems.io/client-auth'] is 'none'; a listener on 443 must require client authentication: "
        "declare one of ['mtls-required', 'mtls', 'oidc', 'mtls+oidc'] and configure it (ems:apiAuth for the gateway, "
        "require_certificate for the broker).", gw.urn)]
    missing = StackResource(DEPLOY, "gw", declared(GATEWAY, None))
    [(message, _)] = check_stack("external-listener-client-auth", [StackResource(SVC, "gw-svc", service(443, GATEWAY, "NodePort")), missing])
    assert "is None" in message


def test_broker_needs_required_certificates_not_tokens() -> None:
    mq = StackResource(STS, "mq", declared(BROKER, "oidc", "StatefulSet"))
    [(message, urn)] = check_stack("external-listener-client-auth", [StackResource(SVC, "mq-svc", service(8883, BROKER)), mq])
    assert urn == mq.urn and "exposes 8883" in message and "['mtls-required']" in message


def test_target_group_binding_makes_a_cluster_ip_internet_facing() -> None:
    gw = StackResource(DEPLOY, "gw", declared(GATEWAY, "none"))
    cluster_ip = StackResource(SVC, "gw-svc", service(443, GATEWAY, "ClusterIP", name="api-gateway"))
    assert check_stack("external-listener-client-auth", [cluster_ip, gw]) == []
    binding = StackResource(TGB, "tgb", {"metadata": {"name": "b", "namespace": "ems"},
                                         "spec": {"serviceRef": {"name": "api-gateway", "port": 443}}})
    assert len(check_stack("external-listener-client-auth", [cluster_ip, gw, binding])) == 1


def test_internal_load_balancers_and_other_ports_are_not_its_business() -> None:
    gw = StackResource(DEPLOY, "gw", declared(GATEWAY, "none"))
    internal = service(443, GATEWAY, annotations={"service.beta.kubernetes.io/aws-load-balancer-scheme": "internal"})
    assert check_stack("external-listener-client-auth", [StackResource(SVC, "s", internal), gw]) == []
    assert check_stack("external-listener-client-auth", [StackResource(SVC, "s", service(1883, GATEWAY)), gw]) == []
    other = StackResource(DEPLOY, "other", declared({"app.kubernetes.io/name": "other"}, "none"))
    assert check_stack("external-listener-client-auth", [StackResource(SVC, "s", service(443, GATEWAY)), other]) == []


def test_over_grpc_as_the_cli_calls_it(pack_port: int) -> None:  # noqa: F811
    def resource(typ: str, name: str, props: dict) -> analyzer_pb2.AnalyzerResource:
        struct = struct_pb2.Struct()
        struct.update(props)
        return analyzer_pb2.AnalyzerResource(type=typ, urn=f"urn:pulumi:dev::ems::{typ}::{name}", name=name, properties=struct)

    channel = grpc.insecure_channel(f"127.0.0.1:{pack_port}")
    grpc.channel_ready_future(channel).result(timeout=20)
    stub = analyzer_pb2_grpc.AnalyzerStub(channel)

    def violations(value: str) -> list[str]:
        request = analyzer_pb2.AnalyzeStackRequest(resources=[
            resource(SVC, "gw-svc", service(443, GATEWAY)), resource(DEPLOY, "gw", declared(GATEWAY, value))])
        response = stub.AnalyzeStack(request, timeout=20)
        return [d.message for d in response.diagnostics if d.policyName == "external-listener-client-auth"]

    assert violations("mtls+oidc") == []
    [message] = violations("none")
    assert "Service 'gw-svc' exposes 443 to the internet and selects Deployment 'gw'" in message
