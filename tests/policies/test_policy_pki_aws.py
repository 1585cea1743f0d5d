"""mTLS/PKI (pulumi-tls) and AWS policies."""

from __future__ import annotations

import pytest

from policy_engine import UNKNOWN_BOOLEAN_VALUE, UNKNOWN_NUMBER_VALUE, UNKNOWN_STRING_VALUE, StackResource, check, \
    check_stack

KEY = "tls:index/privateKey:PrivateKey"
SELF = "tls:index/selfSignedCert:SelfSignedCert"
LOCAL = "tls:index/locallySignedCert:LocallySignedCert"
CSR = "tls:index/certRequest:CertRequest"


@pytest.mark.parametrize("props,ok", [
    ({"algorithm": "ECDSA", "ecdsaCurve": "P256"}, True),
    ({"algorithm": "ECDSA", "ecdsaCurve": "P384"}, True),
    ({"algorithm": "ECDSA", "ecdsaCurve": "P224"}, False),
    ({"algorithm": "ECDSA"}, False),
    ({"algorithm": "RSA", "rsaBits": 3072}, True),
    ({"algorithm": "RSA", "rsaBits": 2048}, False),
    ({"algorithm": "RSA"}, False),
    ({"algorithm": "ED25519"}, False),
])
def test_key_strength(props: dict, ok: bool) -> None:
    assert (check("tls-key-strength", KEY, props) == []) is ok


def test_key_strength_messages() -> None:
    assert check("tls-key-strength", KEY, {"algorithm": "RSA"}, name="ca-key") == [
        "PrivateKey 'ca-key': rsaBits is unset (pulumi-tls defaults to 2048); RSA keys need at least 3072 bits (or "
        "use ECDSA P256+)."]
    assert check("tls-key-strength", KEY, {"algorithm": "ECDSA"}, name="k") == [
        "PrivateKey 'k': ecdsaCurve is unset (pulumi-tls defaults to P224); use one of ['P256', 'P384', 'P521']."]
    assert "cannot verify rsaBits" in check("tls-key-strength", KEY, {"algorithm": "RSA",
                                                                       "rsaBits": UNKNOWN_NUMBER_VALUE})[0]
    assert check("tls-key-strength", KEY, {"algorithm": "ED25519"}, config={"allowEd25519": True}) == []


LEAF = {"validityPeriodHours": 2160, "allowedUses": ["digital_signature", "key_encipherment", "server_auth"],
        "certRequestPem": "-----BEGIN CERTIFICATE REQUEST-----"}


def test_leaf_lifetime() -> None:
    assert check("tls-cert-lifetime", LOCAL, LEAF) == []
    ten_years = dict(LEAF, validityPeriodHours=87600)
    assert check("tls-cert-lifetime", LOCAL, ten_years, name="broker") == [
        "LocallySignedCert 'broker': validityPeriodHours is 87600 (3650 days) for a leaf certificate; the maximum is "
        "9552 hours (398 days, policy config maxLeafValidityHours). Shorten it and renew before expiry instead."]
    assert check("tls-cert-lifetime", LOCAL, dict(LEAF, validityPeriodHours=9553))
    ca = {"isCaCertificate": True, "validityPeriodHours": 87600, "allowedUses": ["cert_signing"]}
    assert check("tls-cert-lifetime", SELF, ca) == []
    assert check("tls-cert-lifetime", SELF, dict(ca, validityPeriodHours=87601))
    assert "cannot verify isCaCertificate" in check("tls-cert-lifetime", LOCAL,
                                                    dict(LEAF, isCaCertificate=UNKNOWN_BOOLEAN_VALUE))[0]


def test_only_the_root_is_a_ca() -> None:
    ca = {"isCaCertificate": True, "validityPeriodHours": 43800, "allowedUses": ["cert_signing", "crl_signing"]}
    assert check("tls-ca-usage", SELF, ca) == []
    assert "intermediate CA" in check("tls-ca-usage", LOCAL, dict(LEAF, isCaCertificate=True,
                                                                  allowedUses=["cert_signing"]))[0]
    assert "lack cert_signing" in check("tls-ca-usage", SELF, dict(ca, allowedUses=["digital_signature"]))[0]
    assert "bypasses the EMS CA" in check("tls-ca-usage", SELF, dict(LEAF))[0]
    assert check("tls-ca-usage", LOCAL, dict(LEAF, allowedUses=["server_auth", "cert_signing"]), name="x") == [
        "LocallySignedCert 'x': a leaf certificate's allowedUses include ['cert_signing']; remove them (only the CA "
        "signs certificates)."]


def _pair(name: str, sans: dict, uses: list[str]) -> list[StackResource]:
    csr = StackResource(CSR, f"{name}-csr", {"subject": {"commonName": name}, **sans})
    cert = StackResource(LOCAL, name, dict(LEAF, allowedUses=uses), property_dependencies={"certRequestPem": [csr]})
    return [csr, cert]


def test_cert_purpose() -> None:
    assert check_stack("tls-cert-purpose", _pair("mqtt", {"dnsNames": ["broker.ems.svc"]},
                                                 ["digital_signature", "server_auth"])) == []
    assert check_stack("tls-cert-purpose", _pair("site-a", {}, ["digital_signature", "client_auth"])) == []
    wrong = _pair("mqtt", {"dnsNames": ["broker.ems.svc"]}, ["digital_signature", "client_auth"])
    assert check_stack("tls-cert-purpose", wrong) == [(
        "LocallySignedCert 'mqtt': is a server (it has DNS/IP SANs or a server name) certificate but allowedUses "
        "['digital_signature', 'client_auth'] lack server_auth; add server_auth (with digital_signature and "
        "key_encipherment).", wrong[1].urn)]
    client = _pair("edge-client", {}, ["digital_signature", "server_auth"])
    assert "lack client_auth" in check_stack("tls-cert-purpose", client)[0][0]
    unknown = _pair("mqtt", {"dnsNames": [UNKNOWN_STRING_VALUE]}, ["server_auth"])
    assert "cannot verify the certificate request's dnsNames" in check_stack("tls-cert-purpose", unknown)[0][0]
    lone = [StackResource(LOCAL, "x", dict(LEAF, allowedUses=["digital_signature"]))]
    assert "have neither server_auth nor client_auth" in check_stack("tls-cert-purpose", lone)[0][0]


EKS = "aws:eks/cluster:Cluster"
GOOD_EKS = {
    "vpcConfig": {"subnetIds": ["subnet-1"], "endpointPublicAccess": False, "endpointPrivateAccess": True},
    "encryptionConfig": {"provider": {"keyArn": UNKNOWN_STRING_VALUE}, "resources": ["secrets"]},
    "enabledClusterLogTypes": ["api", "audit", "authenticator", "controllerManager", "scheduler"],
}


@pytest.mark.parametrize("policy", ["eks-endpoint-not-public", "eks-secrets-encryption", "eks-control-plane-logging"])
def test_good_eks_cluster(policy: str) -> None:
    assert check(policy, EKS, GOOD_EKS) == []


def test_eks_endpoint_defaults_are_public() -> None:
    props = dict(GOOD_EKS, vpcConfig={"subnetIds": ["subnet-1"]})
    assert check("eks-endpoint-not-public", EKS, props, name="eu") == [
        "Cluster 'eu': vpcConfig.endpointPublicAccess is unset (defaults to true) and publicAccessCidrs is unset, "
        "which AWS defaults to 0.0.0.0/0; set endpointPublicAccess: false (with endpointPrivateAccess: true) or list "
        "the operator CIDRs in publicAccessCidrs."]
    open_ = dict(GOOD_EKS, vpcConfig={"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24",
                                                                                           "0.0.0.0/0"]})
    assert "include ['0.0.0.0/0']" in check("eks-endpoint-not-public", EKS, open_)[0]
    narrow = dict(GOOD_EKS, vpcConfig={"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]})
    assert check("eks-endpoint-not-public", EKS, narrow) == []
    unknown = dict(GOOD_EKS, vpcConfig={"endpointPublicAccess": UNKNOWN_BOOLEAN_VALUE})
    assert "cannot verify vpcConfig.endpointPublicAccess" in check("eks-endpoint-not-public", EKS, unknown)[0]


def test_eks_encryption_and_logging() -> None:
    assert "encryptionConfig is unset" in check("eks-secrets-encryption", EKS,
                                                {k: v for k, v in GOOD_EKS.items() if k != "encryptionConfig"})[0]
    listy = dict(GOOD_EKS, encryptionConfig=[{"provider": {"keyArn": "arn:aws:kms:x"}, "resources": ["configmaps"]}])
    assert "must include \"secrets\"" in check("eks-secrets-encryption", EKS, listy)[0]
    assert check("eks-control-plane-logging", EKS, dict(GOOD_EKS, enabledClusterLogTypes=["api"]), name="eu") == [
        "Cluster 'eu': enabledClusterLogTypes is ['api']; add ['audit', 'authenticator'] (policy config "
        "requiredLogTypes) so control-plane actions are audited."]


def test_ebs_and_launch_template_encryption() -> None:
    assert check("ebs-encryption", "aws:ebs/volume:Volume", {"size": 10, "encrypted": True}) == []
    assert check("ebs-encryption", "aws:ebs/volume:Volume", {"size": 10}, name="v") == [
        "Volume 'v': encrypted is unset; set encrypted: true (and a kmsKeyId)."]
    lt = "aws:ec2/launchTemplate:LaunchTemplate"
    assert check("ebs-encryption", lt, {"blockDeviceMappings": [{"deviceName": "/dev/xvda",
                                                                 "ebs": {"encrypted": "true"}}]}) == []
    assert check("ebs-encryption", lt, {"blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {}}]})


def test_storage_class_encryption() -> None:
    sc = "kubernetes:storage.k8s.io/v1:StorageClass"
    assert check("storageclass-ebs-encryption", sc, {"provisioner": "ebs.csi.aws.com",
                                                     "parameters": {"type": "gp3", "encrypted": "true"}}) == []
    assert check("storageclass-ebs-encryption", sc, {"provisioner": "ebs.csi.aws.com",
                                                     "parameters": {"type": "gp3"}}, name="gp3") == [
        "StorageClass 'gp3': provisioner ebs.csi.aws.com with parameters.encrypted unset; set parameters.encrypted: "
        "\"true\" (and kmsKeyId) so EBS volumes are encrypted."]
    assert check("storageclass-ebs-encryption", sc, {"provisioner": "kubernetes.io/aws-ebs",
                                                     "parameters": {"encrypted": "false"}})
    assert check("storageclass-ebs-encryption", sc, {"provisioner": "driver.longhorn.io"}) == []


def test_kms_rotation() -> None:
    key = "aws:kms/key:Key"
    assert check("kms-key-rotation", key, {"enableKeyRotation": True}) == []
    assert check("kms-key-rotation", key, {"description": "eks"}, name="k") == [
        "Key 'k': enableKeyRotation is unset (false); set it to true."]
    assert check("kms-key-rotation", key, {"customerMasterKeySpec": "RSA_4096"}) == []


LT = "aws:ec2/launchTemplate:LaunchTemplate"


def test_launch_template_imdsv2() -> None:
    assert check("launch-template-imdsv2", LT, {"metadataOptions": {"httpTokens": "required",
                                                                   "httpEndpoint": "enabled"}}) == []
    assert check("launch-template-imdsv2", LT, {}, name="lt") == [
        "LaunchTemplate 'lt': metadataOptions.httpTokens is unset (IMDSv1 allowed); set httpTokens: required (IMDSv2) "
        "and httpPutResponseHopLimit: 1 so pods cannot steal the node role's credentials."]
    assert check("launch-template-imdsv2", LT, {"metadataOptions": {"httpTokens": "optional"}})
    assert check("launch-template-imdsv2", LT, {"metadataOptions": {"httpEndpoint": "disabled"}}) == []


def _sysctl_stack(user_data: str | None) -> list[StackResource]:
    import base64

    from workload_fixtures import KIND_TYPES, pod_spec, workload

    spec = pod_spec()
    spec["securityContext"]["sysctls"] = [{"name": "net.core.somaxconn", "value": "1024"},
                                          {"name": "net.ipv4.tcp_fin_timeout", "value": "15"}]
    out = [StackResource(KIND_TYPES["Deployment"], "ingest", workload(spec=spec))]
    deps = []
    if user_data is not None:
        lt = StackResource(LT, "lt", {"userData": base64.b64encode(user_data.encode()).decode()})
        out.append(lt)
        deps = [lt]
    out.append(StackResource("aws:eks/nodeGroup:NodeGroup", "general", {"clusterName": "c"},
                             property_dependencies={"launchTemplate": deps}))
    return out


def test_node_groups_allow_unsafe_sysctls() -> None:
    allowing = "kind: NodeConfig\nspec:\n  kubelet:\n    config:\n      allowedUnsafeSysctls:\n        - net.core.somaxconn\n"
    assert check_stack("node-unsafe-sysctls-allowed", _sysctl_stack(allowing)) == []
    found = check_stack("node-unsafe-sysctls-allowed", _sysctl_stack("#!/bin/bash\n"))
    assert [m for m, _ in found] == [
        "NodeGroup 'general': its launch template's user data does not allow ['net.core.somaxconn'], which pods set "
        "(e.g. ingest); add them to the kubelet's allowedUnsafeSysctls or the pods fail with SysctlForbidden."]
    assert "has no launch template" in check_stack("node-unsafe-sysctls-allowed", _sysctl_stack(None))[0][0]


CM = "kubernetes:cert-manager.io/v1:Certificate"


def test_cert_manager_certificates() -> None:
    good = {"spec": {"secretName": "s", "duration": "2160h", "privateKey": {"algorithm": "ECDSA", "size": 256},
                     "dnsNames": ["mqtt.example.net"], "issuerRef": {"name": "ca"}}}
    assert check("tls-key-strength", CM, good) == []
    assert check("tls-cert-lifetime", CM, good) == []
    default_key = {"spec": {"secretName": "s", "issuerRef": {"name": "ca"}}}
    assert check("tls-key-strength", CM, default_key, name="c") == [
        "Certificate 'c': spec.privateKey is RSA with size unset (cert-manager defaults to 2048); RSA keys need at "
        "least 3072 bits (or use algorithm: ECDSA, size: 256)."]
    assert check("tls-cert-lifetime", CM, default_key) == []  # the default is 90 days
    long = {"spec": {"duration": "87600h0m0s", "privateKey": {"algorithm": "ECDSA", "size": 384}}}
    assert check("tls-cert-lifetime", CM, long, name="c") == [
        "Certificate 'c': spec.duration is '87600h0m0s' (3650 days) for a leaf certificate; the maximum is 9552 hours "
        "(398 days, policy config maxLeafValidityHours). Shorten it and renew before expiry instead."]
    assert check("tls-cert-lifetime", CM, {"spec": {"duration": "365d"}})  # not a Go duration: rejected
    assert check("tls-key-strength", CM, {"spec": {"privateKey": {"algorithm": "ECDSA", "size": 224}}})
    assert check("tls-cert-lifetime", CM, {"spec": {"duration": UNKNOWN_STRING_VALUE}})
