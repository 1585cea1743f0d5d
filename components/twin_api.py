"""The digital-twin read API (``ems-ingest twin-api``) behind the API gateway.

A StatefulSet of the ingest image serving HTTPS on the internal port :data:`PORT` (the policy
pack's named internal port ``twin-api``): ``GET /v1/assets/<site>[/<asset>]`` from the
retained twin topics ``ems/v1/<site>/twin/<asset>`` and ``GET /v1/query`` passed through to
the TSDB; with ``auth`` it also serves the gateway's token verifier (``/v1/authz``). Only the
gateway (nginx) reaches it (NetworkPolicy), over TLS that verifies the platform CA and
the Service's DNS name; the server certificate (``server_tls_secret``) names the Service.

It subscribes to the broker over mTLS on 8883, each replica with its own client certificate
(CN ``<identity>-twin-api-<n>`` for pod ``twin-api-<n>``, see :func:`replica_identities`; the
broker lets those identities subscribe to and receive ``ems/v1/+/twin/+`` and nothing else).
Each replica subscribes with a clean session and gets every retained twin on (re)connect, so
replicas are stateless and interchangeable — but not one identity: the broker takes the CN as
the client id (``use_username_as_clientid``, ``components/broker.py``), and two replicas with
one certificate would take the connection from each other in turn (observed with Mosquitto
2.0.11: "already connected, closing old connection", then the other reconnects). Hence a
StatefulSet, not a Deployment: stable ordinals give each pod its own certificate, projected
from ``mqtt_tls_secrets`` into one volume with a directory per pod name, mounted whole; each pod
names its own files by path (:func:`components.ingest.pod_tls_env`), so a renewed certificate
reaches the running replica (a ``subPath`` mount is never updated). No PersistentVolumeClaim:
nothing is kept.
``/healthz`` answers 503 until the subscription stands, so a pod takes traffic only once it
holds the twins.

Its ``ingest.toml`` is generated here and checked with the ingest's own parser. The parser
requires ``[tsdb] remote_write_url`` and ``[state] dir`` for every command; ``twin-api`` writes
to neither (it only reads ``tsdb.query_url``), so they point at the TSDB's write endpoint and
an emptyDir.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.gateway_settings import GatewayAuthSettings
from components.ingest import METRICS_PORT, mtls_broker_section, pod_tls_env, validate_ingest_toml
from components.k8s_common import (
    ComponentArgsError, Resources, child, config_volume, container, empty_dir, metadata,
    per_pod_secrets_volume, pod_spec, secret_volume, selector, template_metadata,
)

APP = "twin-api"
REPLICAS = 2
"""Default replica count; each replica has its own client certificate (:func:`replica_identities`)."""
PORT = 8443
"""HTTPS port of the twin API (policy config ``internalPorts["twin-api"]``)."""
CONFIG_DIR = "/etc/ems/twin-api"
MQTT_TLS_DIR = "/etc/ems/mqtt-tls"      # client identity towards the broker
SERVER_TLS_DIR = "/etc/ems/server-tls"  # the API's server certificate
UNUSED_STATE_DIR = "/tmp/state"         # required by the shared parser, never written by twin-api
METRICS_SERVICE = f"{APP}-metrics"
"""Headless Service of the replicas' metrics port (:data:`components.ingest.METRICS_PORT`)."""


def _auth_tables(auth: GatewayAuthSettings) -> list[str]:
    """``[twin_api.auth]`` (and ``.oidc``): the gateway verifier's half of ``ems:apiAuth``."""
    q = json.dumps

    def table(pairs: tuple[tuple[str, str], ...]) -> str:
        return "{ " + ", ".join(f"{q(k)} = {q(v)}" for k, v in pairs) + " }" if pairs else "{}"

    lines = ["[twin_api.auth]", f"cert_ou_roles = {table(auth.cert_ou_roles)}", f"cert_cn_roles = {table(auth.cert_cn_roles)}", ""]
    if auth.oidc is not None:
        o = auth.oidc
        lines += ["[twin_api.auth.oidc]", f"issuer = {q(o.issuer)}", f"audience = {q(o.audience)}", f"jwks_url = {q(o.jwks_url)}",
                  f"claim_roles = {table(o.claim_roles)}", f"role_claim = {q(o.role_claim)}",
                  f"username_claim = {q(o.username_claim)}", f"algorithms = {q(list(o.algorithms))}", ""]
    return lines


def twin_api_toml(broker_host: str, tsdb_url: str, alertmanager_url: str | None = None, *,
                  auth: GatewayAuthSettings | None = None, caller_identity: str | None = None,
                  max_connections: int | None = None, request_timeout_s: int | None = None) -> str:
    """The pods' ingest.toml for ``ems-ingest twin-api``: mTLS to the broker, HTTPS on :data:`PORT`, PromQL at ``tsdb_url``,
    the operator page's alerts from ``alertmanager_url`` (none without it), with ``auth`` the gateway's verifier
    at ``/v1/authz`` (``[twin_api.auth]``), and with ``caller_identity`` only callers presenting a certificate of the
    platform CA (``ca.crt`` of the server Secret) with that CN (``client_ca``, ``client_cns``). ``max_connections`` and
    ``request_timeout_s`` are written only when given (otherwise the API's own defaults hold).

    No client id: the broker takes each replica's certificate CN as its client id (the ingest's
    default ``ems-twin-api-<hostname>`` is the same for namespace ``ems``).
    """
    q = json.dumps
    base = tsdb_url.rstrip("/")
    return "\n".join([
        *mtls_broker_section(broker_host, MQTT_TLS_DIR), "",
        "[tsdb]", f"query_url = {q(base)}", f"remote_write_url = {q(base + '/api/v1/write')}", "",
        "[state]", f"dir = {q(UNUSED_STATE_DIR)}", "",
        "[metrics]", 'host = "0.0.0.0"', f"port = {METRICS_PORT}", "",
        "[twin_api]", 'host = "0.0.0.0"', f"port = {PORT}",
        f"cert = {q(SERVER_TLS_DIR + '/tls.crt')}", f"key = {q(SERVER_TLS_DIR + '/tls.key')}",
        *([f"client_ca = {q(SERVER_TLS_DIR + '/ca.crt')}", f"client_cns = [{q(caller_identity)}]"] if caller_identity else []),
        *([f"alertmanager_url = {q(alertmanager_url)}"] if alertmanager_url else []),
        *([f"max_connections = {max_connections}"] if max_connections is not None else []),
        *([f"request_timeout_s = {request_timeout_s}"] if request_timeout_s is not None else []), "",
        *(_auth_tables(auth) if auth is not None else []),
    ])


def replica_identities(identity: str, count: int) -> tuple[str, ...]:
    """Certificate CN of replica ``twin-api-<n>`` for n < ``count``: ``<identity>-twin-api-<n>`` (the role's identity
    followed by the pod name: for namespace ``ems`` the ingest's default client id of that pod)."""
    return tuple(f"{identity}-{APP}-{n}" for n in range(count))


def validate_twin_api_toml(name: str, text: str) -> None:
    """Check the generated file with the ingest's own parser, as ``ems-ingest twin-api`` will."""
    config = validate_ingest_toml(name, text)
    if config.twin_api is None or config.twin_api.port != PORT:
        raise ComponentArgsError(name, "ingest.toml", text, f"must serve [twin_api] on {PORT}")


@dataclass(frozen=True)
class TwinApiArgs:
    namespace: pulumi.Input[str]
    """Namespace of every object."""
    image: str
    """Ingest image (it carries ``ems-ingest``) with an explicit tag."""
    broker_host: str
    """Broker Service DNS name (mTLS on 8883); must be one of the broker certificate's DNS SANs."""
    mqtt_tls_secrets: tuple[pulumi.Input[str], ...]
    """``kubernetes.io/tls`` Secrets (tls.crt, tls.key, ca.crt), one per replica: index n is pod ``twin-api-<n>``'s
    client certificate. Exactly ``replicas`` of them."""
    server_tls_secret: pulumi.Input[str]
    """``kubernetes.io/tls`` Secret with the API's server certificate (SANs: the ``twin-api`` Service's DNS names)."""
    tsdb_url: str
    """TSDB base URL for the PromQL pass-through (``/api/v1/query`` is appended)."""
    auth: GatewayAuthSettings | None = None
    """The gateway's authentication (``ems:apiAuth``): the API then serves the gateway's verifier. Defaults to none."""
    caller_identity: str | None = None
    """CN of the only client certificate (of the platform CA) that may call the API: the gateway's, so that no one
    who goes around the gateway can set its identity headers. Defaults to none: any caller the NetworkPolicy lets in."""
    replicas: int = REPLICAS
    """Replicas (each holds every twin, each has its own client certificate). Defaults to 2."""
    max_connections: int | None = None
    """Connections each replica serves at once (``[twin_api] max_connections``). Defaults to none: the API's 64."""
    request_timeout_s: int | None = None
    """Seconds for a TLS handshake or a request to arrive (``[twin_api] request_timeout_s``). Defaults to none: 30."""
    alertmanager_url: str | None = None
    """Alertmanager base URL whose firing alerts the operator page lists (the caller then allows twin-api → it in
    the NetworkPolicies). Defaults to none: the page shows no alerts."""
    resources: Resources = Resources("50m", "64Mi", "500m", "256Mi")
    """Container requests/limits. Defaults to 50m/64Mi, limits 0.5 CPU/256Mi."""


class TwinApi(pulumi.ComponentResource):
    """StatefulSet, config, ClusterIP Service on :data:`PORT`, ServiceAccount and PodDisruptionBudget of the twin API."""

    service_name: pulumi.Output[str]
    statefulset_name: pulumi.Output[str]

    def __init__(self, name: str, args: TwinApiArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if args.replicas < 1:
            raise ComponentArgsError(name, "replicas", args.replicas, "must be at least 1")
        if len(args.mqtt_tls_secrets) != args.replicas:
            raise ComponentArgsError(name, "mqtt_tls_secrets", len(args.mqtt_tls_secrets),
                                     f"must hold one Secret per replica ({args.replicas})")
        conf_text = twin_api_toml(args.broker_host, args.tsdb_url, args.alertmanager_url, auth=args.auth,
                                  max_connections=args.max_connections, request_timeout_s=args.request_timeout_s,
                                  caller_identity=args.caller_identity)
        validate_twin_api_toml(name, conf_text)
        super().__init__("ems:workloads:TwinApi", name, None, opts)
        o = child(self)
        ns = args.namespace
        sa = k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=metadata(APP, ns, APP), automount_service_account_token=False, opts=o)
        conf = k8s.core.v1.ConfigMap(f"{name}-config", metadata=metadata(f"{APP}-config", ns, APP),
                                     data={"ingest.toml": conf_text}, opts=o)
        svc = k8s.core.v1.Service(
            f"{name}-svc", metadata=metadata(APP, ns, APP),
            # HTTPS only: the TSDB scrapes each replica through the headless metrics Service below.
            spec={"type": "ClusterIP", "selector": selector(APP),
                  "ports": [{"name": "https", "port": PORT, "targetPort": "https", "protocol": "TCP"}]},
            opts=o,
        )
        # Headless: the TSDB scrapes each replica's own counters (the gateway verifier's allow/deny counts). It is also
        # the StatefulSet's governing Service: only a headless one gives each pod its DNS name
        # (twin-api-0.twin-api-metrics.<ns>.svc) and hence the SRV targets from which the scrape job takes ``pod``.
        headless = k8s.core.v1.Service(
            f"{name}-metrics", metadata=metadata(METRICS_SERVICE, ns, APP),
            spec={"clusterIP": "None", "selector": selector(APP),
                  "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}]},
            opts=o,
        )
        api = container(
            "twin-api", args.image, args.resources,
            args=["twin-api", "--config", f"{CONFIG_DIR}/ingest.toml"],
            ports=[("https", PORT), ("metrics", METRICS_PORT)],
            env=pod_tls_env(MQTT_TLS_DIR),
            mounts=[("config", CONFIG_DIR), ("mqtt-tls", MQTT_TLS_DIR), ("server-tls", SERVER_TLS_DIR), ("tmp", "/tmp")],
            pod_name_env=True,
            writable=["tmp"],
            probe_port=PORT, probe_path="/healthz", probe_scheme="HTTPS", liveness_path="/livez",
        )
        replicas = k8s.apps.v1.StatefulSet(
            f"{name}-sts", metadata=metadata(APP, ns, APP),
            spec={
                "serviceName": headless.metadata.name,
                "replicas": args.replicas,
                # Stateless replicas need not start one after the other (updates still roll one pod at a time).
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": selector(APP)},
                "template": {
                    # ingest.toml (the verifier's role tables included) is read only at start; certificates reload in
                    # place. A changed file rolls the replicas one at a time.
                    "metadata": template_metadata(APP, [api], config={"ingest.toml": conf_text}),
                    "spec": pod_spec([api], service_account=sa.metadata.name, spread_app=APP,
                                     volumes=[config_volume("config", conf.metadata.name),
                                              per_pod_secrets_volume("mqtt-tls", [(f"{APP}-{n}", secret) for n, secret
                                                                                   in enumerate(args.mqtt_tls_secrets)]),
                                              secret_volume("server-tls", args.server_tls_secret), empty_dir("tmp")]),
                },
            },
            opts=o,
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb", metadata=metadata(APP, ns, APP),
            spec={"minAvailable": 1, "selector": {"matchLabels": selector(APP)}}, opts=o,
        )
        self.service_name = svc.metadata.name
        self.statefulset_name = replicas.metadata.name
        self.register_outputs({"service_name": self.service_name, "statefulset_name": self.statefulset_name})
