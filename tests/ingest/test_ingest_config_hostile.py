"""ingest.toml and the EMS_* overrides from an attacker or a broken disk: a config or a ConfigError, nothing else.

The CLI cases are issue 13's, verbatim, driven through the real ``ems-ingest``
in a subprocess: each ends with exit 2 and one short line on stderr, no
traceback, within the subprocess timeout (a FIFO must not hang it).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ingest.config import ENV_OVERRIDES, IngestConfig, load_config
from ingest.errors import ConfigError
from tests.hostile_toml import MAX_MESSAGE, mutate, toml_document

REPO = Path(__file__).resolve().parents[2]
PROPERTY = settings(max_examples=250, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
BASE = {
    "shutdown_grace_s": 20,
    "broker": {"host": "mqtt.ems.svc", "tls": True, "port": 8883, "ca": "ca.crt", "cert": "tls.crt", "key": "tls.key",
               "client_id": "ems-ingest-0", "group": "ems-ingest", "keepalive_s": 30, "session_expiry_s": 604800,
               "receive_maximum": 1000},
    "tsdb": {"remote_write_url": "http://tsdb.ems.svc:9090/api/v1/write", "query_url": "http://tsdb.ems.svc:9090",
             "timeout_s": 10, "max_backoff_s": 30},
    "batch": {"max_readings": 2000, "max_delay_s": 0.2},
    "state": {"dir": "state", "max_intervals_per_site": 1024},
    "metrics": {"host": "0.0.0.0", "port": 9100},
    "time": {"max_future_s": 300, "max_age_s": 259200},
    "twin_api": {"host": "0.0.0.0", "port": 443, "cert": "api.crt", "key": "api.key", "client_ca": "ca.crt",
                 "client_id": "ems-twin-api-0"},
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in ("ca.crt", "tls.crt", "tls.key", "api.crt", "api.key"):
        (tmp_path / name).write_text("pem")
    return tmp_path


def _bounded(error: ConfigError) -> str:
    message = str(error)
    assert "\n" not in message and "\r" not in message and len(message) <= MAX_MESSAGE, message
    return message


def _in_range(config: IngestConfig) -> None:
    """What every value becomes is in range: ports, counts, finite durations."""
    assert 1 <= config.broker.port <= 65535 and 1 <= config.broker.receive_maximum <= 65535
    assert config.metrics.port <= 65535 and (config.twin_api is None or config.twin_api.port <= 65535)
    for value in (config.tsdb.timeout_s, config.tsdb.max_backoff_s, config.batch.max_delay_s, config.shutdown_grace_s):
        assert isinstance(value, float) and math.isfinite(value) and value >= 0
    assert len(config.broker.host) <= 253 and len(config.tsdb.remote_write_url) <= 2048


# -- properties ------------------------------------------------------------------------------

@PROPERTY
@given(data=st.data())
def test_any_edit_of_a_full_config_gives_a_config_or_a_config_error(folder: Path, data: st.DataObject) -> None:
    path = folder / "ingest.toml"
    path.write_text(toml_document(mutate(data, BASE)))
    try:
        config = load_config(path, {})
    except ConfigError as exc:
        _bounded(exc)
        event("refused")
        return
    event("accepted")
    _in_range(config)


@PROPERTY
@given(data=st.binary(max_size=600))
def test_any_bytes_in_the_file_give_a_config_or_a_config_error(folder: Path, data: bytes) -> None:
    path = folder / "ingest.toml"
    path.write_bytes(data)
    try:
        load_config(path, {})
    except ConfigError as exc:
        _bounded(exc)


_env_text = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=30),      # surrogates too: undecodable bytes in os.environ
    st.sampled_from(["1" + "0" * 400, "70000", "0", "-1", "+1883", "1_883", "٣", " 1883", "true", "TRUE", "yes",
                     "\udcff", "a\nb", "\x1b[31m", "mqtt", "::1", "http://t:9090/api/v1/write", "http://t:99999/w",
                     "/var/lib/ems", "state\x00", "ca.crt", "tls.key", "1883", "false", "ems-x_1", "mqtt.ems.svc"]),
    st.integers(min_value=254, max_value=5000).map(lambda n: "h" * n),
)


_VALID_ENV = {"EMS_BROKER_HOST": ["mqtt", "::1"], "EMS_BROKER_PORT": ["1883", "8883"], "EMS_BROKER_TLS": ["true"],
              "EMS_BROKER_CA": ["ca.crt"], "EMS_BROKER_CERT": ["tls.crt"], "EMS_BROKER_KEY": ["tls.key"],
              "EMS_BROKER_CLIENT_ID": ["ems-ingest-1"], "EMS_BROKER_GROUP": ["g1"],
              "EMS_REMOTE_WRITE_URL": ["http://t:9090/api/v1/write"], "EMS_STATE_DIR": ["state", "/tmp/ems-state"],
              "EMS_METRICS_PORT": ["0", "9100"]}


@PROPERTY
@given(data=st.data())
def test_any_environment_gives_a_config_or_a_config_error(folder: Path, data: st.DataObject) -> None:
    assert set(_VALID_ENV) == set(ENV_OVERRIDES)
    names = data.draw(st.lists(st.sampled_from(sorted(ENV_OVERRIDES)), unique=True, max_size=6), label="names")
    env = {name: data.draw(st.sampled_from(_VALID_ENV[name]) | _env_text, label=name) for name in names}
    path = folder / "ingest.toml"
    path.write_text(toml_document(BASE))
    try:
        config = load_config(path, env)
    except ConfigError as exc:
        message = _bounded(exc)
        event("refused")
        if exc.field.startswith("EMS_"):              # a bad override names its variable
            assert message.split(" ", 1)[0].rstrip(":") in env
        return
    event("accepted")
    _in_range(config)


@pytest.mark.parametrize("name, value, expected", [
    ("EMS_BROKER_PORT", "1" + "0" * 400,
     "EMS_BROKER_PORT: must be an integer (broker.port) (got '" + "1" + "0" * 59 + "'… (401 characters))"),
    ("EMS_BROKER_PORT", "70000", "EMS_BROKER_PORT (broker.port): must be an integer 1..65535 (got 70000)"),
    ("EMS_BROKER_PORT", "٣", "EMS_BROKER_PORT: must be an integer (broker.port) (got '٣')"),
    ("EMS_BROKER_HOST", "h" * 100_000,
     "EMS_BROKER_HOST: must be at most 4096 characters (broker.host) (got '" + "h" * 60 + "'… (100000 characters))"),
    ("EMS_BROKER_HOST", "h" * 300,
     "EMS_BROKER_HOST (broker.host): must be a host name or IP address (1..253 characters: letters, digits, '.', '-', "
     "'_', ':', '%') (got '" + "h" * 60 + "'… (300 characters))"),
    ("EMS_BROKER_CA", "1" * 401, "EMS_BROKER_CA (broker.ca): must be an existing file (got '" + "1" * 60
                                 + "'… (401 characters))"),      # a name too long for the file system
    ("EMS_BROKER_HOST", "mqtt\ud800", "EMS_BROKER_HOST: must be UTF-8 text (broker.host) (got 'mqtt\\ud800')"),
    ("EMS_BROKER_HOST", "mqtt\n.evil", "EMS_BROKER_HOST (broker.host): must be a host name or IP address (1..253 "
                                       "characters: letters, digits, '.', '-', '_', ':', '%') (got 'mqtt\\n.evil')"),
    ("EMS_STATE_DIR", "x" * 5000, "EMS_STATE_DIR: must be at most 4096 characters (state.dir) (got '"
                                  + "x" * 60 + "'… (5000 characters))"),
    ("EMS_REMOTE_WRITE_URL", "http://t:99999/w", "EMS_REMOTE_WRITE_URL (tsdb.remote_write_url): must be an http:// or "
                                                 "https:// URL with a host and a port 1..65535 (got 'http://t:99999/w')"),
    ("EMS_METRICS_PORT", "65536", "EMS_METRICS_PORT (metrics.port): must be an integer 0..65535 (got 65536)"),
])
def test_bad_overrides_name_the_variable_the_setting_and_the_shortened_value(folder: Path, name: str, value: str,
                                                                            expected: str) -> None:
    path = folder / "ingest.toml"
    path.write_text(toml_document(BASE))
    with pytest.raises(ConfigError) as caught:
        load_config(path, {name: value})
    assert str(caught.value) == expected


# -- the CLI, issue 13's cases -------------------------------------------------------------------

def ems_ingest(*args: str, env: dict | None = None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EMS_")}
    return subprocess.run([*prefix, sys.executable, "-m", "ingest.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**clean, **(env or {})})


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("ems-ingest: ") and len(lines[0]) < 300, lines[0][:1000]
    return lines[0]


def _hostile(folder: Path, case: str) -> Path:
    path = folder / "ingest.toml"
    doc = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    if case == "400-digit number":
        doc["broker"]["port"] = 10 ** 399
    elif case == "10 MB host string":
        doc["broker"]["host"] = "h" * 10_000_000
    elif case == "900 kB host string":
        doc["broker"]["host"] = "h" * 900_000
    text = toml_document(doc)
    if case == "arrays nested 5,000 deep":
        text = "shutdown_grace_s = " + "[" * 5000 + "]" * 5000 + "\n" + text.split("\n", 1)[1]
    elif case == "inline tables nested 5,000 deep":
        text = "shutdown_grace_s = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n" + text.split("\n", 1)[1]
    elif case == "table headers nested 5,000 deep":
        text += "[" + ".".join(["t"] * 5000) + "]\nx = 1\n"
    elif case == "invalid UTF-8":
        text = text.replace("mqtt.ems.svc", "mqtt.\udcffems.svc")
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    if case == "/dev/zero":
        return Path("/dev/zero")
    if case == "FIFO":
        path.unlink()
        os.mkfifo(path)
    elif case == "directory":
        return folder
    elif case == "missing":
        path.unlink()
    return path


CASES = {
    "400-digit number": "broker.port: must be a 64-bit integer (-2**63..2**63-1), as every TOML integer (got "
                        "100000000000000000000000000000000000000000000000000000000000… (400 digits))",
    "arrays nested 5,000 deep": "{path}:1:52: nests arrays and inline tables more than 32 deep (got "
                                "'shutdown_grace_s = " + "[" * 41 + "'… (line of 10019 characters))",
    "inline tables nested 5,000 deep": "{path}:1:180: nests arrays and inline tables more than 32 deep (got "
                                       "'shutdown_grace_s = " + "{a = " * 8 + "{'… (line of 30020 characters))",
    "table headers nested 5,000 deep": "{path}:{line}:65: has a key or table header of more than 32 dotted parts (got "
                                       "'[" + "t." * 29 + "t'… (line of 10001 characters))",
    "10 MB host string": "config file: is larger than 1048576 bytes (1 MiB), the most a config file may be "
                         "(got '{path}')",
    "900 kB host string": "broker.host: must be a host name or IP address (1..253 characters: letters, digits, '.', "
                          "'-', '_', ':', '%') (got '" + "h" * 60 + "'… (900000 characters))",
    "invalid UTF-8": "config file: is not UTF-8 text (byte {byte}, line 2) (got '{path}')",
    "/dev/zero": "config file: is a character device; a regular file is needed (got '/dev/zero')",
    "FIFO": "config file: is a FIFO (named pipe); a regular file is needed (got '{path}')",
    "directory": "config file: is a directory; a regular file is needed (got '{path}')",
    "missing": "config file: cannot be read (No such file or directory) (got '{path}')",
}


def _expected(case: str, path: Path) -> str:
    text = toml_document(BASE)
    fields = {"{path}": str(path), "{line}": str(text.count("\n") + 1), "{byte}": str(text.index("mqtt.ems") + 5)}
    expected = CASES[case]
    for name, value in fields.items():
        expected = expected.replace(name, value)
    return expected


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_hostile_files_exit_2_with_one_short_line(folder: Path, case: str, command: str) -> None:
    path = _hostile(folder, case)
    line = one_line_error(ems_ingest(command, "--config", str(path)))
    assert line == "ems-ingest: " + _expected(case, path)


@pytest.mark.timeout(60)
def test_hostile_config_path_from_the_environment_variable(folder: Path) -> None:
    fifo = _hostile(folder, "FIFO")
    line = one_line_error(ems_ingest("check-config", env={"EMS_INGEST_CONFIG": str(fifo)}))
    assert line == f"ems-ingest: config file: is a FIFO (named pipe); a regular file is needed (got '{fifo}')"


@pytest.mark.timeout(60)
def test_hostile_overrides_exit_2_with_one_short_line(folder: Path) -> None:
    path = folder / "ingest.toml"
    path.write_text(toml_document(BASE))
    line = one_line_error(ems_ingest("check-config", "--config", str(path), env={"EMS_BROKER_PORT": "1" + "0" * 400}))
    assert line == "ems-ingest: EMS_BROKER_PORT: must be an integer (broker.port) (got '1" + "0" * 59 + "'… (401 characters))"
    line = one_line_error(ems_ingest("check-config", "--config", str(path), env={"EMS_BROKER_HOST": "h" * 100_000}))
    assert line.startswith("ems-ingest: EMS_BROKER_HOST: must be at most 4096 characters (broker.host) (got 'hhh")
    # undecodable bytes in the environment reach Python as lone surrogates
    env = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items() if not k.startswith("EMS_")}
    env[b"EMS_BROKER_HOST"] = b"mqtt\xff"
    result = subprocess.run([sys.executable, "-m", "ingest.cli", "check-config", "--config", str(path)], cwd=REPO,
                            capture_output=True, text=True, timeout=60, env=env)
    assert one_line_error(result) == "ems-ingest: EMS_BROKER_HOST: must be UTF-8 text (broker.host) (got 'mqtt\\udcff')"


@pytest.mark.timeout(60)
def test_a_config_the_worker_may_not_read_is_a_one_line_error(folder: Path) -> None:
    path = folder / "ingest.toml"
    path.write_text(toml_document(BASE))
    os.chmod(path, 0o000)
    # root reads any file; drop every capability so that the mode bits count, as they do for the service user
    prefix = ("setpriv", "--inh-caps=-all", "--bounding-set=-all") if os.geteuid() == 0 else ()
    if prefix:
        assert shutil.which("setpriv"), "setpriv (util-linux) is needed to test a permission error as root"
    line = one_line_error(ems_ingest("check-config", "--config", str(path), prefix=prefix))
    assert line == f"ems-ingest: config file: cannot be read (Permission denied) (got '{path}')"
