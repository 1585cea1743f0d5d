"""The MQTT broker (Mosquitto): 8883 mTLS for every workload client, 1883 plain for in-namespace tools.

Two Services keep the contract obvious: ``broker`` (ClusterIP, 1883 + 8883) for the
cluster, and ``broker-external`` (8883 only) for edge sites — a ``LoadBalancer`` on private
clusters, a ``ClusterIP`` bound to the region's NLB target group on AWS (see
``components/aws_ingress.py``). Sessions and in-flight QoS 1 messages persist on a volume
from the CSI class.

Who uses what:

| client | listener | identity (certificate CN = MQTT username) | ACL |
|---|---|---|---|
| edge sites | 8883 (``broker-external``) | the site id | read/write ``ems/v1/<site>/#`` only |
| Modbus bridge | 8883 (``broker``) | ``<namespace>-bridge`` | like a site |
| ingest workers | 8883 (``broker``) | ``ingest_identity`` (e.g. ``ems-ingest``) | read ``ems/v1/+/telemetry``, write ``ems/v1/deadletter/#`` |
| operators' tools | 1883, from inside the namespace | anonymous | read ``ems/v1/#`` only (no workload's NetworkPolicy allows egress to 1883) |

``use_identity_as_username``: the username is the certificate's CN and a CONNECT username is
ignored; the client id stays the client's own (each ingest worker keeps its pod-derived id and
its persistent session while all workers share one certificate identity).

Mosquitto 2.0's ``acl_file`` (verified against Debian's 2.0.11 in ``tests/components/
test_broker_config.py``) grants every SUBSCRIBE, shared or not — the SUBACK never refuses —
and applies ``read`` when it delivers a message, against the message's own topic: the
ingest's ``$share/<group>/ems/v1/+/telemetry`` is served by ``topic read ems/v1/+/telemetry``
(the read check sees the message's topic, never the ``$share/...`` filter). A site that subscribes to another site's topics,
directly or through any ``$share`` group, is sent nothing. A refused QoS 1 PUBLISH gets PUBACK
135 and then (with ``max_queued_messages 0``) the broker closes that client's connection.

Known limit (observed with 2.0.11, not fixed here): the broker picks the member of a shared
subscription *before* the read check, so a certificate holder that subscribes with the
ingest's exact group and filter is picked for its share of the messages and the broker drops
them (5 of 10 in our probe). Keeping edge certificates to edge sites, and an ACL mechanism that
checks SUBSCRIBE, are the defences; the file ACL cannot express it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from edge_agent.schema import TOPIC_ROOT, deadletter_topic, telemetry_subscription

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

# Every workload client (edge sites, the Modbus bridge, the ingest workers): mutual TLS, CN = username.
listener {MQTTS_PORT}
cafile /mosquitto/tls/ca.crt
certfile /mosquitto/tls/tls.crt
keyfile /mosquitto/tls/tls.key
require_certificate true
use_identity_as_username true
tls_version tlsv1.2
acl_file /mosquitto/config/acl

# In-namespace tools only (no workload uses it); NetworkPolicy keeps it inside the namespace.
# Anonymous and read-only: a tool observes every site's messages but cannot forge any.
listener {MQTT_PORT}
allow_anonymous true
acl_file /mosquitto/config/acl-plain
"""

DEADLETTERS = deadletter_topic("#")            # ems/v1/deadletter/#
RESERVED_IDENTITY = DEADLETTERS.split("/")[2]   # a site named "deadletter" could write dead letters
_IDENTITY = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def plain_acl() -> str:
    """The 1883 listener's ACL: anonymous clients (the lines before any ``user``) read
    everything under ``ems/v1/`` and write nothing — a refused QoS 1 publish gets PUBACK 135."""
    return "\n".join(["# Anonymous in-namespace tools: observe only.", f"topic read {TOPIC_ROOT}/#", ""])


def broker_acl(ingest_identity: str) -> str:
    """The 8883 listener's ACL (the 1883 listener has :func:`plain_acl`).

    Every identity may read and write its own subtree ``ems/v1/<CN>/`` (edge sites, the
    bridge). The ingest identity also reads every site's telemetry — which is what its
    ``$share/<group>/ems/v1/+/telemetry`` subscription is checked against on delivery — and
    writes dead letters. Nothing else: no twins, no status, no other site's subtree.
    """
    return "\n".join([
        "# Each identity: its own subtree only (CN = username).",
        f"pattern readwrite {TOPIC_ROOT}/%u/#",
        "",
        "# Ingest workers: every site's telemetry (via their shared subscription), dead letters.",
        f"user {ingest_identity}",
        f"topic read {telemetry_subscription()}",
        f"topic write {DEADLETTERS}",
        "",
    ])


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
    ingest_identity: str
    """Certificate CN (= MQTT username) of the ingest workers: reads all telemetry, writes dead letters."""
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
        if not _IDENTITY.fullmatch(args.ingest_identity) or args.ingest_identity == RESERVED_IDENTITY:
            raise ComponentArgsError(name, "ingest_identity", args.ingest_identity,
                                     f"must be a DNS label other than {RESERVED_IDENTITY!r}")
        super().__init__("ems:workloads:MqttBroker", name, None, opts)
        o = child(self)
        ns = args.namespace
        sa = k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=metadata(APP, ns, APP), automount_service_account_token=False, opts=o)
        conf = k8s.core.v1.ConfigMap(f"{name}-config", metadata=metadata(f"{APP}-config", ns, APP),
                                     data={"mosquitto.conf": MOSQUITTO_CONF, "acl": broker_acl(args.ingest_identity),
                                           "acl-plain": plain_acl()}, opts=o)
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
