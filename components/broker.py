"""The MQTT broker (Mosquitto): 8883 mTLS for edge sites, 1883 plain for in-namespace clients.

Two Services keep the contract obvious: ``broker`` (ClusterIP, 1883 + 8883) for the
cluster, and ``broker-external`` (8883 only) for edge sites — a ``LoadBalancer`` on private
clusters, a ``ClusterIP`` bound to the region's NLB target group on AWS (see
``components/aws_ingress.py``). Clients authenticate with certificates whose CN is the site
id (``use_identity_as_username``); the ACL lets a site write only under ``ems/v1/<site>/``.
Sessions and in-flight QoS 1 messages persist on a volume from the CSI class.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.k8s_common import (
    ComponentArgsError, Resources, child, config_volume, container, labels, metadata,
    pod_spec, secret_volume, selector, template_metadata,
)

APP = "broker"
MQTT_PORT = 1883
MQTTS_PORT = 8883

MOSQUITTO_CONF = f"""\
per_listener_settings true
persistence true
persistence_location /mosquitto/data/
autosave_interval 30
# Never drop QoS 1 messages queued for an offline ingest session: an edge site deletes a
# reading from its spool once the broker acknowledged it, so a drop here would be a loss.
max_queued_messages 0
max_packet_size 1048576
connection_messages true
log_dest stdout
log_type error
log_type warning
log_type notice

# Edge sites and the in-cluster bridge: mutual TLS, CN = username.
listener {MQTTS_PORT}
cafile /mosquitto/tls/ca.crt
certfile /mosquitto/tls/tls.crt
keyfile /mosquitto/tls/tls.key
require_certificate true
use_identity_as_username true
tls_version tlsv1.2
acl_file /mosquitto/config/acl

# In-namespace consumers (ingest workers); NetworkPolicy keeps it inside the namespace.
listener {MQTT_PORT}
allow_anonymous true
"""

# On 8883 a site may read and write only its own subtree ems/v1/<site>/ (CN = username).
# The 1883 listener has no ACL: only in-namespace pods (the ingest) reach it.
ACL = """\
pattern readwrite ems/v1/%u/#
"""


@dataclass(frozen=True)
class BrokerArgs:
    namespace: pulumi.Input[str]
    """Namespace of every object."""
    image: str
    """Mosquitto image with an explicit tag."""
    tls_secret: pulumi.Input[str]
    """``kubernetes.io/tls`` Secret with tls.crt, tls.key, ca.crt of the broker."""
    storage_class: pulumi.Input[str]
    """StorageClass of the persistence volume."""
    storage_size: str = "20Gi"
    """Size of the persistence volume. Defaults to 20Gi."""
    external_service_type: str = "LoadBalancer"
    """Type of ``broker-external`` (8883 only): LoadBalancer or ClusterIP. Defaults to LoadBalancer."""
    resources: Resources = Resources("250m", "256Mi", "1", "1Gi")
    """Container requests/limits. Defaults to 250m/256Mi, limits 1 CPU/1Gi."""


class MqttBroker(pulumi.ComponentResource):
    """Mosquitto StatefulSet with its config, Services, ServiceAccount and PodDisruptionBudget."""

    service_name: pulumi.Output[str]
    external_service_name: pulumi.Output[str]
    service_account_name: pulumi.Output[str]

    def __init__(self, name: str, args: BrokerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if args.external_service_type not in ("LoadBalancer", "ClusterIP"):
            raise ComponentArgsError(name, "external_service_type", args.external_service_type, "must be LoadBalancer or ClusterIP")
        super().__init__("ems:workloads:MqttBroker", name, None, opts)
        o = child(self)
        ns = args.namespace
        sa = k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=metadata(APP, ns, APP), automount_service_account_token=False, opts=o)
        conf = k8s.core.v1.ConfigMap(f"{name}-config", metadata=metadata(f"{APP}-config", ns, APP),
                                     data={"mosquitto.conf": MOSQUITTO_CONF, "acl": ACL}, opts=o)
        internal = k8s.core.v1.Service(
            f"{name}-svc",
            metadata=metadata(APP, ns, APP),
            spec={
                "type": "ClusterIP",
                "selector": selector(APP),
                "ports": [
                    {"name": "mqtt", "port": MQTT_PORT, "targetPort": "mqtt", "protocol": "TCP"},
                    {"name": "mqtts", "port": MQTTS_PORT, "targetPort": "mqtts", "protocol": "TCP"},
                ],
            },
            opts=o,
        )
        # The StatefulSet's governing Service must be headless (stable pod DNS names).
        headless = k8s.core.v1.Service(
            f"{name}-headless",
            metadata=metadata(f"{APP}-headless", ns, APP),
            spec={"clusterIP": "None", "selector": selector(APP),
                  "ports": [{"name": "mqtt", "port": MQTT_PORT, "targetPort": "mqtt", "protocol": "TCP"}]},
            opts=o,
        )
        external_spec: dict[str, object] = {
            "type": args.external_service_type,
            "selector": selector(APP),
            "ports": [{"name": "mqtts", "port": MQTTS_PORT, "targetPort": "mqtts", "protocol": "TCP"}],
        }
        if args.external_service_type == "LoadBalancer":
            external_spec["externalTrafficPolicy"] = "Local"
        external = k8s.core.v1.Service(f"{name}-external", metadata=metadata(f"{APP}-external", ns, APP), spec=external_spec, opts=o)

        broker = container(
            "mosquitto", args.image, args.resources,
            command=["mosquitto", "-c", "/mosquitto/config/mosquitto.conf"],
            ports=[("mqtt", MQTT_PORT), ("mqtts", MQTTS_PORT)],
            mounts=[("config", "/mosquitto/config"), ("tls", "/mosquitto/tls"), ("data", "/mosquitto/data")],
            writable=["data"],
            probe_port=MQTT_PORT,
        )
        k8s.apps.v1.StatefulSet(
            f"{name}-sts",
            metadata=metadata(APP, ns, APP),
            spec={
                "serviceName": headless.metadata.name,
                "replicas": 1,
                "selector": {"matchLabels": selector(APP)},
                "template": {
                    "metadata": template_metadata(APP, [broker]),
                    "spec": pod_spec(
                        [broker], service_account=sa.metadata.name,
                        volumes=[config_volume("config", conf.metadata.name), secret_volume("tls", args.tls_secret)],
                    ),
                },
                "volumeClaimTemplates": [{
                    "metadata": {"name": "data", "labels": labels(APP)},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": args.storage_class,
                        "resources": {"requests": {"storage": args.storage_size}},
                    },
                }],
            },
            opts=o,
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb", metadata=metadata(APP, ns, APP),
            spec={"maxUnavailable": 1, "selector": {"matchLabels": selector(APP)}}, opts=o,
        )
        self.service_name = internal.metadata.name
        self.external_service_name = external.metadata.name
        self.service_account_name = sa.metadata.name
        self.register_outputs({
            "service_name": self.service_name,
            "external_service_name": self.external_service_name,
            "service_account_name": self.service_account_name,
        })
