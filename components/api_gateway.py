"""The API gateway: Envoy terminating TLS on 443 and exposing the read-only PromQL and twin APIs.

Envoy runs as a non-root user with every capability dropped; binding 443 is allowed by the
*safe* namespaced sysctl ``net.ipv4.ip_unprivileged_port_start=443`` instead of
``NET_BIND_SERVICE``. Routes (the path without its query string must match exactly):

* ``/api/v1/query``, ``query_range``, ``query_exemplars``, ``series``, ``labels``,
  ``label/<name>/values`` → the TSDB (plain HTTP inside the namespace); remote write and admin
  paths are not routed.
* ``/v1/assets/<site>`` and ``/v1/assets/<site>/<asset>``, ``/v1/query`` → the twin API
  (``components/twin_api.py``) over upstream TLS: Envoy verifies the twin API's certificate
  against the platform CA (``ca.crt`` of the gateway's own Secret) and its DNS SAN, and sends
  that name as SNI.
* ``/healthz`` → 200 from Envoy itself. Anything else: 404.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.k8s_common import (
    ComponentArgsError, Resources, child, config_volume, container, empty_dir, metadata, pod_spec,
    secret_volume, selector, template_metadata,
)

APP = "api-gateway"
PORT = 443


TLS_DIR = "/etc/envoy/tls"
TWIN_ROUTE = r"^/v1/(assets/[^/]+(/[^/]+)?|query)$"
"""Paths routed to the twin API (``/v1/assets/<site>[/<asset>]`` and its PromQL pass-through ``/v1/query``)."""


def _twin_route() -> str:
    return f"""
                        - match: {{safe_regex: {{regex: "{TWIN_ROUTE}"}}}}
                          route: {{cluster: twin_api, timeout: 30s}}"""


def _twin_cluster(host: str, port: int) -> str:
    """Upstream TLS to the twin API: the CA verified, the Service name as SNI and as the required DNS SAN."""
    return f"""
    - name: twin_api
      type: STRICT_DNS
      connect_timeout: 2s
      load_assignment:
        cluster_name: twin_api
        endpoints:
          - lb_endpoints:
              - endpoint: {{address: {{socket_address: {{address: {host}, port_value: {port}}}}}}}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          sni: {host}
          common_tls_context:
            tls_params: {{tls_minimum_protocol_version: TLSv1_2}}
            validation_context:
              trusted_ca: {{filename: {TLS_DIR}/ca.crt}}
              match_typed_subject_alt_names:
                - san_type: DNS
                  matcher: {{exact: {host}}}"""


def envoy_config(tsdb_host: str, tsdb_port: int, twin_api_host: str | None = None, twin_api_port: int = 8443) -> str:
    """Envoy bootstrap: one TLS listener on 443; upstream clusters: the TSDB, and the twin API when ``twin_api_host`` is set."""
    twin_route = _twin_route() if twin_api_host else ""
    twin_cluster = _twin_cluster(twin_api_host, twin_api_port) if twin_api_host else ""
    return f"""\
static_resources:
  listeners:
    - name: https
      address: {{socket_address: {{address: 0.0.0.0, port_value: {PORT}}}}}
      filter_chains:
        - transport_socket:
            name: envoy.transport_sockets.tls
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
              common_tls_context:
                tls_params: {{tls_minimum_protocol_version: TLSv1_2}}
                tls_certificates:
                  - certificate_chain: {{filename: {TLS_DIR}/tls.crt}}
                    private_key: {{filename: {TLS_DIR}/tls.key}}
          filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: api
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
                route_config:
                  virtual_hosts:
                    - name: api
                      domains: ["*"]
                      routes:
                        - match: {{safe_regex: {{regex: "^/api/v1/(query|query_range|query_exemplars|series|labels|label/[^/]+/values)$"}}}}
                          route: {{cluster: tsdb, timeout: 30s}}{twin_route}
                        - match: {{path: "/healthz"}}
                          direct_response: {{status: 200, body: {{inline_string: "ok"}}}}
  clusters:
    - name: tsdb
      type: STRICT_DNS
      connect_timeout: 2s
      load_assignment:
        cluster_name: tsdb
        endpoints:
          - lb_endpoints:
              - endpoint: {{address: {{socket_address: {{address: {tsdb_host}, port_value: {tsdb_port}}}}}}}{twin_cluster}
"""


@dataclass(frozen=True)
class ApiGatewayArgs:
    namespace: pulumi.Input[str]
    """Namespace of every object."""
    image: str
    """Envoy image with an explicit tag."""
    tls_secret: pulumi.Input[str]
    """``kubernetes.io/tls`` Secret of the gateway's server certificate."""
    tsdb_host: str
    """TSDB Service DNS name."""
    tsdb_port: int = 9090
    """TSDB port. Defaults to 9090."""
    twin_api_host: str | None = None
    """Twin API Service DNS name (also its certificate's DNS SAN and the SNI). Defaults to none: no ``/v1/`` routes."""
    twin_api_port: int = 8443
    """Twin API HTTPS port. Defaults to 8443."""
    replicas: int = 2
    """Replicas. Defaults to 2."""
    external_service_type: str = "LoadBalancer"
    """Type of the 443 Service: LoadBalancer or ClusterIP (AWS: bound to the region NLB). Defaults to LoadBalancer."""
    resources: Resources = Resources("100m", "128Mi", "1", "512Mi")
    """Container requests/limits. Defaults to 100m/128Mi, limits 1 CPU/512Mi."""


class ApiGateway(pulumi.ComponentResource):
    """Envoy Deployment, its config, the 443 Service and a PodDisruptionBudget."""

    service_name: pulumi.Output[str]

    def __init__(self, name: str, args: ApiGatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if args.replicas < 1:
            raise ComponentArgsError(name, "replicas", args.replicas, "must be at least 1")
        if args.external_service_type not in ("LoadBalancer", "ClusterIP"):
            raise ComponentArgsError(name, "external_service_type", args.external_service_type, "must be LoadBalancer or ClusterIP")
        super().__init__("ems:workloads:ApiGateway", name, None, opts)
        o = child(self)
        ns = args.namespace
        sa = k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=metadata(APP, ns, APP), automount_service_account_token=False, opts=o)
        conf = k8s.core.v1.ConfigMap(f"{name}-config", metadata=metadata(f"{APP}-config", ns, APP),
                                     data={"envoy.yaml": envoy_config(args.tsdb_host, args.tsdb_port, args.twin_api_host, args.twin_api_port)}, opts=o)
        spec: dict[str, object] = {
            "type": args.external_service_type,
            "selector": selector(APP),
            "ports": [{"name": "https", "port": PORT, "targetPort": "https", "protocol": "TCP"}],
        }
        if args.external_service_type == "LoadBalancer":
            spec["externalTrafficPolicy"] = "Local"
        svc = k8s.core.v1.Service(f"{name}-svc", metadata=metadata(APP, ns, APP), spec=spec, opts=o)
        envoy = container(
            "envoy", args.image, args.resources,
            args=["-c", "/etc/envoy/config/envoy.yaml", "--log-level", "warn"],
            ports=[("https", PORT)],
            mounts=[("config", "/etc/envoy/config"), ("tls", TLS_DIR), ("tmp", "/tmp")],
            writable=["tmp"],
            probe_port=PORT, probe_path="/healthz", probe_scheme="HTTPS",
        )
        k8s.apps.v1.Deployment(
            f"{name}-deploy", metadata=metadata(APP, ns, APP),
            spec={
                "replicas": args.replicas,
                "selector": {"matchLabels": selector(APP)},
                "template": {
                    "metadata": template_metadata(APP, [envoy]),
                    "spec": pod_spec([envoy], service_account=sa.metadata.name, spread_app=APP,
                                     sysctls={"net.ipv4.ip_unprivileged_port_start": str(PORT)},
                                     volumes=[config_volume("config", conf.metadata.name), secret_volume("tls", args.tls_secret),
                                              empty_dir("tmp")]),
                },
            },
            opts=o,
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb", metadata=metadata(APP, ns, APP),
            spec={"minAvailable": 1, "selector": {"matchLabels": selector(APP)}}, opts=o,
        )
        self.service_name = svc.metadata.name
        self.register_outputs({"service_name": self.service_name})
