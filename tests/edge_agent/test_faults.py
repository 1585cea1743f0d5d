"""PLC fault codes: the sensors.conf map (hostile input), the twin's active fault, the simulator's E04."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient

from edge_agent.config import load_config
from edge_agent.errors import ConfigError
from edge_agent.faults import MAX_FAULTS, FaultCode, active_fault, parse_faults
from edge_agent.simulator import Simulator
from edge_agent.twin import TwinStore
from ems_contract.telemetry import Reading
from tests.edge_agent.test_config import BASE, error_of, write
from tests.edge_agent.test_config import folder as folder  # noqa: F401 - the fixture, used by name
from tests.hostile_toml import MAX_MESSAGE

FAULT_POINT = """
[[devices.points]]
id = "RELAY_FAULT"
asset = "relay1"
name = "fault_code"
address = 10
type = "{type}"
[devices.points.faults]
{faults}
"""
E04 = '4 = { code = "E04", text = "over-voltage", severity = "critical" }'


def config_with(faults: str, type_: str = "uint16") -> str:
    return BASE + FAULT_POINT.format(type=type_, faults=faults)


def test_a_fault_map_is_read_into_the_point(folder: Path) -> None:
    cfg = load_config(write(folder, config_with(E04 + '\n7 = { code = "E07", text = "cooling fan" }')))
    point = cfg.point("RELAY_FAULT")
    assert point.faults == (FaultCode(4, "E04", "critical", "over-voltage"), FaultCode(7, "E07", "warning", "cooling fan"))


@pytest.mark.parametrize("faults,type_,expected", [
    (E04, "float32",
     "devices[0].points[1].faults: 'float32' needs an integer point type (int16, uint16, int32, uint32): "
     "fault codes are register values"),
    ('-4 = { code = "E04", text = "x" }', "int16",
     "devices[0].points[1].faults.-4: '-4' must be a register value: a non-negative integer without sign or "
     "leading zeros, e.g. 4"),
    ('04 = { code = "E04", text = "x" }', "uint16",
     "devices[0].points[1].faults.04: '04' must be a register value: a non-negative integer without sign or "
     "leading zeros, e.g. 4"),
    ('70000 = { code = "E04", text = "x" }', "uint16",
     "devices[0].points[1].faults.70000: 70000 is outside what the point's type holds (0..65535)"),
    ('4 = "E04 over-voltage"', "uint16",
     "devices[0].points[1].faults.4: 'E04 over-voltage' must be a table { code = \"E04\", text = \"over-voltage\", "
     "severity = \"critical\" }"),
    ('4 = { code = "E 04", text = "x" }', "uint16",
     "devices[0].points[1].faults.4.code: 'E 04' must be 1..16 characters of letters, digits, '_', '.', '-' "
     "starting with a letter or digit"),
    ('4 = { code = "E04", text = "over\\"voltage" }', "uint16",
     "devices[0].points[1].faults.4.text: 'over\"voltage' must be 1..80 printable characters without quotes, "
     "backslashes, braces or surrounding spaces"),
    ('4 = { code = "E04", text = "x", severity = "fatal" }', "uint16",
     "devices[0].points[1].faults.4.severity: 'fatal' must be one of critical, warning, info"),
    ('4 = { code = "E04", text = "x", colour = "red" }', "uint16",
     "devices[0].points[1].faults.4.colour: 'red' is an unknown key; allowed: code, severity, text"),
    ('4 = { code = "E04", text = "a" }\n5 = { code = "E04", text = "b" }', "uint16",
     "devices[0].points[1].faults.5.code: 'E04' is used by two register values; codes must be unique"),
])
def test_a_bad_fault_map_gives_one_exact_line(folder: Path, faults: str, type_: str, expected: str) -> None:
    assert error_of(folder, config_with(faults, type_)) == expected


def test_an_empty_or_huge_fault_map_is_refused() -> None:
    with pytest.raises(ConfigError, match="must map at least one register value"):
        parse_faults("p.faults", {}, (0, 65535))
    huge = {str(n): {"code": f"E{n}", "text": "t"} for n in range(MAX_FAULTS + 1)}
    with pytest.raises(ConfigError, match=f"'{MAX_FAULTS + 1} entries' must have at most {MAX_FAULTS} entries"):
        parse_faults("p.faults", huge, (0, 65535))


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=200),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4),
                     max_leaves=30)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.dictionaries(st.text(max_size=24), _json, max_size=6) | _json)
def test_any_fault_map_gives_faults_or_one_bounded_config_error(raw: object) -> None:
    try:
        faults = parse_faults("devices[0].points[0].faults", raw, (0, 65535))
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) <= MAX_MESSAGE
        return
    for fault in faults:                                 # what it accepted is safe as a label value and alert text
        assert 0 <= fault.value <= 65535 and fault.severity in ("critical", "warning", "info")
        assert not set('"\\{}\n') & set(fault.code + fault.text)


def test_only_a_good_exact_mapped_value_is_an_active_fault() -> None:
    faults = (FaultCode(4, "E04", "critical", "over-voltage"),)
    assert active_fault(faults, 4.0, "good") == faults[0]
    for value, quality in ((0.0, "good"), (5.0, "good"), (4.5, "good"), (4.0, "device_error"), (None, "stale"),
                           (float("nan"), "good")):
        assert active_fault(faults, value, quality) is None


def _r(value: float | None, ts_ms: int, quality: str = "good") -> Reading:
    return Reading(seq=0, ts_ms=ts_ms, asset="relay1", point="fault_code", value=value, unit="", quality=quality)


def test_the_twin_shows_the_active_fault_since_it_began_and_drops_it_when_cleared(tmp_path: Path) -> None:
    faults = (FaultCode(4, "E04", "critical", "over-voltage"),)
    twin = TwinStore(tmp_path / "twin.json", site="s1", fault_points={("relay1", "fault_code"): faults})
    twin.update(_r(0.0, 1000))
    assert "fault" not in twin.state("relay1")["fault_code"]
    twin.update(_r(4.0, 2000))
    twin.update(_r(4.0, 3000))                                          # still E04: since stays at the first
    body = json.loads(twin.payload("relay1"))
    assert body["points"]["fault_code"]["fault"] == {"code": "E04", "text": "over-voltage", "severity": "critical",
                                                     "since_ms": 2000}
    twin.save()
    again = TwinStore(tmp_path / "twin.json", site="s1", fault_points={("relay1", "fault_code"): faults})
    again.load()                                                        # the active fault survives a restart
    assert again.state("relay1")["fault_code"]["fault"]["since_ms"] == 2000
    twin.update(_r(0.0, 4000))
    assert "fault" not in json.loads(twin.payload("relay1"))["points"]["fault_code"]


def test_the_simulator_raises_e04_on_the_example_relay_and_clears_it() -> None:
    async def scenario() -> list[int]:
        async with Simulator.default(port=0) as sim:
            client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=2, retries=0, reconnect_delay=0)
            assert await client.connect()
            seen = []
            try:
                seen.append((await client.read_holding_registers(20, count=1, device_id=1)).registers[0])
                sim.raise_fault("tx1", "relay_fault", "E04")
                seen.append((await client.read_holding_registers(20, count=1, device_id=1)).registers[0])
                sim.clear_fault("tx1", "relay_fault")
                seen.append((await client.read_holding_registers(20, count=1, device_id=1)).registers[0])
            finally:
                client.close()
            with pytest.raises(ValueError, match="has no fault code 'E99'"):
                sim.raise_fault("tx1", "relay_fault", "E99")
            return seen

    assert asyncio.run(scenario()) == [0, 4, 0]
