"""The agent's sensor config (``sensors.conf``, TOML) → frozen dataclasses, validated once.

Where the file is: ``--config`` beats ``$EMS_SENSORS_CONF`` beats
``/etc/ems/sensors.conf`` (``config_path()``). ``load_config(path)`` returns an
``AgentConfig`` or raises ``ConfigError(path, value, reason)`` whose message is
one line: ``devices[0].points[2].address: 70000 must be 0..65535``. Nothing
downstream sees a raw dict. Relative file paths resolve against the folder of
the config file.

The file is hostile until checked (``ems_contract.config_file``): a regular
file of at most 1 MiB of UTF-8 TOML, nesting at most 32 deep, integers within
64 bits; FIFOs, devices and directories are refused without blocking; every
value is range-checked for what it becomes; strings are printable, host names
are host names, paths at most 4096 characters; messages quote at most about
60 characters of a value. ``docs/edge-config.md`` lists the limits.

Layout (defaults in brackets; see ``edge_agent/examples/sensors.conf``)::

    site = "sub-07"                              # [required] matches [A-Za-z0-9][A-Za-z0-9_.-]{0,63}
    [broker]   host, port [8883], ca, cert, key [required files; key readable by its owner only],
               client_id ["edge-<site>"], keepalive_s [30], protocol ["auto"|"mqttv5"|"mqttv311"],
               batch_max_readings [1000], batch_max_delay_s [0.5],
               payload_format ["v2"|"v1": columnar, ~21 bytes a reading, or JSON per reading, ~110]
    [spool]    path [/var/lib/ems/spool], max_readings [1000000], fsync_batch [1000],
               min_commit_interval_s [0.02; 0..1]
    [audit]    path [/var/log/ems/telemetry-audit.log]
    [twin]     cache_path [/var/lib/ems/twin.json], publish_retained [true]
    [http]     host [127.0.0.1], port [9108]
    [[devices]]         name, host [required], port [502], unit [1], transport ["tcp"|"rtu-over-tcp"],
                        timeout_s [1.0], retries [2], min_gap_s [0.0], poll_interval_s [1.0; 0.001..86400,
                        at least min_gap_s], max_inflight [1; up to 16 pipelined requests on the connection,
                        tcp transport and min_gap_s = 0 only], max_read_gap [8], max_read_registers [125],
                        max_read_bits [2000], connection ["own"|"shared": one TCP connection for the
                        devices of one host and port that all say "shared" (a gateway that takes
                        pipelined requests), tcp transport and one timeout_s only]
    [commands] state_path [/var/lib/ems/commands.db], max_seen_ids [10000] (see ``edge_agent.commands``)
    [[devices.points]]  id, asset, name, address [required], register ["holding"|"input"|"coil"|"discrete"],
                        type ["uint16", "bool" on coils/discretes], byte_order ["big"], word_order ["big"],
                        gain [1.0], offset [0.0], unit [""], deadband [0.0] or deadband_percent [0.0],
                        heartbeat_s [60.0]
    [devices.points.current_loop]  low, high [required: engineering values at 4 and 20 mA], ma_per_count [1.0]
    [devices.points.faults]        optional PLC fault-code map (integer types): "<register value>" =
                                   { code, text, severity ["warning"] } (see ``edge_agent.faults``)
    [[devices.writable]]  optional, one per control the site accepts (``docs/commands.md``):
                        id, control [one of ems_contract.command.CONTROLS, once per file], address,
                        safe_value, silence_timeout_s [required], register ["holding"|"coil"],
                        type ["uint16"; "bool" on coils], byte_order, word_order ["big"], scale [1.0:
                        watts per register count], readback [none: a point id of the same device],
                        tolerance [half a count]; numeric controls also min, max, max_rate_per_s [required]
    [assets.<asset>]    optional, one per thermal asset (a digital twin with an IEC 60076-7 thermal model):
                        kind ["transformer"], rated_load [required, > 0, in the load point's unit],
                        load_point, ambient_point [required: point names of this asset], top_oil_point [none],
                        size ["distribution"|"power"], cooling ["ONAN"|"ONAF"; distribution: ONAN only],
                        paper ["non_upgraded"|"upgraded"], max_gap_s [3600.0], model ["iec"|"ieee"],
                        hot_spot_limit [120.0 degC, IEC 60076-7 normal cyclic loading], and overrides of the
                        model constants: top_oil_rise, hot_spot_gradient, loss_ratio [typical 55, 23, 5
                        for distribution; required for power], oil_exponent, winding_exponent, k11, k21,
                        k22, oil_time_constant_min, winding_time_constant_min [the standard's table row
                        for size and cooling] (see ``edge_agent.thermal``)
"""

from __future__ import annotations

import difflib
import math
import os
import shlex
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from edge_agent.decode import BYTE_ORDERS, DATA_TYPES, REGISTER_COUNT, WORD_ORDERS
from edge_agent.errors import ConfigError
from ems_contract.command import CONTROLS, MAX_WATTS
from ems_contract.config_file import (HOST_RULE, MAX_CONFIG_BYTES, ConfigFileError, parse_toml, read_config_text,
                                      valid_host, valid_path_text)
from ems_contract.telemetry import MAX_READINGS_PER_BATCH, MAX_UNIT_CHARS, valid_id, valid_unit
from ems_contract.telemetry_v2 import PAYLOAD_VERSIONS
from edge_agent.faults import FaultCode, parse_faults
from edge_agent.thermal import COOLING_MODES, HOT_SPOT_LIMIT_DEGC, MODELS, PAPERS, PRESETS, SIZES, ThermalParams

__all__ = [
    "DEFAULT_CONFIG_PATH", "CONFIG_ENV", "REGISTER_TYPES", "BIT_REGISTERS", "TRANSPORTS", "CONNECTIONS", "PROTOCOLS",
    "MAX_READ_REGISTERS", "MAX_READ_BITS", "MIN_POLL_INTERVAL_S", "MAX_INFLIGHT",
    "AgentConfig", "BrokerConfig", "SpoolConfig", "AuditConfig", "TwinConfig", "HttpConfig",
    "DeviceConfig", "PointConfig", "CurrentLoop", "ThermalAssetConfig", "ASSET_KINDS",
    "CommandsConfig", "WritablePoint", "WRITABLE_REGISTERS", "BOOLEAN_CONTROLS", "TYPE_LIMITS",
    "config_path", "load_config", "parse_config", "read_config_file", "key_mode_problem",
]


DEFAULT_CONFIG_PATH = Path("/etc/ems/sensors.conf")
CONFIG_ENV = "EMS_SENSORS_CONF"
REGISTER_TYPES = ("holding", "input", "coil", "discrete")
BIT_REGISTERS = frozenset({"coil", "discrete"})
TRANSPORTS = ("tcp", "rtu-over-tcp")
CONNECTIONS = ("own", "shared")
PROTOCOLS = ("auto", "mqttv5", "mqttv311")
MAX_READ_REGISTERS = 125   # Modbus limit for function codes 3 and 4
MAX_READ_BITS = 2000       # Modbus limit for function codes 1 and 2
MIN_POLL_INTERVAL_S = 0.001
MAX_INFLIGHT = 16          # pipelined requests per connection; devices that queue more are rare
ASSET_KINDS = ("transformer",)
WRITABLE_REGISTERS = ("holding", "coil")
BOOLEAN_CONTROLS = frozenset({"connect", "energize"})
#: raw integer range of each integer data type (a written value must fit)
TYPE_LIMITS: dict[str, tuple[int, int]] = {"int16": (-2**15, 2**15 - 1), "uint16": (0, 2**16 - 1),
                                           "int32": (-2**31, 2**31 - 1), "uint32": (0, 2**32 - 1)}
_FLOAT32_MAX = 3.4028234663852886e38
MAX_PEM_BYTES = MAX_CONFIG_BYTES   # a CA bundle, certificate or key file; the system CA bundle is ~200 KiB


@dataclass(frozen=True)
class BrokerConfig:
    """MQTT broker. ``ca``/``cert``/``key`` are absolute paths of PEM files (mTLS)."""

    host: str
    ca: Path
    cert: Path
    key: Path
    client_id: str
    port: int = 8883
    keepalive_s: int = 30
    protocol: str = "auto"
    batch_max_readings: int = 1000
    batch_max_delay_s: float = 0.5
    payload_format: str = "v2"


@dataclass(frozen=True)
class SpoolConfig:
    """Durable spool folder, its cap in readings, how many readings one commit (fsync) holds at most,
    and the least time between commits while readings arrive faster than that."""

    path: Path = Path("/var/lib/ems/spool")
    max_readings: int = 1_000_000
    fsync_batch: int = 1000
    min_commit_interval_s: float = 0.02


@dataclass(frozen=True)
class AuditConfig:
    path: Path = Path("/var/log/ems/telemetry-audit.log")


@dataclass(frozen=True)
class TwinConfig:
    cache_path: Path = Path("/var/lib/ems/twin.json")
    publish_retained: bool = True


@dataclass(frozen=True)
class HttpConfig:
    """Metrics at ``/metrics`` and health at ``/healthz``; port 0 picks a free port."""

    host: str = "127.0.0.1"
    port: int = 9108


@dataclass(frozen=True)
class CurrentLoop:
    """4–20 mA scaling: ``low`` is the engineering value at 4 mA, ``high`` at 20 mA.

    The decoded register times ``ma_per_count`` is the loop current in mA
    (e.g. 0.001 for a register in µA); below 3.8 mA or above 20.5 mA the loop
    is faulted (NAMUR NE 43).
    """

    low: float
    high: float
    ma_per_count: float = 1.0


@dataclass(frozen=True)
class PointConfig:
    """One measured point. ``id`` is the sensor id (unique in the file); ``asset``/``name`` go on the wire."""

    id: str
    asset: str
    name: str
    register: str
    address: int
    type: str
    byte_order: str = "big"
    word_order: str = "big"
    gain: float = 1.0
    offset: float = 0.0
    unit: str = ""
    deadband: float = 0.0
    deadband_percent: float = 0.0
    heartbeat_s: float = 60.0
    current_loop: CurrentLoop | None = None
    faults: tuple[FaultCode, ...] = ()
    """PLC fault-code map (``edge_agent.faults``); empty: the point carries no fault codes."""

    @property
    def count(self) -> int:
        """Registers (or bits, on coils and discrete inputs) this point occupies."""
        return 1 if self.register in BIT_REGISTERS else REGISTER_COUNT[self.type]


@dataclass(frozen=True)
class WritablePoint:
    """One register the site writes for a control (``ems_contract.command.CONTROLS``).

    The register holds ``value / scale`` (rounded for integer types; a
    boolean control writes 1/0, or on/off on a coil). A numeric command is
    applied only within ``min``..``max`` and when its change from the last
    written value is at most ``max_rate_per_s`` times the seconds since that
    write. ``readback`` names a point of the same device read after the write
    (default: the written register itself); the write counts as applied when
    the read-back value is within ``tolerance`` of the command. ``safe_value``
    is written when the control ends or the cloud is silent for
    ``silence_timeout_s`` (the fail-safe).
    """

    id: str
    control: str
    address: int
    safe_value: float | bool
    silence_timeout_s: float
    register: str = "holding"
    type: str = "uint16"
    byte_order: str = "big"
    word_order: str = "big"
    scale: float = 1.0
    min: float | None = None
    max: float | None = None
    max_rate_per_s: float | None = None
    readback: str | None = None
    tolerance: float = 0.5

    @property
    def boolean(self) -> bool:
        return self.control in BOOLEAN_CONTROLS

    @property
    def count(self) -> int:
        """Registers (or coils) the value occupies."""
        return 1 if self.register in BIT_REGISTERS else REGISTER_COUNT[self.type]


@dataclass(frozen=True)
class CommandsConfig:
    """Where the command handler keeps the ids it has seen, its results to send and its controls' state."""

    state_path: Path = Path("/var/lib/ems/commands.db")
    max_seen_ids: int = 10_000


@dataclass(frozen=True)
class DeviceConfig:
    """One Modbus device (one TCP connection); ``unit`` is the Modbus device id behind a gateway.

    ``max_inflight`` requests may be outstanding on the connection at once
    (Modbus TCP pipelining, matched by transaction id); 1 waits for each answer.
    ``connection = "shared"``: one TCP connection for every shared device of the same host and
    port (units behind one gateway that accepts pipelined requests), each device still at most
    ``max_inflight`` requests outstanding; ``"own"`` (the default): a connection per device.
    """

    name: str
    host: str
    points: tuple[PointConfig, ...]
    port: int = 502
    unit: int = 1
    transport: str = "tcp"
    timeout_s: float = 1.0
    retries: int = 2
    min_gap_s: float = 0.0
    poll_interval_s: float = 1.0
    max_inflight: int = 1
    max_read_gap: int = 8
    max_read_registers: int = MAX_READ_REGISTERS
    max_read_bits: int = MAX_READ_BITS
    writable: tuple[WritablePoint, ...] = ()
    connection: str = "own"

    @property
    def shares_connection(self) -> bool:
        """True when this device's requests travel on one connection with those of the other devices
        with ``connection = "shared"`` and the same host and port (``modbus_source.SharedConnections``)."""
        return self.connection == "shared"


@dataclass(frozen=True)
class ThermalAssetConfig:
    """A thermal asset's twin model: which of its points carry load, ambient and (optionally) top-oil.

    The load factor is ``abs(load) / rated_load`` (``rated_load`` in the load
    point's unit); ``params`` are the IEC 60076-7 constants (``edge_agent.thermal``).
    """

    asset: str
    kind: str
    rated_load: float
    load_point: str
    ambient_point: str
    params: ThermalParams
    top_oil_point: str | None = None
    size: str = "distribution"
    cooling: str = "ONAN"
    max_gap_s: float = 3600.0
    hot_spot_limit: float = HOT_SPOT_LIMIT_DEGC


@dataclass(frozen=True)
class AgentConfig:
    site: str
    broker: BrokerConfig
    spool: SpoolConfig
    audit: AuditConfig
    twin: TwinConfig
    http: HttpConfig
    devices: tuple[DeviceConfig, ...]
    source_path: Path
    assets: tuple[ThermalAssetConfig, ...] = ()
    commands: CommandsConfig = CommandsConfig()

    def writable_points(self) -> dict[str, tuple[DeviceConfig, WritablePoint]]:
        """Control name → (device, writable point) of every writable point in the file."""
        return {w.control: (d, w) for d in self.devices for w in d.writable}

    def point(self, sensor_id: str) -> PointConfig:
        """The point with this sensor id; KeyError when there is none."""
        for device in self.devices:
            for point in device.points:
                if point.id == sensor_id:
                    return point
        raise KeyError(sensor_id)


def config_path(cli_value: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The config file to use: ``--config`` value, else ``$EMS_SENSORS_CONF``, else ``/etc/ems/sensors.conf``."""
    env = os.environ if environ is None else environ
    if cli_value:
        return Path(cli_value)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return DEFAULT_CONFIG_PATH


def load_config(path: str | os.PathLike[str], *, check_files: bool = True) -> AgentConfig:
    """Read and validate ``path``. Raises ConfigError (one line: path in the config, value, what is allowed).

    ``check_files=False`` skips the checks of the broker's certificate and key
    files (used when only the points matter, e.g. a calibration update).
    A FIFO, device or directory, a file over 1 MiB or not UTF-8 is a
    ConfigError too, raised without blocking or reading past the limit.
    """
    source = Path(path).absolute()
    return parse_config(read_config_file(source), source, check_files=check_files)


def read_config_file(path: str | os.PathLike[str]) -> str:
    """The text of the config file at ``path``: a regular file of at most 1 MiB of UTF-8; else ConfigError.

    Never blocks on a FIFO and never reads past the limit (``ems_contract.config_file``).
    """
    try:
        return read_config_text(path)
    except ConfigFileError as exc:
        raise ConfigError(exc.field, exc.value, exc.reason) from exc


def parse_config(text: str, source_path: Path, *, check_files: bool = True) -> AgentConfig:
    """Validate TOML ``text`` as if read from ``source_path`` (relative paths resolve against its folder).

    Raises ConfigError, and only ConfigError, for any text.
    """
    source_path = Path(source_path).absolute()
    try:
        raw = parse_toml(text, str(source_path))
    except ConfigFileError as exc:
        raise ConfigError(exc.field, exc.value, exc.reason) from exc
    return _Loader(source_path, check_files).agent(raw)


_INTEGER_RANGES = {"int16": (0, 32767), "uint16": (0, 65535), "int32": (0, 2**31 - 1), "uint32": (0, 2**32 - 1)}


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


class _Table:
    """One TOML table being read: remembers its path and which keys were taken, rejects the rest."""

    def __init__(self, data: dict[str, Any], path: str, root_name: str) -> None:
        self.data = data
        self.path = path
        self.root_name = root_name
        self.taken: list[str] = []

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def raw(self, key: str, default: Any = _MISSING, hint: str = "") -> Any:
        self.taken.append(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            # a hint costs a comparison per key: offer one only among a plausible number of short keys
            keys = [k for k in self.data if len(k) <= 64][:256]
            typo = difflib.get_close_matches(key, keys, n=1, cutoff=0.75)
            if typo:
                raise ConfigError(self.path or self.root_name, typo[0], f"is an unknown key; did you mean {key!r}?")
            raise ConfigError(self.at(key), _MISSING, f"is required{hint}")
        return default

    def text(self, key: str, default: Any = _MISSING, *, hint: str = "", max_len: int = 255) -> str:
        value = self.raw(key, default, f" ({hint})" if hint else "")
        if (not isinstance(value, str) or not value.strip() and default is _MISSING or len(value) > max_len
                or not value.isprintable()):
            raise ConfigError(self.at(key), value, f"must be a {'non-empty ' if default is _MISSING else ''}"
                                                   f"string of at most {max_len} printable characters")
        return value

    def host(self, key: str, default: Any = _MISSING, *, hint: str = "") -> str:
        value = self.raw(key, default, f" ({hint})" if hint else "")
        if not valid_host(value):
            raise ConfigError(self.at(key), value, HOST_RULE)
        return value

    def id(self, key: str, what: str) -> str:
        value = self.raw(key, hint=f" ({what})")
        if not valid_id(value):
            raise ConfigError(self.at(key), value, "must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63} "
                                                   "(letters, digits, '_', '.', '-'; at most 64 characters)")
        return value

    def choice(self, key: str, allowed: tuple[str, ...], default: Any = _MISSING) -> str:
        value = self.raw(key, default)
        if value not in allowed:
            raise ConfigError(self.at(key), value, f"must be one of {', '.join(allowed)}")
        return value

    def integer(self, key: str, low: int, high: int, default: Any = _MISSING) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.at(key), value, f"must be an integer {low}..{high}")
        if not low <= value <= high:
            raise ConfigError(self.at(key), value, f"must be {low}..{high}")
        return value

    def number(self, key: str, default: Any = _MISSING, *, low: float | None = None, high: float | None = None,
              positive: bool = False, nonzero: bool = False) -> float:
        value = self.raw(key, default)
        try:
            finite = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        except OverflowError:     # an integer too large for a float
            finite = False
        if not finite:
            raise ConfigError(self.at(key), value, "must be a finite number")
        value = float(value)
        if positive and value <= 0:
            bound = f" (at most {high:g})" if high is not None else ""
            raise ConfigError(self.at(key), value, f"must be greater than 0{bound}")
        if nonzero and value == 0:
            raise ConfigError(self.at(key), value, "must not be 0")
        if (low is not None and value < low) or (high is not None and value > high):
            if low is not None and high is not None:
                raise ConfigError(self.at(key), value, f"must be {low:g}..{high:g}")
            if low is not None:
                raise ConfigError(self.at(key), value, f"must be at least {low:g}")
            raise ConfigError(self.at(key), value, f"must be at most {high:g}")
        return value

    def flag(self, key: str, default: Any = _MISSING) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise ConfigError(self.at(key), value, "must be true or false")
        return value

    def table(self, key: str, *, required: bool = False) -> "_Table | None":
        value = self.raw(key, _MISSING if required else None)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ConfigError(self.at(key), value, f"must be a table ([{self.at(key)}])")
        return _Table(value, self.at(key), self.root_name)

    def tables(self, key: str) -> list["_Table"]:
        value = self.raw(key, hint=f" (at least one [[{self.at(key)}]] table)")
        if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
            raise ConfigError(self.at(key), value, f"must be one or more [[{self.at(key)}]] tables")
        return [_Table(v, f"{self.at(key)}[{i}]", self.root_name) for i, v in enumerate(value)]

    def done(self) -> None:
        """Reject keys nobody asked for, suggesting the closest known key."""
        for key in self.data:
            if key in self.taken:
                continue
            close = difflib.get_close_matches(key, self.taken, n=1, cutoff=0.6) if len(key) <= 64 else []
            hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(sorted(set(self.taken)))}"
            raise ConfigError(self.path or self.root_name, key, f"is an unknown key; {hint}")


class _Loader:
    def __init__(self, source_path: Path, check_files: bool) -> None:
        self.source = source_path
        self.folder = source_path.parent
        self.check_files = check_files

    def path(self, table: _Table, key: str, default: Any = _MISSING) -> Path:
        value = table.raw(key, default)
        if isinstance(value, Path):
            return value
        if not valid_path_text(value):
            raise ConfigError(table.at(key), value, "must be a non-empty file path of at most 4096 printable "
                                                    "characters (relative to the config file's folder)")
        return self.folder / Path(value).expanduser()

    def agent(self, raw: dict[str, Any]) -> AgentConfig:
        root = _Table(raw, "", self.source.name)
        site = root.id("site", "the site id used in topics, e.g. \"sub-07\"")
        broker = self.broker(root.table("broker", required=True), site)  # type: ignore[arg-type]
        spool_t, audit_t, twin_t, http_t = (root.table(k) for k in ("spool", "audit", "twin", "http"))
        spool = SpoolConfig()
        if spool_t:
            spool = SpoolConfig(path=self.path(spool_t, "path", SpoolConfig.path),
                                max_readings=spool_t.integer("max_readings", 100, 1_000_000_000, SpoolConfig.max_readings),
                                fsync_batch=spool_t.integer("fsync_batch", 1, 100_000, SpoolConfig.fsync_batch),
                                min_commit_interval_s=spool_t.number("min_commit_interval_s",
                                                                     SpoolConfig.min_commit_interval_s,
                                                                     low=0.0, high=1.0))
            spool_t.done()
        audit = AuditConfig()
        if audit_t:
            audit = AuditConfig(path=self.path(audit_t, "path", AuditConfig.path))
            audit_t.done()
        twin = TwinConfig()
        if twin_t:
            twin = TwinConfig(cache_path=self.path(twin_t, "cache_path", TwinConfig.cache_path),
                              publish_retained=twin_t.flag("publish_retained", True))
            twin_t.done()
        http = HttpConfig()
        if http_t:
            http = HttpConfig(host=http_t.host("host", HttpConfig.host), port=http_t.integer("port", 0, 65535, HttpConfig.port))
            http_t.done()
        commands_t = root.table("commands")
        commands = CommandsConfig()
        if commands_t:
            commands = CommandsConfig(state_path=self.path(commands_t, "state_path", CommandsConfig.state_path),
                                      max_seen_ids=commands_t.integer("max_seen_ids", 100, 1_000_000,
                                                                      CommandsConfig.max_seen_ids))
            commands_t.done()
        devices = tuple(self.device(t) for t in root.tables("devices"))
        assets_t = root.table("assets")
        root.done()
        _check_unique(devices)
        _check_shared(devices)
        assets = self.assets(assets_t, devices) if assets_t else ()
        return AgentConfig(site=site, broker=broker, spool=spool, audit=audit, twin=twin, http=http,
                           devices=devices, source_path=self.source, assets=assets, commands=commands)

    def assets(self, t: _Table, devices: tuple[DeviceConfig, ...]) -> tuple[ThermalAssetConfig, ...]:
        points: dict[str, dict[str, PointConfig]] = {}
        for device in devices:
            for point in device.points:
                points.setdefault(point.asset, {})[point.name] = point
        out = []
        for name in list(t.data):
            if not valid_id(name):
                raise ConfigError(t.at(name), name, "must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63} "
                                                    "(letters, digits, '_', '.', '-'; at most 64 characters)")
            if name not in points:
                raise ConfigError(t.at(name), name, f"has no points in [[devices.points]] "
                                                    f"(assets with points: {', '.join(sorted(points))})")
            asset_t = t.table(name)
            assert asset_t is not None
            out.append(self.thermal_asset(asset_t, name, points[name]))
        t.done()
        return tuple(out)

    def thermal_asset(self, t: _Table, asset: str, points: dict[str, PointConfig]) -> ThermalAssetConfig:
        kind = t.choice("kind", ASSET_KINDS)
        rated_load = t.number("rated_load", positive=True)

        def point_name(key: str, required: bool) -> str | None:
            value = t.raw(key, _MISSING if required else None,
                          f" (the name of a point of asset {asset!r}, e.g. \"load\")" if required else "")
            if value is None:
                return None
            if not isinstance(value, str):
                raise ConfigError(t.at(key), value, f"must be the name of a point of asset {asset!r} (a string)")
            if value not in points:
                close = difflib.get_close_matches(value, list(points), n=1, cutoff=0.6) if len(value) <= 64 else []
                hint = f"did you mean {close[0]!r}?" if close else f"its points: {', '.join(sorted(points))}"
                raise ConfigError(t.at(key), value, f"is not a point of asset {asset!r}; {hint}")
            if points[value].type == "bool":
                raise ConfigError(t.at(key), value, f"is a bool point of asset {asset!r}; a numeric point is needed")
            return value

        load_point = point_name("load_point", True)
        ambient_point = point_name("ambient_point", True)
        top_oil_point = point_name("top_oil_point", False)
        size = t.choice("size", SIZES, "distribution")
        cooling = t.choice("cooling", COOLING_MODES, "ONAN")
        if (size, cooling) not in PRESETS:
            raise ConfigError(t.at("cooling"), cooling, f"has no row for {size} transformers in IEC 60076-7's table "
                                                        f"(allowed: {', '.join(c for s, c in PRESETS if s == size)})")
        preset = PRESETS[(size, cooling)]
        paper = t.choice("paper", PAPERS, "non_upgraded")
        max_gap_s = t.number("max_gap_s", 3600.0, high=30 * 86400.0, positive=True)
        model = t.choice("model", MODELS, "iec")
        hot_spot_limit = t.number("hot_spot_limit", HOT_SPOT_LIMIT_DEGC, low=40.0, high=200.0)
        values: dict[str, float] = {}
        for key, low, high in (("top_oil_rise", 0.0, 150.0), ("hot_spot_gradient", 0.0, 100.0),
                               ("loss_ratio", 0.0, 1000.0)):
            default = preset[key]
            hint = "" if default is not None else f" for size = {size!r} (from the transformer's heat-run test report)"
            if default is None and key not in t.data:
                t.raw(key, hint=hint)
            values[key] = t.number(key, default, low=low, high=high)
        for key, low, high in (("oil_exponent", 0.1, 3.0), ("winding_exponent", 0.1, 3.0), ("k21", 1.0, 10.0)):
            values[key] = t.number(key, preset[key], low=low, high=high)
        for key, high in (("k11", 10.0), ("k22", 10.0), ("oil_time_constant_min", 10_000.0),
                          ("winding_time_constant_min", 10_000.0)):
            values[key] = t.number(key, preset[key], high=high, positive=True)
        t.done()
        return ThermalAssetConfig(asset=asset, kind=kind, rated_load=rated_load, load_point=load_point,  # type: ignore[arg-type]
                                  ambient_point=ambient_point, top_oil_point=top_oil_point,  # type: ignore[arg-type]
                                  size=size, cooling=cooling, max_gap_s=max_gap_s, hot_spot_limit=hot_spot_limit,
                                  params=ThermalParams(paper=paper, model=model, **values))

    def broker(self, t: _Table, site: str) -> BrokerConfig:
        host = t.host("host", hint="the broker's host name or IP address")
        port = t.integer("port", 1, 65535, 8883)
        ca = self.path(t, "ca")
        cert = self.path(t, "cert")
        key = self.path(t, "key")
        client_id = t.text("client_id", f"edge-{site}", max_len=64)
        if not client_id:
            raise ConfigError(t.at("client_id"), client_id, "must be a non-empty string of at most 64 characters")
        config = BrokerConfig(
            host=host, port=port, ca=ca, cert=cert, key=key, client_id=client_id,
            keepalive_s=t.integer("keepalive_s", 5, 65535, 30),
            protocol=t.choice("protocol", PROTOCOLS, "auto"),
            batch_max_readings=t.integer("batch_max_readings", 1, MAX_READINGS_PER_BATCH, 1000),
            batch_max_delay_s=t.number("batch_max_delay_s", 0.5, low=0.0, high=60.0),
            payload_format=t.choice("payload_format", PAYLOAD_VERSIONS, "v2"),
        )
        t.done()
        if self.check_files:
            _check_tls_files(t, config)
        return config

    def device(self, t: _Table) -> DeviceConfig:
        name = t.id("name", "the device name, e.g. \"tx1-relay\"")
        host = t.host("host", hint="the device's or gateway's host name or IP address")
        port = t.integer("port", 1, 65535, 502)
        unit = t.integer("unit", 0, 255, 1)
        transport = t.choice("transport", TRANSPORTS, "tcp")
        timeout_s = t.number("timeout_s", 1.0, high=60.0, positive=True)
        retries = t.integer("retries", 0, 10, 2)
        min_gap_s = t.number("min_gap_s", 0.0, low=0.0, high=60.0)
        poll_interval_s = t.number("poll_interval_s", 1.0, low=MIN_POLL_INTERVAL_S, high=86400.0)
        if poll_interval_s < min_gap_s:
            raise ConfigError(t.at("poll_interval_s"), poll_interval_s,
                              f"is shorter than min_gap_s = {min_gap_s:g}, the device's minimum gap between "
                              f"requests; poll at most that often")
        max_inflight = t.integer("max_inflight", 1, MAX_INFLIGHT, 1)
        if max_inflight > 1 and transport != "tcp":
            raise ConfigError(t.at("max_inflight"), max_inflight,
                              f"needs transport = \"tcp\" (Modbus TCP transaction ids match pipelined answers; "
                              f"{transport} has none); use 1")
        if max_inflight > 1 and min_gap_s:
            raise ConfigError(t.at("max_inflight"), max_inflight,
                              f"cannot be combined with min_gap_s = {min_gap_s:g} (a request budget sends one "
                              f"request at a time); use 1, or min_gap_s = 0")
        max_read_gap = t.integer("max_read_gap", 0, MAX_READ_REGISTERS, 8)
        max_read_registers = t.integer("max_read_registers", 1, MAX_READ_REGISTERS, MAX_READ_REGISTERS)
        max_read_bits = t.integer("max_read_bits", 1, MAX_READ_BITS, MAX_READ_BITS)
        connection = t.choice("connection", CONNECTIONS, "own")
        if connection == "shared" and transport != "tcp":
            raise ConfigError(t.at("connection"), connection,
                              f"needs transport = \"tcp\" (answers on a shared connection are matched to requests "
                              f"by Modbus TCP transaction id; {transport} has none); use \"own\"")
        points = tuple(self.point(p) for p in t.tables("points"))
        writable_raw = t.raw("writable", None)
        if writable_raw is not None and (not isinstance(writable_raw, list)
                                         or not all(isinstance(v, dict) for v in writable_raw)):
            raise ConfigError(t.at("writable"), writable_raw, f"must be [[{t.at('writable')}]] tables")
        by_id = {p.id: p for p in points}
        writable = tuple(self.writable(_Table(v, f"{t.at('writable')}[{i}]", t.root_name), by_id)
                         for i, v in enumerate(writable_raw or ()))
        t.done()
        _check_overlaps(t.path, name, points)
        _check_overlaps(t.path, name, writable, "writable")  # type: ignore[arg-type]
        return DeviceConfig(name=name, host=host, port=port, unit=unit, transport=transport, timeout_s=timeout_s,
                            retries=retries, min_gap_s=min_gap_s, poll_interval_s=poll_interval_s,
                            max_inflight=max_inflight, max_read_gap=max_read_gap,
                            max_read_registers=max_read_registers,
                            max_read_bits=max_read_bits, points=points, writable=writable, connection=connection)

    def writable(self, t: _Table, points: dict[str, PointConfig]) -> WritablePoint:
        point_id = t.id("id", "the writable point's id, e.g. \"EXPORT_LIMIT\"")
        control = t.choice("control", CONTROLS)
        boolean = control in BOOLEAN_CONTROLS
        register = t.choice("register", WRITABLE_REGISTERS, "holding")
        if register == "coil" and not boolean:
            raise ConfigError(t.at("register"), register, f"cannot hold {control} (watts); use a holding register")
        numeric_types = tuple(k for k in DATA_TYPES if k != "bool")
        data_type = t.choice("type", ("bool",) if register == "coil" else numeric_types,
                             "bool" if register == "coil" else "uint16")
        if boolean and data_type.startswith("float"):
            raise ConfigError(t.at("type"), data_type, f"cannot hold {control} (on/off); use an integer type or a coil")
        count = 1 if register == "coil" else REGISTER_COUNT[data_type]
        address = t.integer("address", 0, 65535)
        if address + count - 1 > 65535:
            raise ConfigError(t.at("address"), address,
                              f"must be 0..{65536 - count} for {data_type} ({count} registers end at 65535)")
        byte_order = t.choice("byte_order", BYTE_ORDERS, "big")
        word_order = t.choice("word_order", WORD_ORDERS, "big")
        silence = t.number("silence_timeout_s", low=1.0, high=7 * 86400.0)
        readback = t.raw("readback", None)
        if readback is not None:
            if not isinstance(readback, str) or readback not in points:
                raise ConfigError(t.at("readback"), readback, f"must be the id of a point of this device "
                                                              f"(its points: {', '.join(sorted(points)[:8])})")
            if not boolean and points[readback].type == "bool":
                raise ConfigError(t.at("readback"), readback, f"is a bool point; {control} needs a numeric read-back")
            if points[readback].current_loop is not None:
                raise ConfigError(t.at("readback"), readback, "is a 4-20 mA point; a read-back must be a plain register")
        if boolean:
            for key in ("min", "max", "max_rate_per_s", "scale"):
                if key in t.data:
                    raise ConfigError(t.at(key), t.data[key], f"does not apply to the on/off control {control}")
            safe = t.raw("safe_value", hint=" (true or false: the state written by the fail-safe)")
            if not isinstance(safe, bool):
                raise ConfigError(t.at("safe_value"), safe, f"must be true or false for {control}")
            tolerance = t.number("tolerance", 0.5, low=0.0, high=0.99)
            t.done()
            return WritablePoint(id=point_id, control=control, address=address, safe_value=safe,
                                 silence_timeout_s=silence, register=register, type=data_type, byte_order=byte_order,
                                 word_order=word_order, readback=readback, tolerance=tolerance)
        scale = t.number("scale", 1.0, nonzero=True, low=-1e6, high=1e6)
        if abs(scale) < 1e-9:
            raise ConfigError(t.at("scale"), scale, "must be at least 1e-09 in magnitude")
        low = t.number("min", low=-MAX_WATTS, high=MAX_WATTS)
        high = t.number("max", low=-MAX_WATTS, high=MAX_WATTS)
        if not low < high:
            raise ConfigError(t.at("max"), high, f"must be greater than min = {low:g}")
        if data_type == "float32" and max(abs(low), abs(high)) / abs(scale) > _FLOAT32_MAX:
            raise ConfigError(t.at("scale"), scale, "is too small: max / scale does not fit a float32 register")
        if data_type in TYPE_LIMITS:
            raw_low, raw_high = TYPE_LIMITS[data_type]
            for key, bound in (("min", low), ("max", high)):
                if not raw_low <= round(bound / scale) <= raw_high:
                    raise ConfigError(t.at(key), bound, f"/ scale {scale:g} does not fit a {data_type} register "
                                                        f"({raw_low}..{raw_high})")
        rate = t.number("max_rate_per_s", positive=True, high=MAX_WATTS)
        safe = t.raw("safe_value", hint=" (a number in min..max: the value written by the fail-safe)")
        if isinstance(safe, bool) or not isinstance(safe, (int, float)) or not low <= safe <= high:
            raise ConfigError(t.at("safe_value"), safe, f"must be a number in min..max ({low:g}..{high:g})")
        tolerance = t.number("tolerance", abs(scale) / 2, low=0.0, high=MAX_WATTS)
        t.done()
        return WritablePoint(id=point_id, control=control, address=address, safe_value=float(safe),
                             silence_timeout_s=silence, register=register, type=data_type, byte_order=byte_order,
                             word_order=word_order, scale=scale, min=low, max=high, max_rate_per_s=rate,
                             readback=readback, tolerance=tolerance)

    def point(self, t: _Table) -> PointConfig:
        sensor_id = t.id("id", "the sensor id, e.g. \"SENSOR_01\"")
        asset = t.id("asset", "the asset this point belongs to, e.g. \"tx1\"")
        name = t.id("name", "the point name on the wire, e.g. \"oil_temp\"")
        register = t.choice("register", REGISTER_TYPES, "holding")
        bits = register in BIT_REGISTERS
        data_type = t.choice("type", DATA_TYPES, "bool" if bits else "uint16")
        if bits and data_type != "bool":
            raise ConfigError(t.at("type"), data_type, f"is not allowed on a {register} register; {register}s hold only bool")
        count = 1 if bits else REGISTER_COUNT[data_type]
        address = t.integer("address", 0, 65535)
        if address + count - 1 > 65535:
            raise ConfigError(t.at("address"), address,
                              f"must be 0..{65536 - count} for {data_type} ({count} registers end at 65535)")
        byte_order = t.choice("byte_order", BYTE_ORDERS, "big")
        word_order = t.choice("word_order", WORD_ORDERS, "big")
        gain = t.number("gain", 1.0, nonzero=True)
        offset = t.number("offset", 0.0)
        unit = t.raw("unit", "")
        if not valid_unit(unit):     # the contract's rule: a unit the ingest would dead-letter is refused here
            raise ConfigError(t.at("unit"), unit, f"must be at most {MAX_UNIT_CHARS} printable characters without "
                                                  f"quotes, backslashes, braces or surrounding spaces")
        deadband = t.number("deadband", 0.0, low=0.0)
        deadband_percent = t.number("deadband_percent", 0.0, low=0.0, high=100.0)
        if deadband and deadband_percent:
            raise ConfigError(t.at("deadband_percent"), deadband_percent,
                              f"cannot be combined with deadband = {deadband:g}; set one of them")
        heartbeat_s = t.number("heartbeat_s", 60.0, high=86400.0, positive=True)
        loop = None
        loop_t = t.table("current_loop")
        if loop_t is not None:
            if bits or data_type == "bool":
                raise ConfigError(loop_t.path, register if bits else data_type,
                                  "cannot carry a 4-20 mA loop; use a numeric type on a holding or input register")
            low = loop_t.number("low")
            high = loop_t.number("high")
            if low == high:
                raise ConfigError(loop_t.at("high"), high, "must differ from low (the values at 4 mA and at 20 mA)")
            loop = CurrentLoop(low=low, high=high, ma_per_count=loop_t.number("ma_per_count", 1.0, positive=True))
            loop_t.done()
        faults: tuple[FaultCode, ...] = ()
        if "faults" in t.data:
            if data_type not in _INTEGER_RANGES:
                raise ConfigError(t.at("faults"), data_type, "needs an integer point type (int16, uint16, int32, uint32): "
                                                             "fault codes are register values")
            faults = parse_faults(t.at("faults"), t.raw("faults"), _INTEGER_RANGES[data_type])
        t.done()
        return PointConfig(id=sensor_id, asset=asset, name=name, register=register, address=address,
                           type=data_type, byte_order=byte_order, word_order=word_order, gain=gain, offset=offset,
                           unit=unit, deadband=deadband, deadband_percent=deadband_percent, heartbeat_s=heartbeat_s,
                           current_loop=loop, faults=faults)


def _check_overlaps(device_path: str, device_name: str, points: tuple[PointConfig, ...], table: str = "points") -> None:
    """Two points (or two writable points) of one device may not share a register (or bit) of the same type.

    A writable point may share its register with a read point (a setpoint the device also reports).
    """
    order = sorted(range(len(points)), key=lambda i: (points[i].register, points[i].address))
    for before, after in zip(order, order[1:]):
        a, b = points[before], points[after]
        if a.register == b.register and b.address <= a.address + a.count - 1:
            raise ConfigError(f"{device_path}.{table}[{after}].address", b.address,
                              f"overlaps {device_path}.{table}[{before}] ({a.id!r}, {a.register} "
                              f"{a.address}..{a.address + a.count - 1} of device {device_name!r})")


def _check_shared(devices: tuple[DeviceConfig, ...]) -> None:
    """Devices on one shared connection wait the same ``timeout_s`` (one deadline order per connection)."""
    first: dict[tuple[str, int], int] = {}
    for d, device in enumerate(devices):
        if not device.shares_connection:
            continue
        other = first.setdefault((device.host, device.port), d)
        if devices[other].timeout_s != device.timeout_s:
            raise ConfigError(f"devices[{d}].timeout_s", device.timeout_s,
                              f"differs from devices[{other}] ({devices[other].name!r}: {devices[other].timeout_s:g}), "
                              f"which shares its connection to {device.host}:{device.port}; give the devices of "
                              f"one shared connection one timeout_s, or connection = \"own\"")


def _check_unique(devices: tuple[DeviceConfig, ...]) -> None:
    names: dict[str, int] = {}
    ids: dict[str, str] = {}
    wire: dict[tuple[str, str], str] = {}
    controls: dict[str, str] = {}
    for d, device in enumerate(devices):
        for w, writable in enumerate(device.writable):
            here = f"devices[{d}].writable[{w}]"
            if writable.control in controls:
                raise ConfigError(f"{here}.control", writable.control,
                                  f"is already served by {controls[writable.control]}; one writable point per control")
            controls[writable.control] = here
            if writable.id in ids:
                raise ConfigError(f"{here}.id", writable.id, f"is already used by {ids[writable.id]}; ids must be unique")
            ids[writable.id] = here
        if device.name in names:
            raise ConfigError(f"devices[{d}].name", device.name,
                              f"is already the name of devices[{names[device.name]}]; device names must be unique")
        names[device.name] = d
        for p, point in enumerate(device.points):
            here = f"devices[{d}].points[{p}]"
            if point.id in ids:
                raise ConfigError(f"{here}.id", point.id,
                                  f"is already used by {ids[point.id]}; sensor ids must be unique in the file")
            ids[point.id] = here
            if (point.asset, point.name) in wire:
                raise ConfigError(f"{here}.name", point.name, f"is already a point of asset {point.asset!r} "
                                                              f"({wire[(point.asset, point.name)]}); (asset, name) must be unique")
            wire[(point.asset, point.name)] = here


def key_mode_problem(path: Path, mode: int) -> str | None:
    """What is wrong with the permission bits ``mode`` of private key ``path``, or None: the one rule of the
    agent at start and of ``ems-edge check-config`` (``edge_agent.layout``), so neither accepts what the other refuses.

    The field manual's 0600 (or 0400): nobody but the owner may read a key. One exception, read-only group
    access on a Kubernetes Secret volume (``path`` is kubelet's ``..data/<name>`` link): there kubelet gives the
    pod's fsGroup read (0440) whatever the Secret asks for, and a non-root agent can read its key no other way.
    """
    if mode & 0o007:
        return f"accessible to other users (mode {mode:04o})"
    if mode & 0o070 and not (mode & 0o070 == 0o040 and _on_secret_volume(path)):
        return f"accessible to its group (mode {mode:04o})"
    return None


def _on_secret_volume(path: Path) -> bool:
    # kubelet's atomic writer: NAME -> ..data/NAME, ..data -> ..<timestamp>/ (Secret, ConfigMap and projected volumes).
    return path.is_symlink() and os.readlink(path) == f"..data/{path.name}" and (path.parent / "..data").is_symlink()


def _check_tls_files(t: _Table, broker: BrokerConfig) -> None:
    """The CA, certificate and key must be readable PEM files; the key readable by its owner only (``key_mode_problem``)."""
    for key in ("ca", "cert", "key"):
        path: Path = getattr(broker, key)
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError(t.at(key), path, "is not a regular file")
            if info.st_size > MAX_PEM_BYTES:
                raise ConfigError(t.at(key), path, f"is {info.st_size} bytes; a PEM file may be at most "
                                                        f"{MAX_PEM_BYTES} bytes")
            with path.open("rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise ConfigError(t.at(key), path, f"cannot be read ({exc.strerror or exc})") from exc
    problem = key_mode_problem(broker.key, stat.S_IMODE(broker.key.stat().st_mode))
    if problem is not None:
        raise ConfigError(t.at("key"), broker.key, f"is {problem}", fix=f"chmod 600 {shlex.quote(str(broker.key))}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=str(broker.ca))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(t.at("ca"), broker.ca, f"is not a PEM CA certificate ({exc})") from exc
    try:
        context.load_cert_chain(certfile=str(broker.cert), keyfile=str(broker.key))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(t.at("key"), broker.key,
                          f"is not the PEM private key of broker.cert {str(broker.cert)!r} ({exc})") from exc
