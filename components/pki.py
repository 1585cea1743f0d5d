"""mTLS PKI with pulumi-tls: a root CA, server certificates, one client certificate per edge site.

Keys are ECDSA P-384 (the CA) and P-256 (leaves); the key PEMs are secret outputs of
``tls.PrivateKey`` and reach the cluster only as ``kubernetes.io/tls`` Secrets. The only
public output is the CA bundle edge sites trust.

Trust is a bundle: the signing CA plus ``additional_ca_certificates`` (the old or the next CA
of a rotation). Every Secret's ``ca.crt`` is that bundle, so every verifier that reads it (the
broker's ``cafile``, nginx's client and upstream checks, the twin API's ``client_ca``, the ingest's
and agents' ``broker.ca``) accepts leaves of either CA while both are listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pulumi
import pulumi_kubernetes as k8s
import pulumi_tls as tls

from components.k8s_common import ComponentArgsError, child, metadata
from components.settings import LEAF_MAX_HOURS

SERVER_USES = ["digital_signature", "key_encipherment", "server_auth"]
CLIENT_USES = ["digital_signature", "key_encipherment", "client_auth"]


@dataclass(frozen=True)
class ServerCert:
    """A server certificate: stored as Secret ``secret_name`` in ``namespace``."""

    role: str
    common_name: str
    dns_names: tuple[str, ...]
    secret_name: str


@dataclass(frozen=True)
class ClientCert:
    """A service's client certificate (CN ``common_name``, client auth): stored as Secret ``secret_name`` in ``namespace``."""

    role: str
    common_name: str
    secret_name: str


@dataclass(frozen=True)
class PkiArgs:
    namespace: pulumi.Input[str]
    """Namespace of the server-certificate Secrets."""
    client_namespace: pulumi.Input[str]
    """Namespace of the per-site client-certificate Secrets (kept apart from the workloads)."""
    servers: tuple[ServerCert, ...]
    """Server certificates to issue (broker, API gateway)."""
    edge_sites: tuple[str, ...] = ()
    """Edge site ids; each gets a client certificate with CN = site id, in ``client_namespace``. Defaults to none."""
    in_cluster_clients: tuple[str, ...] = ()
    """Client identities used by in-cluster workloads (e.g. ems-gateway), stored in ``namespace``. Defaults to none."""
    service_clients: tuple[ClientCert, ...] = ()
    """Client certificates of services that call other services over mTLS (the API gateway towards the twin API),
    stored in ``namespace``. Defaults to none."""
    organization: str = "ems-platform"
    """Subject organisation of every certificate. Defaults to ``ems-platform``."""
    leaf_validity_hours: int = 2160
    """Validity of server and client certificates. Defaults to 2160 (90 days); at most 398 days."""
    ca_validity_hours: int = 87600
    """Validity of the root CA. Defaults to 87600 (10 years)."""
    early_renewal_hours: int = 720
    """Re-issue leaves this long before expiry on the next ``pulumi up``. Defaults to 720 (30 days)."""
    ca_cert_pem: pulumi.Input[str] | None = None
    """A shared CA certificate to sign with (with ``ca_private_key_pem``). Defaults to a CA generated here."""
    ca_private_key_pem: pulumi.Input[str] | None = None
    """The shared CA's key (a secret). Defaults to none (generate the CA)."""
    additional_ca_certificates: tuple[pulumi.Input[str], ...] = ()
    """CA certificates (PEM, one each) trusted beside the signing CA: in every ``ca.crt`` and the bundle. Defaults to none."""


def ca_bundle(signing_ca: str, additional: Sequence[str] = ()) -> str:
    """The trust bundle: the signing CA first, then each additional CA, one PEM after another."""
    return "".join(pem.strip() + "\n" for pem in (signing_ca, *additional))


class Pki(pulumi.ComponentResource):
    """Root CA + server and client certificates, stored as ``kubernetes.io/tls`` Secrets."""

    ca_cert_pem: pulumi.Output[str]
    ca_bundle_pem: pulumi.Output[str]
    server_secrets: pulumi.Output[dict[str, str]]
    client_secrets: pulumi.Output[dict[str, str]]
    certificates: dict[str, pulumi.Output[str]]
    """Secret name → the certificate (PEM) in its ``tls.crt``, for a pod template's ``ems.io/tls-sha256``
    (``k8s_common.content_digest``)."""

    def __init__(self, name: str, args: PkiArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        validate_pki_args(name, args)
        super().__init__("ems:pki:Pki", name, None, opts)
        o = child(self)
        if args.ca_cert_pem is not None and args.ca_private_key_pem is not None:
            # One CA across regions: a site's certificate works behind the global load balancer.
            self._ca_cert_pem = pulumi.Output.from_input(args.ca_cert_pem)
            self._ca_key_pem = pulumi.Output.secret(args.ca_private_key_pem)
        else:
            ca_key = tls.PrivateKey(f"{name}-ca-key", algorithm="ECDSA", ecdsa_curve="P384", opts=o)
            ca = tls.SelfSignedCert(
                f"{name}-ca",
                private_key_pem=ca_key.private_key_pem,
                is_ca_certificate=True,
                subject={"common_name": f"{args.organization} root CA", "organization": args.organization},
                validity_period_hours=args.ca_validity_hours,
                early_renewal_hours=args.early_renewal_hours,
                allowed_uses=["cert_signing", "crl_signing", "digital_signature"],
                opts=o,
            )
            self._ca_cert_pem, self._ca_key_pem = ca.cert_pem, ca_key.private_key_pem
        self.ca_cert_pem = self._ca_cert_pem
        self.ca_bundle_pem = pulumi.Output.all(self._ca_cert_pem, *args.additional_ca_certificates).apply(
            lambda pems: ca_bundle(pems[0], pems[1:]))
        self.certificates = {}

        servers: dict[str, str] = {}
        for server in args.servers:
            self._issue(f"{name}-{server.role}", args, server.common_name, server.dns_names, SERVER_USES,
                        server.secret_name, args.namespace, server.role)
            servers[server.role] = server.secret_name
        clients: dict[str, str] = {}
        for site in args.edge_sites:
            secret = f"edge-{site}-tls"
            self._issue(f"{name}-site-{site}", args, site, (), CLIENT_USES, secret, args.client_namespace, "edge-client", site=site)
            clients[site] = secret
        for client_id in args.in_cluster_clients:
            self._issue(f"{name}-client-{client_id}", args, client_id, (), CLIENT_USES, f"edge-{client_id}-tls", args.namespace, "edge-client", site=client_id)
        for client in args.service_clients:
            self._issue(f"{name}-{client.role}", args, client.common_name, (), CLIENT_USES, client.secret_name,
                        args.namespace, client.role)

        self.server_secrets = pulumi.Output.from_input(servers)
        self.client_secrets = pulumi.Output.from_input(clients)
        self.register_outputs({"ca_cert_pem": self.ca_cert_pem, "ca_bundle_pem": self.ca_bundle_pem,
                               "server_secrets": self.server_secrets, "client_secrets": self.client_secrets})

    def _issue(self, prefix: str, args: PkiArgs, common_name: str, dns_names: Sequence[str], uses: list[str],
               secret_name: str, namespace: pulumi.Input[str], app: str, site: str | None = None) -> None:
        o = child(self)
        key = tls.PrivateKey(f"{prefix}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=o)
        csr = tls.CertRequest(
            f"{prefix}-csr",
            private_key_pem=key.private_key_pem,
            subject={"common_name": common_name, "organization": args.organization},
            dns_names=list(dns_names) or None,
            opts=o,
        )
        cert = tls.LocallySignedCert(
            f"{prefix}-cert",
            cert_request_pem=csr.cert_request_pem,
            ca_private_key_pem=self._ca_key_pem,
            ca_cert_pem=self._ca_cert_pem,
            validity_period_hours=args.leaf_validity_hours,
            early_renewal_hours=args.early_renewal_hours,
            allowed_uses=uses,
            opts=o,
        )
        extra = {"ems.io/edge-site": site} if site else {}
        k8s.core.v1.Secret(
            f"{prefix}-secret",
            metadata=metadata(secret_name, namespace, app, **extra),
            type="kubernetes.io/tls",
            string_data={
                "tls.crt": cert.cert_pem,
                "tls.key": pulumi.Output.secret(key.private_key_pem),
                "ca.crt": self.ca_bundle_pem,
            },
            opts=o,
        )
        self.certificates[secret_name] = cert.cert_pem


def validate_pki_args(name: str, args: PkiArgs) -> None:
    """Raise ComponentArgsError for contradictory PKI arguments (before any child exists)."""
    if not 1 <= args.leaf_validity_hours <= LEAF_MAX_HOURS:
        raise ComponentArgsError(name, "leaf_validity_hours", args.leaf_validity_hours, f"must be 1..{LEAF_MAX_HOURS} (398 days)")
    if args.leaf_validity_hours > args.ca_validity_hours:
        raise ComponentArgsError(name, "leaf_validity_hours", args.leaf_validity_hours, "must not exceed ca_validity_hours")
    if args.early_renewal_hours >= args.leaf_validity_hours:
        raise ComponentArgsError(name, "early_renewal_hours", args.early_renewal_hours, "must be shorter than leaf_validity_hours")
    if (args.ca_cert_pem is None) != (args.ca_private_key_pem is None):
        raise ComponentArgsError(name, "ca_cert_pem", "(set)" if args.ca_cert_pem is not None else None,
                                 "and ca_private_key_pem must be given together")
    roles = [s.role for s in (*args.servers, *args.service_clients)]
    if len(set(roles)) != len(roles):
        raise ComponentArgsError(name, "servers", roles, "must have distinct roles (service_clients included)")
    for server in args.servers:
        if not server.dns_names:
            raise ComponentArgsError(name, f"servers[{server.role}].dns_names", server.dns_names, "must name at least one DNS SAN")
    identities = (*args.edge_sites, *args.in_cluster_clients, *(c.common_name for c in args.service_clients))
    if len(set(identities)) != len(identities):
        raise ComponentArgsError(name, "edge_sites", identities, "must be unique (including in_cluster_clients and service_clients)")
