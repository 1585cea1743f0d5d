"""Seen messages between the workers of a group: round trip, size bound, strict decoding, roles."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ems_contract.telemetry import MAX_INT64, SchemaError, seen_topic, worker_of_seen_topic
from ingest.seq_share import MAX_SEEN_BYTES, GroupRole, decode_seen, encode_seen

TOPIC = seen_topic("ingest-b")


@st.composite
def interval_sets(draw: st.DrawFn) -> list[tuple[int, int]]:
    bounds = sorted(draw(st.sets(st.integers(1, MAX_INT64), min_size=2, max_size=40)))
    return [(bounds[i], bounds[i + 1]) for i in range(0, len(bounds) - 1, 2)]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,20}\Z"), interval_sets(), min_size=1, max_size=30))
def test_what_is_encoded_decodes_to_the_same_intervals(sites: dict) -> None:
    decoded: dict = {}
    for names, payload in encode_seen("ingest-b", sites):
        message = decode_seen(payload, TOPIC)
        assert message.worker == "ingest-b" and list(message.sites) == names
        decoded.update(message.sites)
    assert decoded == sites


def test_a_large_state_is_split_and_every_message_stays_within_the_bound() -> None:
    sites = {f"site-{n:04d}": [(s * 10 + 1, s * 10 + 5) for s in range(300)] for n in range(60)}
    messages = list(encode_seen("ingest-b", sites))
    assert len(messages) > 1 and all(len(payload) <= MAX_SEEN_BYTES for _, payload in messages)
    assert {site for names, _ in messages for site in names} == set(sites)
    huge = {"one": [(s * 10 + 1, s * 10 + 5) for s in range(50_000)]}   # one site beyond a message: newest kept
    (names, payload), = encode_seen("ingest-b", huge)
    assert len(payload) <= MAX_SEEN_BYTES and decode_seen(payload, TOPIC).sites["one"][-1] == huge["one"][-1]


def _payload(**body: object) -> bytes:
    return json.dumps({"v": 1, "worker": "ingest-b", "sites": {"s1": [[1, 5]]}, **body}).encode()


@pytest.mark.parametrize("payload, topic, detail", [
    (_payload(), seen_topic("ingest-c"), "worker 'ingest-b' does not match the topic"),
    (_payload(v=2), TOPIC, "must be an object with v 1"),
    (_payload(v=True), TOPIC, "must be an object with v 1"),
    (b"[1]", TOPIC, "must be an object with v 1"),
    (_payload(sites=[]), TOPIC, "sites must be an object"),
    (_payload(sites={"a/b": [[1, 2]]}), TOPIC, "site 'a/b' is not a valid id"),
    (_payload(sites={"s1": []}), TOPIC, "sites.s1 must be a list of 1..100000 intervals"),
    (_payload(sites={"s1": [[0, 5]]}), TOPIC, "sites.s1[0] must be [lo, hi] with 0 < lo <= hi"),
    (_payload(sites={"s1": [[5, 4]]}), TOPIC, "sites.s1[0] must be [lo, hi]"),
    (_payload(sites={"s1": [[1, 5], [5, 9]]}), TOPIC, "sites.s1[1] must be [lo, hi] with 5 < lo"),
    (_payload(sites={"s1": [[1, 2**63]]}), TOPIC, "sites.s1[0] must be [lo, hi]"),
    (_payload(sites={"s1": [[1, True]]}), TOPIC, "sites.s1[0] must be [lo, hi]"),
    (_payload(sites={"s1": [[1.0, 2]]}), TOPIC, "sites.s1[0] must be [lo, hi]"),
    (_payload(sites={"s1": [[1, 2, 3]]}), TOPIC, "sites.s1[0] must be [lo, hi]"),
])
def test_a_bad_message_is_a_schema_error_naming_the_field(payload: bytes, topic: str, detail: str) -> None:
    with pytest.raises(SchemaError) as err:
        decode_seen(payload, topic)
    assert err.value.reason == "bad_seen" and detail in err.value.detail, err.value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_raise_schema_error(payload: bytes) -> None:
    for candidate in (payload, b'{"v":1,"worker":"ingest-b","sites":' + payload):
        try:
            decode_seen(candidate, TOPIC)
        except SchemaError:
            pass


def test_oversized_and_topics() -> None:
    with pytest.raises(SchemaError) as err:
        decode_seen(b" " * (MAX_SEEN_BYTES + 1), TOPIC)
    assert err.value.reason == "oversized"
    assert worker_of_seen_topic(TOPIC) == "ingest-b"
    assert worker_of_seen_topic("ems/v1/sub-07/telemetry") is None and worker_of_seen_topic("ems/v1/a/b/seen") is None


def test_the_first_worker_of_a_group_is_the_accountant() -> None:
    first, second = GroupRole("a", ("a", "b")), GroupRole("b", ("a", "b"))
    assert (first.shared, first.accountant, first.peers) == (True, True, ("b",))
    assert (second.accountant, second.peers) == (False, ("a",))
    alone = GroupRole("a", ())
    assert (alone.shared, alone.accountant) == (False, True)
    with pytest.raises(ValueError, match="not one of the group's workers"):
        GroupRole("c", ("a", "b"))
