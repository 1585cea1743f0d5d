"""The operator route end to end on real parts: nginx on the generated config (with the twin API's verifier) →
the real ems-northbound's command listener → the platform's broker config (Mosquitto with the generated roles) →
a real edge agent process → a Modbus write at the pymodbus simulator, read back → the outcome on
``GET /v1/commands/<id>``."""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from components.api_gateway import Upstream
from devenv.demo_edge import AgentProcess, Observer, write_agent_config
from devenv.mosquitto import free_port
from devenv.pki import CertPair, LocalPki, make_pki
from devenv.sep2_server import Sep2TestServer
from edge_agent.audit import decode_record
from ems_contract.telemetry import status_topic
from northbound.config import load_config
from northbound.metrics import NorthboundMetrics
from northbound.service import NorthboundService
from tests.components.test_broker_config import _start_broker
from tests.edge_agent.command_helpers import SITE, UNIT, SimulatorThread, writable_config, writable_config_text
from tests.gateway.conftest import Gateway
from tests.northbound.conftest import aggregator, sep2_server  # noqa: F401 (fixtures)
from tests.northbound.nb_helpers import write_broker_config

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}
GATEWAY_CN = "ems-api-gateway"      # the gateway's client certificate (components/platform.py), the listener's only caller


def _until(condition: Callable[[], Any], timeout: float, what: str, tail: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{tail()}")
        time.sleep(0.1)
    return found


@dataclass
class ControlPath:
    """The north-bound service running on its own loop in a thread, the edge agent process, the simulator."""

    service: NorthboundService
    agent: AgentProcess
    sim: SimulatorThread
    site_dir: Path
    operator_port: int

    def setpoint(self) -> float:
        return self.sim.sim.setpoint(UNIT, "EXPORT_LIMIT")


@pytest.fixture
def control_path(tmp_path: Path, pki: LocalPki, aggregator: CertPair,  # noqa: F811 (fixture)
                 sep2_server: Sep2TestServer) -> Iterator[ControlPath]:  # noqa: F811 (fixture)
    (tmp_path / "broker").mkdir()
    broker = _start_broker(tmp_path / "broker", pki)
    modbus_port, operator_port = free_port(), free_port()
    sim = SimulatorThread(writable_config(tmp_path, modbus_port), modbus_port).start()
    devices = tomllib.loads(writable_config_text(modbus_port))["devices"]
    site_dir = tmp_path / "site"
    edge_config = write_agent_config(site_dir, pki, broker_port=broker.tls_port, modbus_port=modbus_port,
                                     client=SITE, devices=devices, commands={"state_path": "commands.db"})
    observer = Observer(broker.plain_port, topic=f"ems/v1/{SITE}/status", client_id=f"ops-{operator_port}").start()
    agent = AgentProcess(edge_config)
    nb_path = write_broker_config(tmp_path / "nb.toml", pki, aggregator, url=sep2_server.url,
                                  broker_port=broker.tls_port, sites=(SITE,), extra=f"""[operator_api]
host = "127.0.0.1"
port = {operator_port}
max_ttl_s = 600
cert = "{pki.server.cert}"
key = "{pki.server.key}"
client_ca = "{pki.ca}"
client_cns = ["{GATEWAY_CN}"]
""")
    service = NorthboundService(load_config(nb_path), metrics=NorthboundMetrics())
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    runner = threading.Thread(target=lambda: loop.run_until_complete(service.run(stop)), name="northbound", daemon=True)
    agent.start()
    try:
        def online() -> bool:
            with observer.lock:
                return (status_topic(SITE), b"online", True) in observer.messages or \
                    any(t == status_topic(SITE) and p == b"online" for t, p, _ in observer.messages)
        _until(online, 30, "the edge agent online (subscribed)", agent.tail)
        runner.start()
        _until(lambda: service.operator_api is not None and service.link is not None and service.link.connected,
               20, "the north-bound's command listener and broker link")
        yield ControlPath(service, agent, sim, site_dir, operator_port)
    finally:
        if runner.is_alive():
            loop.call_soon_threadsafe(stop.set)
            runner.join(20)
        agent.stop(timeout=25)
        observer.stop()
        sim.stop()
        broker.proc.kill()
        broker.proc.wait(10)
        if runner.is_alive():
            pytest.fail("the north-bound service did not stop within 20 s of its stop event")
        loop.run_until_complete(loop.shutdown_default_executor())    # its executor's threads end here
        loop.close()


def _post(gw: Gateway, doc: object, raw: bytes | None = None, **who: Any) -> tuple[int, dict[str, Any]]:
    status, body, _ = gw.get("/v1/commands", method="POST", data=raw if raw is not None else json.dumps(doc).encode(),
                             headers={**JSON, **who.pop("headers", {})}, **who)
    return status, json.loads(body) if body.startswith(b"{") else {"raw": body[:200]}


def _listener(path: ControlPath) -> Upstream:
    """The command listener as nginx reaches it: HTTPS, its certificate verified for the name ``localhost``."""
    return Upstream("127.0.0.1", path.operator_port, "localhost")


def _outcome(gw: Gateway, command_id: str, path: ControlPath, **who: Any) -> dict[str, Any]:
    def answered() -> dict[str, Any] | None:
        status, body, _ = gw.get(f"/v1/commands/{command_id}", **who)
        assert status == 200, body
        doc = json.loads(body)
        return doc if doc["status"] != "pending" else None
    return _until(answered, 30, f"the edge's outcome of {command_id}", path.agent.tail)


def test_an_operator_command_is_applied_at_the_device_and_bounds_and_roles_hold(
        gateway_factory: Callable[..., Gateway], control_path: ControlPath) -> None:
    # The command rate limit out of the way here (its own check is below): 100 per second.
    gw = gateway_factory(northbound=_listener(control_path), upstream_client=GATEWAY_CN, command_rate_per_minute=6000)
    otto = gw.cert("otto", "operator")
    # A client's own identity headers are dropped by the gateway: the issuer is who authenticated.
    forged = {"X-Ems-User": "mallory", "X-Ems-Role": "admin", "X-Ems-Auth": "mtls"}
    status, doc = _post(gw, {"site": SITE, "control": "exp_lim_w", "value": 12000, "ttl_s": 120}, cert=otto,
                        headers=forged)
    assert status == 202, doc
    # The edge may answer before the 202 is built (a local broker is fast): pending or already applied.
    assert (doc["issuer"], doc["role"]) == ("cert:otto", "operator") and doc["status"] in ("pending", "applied"), doc
    assert doc["expires_ms"] - doc["issued_ms"] == 120_000
    done = _outcome(gw, doc["id"], control_path, cert=otto)
    assert (done["status"], done["readback"]) == ("applied", 12000.0), done
    assert control_path.setpoint() == 12000.0

    # Outside the point's declared bounds (max 50 kW): the contract carries it, the edge refuses it, nothing is written.
    writes = control_path.sim.sim.write_count(UNIT)
    status, doc = _post(gw, {"site": SITE, "control": "exp_lim_w", "value": 60000},
                        token=gw.issuer.token(sub="olga", groups=("ems-operators",)))
    assert status == 202 and doc["issuer"] == "olga", doc
    refused = _outcome(gw, doc["id"], control_path, cert=otto)
    assert refused["status"] == "rejected" and "60000" in refused["reason"], refused
    assert control_path.setpoint() == 12000.0 and control_path.sim.sim.write_count(UNIT) == writes

    # Viewers may not command (nor read commands), even claiming another role; nobody without credentials.
    viewer = gw.cert("ada", "viewer")
    body = {"site": SITE, "control": "exp_lim_w", "value": 1000}
    assert _post(gw, body, cert=viewer, headers={"X-Ems-Role": "operator"})[0] == 403
    assert _post(gw, body, token=gw.issuer.token(groups=("ems-viewers",)))[0] == 403
    assert gw.get(f"/v1/commands/{doc['id']}", cert=viewer)[0] == 403
    assert _post(gw, body)[0] == 401
    assert _post(gw, body, headers=forged)[0] == 401
    assert gw.get(f"/v1/commands/{doc['id']}")[0] == 401
    assert gw.denials("insufficient_role") == 3
    # Admins may; a boolean control too.
    status, doc = _post(gw, {"site": SITE, "control": "connect", "value": True}, cert=gw.cert("root", "admin"))
    assert status == 202 and doc["role"] == "admin", doc
    assert _outcome(gw, doc["id"], control_path, cert=otto)["status"] == "applied"

    # Hostile bodies: a 400 naming the field and the value, nothing published.
    published = control_path.service.metrics.command_publishes.labels("ok")._value.get()
    for bad, field, shown in [
        ({"site": SITE, "control": "exp_lim_w", "value": "12000"}, "value", "'12000'"),
        ({"site": SITE, "control": "exp_lim_w", "value": 1e12}, "value", "1000000000000.0"),
        ({"site": SITE, "control": "exp_lim_w", "value": 5, "ttl_s": 601}, "ttl_s", "601"),
        ({"site": SITE, "control": "exp_lim_w", "value": 5, "ttl_s": 0}, "ttl_s", "0"),
        ({"site": "sub-08", "control": "exp_lim_w", "value": 5}, "site", "'sub-08'"),
        ({"site": "../x", "control": "exp_lim_w", "value": 5}, "site", "'../x'"),
        ({"site": SITE, "control": "open_breaker", "value": 5}, "control", "'open_breaker'"),
        ({"site": SITE, "control": "connect", "value": 1}, "value", "1"),
        ({"site": SITE, "control": "exp_lim_w", "value": 5, "device": "inv1"}, "device", "'inv1'"),
        ({"site": SITE, "control": "exp_lim_w"}, "value", "None"),
        ([1, 2], "body", "[1, 2]"),
    ]:
        status, doc = _post(gw, bad, cert=otto)
        assert (status, doc.get("field"), doc.get("value")) == (400, field, shown), (bad, doc)
        assert field in doc["error"] and shown in doc["error"], doc
    for raw, field in [(b'{"site": "sub-07", "control": "exp_lim_w", "value": NaN}', "body"),
                       (b'{"site": "sub-07", "site": "sub-08", "control": "exp_lim_w", "value": 1}', "site"),
                       (b'{"site": "sub-07", "control": "exp_lim_w", "value": {"a": [1]}}', "body"),
                       (b'{"site": "sub-07", "control": "exp_lim_w", "value": 1', "body"),
                       (b'\xff\xfe{}', "body")]:
        status, doc = _post(gw, None, raw=raw, cert=otto)
        assert (status, doc.get("field")) == (400, field), (raw, doc)
    assert _post(gw, None, raw=b'{"site": "' + b"a" * 5000 + b'"}', cert=otto)[0] == 413      # nginx: 4 KiB on this route
    assert gw.get("/v1/commands/not-a-known-id", cert=otto)[0] == 404
    assert gw.get("/v1/commands/../../metrics", cert=otto)[0] == 404
    assert control_path.service.metrics.command_publishes.labels("ok")._value.get() == published
    assert control_path.service.metrics.registry.get_sample_value(
        "ems_northbound_manual_commands_total", {"role": "operator", "outcome": "bad_request"}) == 16

    # A client gets few commands a minute (here 1, burst 5), without holding back its reads or other clients.
    limited = gateway_factory(northbound=_listener(control_path), upstream_client=GATEWAY_CN, command_rate_per_minute=1)
    greedy = limited.cert("greedy", "operator")
    statuses = [limited.get("/v1/commands/0123abcd", cert=greedy)[0] for _ in range(10)]
    assert statuses[:6] == [404] * 6 and statuses.count(429) >= 3, statuses
    assert limited.get("/v1/commands/0123abcd", cert=limited.cert("patient", "operator"))[0] == 404
    assert limited.get("/v1/whoami", cert=greedy)[0] == 200

    # The edge audited who issued each manual command.
    control_path.agent.stop(timeout=25)
    records = [decode_record(line) for line in (control_path.site_dir / "telemetry-audit.log").read_bytes().splitlines()]
    issuers = {r.get("issuer") for r in records if r.get("k") == "cmd" and "issuer" in r}
    assert issuers == {"cert:otto", "olga", "cert:root"}, issuers



def _direct(path: ControlPath, pki: LocalPki, pair: CertPair | None, method: str, url_path: str,
            body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    """One request straight to the listener, around the gateway, with forged identity headers."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    if pair is not None:
        context.load_cert_chain(str(pair.cert), str(pair.key))
    conn = http.client.HTTPSConnection("localhost", path.operator_port, timeout=10, context=context)
    try:
        conn.request(method, url_path, body=body, headers={**JSON, **FORGED})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


FORGED = {"X-Ems-User": "cert:mallory", "X-Ems-Role": "admin", "X-Ems-Auth": "mtls"}


def test_only_the_gateways_certificate_reaches_the_command_listener(
        gateway_factory: Callable[..., Gateway], control_path: ControlPath, pki: LocalPki, tmp_path: Path) -> None:
    body = json.dumps({"site": SITE, "control": "exp_lim_w", "value": 9000}).encode()
    published = control_path.service.metrics.command_publishes.labels("ok")._value.get()
    # Around the gateway: no certificate, or one of another CA bearing the gateway's CN: the handshake is refused.
    rogue = make_pki(tmp_path / "rogue", ca_name="rogue-ca").client(GATEWAY_CN)
    for pair in (None, rogue):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _direct(control_path, pki, pair, "POST", "/v1/commands", body)
    # Valid certificates of the platform CA that are not the gateway's (an operator's, an admin's, a site's, the
    # north-bound's own broker identity): 403 whatever identity headers they forge, nothing published.
    for who in (pki.client("otto", "operator"), pki.client("root", "admin"), pki.client(SITE), pki.client("ems-northbound")):
        for method, url_path, data in (("POST", "/v1/commands", body), ("GET", "/v1/commands/0123abcd", None)):
            status, doc = _direct(control_path, pki, who, method, url_path, data)
            assert status == 403 and "may not call" in doc.get("error", ""), (who.cert.name, method, status, doc)
    assert control_path.service.metrics.registry.get_sample_value(
        "ems_northbound_manual_commands_total", {"role": "none", "outcome": "wrong_caller"}) == 8

    # A gateway that does not present its certificate gets nothing from the listener, and neither does its caller.
    without = gateway_factory(northbound=_listener(control_path))
    otto = without.cert("otto", "operator")
    assert _post(without, {"site": SITE, "control": "exp_lim_w", "value": 9000}, cert=otto)[0] == 502
    # nginx verifies the listener's certificate: one that does not name the upstream is refused (502), nothing sent.
    misnamed = gateway_factory(northbound=Upstream("127.0.0.1", control_path.operator_port, "northbound.elsewhere"),
                               upstream_client=GATEWAY_CN)
    assert _post(misnamed, {"site": SITE, "control": "exp_lim_w", "value": 9000}, cert=misnamed.cert("otto", "operator"))[0] == 502
    assert control_path.service.metrics.command_publishes.labels("ok")._value.get() == published

    # Through the real gateway with its certificate, the same operator is served.
    gw = gateway_factory(northbound=_listener(control_path), upstream_client=GATEWAY_CN)
    status, doc = _post(gw, {"site": SITE, "control": "exp_lim_w", "value": 9000}, cert=otto, headers=FORGED)
    assert status == 202 and (doc["issuer"], doc["role"]) == ("cert:otto", "operator"), doc
    assert _outcome(gw, doc["id"], control_path, cert=otto)["status"] == "applied"
    assert control_path.setpoint() == 9000.0
