"""Port rules: which ports a Service, Ingress, NetworkPolicy, security group or accelerator may open.

The EMS port plan (DESIGN.md §4): 8883 MQTT/mTLS and 443 API are external; 1883 MQTT plain and
502 Modbus stay inside the cluster; metrics, TSDB, adapter, DNS, the twin API and Grafana (both behind
the gateway) are internal and allowed by name.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterator

from .props import (
    UNKNOWN, Resource, as_int, elements, get, dig, k8s_objects, k8s_type, of_kinds, of_types,
    resource_policy, strings, unknown_message,
)

DEFAULT_ALLOWED_PORTS = [1883, 8883, 502, 443]
DEFAULT_INTERNAL_PORTS = {"tsdb": 9090, "metrics": 9100, "adapter": 6443, "dns": 53, "twin-api": 8443, "grafana": 3000,
                          "alertmanager": 9093, "northbound-commands": 8444}
DEFAULT_EXTERNAL_PORTS = [8883, 443]

# Annotations that make a cloud load balancer internal (reachable only from the VPC/VNet).
INTERNAL_LB_ANNOTATIONS = {
    "service.beta.kubernetes.io/aws-load-balancer-internal": ("true",),
    "service.beta.kubernetes.io/aws-load-balancer-scheme": ("internal",),
    "service.beta.kubernetes.io/azure-load-balancer-internal": ("true",),
    "networking.gke.io/load-balancer-type": ("internal",),
    "cloud.google.com/load-balancer-type": ("internal",),
}

_PORTS_CONFIG = {
    "allowedPorts": {"type": "array", "items": {"type": "integer"}, "default": DEFAULT_ALLOWED_PORTS,
                     "description": "Service and NetworkPolicy ports always allowed."},
    "internalPorts": {"type": "object", "additionalProperties": {"type": "integer"},
                      "default": DEFAULT_INTERNAL_PORTS,
                      "description": "Named internal ports (name → port) also allowed inside the cluster."},
}
_EXTERNAL_CONFIG = {
    "externalPorts": {"type": "array", "items": {"type": "integer"}, "default": DEFAULT_EXTERNAL_PORTS,
                      "description": "The only ports a LoadBalancer/NodePort/Ingress/public rule may expose."},
    "internalOnlyPorts": {"type": "array", "items": {"type": "integer"}, "default": [1883, 502],
                          "description": "Ports allowed on an internal load balancer with loadBalancerSourceRanges."},
}


def _int_set(values: Any) -> set[int]:
    out = set()
    for value in values or []:
        number = as_int(value)
        if isinstance(number, int):
            out.add(number)
    return out


def allowed_ports(cfg: dict) -> set[int]:
    internal = cfg.get("internalPorts") or {}
    return _int_set(cfg.get("allowedPorts")) | _int_set(internal.values())


def _allowed_text(cfg: dict) -> str:
    internal = ", ".join(f"{name}={as_int(port)}" for name, port in sorted((cfg.get("internalPorts") or {}).items()))
    listed = ", ".join(str(p) for p in sorted(_int_set(cfg.get("allowedPorts"))))
    return f"{listed} or a named internal port ({internal})"


# --------------------------------------------------------------------------- Service ports

def _service_ports(res: Resource, cfg: dict) -> Iterator[str]:
    allowed = allowed_ports(cfg)
    for _, svc in k8s_objects(res.resource_type, res.props):
        ports = elements(dig(svc, "spec", "ports"))
        if ports is UNKNOWN:
            yield unknown_message(res.subject, "spec.ports")
            continue
        for i, entry in enumerate(ports):
            port = as_int(get(entry, "port"))
            target = as_int(get(entry, "targetPort"))
            if port is UNKNOWN or target is UNKNOWN:
                yield unknown_message(res.subject, f"spec.ports[{i}].port/targetPort")
            elif port not in allowed:
                shown = port if port is not None else repr(get(entry, "port"))
                yield (f"{res.subject}: spec.ports[{i}].port is {shown}, which is not an allowed port; "
                       f"use {_allowed_text(cfg)}, or add it to the policy config internalPorts by name.")
            elif target is not None and target not in allowed:
                # 443 → 22 would publish another service under an allowed number.
                yield (f"{res.subject}: spec.ports[{i}].targetPort is {target}, which is not an allowed port; "
                       f"forward only to {_allowed_text(cfg)} (or a named container port).")


service_ports_allowed = resource_policy(
    name="service-ports-allowed",
    description="Requires every Service port to be in the EMS allow-list or a named internal port.",
    applies=of_kinds("Service", group="core"),
    check=_service_ports,
    config=_PORTS_CONFIG,
)


def _internal_lb(annotations: Any) -> Any:
    for key, values in INTERNAL_LB_ANNOTATIONS.items():
        value = get(annotations, key)
        if value is UNKNOWN:
            return UNKNOWN
        if isinstance(value, str) and value.strip().lower() in values:
            return True
    return False


_PRIVATE_NETS = [ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")]


def _is_public_cidr(cidr: str) -> bool:
    """True for /0 and for any internet-scale public block (IPv4 /8 or wider, IPv6 /16 or wider):
    0.0.0.0/1 + 128.0.0.0/1 is the whole internet in two rules."""
    try:
        net = ipaddress.ip_network(str(cidr).strip(), strict=False)
    except ValueError:
        return True  # unparseable: treat as the worst case
    if net.prefixlen == 0:
        return True
    if any(net.version == p.version and net.subnet_of(p) for p in _PRIVATE_NETS):
        return False
    return net.prefixlen <= (8 if net.version == 4 else 16)


def _service_external(res: Resource, cfg: dict) -> Iterator[str]:
    external = _int_set(cfg.get("externalPorts"))
    internal_only = _int_set(cfg.get("internalOnlyPorts"))
    for _, svc in k8s_objects(res.resource_type, res.props):
        spec = get(svc, "spec")
        svc_type = get(spec, "type", "ClusterIP")
        external_ips = strings(get(spec, "externalIPs"))
        if svc_type is UNKNOWN:
            yield unknown_message(res.subject, "spec.type")
            continue
        if external_ips is UNKNOWN:
            yield unknown_message(res.subject, "spec.externalIPs")
            continue
        if svc_type not in ("LoadBalancer", "NodePort") and not external_ips:
            continue
        exposure = f"spec.type {svc_type}" if svc_type in ("LoadBalancer", "NodePort") else "spec.externalIPs"
        internal = _internal_lb(dig(svc, "metadata", "annotations")) if svc_type == "LoadBalancer" else False
        ranges = strings(get(spec, "loadBalancerSourceRanges"))
        ports = elements(get(spec, "ports"))
        if ports is UNKNOWN:
            yield unknown_message(res.subject, "spec.ports")
            continue
        for i, entry in enumerate(ports):
            port = as_int(get(entry, "port"))
            target = as_int(get(entry, "targetPort"))
            if port is UNKNOWN or target is UNKNOWN:
                yield unknown_message(res.subject, f"spec.ports[{i}].port/targetPort")
                continue
            if port in external and target in internal_only:
                # 443 → 1883 would publish plain MQTT (or Modbus) under an allowed number.
                port = target
                where = (f"{res.subject}: spec.ports[{i}].targetPort {target} is exposed outside the cluster "
                         f"(as port {as_int(get(entry, 'port'))}) by {exposure}")
            elif port in external:
                continue
            else:
                where = f"{res.subject}: spec.ports[{i}].port {port} is exposed outside the cluster by {exposure}"
            if port not in internal_only:
                yield (f"{where}; only {sorted(external)} may leave the cluster. "
                       "Use a ClusterIP Service for this port.")
                continue
            if internal is UNKNOWN:
                yield unknown_message(res.subject, "metadata.annotations", "needed to tell an internal load balancer")
            elif ranges is UNKNOWN:
                yield unknown_message(res.subject, "spec.loadBalancerSourceRanges")
            elif not internal:
                yield (f"{where}; {port} may only use an internal load balancer (annotation "
                       "service.beta.kubernetes.io/aws-load-balancer-scheme: internal) with loadBalancerSourceRanges, "
                       "or a ClusterIP Service.")
            elif not ranges:
                yield (f"{where} on an internal load balancer without spec.loadBalancerSourceRanges; "
                       "list the gateway/site CIDRs allowed to reach it.")
            elif any(_is_public_cidr(r) for r in ranges):
                yield (f"{where}: spec.loadBalancerSourceRanges {ranges} include a /0 range; "
                       "list only the gateway/site CIDRs.")


service_external_ports = resource_policy(
    name="service-external-ports",
    description=("Restricts LoadBalancer, NodePort and externalIPs Services to ports 8883 and 443; "
                 "1883/502 only on an internal load balancer with source ranges."),
    applies=of_kinds("Service", group="core"),
    check=_service_external,
    config=_EXTERNAL_CONFIG,
)


# --------------------------------------------------------------------------- Ingress

def _ingress_backend_ports(spec: Any) -> Iterator[tuple[str, Any]]:
    default = get(spec, "defaultBackend")
    if default is UNKNOWN:
        yield "spec.defaultBackend", UNKNOWN
    elif default is not None:
        yield "spec.defaultBackend", default
    rules = elements(get(spec, "rules"))
    if rules is UNKNOWN:
        yield "spec.rules", UNKNOWN
        return
    for r, rule in enumerate(rules):
        paths = elements(dig(rule, "http", "paths"))
        if paths is UNKNOWN:
            yield f"spec.rules[{r}].http.paths", UNKNOWN
            continue
        for p, path in enumerate(paths):
            yield f"spec.rules[{r}].http.paths[{p}].backend", get(path, "backend")


def _listener_ports(res: Resource, listeners: Any, path: str, port_key: str, allowed: set[int],
                    rule: str) -> Iterator[str]:
    """Each listener's ``port_key`` must be in ``allowed``; ``rule`` ends the violation message."""
    if listeners is UNKNOWN:
        yield unknown_message(res.subject, path)
        return
    for i, listener in enumerate(listeners):
        where = f"{path}[{i}].{port_key}"
        port = as_int(get(listener, port_key))
        if port is UNKNOWN:
            yield unknown_message(res.subject, where)
        elif port not in allowed:
            yield f"{res.subject}: {where} is {port}; {rule}"


def _gateway(res: Resource, obj: Any, external: set[int]) -> Iterator[str]:
    yield from _listener_ports(res, elements(dig(obj, "spec", "listeners")), "spec.listeners", "port", external,
                               f"a Gateway may only expose {sorted(external)}.")


def _ingress(res: Resource, cfg: dict) -> Iterator[str]:
    external = _int_set(cfg.get("externalPorts"))
    for kind, ing in k8s_objects(res.resource_type, res.props):
        if kind == "Gateway":
            yield from _gateway(res, ing, external)
            continue
        spec = get(ing, "spec")
        tls = elements(get(spec, "tls"))
        if tls is UNKNOWN:
            yield unknown_message(res.subject, "spec.tls")
        elif not tls:
            yield (f"{res.subject}: spec.tls is empty, so the Ingress serves plain HTTP on port 80; "
                   "add a tls entry (hosts and secretName) so it is exposed only on 443.")
        for where, backend in _ingress_backend_ports(spec):
            if backend is UNKNOWN:
                yield unknown_message(res.subject, where)
                continue
            resource_backend = get(backend, "resource")
            if resource_backend is UNKNOWN:
                yield unknown_message(res.subject, f"{where}.resource")
                continue
            if resource_backend is not None:
                continue  # a resource backend (e.g. a bucket) has no port
            port = get(dig(backend, "service"), "port")
            number = as_int(get(port, "number"))
            name = get(port, "name")
            if number is UNKNOWN or name is UNKNOWN:
                yield unknown_message(res.subject, f"{where}.service.port")
            elif number is None:
                yield (f"{res.subject}: {where}.service.port is {name!r} (a name or missing); "
                       f"use port.number, one of {sorted(external)}.")
            elif number not in external:
                yield (f"{res.subject}: {where}.service.port.number is {number}; an Ingress may only "
                       f"expose {sorted(external)}. Route other ports through a ClusterIP Service.")


ingress_ports = resource_policy(
    name="ingress-ports",
    description=("Requires every Ingress to terminate TLS and to route only to backend ports 8883 and 443, "
                 "and Gateway listeners to use only those ports."),
    applies=lambda t: of_kinds("Ingress")(t) or of_kinds("Gateway", group="gateway.networking.k8s.io")(t),
    check=_ingress,
    config={"externalPorts": _EXTERNAL_CONFIG["externalPorts"]},
)


# --------------------------------------------------------------------------- NetworkPolicy

def _network_policy_ports(res: Resource, cfg: dict) -> Iterator[str]:
    allowed = allowed_ports(cfg)
    names = {str(name) for name in (cfg.get("internalPorts") or {})}
    for _, policy in k8s_objects(res.resource_type, res.props):
        rules = elements(dig(policy, "spec", "ingress"))
        if rules is UNKNOWN:
            yield unknown_message(res.subject, "spec.ingress")
            continue
        for r, rule in enumerate(rules):
            ports = elements(get(rule, "ports"))
            if rule is UNKNOWN or ports is UNKNOWN:
                yield unknown_message(res.subject, f"spec.ingress[{r}].ports")
                continue
            if not ports:
                yield (f"{res.subject}: spec.ingress[{r}] has no ports, so it opens every port; "
                       f"list the ports it allows ({_allowed_text(cfg)}).")
                continue
            for p, entry in enumerate(ports):
                where = f"spec.ingress[{r}].ports[{p}]"
                raw = get(entry, "port")
                port = as_int(raw)
                end = as_int(get(entry, "endPort"))
                if port is UNKNOWN or end is UNKNOWN:
                    yield unknown_message(res.subject, f"{where}.port")
                elif raw is None:
                    yield f"{res.subject}: {where}.port is unset, so it opens every port; set one allowed port."
                elif port is None and str(raw) not in names:
                    yield (f"{res.subject}: {where}.port is the name {raw!r}; use a number, or a name from "
                           f"internalPorts ({', '.join(sorted(names))}).")
                elif port is not None and port not in allowed:
                    yield f"{res.subject}: {where}.port is {port}, which is not allowed; use {_allowed_text(cfg)}."
                elif end is not None and end != port:
                    yield (f"{res.subject}: {where} opens the range {port}-{end}; "
                           "list single allowed ports instead of a range.")


def _container_ports(res: Resource, cfg: dict) -> Iterator[str]:
    from .workloads import containers, pod_templates  # local import: workloads imports nothing from here

    allowed = allowed_ports(cfg)
    for template in pod_templates(res.resource_type, res.props):
        if template.spec is UNKNOWN:
            yield unknown_message(res.subject, template.path)
            continue
        for path, name, container in containers(template):
            ports = elements(get(container, "ports"))
            if container is UNKNOWN or ports is UNKNOWN:
                yield unknown_message(res.subject, f"{path}.ports")
                continue
            for p, entry in enumerate(ports):
                port = as_int(get(entry, "containerPort"))
                if port is UNKNOWN:
                    yield unknown_message(res.subject, f"{path}.ports[{p}].containerPort")
                elif port not in allowed:
                    yield (f"{res.subject}: container '{name}' {path}.ports[{p}].containerPort is "
                           f"{get(entry, 'containerPort') if port is None else port}, which is not an allowed port; "
                           f"listen on {_allowed_text(cfg)}.")


container_ports_allowed = resource_policy(
    name="container-ports-allowed",
    description="Requires every declared container port to be in the EMS allow-list or a named internal port.",
    applies=lambda t: k8s_type(t) is not None,
    check=_container_ports,
    config=_PORTS_CONFIG,
)


network_policy_ingress_ports = resource_policy(
    name="networkpolicy-ingress-ports",
    description="Requires NetworkPolicy ingress rules to name only allowed ports (no open rules, no ranges).",
    applies=of_kinds("NetworkPolicy"),
    check=_network_policy_ports,
    config=_PORTS_CONFIG,
)


# --------------------------------------------------------------------------- AWS security groups

_SG_CONFIG = {
    "publicPorts": {"type": "array", "items": {"type": "integer"}, "default": DEFAULT_EXTERNAL_PORTS,
                    "description": "Ports a rule may open to 0.0.0.0/0 or ::/0 (TCP only)."},
}


def _public_rule(res: Resource, where: str, cfg: dict, cidrs: Any, protocol: Any,
                 from_port: Any, to_port: Any) -> Iterator[str]:
    if cidrs is UNKNOWN:
        yield unknown_message(res.subject, f"{where} CIDR blocks")
        return
    public = [c for c in cidrs if _is_public_cidr(c)]
    if not public:
        return
    allowed = _int_set(cfg.get("publicPorts"))
    low, high = as_int(from_port), as_int(to_port)
    if protocol is UNKNOWN or low is UNKNOWN or high is UNKNOWN:
        yield unknown_message(res.subject, f"{where} protocol/ports", f"it is open to {public}")
        return
    proto = str(protocol).strip().lower()
    if proto not in ("tcp", "6"):
        yield (f"{res.subject}: {where} opens protocol {protocol!r} to {public}; only TCP "
               f"{sorted(allowed)} may be public. Restrict the CIDRs or the protocol.")
    elif low != high or low not in allowed:
        span = f"{low}" if low == high else f"{low}-{high}"
        yield (f"{res.subject}: {where} opens port {span} to {public}; only {sorted(allowed)} may be open to "
               "the internet. Restrict the CIDRs to known networks or use an allowed port.")


def _node_group_ssh(res: Resource) -> Iterator[str]:
    """An EKS node group with remoteAccess and no sourceSecurityGroupIds opens SSH to 0.0.0.0/0."""
    remote = get(res.props, "remoteAccess")
    if remote is UNKNOWN:
        yield unknown_message(res.subject, "remoteAccess")
        return
    if remote is None or get(remote, "ec2SshKey") is None:
        return
    sources = strings(get(remote, "sourceSecurityGroupIds"))
    if sources is UNKNOWN:
        yield unknown_message(res.subject, "remoteAccess.sourceSecurityGroupIds")
    elif not sources:
        yield (f"{res.subject}: remoteAccess.ec2SshKey is set without sourceSecurityGroupIds, so EKS opens port 22 "
               "to 0.0.0.0/0; remove remoteAccess (use SSM) or list sourceSecurityGroupIds.")


def _security_group(res: Resource, cfg: dict) -> Iterator[str]:
    props = res.props
    if res.resource_type == "aws:eks/nodeGroup:NodeGroup":
        yield from _node_group_ssh(res)
        return
    if res.resource_type in ("aws:ec2/securityGroup:SecurityGroup", "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"):
        rules = elements(get(props, "ingress"))
        if rules is UNKNOWN:
            yield unknown_message(res.subject, "ingress")
            return
        for i, rule in enumerate(rules):
            v4, v6 = strings(get(rule, "cidrBlocks")), strings(get(rule, "ipv6CidrBlocks"))
            cidrs = UNKNOWN if UNKNOWN in (v4, v6) or rule is UNKNOWN else v4 + v6
            yield from _public_rule(res, f"ingress[{i}]", cfg, cidrs, get(rule, "protocol"),
                                    get(rule, "fromPort"), get(rule, "toPort"))
    elif res.resource_type == "aws:ec2/securityGroupRule:SecurityGroupRule":
        kind = get(props, "type")
        if kind is UNKNOWN:
            yield unknown_message(res.subject, "type")
            return
        if kind != "ingress":
            return
        v4, v6 = strings(get(props, "cidrBlocks")), strings(get(props, "ipv6CidrBlocks"))
        cidrs = UNKNOWN if UNKNOWN in (v4, v6) else v4 + v6
        yield from _public_rule(res, "rule", cfg, cidrs, get(props, "protocol"),
                                get(props, "fromPort"), get(props, "toPort"))
    else:  # aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule
        v4, v6 = get(props, "cidrIpv4"), get(props, "cidrIpv6")
        cidrs = UNKNOWN if UNKNOWN in (v4, v6) else [c for c in (v4, v6) if c]
        yield from _public_rule(res, "rule", cfg, cidrs, get(props, "ipProtocol"),
                                get(props, "fromPort"), get(props, "toPort"))


security_group_public_ingress = resource_policy(
    name="security-group-public-ingress",
    description="Prohibits security-group ingress from 0.0.0.0/0 or ::/0 except TCP 8883 and 443.",
    applies=of_types("aws:ec2/securityGroup:SecurityGroup", "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup",
                     "aws:ec2/securityGroupRule:SecurityGroupRule",
                     "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", "aws:eks/nodeGroup:NodeGroup"),
    check=_security_group,
    config=_SG_CONFIG,
)


# --------------------------------------------------------------------------- Global Accelerator

def _accelerator_listener(res: Resource, cfg: dict) -> Iterator[str]:
    allowed = _int_set(cfg.get("externalPorts"))
    protocol = get(res.props, "protocol")
    if protocol is UNKNOWN:
        yield unknown_message(res.subject, "protocol")
    elif res.resource_type == "aws:globalaccelerator/listener:Listener" and protocol != "TCP":
        yield f"{res.subject}: protocol is {protocol!r}; listeners must be TCP (MQTT/mTLS 8883 and HTTPS 443)."
    ranges = elements(get(res.props, "portRanges"))
    if ranges is UNKNOWN:
        yield unknown_message(res.subject, "portRanges")
        return
    if not ranges:
        yield f"{res.subject}: portRanges is empty; list {sorted(allowed)}."
    for i, entry in enumerate(ranges):
        low, high = as_int(get(entry, "fromPort")), as_int(get(entry, "toPort"))
        if UNKNOWN in (low, high):
            yield unknown_message(res.subject, f"portRanges[{i}]")
        elif low != high or low not in allowed:
            yield (f"{res.subject}: portRanges[{i}] is {low}-{high}; a listener may only accept "
                   f"{sorted(allowed)}, one port per range.")


global_accelerator_listener_ports = resource_policy(
    name="global-accelerator-listener-ports",
    description="Restricts Global Accelerator listeners to TCP ports 8883 and 443.",
    applies=of_types("aws:globalaccelerator/listener:Listener",
                     "aws:globalaccelerator/customRoutingListener:CustomRoutingListener"),
    check=_accelerator_listener,
    config={"externalPorts": _EXTERNAL_CONFIG["externalPorts"]},
)

def _lb_listener(res: Resource, cfg: dict) -> Iterator[str]:
    allowed = _int_set(cfg.get("externalPorts"))
    rule = f"load balancer listeners may only accept {sorted(allowed)} (1883/502 never leave the cluster)."
    if res.resource_type == "aws:elb/loadBalancer:LoadBalancer":
        yield from _listener_ports(res, elements(get(res.props, "listeners")), "listeners", "lbPort", allowed, rule)
        return
    port = as_int(get(res.props, "port"))
    if port is UNKNOWN:
        yield unknown_message(res.subject, "port")
    elif port not in allowed:
        yield f"{res.subject}: port is {port}; {rule}"


lb_listener_ports = resource_policy(
    name="lb-listener-ports",
    description="Restricts AWS load balancer listeners to ports 8883 and 443.",
    applies=of_types("aws:lb/listener:Listener", "aws:alb/listener:Listener", "aws:elb/loadBalancer:LoadBalancer"),
    check=_lb_listener,
    config={"externalPorts": _EXTERNAL_CONFIG["externalPorts"]},
)

POLICIES = [
    service_ports_allowed,
    service_external_ports,
    ingress_ports,
    container_ports_allowed,
    network_policy_ingress_ports,
    security_group_public_ingress,
    global_accelerator_listener_ports,
    lb_listener_ports,
]
