"""A small IEEE 2030.5 DER server for tests and the demo: a test double for the utility's head-end.

Written from the standard's resource model (IEEE 2030.5-2018 and CSIP), not from any
client: application/sep+xml over mutual TLS 1.2 that by default offers only
``TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8``. Clients are recognised by the LFDI of their
certificate; only ``aggregator_lfdis`` may talk to it (others get 403).

Resources (the client finds every one by following links from ``/dcap``)::

    /dcap                           DeviceCapability: TimeLink, EndDeviceListLink, MirrorUsagePointListLink
    /tm                             Time (currentTime = now + ``clock_offset``)
    /edev            GET, POST      EndDeviceList (paged); POST registers a device (201 + Location),
                                    or 403 when ``in_band_registration`` is False (devices are
                                    pre-registered out of band with ``preregister``)
    /edev/<n>                       EndDevice: RegistrationLink, FunctionSetAssignmentsListLink
    /edev/<n>/rg                    Registration with the device's PIN
    /edev/<n>/fsa                   FunctionSetAssignmentsList (one FSA linking the DERProgramList)
    /edev/<n>/der                   DERList with one DER: dercap, derg, ders accept PUT (recorded)
    /derp                           DERProgramList (paged), primacy as set
    /derp/<p>/dderc                 DefaultDERControl
    /derp/<p>/derc                  DERControlList (paged; start ascending, then creationTime descending)
    /rsps/<p>/rsp    GET, POST      ResponseList; POST records a Response
    /mup             GET, POST      MirrorUsagePointList; POST creates (or finds by mRID) a MirrorUsagePoint
    /mup/<n>         GET, POST      MirrorUsagePoint; POST records MirrorMeterReading(s)

Lists honour ``s`` (start) and ``l`` (limit, default 1 as the standard says) and report
``all`` and ``results``. Tests script faults through ``state``: ``fail_next`` (statuses to
answer the next requests with), ``delay`` (seconds before every answer) and ``raw``
(path → bytes served verbatim, for broken documents). Everything received is recorded.

Run standalone for the demo: ``python -m devenv.sep2_server --pki DIR --port 8443 --aggregator-cert FILE``.
"""

from __future__ import annotations

import argparse
import itertools
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from devenv.pki import LocalPki, make_pki
from northbound import sep2, tls
from northbound.errors import Sep2Error
from northbound.identity import identity_from_certificate, sfdi_from_lfdi

__all__ = ["Sep2TestServer", "ServerState", "Program", "Device"]


@dataclass
class Program:
    """A DERProgram with its default control (a DERControlBase) and its DERControls."""

    mrid: str
    primacy: int
    default: Any = None                     # sep2.DERControlBase or None
    controls: list[Any] = field(default_factory=list)   # sep2.DERControl
    description: str = ""


@dataclass
class Device:
    """A registered EndDevice."""

    index: int
    lfdi: str
    sfdi: int
    pin: int
    changed_time: int
    posted: bool


@dataclass
class ServerState:
    """Everything the server serves and records; guarded by ``lock`` (handlers run on threads)."""

    aggregator_lfdis: set[str]
    clock_offset: int = 0
    in_band_registration: bool = True
    default_pin: int = 111115
    poll_rate: int = 900
    post_rate: int = 300
    devices: list[Device] = field(default_factory=list)
    programs: list[Program] = field(default_factory=list)
    responses: list[Any] = field(default_factory=list)          # sep2.Response (as DERControlReply)
    mirror_usage_points: list[Any] = field(default_factory=list)
    mirror_readings: list[tuple[int, Any]] = field(default_factory=list)   # (mup index, MirrorMeterReading)
    der_reports: dict[tuple[int, str], list[Any]] = field(default_factory=dict)  # (device, dercap|derg|ders) → PUTs
    requests: list[tuple[str, str, int]] = field(default_factory=list)     # (method, path, status)
    ciphers: set[str] = field(default_factory=set)                         # negotiated, per connection
    fail_next: list[int] = field(default_factory=list)
    delay: float = 0.0
    raw: dict[str, bytes] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def now(self) -> int:
        return int(time.time()) + self.clock_offset

    def preregister(self, lfdi: str, pin: int | None = None) -> Device:
        """An EndDevice created out of band (as a utility's portal would), visible to the aggregator."""
        with self.lock:
            device = Device(len(self.devices) + 1, lfdi.upper(), sfdi_from_lfdi(lfdi),
                            self.default_pin if pin is None else pin, self.now(), posted=False)
            self.devices.append(device)
            return device


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.do_handshake()   # type: ignore[attr-defined]
        with self.server.state.lock:
            self.server.state.ciphers.add(self.connection.cipher()[0])   # type: ignore[attr-defined]

    def log_message(self, fmt: str, *args: Any) -> None:   # quiet: tests read state.requests instead
        pass

    def _client_lfdi(self) -> str | None:
        der = self.connection.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        return identity_from_certificate(der).lfdi if der else None

    def _reply(self, status: int, body: bytes = b"", location: str | None = None) -> None:
        state = self.server.state
        with state.lock:
            state.requests.append((self.command, self.path, status))
        self.send_response(status)
        if body:
            self.send_header("Content-Type", sep2.MEDIA_TYPE)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method: str) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        if length > sep2.MAX_DOCUMENT_BYTES:
            self._reply(413)
            return
        body = self.rfile.read(length) if length else b""
        if state.delay:
            time.sleep(state.delay)
        with state.lock:
            fail = state.fail_next.pop(0) if state.fail_next else None
        if fail is not None:
            self._reply(fail)
            return
        if self._client_lfdi() not in state.aggregator_lfdis:
            self._reply(403)
            return
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        with state.lock:
            raw = state.raw.get(url.path) if method == "GET" else None
        if raw is not None:
            self._reply(200, raw)
            return
        try:
            with state.lock:
                status, out, location = _route(state, method, url.path, query, body)
        except Sep2Error:
            status, out, location = 400, b"", None
        self._reply(status, out, location)

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")


def _page(query: dict[str, str], items: list[Any]) -> tuple[list[Any], int]:
    start = _int_arg(query, "s", 0)
    limit = _int_arg(query, "l", 1)
    return items[start:start + limit], len(items)


def _int_arg(query: dict[str, str], name: str, default: int) -> int:
    value = query.get(name)
    return max(0, min(int(value), 10_000)) if value is not None and value.isdigit() else default


def _ok(resource: Any) -> tuple[int, bytes, None]:
    return 200, sep2.render(resource), None


def _program_resource(index: int, program: Program) -> Any:
    return sep2.DERProgram(
        href=f"/derp/{index}", mRID=program.mrid, description=program.description or None,
        DefaultDERControlLink=sep2.Link(href=f"/derp/{index}/dderc") if program.default is not None else None,
        DERControlListLink=sep2.ListLink(href=f"/derp/{index}/derc", all_=len(program.controls)),
        primacy=program.primacy)


def _route(state: ServerState, method: str, path: str, query: dict[str, str],
           body: bytes) -> tuple[int, bytes, str | None]:
    parts = [p for p in path.split("/") if p]
    if method == "GET" and parts == ["dcap"]:
        return _ok(sep2.DeviceCapability(
            href="/dcap", pollRate=state.poll_rate, TimeLink=sep2.Link(href="/tm"),
            EndDeviceListLink=sep2.ListLink(href="/edev", all_=len(state.devices)),
            MirrorUsagePointListLink=sep2.ListLink(href="/mup", all_=len(state.mirror_usage_points))))
    if method == "GET" and parts == ["tm"]:
        now = state.now()
        return _ok(sep2.Time(href="/tm", currentTime=now, dstEndTime=0, dstOffset=0, dstStartTime=0,
                             quality=7, tzOffset=0))
    if parts[:1] == ["edev"]:
        return _end_devices(state, method, parts[1:], query, body)
    if method == "GET" and parts == ["derp"]:
        page, total = _page(query, list(enumerate(state.programs, 1)))
        return _ok(sep2.DERProgramList(href="/derp", all_=total, results=len(page), pollRate=state.poll_rate,
                                       DERProgram=[_program_resource(i, p) for i, p in page]))
    if parts[:1] == ["derp"] and len(parts) == 3 and parts[1].isdigit() and 1 <= int(parts[1]) <= len(state.programs):
        program = state.programs[int(parts[1]) - 1]
        if method == "GET" and parts[2] == "dderc" and program.default is not None:
            return _ok(sep2.DefaultDERControl(href=path, mRID=f"{program.mrid[:30]}DD",
                                              DERControlBase_=program.default))
        if method == "GET" and parts[2] == "derc":
            ordered = sorted(program.controls, key=lambda c: (c.interval.start, -c.creationTime))
            page, total = _page(query, ordered)
            return _ok(sep2.DERControlList(href=path, all_=total, results=len(page), DERControl=page))
    if parts[:1] == ["rsps"] and parts[2:] == ["rsp"]:
        if method == "POST":
            state.responses.append(sep2.parse(sep2.DERControlReply, body))
            return 201, b"", f"{path}/{len(state.responses)}"
        page, total = _page(query, state.responses)
        return _ok(sep2.ResponseList(href=path, all_=total, results=len(page), Response_=page))
    if parts[:1] == ["mup"]:
        return _mirror(state, method, parts[1:], query, body)
    return 404, b"", None


def _end_devices(state: ServerState, method: str, rest: list[str], query: dict[str, str],
                 body: bytes) -> tuple[int, bytes, str | None]:
    if not rest:
        if method == "POST":
            if not state.in_band_registration:
                return 403, b"", None
            posted = sep2.parse(sep2.EndDeviceRequest, body)
            lfdi = (posted.lFDI or "").upper()
            existing = next((d for d in state.devices if d.lfdi == lfdi or d.sfdi == posted.sFDI), None)
            if existing is None:
                existing = Device(len(state.devices) + 1, lfdi, posted.sFDI, state.default_pin,
                                  posted.changedTime, posted=True)
                state.devices.append(existing)
            return 201, b"", f"/edev/{existing.index}"
        page, total = _page(query, state.devices)
        return _ok(sep2.EndDeviceList(href="/edev", all_=total, results=len(page), pollRate=state.poll_rate,
                                      EndDevice=[_end_device(d) for d in page]))
    if not rest[0].isdigit() or not 1 <= int(rest[0]) <= len(state.devices):
        return 404, b"", None
    device = state.devices[int(rest[0]) - 1]
    if rest[1:2] == ["der"]:
        return _der(state, device, method, rest[2:], query, body)
    if method != "GET":
        return 405, b"", None
    if rest[1:] == []:
        return _ok(_end_device(device))
    if rest[1:] == ["rg"]:
        return _ok(sep2.Registration(href=f"/edev/{device.index}/rg", pollRate=state.poll_rate,
                                     dateTimeRegistered=device.changed_time, pIN=device.pin))
    if rest[1:] == ["fsa"]:
        fsa = sep2.FunctionSetAssignments(
            href=f"/edev/{device.index}/fsa/1", mRID=f"F5A{device.index:05d}",
            DERProgramListLink=sep2.ListLink(href="/derp", all_=len(state.programs)), TimeLink=sep2.Link(href="/tm"))
        page, total = _page(query, [fsa])
        return _ok(sep2.FunctionSetAssignmentsList(href=f"/edev/{device.index}/fsa", all_=total, results=len(page),
                                                   pollRate=state.poll_rate, FunctionSetAssignments=page))
    return 404, b"", None


_DER_PARTS = {"dercap": sep2.DERCapability, "derg": sep2.DERSettings, "ders": sep2.DERStatus}


def _der(state: ServerState, device: Device, method: str, rest: list[str], query: dict[str, str],
         body: bytes) -> tuple[int, bytes, str | None]:
    base = f"/edev/{device.index}/der"
    if method == "GET" and not rest:
        der = sep2.DER(href=f"{base}/1", DERCapabilityLink=sep2.Link(href=f"{base}/1/dercap"),
                       DERSettingsLink=sep2.Link(href=f"{base}/1/derg"), DERStatusLink=sep2.Link(href=f"{base}/1/ders"))
        page, total = _page(query, [der])
        return _ok(sep2.DERList(href=base, all_=total, results=len(page), pollRate=state.poll_rate, DER_=page))
    if len(rest) == 2 and rest[0] == "1" and rest[1] in _DER_PARTS:
        key = (device.index, rest[1])
        if method == "PUT":
            state.der_reports.setdefault(key, []).append(sep2.parse(_DER_PARTS[rest[1]], body))
            return 204, b"", None
        if method == "GET" and key in state.der_reports:
            return _ok(state.der_reports[key][-1])
    return 404, b"", None


def _end_device(device: Device) -> Any:
    return sep2.EndDevice(
        href=f"/edev/{device.index}", DERListLink=sep2.ListLink(href=f"/edev/{device.index}/der", all_=1),
        lFDI=device.lfdi, sFDI=device.sfdi, changedTime=device.changed_time,
        enabled=True, RegistrationLink=sep2.Link(href=f"/edev/{device.index}/rg"),
        FunctionSetAssignmentsListLink=sep2.ListLink(href=f"/edev/{device.index}/fsa", all_=1))


def _mirror(state: ServerState, method: str, rest: list[str], query: dict[str, str],
            body: bytes) -> tuple[int, bytes, str | None]:
    if not rest:
        if method == "POST":
            mup = sep2.parse(sep2.MirrorUsagePoint, body)
            for index, known in enumerate(state.mirror_usage_points, 1):
                if known.mRID == mup.mRID:
                    return 201, b"", f"/mup/{index}"
            state.mirror_usage_points.append(mup)
            return 201, b"", f"/mup/{len(state.mirror_usage_points)}"
        page, total = _page(query, state.mirror_usage_points)
        return _ok(sep2.MirrorUsagePointList(href="/mup", all_=total, results=len(page), pollRate=state.poll_rate,
                                             mirrorUsagePoints=page))
    if not rest[0].isdigit() or not 1 <= int(rest[0]) <= len(state.mirror_usage_points) or rest[1:]:
        return 404, b"", None
    index = int(rest[0])
    if method == "POST":
        root = body.lstrip()[:200]
        if re.search(rb"<MirrorMeterReadingList[\s>]", root):
            readings = sep2.parse(sep2.MirrorMeterReadingList, body).mirrorMeterReadings or []
        else:
            readings = [sep2.parse(sep2.MirrorMeterReading, body)]
        state.mirror_readings.extend((index, r) for r in readings)
        return 201, b"", f"/mup/{index}"
    mup = state.mirror_usage_points[index - 1].model_copy(update={"href": f"/mup/{index}", "postRate": state.post_rate})
    return _ok(mup)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, state: ServerState) -> None:
        super().__init__(address, _Handler)
        self.context = context
        self.state = state

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        sock.settimeout(10)
        # The handshake runs in the handler's thread (setup), so a slow client never blocks accept().
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:   # failed handshakes are the client's problem
        pass


class Sep2TestServer:
    """The server on ``127.0.0.1:port`` (0 = any free port) in a daemon thread; ``url`` once started."""

    def __init__(self, pki: LocalPki, aggregator_cert: Path, *, port: int = 0,
                 ciphers: tuple[str, ...] = (tls.CCM8,)) -> None:
        lfdi = identity_from_certificate(aggregator_cert.read_bytes()).lfdi
        self.state = ServerState(aggregator_lfdis={lfdi})
        self._context = tls.server_context(pki.ca, pki.server.cert, pki.server.key, ciphers)
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._mrids = itertools.count(1)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Sep2TestServer:
        self._server = _Server(("127.0.0.1", self._port), self._context, self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, name="sep2-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Sep2TestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Helpers that build resources the way a utility's head-end would.
    def add_program(self, primacy: int, default: Any = None, description: str = "") -> Program:
        with self.state.lock:
            program = Program(mrid=f"{0xD0000000 + next(self._mrids):08X}", primacy=primacy, default=default,
                              description=description)
            self.state.programs.append(program)
            return program

    def add_control(self, program: Program, base: Any, *, start: int, duration: int, creation: int | None = None,
                    status: int | None = None, response_required: str | None = "03", randomize_start: int | None = None,
                    randomize_duration: int | None = None) -> Any:
        """A DERControl in ``program``; ``start`` in server time; Responses go to ``/rsps/<program>/rsp``.

        ``status`` defaults as the standard says: Active when the start has passed, else Scheduled.
        """
        with self.state.lock:
            index = self.state.programs.index(program) + 1
            mrid = f"{0xC0000000 + next(self._mrids):08X}"
            control = sep2.DERControl(
                href=f"/derp/{index}/derc/{mrid}", mRID=mrid, replyTo=f"/rsps/{index}/rsp",
                responseRequired=response_required, creationTime=self.state.now() if creation is None else creation,
                EventStatus_=sep2.EventStatus(currentStatus=(int(start <= self.state.now()) if status is None
                                                             else status), dateTime=self.state.now(),
                                              potentiallySuperseded=False),
                interval=sep2.DateTimeInterval(start=start, duration=duration),
                randomizeStart=randomize_start, randomizeDuration=randomize_duration, DERControlBase_=base)
            program.controls.append(control)
            return control

    def set_status(self, control: Any, status: int) -> None:
        """Change a control's EventStatus (e.g. 2 cancelled, 4 superseded) as the server would."""
        with self.state.lock:
            control.EventStatus_ = sep2.EventStatus(currentStatus=status, dateTime=self.state.now(),
                                                    potentiallySuperseded=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devenv.sep2_server", description=__doc__.splitlines()[0])
    parser.add_argument("--pki", required=True, help="directory of the local PKI (created when missing)")
    parser.add_argument("--aggregator-cert", required=True, help="the client certificate allowed to connect")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--export-limit", type=int, help="issue an opModExpLimW control (W) starting now, 1 h")
    args = parser.parse_args(argv)
    server = Sep2TestServer(make_pki(args.pki), Path(args.aggregator_cert), port=args.port).start()
    program = server.add_program(primacy=1, default=sep2.DERControlBase(opModConnect=True))
    if args.export_limit is not None:
        server.add_control(program, sep2.DERControlBase(opModExpLimW=sep2.ActivePower(value=args.export_limit,
                                                                                       multiplier=0)),
                           start=server.state.now(), duration=3600)
    print(f"2030.5 test server on {server.url}/dcap", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
