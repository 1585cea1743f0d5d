"""The 2030.5 XML boundary: schema order and namespace out, hostile documents refused in."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from northbound import sep2
from northbound.errors import Sep2Error

NS = 'xmlns="urn:ieee:std:2030.5:ns"'
CONTROL = (
    '<DERControl href="/derp/1/derc/7" replyTo="/rsps/1/rsp" responseRequired="03"><mRID>A1B2</mRID>'
    "<creationTime>1000</creationTime><EventStatus><currentStatus>0</currentStatus><dateTime>1000</dateTime>"
    "<potentiallySuperseded>false</potentiallySuperseded></EventStatus>"
    "<interval><duration>300</duration><start>2000</start></interval><randomizeStart>30</randomizeStart>"
    '<DERControlBase><opModConnect>true</opModConnect><csipaus:opModExpLimW xmlns:csipaus="https://csipaus.org/ns/v1.3">'
    "<multiplier>1</multiplier><value>500</value></csipaus:opModExpLimW></DERControlBase></DERControl>"
)
CONTROL_DOC = CONTROL.replace("<DERControl ", f"<DERControl {NS} ", 1).encode()


def test_parse_and_render_keep_schema_order_and_namespace() -> None:
    control = sep2.parse(sep2.DERControl, CONTROL_DOC)
    assert control.mRID == "A1B2" and control.interval.start == 2000 and control.randomizeStart == 30
    assert control.DERControlBase_.opModExpLimW.value == 500 and control.DERControlBase_.opModExpLimW.multiplier == 1
    out = sep2.render(control).decode()
    assert out.startswith('<DERControl xmlns="urn:ieee:std:2030.5:ns"')
    # sep.xsd sequence: IdentifiedObject, Event, RandomizableEvent, DERControl; DateTimeInterval is duration, start.
    order = re.findall(r"<(?:csipaus:)?(\w+)[ >]", out)
    assert order == ["DERControl", "mRID", "creationTime", "EventStatus", "currentStatus", "dateTime",
                     "potentiallySuperseded", "interval", "duration", "start", "randomizeStart", "DERControlBase",
                     "opModConnect", "opModExpLimW", "multiplier", "value"]
    assert sep2.parse(sep2.DERControl, sep2.render(control)) == control


def test_response_element_order() -> None:
    reply = sep2.DERControlReply(createdDateTime=5, endDeviceLFDI="3E4F45AB31EDFE5B67E343E5E4562E31984E23E5",
                                 status=1, subject="A1B2")
    out = sep2.render(reply).decode()
    assert re.findall(r"<(\w+)[ >]", out) == ["DERControlResponse", "createdDateTime", "endDeviceLFDI", "status", "subject"]


BAD_DOCUMENTS = {
    "dtd": f'<!DOCTYPE DERControl [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
           f'<DERControl {NS}><mRID>&b;</mRID></DERControl>'.encode(),
    "dtd-external": f'<!DOCTYPE DERControl [<!ENTITY x SYSTEM "file:///etc/passwd">]><DERControl {NS}>'
                    f'<mRID>&x;</mRID></DERControl>'.encode(),
    "oversized": CONTROL_DOC.replace(b"<mRID>", b"<description>" + b"x" * sep2.MAX_DOCUMENT_BYTES + b"</description><mRID>"),
    "encoding": CONTROL.replace("<DERControl ", f"<DERControl {NS} ", 1).encode("utf-16"),
    "malformed": CONTROL_DOC[:-5],
    "too_deep": f"<DERControl {NS}>".encode() + b"<a>" * 40 + b"</a>" * 40 + b"</DERControl>",
    "out_of_range": CONTROL_DOC.replace(b"<start>2000", b"<start>9223372036854775808"),
    "wrong_root": CONTROL_DOC.replace(NS.encode(), b'xmlns="urn:other"'),
    "invalid": CONTROL_DOC.replace(b"<mRID>A1B2</mRID>", b""),
}


@pytest.mark.parametrize("reason", sorted(BAD_DOCUMENTS))
def test_hostile_documents_are_refused(reason: str) -> None:
    with pytest.raises(Sep2Error) as info:
        sep2.parse(sep2.DERControl, BAD_DOCUMENTS[reason])
    assert info.value.reason == reason.split("-")[0]


def test_too_many_elements() -> None:
    body = f"<DERControl {NS}>".encode() + b"<x/>" * (sep2.MAX_ELEMENTS + 1) + b"</DERControl>"
    with pytest.raises(Sep2Error, match="too_many_elements"):
        sep2.parse(sep2.DERControl, body)


def test_list_rejects_one_bad_item_and_keeps_the_rest() -> None:
    bad = CONTROL.replace("<interval><duration>300</duration><start>2000</start></interval>", "").replace("A1B2", "C3D4")
    body = f'<DERControlList {NS} all="2" results="2">{CONTROL}{bad}</DERControlList>'.encode()
    page = sep2.parse_list(sep2.DERControlList, sep2.DERControl, body)
    assert (page.all, page.results) == (2, 2)
    assert [c.mRID for c in page.items] == ["A1B2"]
    [rejected] = page.rejected
    assert (rejected.mrid, rejected.reply_to, rejected.response_required) == ("C3D4", "/rsps/1/rsp", "03")
    assert "interval" in str(rejected.error)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_random_bytes_raise_only_sep2_error(data: bytes) -> None:
    with pytest.raises(Sep2Error):
        sep2.parse(sep2.DERControl, data)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(CONTROL_DOC) - 1), st.integers(min_value=1, max_value=40),
       st.binary(max_size=12))
def test_mutated_documents_parse_or_raise_sep2_error(at: int, cut: int, insert: bytes) -> None:
    body = CONTROL_DOC[:at] + insert + CONTROL_DOC[at + cut:]
    try:
        sep2.parse(sep2.DERControl, body)
        sep2.parse_list(sep2.DERControlList, sep2.DERControl,
                        f'<DERControlList {NS} all="1" results="1">'.encode() + body + b"</DERControlList>")
    except Sep2Error:
        pass
