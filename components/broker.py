"""The MQTT broker (Mosquitto): 8883 mTLS for every workload client, 1883 plain on the pod's loopback for operators.

Two Services keep the contract obvious: ``broker`` (ClusterIP, 8883) for the
cluster, and ``broker-external`` (8883 only) for edge sites — a ``LoadBalancer`` on private
clusters, a ``ClusterIP`` bound to the region's NLB target group on AWS (see
``components/aws_ingress.py``). Sessions and in-flight QoS 1 messages persist on a volume
from the CSI class.

Who uses what (on 8883 the certificate's CN is the MQTT username *and* the client id):

| client | listener | identity (certificate CN = username = client id) | may |
|---|---|---|---|
| edge sites | 8883 (``broker-external``) | the site id | publish/subscribe/receive ``ems/v1/<site>/#`` only, but never publish ``ems/v1/<site>/command`` |
| ems-gateway (the protocol gateway) | 8883 (``broker``) | ``ems-bridge`` | like a site |
| ingest workers | 8883 (``broker``) | one per StatefulSet ordinal: ``ems-ingest-ingest-<n>``, n below the HPA's maximum (``ingest_identities``) | subscribe exactly ``$share/<ingest_group>/ems/v1/+/telemetry``, receive ``ems/v1/+/telemetry``, publish ``ems/v1/deadletter/#``, subscribe and receive every worker's ``ems/v1/<worker>/seen``; its own subtree like a site |
| twin API | 8883 (``broker``) | one per replica: ``ems-twin-api-twin-api-<n>`` (``twin_identities``) | subscribe exactly ``ems/v1/+/twin/+`` and receive those twins (retained ones included); no publish, no subtree of its own |
| north-bound client | 8883 (``broker``) | ``northbound_identities`` (``ems-northbound``) | publish ``ems/v1/<site>/command`` and subscribe to and receive ``ems/v1/<site>/command-result`` for each of ``northbound_sites`` only (subscribing to ``ems/v1/+/command-result`` is granted; delivery stays per site); its own subtree like a site |
| any other certificate of the CA | 8883 | its CN | connects under its own CN as client id, and may do nothing (no SUBSCRIBE granted, no PUBLISH accepted) |
| operators' tools | 1883 on 127.0.0.1 of the broker pod (``kubectl exec`` / ``port-forward``) | anonymous | read ``ems/v1/#`` only |

A session belongs to a certificate: ``use_identity_as_username`` makes the CN the username
(a CONNECT username is ignored) and ``use_username_as_clientid`` makes it the client id (the
client id a client sends is replaced, and the CONNACK does not tell it so). A persistent
session — an ingest worker's, with its unacknowledged and queued readings — can therefore be
resumed or wiped only with that worker's own certificate, so every worker needs its own CN
and every twin API replica too (two connections with one CN would take the session from
each other in turn). There is no password check on 8883: the certificate authenticates.

8883 is governed by the dynamic-security plugin (``per_listener_settings true``: on that
listener only), from the JSON :func:`dynsec_config` generates out of the stack's clients.
Observed with Debian's Mosquitto 2.0.11 (``tests/components/test_broker_config.py``):

* Without ``use_username_as_clientid`` any certificate of the CA — a listed site's or a CN
  in no stack — could connect with a worker's client id: with ``clean_start`` it wiped the
  worker's session, without it took the session over (its reads are refused, so the queued
  readings were dropped): 0 of 5 reached the worker afterwards either way (and 0 of 10, 5
  of them in flight, after a clean start). With it, the intruder gets a session under its own CN and the worker receives
  every one (5 of 5; 10 of 10).
* What does *not* bind a client id to a certificate in 2.0.11: a dynsec client's
  ``clientid`` field (the plugin's username/password check is never called for
  ``use_identity_as_username`` listeners: the identity connected with another client id and
  was granted its SUBSCRIBE, and other identities still took the worker's id; a client's
  ``"disabled": true`` is ignored too), and ``clientid_prefixes`` (one global prefix,
  deprecated, not per listener and not per identity). Nor can the plugin refuse an unlisted
  CN at CONNECT: it connects and is refused every SUBSCRIBE and PUBLISH instead.
* A dynsec client is found by username, so a certificate identity needs a client entry
  without a password; a CN the file does not list is refused every SUBSCRIBE and PUBLISH.
* SUBSCRIBE is checked against the whole filter, ``$share/<group>/`` included, and a refused
  filter gets SUBACK reason 135 — this is what keeps a site certificate out of the ingest's
  shared group (with the plain ``acl_file`` every SUBSCRIBE was granted; a site joining
  ``$share/ems-ingest/ems/v1/+/telemetry`` was picked for its share of the messages, which
  the broker then dropped on its read check: 5 of 10 beside one worker, 3 of 10 beside two).
* Delivery (``publishClientReceive``) is checked against the message's topic; a refused
  QoS 1 PUBLISH gets PUBACK 135, and then (``max_queued_messages 0``) the broker closes that
  client's connection.
* The plugin only reads its file, once, at start (no write at start, run or SIGTERM), so
  the read-only ConfigMap mount is enough. A change of the file needs a broker restart: the
  pod template carries the config's hash, so a new edge site rolls the broker (sessions and
  queued messages survive on the volume). If the file were unreadable the broker would
  still start and refuse everything on 8883 (fail closed).

1883 keeps the ``acl_file``: anonymous clients read ``ems/v1/#`` and write nothing. It
listens on 127.0.0.1 only, so nothing on the pod network reaches it — whatever the
NetworkPolicies say and whether the CNI enforces them — only ``kubectl exec`` or
``kubectl port-forward`` on the broker pod (which connects to the pod's loopback). Two
reasons, both observed with 2.0.11 (``tests/components/test_broker_config.py``): client ids
are one namespace across listeners and an anonymous client has no identity to bind its id
to, so a 1883 client that sends a worker's client id takes that worker's session and, with
its read access, the readings queued in it (5 of 5 to the 1883 client, 0 to the worker);
and any subscription matching ``ems/v1/<site>/command`` (``ems/v1/#``: the ACL refuses
delivery, not the SUBSCRIBE) makes the broker answer the north-bound's command for an
offline site with PUBACK 0 instead of 16 (no matching subscribers), which hides the outage
from its re-issue. Both now need access to the broker pod itself; an operator watching there
subscribes to ``ems/v1/+/telemetry`` (or the topic at hand) rather than ``ems/v1/#``. The
probes use 8883 (a TCP connect; Mosquitto logs one "connection failed: unexpected eof" notice
per probe, as it does for a load balancer's TCP health check).

The plugin's path differs between builds: ``/usr/lib/mosquitto_dynamic_security.so`` in the
``eclipse-mosquitto`` image (:data:`DYNSEC_PLUGIN`), ``/usr/lib/<triplet>/`` in Debian's
package (the tests pass theirs).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

import pulumi
import pulumi_kubernetes as k8s

from ems_contract.telemetry import TOPIC_ROOT, TWIN_SUBSCRIPTION, deadletter_topic, seen_topic, telemetry_subscription

from components.k8s_common import (
    ComponentArgsError, Resources, child, config_volume, container, labels, metadata,
    pod_spec, secret_volume, selector, template_metadata, tls_annotation,
)

APP = "broker"
MQTT_PORT = 1883
MQTTS_PORT = 8883

DYNSEC_PLUGIN = "/usr/lib/mosquitto_dynamic_security.so"   # in the eclipse-mosquitto image
CONFIG_DIR = "/mosquitto/config"


def mosquitto_conf(dynsec_plugin: str = DYNSEC_PLUGIN) -> str:
    """mosquitto.conf: 8883 governed by the dynamic-security plugin at ``dynsec_plugin``, 1883 read-only on loopback."""
    return f"""\
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

# Every workload client (edge sites, ems-gateway, the ingest workers): mutual TLS, CN = username.
listener {MQTTS_PORT}
cafile /mosquitto/tls/ca.crt
certfile /mosquitto/tls/tls.crt
keyfile /mosquitto/tls/tls.key
require_certificate true
use_identity_as_username true
# The CN is the client id too: a session (and the readings queued in it) belongs to one certificate.
use_username_as_clientid true
tls_version tlsv1.2
# Who may subscribe, publish and receive what, per certificate identity (read once, at start).
plugin {dynsec_plugin}
plugin_opt_config_file {CONFIG_DIR}/dynamic-security.json

# Operators' tools inside the broker pod only (kubectl exec / port-forward; no workload uses it).
# Anonymous and read-only: a tool observes every site's messages but cannot forge any. Loopback:
# an anonymous client on the pod network could take a worker's session by its client id.
listener {MQTT_PORT} 127.0.0.1
allow_anonymous true
acl_file {CONFIG_DIR}/acl-plain
"""


DEADLETTERS = deadletter_topic("#")            # ems/v1/deadletter/#
RESERVED_IDENTITY = DEADLETTERS.split("/")[2]   # a site named "deadletter" could write dead letters
_IDENTITY = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PLUGIN_PATH = re.compile(r"^/[^\s]+\.so$")


# Role names of the shared grants; a site's role is "own-<CN>", so these cannot collide with one.
INGEST_ROLE = "ingest-shared-telemetry"
TWIN_ROLE = "twin-api-read-twins"
NORTHBOUND_ROLE = "northbound-commands"


def _acl(kind: str, topic: str, *, allow: bool = True) -> dict[str, Any]:
    # A deny is checked before the allows of its role (higher priority first).
    return {"acltype": kind, "topic": topic, "priority": 0 if allow else 1, "allow": allow}


def _command_topic(site: str) -> str:
    return f"{TOPIC_ROOT}/{site}/command"


def _own_subtree(identity: str) -> dict[str, Any]:
    """Everything under ``ems/v1/<CN>/`` except publishing a command to itself: only ems-northbound commands."""
    subtree = f"{TOPIC_ROOT}/{identity}/#"
    return {"rolename": f"own-{identity}", "acls": [
        _acl("publishClientSend", _command_topic(identity), allow=False),
        _acl("publishClientSend", subtree), _acl("publishClientReceive", subtree), _acl("subscribePattern", subtree)]}


def _northbound_role(sites: Sequence[str]) -> dict[str, Any]:
    acls = [_acl("subscribeLiteral", f"{TOPIC_ROOT}/+/command-result")]
    for site in sites:
        result = _command_topic(site) + "-result"
        acls += [_acl("publishClientSend", _command_topic(site)), _acl("subscribeLiteral", result),
                 _acl("publishClientReceive", result)]
    return {"rolename": NORTHBOUND_ROLE, "acls": acls}


def dynsec_config(clients: Sequence[str], ingest_identities: Sequence[str], ingest_group: str,
                  twin_identities: Sequence[str] = (), northbound_identities: Sequence[str] = (),
                  northbound_sites: Sequence[str] = ()) -> str:
    """The 8883 listener's dynamic-security file.

    Default deny for publish, receive and subscribe (``$CONTROL`` included: nobody
    administers the plugin, the program does). Every identity in ``clients`` and every
    ingest worker's identity get a role for their own subtree ``ems/v1/<CN>/#``. The ingest
    workers (``ingest_identities``, one CN per worker) share a role: subscribe to exactly
    ``$share/<ingest_group>/ems/v1/+/telemetry`` (a literal filter: no other group, no
    unshared filter), receive every site's telemetry, publish dead letters, and subscribe to and
    receive every worker's ``ems/v1/<worker>/seen`` (the seqs each wrote, for the group's loss
    accountant). Nothing else: no twins, no status, no other site's subtree.

    The twin read API's replicas (``twin_identities``) share a role: subscribe to exactly
    ``ems/v1/+/twin/+`` and receive every site's twins; they publish nothing and have no
    subtree of their own.

    Commands: no identity may publish to ``ems/v1/<its own CN>/command`` (a deny in every
    subtree role), so a site reads its commands and publishes its results but cannot command
    itself or anyone. The north-bound identities (``northbound_identities``) share a role:
    publish ``ems/v1/<site>/command`` and subscribe to and receive
    ``ems/v1/<site>/command-result`` for each of ``northbound_sites``, one literal topic per
    site; they may also subscribe to ``ems/v1/+/command-result``, whose delivery the receive
    check still limits to those sites. They have their own subtree, like a site.
    """
    roles = [_own_subtree(cn) for cn in (*clients, *ingest_identities, *northbound_identities)]
    roles.append({"rolename": INGEST_ROLE, "acls": [
        _acl("subscribeLiteral", telemetry_subscription(ingest_group)),
        _acl("publishClientReceive", telemetry_subscription()),
        _acl("publishClientSend", DEADLETTERS),
        # the group's packet-loss accountant reads what the other workers wrote (each publishes in its own subtree)
        *(_acl(kind, seen_topic(cn)) for cn in ingest_identities for kind in ("subscribeLiteral", "publishClientReceive"))]})
    entries = [{"username": cn, "roles": [{"rolename": f"own-{cn}", "priority": 0}]} for cn in clients]
    entries += [{"username": cn, "roles": [{"rolename": f"own-{cn}", "priority": 0}, {"rolename": INGEST_ROLE, "priority": 0}]}
                for cn in ingest_identities]
    if twin_identities:
        roles.append({"rolename": TWIN_ROLE, "acls": [
            _acl("subscribeLiteral", TWIN_SUBSCRIPTION), _acl("publishClientReceive", TWIN_SUBSCRIPTION)]})
        entries += [{"username": cn, "roles": [{"rolename": TWIN_ROLE, "priority": 0}]} for cn in twin_identities]
    if northbound_identities:
        roles.append(_northbound_role(northbound_sites))
        entries += [{"username": cn, "roles": [{"rolename": f"own-{cn}", "priority": 0},
                                               {"rolename": NORTHBOUND_ROLE, "priority": 0}]}
                    for cn in northbound_identities]
    return json.dumps({
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                             "subscribe": False, "unsubscribe": True},
        "clients": entries,
        "groups": [],
        "roles": roles,
    }, indent=2) + "\n"


def plain_acl() -> str:
    """The 1883 listener's ACL: anonymous clients (the lines before any ``user``) read
    everything under ``ems/v1/`` and write nothing — a refused QoS 1 publish gets PUBACK 135."""
    return "\n".join(["# Anonymous in-namespace tools: observe only.", f"topic read {TOPIC_ROOT}/#", ""])


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
    ingest_identities: tuple[str, ...]
    """Certificate CNs of the ingest workers, one per StatefulSet ordinal (at least one): each is that worker's
    username and client id, so its persistent session is usable only with its own certificate. All of them read
    all telemetry through the shared group and write dead letters."""
    ingest_group: str
    """The ingest workers' shared-subscription group: only ``ingest_identities`` may join ``$share/<group>/ems/v1/+/telemetry``."""
    clients: tuple[str, ...]
    """Certificate CNs confined to their own subtree ``ems/v1/<CN>/#`` (edge sites, ems-gateway); any other CN may do nothing."""
    twin_identities: tuple[str, ...] = ()
    """Certificate CNs of the twin read API's replicas, one per replica: subscribe to and receive ``ems/v1/+/twin/+`` only.
    Defaults to none (no such client)."""
    northbound_identities: tuple[str, ...] = ()
    """Certificate CNs of the north-bound client: the only identities that may publish commands. Defaults to none."""
    northbound_sites: tuple[str, ...] = ()
    """The sites (each one of ``clients``) the north-bound client may command and read results of. Defaults to none."""
    dynsec_plugin: str = DYNSEC_PLUGIN
    """Path of ``mosquitto_dynamic_security.so`` in the image. Defaults to the eclipse-mosquitto image's."""
    storage_size: str = "20Gi"
    """Size of the persistence volume. Defaults to 20Gi."""
    external_service_type: str = "LoadBalancer"
    """Type of ``broker-external`` (8883 only): LoadBalancer or ClusterIP. Defaults to LoadBalancer."""
    resources: Resources = Resources("250m", "256Mi", "1", "1Gi")
    """Container requests/limits. Defaults to 250m/256Mi, limits 1 CPU/1Gi."""
    tls_digest: pulumi.Input[str] | None = None
    """Digest of the broker's certificate and trust bundle (``k8s_common.content_digest``), a pod template annotation:
    Mosquitto reads ``cafile`` and its certificate only at start, so a change rolls the broker. Defaults to none."""


def validate_identities(name: str, args: BrokerArgs) -> None:
    """Every certificate identity is a DNS label other than :data:`RESERVED_IDENTITY`, and distinct across all roles
    (one CN is one username, one client id and one session). Raises ComponentArgsError naming the field and the CN."""
    if not _IDENTITY.fullmatch(args.ingest_group):
        raise ComponentArgsError(name, "ingest_group", args.ingest_group, "must be a DNS label")
    if not args.ingest_identities:
        raise ComponentArgsError(name, "ingest_identities", args.ingest_identities, "must name at least one worker")
    seen: dict[str, str] = {}
    for field, identities in (("clients", args.clients), ("ingest_identities", args.ingest_identities),
                              ("twin_identities", args.twin_identities),
                              ("northbound_identities", args.northbound_identities)):
        for cn in identities:
            if not _IDENTITY.fullmatch(cn) or cn == RESERVED_IDENTITY:
                raise ComponentArgsError(name, field, cn, f"must be DNS labels other than {RESERVED_IDENTITY!r}")
            if cn in seen:
                raise ComponentArgsError(name, field, cn, f"must be distinct certificate identities ({cn!r} is already in {seen[cn]})")
            seen[cn] = field
    for site in args.northbound_sites:
        if site not in args.clients:
            raise ComponentArgsError(name, "northbound_sites", site, "must each be one of clients (an edge site)")


class MqttBroker(pulumi.ComponentResource):
    """Mosquitto StatefulSet with its config, Services, ServiceAccount and PodDisruptionBudget."""

    service_name: pulumi.Output[str]
    external_service_name: pulumi.Output[str]
    service_account_name: pulumi.Output[str]

    def __init__(self, name: str, args: BrokerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if args.external_service_type not in ("LoadBalancer", "ClusterIP"):
            raise ComponentArgsError(name, "external_service_type", args.external_service_type, "must be LoadBalancer or ClusterIP")
        validate_identities(name, args)
        if not _PLUGIN_PATH.fullmatch(args.dynsec_plugin):
            raise ComponentArgsError(name, "dynsec_plugin", args.dynsec_plugin, "must be an absolute path to a .so file, without spaces")
        super().__init__("ems:workloads:MqttBroker", name, None, opts)
        o = child(self)
        ns = args.namespace
        sa = k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=metadata(APP, ns, APP), automount_service_account_token=False, opts=o)
        config = {
            "mosquitto.conf": mosquitto_conf(args.dynsec_plugin),
            "dynamic-security.json": dynsec_config(args.clients, args.ingest_identities, args.ingest_group, args.twin_identities,
                                                   args.northbound_identities, args.northbound_sites),
            "acl-plain": plain_acl(),
        }
        conf = k8s.core.v1.ConfigMap(f"{name}-config", metadata=metadata(f"{APP}-config", ns, APP), data=config, opts=o)
        internal = k8s.core.v1.Service(
            f"{name}-svc",
            metadata=metadata(APP, ns, APP),
            spec={
                "type": "ClusterIP",
                "selector": selector(APP),
                "ports": [{"name": "mqtts", "port": MQTTS_PORT, "targetPort": "mqtts", "protocol": "TCP"}],
            },
            opts=o,
        )
        # The StatefulSet's governing Service must be headless (stable pod DNS names).
        headless = k8s.core.v1.Service(
            f"{name}-headless",
            metadata=metadata(f"{APP}-headless", ns, APP),
            spec={"clusterIP": "None", "selector": selector(APP),
                  "ports": [{"name": "mqtts", "port": MQTTS_PORT, "targetPort": "mqtts", "protocol": "TCP"}]},
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
            ports=[("mqtts", MQTTS_PORT)],          # 1883 listens on the pod's loopback only
            mounts=[("config", "/mosquitto/config"), ("tls", "/mosquitto/tls"), ("data", "/mosquitto/data")],
            writable=["data"],
            probe_port=MQTTS_PORT,
        )
        k8s.apps.v1.StatefulSet(
            f"{name}-sts",
            # 8883 has require_certificate true (mosquitto_conf): declared for the policy external-listener-client-auth.
            metadata=metadata(APP, ns, APP, annotations={"ems.io/client-auth": "mtls-required"}),
            spec={
                "serviceName": headless.metadata.name,
                "replicas": 1,
                "selector": {"matchLabels": selector(APP)},
                "template": {
                    # Mosquitto reads the dynsec file only at start: a changed config rolls the pod.
                    "metadata": template_metadata(APP, [broker], config=config, annotations=tls_annotation(args.tls_digest)),
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
