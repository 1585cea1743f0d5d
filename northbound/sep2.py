"""The 2030.5 XML boundary: hostile bytes in, validated resource models out (and back).

The resource models are envoy-schema's pydantic-xml classes (the models of the
open-source envoy CSIP-AUS utility server), re-exported here under their 2030.5
names so no other module imports envoy-schema, lxml or pydantic directly.
Serialisation keeps the schema's element order (the models declare their fields
in ``sep.xsd`` order) in the namespace ``urn:ieee:std:2030.5:ns``; CSIP-AUS
extensions (``opModExpLimW`` …) are in ``https://csipaus.org/ns/v1.3``.

``parse`` treats every document as hostile, before any model sees it:

=================  ==========================================================
size               at most ``MAX_DOCUMENT_BYTES`` (1 MiB)
encoding           UTF-8 (the standard's only encoding)
DTD / entities     refused outright; the parser never resolves or fetches anything
depth, elements    at most ``MAX_DEPTH`` (24) levels and ``MAX_ELEMENTS`` (20 000)
integers           every integer text fits a signed 64-bit value (the widest
                   the schema uses for numbers it compares or adds)
root element       the one the caller expects, in the 2030.5 namespace
fields             the model's types; a missing required field is an error
=================  ==========================================================

Every refusal is a ``Sep2Error`` whose ``reason`` is one of ``oversized``,
``encoding``, ``dtd``, ``malformed``, ``too_deep``, ``too_many_elements``,
``out_of_range``, ``wrong_root`` or ``invalid``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Generic, TypeVar

from envoy_schema.server.schema.sep2 import der as _der
from envoy_schema.server.schema.sep2 import device_capability as _dcap
from envoy_schema.server.schema.sep2 import end_device as _edev
from envoy_schema.server.schema.sep2 import function_set_assignments as _fsa
from envoy_schema.server.schema.sep2 import metering as _metering
from envoy_schema.server.schema.sep2 import metering_mirror as _mirror
from envoy_schema.server.schema.sep2 import response as _response
from envoy_schema.server.schema.sep2 import time as _time
from envoy_schema.server.schema.sep2 import types as _types
from envoy_schema.server.schema.sep2.der_control_types import ActivePower, ReactivePower
from envoy_schema.server.schema.sep2.event import EventStatus
from envoy_schema.server.schema.sep2.identification import Link, ListLink
from lxml import etree
from pydantic import ValidationError
from pydantic_xml import BaseXmlModel

from northbound.errors import Sep2Error

__all__ = [
    "NAMESPACE", "CSIPAUS_NAMESPACE", "MEDIA_TYPE", "MAX_DOCUMENT_BYTES", "MAX_DEPTH", "MAX_ELEMENTS",
    "parse", "parse_list", "render", "ListPage", "RejectedItem",
    "ActivePower", "ReactivePower", "ConnectStatus", "OperationalModeStatus",
    "DER", "DERList", "DERCapability", "DERSettings", "DERStatus", "DateTimeInterval", "DefaultDERControl", "DERControl", "DERControlBase", "DERControlList",
    "DERProgram", "DERProgramList", "DERControlReply", "DeviceCapability", "EndDevice", "EndDeviceList", "EndDeviceRequest",
    "EventStatus", "FunctionSetAssignments", "FunctionSetAssignmentsList", "Link", "ListLink",
    "MirrorMeterReading", "MirrorMeterReadingList", "MirrorReadingSet", "MirrorUsagePoint", "MirrorUsagePointList",
    "Reading", "ReadingType", "Registration", "Response", "ResponseList", "Time",
]

NAMESPACE = "urn:ieee:std:2030.5:ns"
CSIPAUS_NAMESPACE = "https://csipaus.org/ns/v1.3"
MEDIA_TYPE = "application/sep+xml"
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_DEPTH = 24
MAX_ELEMENTS = 20_000
_INT64 = 2**63
_INTEGER = re.compile(r"^\s*[-+]?\d+\s*$")

# 2030.5 resource names → envoy-schema classes (envoy names several "…Response" after its own role).
DeviceCapability = _dcap.DeviceCapabilityResponse
Time = _time.TimeResponse
EndDevice = _edev.EndDeviceResponse
EndDeviceRequest = _edev.EndDeviceRequest
"""An EndDevice as a client POSTs it (sFDI, lFDI, changedTime; no links)."""
EndDeviceList = _edev.EndDeviceListResponse
Registration = _edev.RegistrationResponse
FunctionSetAssignments = _fsa.FunctionSetAssignmentsResponse
FunctionSetAssignmentsList = _fsa.FunctionSetAssignmentsListResponse
DERProgram = _der.DERProgramResponse
DERProgramList = _der.DERProgramListResponse
DefaultDERControl = _der.DefaultDERControl
DERControl = _der.DERControlResponse
DERControlBase = _der.DERControlBase
DERControlList = _der.DERControlListResponse
DER = _der.DER
DERList = _der.DERListResponse
DERCapability = _der.DERCapability
DERSettings = _der.DERSettings
DERStatus = _der.DERStatus
ConnectStatus = _der.ConnectStatusTypeValue
OperationalModeStatus = _der.OperationalModeStatusTypeValue
DERControlReply = _response.DERControlResponse
"""The 2030.5 ``DERControlResponse`` resource: a client's Response to a DERControl."""
Response = _response.Response
ResponseList = _response.ResponseListResponse
DateTimeInterval = _types.DateTimeIntervalType
MirrorUsagePoint = _mirror.MirrorUsagePointRequest
MirrorUsagePointList = _mirror.MirrorUsagePointListResponse
MirrorMeterReading = _mirror.MirrorMeterReadingRequest
MirrorMeterReadingList = _mirror.MirrorMeterReadingListRequest
MirrorReadingSet = _mirror.MirrorReadingSet
Reading = _metering.Reading
ReadingType = _metering.ReadingType

Model = TypeVar("Model", bound=BaseXmlModel)


def _parser() -> etree.XMLParser:
    # A new parser per document: lxml parsers are not thread-safe (the test server is threaded).
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=False, remove_comments=True, remove_pis=True, collect_ids=False)


def _check_tree(root: etree._Element) -> None:
    count = 0
    stack: list[tuple[etree._Element, int]] = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        count += 1
        if count > MAX_ELEMENTS:
            raise Sep2Error("too_many_elements", f"more than {MAX_ELEMENTS} elements")
        if depth > MAX_DEPTH:
            raise Sep2Error("too_deep", f"elements nest deeper than {MAX_DEPTH} levels")
        texts = [element.text, *element.attrib.values()]
        for text in texts:
            if text and _INTEGER.match(text) and not -_INT64 <= int(text) < _INT64:
                raise Sep2Error("out_of_range", f"{etree.QName(element).localname}: {text.strip()[:40]} "
                                                "does not fit a signed 64-bit integer")
        stack.extend((child, depth + 1) for child in element if isinstance(child.tag, str))


def parse(model: type[Model], body: bytes) -> Model:
    """Validate ``body`` as the 2030.5 resource ``model``; raises Sep2Error (never anything else)."""
    root = _checked_root(model, body)
    try:
        return model.from_xml_tree(root)
    except (ValidationError, ValueError, TypeError) as exc:
        raise Sep2Error("invalid", f"{_tag(model)}: {_summary(exc)}") from exc


def _tag(model: type[BaseXmlModel]) -> str:
    # pydantic-xml names an element after its class when the model declares no tag.
    return model.__xml_tag__ or model.__name__


def _checked_root(model: type[BaseXmlModel], body: bytes) -> etree._Element:
    if len(body) > MAX_DOCUMENT_BYTES:
        raise Sep2Error("oversized", f"document is {len(body)} bytes; the limit is {MAX_DOCUMENT_BYTES}")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Sep2Error("encoding", f"document is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError as exc:
        raise Sep2Error("malformed", f"not well-formed XML ({exc.msg})") from exc
    if root is None:
        raise Sep2Error("malformed", "empty document")
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise Sep2Error("dtd", "documents with a DOCTYPE are refused")
    _check_tree(root)
    tag = _tag(model)
    if root.tag != f"{{{NAMESPACE}}}{tag}":
        raise Sep2Error("wrong_root", f"expected <{tag}> in {NAMESPACE}, got {str(root.tag)[:120]}")
    return root


@dataclass(frozen=True, slots=True)
class RejectedItem:
    """A list item that failed validation, with what can be salvaged to answer it (each may be None)."""

    error: Sep2Error
    mrid: str | None
    href: str | None
    reply_to: str | None
    response_required: str | None


@dataclass(frozen=True, slots=True)
class ListPage(Generic[Model]):
    """One page of a 2030.5 list: ``all`` and ``results`` as the server stated them, valid ``items`` in
    document order, and the items that failed validation on their own (the rest of the page still counts)."""

    all: int
    results: int
    items: list[Model]
    rejected: list[RejectedItem]
    poll_rate: int | None


_HEX_ID = re.compile(r"^[0-9A-Fa-f]{1,32}$")


def parse_list(model: type[BaseXmlModel], item: type[Model], body: bytes) -> ListPage[Model]:
    """Validate a list document item by item: one bad item is rejected alone, not the whole page.

    Raises Sep2Error when the document itself (size, DTD, root, list attributes) is refused.
    """
    root = _checked_root(model, body)
    item_tag = f"{{{NAMESPACE}}}{_tag(item)}"
    children = [child for child in root if child.tag == item_tag]
    for child in children:
        root.remove(child)
    try:
        page = model.from_xml_tree(root)
    except (ValidationError, ValueError, TypeError) as exc:
        raise Sep2Error("invalid", f"{_tag(model)}: {_summary(exc)}") from exc
    items: list[Model] = []
    rejected: list[RejectedItem] = []
    for index, child in enumerate(children):
        try:
            items.append(item.from_xml_tree(child))
        except (ValidationError, ValueError, TypeError) as exc:
            mrid = child.findtext(f"{{{NAMESPACE}}}mRID")
            rejected.append(RejectedItem(
                error=Sep2Error("invalid", f"{_tag(item)}[{index}]: {_summary(exc)}"),
                mrid=mrid.strip() if mrid and _HEX_ID.match(mrid.strip()) else None,
                href=_bounded(child.get("href")), reply_to=_bounded(child.get("replyTo")),
                response_required=_bounded(child.get("responseRequired"))))
    return ListPage(all=page.all_, results=page.results, items=items, rejected=rejected,
                    poll_rate=getattr(page, "pollRate", None))


def _bounded(text: str | None, limit: int = 4096) -> str | None:
    return text if text is not None and len(text) <= limit else None


def _summary(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where or 'document'}: {first.get('msg', 'invalid')} ({exc.error_count()} error(s))"
    return str(exc)[:200]


def render(resource: BaseXmlModel) -> bytes:
    """The resource as a UTF-8 2030.5 document (no XML declaration), empty optional fields left out."""
    return resource.to_xml(skip_empty=True)  # type: ignore[return-value]
