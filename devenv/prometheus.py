"""Start a real Prometheus (the Debian package, 2.42) on 127.0.0.1 for tests, the demo and benchmarks.

The server gets its own data directory, config file and free port, accepts
remote-write (``--web.enable-remote-write-receiver``) and out-of-order samples
(``storage.tsdb.out_of_order_time_window`` in the config file, supported since
2.39), so a spool replayed after an outage is accepted with its original
timestamps. Samples older than the window are still rejected: tests must use
timestamps inside it.

    with PrometheusServer(workdir) as prom:
        prom.remote_write_url                      # http://127.0.0.1:<port>/api/v1/write
        prom.raw_samples('ems_reading{site="s1"}', start_ms, end_ms)
        prom.stop(kill=True); prom.start()         # fault injection; the TSDB survives

``PromClient`` is the small query helper (instant, range and raw-sample queries)
used by tests, the demo and the twin API's pass-through.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from devenv.process import ManagedProcess, http_ok, wait_until
from devenv.mosquitto import free_port

__all__ = ["PrometheusServer", "PromClient", "PromQueryError", "find_prometheus"]


def find_prometheus() -> str:
    """Path of the prometheus binary; raises with the install hint when missing."""
    path = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None)
    if not path:
        raise RuntimeError("prometheus is not installed: run `make setup` (scripts/install-system-packages.sh)")
    return path


class PromQueryError(RuntimeError):
    """The Prometheus HTTP API answered with an error (or not at all)."""


class PromClient:
    """Minimal client for the Prometheus HTTP API (``/api/v1/...``), stdlib only."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, Any] | list[tuple[str, Any]]) -> Any:
        url = f"{self.base_url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:  # nosec B310 # base_url: PrometheusServer.url, http://127.0.0.1
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise PromQueryError(f"GET {path} failed with HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise PromQueryError(f"GET {path} failed: {exc}") from exc
        if body.get("status") != "success":
            raise PromQueryError(f"GET {path}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; returns ``data.result`` (vector, or matrix for a range selector)."""
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self._get("/api/v1/query", params)["result"]

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return self._get("/api/v1/query_range", {"query": promql, "start": f"{start:.3f}",
                                                 "end": f"{end:.3f}", "step": step})["result"]

    def series(self, match: str, start: float | None = None, end: float | None = None) -> list[dict[str, str]]:
        params: list[tuple[str, Any]] = [("match[]", match)]
        if start is not None:
            params.append(("start", f"{start:.3f}"))
        if end is not None:
            params.append(("end", f"{end:.3f}"))
        return self._get("/api/v1/series", params)

    def raw_samples(self, selector: str, start_ms: int, end_ms: int) -> dict[tuple[tuple[str, str], ...], list[tuple[int, float]]]:
        """Every stored sample of ``selector`` with ``start_ms < ts <= end_ms``, per series.

        Uses a range selector evaluated at ``end_ms``, which returns raw samples
        (no lookback, no interpolation). Keys are the sorted label pairs
        (including ``__name__``); values are ``(ts_ms, value)`` in time order.
        """
        seconds = max(1, -(-(end_ms - start_ms) // 1000))
        result = self.query(f"{selector}[{seconds}s]", at=end_ms / 1000)
        out: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
        for item in result:
            key = tuple(sorted(item["metric"].items()))
            out[key] = [(round(float(ts) * 1000), float(v)) for ts, v in item["values"]
                        if round(float(ts) * 1000) > start_ms]
        return out


class PrometheusServer(ManagedProcess):
    """A Prometheus process with its own config, data directory and log in ``workdir``.

    Defaults: out-of-order window 30d, retention 90d, no scrape targets except
    those passed in ``scrape_targets`` (``host:port`` strings, scraped every
    ``scrape_interval``), the rule files in ``rule_files`` (evaluated as often), and
    ``alertmanagers`` (``host:port``) receive the alerts.
    """

    def __init__(self, workdir: str | os.PathLike[str], *, port: int | None = None,
                 out_of_order_window: str = "30d", retention: str = "90d",
                 scrape_targets: tuple[str, ...] = (), scrape_interval: str = "1s",
                 rule_files: tuple[str | Path, ...] = (), alertmanagers: tuple[str, ...] = (),
                 query_timeout: str | None = None, query_max_samples: int | None = None) -> None:
        super().__init__(Path(workdir) / "prometheus.log")
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.out_of_order_window = out_of_order_window
        self.retention = retention
        self.scrape_targets = scrape_targets
        self.scrape_interval = scrape_interval
        self.rule_files = rule_files
        self.query_limits = ([f"--query.timeout={query_timeout}"] if query_timeout else []) + \
            ([f"--query.max-samples={query_max_samples}"] if query_max_samples else [])
        self.alertmanagers = alertmanagers
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "prometheus.yml"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def remote_write_url(self) -> str:
        return f"{self.url}/api/v1/write"

    def client(self, timeout: float = 10.0) -> PromClient:
        return PromClient(self.url, timeout)

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            "global:",
            f"  scrape_interval: {self.scrape_interval}",
            f"  evaluation_interval: {self.scrape_interval}",
            "storage:",
            "  tsdb:",
            f"    out_of_order_time_window: {self.out_of_order_window}",
        ]
        if self.rule_files:
            lines += ["rule_files:", *(f"  - {json.dumps(str(p))}" for p in self.rule_files)]
        if self.alertmanagers:
            managers = ", ".join(json.dumps(a) for a in self.alertmanagers)
            lines += ["alerting:", "  alertmanagers:", "    - static_configs:", f"        - targets: [{managers}]"]
        if self.scrape_targets:
            targets = ", ".join(json.dumps(t) for t in self.scrape_targets)
            lines += ["scrape_configs:", "  - job_name: ems", "    static_configs:", f"      - targets: [{targets}]"]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 30.0) -> None:
        """Start (or keep) the server and wait until ``/-/ready`` answers 200."""
        if self.running:
            return
        self._write_config()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.spawn(
            [find_prometheus(), f"--config.file={self.config_path}", f"--storage.tsdb.path={self.data_dir}",
             f"--storage.tsdb.retention.time={self.retention}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--web.enable-remote-write-receiver", "--web.enable-lifecycle", "--log.level=warn", *self.query_limits])
        try:
            self.wait_ready(timeout)
        except Exception as exc:
            tail = self.tail(2000)
            self.stop(kill=True)
            raise RuntimeError(f"prometheus did not become ready: {exc}\n{tail}") from exc

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_until(lambda: http_ok(f"{self.url}/-/ready"), timeout, f"ready ({self.url}/-/ready 200)", self.proc, 0.1)

    def stop(self, kill: bool = False, timeout: float = 20.0) -> None:
        """Stop the server: SIGTERM (clean shutdown) or, with ``kill``, SIGKILL (WAL replay on start)."""
        self.terminate(timeout, kill=kill)
        self.proc = None

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def __enter__(self) -> "PrometheusServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
