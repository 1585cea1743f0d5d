"""The command sink without a broker: ids issued once, results matched to their commands, hostile results
counted and dropped (property-based), and the outcome → 2030.5 Response status table."""

from __future__ import annotations

import asyncio
import json
import queue

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ems_contract.command import Command, CommandResult, decode_command, encode_result
from northbound.command_link import Received
from northbound.commands import MqttCommandSink, response_status, result_subscriptions
from northbound.errors import BrokerError
from northbound.events import ResponseStatus
from northbound.metrics import NorthboundMetrics

NOW = 1_800_000_000.0


class FakeLink:
    """Stands for CommandLink: records publishes, fails them on demand, holds an incoming queue."""

    def __init__(self, fail: BrokerError | None = None) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.fail = fail
        self.incoming: queue.Queue[Received] = queue.Queue()
        self.dropped = 0

    async def publish(self, topic: str, payload: bytes) -> None:
        if self.fail is not None:
            raise self.fail
        self.published.append((topic, payload))


def command(id_: str = "c1", site: str = "sub-07", event: str | None = "C0000001") -> Command:
    return Command(id=id_, site=site, issued_ms=int(NOW * 1000), expires_ms=int(NOW * 1000) + 60_000, event=event,
                   control="exp_lim_w", value=5000.0)


def result(id_: str = "c1", site: str = "sub-07", outcome: str = "applied", reason: str | None = None) -> Received:
    payload = encode_result(CommandResult(id=id_, site=site, ts_ms=int(NOW * 1000), outcome=outcome, reason=reason,
                                          readback=5000.0 if outcome == "applied" else None))
    return Received(f"ems/v1/{site}/command-result", payload)


def sink_with(link: FakeLink, metrics: NorthboundMetrics | None = None) -> MqttCommandSink:
    return MqttCommandSink(link, metrics or NorthboundMetrics(), ["sub-07", "sub-08"], clock=lambda: NOW)  # type: ignore[arg-type]


def test_outcomes_map_to_table_27_statuses() -> None:
    assert response_status("applied") == ResponseStatus.STARTED == 2
    assert response_status("rejected") == response_status("failed") == ResponseStatus.REJECTED_NOT_APPLICABLE == 252
    assert response_status("expired") == ResponseStatus.REJECTED_LATE == 254
    with pytest.raises(KeyError):
        response_status("maybe")


def test_subscriptions_name_each_site() -> None:
    assert result_subscriptions(["sub-08", "sub-07"]) == ("ems/v1/sub-07/command-result", "ems/v1/sub-08/command-result")


def test_issue_publishes_the_contract_payload_once_per_id() -> None:
    link, metrics = FakeLink(), NorthboundMetrics()
    sink = sink_with(link, metrics)
    asyncio.run(sink.issue(command()))
    [(topic, payload)] = link.published
    assert topic == "ems/v1/sub-07/command" and decode_command(payload, topic) == command()
    with pytest.raises(ValueError, match="c1 was issued before"):
        asyncio.run(sink.issue(command()))
    assert len(link.published) == 1
    assert metrics.registry.get_sample_value("ems_northbound_command_publishes_total", {"outcome": "ok"}) == 1


def test_a_refused_publish_is_counted_and_raised() -> None:
    link, metrics = FakeLink(fail=BrokerError("unreachable", "not connected")), NorthboundMetrics()
    with pytest.raises(BrokerError, match="unreachable"):
        asyncio.run(sink_with(link, metrics).issue(command()))
    assert metrics.registry.get_sample_value("ems_northbound_command_publishes_total", {"outcome": "unreachable"}) == 1


def test_results_match_commands_and_strangers_are_counted() -> None:
    link, metrics = FakeLink(), NorthboundMetrics()
    sink = sink_with(link, metrics)
    asyncio.run(sink.issue(command("c1")))
    asyncio.run(sink.issue(command("c2", site="sub-08")))
    for item in (result("c1"), result("c1"),                       # a redelivery
                 result("nobody"),                                 # never issued
                 result("c2", site="sub-07", outcome="failed", reason="x"),   # sub-07 answering sub-08's command
                 Received("ems/v1/sub-07/command-result", b"{not json"),
                 Received("ems/v1/sub-08/command-result", result("c2").payload),   # topic of another site
                 result("c2", site="sub-08", outcome="rejected", reason="above max_w")):
        link.incoming.put(item)
    outcomes = sink.results()
    assert [(o.command.id, o.result.outcome) for o in outcomes] == [("c1", "applied"), ("c2", "rejected")]
    sample = metrics.registry.get_sample_value
    ignored = {reason: sample("ems_northbound_command_results_ignored_total", {"reason": reason})
               for reason in ("duplicate", "unknown_command", "wrong_site", "not_json", "site_mismatch")}
    assert ignored == {"duplicate": 1, "unknown_command": 1, "wrong_site": 1, "not_json": 1, "site_mismatch": 1}
    assert sample("ems_northbound_command_results_total", {"site": "sub-07", "outcome": "applied"}) == 1
    assert sample("ems_northbound_command_results_total", {"site": "sub-08", "outcome": "rejected"}) == 1


def test_old_commands_are_forgotten_after_their_expiry() -> None:
    link = FakeLink()
    clock = [NOW]
    sink = MqttCommandSink(link, NorthboundMetrics(), ["sub-07"], clock=lambda: clock[0])  # type: ignore[arg-type]
    asyncio.run(sink.issue(command("old")))
    clock[0] = NOW + 60 + 601                   # past expiry + KEEP_AFTER_EXPIRY_S
    asyncio.run(sink.issue(Command(**{**_fields(command("new")), "issued_ms": int(clock[0] * 1000),
                                      "expires_ms": int(clock[0] * 1000) + 60_000})))
    link.incoming.put(result("old"))
    assert sink.results() == []


def _fields(c: Command) -> dict:
    return {name: getattr(c, name) for name in Command.__slots__}


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=6),
                     max_leaves=20)
_near_valid = st.fixed_dictionaries({
    "v": st.sampled_from([1, 2, "1", None]), "id": st.sampled_from(["c1", "c2", "", "x" * 80, 7]),
    "site": st.sampled_from(["sub-07", "sub-08", "sub-09", "", None]), "ts_ms": st.one_of(st.integers(), st.floats()),
    "outcome": st.sampled_from(["applied", "rejected", "expired", "failed", "done", None]),
    "reason": st.one_of(st.none(), st.text(max_size=250)), "readback": _json})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(st.tuples(
    st.sampled_from(["ems/v1/sub-07/command-result", "ems/v1/sub-08/command-result", "ems/v1/x/command-result",
                     "ems/v1/sub-07/command", "ems/v1/sub-07/command-result/extra"]),
    st.one_of(st.binary(max_size=300), _json.map(lambda v: json.dumps(v).encode()),
              _near_valid.map(lambda v: json.dumps(v).encode()))), max_size=20))
def test_hostile_results_never_raise_and_every_message_is_accounted_for(items: list[tuple[str, bytes]]) -> None:
    link, metrics = FakeLink(), NorthboundMetrics()
    sink = sink_with(link, metrics)
    asyncio.run(sink.issue(command("c1")))
    asyncio.run(sink.issue(command("c2", site="sub-08")))
    for topic, payload in items:
        link.incoming.put(Received(topic, payload))
    outcomes = sink.results()
    assert len({o.command.id for o in outcomes}) == len(outcomes)        # at most one outcome per command
    for o in outcomes:
        assert o.result.site == o.command.site and o.result.id == o.command.id
    families = metrics.registry.collect()
    ignored = sum(s.value for f in families if f.name == "ems_northbound_command_results_ignored"
                  for s in f.samples if s.name.endswith("_total"))
    assert ignored + len(outcomes) == len(items)


def test_results_dropped_by_a_full_link_queue_are_counted_once() -> None:
    link, metrics = FakeLink(), NorthboundMetrics()
    sink = sink_with(link, metrics)
    link.dropped = 3
    assert sink.results() == [] and sink.results() == []
    assert metrics.registry.get_sample_value("ems_northbound_command_results_ignored_total", {"reason": "queue_full"}) == 3
