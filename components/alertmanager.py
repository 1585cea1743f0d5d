"""Alertmanager: receives the TSDB's alerts, groups them by site, inhibits, and delivers to receivers.

``alertmanager_config(receivers, urls)`` renders ``alertmanager.yml``:

* route: group by ``alertname`` and ``site`` (one notification per site and kind, not per
  device), each receiver matched on the severities it takes (``severity=~"critical|warning"``),
  ``continue`` so that several receivers may take one alert; alerts no receiver takes go to
  ``ems-null`` (nothing);
* inhibition: while ``EmsSiteSilent`` fires for a site, the site's alerts of scope ``device``
  and ``asset`` are held back (their metrics are stale, not news); an ``EmsHotSpotAboveLimit``
  holds back the same asset's ``EmsHotSpotLimitPredicted``;
* receivers: webhooks. Their URLs carry credentials (tokens in the path or user-info), so they
  come from the secret ``ems:alertReceiverUrls`` (JSON object receiver → URL) and the whole
  file is a Kubernetes Secret, never a ConfigMap or a plain output.

The component: Alertmanager as a one-replica StatefulSet (its silences and notification log on
an emptyDir: state is lost with the pod, alerts are not — the TSDB re-sends them), a Service on
:data:`PORT` for its clients, the headless :data:`HEADLESS_SERVICE` that governs the StatefulSet (per-pod DNS), a
ServiceAccount without a token. A changed ``alertmanager.yml`` is reloaded in place
by the ``config-reloader`` sidecar (``components/config_reload.py``), so the silences survive it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pulumi
import pulumi_kubernetes as k8s
import yaml

from ems_contract.config_file import url_problem
from components.alerts import SEVERITIES, SITE_SILENT, AlertReceiver as Receiver
from components.k8s_common import (
    ComponentArgsError, Resources, child, container, empty_dir, metadata, pod_spec, secret_volume, selector,
    template_metadata,
)
from components.config_reload import DEFAULT_CONTAINER_ANNOTATION, reloader_container

__all__ = ["APP", "HEADLESS_SERVICE", "PORT", "Receiver", "AlertmanagerArgs", "Alertmanager", "alertmanager_config", "check_url"]

APP = "alertmanager"
PORT = 9093
HEADLESS_SERVICE = f"{APP}-headless"
CONFIG_DIR = "/etc/alertmanager"
ALERTMANAGER_UID = 65534


def check_url(receiver: str, url: object) -> str:
    """A webhook URL (http or https, with a host); raises ValueError naming the receiver, never the URL
    (it may hold a token)."""
    problem = url_problem(url, ("http", "https"))
    if problem is not None:
        raise ValueError(f"ems:alertReceiverUrls.{receiver} must be an http:// or https:// URL with a host{problem}")
    return url  # type: ignore[return-value]


def alertmanager_config(receivers: tuple[Receiver, ...], urls: Mapping[str, str], *, group_wait: str = "30s",
                        group_interval: str = "5m", repeat_interval: str = "4h") -> str:
    """alertmanager.yml for ``receivers``, their webhook URLs from ``urls`` (ValueError when one is missing or bad).

    The timings default to Alertmanager's usual 30s / 5m / 4h; tests shorten them.
    """
    missing = [r.name for r in receivers if r.name not in urls]
    if missing:
        raise ValueError(f"ems:alertReceiverUrls has no URL for receiver(s) {', '.join(missing)}")
    unknown = sorted(set(urls) - {r.name for r in receivers})
    if unknown:
        raise ValueError(f"ems:alertReceiverUrls names receiver(s) {', '.join(unknown)} not in ems:alertReceivers")
    routes = [{"receiver": r.name, "matchers": [f'severity=~"{"|".join(r.severities)}"'], "continue": True}
              for r in receivers]
    doc = {
        "route": {
            "receiver": "ems-null",
            "group_by": ["alertname", "site"],
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
            "routes": routes,
        },
        "inhibit_rules": [
            {"source_matchers": [f'alertname="{SITE_SILENT}"'],
             "target_matchers": ['scope=~"device|asset"'], "equal": ["site"]},
            {"source_matchers": ['alertname="EmsHotSpotAboveLimit"'],
             "target_matchers": ['alertname="EmsHotSpotLimitPredicted"'], "equal": ["site", "asset"]},
        ],
        "receivers": [{"name": "ems-null"}] + [
            {"name": r.name, "webhook_configs": [{"url": check_url(r.name, urls[r.name]),
                                                  "send_resolved": r.send_resolved}]}
            for r in receivers],
    }
    return yaml.safe_dump(doc, sort_keys=False)


@dataclass(frozen=True)
class AlertmanagerArgs:
    namespace: pulumi.Input[str]
    """Namespace of every object."""
    image: str
    """Alertmanager image with an explicit tag."""
    receivers: tuple[Receiver, ...] = ()
    """Webhook receivers; none: alerts are kept (visible in the UI/API) and sent nowhere. Defaults to none."""
    receiver_urls: pulumi.Input[Mapping[str, str]] | None = None
    """Secret: receiver name → webhook URL. Required when ``receivers`` is not empty. Defaults to None."""
    resources: Resources = Resources("50m", "64Mi", "500m", "256Mi")
    """Container requests/limits. Defaults to 50m/64Mi, limits 0.5 CPU/256Mi."""


class Alertmanager(pulumi.ComponentResource):
    """Alertmanager StatefulSet, its config Secret, Service on :data:`PORT`, governing headless Service, ServiceAccount."""

    service_name: pulumi.Output[str]
    address: pulumi.Output[str]

    def __init__(self, name: str, args: AlertmanagerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        names = [r.name for r in args.receivers]
        if len(set(names)) != len(names):
            raise ComponentArgsError(name, "receivers", names, "must have unique names")
        for r in args.receivers:
            if not r.severities or any(s not in SEVERITIES for s in r.severities):
                raise ComponentArgsError(name, f"receivers.{r.name}.severities", r.severities,
                                         f"must be a non-empty list of {', '.join(SEVERITIES)}")
        if args.receivers and args.receiver_urls is None:
            raise ComponentArgsError(name, "receiver_urls", None, "is required when receivers are configured")
        super().__init__("ems:workloads:Alertmanager", name, None, opts)
        o = child(self)
        ns = args.namespace
        urls = pulumi.Output.secret(args.receiver_urls if args.receiver_urls is not None else {})
        config_text = pulumi.Output.secret(urls.apply(lambda u: alertmanager_config(args.receivers, dict(u))))
        sa = k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=metadata(APP, ns, APP),
                                        automount_service_account_token=False, opts=o)
        secret = k8s.core.v1.Secret(f"{name}-config", metadata=metadata(f"{APP}-config", ns, APP),
                                    string_data={"alertmanager.yml": config_text},
                                    opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["stringData", "data"]))
        svc = k8s.core.v1.Service(
            f"{name}-svc", metadata=metadata(APP, ns, APP),
            spec={"type": "ClusterIP", "selector": selector(APP),
                  "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]},
            opts=o,
        )
        # The StatefulSet's governing Service must be headless: only then does the pod get its DNS name
        # (alertmanager-0.alertmanager-headless.<ns>.svc), the name cluster peers would gossip on (``--cluster.peer``)
        # if Alertmanager ever ran more than one replica. Clients keep using the ClusterIP Service above.
        headless = k8s.core.v1.Service(
            f"{name}-headless", metadata=metadata(HEADLESS_SERVICE, ns, APP),
            spec={"clusterIP": "None", "selector": selector(APP),
                  "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]},
            opts=o,
        )
        am = container(
            "alertmanager", args.image, args.resources,
            args=[f"--config.file={CONFIG_DIR}/alertmanager.yml", "--storage.path=/alertmanager",
                  f"--web.listen-address=:{PORT}", "--cluster.listen-address="],      # one replica: no gossip port
            ports=[("http", PORT)],
            mounts=[("config", CONFIG_DIR), ("data", "/alertmanager")],
            writable=["data"],
            run_as_user=ALERTMANAGER_UID,
            probe_port=PORT, probe_path="/-/ready",
        )
        reloader = reloader_container(args.image, "alertmanager", [f"{CONFIG_DIR}/alertmanager.yml"], [("config", CONFIG_DIR)],
                                      run_as_user=ALERTMANAGER_UID)
        k8s.apps.v1.StatefulSet(
            f"{name}-sts", metadata=metadata(APP, ns, APP),
            spec={
                "serviceName": headless.metadata.name,
                "replicas": 1,
                "selector": {"matchLabels": selector(APP)},
                "template": {
                    # A new alertmanager.yml is reloaded in place (SIGHUP from the sidecar): a restart would drop the
                    # silences and the notification log, which live on the emptyDir (docs/deploy.md).
                    "metadata": template_metadata(APP, [am, reloader], annotations={DEFAULT_CONTAINER_ANNOTATION: "alertmanager"}),
                    "spec": pod_spec([am, reloader], service_account=sa.metadata.name, share_process_namespace=True,
                                     volumes=[secret_volume("config", secret.metadata.name), empty_dir("data")]),
                },
            },
            opts=o,
        )
        self.service_name = svc.metadata.name
        self.address = pulumi.Output.concat(svc.metadata.name, ".", ns, ".svc.cluster.local:", str(PORT))
        self.register_outputs({"service_name": self.service_name, "address": self.address})
