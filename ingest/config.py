"""The ingest config: one TOML file, parsed once into frozen dataclasses.

Every error is a ``ConfigError`` naming the field path, the value and what is
allowed; unknown keys are errors too (a typo must not silently fall back to a
default). Example (``docs/ingest.md`` has the full table)::

    [broker]
    host = "mqtt.ems.svc"          # required
    tls = true                     # mTLS (default); false = plain MQTT, only inside the namespace
    port = 8883                    # default 8883 with TLS, 1883 without
    ca = "/etc/ems/tls/ca.crt"     # required with TLS (and not allowed without)
    cert = "/etc/ems/tls/tls.crt"  # required with TLS; the certificate's CN is the username
    key = "/etc/ems/tls/tls.key"   # required with TLS
    client_id = "ems-ingest-0"     # default "ems-ingest-<hostname>"; must be stable per worker
    group = "ems-ingest"           # shared-subscription group
    session_expiry_s = 604800      # the broker keeps a crashed worker's unacked messages this long
    receive_maximum = 1000         # unacknowledged messages the broker may have in flight to us

    [tsdb]
    remote_write_url = "http://tsdb.ems.svc:9090/api/v1/write"   # required
    query_url = "http://tsdb.ems.svc:9090"                       # default: origin of remote_write_url
    # A managed TSDB (Mimir, Cortex, Thanos Receive, a managed Prometheus): credentials from files,
    # read on every new connection, and only over https; at most one of bearer token and basic auth.
    # bearer_token_file = "/etc/ems/tsdb-auth/token"
    # basic_auth_username = "ems"  with  basic_auth_password_file = "/etc/ems/tsdb-auth/password"
    # tenant_id = "grid-ops"       # sent as tenant_header (default X-Scope-OrgID; Thanos: THANOS-TENANT)

    [batch]
    max_readings = 2000
    max_delay_s = 0.2

    [state]
    dir = "/var/lib/ems-ingest"    # required; the de-duplication database lives here
    loss_horizon_s = 259200        # a seq gap not filled this long after the stream passed it is lost (72h)

    [metrics]
    port = 9100

    [twin_api]                     # only for `ems-ingest twin-api` (docs/ingest.md)
    cert = "/etc/ems/tls/tls.crt"
    key = "/etc/ems/tls/tls.key"
    alertmanager_url = "http://alertmanager.ems.svc:9093"   # default: none; the operator page shows no alerts
    max_connections = 64           # served at once (1..4096); more are closed at accept and counted
    request_timeout_s = 30         # for a TLS handshake, and a request from its first byte (1..300)

    [twin_api.auth]                # the gateway's verifier (ingest/gateway_auth.py); absent: no /v1/authz
    cert_ou_roles = { viewer = "viewer", operator = "operator", admin = "admin" }   # the default
    cert_cn_roles = { "scada-1" = "operator" }                                       # CN wins over OU

    [twin_api.auth.oidc]           # absent: bearer tokens are refused
    issuer = "https://idp.example.net/realms/ems"
    audience = "ems-gateway"
    jwks_url = "https://idp.example.net/realms/ems/protocol/openid-connect/certs"
    claim_roles = { "ems-viewers" = "viewer", "ems-operators" = "operator", "ems-admins" = "admin" }
    role_claim = "groups"          # default; username_claim = "sub", algorithms = ["RS256", "ES256"]

    [time]
    max_future_s = 300             # readings further ahead of this worker's clock are dead-lettered
    max_age_s = 259200             # older ones too: the TSDB's out-of-order window (72h)

The file is hostile until checked (``ems_contract.config_file``): a regular
file of at most 1 MiB of UTF-8 TOML, nested at most 32 deep, integers within
64 bits; FIFOs, devices and directories are refused without blocking. Every
value is range-checked for what it becomes (ports 1..65535, finite numbers in
their range, host names, URLs, paths of at most 4096 printable characters),
and so is every ``EMS_*`` environment override. Messages quote at most about
60 characters of a value, so they stay one short line.
"""

from __future__ import annotations

import os
import re
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ems_contract.config_file import ConfigFileError, parse_toml, read_config_text
from ems_contract.config_reader import MAX_TEXT_CHARS, MAX_URL_CHARS, Section
from ems_contract.oidc import ALGORITHMS, OidcSettings, algorithms_problem
from ems_contract.roles import role_problem
from ems_contract.telemetry import valid_id
from ems_runtime.http_server import CONNECTIONS_RANGE, REQUEST_TIMEOUT_RANGE_S
from ingest.errors import ConfigError
from ingest.remote_write import RemoteWriteAuth
from ingest.gateway_auth import AuthSettings

__all__ = ["ENV_OVERRIDES", "MAX_ENV_CHARS", "MAX_URL_CHARS", "IngestConfig", "BrokerConfig", "TsdbConfig",
           "BatchConfig", "StateConfig", "MetricsConfig", "TimeConfig", "TwinApiConfig", "load_config", "parse_config"]


MAX_ENV_CHARS = 4096       # one EMS_* environment override (a path may be 4096 characters)


@dataclass(frozen=True)
class BrokerConfig:
    host: str
    ca: Path | None
    cert: Path | None
    key: Path | None
    tls: bool = True
    port: int = 8883
    client_id: str = ""
    group: str = "ems-ingest"
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    receive_maximum: int = 1000
    cert_check_s: float = 5.0


@dataclass(frozen=True)
class TsdbConfig:
    remote_write_url: str
    query_url: str
    timeout_s: float = 10.0
    max_backoff_s: float = 30.0
    ca: Path | None = None
    auth: RemoteWriteAuth | None = None
    """Credentials and tenant of the remote write; None sends neither."""


@dataclass(frozen=True)
class BatchConfig:
    max_readings: int = 2000
    max_delay_s: float = 0.2


@dataclass(frozen=True)
class StateConfig:
    dir: Path
    max_intervals_per_site: int = 1024
    loss_horizon_s: int = 259200
    workers: tuple[str, ...] = ()
    """Client ids of every worker of the shared group (this one's too); the first counts packet loss over all
    of them (``ingest.seq_share``). Empty (default): this worker is alone and counts from its own view."""


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "0.0.0.0"  # nosec B104 # in a pod the server must listen on the pod IP; NetworkPolicy limits who connects
    port: int = 9100


@dataclass(frozen=True)
class TwinApiConfig:
    cert: Path
    key: Path
    host: str = "0.0.0.0"  # nosec B104 # in a pod the server must listen on the pod IP; NetworkPolicy limits who connects
    port: int = 443
    client_ca: Path | None = None
    client_cns: tuple[str, ...] = ()
    """With ``client_ca``: the certificate CNs allowed to call (the API gateway's); empty: any certificate of the CA."""
    client_id: str = ""
    alertmanager_url: str | None = None   # the operator page lists its firing alerts; None: no alerts shown
    auth: AuthSettings | None = None
    max_query_answer_bytes: int = 8 * 1024 * 1024   # /v1/query(_range): a bigger TSDB answer → 502, not relayed
    max_connections: int = 64          # served at once; more are closed at accept (ems_runtime.http_server)
    request_timeout_s: float = 30.0    # a TLS handshake, and a request from its first byte, must arrive within this


@dataclass(frozen=True)
class TimeConfig:
    """Which measurement times the worker passes to the TSDB (older or newer ones are dead-lettered)."""

    max_future_s: float = 300.0
    """How far a reading's ts_ms may be ahead of this worker's clock (site clock skew). Defaults to 300."""
    max_age_s: float = 72 * 3600.0
    """How old a reading may be: the TSDB's out-of-order window (the edge spool's horizon). Defaults to 72 h."""


@dataclass(frozen=True)
class IngestConfig:
    broker: BrokerConfig
    tsdb: TsdbConfig
    state: StateConfig
    batch: BatchConfig = BatchConfig()
    metrics: MetricsConfig = MetricsConfig()
    twin_api: TwinApiConfig | None = None
    time: TimeConfig = TimeConfig()
    shutdown_grace_s: float = 20.0
    source_path: Path | None = None




def _workers(section: Section) -> tuple[str, ...]:
    value = section.get("workers")
    if value is None:
        return ()
    if (not isinstance(value, list) or not 1 <= len(value) <= 1000 or not all(valid_id(w) for w in value)
            or len(set(value)) != len(value)):
        raise ConfigError(section.at("workers"), value, "must be a list of 1..1000 distinct client ids "
                                                        "matching [A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
    return tuple(value)


def _client_id(section: Section, prefix: str) -> str:
    default = f"{prefix}-{socket.gethostname()}"[:64]
    value = section.str("client_id", default)
    if not valid_id(value):
        raise ConfigError(f"{section.name}.client_id", value, "must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
    return value


_VISIBLE = re.compile(r"[\x21-\x7e]{1,256}")
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")


def _remote_write_auth(t: Section, scheme: str) -> RemoteWriteAuth | None:
    """``[tsdb]`` credentials and tenant; None when none is set. Files must exist; their content is read later."""
    bearer = t.path("bearer_token_file")
    user = t.str("basic_auth_username")
    password = t.path("basic_auth_password_file")
    tenant = t.str("tenant_id")
    header = t.str("tenant_header", "X-Scope-OrgID")
    if bearer is not None and (user is not None or password is not None):
        raise ConfigError("tsdb.bearer_token_file", str(bearer), "excludes basic_auth_username and "
                                                                 "basic_auth_password_file: set one kind of credentials")
    if (user is None) != (password is None):
        missing, given = ("basic_auth_password_file", user) if password is None else ("basic_auth_username", str(password))
        raise ConfigError(f"tsdb.{missing}", None, f"is required with the other basic auth setting (got {given!r})")
    if user is not None and ":" in user:
        raise ConfigError("tsdb.basic_auth_username", user, "must not contain ':' (basic auth separates user and password with it)")
    if tenant is not None and not _VISIBLE.fullmatch(tenant):
        raise ConfigError("tsdb.tenant_id", tenant, "must be 1..256 visible ASCII characters")
    if not _HEADER.fullmatch(header):
        raise ConfigError("tsdb.tenant_header", header, "must be an HTTP header name (letters, digits, '-', ...)")
    if (bearer is not None or user is not None) and scheme != "https":
        raise ConfigError("tsdb.remote_write_url", f"{scheme}://…", "must be https:// when credentials are set "
                                                                     "(they would cross the network in clear text)")
    if bearer is None and user is None and tenant is None:
        return None
    return RemoteWriteAuth(bearer_token_file=bearer, basic_username=user, basic_password_file=password,
                           tenant=tenant, tenant_header=header)


def _roles(section: Section, key: str, default: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """A table ``{name = "<role>"}`` of at most 256 entries; names non-empty printable, roles viewer|operator|admin."""
    value = section.get(key, False)
    if value is None:
        return default
    if not isinstance(value, dict) or len(value) > 256:
        raise ConfigError(section.at(key), value, "must be a table of at most 256 name = role entries")
    for name, role in value.items():
        if not name or len(name) > MAX_TEXT_CHARS or not name.isprintable():
            raise ConfigError(f"{section.at(key)}.{name}", role, "must be named by 1..1024 printable characters")
        if (problem := role_problem(role)) is not None:
            raise ConfigError(f"{section.at(key)}.{name}", role, problem)
    return tuple(value.items())


def _auth(twin: Section) -> AuthSettings | None:
    a = twin.section("auth")
    if a is None:
        return None
    oidc = None
    if (o := a.section("oidc")) is not None:
        algorithms = o.get("algorithms", False)
        if algorithms is None:
            algorithms = list(ALGORITHMS)
        if (problem := algorithms_problem(algorithms)) is not None:
            raise ConfigError(o.at("algorithms"), algorithms, problem)
        claim_roles = _roles(o, "claim_roles", ())
        if not claim_roles:
            raise ConfigError(o.at("claim_roles"), None, "is required: which claim values grant which role")
        oidc = OidcSettings(
            issuer=o.str("issuer", required=True), audience=o.str("audience", required=True),
            jwks_url=o.url("jwks_url", required=True), claim_roles=claim_roles,
            role_claim=o.str("role_claim", "groups"), username_claim=o.str("username_claim", "sub"),
            algorithms=tuple(algorithms), leeway_s=o.float("leeway_s", 30.0, 0.0, 300.0),
            jwks_refresh_s=o.float("jwks_refresh_s", 300.0, 10.0, 86400.0),
            jwks_min_refetch_s=o.float("jwks_min_refetch_s", 30.0, 1.0, 3600.0),
            jwks_timeout_s=o.float("jwks_timeout_s", 5.0, 0.5, 60.0), jwks_ca=o.path("jwks_ca"))
        o.done()
    auth = AuthSettings(oidc=oidc, cert_ou_roles=_roles(a, "cert_ou_roles", AuthSettings.cert_ou_roles),
                        cert_cn_roles=_roles(a, "cert_cn_roles", ()))
    a.done()
    return auth


def parse_config(raw: dict[str, Any], base: Path = Path("."), *, check_files: bool = True) -> IngestConfig:
    """Validate a parsed TOML document; relative paths are taken relative to ``base``.

    ``check_files=False`` skips "must be an existing file" (a config generated for a pod whose
    certificate files are mounted later); every other rule still applies.
    """
    root = Section("", raw, ConfigError, base, check_files)

    def section(key: str, required: bool = True) -> Section | None:
        return root.section(key, required=required)

    b = section("broker")
    assert b is not None
    group = b.str("group", "ems-ingest")
    if not valid_id(group):
        raise ConfigError("broker.group", group, "must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
    tls = b.bool("tls", True)
    if tls:
        ca, cert, key = b.path("ca", required=True), b.path("cert", required=True), b.path("key", required=True)
    else:
        for name in ("ca", "cert", "key"):
            if name in b.table:
                raise ConfigError(f"broker.{name}", b.table[name], "must not be set when broker.tls is false")
        ca = cert = key = None
    broker = BrokerConfig(
        host=b.host("host", required=True), port=b.int("port", 8883 if tls else 1883, 1, 65535), tls=tls,
        ca=ca, cert=cert, key=key,
        client_id=_client_id(b, "ems-ingest"), group=group, keepalive_s=b.int("keepalive_s", 30, 5, 3600),
        session_expiry_s=b.int("session_expiry_s", 7 * 24 * 3600, 60, 0xFFFFFFFE),
        receive_maximum=b.int("receive_maximum", 1000, 1, 65535),
        cert_check_s=b.float("cert_check_s", 5.0, 0.0, 3600.0),
    )
    b.done()

    t = section("tsdb")
    assert t is not None
    write_url = t.url("remote_write_url", required=True)
    parsed = urllib.parse.urlsplit(write_url)
    tsdb = TsdbConfig(
        remote_write_url=write_url, query_url=t.url("query_url", f"{parsed.scheme}://{parsed.netloc}"),
        timeout_s=t.float("timeout_s", 10.0, 0.1, 300.0), max_backoff_s=t.float("max_backoff_s", 30.0, 0.1, 3600.0),
        ca=t.path("ca"), auth=_remote_write_auth(t, parsed.scheme),
    )
    t.done()

    s = section("state")
    assert s is not None
    state = StateConfig(dir=s.dir("dir"), max_intervals_per_site=s.int("max_intervals_per_site", 1024, 1, 1_000_000),
                        loss_horizon_s=s.int("loss_horizon_s", 259200, 1, 30 * 86400), workers=_workers(s))
    s.done()

    batch = BatchConfig()
    if (bt := section("batch", required=False)) is not None:
        batch = BatchConfig(max_readings=bt.int("max_readings", 2000, 1, 100_000),
                            max_delay_s=bt.float("max_delay_s", 0.2, 0.0, 60.0))
        bt.done()

    metrics = MetricsConfig()
    if (m := section("metrics", required=False)) is not None:
        metrics = MetricsConfig(host=m.host("host", MetricsConfig.host), port=m.int("port", 9100, 0, 65535))
        m.done()

    twin = None
    if (tw := section("twin_api", required=False)) is not None:
        twin = TwinApiConfig(cert=tw.path("cert", required=True), key=tw.path("key", required=True),
                             host=tw.host("host", TwinApiConfig.host), port=tw.int("port", 443, 0, 65535),
                             client_ca=tw.path("client_ca"), client_cns=tw.common_names("client_cns", "client_ca"),
                             client_id=_client_id(tw, "ems-twin-api"),
                             alertmanager_url=tw.url("alertmanager_url"),
                             auth=_auth(tw),
                             max_query_answer_bytes=tw.int("max_query_answer_bytes", TwinApiConfig.max_query_answer_bytes,
                                                           1024, 256 * 1024 * 1024),
                             max_connections=tw.int("max_connections", TwinApiConfig.max_connections, *CONNECTIONS_RANGE),
                             request_timeout_s=tw.float("request_timeout_s", TwinApiConfig.request_timeout_s,
                                                        *REQUEST_TIMEOUT_RANGE_S))
        tw.done()

    times = TimeConfig()
    if (tm := section("time", required=False)) is not None:
        times = TimeConfig(max_future_s=tm.float("max_future_s", times.max_future_s, 1.0, 7 * 86400.0),
                           max_age_s=tm.float("max_age_s", times.max_age_s, 60.0, 3650 * 86400.0))
        tm.done()

    grace = root.float("shutdown_grace_s", 20.0, 0.0, 3600.0)
    root.done()
    return IngestConfig(broker=broker, tsdb=tsdb, state=state, batch=batch, metrics=metrics, twin_api=twin,
                        time=times, shutdown_grace_s=grace)


# Environment variables that override (or, without a file, provide) single settings — for
# deployments that template env rather than files. Values are strings converted to the key's type.
ENV_OVERRIDES: dict[str, tuple[str, str, type]] = {
    "EMS_BROKER_HOST": ("broker", "host", str),
    "EMS_BROKER_PORT": ("broker", "port", int),
    "EMS_BROKER_TLS": ("broker", "tls", bool),
    "EMS_BROKER_CA": ("broker", "ca", str),
    "EMS_BROKER_CERT": ("broker", "cert", str),
    "EMS_BROKER_KEY": ("broker", "key", str),
    "EMS_BROKER_CLIENT_ID": ("broker", "client_id", str),
    "EMS_BROKER_GROUP": ("broker", "group", str),
    "EMS_REMOTE_WRITE_URL": ("tsdb", "remote_write_url", str),
    "EMS_STATE_DIR": ("state", "dir", str),
    "EMS_METRICS_PORT": ("metrics", "port", int),
}


_ENV_INT = re.compile(r"[+-]?[0-9]{1,19}")


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Put the ``EMS_*`` overrides into ``raw``; returns ``{"broker.port": "EMS_BROKER_PORT", ...}`` for messages.

    Only the form is checked here (length, encoding, integer or boolean
    syntax); ``parse_config`` then applies the same rules as to the file.
    """
    applied: dict[str, str] = {}
    for name, (section, key, kind) in ENV_OVERRIDES.items():
        if name not in env:
            continue
        text = env[name]
        if len(text) > MAX_ENV_CHARS:
            raise ConfigError(name, text, f"must be at most {MAX_ENV_CHARS} characters ({section}.{key})")
        try:
            text.encode("utf-8")        # undecodable bytes arrive as lone surrogates (surrogateescape)
        except UnicodeEncodeError:
            raise ConfigError(name, text, f"must be UTF-8 text ({section}.{key})") from None
        value: object = text
        if kind is int:
            if not _ENV_INT.fullmatch(text):
                raise ConfigError(name, text, f"must be an integer ({section}.{key})")
            value = int(text)
        elif kind is bool:
            if text.lower() not in ("true", "false"):
                raise ConfigError(name, text, f"must be true or false ({section}.{key})")
            value = text.lower() == "true"
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(section, table, "must be a table")
        table[key] = value
        applied[f"{section}.{key}"] = name
    return applied


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> IngestConfig:
    """Read and validate the TOML file at ``path`` plus ``ENV_OVERRIDES``; raises ConfigError.

    ``path`` None means no file: every required setting must then come from the environment.
    An error in a value that came from the environment names the variable
    (``EMS_BROKER_PORT (broker.port): must be an integer 1..65535 (got 70000)``).
    A FIFO, device or directory, a file over 1 MiB or not UTF-8 is a ConfigError
    too, raised without blocking or reading past the limit.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            raw = parse_toml(read_config_text(path), str(path))
        except ConfigFileError as exc:
            raise ConfigError(exc.field, exc.value, exc.reason) from exc
        base = path.parent.resolve()
    from_env = _apply_env(raw, env)
    try:
        config = parse_config(raw, base)
    except ConfigError as exc:
        if exc.field not in from_env:
            raise
        raise ConfigError(f"{from_env[exc.field]} ({exc.field})", exc.value, exc.reason) from exc
    return IngestConfig(**{**config.__dict__, "source_path": path})
