"""Egress rules: where the north-bound client may go outside the cluster.

DESIGN §4: the utility's IEEE 2030.5 server is reached on 443, from ``ems-northbound`` only. A
NetworkPolicy that selects the north-bound pods (label ``app.kubernetes.io/name`` = the config's
``northboundApp``) may send them outside the cluster (an ``ipBlock`` peer, or no peer at all) only
to single addresses (``/32`` or ``/128``, no ``except``) on the ``utilityPorts`` (TCP 443).
Rules toward pods (``podSelector`` / ``namespaceSelector``) stay inside the cluster and are left to
the port rules.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterator

from .props import UNKNOWN, Resource, as_int, dig, elements, entries, get, k8s_objects, of_kinds, resource_policy, \
    unknown_message

APP_LABEL = "app.kubernetes.io/name"
_CONFIG = {
    "northboundApp": {"type": "string", "default": "northbound",
                      "description": "The north-bound client's app.kubernetes.io/name pod label."},
    "utilityPorts": {"type": "array", "items": {"type": "integer"}, "default": [443],
                     "description": "TCP ports the north-bound client may reach outside the cluster."},
}


def _selects_northbound(spec: Any, app: str) -> Any:
    labels = entries(dig(spec, "podSelector", "matchLabels"))
    if labels is UNKNOWN:
        return UNKNOWN
    return any(key == APP_LABEL and value == app for key, value in labels)


def _single_host(cidr: Any) -> bool:
    try:
        network = ipaddress.ip_network(str(cidr), strict=True)
    except ValueError:
        return False
    return network.num_addresses == 1


def _northbound_egress(res: Resource, cfg: dict) -> Iterator[str]:
    app = str(cfg.get("northboundApp") or "northbound")
    ports = {p for p in (as_int(v) for v in cfg.get("utilityPorts") or []) if isinstance(p, int)}
    shown = ", ".join(str(p) for p in sorted(ports)) or "none"
    for _, policy in k8s_objects(res.resource_type, res.props):
        spec = get(policy, "spec")
        selected = _selects_northbound(spec, app)
        if selected is UNKNOWN:
            yield unknown_message(res.subject, "spec.podSelector.matchLabels")
            continue
        if not selected:
            continue
        rules = elements(get(spec, "egress"))
        if rules is UNKNOWN:
            yield unknown_message(res.subject, "spec.egress")
            continue
        for r, rule in enumerate(rules):
            where = f"spec.egress[{r}]"
            peers = elements(get(rule, "to"))
            if rule is UNKNOWN or peers is UNKNOWN:
                yield unknown_message(res.subject, f"{where}.to")
                continue
            outside = [(i, get(peer, "ipBlock")) for i, peer in enumerate(peers) if get(peer, "ipBlock") is not None]
            if peers and not outside:
                continue                      # pods of the cluster only
            if not peers:
                yield (f"{res.subject}: {where} has no 'to', so the north-bound client may reach any address; name "
                       f"the utility server as an ipBlock /32 (or /128) on port {shown}.")
                continue
            for i, block in outside:
                cidr = get(block, "cidr")
                if cidr is UNKNOWN:
                    yield unknown_message(res.subject, f"{where}.to[{i}].ipBlock.cidr")
                elif not _single_host(cidr) or get(block, "except") is not None:
                    yield (f"{res.subject}: {where}.to[{i}].ipBlock is {cidr!s}; the north-bound client may leave the "
                           "cluster only to the utility server's own address (a /32 or /128, no 'except').")
            entries_ = elements(get(rule, "ports"))
            if entries_ is UNKNOWN:
                yield unknown_message(res.subject, f"{where}.ports")
                continue
            if not entries_:
                yield (f"{res.subject}: {where} has no ports, so it opens every port to {len(outside)} outside "
                       f"address(es); allow only TCP {shown} (IEEE 2030.5 over TLS).")
                continue
            for p, entry in enumerate(entries_):
                port, protocol = as_int(get(entry, "port")), get(entry, "protocol", "TCP")
                if port is UNKNOWN or protocol is UNKNOWN:
                    yield unknown_message(res.subject, f"{where}.ports[{p}]")
                elif port not in ports or protocol != "TCP" or get(entry, "endPort") is not None:
                    shown_port = port if port is not None else get(entry, "port")
                    yield (f"{res.subject}: {where}.ports[{p}] is {protocol} {shown_port}; the north-bound "
                           f"client may reach the utility's 2030.5 server only on TCP {shown}.")


northbound_egress_utility_only = resource_policy(
    name="northbound-egress-utility-only",
    description=("Restricts the north-bound client's egress outside the cluster to single server addresses on the "
                 "IEEE 2030.5 port (TCP 443)."),
    applies=of_kinds("NetworkPolicy"),
    check=_northbound_egress,
    config=_CONFIG,
)

POLICIES = [northbound_egress_utility_only]
