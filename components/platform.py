"""EmsPlatform: everything the EMS needs inside one Kubernetes cluster, on any provider.

It composes the per-area components (PKI, storage class, TSDB with the alert rules, Alertmanager, broker,
protocol gateway, ingest + autoscaling, twin read API, API gateway, Grafana, NetworkPolicies, RBAC). The caller passes the cluster's
Kubernetes provider with ``providers=[provider]``; every child inherits it, so the same
component runs on EKS, a private cluster, or the local renderer.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.alertmanager import PORT as ALERTMANAGER_PORT, Alertmanager, AlertmanagerArgs
from components.alerts import alert_rules
from components.api_gateway import IDENTITY_HEADERS, ApiGateway, ApiGatewayArgs
from components.broker import RESERVED_IDENTITY, MqttBroker, BrokerArgs
from components.ems_gateway import APP as GATEWAY_APP, HTTP_PORT as GATEWAY_HTTP_PORT, EmsGateway, EmsGatewayArgs
from components.grafana import Grafana, GrafanaArgs
from components.ingest import SHARED_GROUP, IngestArgs, IngestWorkers, worker_identities
from components.k8s_common import ComponentArgsError, child, content_digest, labels
from components.metrics_adapter import MetricsAdapter, MetricsAdapterArgs
from components.network_policy import NetworkPolicies, NetworkPoliciesArgs
from components.northbound import (
    COMMANDS_SERVICE as NORTHBOUND_COMMANDS, COMMANDS_TLS_SECRET as NORTHBOUND_COMMANDS_TLS, NorthboundArgs,
    NorthboundClient, northbound_commands_host, northbound_metrics_target,
)
from components.pki import ClientCert, Pki, PkiArgs, ServerCert
from components.rbac import AccessControl, AccessControlArgs
from components.settings import PlatformSettings
from components.tsdb import AlertingTargets, Tsdb, TsdbArgs
from components.twin_api import METRICS_SERVICE as TWIN_API_METRICS_SERVICE, PORT as TWIN_API_PORT, REPLICAS as TWIN_API_REPLICAS, TwinApi, TwinApiArgs, replica_identities

# Prefix of the MQTT identities (certificate CN = username = client id) of the in-cluster clients. It does not
# follow ems:namespace: a site id or a worker's identity stays the same when the workloads move namespace.
IDENTITY_PREFIX = "ems"
AWS_EBS_PARAMETERS = {"type": "gp3", "encrypted": "true", "csi.storage.k8s.io/fstype": "ext4"}


@dataclass(frozen=True)
class EmsPlatformArgs:
    settings: PlatformSettings
    """Validated platform settings (``ems:`` config)."""
    cloud: str
    """``aws``, ``private`` or ``local``: selects storage parameters and how 8883/443 are exposed."""
    storage_kms_key_arn: pulumi.Input[str] | None = None
    """AWS only: KMS key for EBS volume encryption. Defaults to the account's EBS default key."""


class EmsPlatform(pulumi.ComponentResource):
    """Namespaces, PKI, storage, workloads, NetworkPolicies and RBAC of one region."""

    namespace: pulumi.Output[str]
    ca_cert_pem: pulumi.Output[str]
    """The trust bundle: the signing CA plus ``ems:additionalCaCertificates`` (the stack output ``ca_bundle_pem``)."""
    storage_class_name: pulumi.Output[str]
    broker_service_name: pulumi.Output[str]
    broker_external_service_name: pulumi.Output[str]
    api_gateway_service_name: pulumi.Output[str]
    edge_client_secrets: pulumi.Output[dict[str, str]]

    def __init__(self, name: str, args: EmsPlatformArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        s = args.settings
        if args.cloud not in ("aws", "private", "local"):
            raise ComponentArgsError(name, "cloud", args.cloud, "must be aws, private or local")
        if args.cloud == "aws" and s.storage_provisioner != "ebs.csi.aws.com":
            raise ComponentArgsError(name, "settings.storage_provisioner", s.storage_provisioner, "must be ebs.csi.aws.com on AWS")
        # Certificate identities (CN = MQTT username = client id, components/broker.py): one per ingest worker up to
        # the HPA's maximum and one per twin API replica, so that a session belongs to one certificate.
        bridge_site, ingest_identity = f"{IDENTITY_PREFIX}-bridge", f"{IDENTITY_PREFIX}-ingest"
        twin_identity = f"{IDENTITY_PREFIX}-twin-api"
        ingest_workers = worker_identities(ingest_identity, s.ingest_max_replicas)
        twin_replicas = replica_identities(twin_identity, TWIN_API_REPLICAS)
        # Reserved whether or not ems:northbound is set, so that no edge site takes its name first; the only identity
        # the broker lets publish commands, for ems:northbound's sites (components/broker.py).
        northbound_identity = f"{IDENTITY_PREFIX}-northbound"
        # The API gateway's client certificate towards the twin API, the only caller the twin API serves.
        gateway_identity = f"{IDENTITY_PREFIX}-api-gateway"
        for site in s.edge_sites:
            for reserved, family, why in ((bridge_site, False, "the protocol gateway (ems-gateway)"),
                                          (ingest_identity, True, "the ingest workers"),
                                          (twin_identity, True, "the twin read API"),
                                          (northbound_identity, True, "the north-bound client"),
                                          (gateway_identity, False, "the API gateway's client certificate"),
                                          (RESERVED_IDENTITY, False, "dead letters (ems/v1/deadletter/)")):
                if site == reserved or (family and site.startswith(f"{reserved}-")):
                    raise ComponentArgsError(name, "settings.edge_sites", site, f"is reserved for {why}")
        super().__init__("ems:platform:EmsPlatform", name, None, opts)
        o = child(self)
        ns_name, creds_name = s.namespace, f"{s.namespace}-edge-credentials"
        # Pod Security "baseline"/"restricted" reject the unsafe sysctl net.core.somaxconn that
        # the ingest tier sets (DESIGN §5), so the workload namespace warns and audits against
        # "restricted" instead of enforcing it; the policy packs enforce the hardening.
        pss_audit = {"pod-security.kubernetes.io/warn": "restricted", "pod-security.kubernetes.io/audit": "restricted"}
        pss_enforce = {"pod-security.kubernetes.io/enforce": "restricted", **pss_audit}
        ns = k8s.core.v1.Namespace(f"{name}-ns", metadata={"name": ns_name, "labels": {**labels("ems"), **pss_audit}}, opts=o)
        creds = k8s.core.v1.Namespace(f"{name}-credentials-ns", metadata={"name": creds_name, "labels": {**labels("ems-edge-credentials"), **pss_enforce}}, opts=o)
        namespace = ns.metadata.name

        parameters = dict(s.storage_parameters)
        if args.cloud == "aws":
            parameters = {**AWS_EBS_PARAMETERS, **parameters}
            if args.storage_kms_key_arn is not None:
                parameters["kmsKeyId"] = args.storage_kms_key_arn  # type: ignore[assignment]
        storage = k8s.storage.v1.StorageClass(
            f"{name}-storage",
            metadata={"name": s.storage_class_name, "labels": labels("storage")},
            provisioner=s.storage_provisioner,
            parameters=parameters or None,
            volume_binding_mode="WaitForFirstConsumer",
            allow_volume_expansion=True,
            reclaim_policy="Retain",
            opts=o,
        )
        storage_class = storage.metadata.name

        svc_names = lambda svc: (svc, f"{svc}.{ns_name}", f"{svc}.{ns_name}.svc", f"{svc}.{ns_name}.svc.cluster.local")  # noqa: E731
        early = min(720, s.cert_validity_hours // 3)
        pki = Pki(f"{name}-pki", PkiArgs(
            namespace=namespace,
            client_namespace=creds.metadata.name,
            servers=(
                ServerCert("broker", s.broker_hostnames[0] if s.broker_hostnames else f"broker.{ns_name}.svc",
                           (*s.broker_hostnames, *svc_names("broker"), *svc_names("broker-external")), "broker-tls"),
                ServerCert("api-gateway", s.api_hostnames[0] if s.api_hostnames else f"api-gateway.{ns_name}.svc",
                           (*s.api_hostnames, *svc_names("api-gateway")), "api-gateway-tls"),
                ServerCert("metrics-adapter", f"metrics-adapter.{ns_name}.svc", svc_names("metrics-adapter"), "metrics-adapter-tls"),
                ServerCert("twin-api", f"twin-api.{ns_name}.svc", svc_names("twin-api"), "twin-api-tls"),
                *((ServerCert("northbound-commands", f"{NORTHBOUND_COMMANDS}.{ns_name}.svc", svc_names(NORTHBOUND_COMMANDS),
                              NORTHBOUND_COMMANDS_TLS),) if s.northbound else ()),
            ),
            edge_sites=s.edge_sites,
            service_clients=(ClientCert("api-gateway-client", gateway_identity, "api-gateway-client-tls"),),
            # Client certificates of in-cluster MQTT clients, Secret edge-<identity>-tls in the namespace.
            in_cluster_clients=(*ingest_workers, *twin_replicas, *((bridge_site,) if s.modbus_gateways else ()),
                                *((northbound_identity,) if s.northbound else ())),
            leaf_validity_hours=s.cert_validity_hours,
            ca_validity_hours=s.ca_validity_hours,
            early_renewal_hours=early,
            ca_cert_pem=s.ca_certificate,
            ca_private_key_pem=s.ca_private_key,
            additional_ca_certificates=s.additional_ca_certificates,
        ), opts=o)

        def rolls_on(*secrets: str) -> pulumi.Input[str]:
            """A digest of these Secrets' certificates and the trust bundle: in a pod template, a new certificate or
            bundle rolls the pods (Mosquitto and nginx read them only at start; the rolling update keeps them serving)."""
            return content_digest({"ca.crt": pki.ca_bundle_pem, **{f"{n}/tls.crt": pki.certificates[n] for n in secrets}})
        external_type = "ClusterIP" if args.cloud == "aws" else "LoadBalancer"
        tsdb = Tsdb(f"{name}-tsdb", TsdbArgs(
            namespace=namespace, image=s.images.tsdb, storage_class=storage_class,
            namespace_name=ns_name,
            out_of_order_window=s.spool_horizon, retention=s.tsdb_retention, storage_size=s.tsdb_storage_size,
            query_timeout_seconds=s.api_auth.promql_timeout_seconds, query_max_samples=s.api_auth.promql_max_samples,
            twin_api_scrape_service=TWIN_API_METRICS_SERVICE,
            alerting=AlertingTargets(
                rules=alert_rules(s.alerts, s.ingest_max_replicas),
                alertmanager=f"alertmanager.{ns_name}.svc.cluster.local:{ALERTMANAGER_PORT}",
                gateway=f"{GATEWAY_APP}.{ns_name}.svc.cluster.local:{GATEWAY_HTTP_PORT}" if s.modbus_gateways else None,
                gateway_site=bridge_site),
            northbound_metrics=northbound_metrics_target(ns_name) if s.northbound else None,
        ), opts=o)
        Alertmanager(f"{name}-alertmanager", AlertmanagerArgs(
            namespace=namespace, image=s.images.alertmanager, receivers=s.alert_receivers,
            receiver_urls=s.alert_receiver_urls,
        ), opts=o)
        broker = MqttBroker(f"{name}-broker", BrokerArgs(
            namespace=namespace, image=s.images.broker, tls_secret="broker-tls", storage_class=storage_class,
            ingest_identities=ingest_workers, ingest_group=SHARED_GROUP, twin_identities=twin_replicas,
            northbound_identities=(northbound_identity,) if s.northbound else (),
            northbound_sites=s.northbound.sites if s.northbound else (),
            clients=(*s.edge_sites, *((bridge_site,) if s.modbus_gateways else ())),
            storage_size=s.broker_storage_size, external_service_type=external_type,
            tls_digest=rolls_on("broker-tls"),
        ), opts=pulumi.ResourceOptions(parent=self, depends_on=[pki]))
        if s.modbus_gateways:  # no RS-485 gateway configured: nothing to poll
            EmsGateway(f"{name}-bridge", EmsGatewayArgs(
                namespace=namespace, image=s.images.edge_agent, site=bridge_site,
                broker_host=f"broker.{ns_name}.svc.cluster.local", tls_secret=f"edge-{bridge_site}-tls",
                storage_class=storage_class, gateways=s.modbus_gateways,
            ), opts=pulumi.ResourceOptions(parent=self, depends_on=[pki]))
        IngestWorkers(f"{name}-ingest", IngestArgs(
            namespace=namespace, image=s.images.ingest, broker_host=f"broker.{ns_name}.svc.cluster.local",
            identity=ingest_identity, tls_secrets=tuple(f"edge-{cn}-tls" for cn in ingest_workers),
            remote_write_url=f"http://tsdb.{ns_name}.svc.cluster.local:9090/api/v1/write", storage_class=storage_class,
            min_replicas=s.ingest_min_replicas, max_replicas=s.ingest_max_replicas,
            target_messages_per_second=s.ingest_target_messages_per_second,
            scale_down_stabilization_seconds=s.ingest_scale_down_stabilization_seconds,
            reading_window=s.spool_horizon,
        ), opts=pulumi.ResourceOptions(parent=self, depends_on=[pki]))
        MetricsAdapter(f"{name}-adapter", MetricsAdapterArgs(
            namespace=namespace, image=s.images.metrics_adapter, prometheus_url=tsdb.query_url,
            tls_secret="metrics-adapter-tls", ca_cert_pem=pki.ca_bundle_pem, tls_digest=rolls_on("metrics-adapter-tls"),
        ), opts=pulumi.ResourceOptions(parent=self, depends_on=[pki]))
        TwinApi(f"{name}-twin", TwinApiArgs(
            namespace=namespace, image=s.images.ingest, broker_host=f"broker.{ns_name}.svc.cluster.local",
            replicas=TWIN_API_REPLICAS, mqtt_tls_secrets=tuple(f"edge-{cn}-tls" for cn in twin_replicas),
            server_tls_secret="twin-api-tls",
            tsdb_url=f"http://tsdb.{ns_name}.svc.cluster.local:9090", auth=s.api_auth, caller_identity=gateway_identity,
            alertmanager_url=f"http://alertmanager.{ns_name}.svc.cluster.local:{ALERTMANAGER_PORT}",
            max_connections=s.twin_api_max_connections, request_timeout_s=s.twin_api_request_timeout_s,
        ), opts=pulumi.ResourceOptions(parent=self, depends_on=[pki]))
        gateway = ApiGateway(f"{name}-api", ApiGatewayArgs(
            namespace=namespace, image=s.images.api_gateway, tls_secret="api-gateway-tls",
            upstream_client_secret="api-gateway-client-tls", tls_digest=rolls_on("api-gateway-tls", "api-gateway-client-tls"),
            tsdb_host=f"tsdb.{ns_name}.svc.cluster.local", replicas=s.api_gateway_replicas,
            twin_api_host=f"twin-api.{ns_name}.svc.cluster.local", twin_api_port=TWIN_API_PORT,
            external_service_type=external_type, auth=s.api_auth,
            grafana_host=f"grafana.{ns_name}.svc.cluster.local" if s.grafana.enabled else None,
            alertmanager_host=f"alertmanager.{ns_name}.svc.cluster.local",
            northbound_host=northbound_commands_host(ns_name) if s.northbound else None,
        ), opts=pulumi.ResourceOptions(parent=self, depends_on=[pki]))
        if s.northbound is not None:   # the IEEE 2030.5 client, only where a utility server is configured
            NorthboundClient(f"{name}-northbound", NorthboundArgs(
                namespace=namespace, image=s.images.northbound, settings=s.northbound,
                broker_host=f"broker.{ns_name}.svc.cluster.local", broker_tls_secret=f"edge-{northbound_identity}-tls",
                identity=northbound_identity, commands_tls_secret=NORTHBOUND_COMMANDS_TLS, caller_identity=gateway_identity,
                tls_digest=rolls_on(f"edge-{northbound_identity}-tls"),
            ), opts=pulumi.ResourceOptions(parent=self, depends_on=[pki]))
        if s.grafana.enabled:      # behind the gateway at /grafana/, users from its auth-proxy headers
            api_host = s.api_hostnames[0] if s.api_hostnames else f"api-gateway.{ns_name}.svc"
            Grafana(f"{name}-grafana", GrafanaArgs(
                namespace=namespace, image=s.images.grafana, tsdb_url=f"http://tsdb.{ns_name}.svc.cluster.local:9090",
                root_url=s.grafana.root_url or f"https://{api_host}/grafana/", user_header=IDENTITY_HEADERS["user"],
                role_header=IDENTITY_HEADERS["grafana_role"], admin_password=s.grafana.admin_password, replicas=s.grafana.replicas,
            ), opts=o)
        NetworkPolicies(f"{name}-netpol", NetworkPoliciesArgs(
            namespace=namespace, extra_namespaces=(("credentials", creds.metadata.name),), gateways=s.modbus_gateways,
            identity_provider=s.api_auth.oidc is not None,
        ), opts=o)
        AccessControl(f"{name}-rbac", AccessControlArgs(
            namespace=namespace, operator_groups=s.operator_groups, viewer_groups=s.viewer_groups,
        ), opts=o)

        self.namespace = namespace
        self.ca_cert_pem = pki.ca_bundle_pem
        self.storage_class_name = storage_class
        self.broker_service_name = broker.service_name
        self.broker_external_service_name = broker.external_service_name
        self.api_gateway_service_name = gateway.service_name
        self.edge_client_secrets = pki.client_secrets
        self.register_outputs({
            "namespace": self.namespace,
            "ca_cert_pem": self.ca_cert_pem,
            "storage_class_name": self.storage_class_name,
            "broker_service_name": self.broker_service_name,
            "broker_external_service_name": self.broker_external_service_name,
            "api_gateway_service_name": self.api_gateway_service_name,
            "edge_client_secrets": self.edge_client_secrets,
        })
