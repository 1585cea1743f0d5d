"""Any edit of a full north-bound config gives a config or one bounded ConfigError line, never another exception."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from devenv.pki import CertPair, LocalPki
from northbound.config import ConfigError, load_config
from tests.hostile_toml import MAX_MESSAGE, mutate, toml_document

PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture
def base(pki: LocalPki, aggregator: CertPair) -> dict:
    """A full config: every section, a site with a PIN and a DER, a broker, two mirrored points."""
    broker = pki.client("ems-northbound-mqtt")
    return {
        "server": {"url": "https://127.0.0.1:8443", "ca": str(pki.ca), "dcap": "/dcap", "timeout_s": 10,
                   "allow_tls13": False},
        "client": {"cert": str(aggregator.cert), "key": str(aggregator.key)},
        "polling": {"max_poll_s": 900, "default_post_s": 300, "backoff_initial_s": 1.0, "backoff_max_s": 300.0,
                    "command_ttl_s": 300},
        "readings": {"twin_api": "https://twin.ems.svc:8443", "ca": str(pki.ca)},
        "http": {"host": "0.0.0.0", "port": 9110},
        "broker": {"host": "broker.ems.svc", "port": 8883, "ca": str(pki.ca), "cert": str(broker.cert),
                   "key": str(broker.key), "client_id": "ems-northbound", "publish_timeout_s": 5.0},
        "sites": {"sub-07": {"pin": 111115, "der": {"type": 4, "rated_w": 5000, "max_w": 4000,
                                                    "connected_point": "inv1/connected"}},
                  "sub-08": {}},
        "mirror": [{"site": "sub-07", "asset": "meter1", "point": "p_total", "reading": "active_power"},
                   {"site": "sub-08", "asset": "meter1", "point": "v", "reading": "voltage", "multiplier": -1}],
    }


@PROPERTY
@given(data=st.data())
def test_any_edit_of_a_full_config_gives_a_config_or_a_config_error(tmp_path: Path, base: dict,
                                                                    data: st.DataObject) -> None:
    path = tmp_path / "nb.toml"
    path.write_text(toml_document(mutate(data, base)))
    try:
        load_config(path)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) <= MAX_MESSAGE, message
        event("refused")
        return
    event("accepted")


def test_the_unedited_base_is_accepted(tmp_path: Path, base: dict) -> None:
    path = tmp_path / "nb.toml"
    path.write_text(toml_document(base))
    config = load_config(path)
    assert [s.site for s in config.sites] == ["sub-07", "sub-08"] and len(config.mirror) == 2


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["mirror"][0].update(reading=["voltage"]), "mirror[0].reading must be a non-empty string"),
    (lambda d: d["mirror"][0].update(site={"a": 1}), "mirror[0].site must be a non-empty string"),
    (lambda d: d["sites"]["sub-08"].update(lfdi=12), "sites.sub-08.lfdi must be exactly 40 hex digits (got 12)"),
    (lambda d: d["sites"]["sub-07"]["der"].update(connected_point=["inv1", "c"]),
     "sites.sub-07.der.connected_point must be \"<asset>/<point>\""),
    (lambda d: d.update(sites={"sub-07": "x"}), "sites.sub-07 must be a table (got 'x')"),
    (lambda d: d.update(mirror={"site": "sub-07"}), "mirror must be an array of tables"),
])
def test_values_of_the_wrong_type_are_config_errors(tmp_path: Path, base: dict, edit, message: str) -> None:
    edit(base)
    path = tmp_path / "nb.toml"
    path.write_text(toml_document(base))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(message), str(info.value)


def test_a_url_that_urlsplit_refuses_is_a_config_error(tmp_path: Path, base: dict) -> None:
    base["server"]["url"] = "https://[::1"            # an unclosed IPv6 bracket: urlsplit raised ValueError
    path = tmp_path / "nb.toml"
    path.write_text(toml_document(base))
    with pytest.raises(ConfigError, match=r"^server\.url must be an https:// URL \(scheme https, a host, no query\) "
                                          r"\(got 'https://\[::1'\)$"):
        load_config(path)
