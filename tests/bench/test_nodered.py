"""The Node-RED side of the edge rig: the flow it is given and how its messages are counted."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from bench.nodered import TOPIC, NodeRedSubscriber, nodered_flow
from bench.rig import RigError, clock_latency_ms


def _flow(units: int = 3, registers: int = 100, interval_s: float = 0.01) -> list[dict]:
    return nodered_flow(units=units, registers=registers, interval_s=interval_s, modbus_port=5020,
                        broker_port=8883, ca=Path("/p/ca.crt"), cert=Path("/p/c.crt"), key=Path("/p/c.key"))


def test_each_unit_has_its_own_connection_a_read_of_every_register_and_a_qos1_publish() -> None:
    nodes = {n["id"]: n for n in _flow(units=3, registers=100, interval_s=0.01)}
    reads = [n for n in nodes.values() if n["type"] == "modbus-read"]
    assert sorted(int(n["unitid"]) for n in reads) == [1, 2, 3]
    clients = {n["server"] for n in reads}
    assert len(clients) == 3                                    # one TCP connection per unit, as the agent
    for read in reads:
        client = nodes[read["server"]]
        assert (client["type"], client["tcpPort"], client["unit_id"]) == ("modbus-client", "5020", read["unitid"])
        assert (read["dataType"], read["adr"], read["quantity"], read["rate"], read["rateUnit"]) == \
            ("HoldingRegister", "0", "100", "10", "ms")
        (out,) = read["wires"][0]
        publish = nodes[out]
        assert (publish["type"], publish["qos"], publish["topic"]) == ("mqtt out", "1", f"{TOPIC}/{read['unitid']}")
        broker = nodes[publish["broker"]]
        assert broker["usetls"] and broker["port"] == "8883"
        tls = nodes[broker["tls"]]
        assert (tls["ca"], tls["cert"], tls["key"], tls["verifyservercert"]) == ("/p/ca.crt", "/p/c.crt", "/p/c.key", True)


def test_a_100ms_interval_is_a_100ms_rate() -> None:
    assert {n["rate"] for n in _flow(interval_s=0.1) if n["type"] == "modbus-read"} == {"100"}


def _subscriber(messages: list[tuple[float, str, bytes]]) -> NodeRedSubscriber:
    sub = NodeRedSubscriber.__new__(NodeRedSubscriber)      # no broker: only the counting is under test
    sub._lock = threading.Lock()
    sub._messages = messages
    return sub


def test_a_read_of_r_registers_counts_r_minus_1_readings_and_its_clock_gives_the_latency() -> None:
    clock_ms = 1_700_000_123
    values = [clock_ms // 65536 % 65536, clock_ms % 65536] + list(range(98))
    arrived = (clock_ms + 7) / 1000
    window = _subscriber([(arrived, f"{TOPIC}/1", json.dumps(values).encode()),
                          (arrived + 5, f"{TOPIC}/2", json.dumps(values).encode())]).window(0, arrived + 1)
    assert window.readings == 99 and window.messages == 1     # the second arrived after the window
    assert window.latencies_ms == [clock_latency_ms(arrived, values[0] * 65536 + values[1])]
    assert window.latencies_ms[0] == pytest.approx(7, abs=1)


@pytest.mark.parametrize("payload", [b'{"a": 1}', b"[1, 2]", b'[1, 2, "x"]', b"[1.5, 2, 3]"])
def test_anything_but_the_reads_register_values_fails_the_rig(payload: bytes) -> None:
    with pytest.raises(RigError, match="not the read's register values"):
        _subscriber([(1.0, f"{TOPIC}/1", payload)]).window()
