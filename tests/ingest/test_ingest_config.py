"""Config validation: every error names the field, the value and what is allowed; the CLI exits 2 without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.config import load_config, parse_config
from ingest.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    for name in ("ca.crt", "tls.crt", "tls.key"):
        (tmp_path / name).write_text("pem")
    return tmp_path


def _raw(**sections: dict) -> dict:
    raw = {
        "broker": {"host": "mqtt.ems.svc", "ca": "ca.crt", "cert": "tls.crt", "key": "tls.key"},
        "tsdb": {"remote_write_url": "http://tsdb.ems.svc:9090/api/v1/write"},
        "state": {"dir": "/var/lib/ems-ingest"},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


def test_minimal_config_gets_documented_defaults(files: Path) -> None:
    config = parse_config(_raw(), files)
    assert config.broker.port == 8883
    assert config.broker.group == "ems-ingest"
    assert config.broker.ca == files / "ca.crt"
    assert config.broker.client_id.startswith("ems-ingest-")
    assert config.broker.session_expiry_s == 7 * 24 * 3600
    assert config.tsdb.query_url == "http://tsdb.ems.svc:9090"
    assert config.metrics.port == 9100
    assert config.batch.max_readings == 2000
    assert config.twin_api is None
    twin = parse_config(_raw(twin_api={"cert": "tls.crt", "key": "tls.key"}), files).twin_api
    assert twin is not None and (twin.max_connections, twin.request_timeout_s) == (64, 30.0)
    twin = parse_config(_raw(twin_api={"cert": "tls.crt", "key": "tls.key", "max_connections": 1,
                                       "request_timeout_s": 2}), files).twin_api
    assert twin is not None and (twin.max_connections, twin.request_timeout_s) == (1, 2.0)
    assert config.state.workers == ()
    assert parse_config(_raw(state={"workers": ["w-0", "w-1"]}), files).state.workers == ("w-0", "w-1")


@pytest.mark.parametrize("sections, message", [
    ({"broker": {"port": 70000}}, "broker.port: must be an integer 1..65535 (got 70000)"),
    ({"broker": {"port": True}}, "broker.port: must be an integer 1..65535 (got True)"),
    ({"broker": {"group": "a/b"}}, "broker.group: must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63} (got 'a/b')"),
    ({"broker": {"ca": "missing.crt"}}, "broker.ca: must be an existing file (got 'missing.crt')"),
    ({"broker": {"prot": 1}}, "broker.prot: is not a known setting (got 1)"),
    ({"tsdb": {"remote_write_url": "tsdb:9090"}},
     "tsdb.remote_write_url: must be an http:// or https:// URL with a host (got 'tsdb:9090')"),
    ({"batch": {"max_delay_s": -1}}, "batch.max_delay_s: must be a number 0.0..60.0 (got -1)"),
    ({"metrics": {"port": "9100"}}, "metrics.port: must be an integer 0..65535 (got '9100')"),
    ({"twin_api": {"cert": "tls.crt"}}, "twin_api.key: is required (got None)"),
    ({"twin_api": {"cert": "tls.crt", "key": "tls.key", "max_connections": 0}},
     "twin_api.max_connections: must be an integer 1..4096 (got 0)"),
    ({"twin_api": {"cert": "tls.crt", "key": "tls.key", "max_connections": 5000}},
     "twin_api.max_connections: must be an integer 1..4096 (got 5000)"),
    ({"twin_api": {"cert": "tls.crt", "key": "tls.key", "request_timeout_s": 0}},
     "twin_api.request_timeout_s: must be a number 1.0..300.0 (got 0)"),
    ({"twin_api": {"cert": "tls.crt", "key": "tls.key", "request_timeout_s": float("inf")}},
     "twin_api.request_timeout_s: must be a number 1.0..300.0 (got inf)"),
    ({"extra": {}}, "extra: is not a known setting (got {})"),
    ({"state": {"workers": ["a", "a"]}}, "state.workers: must be a list of 1..1000 distinct client ids matching "
                                         "[A-Za-z0-9][A-Za-z0-9_.-]{0,63} (got ['a', 'a'])"),
    ({"state": {"workers": "a"}}, "state.workers: must be a list of 1..1000 distinct client ids matching "
                                  "[A-Za-z0-9][A-Za-z0-9_.-]{0,63} (got 'a')"),
])
def test_bad_values_name_field_value_and_allowed(files: Path, sections: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_raw(**sections), files)
    assert str(info.value) == message


def test_a_config_for_another_machine_is_checked_without_its_files(tmp_path: Path) -> None:
    # The infra program validates the pods' ingest.toml, whose certificates exist only in the pod.
    raw = _raw(broker={"ca": "/etc/ems/tls/ca.crt", "cert": "/etc/ems/tls/tls.crt", "key": "/etc/ems/tls/tls.key"})
    config = parse_config(raw, tmp_path, check_files=False)
    assert config.broker.key == Path("/etc/ems/tls/tls.key")
    with pytest.raises(ConfigError, match=r"^broker\.ca: must be an existing file \(got '/etc/ems/tls/ca\.crt'\)$"):
        parse_config(raw, tmp_path)
    del raw["broker"]["cert"]
    with pytest.raises(ConfigError, match=r"^broker\.cert: is required \(got None\)$"):
        parse_config(raw, tmp_path, check_files=False)


def test_missing_required_fields(files: Path) -> None:
    raw = _raw()
    del raw["broker"]["host"]
    with pytest.raises(ConfigError, match=r"^broker\.host: is required \(got None\)$"):
        parse_config(raw, files)
    raw = _raw()
    del raw["state"]
    with pytest.raises(ConfigError, match=r"^state: section is required \(got None\)$"):
        parse_config(raw, files)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=30)


def test_cli_reports_bad_config_in_one_line_with_exit_2(files: Path) -> None:
    path = files / "ingest.toml"
    path.write_text('[broker]\nhost = "h"\nca = "ca.crt"\ncert = "tls.crt"\nkey = "tls.key"\nport = 0\n'
                    '[tsdb]\nremote_write_url = "http://t:9090/api/v1/write"\n[state]\ndir = "s"\n')
    result = _cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr == "ems-ingest: broker.port: must be an integer 1..65535 (got 0)\n"
    path.write_text(path.read_text().replace("port = 0\n", ""))
    result = _cli("check-config", "--config", str(path))
    assert (result.returncode, result.stdout) == (0, f"{path}: ok\n")
    assert load_config(path).source_path == path


def test_cli_reports_unreadable_and_invalid_toml(files: Path) -> None:
    result = _cli("run", "--config", str(files / "nope.toml"))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"ems-ingest: config file: cannot be read (No such file or directory) "
                                     f"(got '{files / 'nope.toml'}')")
    bad = files / "bad.toml"
    bad.write_text("[broker\n")
    result = _cli("run", "--config", str(bad))
    assert result.returncode == 2 and "is not valid TOML" in result.stderr and "Traceback" not in result.stderr


def test_plain_mqtt_inside_the_namespace_needs_no_certificates(files: Path) -> None:
    config = parse_config({"broker": {"host": "mqtt", "tls": False}, "tsdb": _raw()["tsdb"],
                           "state": {"dir": "s"}}, files)
    assert (config.broker.tls, config.broker.port, config.broker.ca) == (False, 1883, None)
    with pytest.raises(ConfigError, match=r"^broker\.ca: must not be set when broker\.tls is false \(got 'ca\.crt'\)$"):
        parse_config(_raw(broker={"tls": False}), files)
    with pytest.raises(ConfigError, match=r"^broker\.tls: must be true or false \(got 'no'\)$"):
        parse_config(_raw(broker={"tls": "no"}), files)


def test_environment_overrides_or_replaces_the_file(files: Path) -> None:
    env = {"EMS_BROKER_HOST": "mqtt", "EMS_BROKER_PORT": "1883", "EMS_BROKER_TLS": "false",
           "EMS_REMOTE_WRITE_URL": "http://tsdb:9090/api/v1/write", "EMS_STATE_DIR": str(files / "state"),
           "EMS_METRICS_PORT": "9100"}
    config = load_config(None, env)
    assert (config.broker.host, config.broker.port, config.broker.tls) == ("mqtt", 1883, False)
    assert (config.tsdb.remote_write_url, config.state.dir) == ("http://tsdb:9090/api/v1/write", files / "state")
    with pytest.raises(ConfigError, match=r"^EMS_BROKER_PORT: must be an integer \(broker\.port\) \(got 'x'\)$"):
        load_config(None, {**env, "EMS_BROKER_PORT": "x"})
    with pytest.raises(ConfigError, match=r"^tsdb: section is required \(got None\)$"):
        load_config(None, {k: v for k, v in env.items() if k != "EMS_REMOTE_WRITE_URL"})
    path = files / "ingest.toml"
    path.write_text('[broker]\nhost = "file-host"\nca = "ca.crt"\ncert = "tls.crt"\nkey = "tls.key"\n'
                    '[tsdb]\nremote_write_url = "http://t:9090/api/v1/write"\n[state]\ndir = "s"\n')
    assert load_config(path, {}).broker.host == "file-host"
    assert load_config(path, {"EMS_BROKER_HOST": "env-host"}).broker.host == "env-host"


def test_cli_runs_from_environment_only(files: Path) -> None:
    env = {"EMS_BROKER_HOST": "mqtt", "EMS_BROKER_TLS": "false", "EMS_REMOTE_WRITE_URL": "http://t:9090/api/v1/write",
           "EMS_STATE_DIR": str(files / "state")}
    result = subprocess.run([sys.executable, "-m", "ingest.cli", "check-config"], cwd=REPO, capture_output=True,
                            text=True, timeout=30, env={**os.environ, **env})
    assert (result.returncode, result.stdout) == (0, "environment: ok\n"), result.stderr


def test_the_documented_example_config_is_valid(tmp_path: Path) -> None:
    text = (REPO / "docs" / "ingest.md").read_text()
    example = text.split("## Configuration\n\n```toml\n", 1)[1].split("```", 1)[0]
    for name in ("ca.crt", "tls.crt", "tls.key", "api.crt", "api.key"):
        (tmp_path / name).write_text("pem")
    path = tmp_path / "ingest.toml"
    path.write_text(example.replace("/etc/ems/tls/", f"{tmp_path}/"))
    config = load_config(path, {})
    assert config.broker.client_id == "ems-ingest-0" and config.twin_api is not None
    assert config.twin_api.client_ca == tmp_path / "ca.crt" and config.twin_api.client_cns == ("ems-api-gateway",)


def test_a_worker_must_be_one_of_its_group(files: Path) -> None:
    path = files / "ingest.toml"
    path.write_text('[broker]\nhost = "127.0.0.1"\nca = "ca.crt"\ncert = "tls.crt"\nkey = "tls.key"\nclient_id = "w-9"\n'
                    '[tsdb]\nremote_write_url = "http://127.0.0.1:9/api/v1/write"\n'
                    f'[state]\ndir = "{files / "state"}"\nworkers = ["w-0", "w-1"]\n')
    result = _cli("run", "--config", str(path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.endswith("ems-ingest: state.workers: must include this worker's client_id 'w-9' "
                                  "(got ['w-0', 'w-1'])\n")


@pytest.mark.parametrize(("twin", "message"), [
    ({"client_cns": ["ems-api-gateway"]}, r"^twin_api\.client_cns: needs twin_api\.client_ca .*\(got \['ems-api-gateway'\]\)$"),
    ({"client_ca": "ca.crt", "client_cns": []}, r"^twin_api\.client_cns: must be a list of 1\.\.16 distinct"),
    ({"client_ca": "ca.crt", "client_cns": ["a", "a"]}, r"^twin_api\.client_cns: must be a list of 1\.\.16 distinct"),
    ({"client_ca": "ca.crt", "client_cns": "ems-api-gateway"}, r"^twin_api\.client_cns: must be a list"),
    ({"client_ca": "ca.crt", "client_cns": ["x" * 65]}, r"^twin_api\.client_cns\[0\]: must be a list"),
    ({"client_ca": "ca.crt", "client_cns": ["ok", "bad\nname"]}, r"^twin_api\.client_cns\[1\]: must be a list"),
])
def test_client_cns_are_checked(twin: dict, message: str) -> None:
    raw = _raw(twin_api={"cert": "api.crt", "key": "api.key", **twin})
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, Path("."), check_files=False)
