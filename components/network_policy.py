"""NetworkPolicies: default deny (ingress and egress) per namespace, then explicit allows.

Allowed flows (DESIGN §4 and the contract's internal ports):

| from → to                     | port  |
|-------------------------------|-------|
| anywhere → broker             | 8883 (1883 is on the broker pod's loopback only: nothing to allow) |
| ingest, ems-gateway, twin-api → broker | 8883 (egress; mTLS, each with its own certificate identity) |
| ems-gateway → RS-485 gateways | 502 (the configured port, per gateway address) |
| anywhere → api-gateway        | 443   |
| api-gateway → twin-api        | 8443 (upstream TLS; the policy pack's internal port ``twin-api``): routes and the token verifier |
| twin-api → identity provider  | 443, only with ``ems:apiAuth.oidc`` (the verifier fetches the issuer's JWKS) |
| anywhere (API server) → adapter | 6443 |
| ingest, api-gateway, adapter, twin-api → tsdb | 9090 (twin-api: its PromQL pass-through) |
| tsdb → ingest, northbound, twin-api, ems-gateway | 9100 (metrics; twin-api: twin metrics and the gateway verifier's counters; the north-bound client's own NetworkPolicy is in components/northbound.py) |
| tsdb, twin-api, api-gateway → alertmanager | 9093 (alerts in; the operator page's firing alerts; operators' silences through the gateway) |
| api-gateway → grafana → tsdb  | 3000, 9090 (Grafana's own NetworkPolicies, in components/grafana.py, only where Grafana is deployed) |
| alertmanager → receivers      | 443 (webhooks over HTTPS) |
| adapter → Kubernetes API      | 443, 6443 |
| every pod → cluster DNS       | 53 UDP/TCP |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import pulumi
import pulumi_kubernetes as k8s

from components.ems_gateway import APP as GATEWAY_APP
from components.k8s_common import child, metadata, selector
from components.settings import ModbusGateway
from components.twin_api import PORT as TWIN_API_PORT

APP = "network-policy"
ANYWHERE = [{"ipBlock": {"cidr": "0.0.0.0/0"}}]


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in ports]


def _pods(app: str) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": selector(app)}}


def _host(address: str) -> str:
    return f"{address}/128" if ":" in address else f"{address}/32"


@dataclass(frozen=True)
class NetworkPoliciesArgs:
    namespace: pulumi.Input[str]
    """The platform namespace (workloads)."""
    extra_namespaces: tuple[tuple[str, pulumi.Input[str]], ...] = ()
    """(role, namespace) pairs without workloads: default deny only. Defaults to none."""
    gateways: tuple[ModbusGateway, ...] = ()
    """RS-485 gateways ems-gateway may reach; without any there is no ems-gateway and no policy for it. Defaults to none."""
    identity_provider: bool = False
    """The twin API (the gateway's token verifier) fetches an OIDC issuer's JWKS over HTTPS: egress 443. Defaults to off."""


class NetworkPolicies(pulumi.ComponentResource):
    """Default-deny plus per-workload allow policies."""

    policy_names: pulumi.Output[list[str]]

    def __init__(self, name: str, args: NetworkPoliciesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ems:network:NetworkPolicies", name, None, opts)
        o = child(self)
        created: list[k8s.networking.v1.NetworkPolicy] = []

        def policy(role: str, namespace: pulumi.Input[str], pod_selector: dict[str, Any], *,
                   ingress: Sequence[dict[str, Any]] | None = None, egress: Sequence[dict[str, Any]] | None = None) -> None:
            types = [t for t, rules in (("Ingress", ingress), ("Egress", egress)) if rules is not None]
            spec: dict[str, Any] = {"podSelector": pod_selector, "policyTypes": types}
            if ingress is not None:
                spec["ingress"] = list(ingress)
            if egress is not None:
                spec["egress"] = list(egress)
            created.append(k8s.networking.v1.NetworkPolicy(
                f"{name}-{role}", metadata=metadata(role, namespace, APP), spec=spec, opts=o))

        ns = args.namespace
        for role, extra in args.extra_namespaces:
            policy(f"default-deny-{role}", extra, {}, ingress=[], egress=[])
        policy("default-deny", ns, {}, ingress=[], egress=[])
        policy("allow-dns", ns, {}, egress=[{
            "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        }])
        same_namespace = [{"podSelector": {}}]
        policy("broker", ns, _pods("broker")["podSelector"], ingress=[
            # ipBlock may not match pod addresses (CNI-dependent): in-cluster clients explicitly.
            {"from": [*ANYWHERE, *same_namespace], "ports": _tcp(8883)},
        ])
        if args.gateways:
            gateway_rules = [{"to": [{"ipBlock": {"cidr": _host(g.host)}}], "ports": _tcp(g.port)} for g in args.gateways]
            policy(GATEWAY_APP, ns, _pods(GATEWAY_APP)["podSelector"],
                   ingress=[{"from": [_pods("tsdb")], "ports": _tcp(9100)}],
                   egress=[{"to": [_pods("broker")], "ports": _tcp(8883)}, *gateway_rules])
        policy("ingest", ns, _pods("ingest")["podSelector"],
               ingress=[{"from": [_pods("tsdb")], "ports": _tcp(9100)}],
               egress=[{"to": [_pods("broker")], "ports": _tcp(8883)}, {"to": [_pods("tsdb")], "ports": _tcp(9090)}])
        policy("tsdb", ns, _pods("tsdb")["podSelector"],
               ingress=[{"from": [_pods("ingest"), _pods("api-gateway"), _pods("metrics-adapter"), _pods("twin-api")],
                         "ports": _tcp(9090)}],
               egress=[{"to": [_pods("ingest"), _pods("northbound"), _pods("twin-api"),
                               *([_pods(GATEWAY_APP)] if args.gateways else [])], "ports": _tcp(9100)},
                       {"to": [_pods("alertmanager")], "ports": _tcp(9093)}])
        policy("alertmanager", ns, _pods("alertmanager")["podSelector"],
               ingress=[{"from": [_pods("tsdb"), _pods("twin-api"), _pods("api-gateway")], "ports": _tcp(9093)}],
               egress=[{"to": ANYWHERE, "ports": _tcp(443)}])
        policy("api-gateway", ns, _pods("api-gateway")["podSelector"],
               ingress=[{"from": ANYWHERE, "ports": _tcp(443)}],
               egress=[{"to": [_pods("tsdb")], "ports": _tcp(9090)}, {"to": [_pods("twin-api")], "ports": _tcp(TWIN_API_PORT)},
                       {"to": [_pods("alertmanager")], "ports": _tcp(9093)}])
        policy("twin-api", ns, _pods("twin-api")["podSelector"],
               ingress=[{"from": [_pods("api-gateway")], "ports": _tcp(TWIN_API_PORT)},
                        {"from": [_pods("tsdb")], "ports": _tcp(9100)}],
               egress=[{"to": [_pods("broker")], "ports": _tcp(8883)}, {"to": [_pods("tsdb")], "ports": _tcp(9090)},
                       {"to": [_pods("alertmanager")], "ports": _tcp(9093)},
                       *([{"to": ANYWHERE, "ports": _tcp(443)}] if args.identity_provider else [])])
        policy("metrics-adapter", ns, _pods("metrics-adapter")["podSelector"],
               ingress=[{"from": ANYWHERE, "ports": _tcp(6443)}],
               egress=[{"to": [_pods("tsdb")], "ports": _tcp(9090)}, {"to": ANYWHERE, "ports": _tcp(443, 6443)}])

        self.policy_names = pulumi.Output.all(*[p.metadata.name for p in created])  # type: ignore[assignment]
        self.register_outputs({"policy_names": self.policy_names})
