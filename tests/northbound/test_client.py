"""The function sets against the 2030.5 test server over CCM8 mutual TLS: discovery to Responses and mirrors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from devenv.pki import CertPair, LocalPki
from devenv.sep2_server import Sep2TestServer
from northbound import sep2, tls
from northbound.client import PointValue, Sep2Client
from northbound.config import load_config
from northbound.errors import RegistrationError, Sep2Error, ServerStatusError, TransportError
from northbound.events import ResponseStatus as R
from northbound.metrics import NorthboundMetrics
from northbound.transport import Sep2Transport
from tests.northbound.nb_helpers import write_config

MIRROR = """
[[mirror]]
site = "sub-07"
asset = "meter1"
point = "p_total"
reading = "active_power"
[[mirror]]
site = "sub-07"
asset = "meter1"
point = "v_an"
reading = "voltage"
[[mirror]]
site = "sub-07"
asset = "meter1"
point = "f"
reading = "frequency"
[[mirror]]
site = "sub-07"
asset = "meter1"
point = "e_imp"
reading = "energy_import"
multiplier = 3
"""


def exp_limit(watts: int, multiplier: int = 0) -> Any:
    return sep2.DERControlBase(opModExpLimW=sep2.ActivePower(value=watts, multiplier=multiplier))


def run(server: Sep2TestServer, pki: LocalPki, aggregator: CertPair, tmp_path: Path,
        body: Callable[[Sep2Client], Awaitable[Any]], *, page_size: int = 50, extra: str = "",
        clock: Callable[[], float] | None = None) -> Any:
    config = load_config(write_config(tmp_path / "nb.toml", pki, aggregator, url=server.url, extra=extra,
                                      mirror=MIRROR))

    async def go() -> Any:
        context = tls.client_context(config.server.ca, config.client.cert, config.client.key)
        metrics = NorthboundMetrics()
        async with Sep2Transport(config.server.url, context, timeout=3, page_size=page_size,
                                 observe=lambda fs, outcome: metrics.requests.labels(fs, outcome).inc()) as transport:
            kwargs = {"clock": clock} if clock else {}
            client = Sep2Client(transport, config, metrics, **kwargs)
            return await body(client)
    return asyncio.run(go())


async def registered(client: Sep2Client, site: str = "sub-07") -> Any:
    await client.discover()
    session = client.sessions[site]
    await client.register(session)
    return session


def test_discovery_time_offset_and_in_band_registration(sep2_server: Sep2TestServer, pki: LocalPki,
                                                        aggregator: CertPair, tmp_path: Path) -> None:
    sep2_server.state.clock_offset = 3600

    async def body(client: Sep2Client) -> Any:
        session = await registered(client)
        again = client.sessions["sub-07"]
        await client.register(again)                      # finds the device it created, does not POST again
        return client.offset, session
    offset, session = run(sep2_server, pki, aggregator, tmp_path, body)
    assert abs(offset - 3600) <= 1
    [device] = sep2_server.state.devices
    assert device.posted and device.lfdi == session.config.lfdi and device.sfdi == session.config.sfdi
    assert session.end_device == "/edev/1" and session.fsa_list == "/edev/1/fsa"
    posts = [r for r in sep2_server.state.requests if r[0] == "POST" and r[1] == "/edev"]
    assert posts == [("POST", "/edev", 201)]


def test_pre_registered_device_with_pin_and_paging(sep2_server: Sep2TestServer, pki: LocalPki,
                                                   aggregator: CertPair, tmp_path: Path) -> None:
    sep2_server.state.in_band_registration = False
    for i in range(5):                                    # other devices first: ours is on the third page of 2
        sep2_server.state.preregister(f"{i:040X}")
    config = load_config(write_config(tmp_path / "nb.toml", pki, aggregator))
    ours = sep2_server.state.preregister(config.sites[0].lfdi, pin=111115)

    async def body(client: Sep2Client) -> Any:
        return await registered(client)
    session = run(sep2_server, pki, aggregator, tmp_path, body, page_size=2)
    assert session.registered and session.end_device == f"/edev/{ours.index}"
    assert not any(r[0] == "POST" for r in sep2_server.state.requests)
    pages = [r[1] for r in sep2_server.state.requests if r[1].startswith("/edev?")]
    assert pages == ["/edev?s=0&l=2", "/edev?s=2&l=2", "/edev?s=4&l=2"]   # six devices, pages of two
    assert ("GET", f"/edev/{ours.index}/rg", 200) in sep2_server.state.requests


def test_pin_mismatch_and_unregistered_out_of_band(sep2_server: Sep2TestServer, pki: LocalPki,
                                                   aggregator: CertPair, tmp_path: Path) -> None:
    sep2_server.state.in_band_registration = False

    async def body(client: Sep2Client) -> Any:
        with pytest.raises(RegistrationError, match="refused registration \\(HTTP 403\\); waiting for out-of-band"):
            await registered(client)
        config = client.sessions["sub-07"].config
        sep2_server.state.preregister(config.lfdi, pin=222220)
        with pytest.raises(RegistrationError, match="Registration PIN differs"):
            await client.register(client.sessions["sub-07"])
        assert not client.sessions["sub-07"].registered
        sep2_server.state.devices[0].pin = 111115
        await client.register(client.sessions["sub-07"])
        return client.sessions["sub-07"].registered
    assert run(sep2_server, pki, aggregator, tmp_path, body) is True


def test_controls_by_primacy_with_default_and_responses(sep2_server: Sep2TestServer, pki: LocalPki,
                                                        aggregator: CertPair, tmp_path: Path) -> None:
    now = sep2_server.state.now()
    low = sep2_server.add_program(primacy=2, default=sep2.DERControlBase(opModExpLimW=sep2.ActivePower(
        value=10, multiplier=3), opModConnect=True))
    high = sep2_server.add_program(primacy=1)
    older = sep2_server.add_control(low, exp_limit(8000), start=now - 10, duration=3600, creation=now - 100)
    winner = sep2_server.add_control(high, exp_limit(15, 2), start=now - 10, duration=3600, creation=now - 200)
    future = sep2_server.add_control(high, exp_limit(1000), start=now + 7200, duration=60, response_required="01")
    for i in range(3):                                   # past events: listed, never run, paging of 2
        sep2_server.add_control(low, exp_limit(1), start=now - 9000 - i, duration=60, response_required="00")

    async def body(client: Sep2Client) -> Any:
        session = await registered(client)
        await client.poll_controls(session)
        selection = client.decide(session)
        posted = await client.post_responses(session)
        again = await client.post_responses(session)       # nothing twice
        return session, selection, posted, again
    session, selection, posted, again = run(sep2_server, pki, aggregator, tmp_path, body, page_size=2)
    assert selection.controls["exp_lim_w"].value == 1500.0 and selection.controls["exp_lim_w"].mrid == winner.mRID
    assert selection.controls["connect"].source == "default" and selection.controls["connect"].value is True
    assert len(session.events) == 6 and [d.values for d in session.defaults] == [{"exp_lim_w": 10000.0, "connect": True}]
    got = {(r.subject, r.status) for r in sep2_server.state.responses}
    assert got == {(winner.mRID, R.RECEIVED), (winner.mRID, R.STARTED), (older.mRID, R.RECEIVED),
                   (older.mRID, R.ABORTED_ALTERNATE_PROGRAM), (future.mRID, R.RECEIVED)}
    assert len(posted) == 5 and again == []
    assert {r.endDeviceLFDI for r in sep2_server.state.responses} == {session.config.lfdi}


def test_cancel_and_completion_follow_server_time(sep2_server: Sep2TestServer, pki: LocalPki,
                                                  aggregator: CertPair, tmp_path: Path) -> None:
    program = sep2_server.add_program(primacy=1)
    now = sep2_server.state.now()
    short = sep2_server.add_control(program, exp_limit(100), start=now - 5, duration=30)
    cancelled = sep2_server.add_control(program, sep2.DERControlBase(opModConnect=False), start=now - 5, duration=600)
    clock = {"t": float(now)}

    async def body(client: Sep2Client) -> Any:
        session = await registered(client)
        client.clock = lambda: clock["t"]
        client.offset = 0
        await client.poll_controls(session)
        client.decide(session)
        await client.post_responses(session)
        sep2_server.set_status(cancelled, 2)
        clock["t"] += 60                                    # past the short event's end
        await client.poll_controls(session)
        selection = client.decide(session)
        await client.post_responses(session)
        return selection
    selection = run(sep2_server, pki, aggregator, tmp_path, body)
    assert selection.controls == {}
    statuses = [(r.subject, r.status) for r in sep2_server.state.responses]
    assert statuses.count((short.mRID, R.COMPLETED)) == 1 and (cancelled.mRID, R.CANCELLED) in statuses


def test_invalid_control_gets_a_rejected_response(sep2_server: Sep2TestServer, pki: LocalPki,
                                                  aggregator: CertPair, tmp_path: Path) -> None:
    program = sep2_server.add_program(primacy=1)
    now = sep2_server.state.now()
    good = sep2_server.add_control(program, exp_limit(100), start=now - 5, duration=600)
    bad = sep2_server.add_control(program, exp_limit(100), start=now - 5, duration=600)
    out_of_range = sep2_server.add_control(program, exp_limit(100, 12), start=now - 5, duration=600)
    page = sep2.render(sep2.DERControlList(href="/derp/1/derc", all_=3, results=3,
                                           DERControl=[good, bad, out_of_range])).decode()
    # The server's second control loses its required interval: that one item is invalid, not the page.
    start = page.index("<interval>", page.index(bad.mRID))
    broken = page[:start] + page[page.index("</interval>", start) + len("</interval>"):]
    sep2_server.state.raw["/derp/1/derc"] = broken.encode()

    async def body(client: Sep2Client) -> Any:
        session = await registered(client)
        await client.poll_controls(session)
        client.decide(session)
        await client.post_responses(session)
        return session
    session = run(sep2_server, pki, aggregator, tmp_path, body)
    assert [e.mrid for e in session.events] == [good.mRID]
    statuses = {(r.subject, r.status) for r in sep2_server.state.responses}
    assert (bad.mRID, R.REJECTED_INVALID) in statuses and (out_of_range.mRID, R.REJECTED_INVALID) in statuses
    assert (good.mRID, R.STARTED) in statuses


def test_unparseable_list_and_server_errors_raise_typed_errors(sep2_server: Sep2TestServer, pki: LocalPki,
                                                               aggregator: CertPair, tmp_path: Path) -> None:
    sep2_server.add_program(primacy=1)

    async def body(client: Sep2Client) -> Any:
        session = await registered(client)
        sep2_server.state.raw["/derp/1/derc"] = b"<DERControlList xmlns='urn:ieee:std:2030.5:ns' all='1'"
        with pytest.raises(Sep2Error, match="malformed"):
            await client.poll_controls(session)
        sep2_server.state.fail_next = [500]
        with pytest.raises(ServerStatusError) as info:
            await client.discover()
        assert info.value.status == 500
        sep2_server.state.delay = 4
        with pytest.raises(TransportError, match="timed out"):
            await client.discover()
        sep2_server.state.delay = 0
        return client.metrics
    metrics = run(sep2_server, pki, aggregator, tmp_path, body)
    assert metrics.registry.get_sample_value("ems_northbound_requests_total",
                                             {"function_set": "dcap", "outcome": "500"}) == 1
    assert metrics.registry.get_sample_value("ems_northbound_requests_total",
                                             {"function_set": "dcap", "outcome": "error"}) == 1


def test_mirror_usage_point_and_scaled_readings(sep2_server: Sep2TestServer, pki: LocalPki,
                                                aggregator: CertPair, tmp_path: Path) -> None:
    values = {("meter1", "p_total"): PointValue(-4.25, "kW", 1_764_000_000_000),
              ("meter1", "v_an"): PointValue(230.46, "V", 1_764_000_000_000),
              ("meter1", "f"): PointValue(49.987, "Hz", 1_764_000_000_000),
              ("meter1", "e_imp"): PointValue(1234.5, "kWh", 1_764_000_000_000)}

    async def body(client: Sep2Client) -> Any:
        session = await registered(client)
        first = await client.mirror(session, values)
        second = await client.mirror(session, {("meter1", "p_total"): PointValue(1.0, "degC", 0)})  # wrong unit
        return session, first, second, client.post_interval(session), client.offset
    session, first, second, interval, offset = run(sep2_server, pki, aggregator, tmp_path, body)
    assert (first, second, interval) == (4, 0, sep2_server.state.post_rate)
    [mup] = sep2_server.state.mirror_usage_points
    assert mup.deviceLFDI == session.config.lfdi and mup.roleFlags == "03"
    assert [m.readingType.uom for m in mup.mirrorMeterReadings] == [38, 29, 33, 72]
    got = {m.description: (m.reading.value, m.readingType.powerOfTenMultiplier, m.readingType.uom)
           for _, m in sep2_server.state.mirror_readings}
    assert got == {"meter1/p_total": (-4250, 0, 38), "meter1/v_an": (2305, -1, 29),
                   "meter1/f": (4999, -2, 33), "meter1/e_imp": (1234, 3, 72)}
    assert {m.reading.timePeriod.start for _, m in sep2_server.state.mirror_readings} == {1_764_000_000 + offset}


def test_der_capability_settings_and_status(sep2_server: Sep2TestServer, pki: LocalPki, aggregator: CertPair,
                                            tmp_path: Path) -> None:
    der = ('[sites.sub-08.der]\ntype = 83\nrated_w = 250000\nmax_w = 200000\nrated_var = 1000\ngrad_w = 27\n'
           'connected_point = "inv1/connected"\n')

    async def body(client: Sep2Client) -> Any:
        session = await registered(client, "sub-08")
        assert await client.report_der(session, {("inv1", "connected"): PointValue(1.0, "", 0)})
        assert await client.report_der(session, {("inv1", "connected"): PointValue(0.0, "", 0)})
        assert not await client.report_der(client.sessions["sub-07"], {})     # no [der]: nothing to report
        return session
    run(sep2_server, pki, aggregator, tmp_path, body, extra=der)
    reports = sep2_server.state.der_reports
    [cap] = reports[(1, "dercap")]
    assert (cap.type_, cap.rtgMaxW.value, cap.rtgMaxW.multiplier, cap.modesSupported, cap.doeModesSupported) == \
        (83, 25000, 1, "0C", "0F")
    [settings] = reports[(1, "derg")]
    assert (settings.setMaxW.value, settings.setMaxW.multiplier, settings.setGradW) == (20000, 1, 27)
    assert [s.genConnectStatus.value for s in reports[(1, "ders")]] == ["07", "02"]
    assert all(s.operationalModeStatus.value == 2 for s in reports[(1, "ders")])
