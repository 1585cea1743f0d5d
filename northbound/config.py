"""The north-bound client's config: one TOML file, parsed once into frozen dataclasses.

Every error is a ``ConfigError`` naming the field path, the value and what is
allowed, as one line; unknown keys are errors too. Example (``docs/northbound.md``
has the full table)::

    [server]
    url = "https://dercs.utility.example"   # required, https only; the origin of every link
    dcap = "/dcap"                          # DeviceCapability, the one path a client is given
    ca = "/etc/ems/northbound/utility-ca.pem"       # required: the utility's CA
    timeout_s = 10
    allow_tls13 = false                     # TLS 1.2 only by default (1.3 never uses CCM8)

    [client]
    cert = "/etc/ems/northbound/client.pem"         # required: the platform's 2030.5 certificate
    key = "/etc/ems/northbound/client.key"          # required

    [polling]
    max_poll_s = 900          # re-read every resource at min(server pollRate, this)
    default_post_s = 300      # mirror readings when the server states no postRate
    backoff_initial_s = 1     # after a failed request: doubled up to backoff_max_s, with jitter
    backoff_max_s = 300
    command_ttl_s = 300       # a command expires after this (or at its event's end); re-issued at half-life

    [broker]                  # optional: without it commands are only logged (no control path)
    host = "broker.ems.svc"   # the platform's MQTT broker (mTLS)
    port = 8883
    ca = "/etc/ems/broker/ca.crt"                   # required: the platform CA
    cert = "/etc/ems/broker/tls.crt"                # required: the north-bound identity's certificate
    key = "/etc/ems/broker/tls.key"                 # required
    client_id = "ems-northbound"
    publish_timeout_s = 5     # a command not acknowledged (PUBACK) by then is re-issued under a new id
    keepalive_s = 30
    no_subscriber_retry_max_s = 5   # PUBACK 16 (no site subscribed): re-issued after at most this long

    [readings]
    twin_api = "https://twin-api.ems.svc:8443"      # where the sites' latest readings come from
    ca = "/etc/ems/tls/ca.crt"                      # required with twin_api
    cert = "/etc/ems/tls/tls.crt"                   # optional client certificate (mTLS)
    key = "/etc/ems/tls/tls.key"

    [http]
    host = "0.0.0.0"
    port = 9110               # /metrics and /healthz

    [operator_api]            # optional, needs [broker]: POST /v1/commands behind the API gateway
    host = "0.0.0.0"          # a port of its own: NetworkPolicy lets only the gateway's pods reach it
    port = 8444
    default_ttl_s = 300       # a manual command without ttl_s expires after this
    max_ttl_s = 3600          # the longest ttl_s a request may ask for

    [sites.sub-07]
    lfdi = "…40 hex digits…"  # optional; default derived from the client certificate and the site id
    pin = 111115              # optional; the Registration PIN the server must show

    [sites.sub-07.der]        # optional: DERCapability/DERSettings/DERStatus for the site's DER
    type = 4                  # DERType (4 photovoltaic, 80 storage, 83 PV + storage, …)
    rated_w = 250000          # required: rtgMaxW
    max_w = 200000            # setMaxW (default rated_w)
    rated_var = 100000        # optional rtgMaxVar
    grad_w = 0                # setGradW, hundredths of %/s (0 = no limit)
    connected_point = "inv1/connected"   # optional: non-zero = connected (genConnectStatus)

    [[mirror]]                # one per mirrored point
    site = "sub-07"           # must be a [sites] entry
    asset = "meter1"
    point = "p_total"
    reading = "active_power"  # a kind of northbound.mirror.READING_KINDS
    multiplier = 0            # optional powerOfTenMultiplier, -9..9 (default: the kind's)
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from ems_contract.config_file import (
    HOST_RULE, ConfigFileError, parse_toml, read_config_text, valid_host, valid_path_text,
)
from ems_contract.telemetry import valid_id
from northbound.command_link import BrokerTls, broker_context
from northbound.errors import ConfigError
from northbound.identity import IdentityError, identity_from_certificate, parse_lfdi, sfdi_from_lfdi
from northbound.der import DER_TYPES
from northbound.mirror import READING_KINDS

__all__ = ["NorthboundConfig", "ServerConfig", "ClientConfig", "PollingConfig", "ReadingsConfig", "HttpConfig",
           "BrokerConfig",
           "SiteConfig", "DerConfig", "MirrorPoint", "load_config", "parse_config", "ConfigError"]


@dataclass(frozen=True)
class ServerConfig:
    url: str
    ca: Path
    dcap: str = "/dcap"
    timeout_s: float = 10.0
    allow_tls13: bool = False


@dataclass(frozen=True)
class ClientConfig:
    cert: Path
    key: Path
    lfdi: str               # computed from ``cert``
    sfdi: int


@dataclass(frozen=True)
class PollingConfig:
    max_poll_s: int = 900
    default_post_s: int = 300
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0
    command_ttl_s: int = 300


@dataclass(frozen=True)
class ReadingsConfig:
    twin_api: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class BrokerConfig:
    """The platform's MQTT broker, where commands go and results come from (mTLS)."""

    host: str
    ca: Path
    cert: Path
    key: Path
    port: int = 8883
    client_id: str = "ems-northbound"
    publish_timeout_s: float = 5.0
    keepalive_s: int = 30
    no_subscriber_retry_max_s: float = 5.0


@dataclass(frozen=True)
class HttpConfig:
    host: str = "0.0.0.0"  # nosec B104 # in a pod the endpoint must listen on the pod IP; NetworkPolicy limits who connects
    port: int = 9110


@dataclass(frozen=True)
class OperatorApiConfig:
    """The manual-command listener (``northbound.operator_api``), reached only through the API gateway."""

    host: str = "0.0.0.0"  # nosec B104 # the gateway reaches the pod IP; NetworkPolicy admits only the gateway
    port: int = 8444
    default_ttl_s: int = 300
    max_ttl_s: int = 3600


@dataclass(frozen=True)
class MirrorPoint:
    site: str
    asset: str
    point: str
    reading: str
    multiplier: int


@dataclass(frozen=True)
class DerConfig:
    """The site's DER as reported in DERCapability/DERSettings/DERStatus (``northbound.der``)."""

    type: int
    rated_w: float
    max_w: float
    rated_var: float | None = None
    grad_w: int = 0
    connected_point: tuple[str, str] | None = None     # (asset, point): non-zero = connected


@dataclass(frozen=True)
class SiteConfig:
    """One site = one EndDevice: its LFDI/SFDI, optional Registration PIN and optional DER description."""

    site: str
    lfdi: str
    sfdi: int
    pin: int | None = None
    der: DerConfig | None = None


@dataclass(frozen=True)
class NorthboundConfig:
    server: ServerConfig
    client: ClientConfig
    sites: tuple[SiteConfig, ...]
    mirror: tuple[MirrorPoint, ...] = ()
    polling: PollingConfig = field(default_factory=PollingConfig)
    readings: ReadingsConfig = field(default_factory=ReadingsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    broker: BrokerConfig | None = None
    operator_api: OperatorApiConfig | None = None

    def summary(self) -> str:
        lines = [f"server {self.server.url}{self.server.dcap} (CA {self.server.ca})",
                 f"client lfdi {self.client.lfdi} sfdi {self.client.sfdi}",
                 f"commands to mqtts://{self.broker.host}:{self.broker.port} as {self.broker.client_id}"
                 if self.broker else "commands: logged only (no [broker] section)"]
        if self.operator_api is not None:
            lines.append(f"manual commands on http://{self.operator_api.host}:{self.operator_api.port}/v1/commands "
                         f"(ttl {self.operator_api.default_ttl_s} s, at most {self.operator_api.max_ttl_s} s)")
        for site in self.sites:
            points = [m for m in self.mirror if m.site == site.site]
            lines.append(f"site {site.site}: lfdi {site.lfdi} sfdi {site.sfdi}, {len(points)} mirrored point(s)")
        return "\n".join(lines)


def _table(raw: Mapping[str, Any], key: str, where: str, allowed: set[str], required: bool = False) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}{key}", None, "is required")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}{key}", value, "must be a table")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(f"{where}{key}.{unknown[0]}", value[unknown[0]], f"is not a known key ({', '.join(sorted(allowed))})")
    return value


def _int(table: Mapping[str, Any], key: str, where: str, default: int | None, low: int, high: int) -> int:
    value = table.get(key, default)
    if value is None:
        raise ConfigError(f"{where}.{key}", None, "is required")
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}.{key}", value, f"must be an integer in {low}..{high}")
    return value


def _float(table: Mapping[str, Any], key: str, where: str, default: float, low: float, high: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{where}.{key}", value, f"must be a number in {low:g}..{high:g}")
    return float(value)


def _path(table: Mapping[str, Any], key: str, where: str, base: Path, required: bool = True) -> Path | None:
    value = table.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}.{key}", None, "is required")
        return None
    if not valid_path_text(value):
        raise ConfigError(f"{where}.{key}", value, "must be a file path (1-4096 printable characters)")
    path = Path(value) if Path(value).is_absolute() else base / value
    if not path.is_file():
        raise ConfigError(f"{where}.{key}", Path(value), "does not exist or is not a file")
    return path


def _https(value: object, field_name: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(field_name, value, "must be an https:// URL")
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(field_name, value, "must be an https:// URL (scheme https, a host, no query)")
    return value.rstrip("/")


def _site_lfdi(client_lfdi: str, site: str) -> str:
    # A site has no certificate of its own: its LFDI is derived from the platform's and the site id,
    # so it is stable, unique per site and distinct from the aggregator's own LFDI.
    return hashlib.sha256(f"ems-site:{client_lfdi}:{site}".encode()).hexdigest()[:40].upper()


def _der(t: Mapping[str, Any], where: str) -> DerConfig:
    der_type = _int(t, "type", where, 4, 0, 255)
    if der_type not in DER_TYPES:
        raise ConfigError(f"{where}.type", der_type, f"must be a 2030.5 DERType ({', '.join(map(str, sorted(DER_TYPES)))})")
    if "rated_w" not in t:
        raise ConfigError(f"{where}.rated_w", None, "is required")
    rated_w = _float(t, "rated_w", where, 0.0, 1.0, 3e10)
    max_w = _float(t, "max_w", where, rated_w, 1.0, rated_w)
    rated_var = _float(t, "rated_var", where, 0.0, 1.0, 3e10) if "rated_var" in t else None
    connected = t.get("connected_point")
    if connected is not None:
        parts = connected.split("/") if isinstance(connected, str) else []
        if len(parts) != 2 or not all(valid_id(p) for p in parts):
            raise ConfigError(f"{where}.connected_point", connected, "must be \"<asset>/<point>\"")
        connected = (parts[0], parts[1])
    return DerConfig(type=der_type, rated_w=rated_w, max_w=max_w, rated_var=rated_var,
                     grad_w=_int(t, "grad_w", where, 0, 0, 10000), connected_point=connected)


_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _broker(t: Mapping[str, Any], base: Path) -> BrokerConfig:
    host = t.get("host")
    if not valid_host(host):
        raise ConfigError("broker.host", host, HOST_RULE)
    client_id = t.get("client_id", BrokerConfig.client_id)
    if not isinstance(client_id, str) or not _CLIENT_ID.match(client_id):
        raise ConfigError("broker.client_id", client_id, "must be 1-64 characters of [A-Za-z0-9_.-]")
    config = BrokerConfig(host=host, port=_int(t, "port", "broker", 8883, 1, 65535),
                          ca=_path(t, "ca", "broker", base),  # type: ignore[arg-type]
                          cert=_path(t, "cert", "broker", base),  # type: ignore[arg-type]
                          key=_path(t, "key", "broker", base),  # type: ignore[arg-type]
                          client_id=client_id,
                          publish_timeout_s=_float(t, "publish_timeout_s", "broker", 5.0, 0.1, 60.0),
                          keepalive_s=_int(t, "keepalive_s", "broker", 30, 5, 3600),
                          no_subscriber_retry_max_s=_float(t, "no_subscriber_retry_max_s", "broker", 5.0, 0.1, 300.0))
    broker_context(BrokerTls(config.ca, config.cert, config.key))     # unreadable or mismatched files: ConfigError
    return config


def parse_config(raw: Mapping[str, Any], base: Path = Path(".")) -> NorthboundConfig:
    """Validate a parsed TOML document; relative paths are relative to ``base``; the files must exist."""
    unknown = sorted(set(raw) - {"server", "client", "polling", "readings", "http", "broker", "sites", "mirror",
                                 "operator_api"})
    if unknown:
        raise ConfigError(unknown[0], raw[unknown[0]], "is not a known section "
                          "(server, client, polling, readings, http, broker, sites, mirror, operator_api)")
    s = _table(raw, "server", "", {"url", "dcap", "ca", "timeout_s", "allow_tls13"}, required=True)
    dcap = s.get("dcap", "/dcap")
    if not isinstance(dcap, str) or not dcap.startswith("/") or len(dcap) > 256:
        raise ConfigError("server.dcap", dcap, "must be an absolute path such as /dcap")
    allow_tls13 = s.get("allow_tls13", False)
    if not isinstance(allow_tls13, bool):
        raise ConfigError("server.allow_tls13", allow_tls13, "must be true or false")
    server = ServerConfig(url=_https(s.get("url"), "server.url"), dcap=dcap,
                          ca=_path(s, "ca", "server", base),  # type: ignore[arg-type]
                          timeout_s=_float(s, "timeout_s", "server", 10.0, 0.5, 120.0), allow_tls13=allow_tls13)

    c = _table(raw, "client", "", {"cert", "key"}, required=True)
    cert = _path(c, "cert", "client", base)
    key = _path(c, "key", "client", base)
    try:
        ident = identity_from_certificate(cert.read_bytes())  # type: ignore[union-attr]
    except (OSError, IdentityError) as exc:
        raise ConfigError("client.cert", cert, f"is not a readable certificate ({exc})") from exc
    lfdi = ident.lfdi
    client = ClientConfig(cert=cert, key=key, lfdi=lfdi, sfdi=ident.sfdi)  # type: ignore[arg-type]

    p = _table(raw, "polling", "", {"max_poll_s", "default_post_s", "backoff_initial_s", "backoff_max_s",
                                    "command_ttl_s"})
    polling = PollingConfig(max_poll_s=_int(p, "max_poll_s", "polling", 900, 1, 86400),
                            default_post_s=_int(p, "default_post_s", "polling", 300, 1, 86400),
                            backoff_initial_s=_float(p, "backoff_initial_s", "polling", 1.0, 0.01, 3600),
                            backoff_max_s=_float(p, "backoff_max_s", "polling", 300.0, 0.01, 86400),
                            command_ttl_s=_int(p, "command_ttl_s", "polling", 300, 10, 86400))
    if polling.backoff_max_s < polling.backoff_initial_s:
        raise ConfigError("polling.backoff_max_s", polling.backoff_max_s, "must be at least polling.backoff_initial_s")

    r = _table(raw, "readings", "", {"twin_api", "ca", "cert", "key"})
    twin_api = _https(r["twin_api"], "readings.twin_api") if "twin_api" in r else None
    readings = ReadingsConfig(twin_api=twin_api,
                              ca=_path(r, "ca", "readings", base, required=twin_api is not None),
                              cert=_path(r, "cert", "readings", base, required="key" in r),
                              key=_path(r, "key", "readings", base, required="cert" in r))

    h = _table(raw, "http", "", {"host", "port"})
    host = h.get("host", HttpConfig.host)
    if not isinstance(host, str) or not host:
        raise ConfigError("http.host", host, "must be a host name or address")
    http = HttpConfig(host=host, port=_int(h, "port", "http", 9110, 0, 65535))

    broker = _broker(_table(raw, "broker", "", {"host", "port", "ca", "cert", "key", "client_id",
                                                "publish_timeout_s", "keepalive_s", "no_subscriber_retry_max_s"}),
                      base) if "broker" in raw else None

    operator_api = _operator_api(_table(raw, "operator_api", "", {"host", "port", "default_ttl_s", "max_ttl_s"})) \
        if "operator_api" in raw else None
    if operator_api is not None and broker is None:
        raise ConfigError("operator_api", "[operator_api]", "needs a [broker] section: commands travel over it")

    raw_sites = raw.get("sites")
    if not isinstance(raw_sites, dict) or not raw_sites:
        raise ConfigError("sites", raw_sites, "must be a table with at least one [sites.<site>]")
    sites = []
    for name, body in raw_sites.items():
        if not valid_id(name):
            raise ConfigError(f"sites.{name}", name, "is not a valid site id ([A-Za-z0-9][A-Za-z0-9_.-]{0,63})")
        t = _table(raw_sites, name, "sites.", {"lfdi", "pin", "der"})
        if "lfdi" in t:
            try:
                site_lfdi = parse_lfdi(t["lfdi"])
            except IdentityError as exc:
                raise ConfigError(f"sites.{name}.lfdi", t["lfdi"], "must be exactly 40 hex digits") from exc
        else:
            site_lfdi = _site_lfdi(lfdi, name)
        pin = _int(t, "pin", f"sites.{name}", 0, 0, 999999) if "pin" in t else None
        der = _der(_table(t, "der", f"sites.{name}.", {"type", "rated_w", "max_w", "rated_var", "grad_w",
                                                      "connected_point"}), f"sites.{name}.der") if "der" in t else None
        sites.append(SiteConfig(site=name, lfdi=site_lfdi, sfdi=sfdi_from_lfdi(site_lfdi), pin=pin, der=der))
    lfdis = [s.lfdi for s in sites]
    if len(set(lfdis)) != len(lfdis) or lfdi in lfdis:
        raise ConfigError("sites", lfdis, "must have distinct LFDIs, none equal to the client's own")

    raw_mirror = raw.get("mirror", [])
    if not isinstance(raw_mirror, list):
        raise ConfigError("mirror", raw_mirror, "must be an array of tables ([[mirror]])")
    known_sites = {s.site for s in sites}
    points = []
    seen: set[tuple[str, str, str]] = set()
    for index, entry in enumerate(raw_mirror):
        where = f"mirror[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(where, entry, "must be a table")
        unknown = sorted(set(entry) - {"site", "asset", "point", "reading", "multiplier"})
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}", entry[unknown[0]], "is not a known key "
                              "(site, asset, point, reading, multiplier)")
        site = entry.get("site")
        if site not in known_sites:
            raise ConfigError(f"{where}.site", site, f"is not a configured site ({', '.join(sorted(known_sites))})")
        for key in ("asset", "point"):
            if not valid_id(entry.get(key)):
                raise ConfigError(f"{where}.{key}", entry.get(key), "must be an asset/point id of the telemetry")
        reading = entry.get("reading")
        if reading not in READING_KINDS:
            raise ConfigError(f"{where}.reading", reading, f"must name a ReadingType mapping ({', '.join(READING_KINDS)})")
        multiplier = _int(entry, "multiplier", where, READING_KINDS[reading].multiplier, -9, 9)
        key3 = (site, entry["asset"], entry["point"])
        if key3 in seen:
            raise ConfigError(f"{where}.point", entry["point"], f"is mirrored twice for site {site}")
        seen.add(key3)
        points.append(MirrorPoint(site=site, asset=entry["asset"], point=entry["point"], reading=reading,
                                  multiplier=multiplier))
    return NorthboundConfig(server=server, client=client, sites=tuple(sites), mirror=tuple(points),
                            polling=polling, readings=readings, http=http, broker=broker,
                            operator_api=operator_api)


def _operator_api(t: Mapping[str, Any]) -> OperatorApiConfig:
    host = t.get("host", OperatorApiConfig.host)
    if not isinstance(host, str) or not host:
        raise ConfigError("operator_api.host", host, "must be a host name or address")
    max_ttl = _int(t, "max_ttl_s", "operator_api", OperatorApiConfig.max_ttl_s, 1, 24 * 3600)
    return OperatorApiConfig(host=host, port=_int(t, "port", "operator_api", OperatorApiConfig.port, 0, 65535),
                             default_ttl_s=_int(t, "default_ttl_s", "operator_api", min(OperatorApiConfig.default_ttl_s,
                                                                                        max_ttl), 1, max_ttl),
                             max_ttl_s=max_ttl)


def load_config(path: Path) -> NorthboundConfig:
    """Read and validate the TOML file at ``path``; raises ConfigError (one line) for anything wrong.

    The file is read as the edge's and the ingest's are (``ems_contract.config_file``): a FIFO, device or
    directory, more than 1 MiB, not UTF-8 or nested too deep is a ConfigError, without blocking.
    """
    try:
        raw = parse_toml(read_config_text(path), str(path))
    except ConfigFileError as exc:
        raise ConfigError(exc.field, exc.value, exc.reason) from exc
    return parse_config(raw, path.parent)
