"""The Node-RED side of the edge rig: the flow it is given and how its messages are counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.nodered import TOPIC, nodered_flow, nodered_window
from bench.rig import RigError, publish_bytes
from edge_agent.decode import encode_registers


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


def _read(clock_ms: int, registers: int = 100) -> bytes:
    """One read's payload as Node-RED publishes it: the clock as the simulator encodes it, then values."""
    return json.dumps(encode_registers(clock_ms, "uint32") + [(7 * i) % 65536 for i in range(registers - 2)]).encode()


def test_a_read_of_r_registers_counts_r_minus_1_readings_and_its_clock_gives_the_latency() -> None:
    clock_ms = 1_700_000_123
    arrived = (clock_ms + 7) / 1000
    messages = [(arrived, f"{TOPIC}/1", _read(clock_ms)), (arrived + 0.001, f"{TOPIC}/2", _read(clock_ms + 1)),
                (arrived + 5, f"{TOPIC}/3", _read(clock_ms))]
    window = nodered_window(messages, 0, arrived + 1, registers=100)
    assert (window.readings, window.messages) == (2 * 99, 2)    # the third arrived after the window
    assert window.latencies_ms == [pytest.approx(7, abs=1)] * 2
    assert window.wire_bytes == sum(publish_bytes(t, p) for _, t, p in messages[:2])


def test_a_redelivered_message_counts_once() -> None:
    payload = _read(1_000_000)
    window = nodered_window([(1.0, f"{TOPIC}/1", payload), (1.2, f"{TOPIC}/1", payload),
                             (1.3, f"{TOPIC}/2", payload)], 0, 2, registers=100)
    assert (window.readings, window.messages) == (2 * 99, 2)


@pytest.mark.parametrize("payload", [b'{"a": 1}', b"[1, 2]", b'[1, 2, "x"]', b"[1.5, 2, 3]", b"[1, 2, 3, 4]",
                                     b"[1, 2, 70000]", b"[true, 2, 3]", b"not json", b"\xff"])
def test_anything_but_the_reads_register_values_fails_the_rig(payload: bytes) -> None:
    with pytest.raises(RigError, match="Node-RED published"):
        nodered_window([(1.0, f"{TOPIC}/1", payload)], 0, 2, registers=3)


def test_publish_bytes_counts_the_remaining_length_in_as_many_bytes_as_mqtt_does() -> None:
    # fixed header byte + remaining length (1 byte below 128, 2 below 16384, 3 below 2097152) + topic + id + payload
    assert publish_bytes("t", b"x" * 10) == 1 + 1 + (2 + 1 + 2 + 10)
    assert publish_bytes("t", b"x" * 200) == 1 + 2 + (2 + 1 + 2 + 200)
    assert publish_bytes("t", b"x" * 20000) == 1 + 3 + (2 + 1 + 2 + 20000)
