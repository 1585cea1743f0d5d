"""sensors.conf from an attacker or a broken disk: the loader returns a config or raises ConfigError, nothing else.

The CLI cases are issue 13's, verbatim, driven through the real ``ems-edge``
in a subprocess: each ends with exit 2 and one short line on stderr, no
traceback, within the subprocess timeout (a FIFO must not hang it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from devenv.demo_edge import write_agent_config
from devenv.mosquitto import free_port
from devenv.pki import LocalPki
from edge_agent.calibration import apply_calibration
from edge_agent.config import AgentConfig, load_config, parse_config
from edge_agent.errors import ConfigError
from edge_agent.simulator import EXAMPLE_CONFIG
from tests.hostile_toml import MAX_MESSAGE, mutate, toml_document

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = tomllib.loads(EXAMPLE_CONFIG.read_text())
PROPERTY = settings(max_examples=250, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _bounded(error: ConfigError) -> str:
    message = str(error)
    assert "\n" not in message and "\r" not in message and len(message) <= MAX_MESSAGE, message
    return message


# -- properties ------------------------------------------------------------------------------

@PROPERTY
@given(data=st.data())
def test_any_edit_of_the_example_config_gives_a_config_or_a_config_error(tmp_path: Path, data: st.DataObject) -> None:
    text = toml_document(mutate(data, EXAMPLE))
    try:
        config = parse_config(text, tmp_path / "sensors.conf", check_files=False)
    except ConfigError as exc:
        _bounded(exc)
        event("refused")
        return
    event("accepted")
    assert isinstance(config, AgentConfig)
    for device in config.devices:                     # what the values become is in range
        assert 1 <= device.port <= 65535 and 0 <= device.unit <= 255
        for point in device.points:
            assert 0 <= point.address <= 65536 - point.count
            assert all(isinstance(v, float) and abs(v) < float("inf") for v in (point.gain, point.offset, point.deadband))
    assert 1 <= config.broker.port <= 65535 and 0 <= config.http.port <= 65535


@PROPERTY
@given(data=st.binary(max_size=600) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_bytes_in_the_file_give_a_config_or_a_config_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "sensors.conf"
    path.write_bytes(data)
    try:
        load_config(path, check_files=False)
    except ConfigError as exc:
        _bounded(exc)


@PROPERTY
@given(data=st.data())
def test_calibration_of_an_edited_config_changes_nothing_unless_the_config_is_valid(tmp_path: Path,
                                                                                     data: st.DataObject) -> None:
    path = tmp_path / "sensors.conf"
    path.write_text(toml_document(mutate(data, EXAMPLE, edits=1)))
    before = path.read_bytes()
    offset = data.draw(st.floats(allow_nan=False, allow_infinity=False, width=32), label="offset")
    try:
        apply_calibration(path, "SENSOR_01", offset=offset)
    except ConfigError as exc:
        _bounded(exc)
        assert path.read_bytes() == before            # a refused file is left exactly as it was
        event("refused")
        return
    event("calibrated")
    assert load_config(path, check_files=False).point("SENSOR_01").offset == offset


@pytest.mark.parametrize("unit, shown", [('deg"C', "'deg\"C'"), ("degC\u202e", "'degC\\u202e'"), ("a\nb", "'a\\nb'"),
                                         ("{x}", "'{x}'"), (" degC", "' degC'"), ("u" * 33, "'" + "u" * 33 + "'")])
def test_a_unit_the_ingest_would_dead_letter_is_refused_in_the_config(tmp_path: Path, unit: str, shown: str) -> None:
    doc = tomllib.loads(EXAMPLE_CONFIG.read_text())
    doc["devices"][0]["points"][0]["unit"] = unit
    with pytest.raises(ConfigError) as caught:
        parse_config(toml_document(doc), tmp_path / "sensors.conf", check_files=False)
    assert str(caught.value) == (f"devices[0].points[0].unit: {shown} must be at most 32 printable characters "
                                 f"without quotes, backslashes, braces or surrounding spaces")


# -- the TLS files the config names ---------------------------------------------------------

@pytest.fixture
def site(tmp_path: Path, pki: LocalPki) -> Path:
    return write_agent_config(tmp_path / "site", pki, broker_port=free_port(), modbus_port=free_port())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("key, value, expected", [
    ("ca", "/dev/zero", "broker.ca: '/dev/zero' is not a regular file"),
    ("key", "fifo.key", "broker.key: '{folder}/fifo.key' is not a regular file"),
    ("cert", "big.crt", "broker.cert: '{folder}/big.crt' is 1048577 bytes; a PEM file may be at most 1048576 bytes"),
    ("ca", "pki/\x00ca.crt", "broker.ca: 'pki/\\x00ca.crt' must be a non-empty file path of at most 4096 printable "
                             "characters (relative to the config file's folder)"),
    ("ca", "p" * 5000, "broker.ca: '" + "p" * 60 + "'… (5000 characters) must be a non-empty file path of at most "
                       "4096 printable characters (relative to the config file's folder)"),
])
def test_tls_files_that_are_special_huge_or_unnamable_are_refused(site: Path, key: str, value: str,
                                                                  expected: str) -> None:
    os.mkfifo(site.parent / "fifo.key")
    with open(site.parent / "big.crt", "wb") as fh:
        fh.truncate(1024 * 1024 + 1)
    doc = tomllib.loads(site.read_text())
    doc["broker"][key] = value
    site.write_text(toml_document(doc))
    with pytest.raises(ConfigError) as caught:
        load_config(site)
    assert str(caught.value) == expected.format(folder=site.parent)


# -- the CLI, issue 13's cases -------------------------------------------------------------------

def _run(args: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess:
    # This tree's ems-edge first on PATH for calibrate_sensor.sh, not a packaged one in /usr/bin (which
    # test_edge_deb.py installs for a while, on another worker or in another checkout's run).
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT),
                               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})


def ems_edge(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return _run([*prefix, sys.executable, "-m", "edge_agent.cli", *args])


def one_line_error(result: subprocess.CompletedProcess, command: str, *, max_len: int = 300) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"ems-edge {command}: error: "), lines[0][:300]
    assert len(lines[0]) < max_len, lines[0][:1000]
    return lines[0]


def _replace_line(config: Path, start: str, new: str) -> None:
    lines = config.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(start))
    lines[index] = new
    config.write_text("\n".join(lines) + "\n")


def _hostile(config: Path, case: str) -> Path:
    """Turn the valid ``config`` into the hostile file of ``case``; returns the path to pass as --config."""
    if case == "400-digit number":
        _replace_line(config, "port = ", "port = 1" + "0" * 399)     # the first port: [broker]
    elif case == "arrays nested 5,000 deep":
        _replace_line(config, "site = ", "site = " + "[" * 5000 + "]" * 5000)
    elif case == "inline tables nested 5,000 deep":
        _replace_line(config, "site = ", "site = " + "{a = " * 5000 + "1" + "}" * 5000)
    elif case == "table headers nested 5,000 deep":
        config.write_text(config.read_text() + "[" + ".".join(["t"] * 5000) + "]\nx = 1\n")
    elif case == "10 MB host string":
        _replace_line(config, 'host = "127.0.0.1"', 'host = "' + "h" * 10_000_000 + '"')
    elif case == "900 kB host string":
        _replace_line(config, 'host = "127.0.0.1"', 'host = "' + "h" * 900_000 + '"')
    elif case == "invalid UTF-8":
        config.write_bytes(config.read_bytes().replace(b'site = "sub-07"', b'site = "sub-\xff07"'))
    elif case == "/dev/zero":
        return Path("/dev/zero")
    elif case == "FIFO":
        config.unlink()
        os.mkfifo(config)
    elif case == "directory":
        return config.parent
    elif case == "missing":
        config.unlink()
    else:
        raise AssertionError(case)
    return config


CASES = {
    "400-digit number": "broker.port: 100000000000000000000000000000000000000000000000000000000000… (400 digits) "
                        "must be a 64-bit integer (-2**63..2**63-1), as every TOML integer",
    "arrays nested 5,000 deep": "{path}:{site_line}:40: 'site = " + "[" * 53 + "'… (line of 10007 characters) nests arrays "
                                "and inline tables more than 32 deep",
    "inline tables nested 5,000 deep": "{path}:{site_line}:168: 'site = " + "{a = " * 10 + "{a'… (line of 30008 characters) "
                                       "nests arrays and inline tables more than 32 deep",
    "table headers nested 5,000 deep": "{path}:{line}:65: '[" + "t." * 29 + "t'… (line of 10001 characters) has a "
                                       "key or table header of more than 32 dotted parts",
    "10 MB host string": "config file: '{path}' is larger than 1048576 bytes (1 MiB), the most a config file may be",
    "900 kB host string": "broker.host: '" + "h" * 60 + "'… (900000 characters) must be a host name or IP address "
                          "(1..253 characters: letters, digits, '.', '-', '_', ':', '%')",
    "invalid UTF-8": "config file: '{path}' is not UTF-8 text (byte {byte}, line {site_line})",
    "/dev/zero": "config file: '/dev/zero' is a character device; a regular file is needed",
    "FIFO": "config file: '{path}' is a FIFO (named pipe); a regular file is needed",
    "directory": "config file: '{path}' is a directory; a regular file is needed",
    "missing": "config file: '{path}' cannot be read (No such file or directory)",
}


def _expected(case: str, path: Path, original: str) -> str:
    site_line = next(i for i, line in enumerate(original.splitlines(), 1) if line.startswith("site = "))
    byte = original.encode().index(b'site = "sub-07"') + len('site = "sub-')
    fields = {"{path}": str(path), "{line}": str(len(original.splitlines()) + 1), "{site_line}": str(site_line),
              "{byte}": str(byte)}
    expected = CASES[case]
    for name, value in fields.items():
        expected = expected.replace(name, value)
    return expected


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(CASES))
def test_check_config_on_hostile_files_exits_2_with_one_short_line(site: Path, case: str) -> None:
    original = site.read_text()
    path = _hostile(site, case)
    line = one_line_error(ems_edge("check-config", "--config", str(path)), "check-config")
    assert line == "ems-edge check-config: error: " + _expected(case, path, original)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["400-digit number", "arrays nested 5,000 deep", "inline tables nested 5,000 deep",
                                  "/dev/zero", "FIFO", "10 MB host string"])
@pytest.mark.parametrize("command", ["run", "calibrate", "calibrate_sensor.sh"])
def test_run_and_calibrate_refuse_the_same_files_the_same_way(site: Path, case: str, command: str) -> None:
    original = site.read_text()
    path = _hostile(site, case)
    before = path.read_bytes() if path.is_file() else None
    if command == "run":
        result = ems_edge("run", "--config", str(path))
    elif command == "calibrate":
        result = ems_edge("calibrate", "--config", str(path), "--id", "SENSOR_01", "--offset", "0.05")
    else:
        result = _run([str(ROOT / "scripts" / "calibrate_sensor.sh"), "SENSOR_01", "0.05", "--config", str(path)])
    line = one_line_error(result, "run" if command == "run" else "calibrate")
    assert line.endswith(_expected(case, path, original))
    if before is not None:
        assert path.read_bytes() == before            # calibrate left the refused file as it was


@pytest.mark.timeout(60)
def test_a_config_the_agent_may_not_read_is_a_one_line_error(site: Path) -> None:
    os.chmod(site, 0o000)
    # root reads any file; drop every capability so that the mode bits count, as they do for the service user
    prefix = ("setpriv", "--inh-caps=-all", "--bounding-set=-all") if os.geteuid() == 0 else ()
    if prefix:
        assert shutil.which("setpriv"), "setpriv (util-linux) is needed to test a permission error as root"
    line = one_line_error(ems_edge("check-config", "--config", str(site), prefix=prefix), "check-config")
    assert line == f"ems-edge check-config: error: config file: '{site}' cannot be read (Permission denied)"


def test_hostile_numbers_on_the_command_line_stay_short(site: Path) -> None:
    result = ems_edge("calibrate", "--config", str(site), "--id", "SENSOR_01", "--offset", "1" + "0" * 400)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == ("ems-edge calibrate: error: argument --offset: '1" + "0" * 59
                                              + "'… (401 characters) must be a finite number")
    result = ems_edge("calibrate", "--config", str(site), "--id", "S" * 100_000, "--offset", "1")
    line = one_line_error(result, "calibrate", max_len=400)    # the hint lists twelve known ids
    assert line.startswith("ems-edge calibrate: error: --id: '" + "S" * 60 + "'… (100000 characters) is not a sensor id")
