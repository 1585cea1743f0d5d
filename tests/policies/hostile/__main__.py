"""Hostile resources for the ems-guard pack, written with the real provider SDKs (snake_case args,
so the pack sees the camelCase the engine sends). Each resource is named after the corner it cuts;
tests/policies/test_policy_gate.py lists the policy that must flag each one, and checks that the
good-* resources pass every policy.
"""

import copy

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_tls as tls

cluster = k8s.Provider("cluster", context="offline")
on_cluster = pulumi.ResourceOptions(provider=cluster)
NS = "ems"

# Fine in an AWS stack; in a private stack the default provider is a violation.
k8s.core.v1.ConfigMap("default-provider-cm", metadata={"namespace": NS}, data={"mode": "demo"})
k8s.core.v1.Namespace("good-ns", metadata={"name": NS}, opts=on_cluster)
k8s.networking.v1.NetworkPolicy("good-default-deny", opts=on_cluster, metadata={"namespace": NS}, spec={
    "podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
k8s.networking.v1.NetworkPolicy("good-allow", opts=on_cluster, metadata={"namespace": NS}, spec={
    "podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}, "policyTypes": ["Ingress"],
    "ingress": [{"ports": [{"port": 8883, "protocol": "TCP"}]}]})

GOOD_CONTAINER = {
    "name": "app", "image": "ghcr.io/ems-platform/ingest:1.4.2",
    "security_context": {"allow_privilege_escalation": False, "read_only_root_filesystem": True,
                         "capabilities": {"drop": ["ALL"]}},
    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}},
}
GOOD_POD = {
    "automount_service_account_token": False,
    "security_context": {"run_as_non_root": True, "run_as_user": 10001, "seccomp_profile": {"type": "RuntimeDefault"}},
    "volumes": [{"name": "tls", "secret": {"secret_name": "tls", "default_mode": 0o440}}],
}
CONFIG_DIGEST = {"ems.io/config-sha256": "0" * 64}     # the pod mounts a Secret: a change must roll it


def deployment(name: str, container: dict | None = None, annotations: dict | None = None, **pod: object) -> None:
    c = copy.deepcopy(GOOD_CONTAINER)
    for key, value in (container or {}).items():
        if value is None:
            c.pop(key, None)
        elif key == "security_context":
            c["security_context"] = {**c["security_context"], **value}
        else:
            c[key] = value
    spec = {**copy.deepcopy(GOOD_POD), **pod, "containers": [c]}
    k8s.apps.v1.Deployment(name, opts=on_cluster, metadata={"namespace": NS}, spec={
        "selector": {"match_labels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name},
                                  "annotations": CONFIG_DIGEST if annotations is None else annotations}, "spec": spec}})


deployment("good-deploy")
deployment("good-digest", {"image": "ghcr.io/x/y@sha256:" + "0" * 64})
deployment("untagged-image", {"image": "ghcr.io/x/y"})
deployment("latest-image", {"image": "ghcr.io/x/y:latest"})
deployment("cap-net-admin", {"security_context": {"capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}}})
deployment("drop-missing", {"security_context": {"capabilities": {}}})
deployment("host-port", {"ports": [{"container_port": 1883, "host_port": 1883}]})
deployment("escalation-unset", {"security_context": {"allow_privilege_escalation": None}})
deployment("seccomp-unconfined", {"security_context": {"seccomp_profile": {"type": "Unconfined"}}})
deployment("seccomp-localhost", {"security_context": {"seccomp_profile": {"type": "Localhost",
                                                                          "localhost_profile": "p.json"}}})
deployment("root-uid", {"security_context": {"run_as_user": 0, "run_as_non_root": True}})
deployment("secret-0644", volumes=[{"name": "tls", "secret": {"secret_name": "tls", "default_mode": 420}}])
deployment("secret-default-mode-unset", volumes=[{"name": "tls", "secret": {"secret_name": "tls"}}])
deployment("pod-level-only-nonroot-container-root", {"security_context": {"run_as_non_root": False}})
deployment("writable-root", {"security_context": {"read_only_root_filesystem": False}})
deployment("no-limits", {"resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}})
deployment("ssh-port", {"ports": [{"container_port": 22, "name": "ssh"}]})
deployment("evil-registry", {"image": "ghcr.io.evil.example/x/y:1.0"})
deployment("config-no-rollout", annotations={})
deployment("good-config-reloader", {"name": "config-reloader", "volume_mounts": [{"name": "tls", "mount_path": "/tls"}]},
           annotations={},
           share_process_namespace=True)
deployment("unsafe-sysctl", security_context={**GOOD_POD["security_context"],
                                               "sysctls": [{"name": "kernel.msgmax", "value": "65536"}]})

k8s.rbac.v1.ClusterRole("wildcard-second-rule", opts=on_cluster, rules=[
    {"api_groups": [""], "resources": ["pods"], "verbs": ["get"]},
    {"api_groups": ["apps"], "resources": ["*"], "verbs": ["get"]}])
k8s.rbac.v1.ClusterRole("aggregated", opts=on_cluster, aggregation_rule={
    "cluster_role_selectors": [{"match_labels": {"rbac.example.com/aggregate": "true"}}]})
k8s.rbac.v1.ClusterRole("secret-reader", opts=on_cluster, rules=[
    {"api_groups": [""], "resources": ["secrets"], "verbs": ["list"]}])
k8s.rbac.v1.ClusterRoleBinding("admin-for-ci", opts=on_cluster, role_ref={
    "api_group": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
    subjects=[{"kind": "ServiceAccount", "name": "ci", "namespace": NS}])
k8s.core.v1.ServiceAccount("token-automount", opts=on_cluster, metadata={"namespace": NS})

k8s.core.v1.Service("nodeport-1883", opts=on_cluster, metadata={"namespace": NS}, spec={
    "type": "NodePort", "selector": {"app": "broker"}, "ports": [{"port": 1883}]})
k8s.core.v1.Service("lb-502-no-ranges", opts=on_cluster, metadata={
    "namespace": NS, "annotations": {"service.beta.kubernetes.io/aws-load-balancer-scheme": "internal"}},
    spec={"type": "LoadBalancer", "selector": {"app": "bridge"}, "ports": [{"port": 502}]})
k8s.core.v1.Service("lb-443-to-22", opts=on_cluster, metadata={"namespace": NS}, spec={
    "type": "LoadBalancer", "selector": {"app": "ssh-port"}, "ports": [{"port": 443, "target_port": 22}]})
k8s.core.v1.Service("good-lb-8883", opts=on_cluster, metadata={"namespace": NS}, spec={
    "type": "LoadBalancer", "selector": {"app": "broker"}, "ports": [{"port": 8883}]})

k8s.autoscaling.v2.HorizontalPodAutoscaler("thermal-no-cooldown", opts=on_cluster, metadata={
    "namespace": NS, "labels": {"ems.io/thermal-asset": "true"}}, spec={
    "scale_target_ref": {"api_version": "apps/v1", "kind": "Deployment", "name": "good-deploy"},
    "min_replicas": 1, "max_replicas": 3})

vpc_id = "vpc-0123456789abcdef0"
aws.ec2.SecurityGroup("sg-ssh-world", vpc_id=vpc_id, ingress=[
    {"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["0.0.0.0/0"]},
    {"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["0.0.0.0/0"]}])
aws.vpc.SecurityGroupIngressRule("sg-rule-all-v6", security_group_id="sg-1", ip_protocol="-1", cidr_ipv6="::/0")
aws.ec2.SecurityGroup("good-sg", vpc_id=vpc_id, ingress=[
    {"protocol": "tcp", "from_port": 8883, "to_port": 8883, "cidr_blocks": ["0.0.0.0/0"]}])
aws.eks.Cluster("eks-public-default", role_arn="arn:aws:iam::123456789012:role/eks",
                vpc_config={"subnet_ids": ["subnet-1", "subnet-2"]})
aws.kms.Key("kms-no-rotation", description="no rotation")
aws.ebs.Volume("ebs-unencrypted", availability_zone="eu-west-1a", size=10)
aws.globalaccelerator.Listener("ga-udp-all", accelerator_arn="arn:aws:globalaccelerator::1:accelerator/x",
                               protocol="UDP", port_ranges=[{"from_port": 1, "to_port": 65535}])

ca_key = tls.PrivateKey("good-ca-key", algorithm="ECDSA", ecdsa_curve="P384")
tls.PrivateKey("rsa-2048", algorithm="RSA", rsa_bits=2048)
tls.PrivateKey("ecdsa-default-curve", algorithm="ECDSA")
ca = tls.SelfSignedCert("good-ca", private_key_pem=ca_key.private_key_pem, is_ca_certificate=True,
                        validity_period_hours=87600, allowed_uses=["cert_signing", "crl_signing"],
                        subject={"common_name": "ems-ca"})
leaf_key = tls.PrivateKey("good-leaf-key", algorithm="ECDSA", ecdsa_curve="P256")
csr = tls.CertRequest("server-csr", private_key_pem=leaf_key.private_key_pem, dns_names=["mqtt.example.net"],
                      subject={"common_name": "mqtt.example.net"})
tls.LocallySignedCert("ten-year-leaf", cert_request_pem=csr.cert_request_pem, ca_private_key_pem=ca_key.private_key_pem,
                      ca_cert_pem=ca.cert_pem, validity_period_hours=87600,
                      allowed_uses=["digital_signature", "key_encipherment", "server_auth"])
tls.LocallySignedCert("server-without-server-auth", cert_request_pem=csr.cert_request_pem,
                      ca_private_key_pem=ca_key.private_key_pem, ca_cert_pem=ca.cert_pem, validity_period_hours=2160,
                      allowed_uses=["digital_signature", "key_encipherment", "client_auth"])
tls.LocallySignedCert("good-server-cert", cert_request_pem=csr.cert_request_pem,
                      ca_private_key_pem=ca_key.private_key_pem, ca_cert_pem=ca.cert_pem, validity_period_hours=2160,
                      allowed_uses=["digital_signature", "key_encipherment", "server_auth"])
aws.ec2.LaunchTemplate("imdsv1-template", block_device_mappings=[{
    "device_name": "/dev/xvda", "ebs": {"volume_size": 20, "encrypted": "true"}}])
