"""The 2030.5 function sets, one site (EndDevice) at a time, every resource found by following links.

``Sep2Client`` holds what the server told us (links, poll rates, clock offset) and one
``SiteSession`` per site. Its coroutines each do one function-set step and raise on
failure (``TransportError``, ``Sep2Error``, ``RegistrationError``); the service decides
when to run them and how to back off. In order::

    discover()          DeviceCapability (the configured dcap path) → links, pollRate; then Time
    sync_time()         Time.currentTime - local clock → ``offset``; every event time uses server_now()
    register(site)      EndDeviceList (paged) → ours by LFDI, else POST EndDevice (sFDI, lFDI, changedTime);
                        a server that refuses the POST (403/404/405) registers devices out of band, so
                        the site waits for it; then the EndDevice and, if a PIN is configured, its Registration
    poll_controls(site) FunctionSetAssignmentsList → DERProgramList (by primacy) → DefaultDERControl and
                        DERControlList; a DERControl that fails validation is kept aside for a
                        *rejected* Response, the rest still count
    decide(site)        events.select at server_now(): the controls in force
    post_responses(site) Responses due (events.responses_due, plus rejections) to each event's replyTo
    mirror(site, values) MirrorUsagePoint (POST once, then its postRate) and MirrorMeterReadings
    report_der(site, values) DERList → DER → PUT DERCapability, DERSettings (once per registration
                        check) and DERStatus (at the postRate), when the site has a ``der`` config
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from northbound import der, events, mirror, sep2
from northbound.config import MirrorPoint, NorthboundConfig, SiteConfig
from northbound.errors import RegistrationError, Sep2Error, ServerStatusError
from northbound.events import ControlEvent, DefaultControl, ResponseDue, ResponseStatus, Selection
from northbound.metrics import NorthboundMetrics
from northbound.transport import Sep2Transport

__all__ = ["Sep2Client", "SiteSession", "PointValue", "DEFAULT_POLL_S"]


log = logging.getLogger(__name__)

DEFAULT_POLL_S = 900
"""2030.5's default pollRate when a resource states none."""


@dataclass(frozen=True, slots=True)
class PointValue:
    """The latest value of one telemetry point (from the twin), as mirrored."""

    value: float
    unit: str
    ts_ms: int


@dataclass
class SiteSession:
    """What the client knows about one site's EndDevice and its DER program state."""

    config: SiteConfig
    points: tuple[MirrorPoint, ...] = ()
    end_device: str | None = None
    fsa_list: str | None = None
    der_list: str | None = None
    der: sep2.DER | None = None
    der_reported: bool = False
    registered: bool = False
    events: list[ControlEvent] = field(default_factory=list)
    defaults: list[DefaultControl] = field(default_factory=list)
    rejected: list[ResponseDue] = field(default_factory=list)
    sent: dict[str, frozenset[int]] = field(default_factory=dict)
    confirmed: set[str] = field(default_factory=set)            # events the site reported applied
    site_refusals: dict[str, ResponseDue] = field(default_factory=dict)   # events the site refused, failed or got late
    poll_s: int = DEFAULT_POLL_S
    mup: str | None = None
    post_s: int | None = None
    selection: Selection | None = None

    @property
    def site(self) -> str:
        return self.config.site


class Sep2Client:
    """The function sets over one ``Sep2Transport`` for the configured sites."""

    def __init__(self, transport: Sep2Transport, config: NorthboundConfig, metrics: NorthboundMetrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.transport = transport
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.offset = 0
        self.dcap: sep2.DeviceCapability | None = None
        self.dcap_poll_s = DEFAULT_POLL_S
        self.sessions = {s.site: SiteSession(s, tuple(m for m in config.mirror if m.site == s.site))
                         for s in config.sites}
        self.confirm_started = False
        """True when a control path reports back: *started* is posted once the site applied the event."""

    def server_now(self) -> int:
        """Server time in seconds: the local clock plus the offset the Time resource gave."""
        return int(self.clock()) + self.offset

    def _poll_s(self, stated: int | None) -> int:
        rate = stated if isinstance(stated, int) and stated > 0 else self.dcap_poll_s
        return max(1, min(rate, self.config.polling.max_poll_s))

    async def discover(self) -> sep2.DeviceCapability:
        """Read DeviceCapability (the one configured path) and, when it links one, Time."""
        dcap = await self.transport.get("dcap", self.config.server.dcap, sep2.DeviceCapability)
        self.dcap = dcap
        self.dcap_poll_s = max(1, min(dcap.pollRate or DEFAULT_POLL_S, self.config.polling.max_poll_s))
        self.metrics.last_discovery.set(self.clock())
        if dcap.TimeLink is not None:
            await self.sync_time()
        return dcap

    async def sync_time(self) -> int:
        """Server clock minus ours, from Time.currentTime (rounded to the second, as the resource is)."""
        assert self.dcap is not None and self.dcap.TimeLink is not None
        before = self.clock()
        server = await self.transport.get("time", self.dcap.TimeLink.href, sep2.Time)
        midpoint = (before + self.clock()) / 2      # the server read its clock during the round trip
        self.offset = int(round(server.currentTime - midpoint))
        self.metrics.clock_offset.set(self.offset)
        return self.offset

    async def register(self, session: SiteSession) -> None:
        """Find or create the site's EndDevice, then check its Registration PIN when one is configured."""
        if self.dcap is None or self.dcap.EndDeviceListLink is None:
            raise RegistrationError(session.site, "the server's DeviceCapability has no EndDeviceListLink")
        lfdi = session.config.lfdi
        href = await self._find_end_device(self.dcap.EndDeviceListLink.href, lfdi)
        if href is None:
            request = sep2.EndDeviceRequest(lFDI=lfdi, sFDI=session.config.sfdi, changedTime=self.server_now(), enabled=True)
            try:
                href = await self.transport.post("edev", self.dcap.EndDeviceListLink.href, request)
            except ServerStatusError as exc:
                if exc.status in (403, 404, 405):
                    raise RegistrationError(session.site, f"not listed and the server refused registration "
                                            f"(HTTP {exc.status}); waiting for out-of-band registration of "
                                            f"LFDI {lfdi}") from exc
                raise
            href = href or await self._find_end_device(self.dcap.EndDeviceListLink.href, lfdi)
            if href is None:
                raise RegistrationError(session.site, "the server accepted the EndDevice but does not list it")
            log.info("site %s: registered EndDevice %s (sfdi %s)", session.site, href, session.config.sfdi)
        device = await self.transport.get("edev", href, sep2.EndDevice)
        if (device.lFDI or "").upper() != lfdi or device.sFDI != session.config.sfdi:
            raise RegistrationError(session.site, f"EndDevice {href} carries another LFDI/SFDI than ours")
        if session.config.pin is not None:
            if device.RegistrationLink is None:
                raise RegistrationError(session.site, "a PIN is configured but the EndDevice has no RegistrationLink")
            registration = await self.transport.get("rg", device.RegistrationLink.href, sep2.Registration)
            if registration.pIN != session.config.pin:
                raise RegistrationError(session.site, "the server's Registration PIN differs from the configured one")
        session.end_device = href
        session.fsa_list = device.FunctionSetAssignmentsListLink.href if device.FunctionSetAssignmentsListLink else None
        session.der_list = device.DERListLink.href if device.DERListLink else None
        session.der, session.der_reported = None, False      # re-read after every registration check
        session.registered = True
        self.metrics.registered.labels(session.site).set(1)

    async def _find_end_device(self, list_href: str, lfdi: str) -> str | None:
        page = await self.transport.get_list("edev", list_href, sep2.EndDeviceList, sep2.EndDevice)
        self._count_rejected(page.rejected)
        for device in page.items:
            if (device.lFDI or "").upper() == lfdi and device.href:
                return device.href
        return None

    def _count_rejected(self, rejected: list[sep2.RejectedItem]) -> None:
        for item in rejected:
            self.metrics.documents_rejected.labels(item.error.reason).inc()
            log.warning("refused list item %s: %s", item.href or item.mrid or "?", item.error)

    async def poll_controls(self, session: SiteSession) -> None:
        """Re-read the site's programs, default controls and events; replaces what the session holds."""
        if not session.registered:
            raise RegistrationError(session.site, "not registered yet")
        programs: dict[str, tuple[int, sep2.DERProgram]] = {}
        poll_rates: list[int | None] = []
        if session.fsa_list is not None:
            fsas = await self.transport.get_list("fsa", session.fsa_list, sep2.FunctionSetAssignmentsList,
                                                 sep2.FunctionSetAssignments)
            self._count_rejected(fsas.rejected)
            poll_rates.append(fsas.poll_rate)
            for fsa in fsas.items:
                if fsa.DERProgramListLink is None:
                    continue
                page = await self.transport.get_list("derp", fsa.DERProgramListLink.href, sep2.DERProgramList,
                                                     sep2.DERProgram)
                self._count_rejected(page.rejected)
                poll_rates.append(page.poll_rate)
                for program in page.items:
                    programs.setdefault(program.mRID.upper(), (program.primacy, program))
        found_events: list[ControlEvent] = []
        defaults: list[DefaultControl] = []
        rejected: list[ResponseDue] = []
        for mrid, (primacy, program) in sorted(programs.items(), key=lambda kv: (kv[1][0], kv[0])):
            if program.DefaultDERControlLink is not None:
                try:
                    default = await self.transport.get("dderc", program.DefaultDERControlLink.href,
                                                       sep2.DefaultDERControl)
                    defaults.append(events.default_control(mrid, primacy, default))
                except Sep2Error as exc:
                    self.metrics.documents_rejected.labels(exc.reason).inc()
                    log.warning("site %s: DefaultDERControl of program %s refused: %s", session.site, mrid, exc)
            if program.DERControlListLink is not None:
                page = await self.transport.get_list("derc", program.DERControlListLink.href, sep2.DERControlList,
                                                     sep2.DERControl)
                for item in page.rejected:
                    rejected.extend(self._rejection(item))
                self._count_rejected(page.rejected)
                for control in page.items:
                    try:
                        found_events.append(events.control_event(mrid, primacy, control))
                    except Sep2Error as exc:
                        self.metrics.documents_rejected.labels(exc.reason).inc()
                        log.warning("site %s: DERControl %s refused: %s", session.site, control.mRID, exc)
                        rejected.extend(self._rejection(sep2.RejectedItem(
                            exc, control.mRID, control.href, control.replyTo, control.responseRequired)))
        session.events, session.defaults, session.rejected = found_events, defaults, rejected
        session.poll_s = self._poll_s(min((r for r in poll_rates if r), default=None))
        known = {e.mrid for e in found_events} | {r.mrid for r in rejected}
        session.sent = {m: s for m, s in session.sent.items() if m in known}
        session.confirmed &= known
        session.site_refusals = {m: r for m, r in session.site_refusals.items() if m in known}
        self.metrics.last_poll.labels(session.site).set(self.clock())

    @staticmethod
    def _rejection(item: sep2.RejectedItem) -> list[ResponseDue]:
        """A *rejected (invalid event)* Response for an item we could not use, when it can be addressed."""
        if item.mrid is None or item.reply_to is None:
            return []
        try:
            required = int(item.response_required or "0", 16)
        except ValueError:
            required = 0x02          # unreadable flags: answering is the safer reading
        if not required:
            return []
        return [ResponseDue(item.mrid.upper(), item.reply_to, ResponseStatus.REJECTED_INVALID)]

    def decide(self, session: SiteSession) -> Selection:
        """The controls in force for the site at server_now() (pure: events.select over the session)."""
        selection = events.select(session.events, session.defaults, self.server_now(), session.config.lfdi)
        session.selection = selection
        return selection

    def site_outcome(self, session: SiteSession, mrid: str, status: ResponseStatus) -> bool:
        """Record what the site did with a command of event ``mrid`` (``commands.response_status``).

        *started* confirms the event; a rejection becomes that event's final Response unless it
        already started (a later refusal cannot undo *started*: it is logged only). False when the
        event is no longer known.
        """
        event = next((e for e in session.events if e.mrid == mrid), None)
        if event is None:
            return False
        if status == ResponseStatus.STARTED:
            session.confirmed.add(mrid)
        elif ResponseStatus.STARTED in session.sent.get(mrid, frozenset()):
            log.warning("site %s: event %s started, then a command of it was %s", session.site, mrid,
                        status.name.lower())
        elif event.reply_to is not None and event.response_required & 0x02:
            session.site_refusals.setdefault(mrid, ResponseDue(mrid, event.reply_to, status))
        return True

    async def post_responses(self, session: SiteSession) -> list[ResponseDue]:
        """Post every Response now due; each is recorded as sent only after the server accepted it."""
        selection = session.selection or self.decide(session)
        due = events.responses_due(session.events, selection, session.sent, session.config.lfdi,
                                   confirmed=session.confirmed if self.confirm_started else None)
        refusals = [r for m, r in session.site_refusals.items() if not session.sent.get(m, frozenset()) & events.FINAL_STATUSES]
        refused = {r.mrid for r in refusals}
        due = [r for r in due if not (r.mrid in refused and r.status == ResponseStatus.STARTED)] + refusals
        due += [r for r in session.rejected if r.status not in session.sent.get(r.mrid, frozenset())]
        posted = []
        for response in due:
            reply = sep2.DERControlReply(createdDateTime=self.server_now(), endDeviceLFDI=session.config.lfdi,
                                         status=int(response.status), subject=response.mrid)
            await self.transport.post("rsp", response.reply_to, reply)
            session.sent[response.mrid] = session.sent.get(response.mrid, frozenset()) | {int(response.status)}
            self.metrics.responses.labels(response.status.name.lower()).inc()
            log.info("site %s: Response %s for event %s", session.site, response.status.name.lower(), response.mrid)
            posted.append(response)
        return posted

    async def report_der(self, session: SiteSession, values: Mapping[tuple[str, str], PointValue]) -> bool:
        """PUT DERCapability and DERSettings once per registration check, DERStatus on every call.

        False when the site has no ``der`` config or its EndDevice links no DERList.
        """
        config = session.config.der
        if config is None or session.der_list is None:
            return False
        if session.der is None:
            page = await self.transport.get_list("der", session.der_list, sep2.DERList, sep2.DER)
            self._count_rejected(page.rejected)
            session.der = next((d for d in page.items if d.href), None)
            if session.der is None:
                raise Sep2Error("invalid", f"site {session.site}: the DERList {session.der_list} lists no DER")
        resource, now = session.der, self.server_now()
        if not session.der_reported:
            if resource.DERCapabilityLink is not None:
                await self.transport.put("dercap", resource.DERCapabilityLink.href,
                                         der.capability(config.type, config.rated_w, config.rated_var))
            if resource.DERSettingsLink is not None:
                await self.transport.put("derg", resource.DERSettingsLink.href,
                                         der.settings(config.max_w, config.grad_w, now))
            session.der_reported = True
        if resource.DERStatusLink is not None:
            latest = values.get(config.connected_point) if config.connected_point else None
            await self.transport.put("ders", resource.DERStatusLink.href,
                                     der.status(now, None if latest is None else latest.value != 0))
        return True

    async def ensure_mirror(self, session: SiteSession) -> str | None:
        """The site's MirrorUsagePoint href (POSTed with its MirrorMeterReadings' ReadingTypes once)."""
        if session.mup is not None:
            return session.mup
        if self.dcap is None or self.dcap.MirrorUsagePointListLink is None or not session.points:
            return None
        readings = [mirror.meter_reading(session.config.lfdi, _point_name(p), mirror.READING_KINDS[p.reading],
                                         p.multiplier) for p in session.points]
        usage_point = mirror.usage_point(session.site, session.config.lfdi, readings)
        href = await self.transport.post("mup", self.dcap.MirrorUsagePointListLink.href, usage_point)
        if href is None:
            raise Sep2Error("bad_link", f"site {session.site}: the server created the MirrorUsagePoint without a Location")
        try:
            created = await self.transport.get("mup", href, sep2.MirrorUsagePoint)
            session.post_s = created.postRate
        except (ServerStatusError, Sep2Error) as exc:
            log.info("site %s: MirrorUsagePoint %s not readable (%s); posting every %d s", session.site, href, exc,
                     self.config.polling.default_post_s)
        session.mup = href
        return href

    def post_interval(self, session: SiteSession) -> int:
        """Seconds between mirror posts: the server's postRate, else the configured default."""
        stated = session.post_s
        return stated if isinstance(stated, int) and stated > 0 else self.config.polling.default_post_s

    async def mirror(self, session: SiteSession, values: Mapping[tuple[str, str], PointValue]) -> int:
        """Post the points' latest values as MirrorMeterReadings; the number of readings posted."""
        href = await self.ensure_mirror(session)
        if href is None:
            return 0
        readings = []
        for point in session.points:
            latest = values.get((point.asset, point.point))
            if latest is None:
                continue
            kind = mirror.READING_KINDS[point.reading]
            try:
                value = mirror.scaled_value(_point_name(point), kind, point.multiplier, latest.value, latest.unit)
            except mirror.MirrorError as exc:
                log.warning("site %s: reading not mirrored: %s", session.site, exc)
                continue
            readings.append(mirror.meter_reading(session.config.lfdi, _point_name(point), kind, point.multiplier,
                                                 value=value, time=latest.ts_ms // 1000 + self.offset))
        if readings:
            await self.transport.post("mmr", href, sep2.MirrorMeterReadingList(mirrorMeterReadings=readings))
            self.metrics.last_post.labels(session.site).set(self.clock())
        return len(readings)


def _point_name(point: MirrorPoint) -> str:
    return f"{point.asset}/{point.point}"
