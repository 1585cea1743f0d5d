"""The north-bound client in the stack files: deployed where a utility server is configured (private-dc1),
absent where it is disabled (local) or unset (AWS stacks), with its own broker certificate identity."""

from __future__ import annotations

import pytest

from infra_mocks import evaluate_stack

DEPLOY = "kubernetes:apps/v1:Deployment"
NP = "kubernetes:networking.k8s.io/v1:NetworkPolicy"


def _northbound(ev) -> list:
    return [d for d in ev.of_type(DEPLOY) if d.inputs["metadata"]["name"] == "northbound"]


def test_private_dc1_deploys_it_with_its_own_identity_and_egress() -> None:
    ev = evaluate_stack("private-dc1")
    [deploy] = _northbound(ev)
    volumes = {v["name"]: v for v in deploy.inputs["spec"]["template"]["spec"]["volumes"]}
    assert volumes["broker-tls"]["secret"]["secretName"] == "edge-ems-northbound-tls"
    assert volumes["client-tls"]["secret"]["secretName"] == "utility-2030-5-client"
    secrets = [s for s in ev.of_type("kubernetes:core/v1:Secret") if s.inputs["metadata"]["name"] == "edge-ems-northbound-tls"]
    assert [s.inputs["metadata"]["namespace"] for s in secrets] == ["ems-system"]   # the platform PKI issued its identity (default ems:namespace)
    [policy] = [p for p in ev.of_type(NP) if p.inputs["metadata"]["name"] == "northbound"]
    assert {"to": [{"ipBlock": {"cidr": "198.51.100.20/32"}}], "ports": [{"protocol": "TCP", "port": 443}]} \
        in policy.inputs["spec"]["egress"]
    toml = next(c.inputs["data"]["northbound.toml"] for c in ev.of_type("kubernetes:core/v1:ConfigMap")
                if c.inputs["metadata"]["name"] == "northbound-config")
    assert '[sites.sub-01]' in toml and '[sites.sub-02]' in toml and '[sites.sub-03]' not in toml


@pytest.mark.parametrize("name", ["local", "aws-eu-west-1"])
def test_no_client_without_a_configured_server(name: str) -> None:
    ev = evaluate_stack(name)
    assert _northbound(ev) == []
    assert not [p for p in ev.of_type(NP) if p.inputs["metadata"]["name"] == "northbound"]
