"""The demo's alert step: one PLC fault raised on purpose, followed to Alertmanager and the operator page.

The simulator makes tx1's relay report E04 (register 20 = 4, the example sensors.conf's fault map);
the edge agent turns it into an active fault on the twin; the twin API exports it as
``ems_twin_fault_active``; Prometheus, scraping that ``/metrics`` every second, evaluates the
platform's generated rules (``components.alerts.alert_rules()``, not a copy) and sends
``EmsPlcFault`` to a real Alertmanager, which the twin API's operator page reads.

    sim = ThreadedSimulator(port); sim.start()          # the example devices, faults on demand
    step = AlertStep(workdir / "alertmanager")           # rules file + Alertmanager (no receiver)
    step.configure(prometheus, twin_api.metrics_port)    # before prometheus.start()
    step.raise_and_wait(sim, timeout=60)                 # the firing alert, or None
    step.on_operator_page(twin_port, ca)                 # the twin API's /v1/alerts lists it
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from devenv.alertmanager import AlertmanagerServer
from devenv.mosquitto import wait_for_port
from devenv.process import wait_until
from devenv.prometheus import PrometheusServer
from edge_agent.simulator import Simulator

__all__ = ["ThreadedSimulator", "AlertStep", "ALERT", "FAULT"]

ALERT = "EmsPlcFault"
FAULT = {"site": "sub-07", "asset": "tx1", "point": "relay_fault", "code": "E04"}


class ThreadedSimulator:
    """The Modbus simulator with the example config's devices, on its own event loop in a daemon thread.

    In-process (unlike ``ems-edge simulate``) so the demo can call ``raise_fault`` / ``clear_fault``.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self._sim: Simulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 20.0) -> None:
        ready = threading.Event()

        async def serve() -> None:
            self._stopped = asyncio.Event()
            async with Simulator.default(port=self.port) as sim:
                self._sim = sim
                ready.set()
                await self._stopped.wait()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(serve())
            except Exception as exc:  # noqa: BLE001 reported by start(); the thread must not die silently
                self._error = exc
            finally:
                ready.set()
                self._loop.close()

        self._thread = threading.Thread(target=run, name="demo-simulator", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or self._sim is None:
            raise RuntimeError(f"the simulator did not start on 127.0.0.1:{self.port}: {self._error!r}")
        wait_for_port(self.port, timeout)

    def raise_fault(self, asset: str, point: str, code: str) -> None:
        # A dict assignment the server's loop reads on the next request: safe across threads under the GIL.
        assert self._sim is not None
        self._sim.raise_fault(asset, point, code)

    def clear_fault(self, asset: str, point: str) -> None:
        assert self._sim is not None
        self._sim.clear_fault(asset, point)

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and self._thread is not None:
            if self._thread.is_alive():
                self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(10)
        self._thread = None


class AlertStep:
    """The generated rules file and an Alertmanager (routes from ``components.alertmanager``, no receiver)."""

    def __init__(self, workdir: Path) -> None:
        # The Pulumi program's generators, imported here: devenv is installed with the commands, components is not.
        from components.alertmanager import alertmanager_config
        from components.alerts import alert_rules

        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.rules = workdir / "ems-alerts.yml"
        self.rules.write_text(alert_rules())
        # No receiver: the demo reads Alertmanager's API, and the operator page does the same.
        self.alertmanager = AlertmanagerServer(workdir, alertmanager_config((), {}, group_wait="1s",
                                                                            group_interval="1s"))

    @property
    def url(self) -> str:
        return self.alertmanager.url

    def configure(self, prometheus: PrometheusServer, twin_metrics_port: int) -> None:
        """Before ``prometheus.start()``: scrape the twin API's metrics, evaluate the rules, alert here (every 1 s)."""
        prometheus.scrape_targets = (f"127.0.0.1:{twin_metrics_port}",)
        prometheus.scrape_interval = "1s"
        prometheus.rule_files = (self.rules,)
        prometheus.alertmanagers = (self.alertmanager.address,)

    def start(self) -> None:
        self.alertmanager.start()

    def stop(self) -> None:
        self.alertmanager.stop()

    def fault_alerts(self, state: str | None = "active") -> list[dict[str, Any]]:
        """The ``EmsPlcFault`` alerts of FAULT's point in Alertmanager in ``state`` (any when None).

        Alertmanager's API lists no resolved alert (Prometheus sent its end), so an empty list is resolved.
        """
        return [a for a in self.alertmanager.alerts()
                if a["labels"].get("alertname") == ALERT and state in (None, a["status"].get("state"))
                and all(a["labels"].get(k) == v for k, v in FAULT.items())]

    def raise_and_wait(self, sim: ThreadedSimulator, timeout: float = 60.0) -> dict[str, Any] | None:
        """Raise FAULT in the simulator; the alert once Alertmanager holds it, None after ``timeout``."""
        sim.raise_fault(FAULT["asset"], FAULT["point"], FAULT["code"])
        started = time.monotonic()
        print(f"\nsimulator: {FAULT['code']} raised on {FAULT['asset']}/{FAULT['point']} (relay register 20 = 4)",
              flush=True)
        alerts = _wait(self.fault_alerts, timeout)
        if not alerts:
            print(f"alert: {ALERT} not in Alertmanager after {timeout:.0f}s: PROBLEM")
            return None
        alert = alerts[0]
        labels = alert["labels"]
        print(f"alert: {ALERT} firing in Alertmanager {time.monotonic() - started:.1f}s later: "
              f"{labels['code']} {labels.get('text', '')} ({labels.get('severity', '?')}) on "
              f"{labels['site']}/{labels['asset']}/{labels['point']}")
        print(f"       summary: {alert['annotations'].get('summary', '')}")
        print(f"       runbook: {alert['annotations'].get('runbook', '')}")
        return alert

    def on_operator_page(self, twin_port: int, ca: Path) -> bool:
        """Whether the twin API's ``/v1/alerts`` (what the operator page shows) lists the fault's alert."""
        context = ssl.create_default_context(cafile=str(ca))
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{twin_port}/v1/alerts", context=context,  # nosec B310 # a fixed 127.0.0.1 URL built here
                                        timeout=5) as resp:
                alerts = json.load(resp)["alerts"]
        except (OSError, ValueError, KeyError) as exc:
            print(f"operator page: GET /v1/alerts failed: {exc}")
            return False
        shown = [a for a in alerts if a["labels"].get("alertname") == ALERT
                 and all(a["labels"].get(k) == v for k, v in FAULT.items())]
        names = ", ".join(sorted({str(a["labels"].get("alertname")) for a in alerts}))
        print(f"twin API> GET /v1/alerts (the operator page's alert list) → {len(alerts)} firing ({names}), "
              + (f"{ALERT} {FAULT['code']} among them" if shown else f"{ALERT} missing: PROBLEM"))
        return bool(shown)

    def clear_and_wait(self, sim: ThreadedSimulator, timeout: float = 60.0) -> bool:
        """Clear FAULT in the simulator; True once Alertmanager no longer lists its alert as active."""
        sim.clear_fault(FAULT["asset"], FAULT["point"])
        started = time.monotonic()
        resolved = bool(_wait(lambda: not self.fault_alerts(state=None), timeout))
        print(f"simulator: {FAULT['code']} cleared → {ALERT} "
              + (f"resolved in Alertmanager {time.monotonic() - started:.1f}s later" if resolved
                 else f"still active after {timeout:.0f}s: PROBLEM"))
        return resolved


def _wait(check: Callable[[], Any], timeout: float) -> Any:
    """``check()`` every 0.25 s until it is truthy (returned) or ``timeout`` passes (None)."""
    try:
        return wait_until(check, timeout, "seen", interval=0.25)
    except TimeoutError:
        return None
