"""The north-bound config: one-line errors naming field and value, as a new user meets them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devenv.pki import CertPair, LocalPki
from ems_contract.config_file import HOST_RULE
from northbound.cli import main
from northbound.config import ConfigError, load_config
from northbound.identity import identity_from_certificate, parse_sfdi
from tests.northbound.nb_helpers import write_config


def test_valid_config(tmp_path: Path, pki: LocalPki, aggregator: CertPair) -> None:
    config = load_config(write_config(tmp_path / "nb.toml", pki, aggregator))
    own = identity_from_certificate(aggregator.cert.read_bytes())
    assert (config.client.lfdi, config.client.sfdi) == (own.lfdi, own.sfdi)
    assert [s.site for s in config.sites] == ["sub-07", "sub-08"]
    a, b = config.sites
    assert a.lfdi != b.lfdi and own.lfdi not in (a.lfdi, b.lfdi) and parse_sfdi(a.sfdi) == a.sfdi
    assert a.pin == 111115 and config.mirror[0].multiplier == 0 and config.server.dcap == "/dcap"
    # Derived LFDIs are stable across loads.
    assert load_config(tmp_path / "nb.toml").sites == config.sites


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"url": "http://127.0.0.1:8443"}, "server.url must be an https:// URL (scheme https, a host, no query) "
                                       "(got 'http://127.0.0.1:8443')"),
    ({"mirror": '[[mirror]]\nsite = "sub-99"\nasset = "m"\npoint = "p"\nreading = "active_power"\n'},
     "mirror[0].site is not a configured site (sub-07, sub-08) (got 'sub-99')"),
    ({"mirror": '[[mirror]]\nsite = "sub-07"\nasset = "m"\npoint = "p"\n'},
     "mirror[0].reading is required (got None)"),
    ({"mirror": '[[mirror]]\nsite = "sub-07"\nasset = "m"\npoint = "p"\nreading = "temperature"\n'},
     "mirror[0].reading must name a ReadingType mapping"),
    ({"mirror": '[[mirror]]\nsite = "sub-07"\nasset = "m"\npoint = "p"\nreading = "voltage"\nmultiplier = 12\n'},
     "mirror[0].multiplier must be an integer -9..9 (got 12)"),
    ({"extra": 'lfdi = "12345"'}, "sites.sub-08.lfdi must be exactly 40 hex digits (got '12345')"),
    ({"extra": "colour = 1"}, "sites.sub-08.colour is not a known setting (got 1)"),
    ({"extra": "[sites.sub-08.der]\ntype = 4\n"}, "sites.sub-08.der.rated_w is required (got None)"),
    ({"extra": "[sites.sub-08.der]\ntype = 7\nrated_w = 5000\n"}, "sites.sub-08.der.type must be a 2030.5 DERType"),
    ({"extra": "[sites.sub-08.der]\nrated_w = 5000\nmax_w = 6000\n"},
     "sites.sub-08.der.max_w must be a number 1.0..5000.0 (got 6000)"),
    ({"extra": "[sites.sub-08.der]\nrated_w = 5000\nconnected_point = \"inv1\"\n"},
     "sites.sub-08.der.connected_point must be \"<asset>/<point>\" (got 'inv1')"),
    ({"extra": "pin = 1234567"}, "sites.sub-08.pin must be an integer 0..999999 (got 1234567)"),
])
def test_config_errors(tmp_path: Path, pki: LocalPki, aggregator: CertPair, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path / "nb.toml", pki, aggregator, **kwargs))
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_missing_certificate(tmp_path: Path, pki: LocalPki, aggregator: CertPair) -> None:
    missing = CertPair(tmp_path / "nope.crt", aggregator.key)
    with pytest.raises(ConfigError, match=r"^client.cert must be an existing file \(got '/"):
        load_config(write_config(tmp_path / "nb.toml", pki, missing))


def test_check_config_command(tmp_path: Path, pki: LocalPki, aggregator: CertPair,
                              capsys: pytest.CaptureFixture[str]) -> None:
    good = write_config(tmp_path / "nb.toml", pki, aggregator)
    assert main(["check-config", "--config", str(good)]) == 0
    assert "site sub-07: lfdi" in capsys.readouterr().out
    bad = write_config(tmp_path / "bad.toml", pki, aggregator, url="ftp://x")
    assert main(["check-config", "--config", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == ("ems-northbound: server.url must be an https:// URL "
                                               "(scheme https, a host, no query) (got 'ftp://x')")


def _with_broker(path: Path, body: str) -> Path:
    text = path.read_text()
    path.write_text(text.replace("[sites.sub-07]", f"[broker]\n{body}\n[sites.sub-07]", 1))
    return path


def test_broker_section(tmp_path: Path, pki: LocalPki, aggregator: CertPair,
                        capsys: pytest.CaptureFixture[str]) -> None:
    pair = pki.client("ems-northbound-mqtt")
    path = _with_broker(write_config(tmp_path / "nb.toml", pki, aggregator),
                        f'host = "broker.ems.svc"\nca = "{pki.ca}"\ncert = "{pair.cert}"\nkey = "{pair.key}"\n')
    broker = load_config(path).broker
    assert broker is not None and (broker.port, broker.client_id, broker.publish_timeout_s) == (8883, "ems-northbound", 5.0)
    assert broker.no_subscriber_retry_max_s == 5.0
    assert main(["check-config", "--config", str(path)]) == 0
    assert "commands to mqtts://broker.ems.svc:8883 as ems-northbound" in capsys.readouterr().out
    assert load_config(write_config(tmp_path / "plain.toml", pki, aggregator)).broker is None


@pytest.mark.parametrize(("body", "message"), [
    ('ca = "CA"\ncert = "CERT"\nkey = "KEY"\n', "broker.host is required (got None)"),
    ('host = "broker ems"\nca = "CA"\ncert = "CERT"\nkey = "KEY"\n', f"broker.host {HOST_RULE} (got 'broker ems')"),
    ('host = "b"\nport = 0\nca = "CA"\ncert = "CERT"\nkey = "KEY"\n', "broker.port must be an integer 1..65535 (got 0)"),
    ('host = "b"\nca = "CA"\nkey = "KEY"\n', "broker.cert is required (got None)"),
    ('host = "b"\nca = "CA"\ncert = "/nope.crt"\nkey = "KEY"\n', "broker.cert must be an existing file "
                                                                  "(got '/nope.crt')"),
    ('host = "b"\nca = "CA"\ncert = "CERT"\nkey = "OTHERKEY"\n', "broker.cert "),
    ('host = "b"\nca = "CERT"\ncert = "CERT"\nkey = "KEY"\npublish_timeout_s = 0\n',
     "broker.publish_timeout_s must be a number 0.1..60.0 (got 0)"),
    ('host = "b"\nca = "CERT"\ncert = "CERT"\nkey = "KEY"\nno_subscriber_retry_max_s = 301\n',
     "broker.no_subscriber_retry_max_s must be a number 0.1..300.0 (got 301)"),
    ('host = "b"\nca = "CA"\ncert = "CERT"\nkey = "KEY"\nclient_id = "a b"\n',
     "broker.client_id must be 1-64 characters of [A-Za-z0-9_.-] (got 'a b')"),
    ('host = "b"\nca = "CA"\ncert = "CERT"\nkey = "KEY"\nuser = "x"\n', "broker.user is not a known setting"),
])
def test_broker_errors(tmp_path: Path, pki: LocalPki, aggregator: CertPair, body: str, message: str) -> None:
    pair, other = pki.client("ems-northbound-mqtt"), pki.client("someone-else")
    body = (body.replace('"CA"', f'"{pki.ca}"').replace('"CERT"', f'"{pair.cert}"').replace('"KEY"', f'"{pair.key}"')
            .replace('"OTHERKEY"', f'"{other.key}"'))
    with pytest.raises(ConfigError) as info:
        load_config(_with_broker(write_config(tmp_path / "nb.toml", pki, aggregator), body))
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value) and "PRIVATE" not in str(info.value)


def test_a_fifo_or_an_oversized_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "nb.toml"
    os.mkfifo(fifo)                            # nobody writes: a plain read would block for ever
    with pytest.raises(ConfigError, match=r"^config file is a FIFO \(named pipe\); a regular file is needed \(got '.*nb\.toml'\)$"):
        load_config(fifo)
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (2 * 1024 * 1024) + "\n")
    with pytest.raises(ConfigError, match=r"^config file is larger than 1048576 bytes \(1 MiB\), the most a config "
                                          r"file may be \(got '.*big\.toml'\)$"):
        load_config(big)


def test_a_huge_value_is_quoted_shortened_on_one_line(tmp_path: Path, pki: LocalPki, aggregator: CertPair) -> None:
    path = write_config(tmp_path / "nb.toml", pki, aggregator)
    path.write_text(path.read_text().replace("[server]\n", '[server]\ndcap = "' + "d" * 500_000 + '"\n', 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith("server.dcap must be a non-empty string of at most 1024 printable characters (got 'ddd")
    assert message.endswith("… (500000 characters))") and len(message) < 200 and "\n" not in message


def test_a_file_path_with_a_nul_is_a_config_error(tmp_path: Path, pki: LocalPki, aggregator: CertPair) -> None:
    missing = CertPair(Path("nope\\u0000.crt"), aggregator.key)      # TOML's escape: the path holds a NUL
    with pytest.raises(ConfigError, match=r"^client.cert must be a file path of 1..4096 printable characters"):
        load_config(write_config(tmp_path / "nb.toml", pki, missing))


def _operator_config(tmp_path: Path, pki: LocalPki, aggregator: CertPair, operator_api: str) -> Path:
    path = write_config(tmp_path / "nb.toml", pki, aggregator)
    broker = f'[broker]\nhost = "127.0.0.1"\nca = "{pki.ca}"\ncert = "{aggregator.cert}"\nkey = "{aggregator.key}"\n'
    path.write_text(path.read_text().replace("[sites.sub-07]", f"{broker}\n[operator_api]\n{operator_api}\n[sites.sub-07]"))
    return path


def test_the_operator_api_serves_mtls_to_the_listed_cns(tmp_path: Path, pki: LocalPki, aggregator: CertPair) -> None:
    tls = (f'cert = "{pki.server.cert}"\nkey = "{pki.server.key}"\nclient_ca = "{pki.ca}"\n'
           f'client_cns = ["ems-api-gateway"]\n')
    config = load_config(_operator_config(tmp_path, pki, aggregator, tls)).operator_api
    assert config is not None
    assert (config.cert, config.key, config.client_ca, config.client_cns, config.cert_check_s) == \
        (pki.server.cert, pki.server.key, pki.ca, ("ems-api-gateway",), 5.0)
    assert (config.max_connections, config.request_timeout_s) == (32, 10.0)      # the listener's defaults
    limits = load_config(_operator_config(tmp_path, pki, aggregator, tls + "max_connections = 4096\n"
                                          "request_timeout_s = 2\n")).operator_api
    assert limits is not None and (limits.max_connections, limits.request_timeout_s) == (4096, 2.0)


@pytest.mark.parametrize(("drop", "message"), [
    ("cert", r"^operator_api\.cert is required \(got None\)$"),
    ("key", r"^operator_api\.key is required \(got None\)$"),
    ("client_ca", r"^operator_api\.client_ca is required \(got None\)$"),
    ("client_cns", r"^operator_api\.client_cns is required \(got None\)$"),
])
def test_the_operator_api_has_no_plain_http(tmp_path: Path, pki: LocalPki, aggregator: CertPair, drop: str,
                                            message: str) -> None:
    settings = {"cert": f'"{pki.server.cert}"', "key": f'"{pki.server.key}"', "client_ca": f'"{pki.ca}"',
                "client_cns": '["ems-api-gateway"]'}
    del settings[drop]
    text = "".join(f"{k} = {v}\n" for k, v in settings.items())
    with pytest.raises(ConfigError, match=message):
        load_config(_operator_config(tmp_path, pki, aggregator, text))


@pytest.mark.parametrize(("override", "message"), [
    ({"client_cns": "[]"}, r"^operator_api\.client_cns must be a list of 1\.\.16 distinct certificate CNs"),
    ({"client_cns": '["ok", "bad\\nname"]'}, r"^operator_api\.client_cns\[1\] must be a list"),
    ({"key": "KEY_OF_ANOTHER"}, r"^operator_api\.cert and operator_api\.key '.*' are not a readable, matching PEM "
                                r"certificate and key \(.+\) \(got '.*'\)$"),
    ({"client_ca": "NOT_A_CA"}, r"^operator_api\.client_ca is not a readable PEM CA certificate \(.+\) \(got '.*'\)$"),
    ({"cert_check_s": "-1"}, r"^operator_api\.cert_check_s must be a number 0\.0\.\.3600\.0 \(got -1\)$"),
    ({"max_connections": "0"}, r"^operator_api\.max_connections must be an integer 1\.\.4096 \(got 0\)$"),
    ({"max_connections": "4097"}, r"^operator_api\.max_connections must be an integer 1\.\.4096 \(got 4097\)$"),
    ({"max_connections": "2.5"}, r"^operator_api\.max_connections must be an integer 1\.\.4096 \(got 2\.5\)$"),
    ({"max_connections": '"32"'}, r"^operator_api\.max_connections must be an integer 1\.\.4096 \(got '32'\)$"),
    ({"request_timeout_s": "0.5"}, r"^operator_api\.request_timeout_s must be a number 1\.0\.\.300\.0 \(got 0\.5\)$"),
    ({"request_timeout_s": "nan"}, r"^operator_api\.request_timeout_s must be a number 1\.0\.\.300\.0 \(got nan\)$"),
    ({"request_timeout_s": "true"}, r"^operator_api\.request_timeout_s must be a number 1\.0\.\.300\.0 \(got True\)$"),
])
def test_operator_api_tls_errors_name_the_field(tmp_path: Path, pki: LocalPki, aggregator: CertPair,
                                                override: dict[str, str], message: str) -> None:
    (tmp_path / "not-a-ca.pem").write_text("not a certificate\n")
    files = {"KEY_OF_ANOTHER": f'"{aggregator.key}"', "NOT_A_CA": f'"{tmp_path / "not-a-ca.pem"}"'}
    settings = {"cert": f'"{pki.server.cert}"', "key": f'"{pki.server.key}"', "client_ca": f'"{pki.ca}"',
                "client_cns": '["ems-api-gateway"]'}
    settings.update({k: files.get(v, v) for k, v in override.items()})
    with pytest.raises(ConfigError, match=message):
        load_config(_operator_config(tmp_path, pki, aggregator, "".join(f"{k} = {v}\n" for k, v in settings.items())))
