"""The listener limits of the twin API and the north-bound command listener, from stack config to the rendered
service configs: written only when a stack sets them (so existing stacks' pods do not roll), and read back by the
services' own parsers as given."""

from __future__ import annotations

import json
import tomllib

import pytest

from infra_mocks import Evaluation, evaluate_stack, stack_config

from components.settings import SettingsError, parse_settings
from ingest.config import parse_config as parse_ingest_config

STACK = "private-dc1"          # it deploys both: the twin API everywhere, the north-bound client where configured


def _config_text(ev: Evaluation, config_map: str, key: str) -> str:
    [cm] = [c for c in ev.of_type("kubernetes:core/v1:ConfigMap") if c.inputs["metadata"]["name"] == config_map]
    return cm.inputs["data"][key]


def _limits(ev: Evaluation) -> tuple[tuple[int, float], dict]:
    """(the twin API's (max_connections, request_timeout_s) as the ingest parses them, the north-bound [operator_api])."""
    twin = parse_ingest_config(tomllib.loads(_config_text(ev, "twin-api-config", "ingest.toml")), check_files=False)
    assert twin.twin_api is not None
    operator_api = tomllib.loads(_config_text(ev, "northbound-config", "northbound.toml"))["operator_api"]
    return (twin.twin_api.max_connections, twin.twin_api.request_timeout_s), operator_api


def _settings_error(overrides: dict[str, str]) -> str:
    """The SettingsError of the stack's own config with ``overrides`` (only its ems: keys)."""
    raw = {k: v for k, v in stack_config(STACK).items() if k.startswith("ems:")}
    with pytest.raises(SettingsError) as info:
        parse_settings({**raw, **overrides}, STACK)
    return str(info.value)


def test_unset_limits_are_not_written_and_the_services_keep_their_defaults() -> None:
    twin, operator_api = _limits(evaluate_stack(STACK))
    assert twin == (64, 30.0)
    assert "max_connections" not in operator_api and "request_timeout_s" not in operator_api


def test_stack_limits_reach_both_listeners() -> None:
    northbound = {**json.loads(stack_config(STACK)["ems:northbound"]),
                  "operatorApiMaxConnections": 8, "operatorApiRequestTimeoutSeconds": 4}
    twin, operator_api = _limits(evaluate_stack(STACK, {
        "ems:twinApiMaxConnections": "16", "ems:twinApiRequestTimeoutSeconds": "5", "ems:northbound": northbound}))
    assert twin == (16, 5.0)
    assert (operator_api["max_connections"], operator_api["request_timeout_s"]) == (8, 4)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("ems:twinApiMaxConnections", "0", "ems:twinApiMaxConnections: 0 must be at least 1"),
    ("ems:twinApiMaxConnections", "4097", "ems:twinApiMaxConnections: 4097 must be at most 4096"),
    ("ems:twinApiRequestTimeoutSeconds", "1.5", "ems:twinApiRequestTimeoutSeconds: 1.5 must be an integer"),
    ("ems:twinApiRequestTimeoutSeconds", "301", "ems:twinApiRequestTimeoutSeconds: 301 must be at most 300"),
])
def test_bad_stack_limits_name_the_key_and_value(key: str, value: str, message: str) -> None:
    assert _settings_error({key: value}) == message


def test_bad_operator_api_limits_name_the_northbound_field() -> None:
    northbound = {**json.loads(stack_config(STACK)["ems:northbound"]), "operatorApiMaxConnections": 0}
    assert _settings_error({"ems:northbound": json.dumps(northbound)}) == \
        "ems:northbound.operatorApiMaxConnections: 0 must be at least 1"
