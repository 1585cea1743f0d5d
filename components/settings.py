"""Typed, validated stack configuration: the whole ``ems:`` namespace in one place.

``parse_settings(raw, stack)`` is pure (no Pulumi runtime needed) and turns the raw
``ems:*`` values into frozen dataclasses; ``load_settings()`` is the thin adapter over
``pulumi.Config("ems")`` used by ``__main__.py``. Under the Pulumi runtime every config
value is a string (lists and objects arrive as JSON text); the parser accepts both
strings and already-decoded YAML values, so ``emsctl`` and the real CLI agree.

Every problem raises :class:`SettingsError` (a ``pulumi.RunError``, printed by the CLI as
one line without a traceback) naming the key, the bad value and what is allowed::

    ems:kubernetesVersion: 1.24 is below the supported minimum 1.26

The table of keys is ``docs/stack-config.md``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence, TypeVar
from urllib.parse import urlsplit

import pulumi

from components.gateway_settings import MISSING as AUTH_MISSING, GatewayAuthError, GatewayAuthSettings, parse_gateway_auth
from components import image_lock
from components.kubernetes_versions import DEFAULT_KUBERNETES, MIN_KUBERNETES, eks_refusal
from components.alerts import SEVERITIES, AlertReceiver, AlertThresholds
from ems_contract.config_file import FIELD_CHARS, REASON_CHARS, one_line, shorten
from ems_runtime.http_server import CONNECTIONS_RANGE, REQUEST_TIMEOUT_RANGE_S

__all__ = [
    "AwsSettings",
    "GlobalSettings",
    "GrafanaSettings",
    "Images",
    "KNOWN_KEYS",
    "LocalSettings",
    "ModbusGateway",
    "NodeGroupSettings",
    "NorthboundSettings",
    "PlatformSettings",
    "PrivateSettings",
    "SettingsError",
    "StackSettings",
    "Taint",
    "load_settings",
    "parse_settings",
]

LEAF_MAX_HOURS = 398 * 24
MAX_INGEST_REPLICAS = 64
CLOUDS = ("aws", "private", "local")
ROLES = ("region", "global")
POOLS = ("interconnect", "nvme", "general")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
CAPACITY_TYPES = ("ON_DEMAND", "SPOT")
GATEWAY_TRANSPORTS = ("tcp", "rtu-over-tcp")
IMAGE_KEYS = ("broker", "tsdb", "edgeAgent", "ingest", "apiGateway", "metricsAdapter", "northbound", "grafana",
              "alertmanager")
ENVIRONMENTS = ("production", "staging", "development")
ALLOWED_REGISTRIES = ("docker.io", "ghcr.io", "quay.io", "registry.k8s.io", "public.ecr.aws")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_NAME = re.compile(r"^(\*\.)?([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_K8S_VERSION = re.compile(r"^1\.(\d{1,2})$")
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_QUANTITY = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")
_AWS_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
_SUBNET_ID = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$")
_STACK_NAME = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){0,2}$")
_MISSING = object()


class SettingsError(pulumi.RunError):
    """Bad ``ems:`` stack config; the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        shown_key, shown_reason = one_line(key, FIELD_CHARS), one_line(reason, REASON_CHARS)     # one bounded line
        if value is _MISSING:
            message = f"ems:{shown_key}: {shown_reason}"
        else:
            message = f"ems:{shown_key}: {_show(value)} {shown_reason}"
        super().__init__(message)


def _show(value: object) -> str:
    if isinstance(value, str):
        text = value if value and value.isprintable() and not re.search(r"\s", value) else json.dumps(value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = shorten(value)               # json.dumps refuses an integer beyond 4,300 digits
    elif isinstance(value, float) or value is None:
        text = json.dumps(value)
    else:
        try:
            text = json.dumps(value, separators=(",", ":"), default=str)
        except (ValueError, RecursionError):    # a huge integer or a deep structure inside
            text = shorten(value)
    return text if len(text) <= 120 else text[:60] + "…" + text[-20:]  # one line, even for a PEM


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class Taint:
    """A node taint, Kubernetes spelling (``effect`` is NoSchedule | PreferNoSchedule | NoExecute)."""

    key: str
    value: str
    effect: str

    @property
    def aws_effect(self) -> str:
        """The EKS API spelling of the effect (``NO_SCHEDULE`` …)."""
        return {"NoSchedule": "NO_SCHEDULE", "PreferNoSchedule": "PREFER_NO_SCHEDULE", "NoExecute": "NO_EXECUTE"}[
            self.effect
        ]


@dataclass(frozen=True)
class NodeGroupSettings:
    """One EKS managed node group. Nodes carry the label ``ems.io/pool=<pool>``."""

    name: str
    pool: str
    instance_types: tuple[str, ...]
    min_size: int
    max_size: int
    desired_size: int
    disk_size_gib: int = 100
    capacity_type: str = "ON_DEMAND"
    taints: tuple[Taint, ...] = ()


@dataclass(frozen=True)
class ModbusGateway:
    """An RS-485 gateway the in-cluster protocol gateway (``deployment/ems-gateway``) polls."""

    name: str
    host: str
    port: int = 502
    unit: int = 1
    points_json: str = "[]"
    """The device's ``[[devices.points]]`` tables (edge agent sensors.conf schema) as JSON text."""
    transport: str = "tcp"
    """Framing the gateway speaks: ``tcp`` (Modbus TCP, MBAP header) or ``rtu-over-tcp`` (RTU frames with CRC)."""

    @property
    def points(self) -> list[dict[str, Any]]:
        return json.loads(self.points_json)


@dataclass(frozen=True)
class Images:
    """Container images (explicit tag or digest, never ``latest``)."""

    broker: str = "docker.io/eclipse-mosquitto:2.0.18"
    tsdb: str = "quay.io/prometheus/prometheus:v2.53.2"
    edge_agent: str = "ghcr.io/ems-platform/edge-agent:0.1.0"
    ingest: str = "ghcr.io/ems-platform/ingest:0.1.0"
    api_gateway: str = "docker.io/nginxinc/nginx-unprivileged:1.26.2"
    metrics_adapter: str = "registry.k8s.io/prometheus-adapter/prometheus-adapter:v0.12.0"
    northbound: str = "ghcr.io/ems-platform/northbound:0.1.0"
    grafana: str = "docker.io/grafana/grafana:11.3.0"
    alertmanager: str = "quay.io/prometheus/alertmanager:v0.27.0"


@dataclass(frozen=True)
class NorthboundSettings:
    """The IEEE 2030.5 north-bound client (``ems:northbound``): the utility's server and the platform's identity.

    The client certificate is either an existing ``kubernetes.io/tls`` Secret (``client_secret``) or
    ``client_certificate`` (PEM) with its key in the secret config ``ems:northboundClientKey``.
    """

    server_url: str
    server_address: str
    """The server's IP address: the only address the NetworkPolicy lets the client reach outside the cluster."""
    utility_ca_certificate: str
    sites: tuple[str, ...]
    server_port: int = 443
    dcap: str = "/dcap"
    client_secret: str | None = None
    client_certificate: str | None = None
    client_key: pulumi.Output[str] | None = None
    """Set by ``load_settings`` from ``ems:northboundClientKey`` (a secret) when ``client_certificate`` is used."""
    operator_api_max_connections: int | None = None
    """Connections its command listener serves at once (``[operator_api] max_connections``); None: the client's 32."""
    operator_api_request_timeout_s: int | None = None
    """Seconds for a handshake or request to arrive (``[operator_api] request_timeout_s``); None: the client's 10."""


@dataclass(frozen=True)
class GrafanaSettings:
    """Grafana behind the API gateway (``ems:grafana``; components/grafana.py)."""

    enabled: bool = True
    replicas: int = 1
    root_url: str | None = None
    """Public URL of Grafana; default ``https://<first apiHostname or api-gateway.<namespace>.svc>/grafana/``."""
    admin_password: pulumi.Output[str] | None = None
    """Break-glass admin password (secret ``ems:grafanaAdminPassword``); without it the login form is off."""


@dataclass(frozen=True)
class PlatformSettings:
    """What ``EmsPlatform`` builds inside a cluster (region stacks only)."""

    namespace: str = "ems-system"
    """Namespace of the workloads (the field manual's ``-n ems-system``)."""
    environment: str = "development"
    """``production``, ``staging`` or ``development``: the ems-guard policy container-image-digest refuses
    images without an @sha256 digest on production stacks."""
    images: Images = field(default_factory=Images)
    edge_sites: tuple[str, ...] = ()
    modbus_gateways: tuple[ModbusGateway, ...] = ()
    broker_hostnames: tuple[str, ...] = ()
    api_hostnames: tuple[str, ...] = ()
    operator_groups: tuple[str, ...] = ("ems-operators",)
    viewer_groups: tuple[str, ...] = ("ems-viewers",)
    cert_validity_hours: int = 2160
    ca_validity_hours: int = 87600
    ca_certificate: str | None = None
    """A shared root CA (PEM) to sign with instead of generating one per stack (multi-region)."""
    ca_private_key: pulumi.Output[str] | None = None
    """Its key, a secret (set by ``load_settings`` from ``ems:caPrivateKey``)."""
    additional_ca_certificates: tuple[str, ...] = ()
    """CA certificates (PEM) every verifier trusts beside the signing CA, for a rotation without downtime
    (``ems:additionalCaCertificates``, docs/deploy.md "Rotating certificates"). Defaults to none."""
    storage_class_name: str = "ems-block"
    storage_provisioner: str = "ebs.csi.aws.com"
    storage_parameters: tuple[tuple[str, str], ...] = ()
    tsdb_retention: str = "30d"
    spool_horizon: str = "72h"
    tsdb_storage_size: str = "200Gi"
    broker_storage_size: str = "20Gi"
    ingest_min_replicas: int = 2
    ingest_max_replicas: int = 10
    ingest_target_messages_per_second: int = 500
    ingest_scale_down_stabilization_seconds: int = 600
    api_gateway_replicas: int = 2
    twin_api_max_connections: int | None = None
    """Connections each twin API replica serves at once (``[twin_api] max_connections``); None: the API's 64."""
    twin_api_request_timeout_s: int | None = None
    """Seconds for a handshake or request to arrive at the twin API (``[twin_api] request_timeout_s``); None: its 30."""
    northbound: NorthboundSettings | None = None
    """The north-bound client; None (the default, or ``enabled: false``) deploys none."""
    grafana: GrafanaSettings = field(default_factory=GrafanaSettings)
    api_auth: GatewayAuthSettings = field(default_factory=GatewayAuthSettings)
    """Authentication, roles and limits of the gateway on 443 (``ems:apiAuth``, ``components/gateway_settings.py``)."""
    alerts: AlertThresholds = field(default_factory=AlertThresholds)
    """Thresholds of the generated alert rules (``ems:alerts``)."""
    alert_receivers: tuple[AlertReceiver, ...] = ()
    """Alertmanager webhook receivers (``ems:alertReceivers``)."""
    alert_receiver_urls: pulumi.Output[Any] | None = None
    """Their URLs, a secret (set by ``load_settings`` from ``ems:alertReceiverUrls``)."""


@dataclass(frozen=True)
class AwsSettings:
    """AWS region stack: VPC (or given subnets), EKS and its node groups."""

    region: str
    vpc_cidr: str = "10.40.0.0/16"
    availability_zones: tuple[str, ...] = ()
    private_subnet_ids: tuple[str, ...] = ()
    public_subnet_ids: tuple[str, ...] = ()
    vpc_id: str | None = None
    public_endpoint_cidrs: tuple[str, ...] = ()
    node_groups: tuple[NodeGroupSettings, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PrivateSettings:
    """An existing cluster: kubeconfig (secret) and context."""

    kube_context: str | None = None
    kubeconfig: pulumi.Output[str] | None = None


@dataclass(frozen=True)
class LocalSettings:
    """The embedded default: manifests rendered to a directory, no cluster."""

    render_directory: str = "out/rendered/local"


@dataclass(frozen=True)
class GlobalSettings:
    """The global stack: region stacks behind AWS Global Accelerator (+ optional Route 53)."""

    region_stacks: tuple[str, ...]
    accelerator_name: str = "ems-global"
    health_check_interval_seconds: int = 10
    dns_zone_id: str | None = None
    mqtt_domain_name: str | None = None
    api_domain_name: str | None = None


@dataclass(frozen=True)
class StackSettings:
    """The validated ``ems:`` config of one stack."""

    stack: str
    cloud: str
    role: str
    kubernetes_version: str
    platform: PlatformSettings | None
    aws: AwsSettings | None = None
    private: PrivateSettings | None = None
    local: LocalSettings | None = None
    global_: GlobalSettings | None = None
    tags: tuple[tuple[str, str], ...] = ()


# --------------------------------------------------------------------------- readers

T = TypeVar("T")

DEFAULT_NODE_GROUPS = (
    NodeGroupSettings("general", "general", ("m6i.large",), 2, 6, 2),
    NodeGroupSettings(
        "interconnect", "interconnect", ("c6in.xlarge",), 2, 6, 2,
        taints=(Taint("ems.io/pool", "interconnect", "NoSchedule"),),
    ),
    NodeGroupSettings(
        "nvme", "nvme", ("i4i.xlarge",), 1, 3, 1,
        taints=(Taint("ems.io/pool", "nvme", "NoSchedule"),),
    ),
)

SECRET_KEYS = frozenset({"kubeconfig", "caPrivateKey", "northboundClientKey", "grafanaAdminPassword",
                         "alertReceiverUrls"})

KNOWN_KEYS: tuple[str, ...] = (
    "cloud", "role", "kubernetesVersion", "namespace", "tags",
    # platform
    "environment", "images", "edgeSites", "modbusGateways", "brokerHostnames", "apiHostnames",
    "operatorGroups", "viewerGroups", "certValidityHours", "caValidityHours", "caCertificate", "caPrivateKey",
    "additionalCaCertificates",
    "storageClassName", "storageProvisioner", "storageParameters",
    "tsdbRetention", "spoolHorizon", "tsdbStorageSize", "brokerStorageSize",
    "ingestMinReplicas", "ingestMaxReplicas", "ingestTargetMessagesPerSecond",
    "ingestScaleDownStabilizationSeconds", "apiGatewayReplicas", "twinApiMaxConnections",
    "twinApiRequestTimeoutSeconds", "northbound", "northboundClientKey", "grafana",
    "grafanaAdminPassword", "apiAuth",
    "alerts", "alertReceivers", "alertReceiverUrls",
    # aws
    "region", "vpcCidr", "availabilityZones", "vpcId", "privateSubnetIds", "publicSubnetIds",
    "publicEndpointCidrs", "nodeGroups",
    # private / local
    "kubeconfig", "kubeContext", "renderDirectory",
    # global
    "regionStacks", "acceleratorName", "healthCheckIntervalSeconds", "dnsZoneId",
    "mqttDomainName", "apiDomainName",
)


COMMON_KEYS = frozenset({"cloud", "role", "kubernetesVersion", "tags"})
AWS_KEYS = frozenset({"region", "vpcCidr", "availabilityZones", "vpcId", "privateSubnetIds", "publicSubnetIds",
                      "publicEndpointCidrs", "nodeGroups"})
PRIVATE_KEYS = frozenset({"kubeconfig", "kubeContext"})
LOCAL_KEYS = frozenset({"renderDirectory"})
GLOBAL_KEYS = frozenset({"regionStacks", "acceleratorName", "healthCheckIntervalSeconds", "dnsZoneId",
                         "mqttDomainName", "apiDomainName"})
PLATFORM_KEYS = frozenset(KNOWN_KEYS) - COMMON_KEYS - AWS_KEYS - PRIVATE_KEYS - LOCAL_KEYS - GLOBAL_KEYS


def _scope(key: str) -> str:
    """Where ``key`` applies, in words (for the 'does not apply' error)."""
    if key in GLOBAL_KEYS:
        return "ems:role global"
    if key in AWS_KEYS:
        return "ems:cloud aws region stacks"
    if key in PRIVATE_KEYS:
        return "ems:cloud private"
    if key in LOCAL_KEYS:
        return "ems:cloud local"
    return "region stacks (ems:role region)"


def _check_scope(raw: Mapping[str, object], cloud: str, role: str) -> None:
    """A key that the stack's cloud/role ignores is an error, not a silent no-op."""
    if role == "global":
        allowed = COMMON_KEYS | GLOBAL_KEYS
    else:
        allowed = COMMON_KEYS | PLATFORM_KEYS | {"aws": AWS_KEYS, "private": PRIVATE_KEYS, "local": LOCAL_KEYS}[cloud]
    for key, value in raw.items():
        if key not in allowed and value is not None:
            raise SettingsError(key, value, f"does not apply to this stack (ems:cloud {cloud}, ems:role {role}); it is for {_scope(key)}")


class _Reader:
    """Typed access to the raw config; every failure is a SettingsError with the key path."""

    def __init__(self, raw: Mapping[str, object]) -> None:
        self.raw = {k.split(":", 1)[1] if k.startswith("ems:") else k: v for k, v in raw.items()}

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def get(self, key: str, parse: Callable[[str, object], T], default: T) -> T:
        value = self.raw.get(key)
        if value is None:
            return default
        return parse(key, value)

    def require(self, key: str, parse: Callable[[str, object], T], why: str) -> T:
        value = self.raw.get(key)
        if value is None or value == "":
            raise SettingsError(key, _MISSING, f"is required {why}")
        return parse(key, value)


def _structured(key: str, value: object, kind: type, what: str) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise SettingsError(key, value, f"must be {what} (JSON/YAML {kind.__name__})") from None
    if not isinstance(value, kind):
        raise SettingsError(key, value, f"must be {what}")
    return value


def _string(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise SettingsError(key, value, "must be a string")
    return value


_MAX_INTEGER_CHARS = 40          # beyond any bound a setting has; int() refuses strings over 4,300 digits


def _integer(low: int | None = None, high: int | None = None) -> Callable[[str, object], int]:
    def parse(key: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise SettingsError(key, value, "must be an integer")
        if isinstance(value, str):
            if len(value) > _MAX_INTEGER_CHARS:
                raise SettingsError(key, value, f"must be an integer of at most {_MAX_INTEGER_CHARS} characters")
            if not re.fullmatch(r"-?\d+", value.strip()):
                raise SettingsError(key, value, "must be an integer")
            value = int(value)
        if low is not None and value < low:
            raise SettingsError(key, value, f"must be at least {low}")
        if high is not None and value > high:
            raise SettingsError(key, value, f"must be at most {high}")
        return value

    return parse


def _choice(options: Sequence[str]) -> Callable[[str, object], str]:
    def parse(key: str, value: object) -> str:
        if not isinstance(value, str) or value not in options:
            raise SettingsError(key, value, f"is not one of {'|'.join(options)}")
        return value

    return parse


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[str, object], str]:
    def parse(key: str, value: object) -> str:
        if not isinstance(value, str) or not regex.fullmatch(value):
            raise SettingsError(key, value, f"must be {what}")
        return value

    return parse


def _list_of(item: Callable[[str, object], T], *, unique: bool = False, min_items: int = 0) -> Callable[[str, object], tuple[T, ...]]:
    def parse(key: str, value: object) -> tuple[T, ...]:
        items = _structured(key, value, list, "a list")
        out = tuple(item(f"{key}[{i}]", v) for i, v in enumerate(items))
        if len(out) < min_items:
            raise SettingsError(key, items, f"must have at least {min_items} entries")
        if unique:
            seen: set[object] = set()
            for i, v in enumerate(out):
                if v in seen:
                    raise SettingsError(f"{key}[{i}]", v, "is a duplicate; entries must be unique")
                seen.add(v)
        return out

    return parse


def _string_map(key: str, value: object) -> tuple[tuple[str, str], ...]:
    obj = _structured(key, value, dict, "an object of string values")
    for k, v in obj.items():
        if not isinstance(v, str):
            raise SettingsError(f"{key}.{k}", v, "must be a string")
    return tuple(sorted(obj.items()))


def _cidr(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise SettingsError(key, value, "must be a CIDR block such as 10.40.0.0/16")
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise SettingsError(key, value, "is not a valid CIDR block (e.g. 10.40.0.0/16, host bits zero)") from None
    return str(network)


def _public_cidr(key: str, value: object) -> str:
    cidr = _cidr(key, value)
    if ipaddress.ip_network(cidr).prefixlen == 0:
        raise SettingsError(key, value, "would open the Kubernetes API to the whole internet; list your operator networks")
    return cidr


def _ip_address(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise SettingsError(key, value, "must be an IP address")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise SettingsError(key, value, "is not an IP address (NetworkPolicies allow Modbus egress by address)") from None


def _kubernetes_version(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise SettingsError(key, value, 'must be a quoted string such as "1.29" (YAML reads 1.30 as the number 1.3)')
    match = _K8S_VERSION.fullmatch(value)
    if not match:
        raise SettingsError(key, value, 'must look like "1.29"')
    if (1, int(match.group(1))) < MIN_KUBERNETES:
        hint = f" (an unquoted {value}0 in YAML arrives as {value}: quote it)" if len(match.group(1)) == 1 else ""
        raise SettingsError(key, value, f"is below the supported minimum {MIN_KUBERNETES[0]}.{MIN_KUBERNETES[1]}{hint}")
    return value


def _image(key: str, value: object) -> str:
    if not isinstance(value, str) or not _IMAGE.fullmatch(value):
        raise SettingsError(key, value, "must be an image reference such as quay.io/prometheus/prometheus:v2.53.2")
    name, tag, digest = value, None, None
    if "@" in name:
        name, digest = name.split("@", 1)
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    if digest is None and tag is None:
        raise SettingsError(key, value, "needs an explicit tag or digest")
    if digest is None and tag == "latest":
        raise SettingsError(key, value, "uses the mutable tag latest; pin a version or digest")
    first = name.split("/", 1)[0]
    registry = first if ("." in first or ":" in first) and "/" in name else "docker.io"
    if registry not in ALLOWED_REGISTRIES:
        raise SettingsError(key, value, f"is not from an allowed registry ({', '.join(ALLOWED_REGISTRIES)})")
    return value


def default_images() -> Images:
    """The ``ems:images`` defaults: ``Images``' version tags, replaced by the digests the release workflow
    wrote to images.lock.json (none until it has run: see components/image_lock.py)."""
    try:
        lock = image_lock.load_lock(image_lock.LOCK_FILE)
    except image_lock.LockError as exc:
        raise SettingsError("images", _MISSING, f"defaults cannot be read: {exc}") from None
    return image_lock.locked_defaults(Images(), lock)


def _images(key: str, value: object) -> Images:
    obj = _structured(key, value, dict, f"an object with keys {', '.join(IMAGE_KEYS)}")
    fields: dict[str, str] = {}
    for k, v in obj.items():
        if k not in IMAGE_KEYS:
            raise SettingsError(f"{key}.{k}", v, f"is not a known image; known: {', '.join(IMAGE_KEYS)}")
        fields[image_lock.snake(k)] = _image(f"{key}.{k}", v)
    return replace(default_images(), **fields)


def _object(key: str, value: object, allowed: Sequence[str], required: Sequence[str]) -> dict[str, object]:
    obj = _structured(key, value, dict, "an object")
    for k in obj:
        if k not in allowed:
            raise SettingsError(f"{key}.{k}", obj[k], f"is not a known field; known: {', '.join(allowed)}")
    for k in required:
        if obj.get(k) is None:
            raise SettingsError(f"{key}.{k}", _MISSING, "is required")
    return obj


def _gateway(key: str, value: object) -> ModbusGateway:
    obj = _object(key, value, ("name", "host", "port", "unit", "transport", "points"), ("name", "host", "points"))
    points = _structured(f"{key}.points", obj["points"], list, "a list of point tables (edge agent sensors.conf schema)")
    if not points or not all(isinstance(p, dict) for p in points):
        raise SettingsError(f"{key}.points", points, "must be a non-empty list of point objects (id, asset, name, address, ...)")
    return ModbusGateway(
        name=_pattern(_DNS_LABEL, "a DNS label (lowercase letters, digits, '-')")(f"{key}.name", obj["name"]),
        host=_ip_address(f"{key}.host", obj["host"]),
        port=_integer(1, 65535)(f"{key}.port", obj.get("port", 502)),
        unit=_integer(0, 255)(f"{key}.unit", obj.get("unit", 1)),
        points_json=json.dumps(points, sort_keys=True),
        transport=_choice(GATEWAY_TRANSPORTS)(f"{key}.transport", obj.get("transport", "tcp")),
    )


_ALERT_FIELDS: dict[str, tuple[str, type, float, float]] = {
    # stack key: (AlertThresholds field, type, low, high)
    "siteSilentMinutes": ("site_silent_minutes", int, 1, 1440),
    "clockSkewSeconds": ("clock_skew_seconds", int, 1, 86400),
    "lossRatio": ("loss_ratio", float, 0.0, 1.0),
    "duplicateRatio": ("duplicate_ratio", float, 0.0, 1.0),
    "deadLettersPer10m": ("dead_letters_per_10m", int, 0, 1_000_000),
    "spoolDepth": ("spool_depth", int, 1, 1_000_000_000),
    "spoolOldestSeconds": ("spool_oldest_seconds", int, 1, 30 * 86400),
    "modbusExceptionRatio": ("modbus_exception_ratio", float, 0.0, 1.0),
    "deviceDownMinutes": ("device_down_minutes", int, 1, 1440),
    "hotSpotLimitCelsius": ("hot_spot_limit_celsius", float, 40.0, 200.0),
    "ageingMinutes": ("ageing_minutes", int, 1, 10080),
    "topOilResidualKelvin": ("top_oil_residual_kelvin", float, 0.1, 100.0),
    "timeToLimitMinutes": ("time_to_limit_minutes", int, 1, 10080),
    "certificateDays": ("certificate_days", int, 1, 365),
}


def _alerts(key: str, value: object) -> AlertThresholds:
    """``ems:alerts``: an object of threshold overrides (docs/stack-config.md); each checked for type and range."""
    obj = _object(key, value, tuple(_ALERT_FIELDS), ())
    fields: dict[str, object] = {}
    for k, v in obj.items():
        name, kind, low, high = _ALERT_FIELDS[k]
        if kind is int:
            fields[name] = _integer(int(low), int(high))(f"{key}.{k}", v)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or not low <= v <= high:
            raise SettingsError(f"{key}.{k}", v, f"must be a number in {low:g}..{high:g}")
        fields[name] = float(v)
    return AlertThresholds(**fields)  # type: ignore[arg-type]


def _receiver(key: str, value: object) -> AlertReceiver:
    obj = _object(key, value, ("name", "severities", "sendResolved"), ("name",))
    severities = _list_of(_choice(SEVERITIES), unique=True, min_items=1)(f"{key}.severities",
                                                                      obj.get("severities", ["critical", "warning"]))
    send_resolved = _boolean(f"{key}.sendResolved", obj.get("sendResolved", True))
    return AlertReceiver(name=_pattern(_DNS_LABEL, "a DNS label (lowercase letters, digits, '-')")(f"{key}.name", obj["name"]),
                         severities=severities, send_resolved=send_resolved)


def _taint(key: str, value: object) -> Taint:
    obj = _object(key, value, ("key", "value", "effect"), ("key", "effect"))
    return Taint(
        key=_pattern(re.compile(r"^([a-z0-9.-]+/)?[A-Za-z0-9._-]{1,63}$"), "a label key")(f"{key}.key", obj["key"]),
        value=_string(f"{key}.value", obj.get("value", "")),
        effect=_choice(TAINT_EFFECTS)(f"{key}.effect", obj["effect"]),
    )


def _node_group(key: str, value: object) -> NodeGroupSettings:
    fields = ("name", "pool", "instanceTypes", "minSize", "maxSize", "desiredSize", "diskSizeGiB", "capacityType", "taints")
    obj = _object(key, value, fields, ("name", "pool", "instanceTypes", "minSize", "maxSize"))
    min_size = _integer(0, 450)(f"{key}.minSize", obj["minSize"])
    max_size = _integer(1, 450)(f"{key}.maxSize", obj["maxSize"])
    if min_size > max_size:
        raise SettingsError(f"{key}.minSize", min_size, f"must not exceed maxSize {max_size}")
    desired = _integer(0, 450)(f"{key}.desiredSize", obj.get("desiredSize", min_size))
    if not min_size <= desired <= max_size:
        raise SettingsError(f"{key}.desiredSize", desired, f"must be between minSize {min_size} and maxSize {max_size}")
    return NodeGroupSettings(
        name=_pattern(_DNS_LABEL, "a DNS label (lowercase letters, digits, '-')")(f"{key}.name", obj["name"]),
        pool=_choice(POOLS)(f"{key}.pool", obj["pool"]),
        instance_types=_list_of(_pattern(re.compile(r"^[a-z0-9-]+\.[a-z0-9]+$"), "an EC2 instance type such as m6i.large"), unique=True, min_items=1)(
            f"{key}.instanceTypes", obj["instanceTypes"]
        ),
        min_size=min_size,
        max_size=max_size,
        desired_size=desired,
        disk_size_gib=_integer(20, 16384)(f"{key}.diskSizeGiB", obj.get("diskSizeGiB", 100)),
        capacity_type=_choice(CAPACITY_TYPES)(f"{key}.capacityType", obj.get("capacityType", "ON_DEMAND")),
        taints=_list_of(_taint)(f"{key}.taints", obj.get("taints", [])),
    )


def _node_groups(key: str, value: object) -> tuple[NodeGroupSettings, ...]:
    groups = _list_of(_node_group, min_items=1)(key, value)
    seen: set[str] = set()
    for i, group in enumerate(groups):
        if group.name in seen:
            raise SettingsError(f"{key}[{i}].name", group.name, "is a duplicate; node group names must be unique")
        seen.add(group.name)
    pools = {g.pool for g in groups}
    for needed in ("interconnect", "nvme"):
        if needed not in pools:
            raise SettingsError(key, [g.name for g in groups], f"has no group with pool {needed}; the platform needs interconnect and nvme pools")
    return groups


_LABEL = _pattern(_DNS_LABEL, "a DNS label (lowercase letters, digits, '-', at most 63)")
_HOSTNAME = _pattern(_DNS_NAME, "a DNS name such as mqtt.eu-west-1.ems.example.net")
_GROUP = _pattern(re.compile(r"^[A-Za-z0-9:._@-]{1,128}$"), "a Kubernetes group name")
_SIZE = _pattern(_QUANTITY, "a storage quantity such as 200Gi")
_DURATION_P = _pattern(_DURATION, "a Prometheus duration such as 72h or 30d")


# --------------------------------------------------------------------------- parse


def parse_settings(raw: Mapping[str, object], stack: str, secrets_set: frozenset[str] = frozenset()) -> StackSettings:
    """Validate the raw ``ems:`` config of ``stack`` (keys with or without the ``ems:`` prefix).

    Raises SettingsError for the first problem found. Secret keys (``kubeconfig``,
    ``caPrivateKey``) are never read here: ``secrets_set`` names those that are set, and
    ``load_settings`` attaches their values as secret Outputs.
    """
    r = _Reader(raw)
    for key in r.raw:
        if key in SECRET_KEYS:
            raise SettingsError(key, "(hidden)", "must be set as a secret: pulumi config set --secret ems:" + key)
    for key in r.raw:
        if key not in KNOWN_KEYS:
            raise SettingsError(key, r.raw[key], "is not a known key; see docs/stack-config.md")

    cloud = r.require("cloud", _choice(CLOUDS), f"(one of {'|'.join(CLOUDS)})")
    role = r.get("role", _choice(ROLES), "region")
    _check_scope(r.raw, cloud, role)
    version = r.get("kubernetesVersion", _kubernetes_version, DEFAULT_KUBERNETES)
    if cloud == "aws" and role == "region" and (refused := eks_refusal(version)):
        raise SettingsError("kubernetesVersion", version, refused)
    tags = r.get("tags", _string_map, ())

    if role == "global":
        if cloud != "aws":
            raise SettingsError("cloud", cloud, "must be aws for ems:role global (the global load balancer is AWS Global Accelerator)")
        return StackSettings(stack, cloud, role, version, platform=None, global_=_parse_global(r), tags=tags)

    platform = _parse_platform(r, cloud, secrets_set)
    aws = private = local = None
    if cloud == "aws":
        aws = _parse_aws(r, tags)
    elif cloud == "private":
        private = PrivateSettings(kube_context=r.get("kubeContext", _string, None))
    else:
        local = LocalSettings(render_directory=r.get("renderDirectory", _string, LocalSettings.render_directory))
    return StackSettings(stack, cloud, role, version, platform=platform, aws=aws, private=private, local=local, tags=tags)


def _parse_platform(r: _Reader, cloud: str, secrets_set: frozenset[str]) -> PlatformSettings:
    d = PlatformSettings()
    if cloud == "aws":
        provisioner = r.get("storageProvisioner", _choice(("ebs.csi.aws.com",)), "ebs.csi.aws.com")
    elif cloud == "private":
        provisioner = r.require("storageProvisioner", _pattern(re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/[a-z0-9.-]+)?$"), "a CSI driver name such as csi.trident.netapp.io"), "when ems:cloud is private (your CSI driver, e.g. csi.trident.netapp.io)")
    else:
        provisioner = r.get("storageProvisioner", _string, "hostpath.csi.k8s.io")
    # One broker certificate per worker ordinal up to the maximum, all in one projected volume and
    # one dynsec client each: the cap keeps that bounded (64 workers × ~110k readings/s is far
    # beyond one Mosquitto anyway).
    min_replicas = r.get("ingestMinReplicas", _integer(1, MAX_INGEST_REPLICAS), d.ingest_min_replicas)
    max_replicas = r.get("ingestMaxReplicas", _integer(1, MAX_INGEST_REPLICAS), d.ingest_max_replicas)
    if min_replicas > max_replicas:
        raise SettingsError("ingestMinReplicas", min_replicas, f"must not exceed ems:ingestMaxReplicas {max_replicas}")
    ca_hours = r.get("caValidityHours", _integer(24 * 30, 24 * 365 * 30), d.ca_validity_hours)
    ca_cert = r.get("caCertificate", _ca_certificate, None)
    if ca_cert is not None and "caPrivateKey" not in secrets_set:
        raise SettingsError("caPrivateKey", _MISSING, "is required when ems:caCertificate is set: pulumi config set --secret ems:caPrivateKey < ca.key")
    if ca_cert is None and "caPrivateKey" in secrets_set:
        raise SettingsError("caCertificate", _MISSING, "is required when ems:caPrivateKey is set (the CA certificate, PEM)")
    additional_cas = r.get("additionalCaCertificates", _additional_cas, ())
    bodies = [_pem_body(c) for c in additional_cas]
    if ca_cert is not None and _pem_body(ca_cert) in bodies:
        i = bodies.index(_pem_body(ca_cert))
        raise SettingsError(f"additionalCaCertificates[{i}]", additional_cas[i], "is ems:caCertificate itself, which is "
                            "trusted anyway; list only the other CA of a rotation (the old or the next one)")
    edge_sites = r.get("edgeSites", _list_of(_LABEL, unique=True), ())
    northbound = r.get("northbound", _northbound(edge_sites, secrets_set), None)
    if northbound is None and "northboundClientKey" in secrets_set:
        raise SettingsError("northboundClientKey", "(hidden)", "is set but ems:northbound is not enabled with a "
                            "clientCertificate; remove it or configure ems:northbound")
    receivers = r.get("alertReceivers", _list_of(_receiver), ())
    names = [x.name for x in receivers]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise SettingsError(f"alertReceivers[{i}].name", n, "is a duplicate; receiver names must be unique")
    if receivers and "alertReceiverUrls" not in secrets_set:
        raise SettingsError("alertReceiverUrls", _MISSING, "is required when ems:alertReceivers is set: pulumi config "
                            "set --secret ems:alertReceiverUrls '{\"<receiver>\": \"https://…\"}'")
    if not receivers and "alertReceiverUrls" in secrets_set:
        raise SettingsError("alertReceivers", _MISSING, "is required when ems:alertReceiverUrls is set (the receivers)")
    leaf_hours = r.get("certValidityHours", _integer(24, LEAF_MAX_HOURS), d.cert_validity_hours)
    if leaf_hours > ca_hours:
        raise SettingsError("certValidityHours", leaf_hours, f"must not exceed ems:caValidityHours {ca_hours}")
    return PlatformSettings(
        namespace=r.get("namespace", _LABEL, d.namespace),
        environment=r.get("environment", _choice(ENVIRONMENTS), d.environment),
        images=r.get("images", _images, None) or default_images(),
        edge_sites=edge_sites,
        modbus_gateways=_unique_names("modbusGateways", r.get("modbusGateways", _list_of(_gateway), ())),
        broker_hostnames=r.get("brokerHostnames", _list_of(_HOSTNAME, unique=True), ()),
        api_hostnames=r.get("apiHostnames", _list_of(_HOSTNAME, unique=True), ()),
        operator_groups=r.get("operatorGroups", _list_of(_GROUP, unique=True), d.operator_groups),
        viewer_groups=r.get("viewerGroups", _list_of(_GROUP, unique=True), d.viewer_groups),
        cert_validity_hours=leaf_hours,
        ca_validity_hours=ca_hours,
        ca_certificate=ca_cert,
        additional_ca_certificates=additional_cas,
        storage_class_name=r.get("storageClassName", _LABEL, d.storage_class_name),
        storage_provisioner=provisioner,
        storage_parameters=r.get("storageParameters", _string_map, ()),
        tsdb_retention=r.get("tsdbRetention", _DURATION_P, d.tsdb_retention),
        spool_horizon=r.get("spoolHorizon", _DURATION_P, d.spool_horizon),
        tsdb_storage_size=r.get("tsdbStorageSize", _SIZE, d.tsdb_storage_size),
        broker_storage_size=r.get("brokerStorageSize", _SIZE, d.broker_storage_size),
        ingest_min_replicas=min_replicas,
        ingest_max_replicas=max_replicas,
        ingest_target_messages_per_second=r.get("ingestTargetMessagesPerSecond", _integer(1, 10_000_000), d.ingest_target_messages_per_second),
        ingest_scale_down_stabilization_seconds=r.get("ingestScaleDownStabilizationSeconds", _integer(0, 3600), d.ingest_scale_down_stabilization_seconds),
        api_gateway_replicas=r.get("apiGatewayReplicas", _integer(1, 100), d.api_gateway_replicas),
        twin_api_max_connections=r.get("twinApiMaxConnections", _CONNECTIONS, None),
        twin_api_request_timeout_s=r.get("twinApiRequestTimeoutSeconds", _REQUEST_TIMEOUT_S, None),
        northbound=northbound,
        api_auth=r.get("apiAuth", _api_auth, d.api_auth),
        grafana=r.get("grafana", _grafana, d.grafana),
        alerts=r.get("alerts", _alerts, d.alerts),
        alert_receivers=receivers,
    )


_HTTPS_URL = _pattern(re.compile(r"^https://[a-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$"),
                      "an https:// URL such as https://api.ems.example.net/grafana/")


def _boolean(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise SettingsError(key, value, "must be true or false")


def _grafana(key: str, value: object) -> GrafanaSettings:
    obj = _object(key, value, ("enabled", "replicas", "rootUrl"), ())
    d = GrafanaSettings()
    return GrafanaSettings(
        enabled=_boolean(f"{key}.enabled", obj["enabled"]) if obj.get("enabled") is not None else d.enabled,
        replicas=_integer(1, 10)(f"{key}.replicas", obj["replicas"]) if obj.get("replicas") is not None else d.replicas,
        root_url=_HTTPS_URL(f"{key}.rootUrl", obj["rootUrl"]) if obj.get("rootUrl") is not None else None,
    )


def _api_auth(key: str, value: object) -> GatewayAuthSettings:
    try:
        return parse_gateway_auth(_structured(key, value, dict, "a map (clientCerts, oidc, ratePerSecond, …)"))
    except GatewayAuthError as exc:
        value = _MISSING if exc.value is AUTH_MISSING else exc.value
        raise SettingsError(f"{key}.{exc.field}" if exc.field else key, value, exc.reason) from None


_NORTHBOUND_FIELDS = ("enabled", "serverUrl", "serverAddress", "serverPort", "dcap", "utilityCaCertificate",
                      "clientSecret", "clientCertificate", "sites", "operatorApiMaxConnections",
                      "operatorApiRequestTimeoutSeconds")
# A service's listener limits (ems_runtime.http_server): connections served at once, seconds for a request to arrive.
_CONNECTIONS = _integer(*CONNECTIONS_RANGE)
_REQUEST_TIMEOUT_S = _integer(int(REQUEST_TIMEOUT_RANGE_S[0]), int(REQUEST_TIMEOUT_RANGE_S[1]))


def _northbound(edge_sites: tuple[str, ...], secrets_set: frozenset[str]) -> Callable[[str, object], NorthboundSettings | None]:
    """``ems:northbound``: checked in full even when ``enabled: false`` (so enabling it later is no surprise)."""

    def parse(key: str, value: object) -> NorthboundSettings | None:
        obj = _object(key, value, _NORTHBOUND_FIELDS, ("serverUrl", "serverAddress", "utilityCaCertificate"))
        enabled = _boolean(f"{key}.enabled", obj.get("enabled", True))
        url = _string(f"{key}.serverUrl", obj["serverUrl"])
        parts = urlsplit(url)
        try:
            url_port = parts.port
        except ValueError:
            raise SettingsError(f"{key}.serverUrl", url, "has an invalid port") from None
        if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment or parts.username:
            raise SettingsError(f"{key}.serverUrl", url, "must be an https:// URL with a host and no query "
                                "(IEEE 2030.5 runs over TLS)")
        port = _integer(1, 65535)(f"{key}.serverPort", obj.get("serverPort", url_port or 443))
        if (url_port or 443) != port:
            raise SettingsError(f"{key}.serverPort", port, f"differs from the port of serverUrl {url} ({url_port or 443})")
        dcap = _pattern(re.compile(r"^/[A-Za-z0-9._~/-]{0,255}$"), "an absolute path such as /dcap")(f"{key}.dcap",
                                                                                                   obj.get("dcap", "/dcap"))
        secret = obj.get("clientSecret")
        cert = obj.get("clientCertificate")
        if (secret is None) == (cert is None):
            raise SettingsError(f"{key}.clientSecret", secret, "or clientCertificate: exactly one is required (an "
                                "existing kubernetes.io/tls Secret, or the PEM certificate with its key in the secret "
                                "ems:northboundClientKey)")
        if cert is not None:
            cert = _leaf_certificate(f"{key}.clientCertificate", cert)
            if "northboundClientKey" not in secrets_set and enabled:
                raise SettingsError("northboundClientKey", _MISSING, f"is required with ems:{key}.clientCertificate: "
                                    "pulumi config set --secret ems:northboundClientKey < client.key")
        sites = _list_of(_LABEL, unique=True, min_items=1)(f"{key}.sites", obj.get("sites", list(edge_sites)))
        for i, site in enumerate(sites):
            if site not in edge_sites:
                raise SettingsError(f"{key}.sites[{i}]", site, f"is not one of ems:edgeSites ({', '.join(edge_sites) or 'none'})")
        settings = NorthboundSettings(
            server_url=url.rstrip("/"), server_address=_ip_address(f"{key}.serverAddress", obj["serverAddress"]),
            utility_ca_certificate=_ca_certificate(f"{key}.utilityCaCertificate", obj["utilityCaCertificate"]),
            sites=sites, server_port=port, dcap=dcap,
            client_secret=None if secret is None else _LABEL(f"{key}.clientSecret", secret), client_certificate=cert,
            operator_api_max_connections=_optional(obj, key, "operatorApiMaxConnections", _CONNECTIONS),
            operator_api_request_timeout_s=_optional(obj, key, "operatorApiRequestTimeoutSeconds", _REQUEST_TIMEOUT_S))
        return settings if enabled else None

    return parse


def _optional(obj: Mapping[str, object], key: str, name: str, parse: Callable[[str, object], T]) -> T | None:
    """``obj[name]`` checked by ``parse`` (errors name ``<key>.<name>``), None when absent."""
    return None if obj.get(name) is None else parse(f"{key}.{name}", obj[name])


def _leaf_certificate(key: str, value: object) -> str:
    """A PEM end-entity certificate (the 2030.5 client certificate: parses, not a CA)."""
    from cryptography import x509

    if not isinstance(value, str) or "-----BEGIN CERTIFICATE-----" not in value:
        raise SettingsError(key, value, "must be a PEM certificate (-----BEGIN CERTIFICATE----- …)")
    try:
        cert = x509.load_pem_x509_certificate(value.encode())
    except ValueError:
        raise SettingsError(key, value, "is not a readable X.509 certificate (PEM)") from None
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise SettingsError(key, value, "is a CA certificate; give the client's own certificate")
    except x509.ExtensionNotFound:
        pass
    return value


def _ca_certificate(key: str, value: object) -> str:
    """A PEM CA certificate (checked with ``cryptography``: parses, basicConstraints CA)."""
    from cryptography import x509

    if not isinstance(value, str) or "-----BEGIN CERTIFICATE-----" not in value:
        raise SettingsError(key, value, "must be a PEM certificate (-----BEGIN CERTIFICATE----- …)")
    try:
        cert = x509.load_pem_x509_certificate(value.encode())
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (ValueError, x509.ExtensionNotFound):
        raise SettingsError(key, value, "is not a readable X.509 CA certificate (PEM with basicConstraints CA:TRUE)") from None
    if not is_ca:
        raise SettingsError(key, value, "is not a CA certificate (basicConstraints CA:FALSE)")
    return value


MAX_ADDITIONAL_CAS = 4


def _pem_body(pem: str) -> str:
    """A PEM certificate without whitespace: equal for the same certificate however its lines were wrapped."""
    return "".join(pem.split())


def _additional_cas(key: str, value: object) -> tuple[str, ...]:
    """``ems:additionalCaCertificates``: at most 4 distinct, unexpired PEM CA certificates, one per entry (a rotation's other CA)."""
    import datetime as dt

    from cryptography import x509

    items = _structured(key, value, list, "a list of PEM CA certificates")
    if len(items) > MAX_ADDITIONAL_CAS:
        raise SettingsError(key, items, f"holds {len(items)} certificates; at most {MAX_ADDITIONAL_CAS}: a rotation "
                            "needs one besides the signing CA")
    out: list[str] = []
    for i, item in enumerate(items):
        pem = _ca_certificate(f"{key}[{i}]", item)
        if pem.count("-----BEGIN CERTIFICATE-----") != 1:
            raise SettingsError(f"{key}[{i}]", pem, "must hold exactly one certificate (one list entry per CA)")
        if _pem_body(pem) in map(_pem_body, out):
            raise SettingsError(f"{key}[{i}]", pem, "is a duplicate; entries must be unique")
        not_after = x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc
        if not_after <= dt.datetime.now(dt.timezone.utc):
            raise SettingsError(f"{key}[{i}]", pem, f"expired on {not_after:%Y-%m-%d}: it can no longer verify anything; remove it")
        out.append(pem.strip() + "\n")
    return tuple(out)


def _unique_names(key: str, gateways: tuple[ModbusGateway, ...]) -> tuple[ModbusGateway, ...]:
    seen: set[str] = set()
    for i, g in enumerate(gateways):
        if g.name in seen:
            raise SettingsError(f"{key}[{i}].name", g.name, "is a duplicate; gateway names must be unique")
        seen.add(g.name)
    return gateways


def _parse_aws(r: _Reader, tags: tuple[tuple[str, str], ...]) -> AwsSettings:
    region = r.require("region", _pattern(_AWS_REGION, "an AWS region such as eu-west-1"), "when ems:cloud is aws (e.g. eu-west-1)")
    subnet = _pattern(_SUBNET_ID, "a subnet id such as subnet-0123abcd")
    private_ids = r.get("privateSubnetIds", _list_of(subnet, unique=True, min_items=2), ())
    public_ids = r.get("publicSubnetIds", _list_of(subnet, unique=True, min_items=2), ())
    vpc_id = r.get("vpcId", _pattern(re.compile(r"^vpc-[0-9a-f]{8,17}$"), "a VPC id such as vpc-0123abcd"), None)
    given = [k for k, v in (("vpcId", vpc_id), ("privateSubnetIds", private_ids), ("publicSubnetIds", public_ids)) if v]
    if given and len(given) != 3:
        missing = [k for k in ("vpcId", "privateSubnetIds", "publicSubnetIds") if k not in given]
        raise SettingsError(missing[0], _MISSING, f"is required when {', '.join('ems:' + g for g in given)} is set (bring all of vpcId, privateSubnetIds, publicSubnetIds, or none)")
    zones: tuple[str, ...] = ()
    vpc_cidr = r.get("vpcCidr", _cidr, AwsSettings.vpc_cidr)
    if not given:
        zones = r.get("availabilityZones", _list_of(_string, unique=True, min_items=2), (f"{region}a", f"{region}b"))
        for i, zone in enumerate(zones):
            if not re.fullmatch(re.escape(region) + r"[a-z]", zone):
                raise SettingsError(f"availabilityZones[{i}]", zone, f"is not a zone of region {region} (e.g. {region}a)")
        network = ipaddress.ip_network(vpc_cidr)
        if network.version != 4 or network.prefixlen > 20:
            raise SettingsError("vpcCidr", vpc_cidr, "must be an IPv4 block of /20 or larger (two /24 subnets per zone)")
    return AwsSettings(
        region=region,
        vpc_cidr=vpc_cidr,
        availability_zones=zones,
        private_subnet_ids=private_ids,
        public_subnet_ids=public_ids,
        vpc_id=vpc_id,
        public_endpoint_cidrs=r.get("publicEndpointCidrs", _list_of(_public_cidr, unique=True), ()),
        node_groups=r.get("nodeGroups", _node_groups, DEFAULT_NODE_GROUPS),
        tags=tags,
    )


def _parse_global(r: _Reader) -> GlobalSettings:
    stacks = r.require("regionStacks", _list_of(_pattern(_STACK_NAME, "a stack name such as aws-us-east-1 or org/ems/aws-us-east-1"), unique=True, min_items=1), "when ems:role is global (the region stacks to join)")
    zone = r.get("dnsZoneId", _pattern(re.compile(r"^Z[A-Z0-9]{4,32}$"), "a Route 53 hosted zone id such as Z0123456789ABC"), None)
    mqtt = r.get("mqttDomainName", _HOSTNAME, None)
    api = r.get("apiDomainName", _HOSTNAME, None)
    if zone and not (mqtt and api):
        raise SettingsError("mqttDomainName" if not mqtt else "apiDomainName", _MISSING, "is required when ems:dnsZoneId is set (Route 53 latency records)")
    if (mqtt or api) and not zone:
        raise SettingsError("dnsZoneId", _MISSING, "is required when ems:mqttDomainName/ems:apiDomainName are set")
    return GlobalSettings(
        region_stacks=stacks,
        accelerator_name=r.get("acceleratorName", _pattern(re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?$"), "alphanumerics and '-', at most 64"), "ems-global"),
        health_check_interval_seconds=r.get("healthCheckIntervalSeconds", _interval, 10),
        dns_zone_id=zone,
        mqtt_domain_name=mqtt,
        api_domain_name=api,
    )


def _interval(key: str, value: object) -> int:
    seconds = _integer()(key, value)
    if seconds not in (10, 30):
        raise SettingsError(key, seconds, "is not one of 10|30 (Global Accelerator health-check intervals)")
    return seconds


# --------------------------------------------------------------------------- runtime adapter


def _raw_config() -> dict[str, object]:
    """Every ``ems:*`` value the runtime holds (stack file, env, or mocks)."""
    from pulumi.runtime import config as runtime_config

    merged: dict[str, object] = {}
    merged.update(runtime_config.get_config_env())
    merged.update(runtime_config.CONFIG.get())
    return {k: v for k, v in merged.items() if k.startswith("ems:")}


def load_settings() -> StackSettings:
    """Read ``pulumi.Config("ems")`` of the current stack and validate it."""
    raw = _raw_config()
    public = {k: v for k, v in raw.items() if k.split(":", 1)[1] not in SECRET_KEYS}
    present = frozenset(k.split(":", 1)[1] for k, v in raw.items() if k.split(":", 1)[1] in SECRET_KEYS and v not in (None, ""))
    # The language host lists the secret keys in PULUMI_CONFIG_SECRET_KEYS; mocks/emsctl set them directly.
    env_secret = set(pulumi.runtime.get_config_secret_keys_env() or [])
    for key in sorted(present):
        if not (pulumi.runtime.is_config_secret(f"ems:{key}") or f"ems:{key}" in env_secret):
            raise SettingsError(key, "(hidden)", f"must be stored as a secret: pulumi config set --secret ems:{key}")
    settings = parse_settings(public, pulumi.get_stack(), present)
    if settings.platform is not None and (warning := image_lock.digest_warning(
            settings.platform.images, image_lock.load_lock(image_lock.LOCK_FILE))):
        pulumi.log.warn(warning)
    config = pulumi.Config("ems")
    if settings.private is not None:
        settings = replace(settings, private=replace(settings.private, kubeconfig=config.get_secret("kubeconfig")))
    if settings.platform is not None and "grafanaAdminPassword" in present:
        grafana = replace(settings.platform.grafana, admin_password=config.require_secret("grafanaAdminPassword"))
        settings = replace(settings, platform=replace(settings.platform, grafana=grafana))
    if settings.platform is not None and settings.platform.alert_receivers:
        settings = replace(settings, platform=replace(settings.platform, alert_receiver_urls=config.require_secret_object(
            "alertReceiverUrls")))
    if settings.platform is not None and settings.platform.ca_certificate is not None:
        settings = replace(settings, platform=replace(settings.platform, ca_private_key=config.require_secret("caPrivateKey")))
    northbound = settings.platform.northbound if settings.platform is not None else None
    if northbound is not None and northbound.client_certificate is not None:
        northbound = replace(northbound, client_key=config.require_secret("northboundClientKey"))
        settings = replace(settings, platform=replace(settings.platform, northbound=northbound))
    return settings
