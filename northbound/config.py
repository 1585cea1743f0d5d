"""The north-bound client's config: one TOML file, parsed once into frozen dataclasses.

Every error is a ``ConfigError`` naming the field path, the value and what is
allowed, as one line; unknown keys are errors too. The file is read and the
values are checked as the ingest's are (``ems_contract.config_file``,
``ems_contract.config_reader.Section``). Example (``docs/northbound.md``
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

    [operator_api]            # optional, needs [broker]: POST /v1/commands behind the API gateway, over mTLS
    host = "0.0.0.0"          # a port of its own: NetworkPolicy lets only the gateway's pods reach it
    port = 8444
    cert = "/etc/ems/northbound/commands-tls/tls.crt"   # required: its server certificate (platform PKI)
    key = "/etc/ems/northbound/commands-tls/tls.key"    # required
    client_ca = "/etc/ems/northbound/commands-tls/ca.crt"   # required: the platform CA bundle callers must chain to
    client_cns = ["ems-api-gateway"]    # required: the only certificate CNs served (the API gateway's)
    cert_check_s = 5          # the files are re-read when they change (Secret rotation), without a restart
    max_connections = 32      # served at once (1..4096); more are closed at accept and counted
    request_timeout_s = 10    # a TLS handshake, and a request from its first byte, must arrive within this (1..300)
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

from ems_contract.config_file import ConfigFileError, parse_toml, read_config_text, url_problem
from ems_contract.config_reader import Section
from ems_contract.telemetry import valid_id
from ems_runtime.http_server import CONNECTIONS_RANGE, REQUEST_TIMEOUT_RANGE_S
from ems_runtime.server_tls import ServerTls, TlsFileError
from northbound.command_link import BrokerTls, broker_context
from northbound.errors import ConfigError
from northbound.identity import IdentityError, identity_from_certificate, parse_lfdi, sfdi_from_lfdi
from northbound.der import DER_TYPES
from northbound.mirror import READING_KINDS
from northbound.operator_api import MAX_CONNECTIONS, REQUEST_TIMEOUT_S

__all__ = ["NorthboundConfig", "ServerConfig", "ClientConfig", "PollingConfig", "ReadingsConfig", "HttpConfig",
           "BrokerConfig",
           "SiteConfig", "DerConfig", "MirrorPoint", "load_config", "parse_config", "ConfigError",
           "OperatorApiConfig", "operator_tls"]


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
    """The manual-command listener (``northbound.operator_api``), reached only through the API gateway.

    It serves TLS with ``cert``/``key`` and requires a client certificate chaining to ``client_ca`` whose CN is
    one of ``client_cns`` (the gateway's), so the identity headers it trusts come from the gateway alone.
    ``tls`` is that TLS, loaded once while the config was checked (files that do not load are a ConfigError
    then); the listener serves it and rotates it, without loading the files again.
    """

    cert: Path
    key: Path
    client_ca: Path
    client_cns: tuple[str, ...]
    tls: ServerTls = field(compare=False, repr=False)
    host: str = "0.0.0.0"  # nosec B104 # the gateway reaches the pod IP; NetworkPolicy admits only the gateway
    port: int = 8444
    default_ttl_s: int = 300
    max_ttl_s: int = 3600
    cert_check_s: float = 5.0
    max_connections: int = MAX_CONNECTIONS
    request_timeout_s: float = REQUEST_TIMEOUT_S


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
            lines.append(f"manual commands on https://{self.operator_api.host}:{self.operator_api.port}/v1/commands "
                         f"(ttl {self.operator_api.default_ttl_s} s, at most {self.operator_api.max_ttl_s} s)")
        for site in self.sites:
            points = [m for m in self.mirror if m.site == site.site]
            lines.append(f"site {site.site}: lfdi {site.lfdi} sfdi {site.sfdi}, {len(points)} mirrored point(s)")
        return "\n".join(lines)


def _https(value: object, field_name: str) -> str:
    problem = url_problem(value, ("https",), query=False)
    if problem is not None:
        raise ConfigError(field_name, value, f"must be an https:// URL (scheme https, a host, no query){problem}")
    return value.rstrip("/")  # type: ignore[union-attr]


def _site_lfdi(client_lfdi: str, site: str) -> str:
    # A site has no certificate of its own: its LFDI is derived from the platform's and the site id,
    # so it is stable, unique per site and distinct from the aggregator's own LFDI.
    return hashlib.sha256(f"ems-site:{client_lfdi}:{site}".encode()).hexdigest()[:40].upper()


def _der(d: Section) -> DerConfig:
    der_type = d.int("type", 4, 0, 255)
    if der_type not in DER_TYPES:
        raise ConfigError(d.at("type"), der_type, f"must be a 2030.5 DERType ({', '.join(map(str, sorted(DER_TYPES)))})")
    d.get("rated_w", required=True)
    rated_w = d.float("rated_w", None, 1.0, 3e10)
    connected = d.get("connected_point")
    if connected is not None:
        parts = connected.split("/") if isinstance(connected, str) else []
        if len(parts) != 2 or not all(valid_id(p) for p in parts):
            raise ConfigError(d.at("connected_point"), connected, "must be \"<asset>/<point>\"")
        connected = (parts[0], parts[1])
    der = DerConfig(type=der_type, rated_w=rated_w, max_w=d.float("max_w", rated_w, 1.0, rated_w),
                    rated_var=d.float("rated_var", None, 1.0, 3e10), grad_w=d.int("grad_w", 0, 0, 10000),
                    connected_point=connected)
    d.done()
    return der


_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _broker(b: Section) -> BrokerConfig:
    client_id = b.str("client_id", BrokerConfig.client_id)
    if not _CLIENT_ID.match(client_id):
        raise ConfigError("broker.client_id", client_id, "must be 1-64 characters of [A-Za-z0-9_.-]")
    config = BrokerConfig(host=b.host("host", required=True), port=b.int("port", 8883, 1, 65535),
                          ca=b.path("ca", required=True), cert=b.path("cert", required=True),  # type: ignore[arg-type]
                          key=b.path("key", required=True), client_id=client_id,  # type: ignore[arg-type]
                          publish_timeout_s=b.float("publish_timeout_s", 5.0, 0.1, 60.0),
                          keepalive_s=b.int("keepalive_s", 30, 5, 3600),
                          no_subscriber_retry_max_s=b.float("no_subscriber_retry_max_s", 5.0, 0.1, 300.0))
    b.done()
    broker_context(BrokerTls(config.ca, config.cert, config.key))     # unreadable or mismatched files: ConfigError
    return config


def _mirror(m: Section, known_sites: set[str]) -> MirrorPoint:
    site = m.str("site", required=True)
    if site not in known_sites:
        raise ConfigError(m.at("site"), site, f"is not a configured site ({', '.join(sorted(known_sites))})")
    asset, point = m.get("asset"), m.get("point")
    for key, value in (("asset", asset), ("point", point)):
        if not valid_id(value):
            raise ConfigError(m.at(key), value, "must be an asset/point id of the telemetry")
    reading = m.str("reading", required=True)
    if reading not in READING_KINDS:
        raise ConfigError(m.at("reading"), reading, f"must name a ReadingType mapping ({', '.join(READING_KINDS)})")
    mirrored = MirrorPoint(site=site, asset=asset, point=point, reading=reading,
                           multiplier=m.int("multiplier", READING_KINDS[reading].multiplier, -9, 9))
    m.done()
    return mirrored


def parse_config(raw: Mapping[str, Any], base: Path = Path(".")) -> NorthboundConfig:
    """Validate a parsed TOML document; relative paths are relative to ``base``; the files must exist."""
    root = Section("", dict(raw), ConfigError, base)
    s = root.section("server", required=True)
    assert s is not None
    dcap = s.str("dcap", "/dcap")
    if not dcap.startswith("/") or len(dcap) > 256:
        raise ConfigError("server.dcap", dcap, "must be an absolute path such as /dcap")
    server = ServerConfig(url=_https(s.get("url", required=True), "server.url"), dcap=dcap,
                          ca=s.path("ca", required=True),  # type: ignore[arg-type]
                          timeout_s=s.float("timeout_s", 10.0, 0.5, 120.0), allow_tls13=s.bool("allow_tls13", False))
    s.done()

    c = root.section("client", required=True)
    assert c is not None
    cert, key = c.path("cert", required=True), c.path("key", required=True)
    c.done()
    try:
        ident = identity_from_certificate(cert.read_bytes())  # type: ignore[union-attr]
    except (OSError, IdentityError) as exc:
        raise ConfigError("client.cert", cert, f"is not a readable certificate ({exc})") from exc
    lfdi = ident.lfdi
    client = ClientConfig(cert=cert, key=key, lfdi=lfdi, sfdi=ident.sfdi)  # type: ignore[arg-type]

    p = root.section("polling", empty=True)
    assert p is not None
    polling = PollingConfig(max_poll_s=p.int("max_poll_s", 900, 1, 86400),
                            default_post_s=p.int("default_post_s", 300, 1, 86400),
                            backoff_initial_s=p.float("backoff_initial_s", 1.0, 0.01, 3600),
                            backoff_max_s=p.float("backoff_max_s", 300.0, 0.01, 86400),
                            command_ttl_s=p.int("command_ttl_s", 300, 10, 86400))
    p.done()
    if polling.backoff_max_s < polling.backoff_initial_s:
        raise ConfigError("polling.backoff_max_s", polling.backoff_max_s, "must be at least polling.backoff_initial_s")

    r = root.section("readings", empty=True)
    assert r is not None
    twin_api = _https(r.get("twin_api"), "readings.twin_api") if "twin_api" in r.table else None
    readings = ReadingsConfig(twin_api=twin_api, ca=r.path("ca", required=twin_api is not None),
                              cert=r.path("cert", required="key" in r.table), key=r.path("key", required="cert" in r.table))
    r.done()

    h = root.section("http", empty=True)
    assert h is not None
    http = HttpConfig(host=h.host("host", HttpConfig.host), port=h.int("port", 9110, 0, 65535))
    h.done()

    b = root.section("broker")
    broker = _broker(b) if b is not None else None

    o = root.section("operator_api")
    operator_api = _operator_api(o) if o is not None else None
    if operator_api is not None and broker is None:
        raise ConfigError("operator_api", "[operator_api]", "needs a [broker] section: commands travel over it")

    raw_sites = root.section("sites", required=True)
    assert raw_sites is not None
    if not raw_sites.table:
        raise ConfigError("sites", raw_sites.table, "must be a table with at least one [sites.<site>]")
    sites = []
    for name in list(raw_sites.table):
        if not valid_id(name):
            raise ConfigError(f"sites.{name}", name, "is not a valid site id ([A-Za-z0-9][A-Za-z0-9_.-]{0,63})")
        t = raw_sites.section(name)
        assert t is not None
        if (given := t.get("lfdi")) is not None:
            try:
                site_lfdi = parse_lfdi(given)
            except IdentityError as exc:
                raise ConfigError(t.at("lfdi"), given, "must be exactly 40 hex digits") from exc
        else:
            site_lfdi = _site_lfdi(lfdi, name)
        pin = t.int("pin", None, 0, 999999)
        d = t.section("der")
        t.done()
        sites.append(SiteConfig(site=name, lfdi=site_lfdi, sfdi=sfdi_from_lfdi(site_lfdi), pin=pin,
                                der=_der(d) if d is not None else None))
    lfdis = [s.lfdi for s in sites]
    if len(set(lfdis)) != len(lfdis) or lfdi in lfdis:
        raise ConfigError("sites", lfdis, "must have distinct LFDIs, none equal to the client's own")

    raw_mirror = root.get("mirror")
    if raw_mirror is not None and not isinstance(raw_mirror, list):
        raise ConfigError("mirror", raw_mirror, "must be an array of tables ([[mirror]])")
    known_sites = {s.site for s in sites}
    points: list[MirrorPoint] = []
    for index, entry in enumerate(raw_mirror or []):
        point = _mirror(Section(f"mirror[{index}]", entry, ConfigError, base), known_sites)
        if any((m.site, m.asset, m.point) == (point.site, point.asset, point.point) for m in points):
            raise ConfigError(f"mirror[{index}].point", point.point, f"is mirrored twice for site {point.site}")
        points.append(point)
    root.done()
    return NorthboundConfig(server=server, client=client, sites=tuple(sites), mirror=tuple(points),
                            polling=polling, readings=readings, http=http, broker=broker,
                            operator_api=operator_api)


def _operator_api(o: Section) -> OperatorApiConfig:
    max_ttl = o.int("max_ttl_s", OperatorApiConfig.max_ttl_s, 1, 24 * 3600)
    host, port = o.host("host", OperatorApiConfig.host), o.int("port", OperatorApiConfig.port, 0, 65535)
    default_ttl_s = o.int("default_ttl_s", min(OperatorApiConfig.default_ttl_s, max_ttl), 1, max_ttl)
    cert, key = o.path("cert", required=True), o.path("key", required=True)
    client_ca = o.path("client_ca", required=True)
    client_cns = o.common_names("client_cns", "client_ca", required=True)
    cert_check_s = o.float("cert_check_s", OperatorApiConfig.cert_check_s, 0.0, 3600.0)
    max_connections = o.int("max_connections", MAX_CONNECTIONS, *CONNECTIONS_RANGE)
    request_timeout_s = o.float("request_timeout_s", REQUEST_TIMEOUT_S, *REQUEST_TIMEOUT_RANGE_S)
    o.done()
    return OperatorApiConfig(cert=cert, key=key, client_ca=client_ca, client_cns=client_cns,  # type: ignore[arg-type]
                             tls=operator_tls(cert, key, client_ca, client_cns),  # type: ignore[arg-type]
                             host=host, port=port, default_ttl_s=default_ttl_s, max_ttl_s=max_ttl,
                             cert_check_s=cert_check_s, max_connections=max_connections,
                             request_timeout_s=request_timeout_s)


def operator_tls(cert: Path, key: Path, client_ca: Path, client_cns: tuple[str, ...]) -> ServerTls:
    """The listener's TLS (files loaded once); ConfigError naming ``operator_api.client_ca`` or ``.cert`` when it does not load."""
    try:
        return ServerTls(cert, key, client_ca, client_cns, require_client=True)
    except TlsFileError as exc:
        if exc.field == "client_ca":
            raise ConfigError("operator_api.client_ca", client_ca,
                              f"is not a readable PEM CA certificate ({exc.reason})") from exc
        raise ConfigError("operator_api.cert", cert, f"and operator_api.key {str(key)!r} are not a "
                          f"readable, matching PEM certificate and key ({exc.reason})") from exc


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
