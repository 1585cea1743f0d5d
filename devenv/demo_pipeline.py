"""Pipeline demo: simulator → edge agent → Mosquitto (mTLS) → ems-ingest → Prometheus → PromQL,
and the north-bound step: a 2030.5 export limit → ems-northbound → the site's register → Responses.

    python -m devenv.demo_pipeline [--seconds 12] [--workdir DIR]

Starts, all on 127.0.0.1 and free ports: a throw-away PKI, Mosquitto (its mTLS
listener governed by the platform's generated dynamic-security roles for this
demo's identities: site ``sub-07``, ingest ``ingest-0``, twin API ``twin-api`` and
``ems-northbound``, which alone may command ``sub-07``), a real
Prometheus (remote-write receiver, 30d out-of-order window; the generated alert rules,
scraping the twin API's metrics), an Alertmanager, the Modbus simulator (in-process,
``devenv.demo_alert``), the edge agent with ``edge_agent/examples/sensors.conf`` (copied into
the work folder with its ports and paths rewritten), one ingest worker
(``ems-ingest run``) and the twin API (``ems-ingest twin-api``, its operator page reading that
Alertmanager). While the agent runs, the simulator raises E04 on tx1's relay; the demo waits
(at most 60 s) for ``EmsPlcFault`` to fire in Alertmanager and on the page's alert list, then
clears it and waits for it to resolve (with ``--hold`` it stays firing). After
``--seconds`` (or the alert step, if longer) it stops the agent (SIGTERM flushes its spool), waits for the
ingest to drain, and prints PromQL results with their values, the comparison
with the agent's audit log (lost / duplicated), the ingest's own metrics and
one asset's twin read over HTTPS, then the address of the operator page (``--hold SECONDS`` keeps
everything running that long afterwards, the edge agent restarted, to look at it). Meanwhile
``devenv.demo_northbound`` runs the 2030.5 test server and ``ems-northbound`` against the same
broker, twin API and simulator, and prints registration, mirrored readings, the register read
back and the Responses the server recorded.

``write_ingest_config()`` and ``IngestProcess`` are reused by the ingest tests
and benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from edge_agent.audit import read_audit
from devenv.process import ManagedProcess
from devenv.mosquitto import MosquittoBroker, free_port, wait_for_port
from devenv.pki import LocalPki, make_pki
from devenv.prometheus import PrometheusServer
from northbound import tls

if TYPE_CHECKING:
    from devenv.demo_alert import AlertStep, ThreadedSimulator

__all__ = ["write_ingest_config", "IngestProcess", "main"]

ROOT = Path(__file__).resolve().parents[1]


def write_ingest_config(path: Path, *, broker: MosquittoBroker, pki: LocalPki, prometheus: PrometheusServer,
                        client_id: str, state_dir: Path, metrics_port: int, group: str = "ems-ingest",
                        max_readings: int = 500, max_delay_s: float = 0.05, receive_maximum: int = 200,
                        twin_api_port: int | None = None, max_age_s: float | None = None,
                        max_future_s: float | None = None, alertmanager_url: str | None = None,
                        loss_horizon_s: int | None = None, workers: tuple[str, ...] = ()) -> Path:
    """An ingest config (TOML) for local services; the client certificate is issued for ``client_id``.

    ``max_age_s`` / ``max_future_s`` set the ``[time]`` window, ``loss_horizon_s`` the ``[state]`` loss
    horizon (the ingest's defaults otherwise); ``workers`` the ``[state]`` group of workers (client
    ids, the first counts packet loss for all).
    """
    pair = pki.client(client_id)
    twin = ""
    if twin_api_port is not None:
        twin = (f'[twin_api]\nhost = "127.0.0.1"\nport = {twin_api_port}\ncert = "{pki.server.cert}"\n'
                f'key = "{pki.server.key}"\nclient_id = "{client_id}-twin"\n')
        if alertmanager_url is not None:
            twin += f'alertmanager_url = "{alertmanager_url}"\n'
    times = "".join(f"{key} = {value}\n" for key, value in (("max_age_s", max_age_s), ("max_future_s", max_future_s))
                    if value is not None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""shutdown_grace_s = 5
[broker]
host = "127.0.0.1"
port = {broker.tls_port}
ca = "{pki.ca}"
cert = "{pair.cert}"
key = "{pair.key}"
client_id = "{client_id}"
group = "{group}"
session_expiry_s = 3600
receive_maximum = {receive_maximum}
[tsdb]
remote_write_url = "{prometheus.remote_write_url}"
timeout_s = 2
max_backoff_s = 0.5
[batch]
max_readings = {max_readings}
max_delay_s = {max_delay_s}
[state]
dir = "{state_dir}"
{f"loss_horizon_s = {loss_horizon_s}" if loss_horizon_s is not None else ""}
{f"workers = {json.dumps(list(workers))}" if workers else ""}
[metrics]
host = "127.0.0.1"
port = {metrics_port}
[time]
{times}{twin}""")
    return path


def _ems_ingest() -> list[str]:
    script = Path(sys.executable).parent / "ems-ingest"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ingest.cli"]


class IngestProcess(ManagedProcess):
    """``ems-ingest run`` as a subprocess (SIGKILL is a real crash), with its /metrics readable."""

    def __init__(self, workdir: Path, *, broker: MosquittoBroker, pki: LocalPki, prometheus: PrometheusServer,
                 client_id: str = "ingest-0", **config: object) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir / "ingest.log")
        self.workdir = workdir
        self.metrics_port = free_port()
        self.config_path = write_ingest_config(workdir / "ingest.toml", broker=broker, pki=pki,
                                               prometheus=prometheus, client_id=client_id,
                                               state_dir=workdir / "state", metrics_port=self.metrics_port,
                                               **config)  # type: ignore[arg-type]

    def start(self, command: str = "run") -> "IngestProcess":
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.spawn(_ems_ingest() + ["--log-level", "debug", command, "--config", str(self.config_path)],
                   cwd=ROOT, env=env)
        if command == "run":
            wait_for_port(self.metrics_port, 15, self.proc)
            self.wait_metric("ems_ingest_broker_connected", lambda v: v == 1, timeout=15)
        return self

    def stop(self) -> None:
        """Clean-up after a test or the demo: SIGKILL (a graceful stop is ``terminate``)."""
        self.kill()

    def metrics(self) -> dict[str, float]:
        """The /metrics samples as ``{'name{labels}': value}``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:  # nosec B310 # a fixed 127.0.0.1 URL built here
            text = resp.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def metric(self, key: str) -> float:
        return self.metrics().get(key, 0.0)

    def wait_metric(self, key: str, predicate: Callable[[float], bool], timeout: float = 20) -> float:
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"ingest exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                value = self.metric(key)
                if predicate(value):
                    return value
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{key} = {value} after {timeout}s\n{self.tail()}")



SITE = "sub-07"
INGEST_ID, TWIN_ID = "ingest-0", "twin-api"


def demo_roles() -> str:
    """The broker's dynamic-security file for this demo's identities, as ``components.broker`` generates it."""
    from components.broker import dynsec_config
    from devenv.demo_northbound import NORTHBOUND_IDENTITY

    return dynsec_config((SITE,), (INGEST_ID,), "ems-ingest", (TWIN_ID,), (NORTHBOUND_IDENTITY,), (SITE,))


def main(argv: list[str] | None = None) -> int:
    from devenv.demo_alert import AlertStep, ThreadedSimulator
    from devenv.demo_edge import AgentProcess, write_agent_config
    from devenv.demo_northbound import ExportLimitPoint, NorthboundDemo

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--workdir", help="keep everything here (default: a temporary folder)")
    parser.add_argument("--hold", type=float, default=0.0, metavar="SECONDS",
                        help="after the report, keep the services (and the edge agent) running this long, "
                             "to look at the operator page")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ems-demo-pipeline-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {workdir}")
    pki = make_pki(workdir / "pki")
    broker = MosquittoBroker(workdir / "broker", pki, dynsec=demo_roles())
    prometheus = PrometheusServer(workdir / "prometheus")
    sim_port = free_port()
    sim = ThreadedSimulator(sim_port)
    alerting = AlertStep(workdir / "alertmanager")
    site_config = write_agent_config(workdir / "site", pki, broker_port=broker.tls_port, modbus_port=sim_port,
                                     client=SITE)
    agent = AgentProcess(site_config)
    twin_port = free_port()
    ingest = IngestProcess(workdir / "ingest", broker=broker, pki=pki, prometheus=prometheus,
                           client_id=INGEST_ID, twin_api_port=twin_port)
    twin_api = IngestProcess(workdir / "twin-api", broker=broker, pki=pki, prometheus=prometheus,
                             client_id=TWIN_ID, twin_api_port=twin_port, alertmanager_url=alerting.url)
    alerting.configure(prometheus, twin_api.metrics_port)
    northbound = NorthboundDemo(workdir / "northbound", pki, site=SITE, broker_port=broker.tls_port,
                                twin_port=twin_port, modbus_port=sim_port,
                                export_limit=ExportLimitPoint.from_config(site_config))
    try:
        broker.start()
        print(f"mosquitto:  mTLS on 127.0.0.1:{broker.tls_port}")
        alerting.start()
        print(f"alertmanager: {alerting.url} (no receiver; the operator page reads it)")
        prometheus.start()
        print(f"prometheus: {prometheus.url} (remote write {prometheus.remote_write_url}; the generated alert "
              f"rules {alerting.rules}, scraping the twin API's metrics :{twin_api.metrics_port})")
        sim.start()
        print(f"simulator:  Modbus TCP on 127.0.0.1:{sim_port}")
        ingest.start()
        print(f"ingest:     ems-ingest run --config {ingest.config_path} (metrics :{ingest.metrics_port})")
        twin_api.start("twin-api")
        wait_for_port(twin_port, 15, twin_api.proc)
        print(f"twin API:   https://127.0.0.1:{twin_port}")
        agent.start()
        print(f"edge agent: ems-edge run --config {site_config} (for {args.seconds:.0f}s)")
        northbound.start()
        print(f"north-bound: ems-northbound run --config {northbound.config_path} → {northbound.server.url} "
              f"(2030.5 test server, mutual TLS, {tls.CCM8} only)")
        alert_ok = _alert_step(alerting, sim, twin_port, pki, args.seconds, keep_firing=args.hold > 0)
        northbound_ok = northbound.report()
        code = agent.stop()
        print(f"edge agent exited with code {code} after SIGTERM")
        audited = read_audit(site_config.parent / "telemetry-audit.log").readings
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            handled = sum(ingest.metric(f'ems_ingest_readings_total{{outcome="{o}"}}') for o in ("written", "null"))
            if handled >= len(audited):
                break
            time.sleep(0.2)
        print(f"ems-northbound exited with code {northbound.stop()} after SIGTERM")
        result = _report(prometheus, ingest, audited, twin_port, pki, northbound_ok, alert_ok)
        print(f"\noperator page: https://127.0.0.1:{twin_port}/#site=sub-07&asset=tx1 "
              f"(TLS from the demo CA {pki.ca}; same server and authentication as the twin API)")
        print(f"Grafana:       not run locally (no Debian package); the stacks deploy it behind the gateway at "
              f"https://<api host>/grafana/ with dashboards/*.json, and Prometheus here is {prometheus.url}")
        print(f"Alertmanager:  {alerting.url}/#/alerts")
        if args.hold > 0:
            agent.start()
            print(f"holding for {args.hold:.0f}s with the edge agent running again (Ctrl-C ends it)", flush=True)
            try:
                time.sleep(args.hold)
            except KeyboardInterrupt:
                pass
        return result
    finally:
        northbound.stop()
        agent.stop()
        twin_api.stop()
        ingest.stop()
        sim.stop()
        prometheus.stop()
        alerting.stop()
        broker.stop()


def _alert_step(alerting: AlertStep, sim: ThreadedSimulator, twin_port: int, pki: LocalPki, seconds: float, *,
                keep_firing: bool) -> bool:
    """While the agent runs ``seconds`` (longer if the alert takes longer): E04 raised, its alert firing in
    Alertmanager and on the operator page's list, then cleared and resolved unless ``keep_firing``."""
    started = time.monotonic()
    time.sleep(min(2.0, seconds / 2))            # telemetry flows first; E04 then arrives as a change
    ok = alerting.raise_and_wait(sim, timeout=60) is not None and alerting.on_operator_page(twin_port, pki.ca)
    print(f"see it on the operator page https://127.0.0.1:{twin_port}/#site=sub-07&asset=tx1 "
          f"and in Alertmanager {alerting.url}/#/alerts")
    if ok and keep_firing:
        print("E04 stays raised while the demo holds")
    elif ok:
        ok = alerting.clear_and_wait(sim, timeout=60)
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    return ok


def _report(prometheus: PrometheusServer, ingest: IngestProcess, audited: dict[int, dict], twin_port: int,
            pki: LocalPki, northbound_ok: bool, alert_ok: bool) -> int:
    client = prometheus.client()
    now = time.time()
    query = 'ems_reading{site="sub-07"}'
    print(f"\nPromQL> {query}")
    for item in sorted(client.query(query, at=now), key=lambda i: (i["metric"]["asset"], i["metric"]["point"])):
        m = item["metric"]
        ts, value = item["value"]
        print(f"  {m['asset']:<8} {m['point']:<20} {float(value):>12.4g} {m.get('unit', ''):<5} "
              f"quality={m['quality']:<10} ts={time.strftime('%H:%M:%S', time.gmtime(float(ts)))}")
    count_q = 'sum by (asset) (count_over_time(ems_reading{site="sub-07"}[10m]))'
    print(f"\nPromQL> {count_q}")
    for item in sorted(client.query(count_q, at=now), key=lambda i: i["metric"]["asset"]):
        print(f"  {item['metric']['asset']:<8} {int(float(item['value'][1])):>5} samples")

    expected = {(r["asset"], r["point"], r["q"], r["ts_ms"]): float(r["value"])
                for r in audited.values() if r["value"] is not None}
    times = [r["ts_ms"] for r in audited.values()] or [int(now * 1000)]
    raw = client.raw_samples('ems_reading{site="sub-07"}', min(times) - 1, max(times) + 1)
    stored: dict[tuple[str, str, str, int], list[float]] = {}
    for key, samples in raw.items():
        labels = dict(key)
        for ts, value in samples:
            stored.setdefault((labels["asset"], labels["point"], labels["quality"], ts), []).append(value)
    lost = sum(1 for k in expected if k not in stored)
    duplicated = sum(len(v) - 1 for v in stored.values())
    wrong = sum(1 for k, v in expected.items() if k in stored and stored[k][0] != v)
    nulls = sum(1 for r in audited.values() if r["value"] is None)
    print(f"\naudited readings: {len(audited)} ({nulls} null, not written); samples expected: {len(expected)}; "
          f"stored: {sum(len(v) for v in stored.values())}; lost: {lost}; duplicated: {duplicated}; "
          f"wrong value: {wrong}")
    m = ingest.metrics()
    print("ingest: " + ", ".join(f"{k}={m.get(k, 0):g}" for k in (
        "ems_ingest_messages_total", 'ems_ingest_readings_total{outcome="written"}',
        'ems_ingest_readings_total{outcome="null"}', "ems_ingest_duplicates_total",
        "ems_ingest_messages_per_second", "ems_ingest_write_duration_seconds_count")))
    context = ssl.create_default_context(cafile=str(pki.ca))
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{twin_port}/v1/assets/sub-07/tx1", context=context,  # nosec B310 # a fixed 127.0.0.1 URL built here
                                    timeout=5) as resp:
            twin = json.load(resp)
        points = ", ".join(f"{p}={v.get('value')}" for p, v in sorted(twin["points"].items()))
        print(f"twin API> GET /v1/assets/sub-07/tx1 → {points}")
        thermal = twin.get("thermal")
        if thermal:
            print("           thermal model → " + ", ".join(f"{k}={v}" for k, v in sorted(thermal.items())))
        q = urllib.parse.urlencode({"query": 'count(ems_reading{site="sub-07"})'})
        with urllib.request.urlopen(f"https://127.0.0.1:{twin_port}/v1/query?{q}", context=context,  # nosec B310 # a fixed 127.0.0.1 URL built here
                                    timeout=5) as resp:
            print(f"twin API> GET /v1/query?{q} → {json.load(resp)['data']['result'][0]['value'][1]} series")
    except (OSError, KeyError, IndexError) as exc:
        print(f"twin API: {exc}")
    ok = bool(expected) and lost == 0 and duplicated == 0 and wrong == 0 and northbound_ok and alert_ok
    if not northbound_ok:
        print("north-bound step: PROBLEM (see above)")
    if not alert_ok:
        print("alert step: PROBLEM (see above)")
    print("RESULT:", "OK" if ok else "PROBLEM")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
