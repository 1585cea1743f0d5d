"""The API gateway on 443: nginx terminating TLS, authenticating every caller, and routing by role.

Why nginx: Debian ships it (``nginx-core``), so the generated config runs in the test suite exactly
as in the pod; its ``auth_request`` hands token checks to a small verifier we own and test
(``ingest/gateway_auth.py``, served by the twin API at ``/v1/authz``), and ``limit_req`` gives
per-client 429s, both in the stock build. (Envoy has no Debian package; Caddy's stock build has
no rate limiting; HAProxy's JWT check needs the JWKS converted to PEM files by a sidecar.)

Every request except ``/healthz`` is authenticated: a client certificate from the platform CA
(asked for in the handshake; with ``clientCerts: required`` every route refuses a request without
one, while ``/healthz`` stays open to the kubelet's probe) or an OIDC bearer token, both decided
by the verifier, which also checks the route's role (:data:`ROUTES`). Only the paths below are
routed; everything else, including the TSDB's remote-write and admin APIs, is 404 before any
credential is looked at. nginx passes the verified identity upstream as trusted headers
(:data:`IDENTITY_HEADERS`) and removes any copy the client sent, plus its ``Authorization``.
Towards the twin API (routes and verifier) and the north-bound's command listener (``/v1/commands``)
nginx speaks HTTPS, verifies their server certificates against the platform CA by Service name, and
presents its own client certificate (``upstream_client_secret``, CN ``ems-api-gateway``); neither
serves any other caller, so no in-cluster client can go around the gateway and set those headers itself.

Limits: ``limit_req`` per client (certificate fingerprint or bearer token) and per source address
→ 429; body size → 413; request/header line size → 400/414; timeouts on client and upstream; the
TSDB's own ``--query.timeout``/``--query.max-samples`` (``components/tsdb.py``) bound PromQL.

nginx runs as a non-root user with every capability dropped; binding 443 is allowed by the *safe*
namespaced sysctl ``net.ipv4.ip_unprivileged_port_start=443`` instead of ``NET_BIND_SERVICE``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from components import alertmanager, grafana
from components.gateway_settings import GatewayAuthSettings
from components.k8s_common import (
    ComponentArgsError, Resources, child, config_volume, container, empty_dir, metadata, pod_spec,
    secret_volume, selector, template_metadata, tls_annotation,
)

APP = "api-gateway"
PORT = 443
TLS_DIR = "/etc/nginx/tls"
UPSTREAM_TLS_DIR = "/etc/nginx/upstream-tls"
CONFIG_DIR = "/etc/nginx/ems"
TMP_DIR = "/tmp"
NORTHBOUND_COMMAND_PORT = 8444
"""The north-bound client's manual-command listener (``components/northbound.py``)."""
COMMAND_BURST = 5
"""Manual commands a client may send at once above ``commandRatePerMinute``."""
NGINX_UID = 101
"""The nginx-unprivileged image's user."""

IDENTITY_HEADERS = {"user": "X-Ems-User", "role": "X-Ems-Role", "auth": "X-Ems-Auth", "grafana_role": "X-Ems-Grafana-Role"}
"""Trusted headers set on every upstream request: the user, the role (viewer|operator|admin), how they authenticated
(mtls|oidc) and the Grafana role (Viewer|Editor|Admin) for Grafana's auth proxy."""
_VERIFIER_HEADERS = ("X-Ems-Required-Role", "X-Ems-Original-Method", "X-Ems-Original-Uri", "X-Ems-Client-Verify",
                     "X-Ems-Client-Cert")


@dataclass(frozen=True)
class Route:
    """A path the gateway routes: nginx location regex, upstream, the least role, the allowed methods."""

    name: str
    pattern: str
    upstream: str
    role: str
    methods: tuple[str, ...] = ("GET", "HEAD")
    max_body_bytes: int | None = None
    """A tighter body limit than the server's (→ 413). Defaults to none: ``maxBodyBytes``."""
    command_zone: bool = False
    """Also limited by the per-client command rate (``commandRatePerMinute``). Defaults to off."""


ROUTES = (
    Route("promql", r"^/api/v1/(query|query_range|query_exemplars|series|labels|label/[a-zA-Z_][a-zA-Z0-9_]*/values|metadata)$",
          "tsdb", "viewer", ("GET", "HEAD", "POST")),
    Route("rules", r"^/api/v1/(rules|alerts)$", "tsdb", "viewer"),
    Route("tsdb-status", r"^/api/v1/(status/(config|flags|runtimeinfo|buildinfo|tsdb)|targets)$", "tsdb", "admin"),
    Route("twin", r"^/v1/(assets/[^/]+(/[^/]+)?|query|query_range|sites|alerts|whoami)$", "twin_api", "viewer"),
    Route("operator-page", r"^/(ui/[A-Za-z0-9._-]{1,64})?$", "twin_api", "viewer"),
    Route("silences", r"^/api/v2/silences?(/[0-9a-f-]{1,64})?$", "alertmanager", "operator", ("GET", "HEAD", "POST", "DELETE")),
    Route("grafana", r"^/grafana(/.*)?$", "grafana", "viewer", ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")),
    Route("commands", r"^/v1/commands(/[A-Za-z0-9_-]{1,64})?$", "northbound", "operator", ("GET", "HEAD", "POST"),
          max_body_bytes=4096, command_zone=True),
)
"""Every routed path. A route whose upstream is not configured is left out (its path is then 404)."""


@dataclass(frozen=True)
class Upstream:
    """``host:port``; ``tls_name`` set: HTTPS verifying the platform CA and that DNS name (also sent as SNI)."""

    host: str
    port: int
    tls_name: str | None = None


@dataclass(frozen=True)
class NginxPlan:
    """Where nginx runs: listen port, file locations and upstreams (the pod's, or a test's on 127.0.0.1)."""

    auth: GatewayAuthSettings
    tsdb: Upstream
    twin_api: Upstream
    """The twin API: upstream of the twin routes and the verifier (``/v1/authz``); must be HTTPS."""
    alertmanager: Upstream | None = None
    grafana: Upstream | None = None
    northbound: Upstream | None = None
    """The north-bound client's manual-command listener (``/v1/commands``, operators). Defaults to none."""
    listen: str = f"{PORT}"
    tls_dir: str = TLS_DIR
    """Holds ``tls.crt``/``tls.key`` (the gateway's server certificate) and ``ca.crt`` (the platform CA)."""
    upstream_client_dir: str | None = None
    """Holds ``tls.crt``/``tls.key``: the client certificate presented to HTTPS upstreams (the twin API). Defaults to none."""
    tmp_dir: str = TMP_DIR
    worker_processes: str = "2"
    """nginx workers. Defaults to 2 (``auto`` would count the node's CPUs, not the pod's limit)."""
    user: str | None = None
    """``user`` directive (only for a root master, as in a test). Defaults to none: the pod runs as NGINX_UID."""


def _upstreams(plan: NginxPlan) -> dict[str, Upstream]:
    found = {"tsdb": plan.tsdb, "twin_api": plan.twin_api, "alertmanager": plan.alertmanager, "grafana": plan.grafana,
             "northbound": plan.northbound}
    return {name: up for name, up in found.items() if up is not None}


def _proxy_tls(up: Upstream, plan: NginxPlan) -> str:
    if up.tls_name is None:
        return ""
    # The gateway's own client certificate: the twin API serves only it, so its identity headers cannot be forged.
    client = (f"            proxy_ssl_certificate {plan.upstream_client_dir}/tls.crt;\n"
              f"            proxy_ssl_certificate_key {plan.upstream_client_dir}/tls.key;\n") if plan.upstream_client_dir else ""
    return (f"            proxy_ssl_verify on;\n            proxy_ssl_trusted_certificate {plan.tls_dir}/ca.crt;\n"
            f"            proxy_ssl_name {up.tls_name};\n            proxy_ssl_server_name on;\n"
            f"            proxy_ssl_protocols TLSv1.2 TLSv1.3;\n{client}")


def _scheme(up: Upstream) -> str:
    return "https" if up.tls_name else "http"


def _location(route: Route, up: Upstream, plan: NginxPlan) -> str:
    methods = "|".join(route.methods)
    # clientCerts required: enforced per route, not in the handshake, so the kubelet's probe of /healthz
    # (which has no certificate) still gets its 200. 496 goes to the refused-certificate handler (401).
    need_cert = "            if ($ssl_client_verify != SUCCESS) { return 496; }\n" if plan.auth.client_certs == "required" else ""
    clear = "".join(f'            proxy_set_header {h} "";\n' for h in _VERIFIER_HEADERS)
    read_timeout = plan.auth.promql_timeout_seconds + 5 if route.upstream == "tsdb" else 60
    return f"""
        location ~ "{route.pattern}" {{
            set $ems_required {route.role};
{need_cert}            if ($request_method !~ ^({methods})$) {{ return 405; }}
            limit_req zone=ems_client burst={plan.auth.burst} nodelay;
            limit_req zone=ems_address burst={plan.auth.burst * 5} nodelay;
{_route_limits(route)}            auth_request /_ems_authz;
            auth_request_set $ems_user $upstream_http_x_ems_user;
            auth_request_set $ems_role $upstream_http_x_ems_role;
            auth_request_set $ems_auth $upstream_http_x_ems_auth;
            proxy_pass {_scheme(up)}://ems_{route.upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header Authorization "";
            proxy_set_header {IDENTITY_HEADERS["user"]} $ems_user;
            proxy_set_header {IDENTITY_HEADERS["role"]} $ems_role;
            proxy_set_header {IDENTITY_HEADERS["auth"]} $ems_auth;
            proxy_set_header {IDENTITY_HEADERS["grafana_role"]} $ems_grafana_role;
{clear}            proxy_read_timeout {read_timeout}s;
{_proxy_tls(up, plan)}        }}
"""


def _route_limits(route: Route) -> str:
    body = f"            client_max_body_size {route.max_body_bytes};\n" if route.max_body_bytes else ""
    # Manual commands act on the grid: a client gets a few a minute, however fast it may read.
    zone = f"            limit_req zone=ems_commands burst={COMMAND_BURST} nodelay;\n" if route.command_zone else ""
    return body + zone


def _verifier_location(path: str, plan: NginxPlan, *, refused_certificate: bool) -> str:
    """The internal location nginx asks: the auth_request target, or (``refused_certificate``) the 495/496 handler."""
    up = plan.twin_api
    if refused_certificate:
        # A certificate that failed verification (or none where one is required): the verifier logs and counts
        # it and answers 401. No Authorization is passed: a token cannot stand in for a required certificate.
        specific = "            proxy_set_header X-Ems-Required-Role viewer;\n"
    else:
        specific = ("            proxy_set_header X-Ems-Required-Role $ems_required;\n"
                    "            proxy_set_header Authorization $http_authorization;\n"
                    "            proxy_set_header X-Ems-Client-Cert $ssl_client_escaped_cert;\n")
    return f"""
        location = {path} {{
            internal;
            proxy_pass https://ems_twin_api/v1/authz;
            proxy_pass_request_body off;
            proxy_pass_request_headers off;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {up.tls_name};
            proxy_set_header X-Ems-Original-Method $request_method;
            proxy_set_header X-Ems-Original-Uri $request_uri;
            proxy_set_header X-Ems-Client-Verify $ssl_client_verify;
{specific}            proxy_connect_timeout 2s;
            proxy_read_timeout 10s;
{_proxy_tls(up, plan)}        }}
"""


def _command_zone(plan: NginxPlan) -> str:
    if plan.northbound is None:
        return ""
    return (f'    limit_req_zone "$ems_cert_key$ems_token_key" zone=ems_commands:1m '
            f'rate={plan.auth.command_rate_per_minute}r/m;\n')


def nginx_config(plan: NginxPlan) -> str:
    """The whole ``nginx.conf`` for ``plan`` (nginx 1.22 and later)."""
    auth = plan.auth
    if plan.twin_api.tls_name is None:
        raise ValueError("twin_api must be an HTTPS upstream (tls_name set): it carries the verifier")
    upstreams = _upstreams(plan)
    # Idle connections kept per worker. The twin API serves at most 64 connections at once, each idle one holding a
    # thread until its 30 s socket timeout: few, and closed by nginx first (20 s). The north-bound command listener
    # closes an idle connection after 10 s (its request deadline): nginx lets go first (5 s), since it does not
    # retry a POST on a kept connection the upstream has just closed (the operator would see a 502).
    keep = {name: {"twin_api": (4, 20), "northbound": (4, 5)}.get(name, (16, 60)) for name in upstreams}
    upstream_blocks = "".join(
        f"    upstream ems_{name} {{\n        server {up.host}:{up.port} max_fails=0;\n"
        f"        keepalive {keep[name][0]};\n        keepalive_timeout {keep[name][1]}s;\n    }}\n"
        for name, up in upstreams.items())
    locations = "".join(_location(r, upstreams[r.upstream], plan) for r in ROUTES if r.upstream in upstreams)
    verify = "off" if auth.client_certs == "off" else "optional"
    client_ca = f"        ssl_client_certificate {plan.tls_dir}/ca.crt;\n        ssl_verify_depth 2;\n" if verify != "off" else ""
    user = f"user {plan.user};\n" if plan.user else ""
    t = plan.tmp_dir
    header_kib = max(1, auth.max_header_bytes // 1024)
    return f"""\
# Generated by components/api_gateway.py: edit that, not this.
{user}worker_processes {plan.worker_processes};
pid {t}/nginx.pid;
error_log stderr warn;
daemon off;

events {{
    worker_connections 1024;
}}

http {{
    server_tokens off;
    access_log off;
    client_body_temp_path {t}/client_body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    default_type application/json;

    client_max_body_size {auth.max_body_bytes};
    client_body_buffer_size 64k;
    client_header_buffer_size 1k;
    large_client_header_buffers 4 {header_kib}k;
    client_header_timeout 10s;
    client_body_timeout 10s;
    send_timeout 30s;
    keepalive_timeout 30s;
    keepalive_requests 1000;
    proxy_connect_timeout 2s;
    proxy_buffering on;
    proxy_max_temp_file_size 0;

    # Per client: the verified certificate, or the bearer token by the last 32 characters of its signature (a
    # bounded key: 10 MB hold about 80,000 clients). Requests with neither have an empty key and fall under the
    # per-address zone only. Keys are taken before authentication: limit_req runs first.
    map $ssl_client_verify $ems_cert_key {{
        SUCCESS $ssl_client_fingerprint;
        default "";
    }}
    map $http_authorization $ems_token_key {{
        "~*^bearer [A-Za-z0-9_.-]*(?<ems_token_tail>[A-Za-z0-9_-]{{32}})$" $ems_token_tail;
        default "";
    }}
    limit_req_zone "$ems_cert_key$ems_token_key" zone=ems_client:10m rate={auth.rate_per_second}r/s;
    limit_req_zone $binary_remote_addr zone=ems_address:10m rate={auth.per_address_rate_per_second}r/s;
{_command_zone(plan)}    limit_req_status 429;
    limit_req_log_level warn;

    map $ems_role $ems_grafana_role {{
        viewer Viewer;
        operator Editor;
        admin Admin;
        default "";
    }}
    log_format ems escape=json '{{"time":"$time_iso8601","client":"$remote_addr","user":"$ems_user","role":"$ems_role",'
                               '"method":"$request_method","path":"$uri","status":$status,"bytes":$body_bytes_sent,'
                               '"seconds":$request_time}}';

{upstream_blocks}
    server {{
        listen {plan.listen} ssl;
        ssl_certificate {plan.tls_dir}/tls.crt;
        ssl_certificate_key {plan.tls_dir}/tls.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_prefer_server_ciphers on;
        ssl_session_cache shared:ems_tls:10m;
        ssl_session_tickets off;
{client_ca}        ssl_verify_client {verify};
        access_log /dev/stdout ems;

        set $ems_user "";
        set $ems_role "";
        set $ems_auth "";

        # 495: the certificate failed verification (another CA, expired); 496: none where one is required (a route's check).
        error_page 495 496 = /_ems_refused_certificate;
        error_page 404 = @ems_not_found;

        location = /healthz {{
            access_log off;
            return 200 '{{"status":"ok"}}';
        }}
{_verifier_location("/_ems_authz", plan, refused_certificate=False)}\
{_verifier_location("/_ems_refused_certificate", plan, refused_certificate=True)}\
{locations}
        location / {{
            return 404;
        }}

        location @ems_not_found {{
            return 404 '{{"error":"no such route"}}';
        }}
    }}
}}
"""


@dataclass(frozen=True)
class ApiGatewayArgs:
    namespace: pulumi.Input[str]
    """Namespace of every object."""
    image: str
    """nginx image with an explicit tag, running as NGINX_UID (nginx-unprivileged)."""
    tls_secret: pulumi.Input[str]
    """``kubernetes.io/tls`` Secret of the gateway's server certificate; its ``ca.crt`` is the platform CA
    (verifies client certificates and the twin API)."""
    tsdb_host: str
    """TSDB Service DNS name."""
    twin_api_host: str
    """Twin API Service DNS name (also its certificate's DNS SAN and the SNI); it serves the twin routes and the verifier."""
    auth: GatewayAuthSettings = field(default_factory=GatewayAuthSettings)
    """Authentication and limits. Defaults to client certificates optional, no OIDC, the documented limits."""
    tls_digest: pulumi.Input[str] | None = None
    """Digest of the gateway's certificates and trust bundle (``k8s_common.content_digest``), a pod template annotation:
    nginx reads them only at start, so a change rolls the replicas one by one. Defaults to none."""
    upstream_client_secret: pulumi.Input[str] | None = None
    """``kubernetes.io/tls`` Secret of the client certificate nginx presents to the twin API (mounted at
    :data:`UPSTREAM_TLS_DIR`). Defaults to none: no client certificate upstream."""
    tsdb_port: int = 9090
    """TSDB port. Defaults to 9090."""
    twin_api_port: int = 8443
    """Twin API HTTPS port. Defaults to 8443."""
    alertmanager_host: str | None = None
    """Alertmanager Service DNS name (port 9093): routes ``/api/v2/silences`` for operators. Defaults to none."""
    grafana_host: str | None = None
    """Grafana Service DNS name (port 3000, auth proxy on the identity headers): routes ``/grafana/``. Defaults to none."""
    northbound_host: str | None = None
    """North-bound Service DNS name (port NORTHBOUND_COMMAND_PORT, HTTPS; its certificate's DNS SAN and the SNI): routes
    ``/v1/commands`` for operators, presenting ``upstream_client_secret``. Defaults to none."""
    replicas: int = 2
    """Replicas. Defaults to 2."""
    external_service_type: str = "LoadBalancer"
    """Type of the 443 Service: LoadBalancer or ClusterIP (AWS: bound to the region NLB). Defaults to LoadBalancer."""
    resources: Resources = Resources("100m", "128Mi", "1", "512Mi")
    """Container requests/limits. Defaults to 100m/128Mi, limits 1 CPU/512Mi."""


def gateway_plan(args: ApiGatewayArgs) -> NginxPlan:
    """The in-cluster plan: the gateway Secret's files, the Services' names."""
    return NginxPlan(
        auth=args.auth,
        tsdb=Upstream(args.tsdb_host, args.tsdb_port),
        twin_api=Upstream(args.twin_api_host, args.twin_api_port, args.twin_api_host),
        alertmanager=Upstream(args.alertmanager_host, alertmanager.PORT) if args.alertmanager_host else None,
        grafana=Upstream(args.grafana_host, grafana.PORT) if args.grafana_host else None,
        # HTTPS, verified by name, with the gateway's client certificate: the listener serves no one else.
        northbound=Upstream(args.northbound_host, NORTHBOUND_COMMAND_PORT, args.northbound_host)
        if args.northbound_host else None,
        upstream_client_dir=UPSTREAM_TLS_DIR if args.upstream_client_secret is not None else None,
    )


class ApiGateway(pulumi.ComponentResource):
    """nginx Deployment, its config, the 443 Service and a PodDisruptionBudget."""

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
        config = {"nginx.conf": nginx_config(gateway_plan(args))}
        conf = k8s.core.v1.ConfigMap(f"{name}-config", metadata=metadata(f"{APP}-config", ns, APP), data=config, opts=o)
        spec: dict[str, object] = {
            "type": args.external_service_type,
            "selector": selector(APP),
            "ports": [{"name": "https", "port": PORT, "targetPort": "https", "protocol": "TCP"}],
        }
        if args.external_service_type == "LoadBalancer":
            spec["externalTrafficPolicy"] = "Local"      # keeps the client address: the per-address rate limit needs it
        svc = k8s.core.v1.Service(f"{name}-svc", metadata=metadata(APP, ns, APP), spec=spec, opts=o)
        upstream_tls = [("upstream-tls", UPSTREAM_TLS_DIR)] if args.upstream_client_secret is not None else []
        nginx = container(
            "nginx", args.image, args.resources,
            command=["nginx", "-e", "stderr", "-c", f"{CONFIG_DIR}/nginx.conf"],
            ports=[("https", PORT)],
            mounts=[("config", CONFIG_DIR), ("tls", TLS_DIR), *upstream_tls, ("tmp", TMP_DIR)],
            writable=["tmp"], run_as_user=NGINX_UID,
            probe_port=PORT, probe_path="/healthz", probe_scheme="HTTPS",
        )
        k8s.apps.v1.Deployment(
            f"{name}-deploy", metadata=metadata(APP, ns, APP, annotations={"ems.io/client-auth": _client_auth(args.auth)}),
            spec={
                "replicas": args.replicas,
                "selector": {"matchLabels": selector(APP)},
                "template": {
                    # nginx reads its config and certificates only at start: a change rolls the replicas one by one.
                    "metadata": template_metadata(APP, [nginx], config=config, annotations=tls_annotation(args.tls_digest)),
                    "spec": pod_spec([nginx], service_account=sa.metadata.name, spread_app=APP,
                                     sysctls={"net.ipv4.ip_unprivileged_port_start": str(PORT)},
                                     volumes=[config_volume("config", conf.metadata.name), secret_volume("tls", args.tls_secret),
                                              *([secret_volume("upstream-tls", args.upstream_client_secret)]
                                                if args.upstream_client_secret is not None else []),
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


def _client_auth(auth: GatewayAuthSettings) -> str:
    """The Deployment's ``ems.io/client-auth`` annotation, read by the policy pack: how callers must authenticate."""
    methods = [m for m, on in (("mtls", auth.client_certs != "off"), ("oidc", auth.oidc is not None)) if on]
    return ("mtls-required" if auth.client_certs == "required" else "+".join(methods)) if methods else "none"
