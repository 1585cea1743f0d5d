"""Grafana behind the API gateway: the TSDB as a provisioned datasource, the repo's dashboards provisioned.

A Deployment of the Grafana image on :data:`PORT` (the policy pack's named internal port
``grafana``), served under ``/grafana/`` of the gateway. Everything is provisioned from files, so
the pod keeps nothing worth keeping (its SQLite database is an emptyDir):

* the datasource ``ems-tsdb`` (Prometheus, the platform TSDB), read-only in the UI;
* every ``dashboards/*.json`` of this repository in the folder "EMS", read-only in the UI
  (changes go through the repo), checked here before they are deployed (:func:`load_dashboards`).

Users come from the gateway (**auth proxy**): the gateway authenticates every request (client
certificate or OIDC, issue 12) and sets the user and the Grafana role headers
(``X-Ems-User`` and ``X-Ems-Grafana-Role``: Viewer, Editor or Admin from the user's EMS role), so
a viewer in Grafana is a viewer everywhere. Only the gateway may reach Grafana (NetworkPolicy),
and it removes any copy of those headers a client sends. Anonymous access, sign-up, Gravatar,
update checks and usage reporting are off (Grafana has no egress but the TSDB). The built-in
admin's password is a secret (``ems:grafanaAdminPassword``) mounted as a file; without one there is
no Secret, the login form and basic authentication are off, and only the auth proxy logs in.

The component brings its own NetworkPolicies (the namespace denies everything by default):
api-gateway → grafana :data:`PORT`, grafana → tsdb 9090.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from components.k8s_common import (
    ComponentArgsError, Resources, child, config_volume, container, digest_key, empty_dir, metadata,
    pod_spec, secret_volume, selector, template_metadata,
)

APP = "grafana"
PORT = 3000
"""Grafana's HTTP port (policy config ``internalPorts["grafana"]``)."""
GRAFANA_UID = 472
"""The Grafana image's user."""
DATASOURCE_UID = "ems-tsdb"
"""The datasource every dashboard names (``dashboards/*.json``)."""
DASHBOARDS_DIR = Path(__file__).resolve().parents[1] / "dashboards"
SUB_PATH = "/grafana/"
PROVISIONING_DIR = "/etc/grafana/provisioning"
DASHBOARD_MOUNT = "/etc/grafana/dashboards"
ADMIN_DIR = "/etc/grafana/admin"
MAX_CONFIGMAP_BYTES = 900 * 1024        # Kubernetes limits a ConfigMap to 1 MiB; keep room for metadata


def load_dashboards(name: str, directory: Path = DASHBOARDS_DIR) -> dict[str, str]:
    """file name → JSON text of every ``*.json`` in ``directory``, checked: an object with a unique ``uid``
    and ``title``, panels whose datasource is :data:`DATASOURCE_UID`. Raises ComponentArgsError naming the file."""
    out: dict[str, str] = {}
    uids: dict[str, str] = {}
    for path in sorted(directory.glob("*.json")):
        field = f"dashboards/{path.name}"
        text = path.read_text(encoding="utf-8")
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ComponentArgsError(name, field, path.name, f"is not JSON ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("uid"), str) or not doc.get("title"):
            raise ComponentArgsError(name, f"{field} uid", doc.get("uid") if isinstance(doc, dict) else doc,
                                     "must be a dashboard object with a uid and a title")
        if doc["uid"] in uids:
            raise ComponentArgsError(name, f"{field} uid", doc["uid"], f"is already used by {uids[doc['uid']]}")
        uids[doc["uid"]] = path.name
        for panel in doc.get("panels", []):
            used = {(panel.get("datasource") or {}).get("uid")} | {(t.get("datasource") or {}).get("uid")
                                                                 for t in panel.get("targets", [])}
            if used != {DATASOURCE_UID}:
                raise ComponentArgsError(name, f"{field} panel {panel.get('id')} datasource", sorted(map(str, used)),
                                         f"must be {DATASOURCE_UID}")
        out[path.name] = text
    if not out:
        raise ComponentArgsError(name, "dashboards", str(directory), "holds no *.json dashboard")
    size = sum(len(t.encode()) for t in out.values())
    if size > MAX_CONFIGMAP_BYTES:
        raise ComponentArgsError(name, "dashboards", f"{size} bytes", f"must fit one ConfigMap ({MAX_CONFIGMAP_BYTES} bytes)")
    return out


def datasource_yaml(tsdb_url: str) -> str:
    """Grafana datasource provisioning: the TSDB as the default, non-editable Prometheus datasource."""
    doc = {"apiVersion": 1, "datasources": [{
        "name": "EMS TSDB", "uid": DATASOURCE_UID, "type": "prometheus", "access": "proxy", "url": tsdb_url,
        "isDefault": True, "editable": False, "jsonData": {"httpMethod": "POST", "timeInterval": "15s"},
    }]}
    return json.dumps(doc, indent=2) + "\n"          # JSON is YAML


def dashboard_provider_yaml() -> str:
    """Grafana dashboard provisioning: the mounted files, folder "EMS", not editable or deletable in the UI."""
    doc = {"apiVersion": 1, "providers": [{
        "name": "ems", "folder": "EMS", "type": "file", "disableDeletion": True, "allowUiUpdates": False,
        "updateIntervalSeconds": 60, "options": {"path": DASHBOARD_MOUNT},
    }]}
    return json.dumps(doc, indent=2) + "\n"


def grafana_ini(root_url: str, user_header: str, role_header: str, *, login_form: bool) -> str:
    """grafana.ini: sub-path serving, auth proxy on the gateway's headers, nothing anonymous, nothing phoning home.

    ``login_form``: the break-glass admin password is mounted at ``ADMIN_DIR/password``; the login form and basic
    authentication are on only then.
    """
    admin = f"admin_password = $__file{{{ADMIN_DIR}/password}}\n" if login_form else ""
    return f"""\
[server]
http_port = {PORT}
root_url = {root_url}
serve_from_sub_path = true

[paths]
data = /var/lib/grafana
provisioning = {PROVISIONING_DIR}

[log]
mode = console

[analytics]
reporting_enabled = false
check_for_updates = false
check_for_plugin_updates = false

[security]
cookie_secure = true
disable_gravatar = true
{admin}
[users]
allow_sign_up = false
auto_assign_org_role = Viewer

[auth]
disable_login_form = {str(not login_form).lower()}

[auth.basic]
enabled = {str(login_form).lower()}

[auth.anonymous]
enabled = false

[auth.proxy]
enabled = true
header_name = {user_header}
header_property = username
auto_sign_up = true
headers = Role:{role_header}

[dashboards]
default_home_dashboard_path = {DASHBOARD_MOUNT}/fleet.json
"""


@dataclass(frozen=True)
class GrafanaArgs:
    namespace: pulumi.Input[str]
    """Namespace of every object."""
    image: str
    """Grafana image with an explicit tag."""
    tsdb_url: str
    """TSDB base URL (the datasource)."""
    root_url: str
    """Public URL Grafana is served at through the gateway, ending in ``/grafana/``."""
    user_header: str = "X-Ems-User"
    """Header with the authenticated user, set by the gateway. Defaults to ``X-Ems-User``."""
    role_header: str = "X-Ems-Grafana-Role"
    """Header with the Grafana role (Viewer, Editor, Admin), set by the gateway. Defaults to ``X-Ems-Grafana-Role``."""
    admin_password: pulumi.Input[str] | None = None
    """Secret admin password; None turns the login form and basic auth off. Defaults to None."""
    replicas: int = 1
    """Replicas (stateless: everything is provisioned). Defaults to 1."""
    dashboards_dir: Path = DASHBOARDS_DIR
    """Folder of the dashboard JSON files. Defaults to the repository's ``dashboards/``."""
    resources: Resources = Resources("100m", "128Mi", "1", "512Mi")
    """Container requests/limits. Defaults to 100m/128Mi, limits 1 CPU/512Mi."""


class Grafana(pulumi.ComponentResource):
    """Deployment, ConfigMaps, ClusterIP Service, NetworkPolicies and (with a password) the admin Secret of Grafana."""

    service_name: pulumi.Output[str]
    url: pulumi.Output[str]

    def __init__(self, name: str, args: GrafanaArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if not 1 <= args.replicas <= 10:
            raise ComponentArgsError(name, "replicas", args.replicas, "must be 1..10")
        if not args.root_url.startswith("https://") or not args.root_url.endswith(SUB_PATH):
            raise ComponentArgsError(name, "root_url", args.root_url, f"must be an https:// URL ending in {SUB_PATH}")
        if args.user_header.lower() == args.role_header.lower():
            raise ComponentArgsError(name, "role_header", args.role_header, "must differ from user_header")
        dashboards = load_dashboards(name, args.dashboards_dir)
        super().__init__("ems:workloads:Grafana", name, None, opts)
        o = child(self)
        ns = args.namespace
        login_form = args.admin_password is not None
        sa = k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=metadata(APP, ns, APP),
                                        automount_service_account_token=False, opts=o)
        settings: dict[str, pulumi.Input[str]] = {
            "grafana.ini": grafana_ini(args.root_url, args.user_header, args.role_header, login_form=login_form),
            "datasources.yaml": datasource_yaml(args.tsdb_url),
            "dashboards.yaml": dashboard_provider_yaml(),
        }
        conf = k8s.core.v1.ConfigMap(f"{name}-config", metadata=metadata(f"{APP}-config", ns, APP), data=settings, opts=o)
        boards = k8s.core.v1.ConfigMap(f"{name}-dashboards", metadata=metadata(f"{APP}-dashboards", ns, APP),
                                       data=dashboards, opts=o)
        volumes = [
            _items_volume("config", conf.metadata.name, "grafana.ini"),
            _items_volume("datasources", conf.metadata.name, "datasources.yaml"),
            _items_volume("providers", conf.metadata.name, "dashboards.yaml"),
            config_volume("dashboards", boards.metadata.name),
            empty_dir("data", "1Gi"), empty_dir("logs"), empty_dir("tmp"),
        ]
        mounts = [("config", "/etc/grafana/grafana.ini.d"), ("datasources", f"{PROVISIONING_DIR}/datasources"),
                  ("providers", f"{PROVISIONING_DIR}/dashboards"), ("dashboards", DASHBOARD_MOUNT),
                  ("data", "/var/lib/grafana"), ("logs", "/var/log/grafana"), ("tmp", "/tmp")]
        if args.admin_password is not None:
            admin = k8s.core.v1.Secret(f"{name}-admin", metadata=metadata(f"{APP}-admin", ns, APP), type="Opaque",
                                       string_data={"password": pulumi.Output.secret(args.admin_password)},
                                       opts=child(self, additional_secret_outputs=["stringData", "data"]))
            volumes.append(secret_volume("admin", admin.metadata.name))
            mounts.append(("admin", ADMIN_DIR))
        # Read only at start: grafana.ini, the provisioning files and the admin password (used when the empty database
        # is created, i.e. at every start). A change rolls the pods. Not the dashboards: the file provider re-reads them
        # every updateIntervalSeconds from the whole-mounted ConfigMap, which the kubelet updates in place.
        started_with = {**settings, **({"admin/password": args.admin_password} if args.admin_password is not None else {})}
        password_key = digest_key(name, self) if args.admin_password is not None else None
        svc = k8s.core.v1.Service(f"{name}-svc", metadata=metadata(APP, ns, APP), spec={
            "type": "ClusterIP", "selector": selector(APP),
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]}, opts=o)
        grafana = container(
            "grafana", args.image, args.resources, ports=[("http", PORT)],
            env={"GF_PATHS_CONFIG": "/etc/grafana/grafana.ini.d/grafana.ini"},
            mounts=mounts, writable=["data", "logs", "tmp"], run_as_user=GRAFANA_UID, probe_port=PORT,
        )
        deploy = k8s.apps.v1.Deployment(f"{name}-deploy", metadata=metadata(APP, ns, APP), spec={
            "replicas": args.replicas,
            "selector": {"matchLabels": selector(APP)},
            "template": {"metadata": template_metadata(APP, [grafana], config=started_with, config_key=password_key),
                         "spec": pod_spec([grafana], service_account=sa.metadata.name, volumes=volumes,
                                          fs_group=GRAFANA_UID, spread_app=APP)},
        }, opts=o)
        _network_policies(name, ns, o)
        self.service_name = svc.metadata.name
        self.deployment_name = deploy.metadata.name
        self.url = pulumi.Output.from_input(args.root_url)
        self.register_outputs({"service_name": self.service_name, "deployment_name": self.deployment_name,
                               "url": self.url})


def _items_volume(volume: str, config_map: pulumi.Input[str], key: str) -> dict[str, object]:
    """One key of a ConfigMap as a volume (each provisioning folder must hold only its own file)."""
    return {"name": volume, "configMap": {"name": config_map, "defaultMode": 0o444, "items": [{"key": key, "path": key}]}}


def _network_policies(name: str, namespace: pulumi.Input[str], opts: pulumi.ResourceOptions) -> None:
    """gateway → grafana:PORT and grafana → tsdb:9090, as separate policies (they add to the namespace's default deny)."""
    def pods(app: str) -> dict[str, object]:
        return {"podSelector": {"matchLabels": selector(app)}}

    tcp = lambda port: [{"protocol": "TCP", "port": port}]  # noqa: E731
    k8s.networking.v1.NetworkPolicy(f"{name}-netpol", metadata=metadata(APP, namespace, APP), spec={
        **pods(APP), "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [pods("api-gateway")], "ports": tcp(PORT)}],
        "egress": [{"to": [pods("tsdb")], "ports": tcp(9090)}]}, opts=opts)
    k8s.networking.v1.NetworkPolicy(f"{name}-netpol-gateway", metadata=metadata("api-gateway-to-grafana", namespace, APP), spec={
        **pods("api-gateway"), "policyTypes": ["Egress"], "egress": [{"to": [pods(APP)], "ports": tcp(PORT)}]}, opts=opts)
    k8s.networking.v1.NetworkPolicy(f"{name}-netpol-tsdb", metadata=metadata("tsdb-from-grafana", namespace, APP), spec={
        **pods("tsdb"), "policyTypes": ["Ingress"], "ingress": [{"from": [pods(APP)], "ports": tcp(9090)}]}, opts=opts)
