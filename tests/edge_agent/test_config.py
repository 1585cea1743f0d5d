"""sensors.conf validation: each bad input a new user might write → the exact one-line message."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from devenv.pki import LocalPki
from edge_agent.config import (DEFAULT_CONFIG_PATH, AgentConfig, CurrentLoop, config_path, load_config,
                               parse_config)
from edge_agent.errors import ConfigError
from edge_agent.simulator import EXAMPLE_CONFIG
from edge_agent.thermal import PRESETS, ThermalParams

BASE = """\
site = "sub-07"

[broker]
host = "127.0.0.1"
ca = "pki/ca.crt"
cert = "pki/edge.crt"
key = "pki/edge.key"

[[devices]]
name = "tx1"
host = "127.0.0.1"

[[devices.points]]
id = "SENSOR_01"
asset = "tx1"
name = "oil_temp"
address = 0
type = "float32"
"""

POINT2 = """
[[devices.points]]
id = "SENSOR_02"
asset = "tx1"
name = "winding_temp"
{body}
"""


@pytest.fixture
def folder(tmp_path: Path, pki: LocalPki) -> Path:
    """A config folder with a ``pki/`` beside it (CA, client certificate, key at 0600)."""
    (tmp_path / "pki").mkdir()
    client = pki.client("edge")
    shutil.copy(pki.ca, tmp_path / "pki" / "ca.crt")
    shutil.copy(client.cert, tmp_path / "pki" / "edge.crt")
    shutil.copy(client.key, tmp_path / "pki" / "edge.key")
    shutil.copy(pki.server.key, tmp_path / "pki" / "other.key")
    os.chmod(tmp_path / "pki" / "edge.key", 0o600)
    os.chmod(tmp_path / "pki" / "other.key", 0o600)
    return tmp_path


def write(folder: Path, text: str) -> Path:
    path = folder / "sensors.conf"
    path.write_text(text)
    return path


def error_of(folder: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(folder, text))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_valid_minimal_config_gets_documented_defaults(folder: Path) -> None:
    config = load_config(write(folder, BASE))
    assert isinstance(config, AgentConfig)
    assert config.site == "sub-07"
    assert config.source_path == folder / "sensors.conf"
    broker = config.broker
    assert (broker.port, broker.client_id, broker.keepalive_s, broker.protocol) == (8883, "edge-sub-07", 30, "auto")
    assert (broker.batch_max_readings, broker.batch_max_delay_s, broker.payload_format) == (1000, 0.5, "v2")
    assert broker.key == folder / "pki" / "edge.key"          # relative to the config file's folder
    assert config.spool.path == Path("/var/lib/ems/spool") and config.spool.max_readings == 1_000_000
    assert (config.spool.fsync_batch, config.spool.min_commit_interval_s) == (1000, 0.02)
    assert config.audit.path == Path("/var/log/ems/telemetry-audit.log")
    assert (config.http.host, config.http.port) == ("127.0.0.1", 9108)
    (device,) = config.devices
    assert (device.port, device.unit, device.transport, device.retries, device.min_gap_s) == (502, 1, "tcp", 2, 0.0)
    assert (device.poll_interval_s, device.max_inflight) == (1.0, 1)
    (point,) = device.points
    assert (point.register, point.type, point.byte_order, point.word_order) == ("holding", "float32", "big", "big")
    assert (point.gain, point.offset, point.deadband, point.heartbeat_s, point.count) == (1.0, 0.0, 0.0, 60.0, 2)


def test_relative_paths_resolve_against_the_config_folder_not_the_cwd(folder: Path, tmp_path_factory, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    text = BASE.replace("[[devices]]", '[spool]\npath = "state/spool"\n[audit]\npath = "../audit.log"\n\n[[devices]]')
    config = load_config(write(folder, text))
    assert config.spool.path == folder / "state" / "spool"
    assert config.audit.path == folder / ".." / "audit.log"


def test_example_config_is_valid_and_covers_every_type(tmp_path: Path, pki: LocalPki) -> None:
    config = load_config(EXAMPLE_CONFIG, check_files=False)
    points = [p for d in config.devices for p in d.points]
    assert {p.type for p in points} == {"int16", "uint16", "int32", "uint32", "float32", "float64", "bool"}
    assert {p.register for p in points} == {"holding", "input", "coil", "discrete"}
    assert {(p.byte_order, p.word_order) for p in points} >= {("big", "big"), ("big", "little"), ("little", "little")}
    assert sum(1 for p in points if p.current_loop) == 3
    assert config.point("SENSOR_16").current_loop == CurrentLoop(low=0.0, high=10.0, ma_per_count=0.001)


@pytest.mark.parametrize("text,expected", [
    (BASE.replace('address = 0', 'address = 70000'),
     "devices[0].points[0].address: 70000 must be 0..65535"),
    (BASE.replace('address = 0', 'address = 65535'),
     "devices[0].points[0].address: 65535 must be 0..65534 for float32 (2 registers end at 65535)"),
    (BASE.replace('type = "float32"', 'type = "float64"\naddress = 65533').replace("address = 0\n", ""),
     "devices[0].points[0].address: 65533 must be 0..65532 for float64 (4 registers end at 65535)"),
    (BASE.replace('type = "float32"', 'type = "float16"'),
     "devices[0].points[0].type: 'float16' must be one of int16, uint16, int32, uint32, float32, float64, bool"),
    (BASE.replace('address = 0', 'adress = 0'),
     "devices[0].points[0]: 'adress' is an unknown key; did you mean 'address'?"),
    (BASE.replace('address = 0', 'address = 0\ndeadbnd = 0.5'),
     "devices[0].points[0]: 'deadbnd' is an unknown key; did you mean 'deadband'?"),
    (BASE.replace('site = "sub-07"', 'site = "sub-07"\ncolour = "blue"'),
     "sensors.conf: 'colour' is an unknown key; allowed: assets, audit, broker, commands, devices, http, site, spool, twin"),
    (BASE.replace('host = "127.0.0.1"\n\n[[devices.points]]', 'host = "127.0.0.1"\nport = "502"\n\n[[devices.points]]'),
     "devices[0].port: '502' must be an integer 1..65535"),
    (BASE.replace('name = "tx1"\n', 'name = "tx1"\nunit = true\n'),
     "devices[0].unit: True must be an integer 0..255"),
    (BASE.replace('name = "tx1"\n', 'name = "tx1"\ntimeout_s = "1s"\n'),
     "devices[0].timeout_s: '1s' must be a finite number"),
    (BASE.replace('name = "tx1"\n', 'name = "tx1"\ntimeout_s = 0\n'),
     "devices[0].timeout_s: 0.0 must be greater than 0 (at most 60)"),
    (BASE.replace('name = "tx1"\n', 'name = "tx1"\npoll_interval_s = 0.0005\n'),
     "devices[0].poll_interval_s: 0.0005 must be 0.001..86400"),
    (BASE.replace('name = "tx1"\n', 'name = "tx1"\nmin_gap_s = 0.2\npoll_interval_s = 0.1\n'),
     "devices[0].poll_interval_s: 0.1 is shorter than min_gap_s = 0.2, the device's minimum gap between requests; "
     "poll at most that often"),
    (BASE.replace('name = "tx1"\n', 'name = "tx1"\nmax_inflight = 0\n'),
     "devices[0].max_inflight: 0 must be 1..16"),
    (BASE.replace('name = "tx1"\n', 'name = "tx1"\nmax_inflight = 17\n'),
     "devices[0].max_inflight: 17 must be 1..16"),
    (BASE.replace('name = "tx1"\n', 'name = "tx1"\ntransport = "rtu-over-tcp"\nmax_inflight = 4\n'),
     "devices[0].max_inflight: 4 needs transport = \"tcp\" (Modbus TCP transaction ids match pipelined answers; "
     "rtu-over-tcp has none); use 1"),
    (BASE.replace('name = "tx1"\n', 'name = "tx1"\nmin_gap_s = 0.05\nmax_inflight = 2\n'),
     "devices[0].max_inflight: 2 cannot be combined with min_gap_s = 0.05 (a request budget sends one request at a "
     "time); use 1, or min_gap_s = 0"),
    (BASE.replace('name = "tx1"\n', 'name = "tx1"\ntransport = "rtu"\n'),
     "devices[0].transport: 'rtu' must be one of tcp, rtu-over-tcp"),
    (BASE.replace('type = "float32"', 'type = "float32"\nbyte_order = "middle"'),
     "devices[0].points[0].byte_order: 'middle' must be one of big, little"),
    (BASE.replace('type = "float32"', 'type = "float32"\nword_order = "BADC"'),
     "devices[0].points[0].word_order: 'BADC' must be one of big, little"),
    (BASE.replace('type = "float32"', 'type = "float32"\nregister = "coil"'),
     "devices[0].points[0].type: 'float32' is not allowed on a coil register; coils hold only bool"),
    (BASE.replace('type = "float32"', 'type = "int16"\nregister = "discrete"'),
     "devices[0].points[0].type: 'int16' is not allowed on a discrete register; discretes hold only bool"),
    (BASE.replace('type = "float32"', 'type = "float32"\ndeadband = -0.1'),
     "devices[0].points[0].deadband: -0.1 must be at least 0"),
    (BASE.replace('type = "float32"', 'type = "float32"\ndeadband = 0.5\ndeadband_percent = 2'),
     "devices[0].points[0].deadband_percent: 2.0 cannot be combined with deadband = 0.5; set one of them"),
    (BASE.replace('type = "float32"', 'type = "float32"\ngain = 0'),
     "devices[0].points[0].gain: 0.0 must not be 0"),
    (BASE.replace('type = "float32"', 'type = "float32"\nheartbeat_s = -5'),
     "devices[0].points[0].heartbeat_s: -5.0 must be greater than 0 (at most 86400)"),
    (BASE + '[devices.points.current_loop]\nlow = 10.0\nhigh = 10.0\n',
     "devices[0].points[0].current_loop.high: 10.0 must differ from low (the values at 4 mA and at 20 mA)"),
    (BASE + '[devices.points.current_loop]\nlow = 0.0\n',
     "devices[0].points[0].current_loop.high: <missing> is required"),
    (BASE + '[devices.points.current_loop]\nlow = 0.0\nhigh = 10.0\nma_per_count = -1\n',
     "devices[0].points[0].current_loop.ma_per_count: -1.0 must be greater than 0"),
    (BASE.replace('type = "float32"', 'type = "bool"\nregister = "coil"')
     + '[devices.points.current_loop]\nlow = 0.0\nhigh = 10.0\n',
     "devices[0].points[0].current_loop: 'coil' cannot carry a 4-20 mA loop; use a numeric type on a holding "
     "or input register"),
    (BASE.replace('site = "sub-07"', 'site = "sub 07"'),
     "site: 'sub 07' must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63} (letters, digits, '_', '.', '-'; at most 64 characters)"),
    (BASE.replace('site = "sub-07"\n', ''),
     "site: <missing> is required (the site id used in topics, e.g. \"sub-07\")"),
    (BASE.replace('asset = "tx1"', 'asset = "tx1/hv"'),
     "devices[0].points[0].asset: 'tx1/hv' must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63} (letters, digits, '_', '.', "
     "'-'; at most 64 characters)"),
    (BASE.split("[[devices]]")[0],
     "devices: <missing> is required (at least one [[devices]] table)"),
    (BASE.replace('[broker]', '[mqtt]'),
     "broker: <missing> is required"),
    (BASE.replace('host = "127.0.0.1"\nca', 'host = "127.0.0.1"\nprotocol = "mqttv4"\nca'),
     "broker.protocol: 'mqttv4' must be one of auto, mqttv5, mqttv311"),
    (BASE.replace('host = "127.0.0.1"\nca', 'host = "127.0.0.1"\npayload_format = "v3"\nca'),
     "broker.payload_format: 'v3' must be one of v1, v2"),
    (BASE.replace('host = "127.0.0.1"\nca', 'host = "127.0.0.1"\nbatch_max_readings = 5000\nca'),
     "broker.batch_max_readings: 5000 must be 1..1000"),
    (BASE.replace('host = "127.0.0.1"\nca', 'host = "127.0.0.1"\nport = 70000\nca'),
     "broker.port: 70000 must be 1..65535"),
])
def test_bad_input_gives_one_exact_line(folder: Path, text: str, expected: str) -> None:
    assert error_of(folder, text) == expected


@pytest.mark.parametrize("value,expected", [
    ("0.05", None), ("0", None), ("1.5", "spool.min_commit_interval_s: 1.5 must be 0..1"),
    ("-0.01", "spool.min_commit_interval_s: -0.01 must be 0..1"),
    ('"fast"', "spool.min_commit_interval_s: 'fast' must be a finite number"),
])
def test_spool_commit_pace(folder: Path, value: str, expected: str | None) -> None:
    text = BASE.replace("[[devices]]", f"[spool]\nmin_commit_interval_s = {value}\n\n[[devices]]", 1)
    if expected is None:
        assert load_config(write(folder, text)).spool.min_commit_interval_s == float(value)
    else:
        assert error_of(folder, text) == expected


def test_fast_polling_and_pipelining_are_accepted(folder: Path) -> None:
    text = BASE.replace('name = "tx1"\n', 'name = "tx1"\npoll_interval_s = 0.001\nmax_inflight = 16\n')
    (device,) = load_config(write(folder, text)).devices
    assert (device.poll_interval_s, device.max_inflight) == (0.001, 16)


def test_broker_given_as_a_string(folder: Path) -> None:
    text = BASE.replace('[broker]', 'broker = "mqtt.example"\n[mqtt]')
    assert error_of(folder, text) == "broker: 'mqtt.example' must be a table ([broker])"


def test_overlapping_points_on_one_device(folder: Path) -> None:
    text = BASE + POINT2.format(body='address = 1\ntype = "uint16"')
    assert error_of(folder, text) == ("devices[0].points[1].address: 1 overlaps devices[0].points[0] "
                                      "('SENSOR_01', holding 0..1 of device 'tx1')")


def test_same_address_in_different_register_types_is_fine(folder: Path) -> None:
    text = BASE + POINT2.format(body='address = 0\nregister = "input"\ntype = "uint16"')
    config = load_config(write(folder, text))
    assert [p.register for p in config.devices[0].points] == ["holding", "input"]


def test_adjacent_points_do_not_overlap(folder: Path) -> None:
    load_config(write(folder, BASE + POINT2.format(body='address = 2\ntype = "float64"')))


def test_duplicate_sensor_id_across_devices(folder: Path) -> None:
    second = BASE.split("[[devices]]", 1)[1].replace('name = "tx1"', 'name = "tx2"', 1).replace('"oil_temp"', '"load"')
    assert error_of(folder, BASE + "[[devices]]" + second) == (
        "devices[1].points[0].id: 'SENSOR_01' is already used by devices[0].points[0]; sensor ids must be unique in the file")


def test_duplicate_device_name(folder: Path) -> None:
    second = BASE.split("[[devices]]", 1)[1].replace("SENSOR_01", "SENSOR_02")
    assert error_of(folder, BASE + "[[devices]]" + second) == (
        "devices[1].name: 'tx1' is already the name of devices[0]; device names must be unique")


def test_duplicate_asset_and_point_name(folder: Path) -> None:
    text = BASE + POINT2.format(body='address = 10').replace('"winding_temp"', '"oil_temp"')
    assert error_of(folder, text) == ("devices[0].points[1].name: 'oil_temp' is already a point of asset 'tx1' "
                                      "(devices[0].points[0]); (asset, name) must be unique")


def test_broken_toml_names_line_column_and_text(folder: Path) -> None:
    text = BASE.replace("address = 0", "address = ")
    line = text.splitlines().index("address = ") + 1
    assert error_of(folder, text) == f"{folder / 'sensors.conf'}:{line}:11: 'address =' is not valid TOML: Invalid value"


def test_unclosed_string(folder: Path) -> None:
    text = BASE.replace('name = "oil_temp"', 'name = "oil_temp')
    line = text.splitlines().index('name = "oil_temp') + 1
    message = error_of(folder, text)
    assert message.startswith(f"{folder / 'sensors.conf'}:{line}:")
    assert message.endswith("'name = \"oil_temp' is not valid TOML: Illegal character '\\n'")


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.conf")
    assert str(caught.value) == f"config file: '{tmp_path / 'nope.conf'}' cannot be read (No such file or directory)"


def test_unreadable_key_file(folder: Path) -> None:
    text = BASE.replace("pki/edge.key", "pki/missing.key")
    assert error_of(folder, text) == (f"broker.key: '{folder / 'pki' / 'missing.key'}' cannot be read "
                                      f"(No such file or directory)")


def test_key_path_that_is_a_folder(folder: Path) -> None:
    text = BASE.replace('"pki/edge.key"', '"pki"')
    assert error_of(folder, text) == f"broker.key: '{folder / 'pki'}' is not a regular file"


def test_world_readable_key_is_refused_with_the_chmod_hint(folder: Path) -> None:
    key = folder / "pki" / "edge.key"
    os.chmod(key, 0o644)
    assert error_of(folder, BASE) == (f"broker.key: '{key}' is accessible to other users (mode 0644); "
                                      f"run: chmod 600 {key}")


def test_group_readable_key_is_refused_as_check_config_refuses_it(folder: Path) -> None:
    key = folder / "pki" / "edge.key"
    os.chmod(key, 0o640)
    assert error_of(folder, BASE) == (f"broker.key: '{key}' is accessible to its group (mode 0640); "
                                      f"run: chmod 600 {key}")


def _secret_volume(folder: Path, mode: int) -> None:
    """pki/ laid out as kubelet mounts a Secret: NAME -> ..data/NAME, ..data -> ..<timestamp>/, files ``mode``."""
    pki = folder / "pki"
    stamp = pki / "..2026_12_06_17_00_00.000000001"
    stamp.mkdir()
    for name in ("ca.crt", "edge.crt", "edge.key"):
        (pki / name).rename(stamp / name)
        os.chmod(stamp / name, mode)
        (pki / name).symlink_to(f"..data/{name}")
    (pki / "..data").symlink_to(stamp.name)


def test_a_kubernetes_secret_volume_key_readable_by_the_pod_group_is_accepted(folder: Path) -> None:
    _secret_volume(folder, 0o440)                # kubelet's mode for the pod's fsGroup
    assert load_config(write(folder, BASE)).broker.key == folder / "pki" / "edge.key"


@pytest.mark.parametrize("mode", [0o460, 0o444])
def test_a_secret_volume_key_writable_by_its_group_or_readable_by_others_is_refused(folder: Path, mode: int) -> None:
    _secret_volume(folder, mode)
    key = folder / "pki" / "edge.key"
    assert error_of(folder, BASE).startswith(f"broker.key: '{key}' is accessible to ")


def test_a_group_readable_key_that_only_looks_like_a_secret_volume_is_refused(folder: Path) -> None:
    key = folder / "pki" / "edge.key"
    os.chmod(key, 0o440)
    (folder / "pki" / "..data").symlink_to(".")      # a ..data link, but the key is a plain file
    assert "accessible to its group (mode 0440)" in error_of(folder, BASE)


def test_key_that_does_not_belong_to_the_certificate(folder: Path) -> None:
    message = error_of(folder, BASE.replace("pki/edge.key", "pki/other.key"))
    assert message.startswith(f"broker.key: '{folder / 'pki' / 'other.key'}' is not the PEM private key of "
                              f"broker.cert '{folder / 'pki' / 'edge.crt'}' (")


def test_ca_that_is_not_a_certificate(folder: Path) -> None:
    (folder / "pki" / "junk.crt").write_text("not a certificate\n")
    message = error_of(folder, BASE.replace("pki/ca.crt", "pki/junk.crt"))
    assert message.startswith(f"broker.ca: '{folder / 'pki' / 'junk.crt'}' is not a PEM CA certificate (")


def test_check_files_false_skips_the_tls_files(folder: Path) -> None:
    text = BASE.replace("pki/edge.key", "pki/missing.key")
    config = load_config(write(folder, text), check_files=False)
    assert config.broker.key == folder / "pki" / "missing.key"


def test_config_error_carries_its_fields(folder: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(folder, BASE.replace("address = 0", "address = -1")))
    assert (caught.value.path, caught.value.value, caught.value.reason) == (
        "devices[0].points[0].address", -1, "must be 0..65535")


def test_parse_config_from_text(folder: Path) -> None:
    config = parse_config(BASE, folder / "virtual.conf")
    assert config.source_path == folder / "virtual.conf"


def test_config_path_precedence() -> None:
    assert config_path("/a.conf", {"EMS_SENSORS_CONF": "/b.conf"}) == Path("/a.conf")
    assert config_path(None, {"EMS_SENSORS_CONF": "/b.conf"}) == Path("/b.conf")
    assert config_path(None, {}) == DEFAULT_CONFIG_PATH == Path("/etc/ems/sensors.conf")


# -- thermal assets ([assets.<asset>]) -------------------------------------------------------------

THERMAL_POINTS = """
[[devices.points]]
id = "SENSOR_02"
asset = "tx1"
name = "load"
address = 2
type = "float32"
unit = "MVA"

[[devices.points]]
id = "SENSOR_03"
asset = "tx1"
name = "ambient_temp"
address = 4
type = "int16"

[[devices.points]]
id = "SENSOR_04"
asset = "tx1"
name = "breaker_closed"
register = "coil"
address = 0
"""

ASSET = """
[assets.tx1]
kind = "transformer"
rated_load = 2.5
load_point = "load"
ambient_point = "ambient_temp"
"""

THERMAL = BASE + THERMAL_POINTS + ASSET


def test_config_without_assets_has_no_thermal_assets(folder: Path) -> None:
    assert load_config(write(folder, BASE)).assets == ()


def test_thermal_asset_gets_the_distribution_onan_defaults(folder: Path) -> None:
    (asset,) = load_config(write(folder, THERMAL)).assets
    assert (asset.asset, asset.kind, asset.rated_load, asset.load_point, asset.ambient_point, asset.top_oil_point) == (
        "tx1", "transformer", 2.5, "load", "ambient_temp", None)
    assert (asset.size, asset.cooling, asset.max_gap_s) == ("distribution", "ONAN", 3600.0)
    assert asset.params == ThermalParams()


def test_thermal_asset_power_preset_with_overrides(folder: Path) -> None:
    text = THERMAL + ('top_oil_point = "oil_temp"\nsize = "power"\ncooling = "ONAF"\npaper = "upgraded"\n'
                      'top_oil_rise = 52\nhot_spot_gradient = 26.0\nloss_ratio = 6\nwinding_time_constant_min = 9\n'
                      'max_gap_s = 600\n')
    (asset,) = load_config(write(folder, text)).assets
    preset = {**PRESETS[("power", "ONAF")], "top_oil_rise": 52.0, "hot_spot_gradient": 26.0, "loss_ratio": 6.0,
              "winding_time_constant_min": 9.0}
    assert asset.params == ThermalParams(paper="upgraded", **preset)
    assert (asset.top_oil_point, asset.cooling, asset.max_gap_s) == ("oil_temp", "ONAF", 600.0)


@pytest.mark.parametrize("text,expected", [
    (THERMAL.replace('kind = "transformer"', 'kind = "breaker"'),
     "assets.tx1.kind: 'breaker' must be one of transformer"),
    (THERMAL.replace('rated_load = 2.5', 'rated_load = 0'),
     "assets.tx1.rated_load: 0.0 must be greater than 0"),
    (THERMAL.replace('rated_load = 2.5\n', ''),
     "assets.tx1.rated_load: <missing> is required"),
    (THERMAL.replace('load_point = "load"', 'load_point = "lod"'),
     "assets.tx1.load_point: 'lod' is not a point of asset 'tx1'; did you mean 'load'?"),
    (THERMAL.replace('ambient_point = "ambient_temp"', 'ambient_point = "weather"'),
     "assets.tx1.ambient_point: 'weather' is not a point of asset 'tx1'; its points: ambient_temp, breaker_closed, "
     "load, oil_temp"),
    (THERMAL.replace('load_point = "load"', 'load_point = "breaker_closed"'),
     "assets.tx1.load_point: 'breaker_closed' is a bool point of asset 'tx1'; a numeric point is needed"),
    (THERMAL.replace('ambient_point = "ambient_temp"\n', ''),
     "assets.tx1.ambient_point: <missing> is required (the name of a point of asset 'tx1', e.g. \"load\")"),
    (THERMAL + 'cooling = "OFAF"\n',
     "assets.tx1.cooling: 'OFAF' must be one of ONAN, ONAF"),
    (THERMAL + 'cooling = "ONAF"\n',
     "assets.tx1.cooling: 'ONAF' has no row for distribution transformers in IEC 60076-7's table (allowed: ONAN)"),
    (THERMAL + 'size = "power"\n',
     "assets.tx1.top_oil_rise: <missing> is required for size = 'power' (from the transformer's heat-run test report)"),
    (THERMAL + 'paper = "kraft"\n',
     "assets.tx1.paper: 'kraft' must be one of non_upgraded, upgraded"),
    (THERMAL + 'k21 = 0.5\n',
     "assets.tx1.k21: 0.5 must be 1..10"),
    (THERMAL + 'oil_time_constant_min = -180\n',
     "assets.tx1.oil_time_constant_min: -180.0 must be greater than 0 (at most 10000)"),
    (THERMAL + 'top_oil_rise = "55K"\n',
     "assets.tx1.top_oil_rise: '55K' must be a finite number"),
    (THERMAL + 'tau_oil = 180\n',
     "assets.tx1: 'tau_oil' is an unknown key; allowed: ambient_point, cooling, hot_spot_gradient, hot_spot_limit, "
     "k11, k21, k22, kind, load_point, loss_ratio, max_gap_s, model, oil_exponent, oil_time_constant_min, paper, "
     "rated_load, size, "
     "top_oil_point, top_oil_rise, winding_exponent, winding_time_constant_min"),
    (THERMAL + 'model = "iec60076"\n',
     "assets.tx1.model: 'iec60076' must be one of iec, ieee"),
    (THERMAL + 'hot_spot_limit = 400\n',
     "assets.tx1.hot_spot_limit: 400.0 must be 40..200"),
    (THERMAL + 'top_oil_rice = 50\n',
     "assets.tx1: 'top_oil_rice' is an unknown key; did you mean 'top_oil_rise'?"),
    (THERMAL.replace('[assets.tx1]', '[assets.tx9]'),
     "assets.tx9: 'tx9' has no points in [[devices.points]] (assets with points: tx1)"),
    (BASE.replace('site = "sub-07"', 'site = "sub-07"\nassets = "tx1"'),
     "assets: 'tx1' must be a table ([assets])"),
])
def test_bad_thermal_asset_gives_one_exact_line(folder: Path, text: str, expected: str) -> None:
    assert error_of(folder, text) == expected


def test_example_config_declares_tx1_as_a_thermal_asset() -> None:
    config = load_config(EXAMPLE_CONFIG, check_files=False)
    (tx1,) = config.assets
    names = {p.name for d in config.devices for p in d.points if p.asset == "tx1"}
    assert tx1.asset == "tx1" and {tx1.load_point, tx1.ambient_point, tx1.top_oil_point} <= names


# -- connection = "shared" (tests/edge_agent/test_shared_connection.py: the connection itself)

SECOND = (BASE.replace('[[devices]]\nname = "tx1"', '[[devices]]\nname = "tx2"\nunit = 2\nconnection = "shared"')
          .split("[[devices]]", 1)[1].replace('id = "SENSOR_01"', 'id = "SENSOR_02"').replace('asset = "tx1"', 'asset = "tx2"'))


def test_a_connection_is_the_devices_own_unless_it_says_shared(folder: Path) -> None:
    (own,) = load_config(write(folder, BASE)).devices
    assert own.connection == "own" and not own.shares_connection
    text = BASE.replace('name = "tx1"\n', 'name = "tx1"\nconnection = "shared"\n') + "[[devices]]" + SECOND
    first, second = load_config(write(folder, text)).devices
    assert first.shares_connection and second.shares_connection


@pytest.mark.parametrize(("change", "expected"), [
    ('connection = "pooled"', "devices[0].connection: 'pooled' must be one of own, shared"),
    ('transport = "rtu-over-tcp"\nconnection = "shared"',
     "devices[0].connection: 'shared' needs transport = \"tcp\" (answers on a shared connection are matched to "
     "requests by Modbus TCP transaction id; rtu-over-tcp has none); use \"own\""),
])
def test_a_bad_connection_names_the_field(folder: Path, change: str, expected: str) -> None:
    assert error_of(folder, BASE.replace('name = "tx1"\n', f'name = "tx1"\n{change}\n')) == expected


def test_devices_of_one_shared_connection_wait_alike(folder: Path) -> None:
    text = (BASE.replace('name = "tx1"\n', 'name = "tx1"\nconnection = "shared"\n') + "[[devices]]"
            + SECOND.replace('connection = "shared"', 'connection = "shared"\ntimeout_s = 2.5'))
    assert error_of(folder, text) == (
        "devices[1].timeout_s: 2.5 differs from devices[0] ('tx1': 1), which shares its connection to "
        "127.0.0.1:502; give the devices of one shared connection one timeout_s, or connection = \"own\"")
    own = text.replace('connection = "shared"\ntimeout_s = 2.5', 'timeout_s = 2.5')   # its own connection: fine
    assert [d.timeout_s for d in load_config(write(folder, own)).devices] == [1.0, 2.5]
