"""[[devices.writable]] in sensors.conf: what a writable point becomes, and each bad input → the exact one-line message."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import CommandsConfig, WritablePoint, load_config, parse_config
from edge_agent.errors import ConfigError
from edge_agent.simulator import EXAMPLE_CONFIG

BASE = """\
site = "sub-07"

[broker]
host = "127.0.0.1"
ca = "pki/ca.crt"
cert = "pki/edge.crt"
key = "pki/edge.key"

[[devices]]
name = "inv1"
host = "127.0.0.1"

[[devices.points]]
id = "INV_EXPLIM"
asset = "inv1"
name = "export_limit"
address = 10
gain = 10.0

[[devices.writable]]
id = "EXPORT_LIMIT"
control = "exp_lim_w"
address = 20
scale = 10.0
min = 0
max = 50000
max_rate_per_s = 5000
readback = "INV_EXPLIM"
safe_value = 0
silence_timeout_s = 600
"""

COIL = """
[[devices.writable]]
id = "CONNECT"
control = "connect"
register = "coil"
address = 3
safe_value = false
silence_timeout_s = 600
"""


def parse(text: str, folder: Path):
    return parse_config(text, folder / "sensors.conf", check_files=False)


def error_of(text: str, folder: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text, folder)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_writable_point_and_its_defaults(tmp_path: Path) -> None:
    config = parse(BASE + COIL, tmp_path)
    export, connect = config.devices[0].writable
    assert export == WritablePoint(id="EXPORT_LIMIT", control="exp_lim_w", address=20, safe_value=0.0,
                                   silence_timeout_s=600.0, register="holding", type="uint16", scale=10.0, min=0.0,
                                   max=50000.0, max_rate_per_s=5000.0, readback="INV_EXPLIM", tolerance=5.0)
    assert connect == WritablePoint(id="CONNECT", control="connect", address=3, safe_value=False,
                                    silence_timeout_s=600.0, register="coil", type="bool")
    assert connect.boolean and not export.boolean
    assert config.writable_points() == {"exp_lim_w": (config.devices[0], export), "connect": (config.devices[0], connect)}
    assert config.commands == CommandsConfig()
    config = parse(BASE.replace('[[devices]]', '[commands]\nstate_path = "state/commands.db"\nmax_seen_ids = 500\n\n[[devices]]'),
                   tmp_path)
    assert config.commands == CommandsConfig(state_path=tmp_path / "state" / "commands.db", max_seen_ids=500)


def test_the_example_has_a_writable_export_limit() -> None:
    config = load_config(EXAMPLE_CONFIG, check_files=False)
    device, point = config.writable_points()["exp_lim_w"]
    assert device.name == "pv1-inverter" and point.readback == "SENSOR_24" and point.safe_value == 0.0


@pytest.mark.parametrize("old,new,expected", [
    ('control = "exp_lim_w"', 'control = "export_limit"',
     "devices[0].writable[0].control: 'export_limit' must be one of exp_lim_w, imp_lim_w, gen_lim_w, load_lim_w, "
     "connect, energize"),
    ('min = 0\n', 'min = -1\n', None),   # a negative minimum is a valid import/export convention
    ('max = 50000', 'max = 1e6',
     "devices[0].writable[0].max: 1000000.0 / scale 10 does not fit a uint16 register (0..65535)"),
    ('max = 50000', 'max = 0',
     "devices[0].writable[0].max: 0.0 must be greater than min = 0"),
    ('max = 50000', 'max = 2e9',
     "devices[0].writable[0].max: 2000000000.0 must be -1e+09..1e+09"),
    ('min = 0\n', '',
     "devices[0].writable[0].min: <missing> is required"),
    ('max_rate_per_s = 5000', 'max_rate_per_s = 0',
     "devices[0].writable[0].max_rate_per_s: 0.0 must be greater than 0 (at most 1e+09)"),
    ('safe_value = 0', 'safe_value = 60000',
     "devices[0].writable[0].safe_value: 60000 must be a number in min..max (0..50000)"),
    ('safe_value = 0', 'safe_value = "off"',
     "devices[0].writable[0].safe_value: 'off' must be a number in min..max (0..50000)"),
    ('safe_value = 0\n', '',
     "devices[0].writable[0].safe_value: <missing> is required (a number in min..max: the value written by the "
     "fail-safe)"),
    ('silence_timeout_s = 600', 'silence_timeout_s = 0',
     "devices[0].writable[0].silence_timeout_s: 0.0 must be 1..604800"),
    ('silence_timeout_s = 600\n', '',
     "devices[0].writable[0].silence_timeout_s: <missing> is required"),
    ('readback = "INV_EXPLIM"', 'readback = "SENSOR_99"',
     "devices[0].writable[0].readback: 'SENSOR_99' must be the id of a point of this device (its points: INV_EXPLIM)"),
    ('scale = 10.0', 'scale = 0',
     "devices[0].writable[0].scale: 0.0 must not be 0"),
    ('address = 20', 'address = 65536',
     "devices[0].writable[0].address: 65536 must be 0..65535"),
    ('address = 20', 'address = 20\ntype = "float16"',
     "devices[0].writable[0].type: 'float16' must be one of int16, uint16, int32, uint32, float32, float64"),
    ('address = 20', 'address = 20\nregister = "coil"',
     "devices[0].writable[0].register: 'coil' cannot hold exp_lim_w (watts); use a holding register"),
    ('address = 20', 'address = 20\nregister = "input"',
     "devices[0].writable[0].register: 'input' must be one of holding, coil"),
    ('address = 20', 'address = 20\ntype = "int32"\naddress_ = 1',
     "devices[0].writable[0]: 'address_' is an unknown key; did you mean 'address'?"),
    ('id = "EXPORT_LIMIT"', 'id = "INV_EXPLIM"',
     "devices[0].points[0].id: 'INV_EXPLIM' is already used by devices[0].writable[0]; sensor ids must be unique "
     "in the file"),
])
def test_bad_writable_point_gives_one_exact_line(tmp_path: Path, old: str, new: str, expected: str | None) -> None:
    assert old in BASE
    text = BASE.replace(old, new)
    if expected is None:
        parse(text, tmp_path)
    else:
        assert error_of(text, tmp_path) == expected


@pytest.mark.parametrize("old,new,expected", [
    ('safe_value = false', 'safe_value = 0',
     "devices[0].writable[1].safe_value: 0 must be true or false for connect"),
    ('safe_value = false', 'safe_value = false\nmin = 0',
     "devices[0].writable[1].min: 0 does not apply to the on/off control connect"),
    ('register = "coil"', 'register = "holding"\ntype = "float32"',
     "devices[0].writable[1].type: 'float32' cannot hold connect (on/off); use an integer type or a coil"),
    ('register = "coil"', 'register = "coil"\ntype = "uint16"',
     "devices[0].writable[1].type: 'uint16' must be one of bool"),
    ('control = "connect"', 'control = "exp_lim_w"',
     "devices[0].writable[1].register: 'coil' cannot hold exp_lim_w (watts); use a holding register"),
])
def test_bad_on_off_point_gives_one_exact_line(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in COIL
    assert error_of(BASE + COIL.replace(old, new), tmp_path) == expected


def test_one_writable_point_per_control_and_no_overlaps(tmp_path: Path) -> None:
    twice = COIL.replace('id = "CONNECT"', 'id = "CONNECT2"').replace("address = 3", "address = 4")
    assert error_of(BASE + COIL + twice, tmp_path) == (
        "devices[0].writable[2].control: 'connect' is already served by devices[0].writable[1]; "
        "one writable point per control")
    overlap = COIL.replace('control = "connect"', 'control = "energize"').replace('id = "CONNECT"', 'id = "E"')
    assert error_of(BASE + COIL + overlap, tmp_path).startswith(
        "devices[0].writable[2].address: 3 overlaps devices[0].writable[1] ('CONNECT', coil 3..3")
    shared = BASE.replace("address = 20", "address = 10")     # the setpoint is also a polled point: allowed
    assert parse(shared, tmp_path).devices[0].writable[0].address == 10


def test_writable_must_be_tables(tmp_path: Path) -> None:
    text = BASE.split("[[devices.writable]]")[0].replace('name = "inv1"\n', 'name = "inv1"\nwritable = 5\n')
    assert error_of(text, tmp_path) == "devices[0].writable: 5 must be [[devices[0].writable]] tables"
