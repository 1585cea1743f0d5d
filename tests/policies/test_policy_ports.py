"""Port policies: Services, Ingress, NetworkPolicy, security groups, Global Accelerator."""

from __future__ import annotations

import pytest

from policy_engine import UNKNOWN_NUMBER_VALUE, UNKNOWN_STRING_VALUE, check

SVC = "kubernetes:core/v1:Service"
INTERNAL_LB = {"service.beta.kubernetes.io/aws-load-balancer-scheme": "internal"}


def service(ports: list[int], svc_type: str = "ClusterIP", annotations: dict | None = None, **spec) -> dict:
    return {"metadata": {"name": "broker", "namespace": "ems", "annotations": annotations or {}},
            "spec": {"type": svc_type, "ports": [{"name": f"p{p}", "port": p, "targetPort": p} for p in ports],
                     **spec}}


def test_service_ports_allowed() -> None:
    assert check("service-ports-allowed", SVC, service([1883, 8883, 502, 443, 9090, 9100, 6443, 53, 8443])) == []
    assert check("service-ports-allowed", SVC, service([8883, 22]), name="broker") == [
        "Service 'broker': spec.ports[1].port is 22, which is not an allowed port; use 443, 502, 1883, 8883 or a "
        "named internal port (adapter=6443, alertmanager=9093, dns=53, grafana=3000, metrics=9100, northbound-commands=8444, tsdb=9090, twin-api=8443), or add it to the policy config "
        "internalPorts by name."]


def test_service_ports_config_internal_ports() -> None:
    cfg = {"internalPorts": {"grafana": 3000}}
    assert check("service-ports-allowed", SVC, service([3000]), config=cfg) == []
    assert check("service-ports-allowed", SVC, service([9090]), config=cfg)  # no longer in the named set


def test_service_port_unknown_is_reported() -> None:
    svc = service([8883])
    svc["spec"]["ports"][0]["port"] = UNKNOWN_NUMBER_VALUE
    assert check("service-ports-allowed", SVC, svc, name="broker") == [
        "Service 'broker': cannot verify spec.ports[0].port/targetPort because it is unknown during preview; set it from a "
        "literal or stack config, or run `pulumi up` only after a preview shows it"]


def test_external_service_ports() -> None:
    assert check("service-external-ports", SVC, service([8883, 443], "LoadBalancer")) == []
    assert check("service-external-ports", SVC, service([1883, 502])) == []  # ClusterIP is internal
    assert check("service-external-ports", SVC, service([1883], "NodePort"), name="mqtt") == [
        "Service 'mqtt': spec.ports[0].port 1883 is exposed outside the cluster by spec.type NodePort; 1883 may only "
        "use an internal load balancer (annotation service.beta.kubernetes.io/aws-load-balancer-scheme: internal) "
        "with loadBalancerSourceRanges, or a ClusterIP Service."]
    assert "only [443, 8883] may leave the cluster" in check(
        "service-external-ports", SVC, service([9090], "LoadBalancer"))[0]


def test_internal_load_balancer_needs_narrow_source_ranges() -> None:
    svc = service([502], "LoadBalancer", INTERNAL_LB)
    assert "without spec.loadBalancerSourceRanges" in check("service-external-ports", SVC, svc)[0]
    svc["spec"]["loadBalancerSourceRanges"] = ["0.0.0.0/0"]
    assert "include a /0 range" in check("service-external-ports", SVC, svc)[0]
    svc["spec"]["loadBalancerSourceRanges"] = ["10.20.0.0/16"]
    assert check("service-external-ports", SVC, svc) == []
    public = service([502], "LoadBalancer", loadBalancerSourceRanges=["10.20.0.0/16"])
    assert "may only use an internal load balancer" in check("service-external-ports", SVC, public)[0]


def test_external_ips_count_as_external() -> None:
    svc = service([1883], externalIPs=["203.0.113.10"])
    assert "exposed outside the cluster by spec.externalIPs" in check("service-external-ports", SVC, svc)[0]


def test_external_service_type_unknown_is_reported() -> None:
    svc = service([1883])
    svc["spec"]["type"] = UNKNOWN_STRING_VALUE
    assert "cannot verify spec.type" in check("service-external-ports", SVC, svc)[0]


ING = "kubernetes:networking.k8s.io/v1:Ingress"


def ingress(port: dict, tls: bool = True) -> dict:
    spec = {"rules": [{"host": "api.example.org", "http": {"paths": [
        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": port}}}]}}]}
    if tls:
        spec["tls"] = [{"hosts": ["api.example.org"], "secretName": "api-tls"}]
    return {"metadata": {"name": "api"}, "spec": spec}


def test_ingress_ports() -> None:
    assert check("ingress-ports", ING, ingress({"number": 443})) == []
    assert check("ingress-ports", ING, ingress({"number": 1883}), name="api") == [
        "Ingress 'api': spec.rules[0].http.paths[0].backend.service.port.number is 1883; an Ingress may only expose "
        "[443, 8883]. Route other ports through a ClusterIP Service."]
    assert "spec.tls is empty" in check("ingress-ports", ING, ingress({"number": 443}, tls=False))[0]
    assert "use port.number" in check("ingress-ports", ING, ingress({"name": "http"}))[0]


NP = "kubernetes:networking.k8s.io/v1:NetworkPolicy"


def netpol(ingress_rules: list) -> dict:
    return {"metadata": {"name": "np", "namespace": "ems"},
            "spec": {"podSelector": {"matchLabels": {"app": "x"}}, "policyTypes": ["Ingress"],
                     "ingress": ingress_rules}}


def test_network_policy_ports() -> None:
    ok = netpol([{"ports": [{"protocol": "TCP", "port": 8883}, {"port": 9100}, {"port": "metrics"}]}])
    assert check("networkpolicy-ingress-ports", NP, ok) == []
    assert check("networkpolicy-ingress-ports", NP, netpol([{"from": [{"podSelector": {}}]}]), name="np") == [
        "NetworkPolicy 'np': spec.ingress[0] has no ports, so it opens every port; list the ports it allows (443, "
        "502, 1883, 8883 or a named internal port (adapter=6443, alertmanager=9093, dns=53, grafana=3000, metrics=9100, northbound-commands=8444, tsdb=9090, twin-api=8443))."]
    bad = netpol([{"ports": [{"port": 8883}]}, {"ports": [{"port": 22}]}])  # hidden in the second rule
    assert check("networkpolicy-ingress-ports", NP, bad) == [
        "NetworkPolicy 'res': spec.ingress[1].ports[0].port is 22, which is not allowed; use 443, 502, 1883, 8883 or "
        "a named internal port (adapter=6443, alertmanager=9093, dns=53, grafana=3000, metrics=9100, northbound-commands=8444, tsdb=9090, twin-api=8443)."]
    rng = netpol([{"ports": [{"port": 443, "endPort": 9000}]}])
    assert "opens the range 443-9000" in check("networkpolicy-ingress-ports", NP, rng)[0]
    named = netpol([{"ports": [{"port": "ssh"}]}])
    assert "is the name 'ssh'" in check("networkpolicy-ingress-ports", NP, named)[0]
    unset = netpol([{"ports": [{"protocol": "TCP"}]}])
    assert "port is unset, so it opens every port" in check("networkpolicy-ingress-ports", NP, unset)[0]


SG = "aws:ec2/securityGroup:SecurityGroup"


@pytest.mark.parametrize("rule,ok", [
    ({"protocol": "tcp", "fromPort": 8883, "toPort": 8883, "cidrBlocks": ["0.0.0.0/0"]}, True),
    ({"protocol": "tcp", "fromPort": 443, "toPort": 443, "ipv6CidrBlocks": ["::/0"]}, True),
    ({"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidrBlocks": ["0.0.0.0/0"]}, False),
    ({"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidrBlocks": ["10.0.0.0/8"]}, True),
    ({"protocol": "-1", "fromPort": 0, "toPort": 0, "cidrBlocks": ["0.0.0.0/0"]}, False),
    ({"protocol": "tcp", "fromPort": 443, "toPort": 8883, "cidrBlocks": ["0.0.0.0/0"]}, False),
    ({"protocol": "udp", "fromPort": 443, "toPort": 443, "ipv6CidrBlocks": ["::/0"]}, False),
    ({"protocol": "tcp", "fromPort": 1883, "toPort": 1883, "cidrBlocks": ["10.0.0.0/8", "0.0.0.0/0"]}, False),
])
def test_security_group_inline_ingress(rule: dict, ok: bool) -> None:
    props = {"ingress": [{"protocol": "tcp", "fromPort": 443, "toPort": 443, "cidrBlocks": ["0.0.0.0/0"]}, rule]}
    msgs = check("security-group-public-ingress", SG, props)
    assert (msgs == []) is ok, msgs


def test_security_group_rule_resources() -> None:
    assert check("security-group-public-ingress", "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
                 {"ipProtocol": "tcp", "fromPort": 22, "toPort": 22, "cidrIpv4": "0.0.0.0/0"}, name="ssh") == [
        "SecurityGroupIngressRule 'ssh': rule opens port 22 to ['0.0.0.0/0']; only [443, 8883] may be open to the "
        "internet. Restrict the CIDRs to known networks or use an allowed port."]
    assert check("security-group-public-ingress", "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
                 {"ipProtocol": "-1", "cidrIpv6": "::/0"})
    rule = "aws:ec2/securityGroupRule:SecurityGroupRule"
    assert check("security-group-public-ingress", rule, {"type": "ingress", "protocol": "tcp", "fromPort": 502,
                                                          "toPort": 502, "cidrBlocks": ["0.0.0.0/0"]})
    assert check("security-group-public-ingress", rule, {"type": "egress", "protocol": "-1", "fromPort": 0,
                                                          "toPort": 0, "cidrBlocks": ["0.0.0.0/0"]}) == []
    assert check("security-group-public-ingress", rule, {"type": "ingress", "protocol": "tcp", "fromPort": 8883,
                                                          "toPort": 8883, "cidrBlocks": ["0.0.0.0/0"]}) == []


def test_security_group_unknown_ports_on_public_rule_reported() -> None:
    props = {"ingress": [{"protocol": "tcp", "fromPort": UNKNOWN_NUMBER_VALUE, "toPort": 443,
                          "cidrBlocks": ["0.0.0.0/0"]}]}
    assert "cannot verify ingress[0] protocol/ports" in check("security-group-public-ingress", SG, props)[0]


GA = "aws:globalaccelerator/listener:Listener"


def test_global_accelerator_listener() -> None:
    ok = {"protocol": "TCP", "portRanges": [{"fromPort": 8883, "toPort": 8883}, {"fromPort": 443, "toPort": 443}]}
    assert check("global-accelerator-listener-ports", GA, ok) == []
    assert check("global-accelerator-listener-ports", GA,
                 {"protocol": "UDP", "portRanges": [{"fromPort": 443, "toPort": 443}]}, name="l") == [
        "Listener 'l': protocol is 'UDP'; listeners must be TCP (MQTT/mTLS 8883 and HTTPS 443)."]
    assert check("global-accelerator-listener-ports", GA,
                 {"protocol": "TCP", "portRanges": [{"fromPort": 1, "toPort": 65535}]}, name="l") == [
        "Listener 'l': portRanges[0] is 1-65535; a listener may only accept [443, 8883], one port per range."]


def test_split_internet_cidrs_count_as_public() -> None:
    props = {"ingress": [{"protocol": "tcp", "fromPort": 22, "toPort": 22,
                          "cidrBlocks": ["0.0.0.0/1", "128.0.0.0/1"]}]}
    assert check("security-group-public-ingress", SG, props, name="sg") == [
        "SecurityGroup 'sg': ingress[0] opens port 22 to ['0.0.0.0/1', '128.0.0.0/1']; only [443, 8883] may be open "
        "to the internet. Restrict the CIDRs to known networks or use an allowed port."]
    private = {"ingress": [{"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidrBlocks": ["10.0.0.0/8"]}]}
    assert check("security-group-public-ingress", SG, private) == []


def test_gateway_listeners() -> None:
    gw = "kubernetes:gateway.networking.k8s.io/v1:Gateway"
    ok = {"spec": {"gatewayClassName": "x", "listeners": [{"name": "https", "port": 443, "protocol": "HTTPS"}]}}
    assert check("ingress-ports", gw, ok) == []
    bad = {"spec": {"listeners": [{"name": "https", "port": 443}, {"name": "mqtt", "port": 1883, "protocol": "TCP"}]}}
    assert check("ingress-ports", gw, bad, name="gw") == [
        "Gateway 'gw': spec.listeners[1].port is 1883; a Gateway may only expose [443, 8883]."]


def test_lb_listener_ports() -> None:
    listener = "aws:lb/listener:Listener"
    assert check("lb-listener-ports", listener, {"port": 8883, "protocol": "TCP"}) == []
    assert check("lb-listener-ports", listener, {"port": 1883, "protocol": "TCP"}, name="mqtt") == [
        "Listener 'mqtt': port is 1883; load balancer listeners may only accept [443, 8883] (1883/502 never leave "
        "the cluster)."]
    assert "cannot verify port" in check("lb-listener-ports", listener, {"port": UNKNOWN_NUMBER_VALUE})[0]


def test_allowed_external_port_forwarding_to_plain_mqtt() -> None:
    svc = service([443], "LoadBalancer")
    svc["spec"]["ports"][0]["targetPort"] = 1883
    assert check("service-external-ports", SVC, svc, name="sneaky") == [
        "Service 'sneaky': spec.ports[0].targetPort 1883 is exposed outside the cluster (as port 443) by spec.type "
        "LoadBalancer; 1883 may only use an internal load balancer (annotation "
        "service.beta.kubernetes.io/aws-load-balancer-scheme: internal) with loadBalancerSourceRanges, or a "
        "ClusterIP Service."]
    svc["spec"]["ports"][0]["targetPort"] = "https"  # a named port: the pod decides, 443 is what is exposed
    assert check("service-external-ports", SVC, svc) == []


def test_ingress_unknown_backend_is_reported() -> None:
    ing = ingress({"number": 443})
    ing["spec"]["rules"][0]["http"]["paths"][0]["backend"] = {"resource": UNKNOWN_STRING_VALUE}
    assert "cannot verify spec.rules[0].http.paths[0].backend.resource" in check("ingress-ports", ING, ing)[0]


def test_service_target_port_must_be_allowed_when_numeric() -> None:
    svc = service([443])
    svc["spec"]["ports"][0]["targetPort"] = 22
    assert check("service-ports-allowed", SVC, svc, name="api") == [
        "Service 'api': spec.ports[0].targetPort is 22, which is not an allowed port; forward only to 443, 502, 1883, "
        "8883 or a named internal port (adapter=6443, alertmanager=9093, dns=53, grafana=3000, metrics=9100, northbound-commands=8444, tsdb=9090, twin-api=8443) (or a named container port)."]
    svc["spec"]["ports"][0]["targetPort"] = "https"
    assert check("service-ports-allowed", SVC, svc) == []


def test_container_ports_allowed() -> None:
    from workload_fixtures import KIND_TYPES, first_container, workload

    obj = workload()
    assert check("container-ports-allowed", KIND_TYPES["Deployment"], obj) == []
    first_container(obj)["ports"] = [{"containerPort": 8883}, {"name": "ssh", "containerPort": 22}]
    assert check("container-ports-allowed", KIND_TYPES["Deployment"], obj, name="x") == [
        "Deployment 'x': container 'app' spec.template.spec.containers[0].ports[1].containerPort is 22, which is not "
        "an allowed port; listen on 443, 502, 1883, 8883 or a named internal port (adapter=6443, alertmanager=9093, dns=53, "
        "grafana=3000, metrics=9100, northbound-commands=8444, tsdb=9090, twin-api=8443)."]


def test_classic_elb_listeners() -> None:
    elb = "aws:elb/loadBalancer:LoadBalancer"
    ok = {"listeners": [{"lbPort": 443, "lbProtocol": "tcp", "instancePort": 30443, "instanceProtocol": "tcp"}]}
    assert check("lb-listener-ports", elb, ok) == []
    bad = {"listeners": [ok["listeners"][0], {"lbPort": 502, "lbProtocol": "tcp", "instancePort": 30502,
                                               "instanceProtocol": "tcp"}]}
    assert check("lb-listener-ports", elb, bad, name="elb") == [
        "LoadBalancer 'elb': listeners[1].lbPort is 502; load balancer listeners may only accept [443, 8883] "
        "(1883/502 never leave the cluster)."]


def test_eks_node_group_ssh_open_to_the_world() -> None:
    ng = "aws:eks/nodeGroup:NodeGroup"
    assert check("security-group-public-ingress", ng, {"clusterName": "c"}) == []
    assert check("security-group-public-ingress", ng, {"remoteAccess": {"ec2SshKey": "ops"}}, name="ng") == [
        "NodeGroup 'ng': remoteAccess.ec2SshKey is set without sourceSecurityGroupIds, so EKS opens port 22 to "
        "0.0.0.0/0; remove remoteAccess (use SSM) or list sourceSecurityGroupIds."]
    assert check("security-group-public-ingress", ng, {"remoteAccess": {
        "ec2SshKey": "ops", "sourceSecurityGroupIds": ["sg-bastion"]}}) == []
