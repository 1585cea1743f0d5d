"""The config-reloader sidecar's script (components/config_reload.py) against real Prometheus and Alertmanager.

The config volume is laid out and updated as the kubelet does it (devenv/kubelet_volume.py); the script runs
under busybox ``sh`` (the images' shell). The process to signal is started under a name of its own (a
symlink to the binary), so the script's ``pidof`` finds this test's process and nobody else's.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from components.alertmanager import alertmanager_config
from components.alerts import AlertReceiver
from components.config_reload import reload_script
from devenv.alertmanager import find_alertmanager
from devenv.kubelet_volume import KubeletVolume
from devenv.mosquitto import free_port
from devenv.process import ManagedProcess, http_ok, wait_until
from devenv.prometheus import find_prometheus
from ingest.remote_write import Sample, encode_write_request

pytestmark = pytest.mark.integration


def _busybox() -> str:
    path = shutil.which("busybox")
    if path is None:
        raise RuntimeError("busybox is not installed: run `make setup` (scripts/install-system-packages.sh)")
    return path


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:  # nosec B310 # http://127.0.0.1 of the test's own server
        return json.loads(resp.read())


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:  # nosec B310 # the test's own server
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in {url}/metrics")


def _named_binary(tmp_path: Path, binary: str, stem: str) -> Path:
    link = tmp_path / "bin" / f"{stem}-{secrets.token_hex(4)}"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(binary)
    return link


@dataclass
class Watched:
    """A server started under a name of its own, on ``url``, with the reloader watching its files."""

    url: str
    server: ManagedProcess
    reloader: ManagedProcess
    pid: int

    def same_process(self) -> bool:
        return self.server.running and self.server.proc is not None and self.server.proc.pid == self.pid


@contextmanager
def _watched(tmp_path: Path, binary: str, args: Callable[[int], list[str]], files: list[Path]) -> Iterator[Watched]:
    """Start ``binary`` (as ``<name>-<random>``) with ``args(port)``, wait for ``/-/ready``, then the reloader's script
    under busybox sh for ``files``; stop both afterwards."""
    named = _named_binary(tmp_path, binary, Path(binary).name)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server, reloader = ManagedProcess(tmp_path / "server.log"), ManagedProcess(tmp_path / "reloader.log")
    try:
        proc = server.spawn([str(named), *args(port)])
        wait_until(lambda: http_ok(url + "/-/ready"), 30, f"{named.name} ready", proc)
        reloader.spawn([_busybox(), "sh", "-c", reload_script(named.name, [str(f) for f in files], interval_s=1)])
        wait_until(lambda: "watching" in reloader.tail(), 10, "the reloader started", reloader.proc)
        yield Watched(url, server, reloader, proc.pid)
    finally:
        reloader.terminate(5)
        server.terminate()


def _rules(alert: str) -> bytes:
    return yaml.safe_dump({"groups": [{"name": "t", "rules": [{"alert": alert, "expr": "vector(1)"}]}]}).encode()


def _prometheus_yml(rules: str) -> bytes:
    return f"global:\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\n".encode()


def _alert_names(url: str) -> list[str]:
    return [r["name"] for g in _get(url + "/api/v1/rules")["data"]["groups"] for r in g["rules"]]


def test_prometheus_reloads_changed_rules_in_place_and_keeps_serving_a_bad_change(tmp_path: Path) -> None:
    config = KubeletVolume(tmp_path / "config")
    conf, rules = config.root / "prometheus.yml", config.root / "ems-alerts.yml"
    config.publish({"prometheus.yml": _prometheus_yml(str(rules)), "ems-alerts.yml": _rules("First")})
    args = lambda port: [f"--config.file={conf}", f"--storage.tsdb.path={tmp_path / 'data'}",  # noqa: E731
                         f"--web.listen-address=127.0.0.1:{port}"]
    with _watched(tmp_path, find_prometheus(), args, [conf, rules]) as tsdb:
        assert _alert_names(tsdb.url) == ["First"]
        reloads = _metric(tsdb.url, "prometheus_config_last_reload_success_timestamp_seconds")

        config.publish({"prometheus.yml": _prometheus_yml(str(rules)), "ems-alerts.yml": _rules("Second")})
        wait_until(lambda: _alert_names(tsdb.url) == ["Second"], 30, "the new rule loaded", tsdb.server.proc)
        assert tsdb.same_process()                                             # reloaded, not restarted
        assert _metric(tsdb.url, "prometheus_config_last_reload_success_timestamp_seconds") > reloads
        assert "SIGHUP sent to prometheus-" in tsdb.reloader.tail()

        # An invalid file: Prometheus refuses it, logs why and keeps the loaded rules; the reloader does not loop.
        config.publish({"prometheus.yml": _prometheus_yml(str(rules)), "ems-alerts.yml": b"groups: [{name: t, rules: [{alert: }]}]\n"})
        wait_until(lambda: _metric(tsdb.url, "prometheus_config_last_reload_successful") == 0, 30, "the bad change refused",
                   tsdb.server.proc)
        assert _alert_names(tsdb.url) == ["Second"] and tsdb.same_process()
        assert tsdb.reloader.tail().count("SIGHUP sent") == 2


def _remote_write(url: str, ts_ms: int) -> int:
    body = encode_write_request([Sample((("__name__", "ems_test"), ("site", "sub-01")), ts_ms, 1.0, "sub-01", 1)])
    request = urllib.request.Request(url + "/api/v1/write", data=body, method="POST", headers={
        "Content-Encoding": "snappy", "Content-Type": "application/x-protobuf", "X-Prometheus-Remote-Write-Version": "0.1.0"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:  # nosec B310 # the test's own server
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_longer_spool_horizon_reaches_the_running_tsdb(tmp_path: Path) -> None:
    """``ems:spoolHorizon`` is the TSDB's out-of-order window: after the reload, a replayed reading older than the old
    window is accepted by the same process."""
    config = KubeletVolume(tmp_path / "config")
    conf = config.root / "prometheus.yml"
    window = "storage:\n  tsdb:\n    out_of_order_time_window: {}\n"
    config.publish({"prometheus.yml": window.format("10m").encode()})
    args = lambda port: [f"--config.file={conf}", f"--storage.tsdb.path={tmp_path / 'data'}",  # noqa: E731
                         f"--web.listen-address=127.0.0.1:{port}", "--web.enable-remote-write-receiver"]
    with _watched(tmp_path, find_prometheus(), args, [conf]) as tsdb:
        now_ms = int(time.time() * 1000)
        assert _remote_write(tsdb.url, now_ms) == 204
        five_hours_ago = now_ms - 5 * 3600 * 1000
        assert _remote_write(tsdb.url, five_hours_ago) >= 400                  # outside the 10m window: refused
        config.publish({"prometheus.yml": window.format("72h").encode()})
        wait_until(lambda: _remote_write(tsdb.url, five_hours_ago) == 204, 30, "the old reading accepted", tsdb.server.proc)
        assert tsdb.same_process()


def test_alertmanager_reloads_a_new_receiver_in_place_and_keeps_its_silences(tmp_path: Path) -> None:
    def config_file(*names: str) -> bytes:
        receivers = tuple(AlertReceiver(n) for n in names)
        return alertmanager_config(receivers, {n: f"https://hooks.example.net/{n}" for n in names}).encode()

    config = KubeletVolume(tmp_path / "config")
    conf = config.root / "alertmanager.yml"
    config.publish({"alertmanager.yml": config_file("ops")})
    args = lambda port: [f"--config.file={conf}", f"--storage.path={tmp_path / 'data'}",  # noqa: E731
                         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]
    with _watched(tmp_path, find_alertmanager(), args, [conf]) as am:
        silence = {"matchers": [{"name": "site", "value": "sub-01", "isRegex": False}], "startsAt": "2026-01-01T00:00:00Z",
                   "endsAt": "2099-01-01T00:00:00Z", "createdBy": "test", "comment": "maintenance"}
        request = urllib.request.Request(am.url + "/api/v2/silences", data=json.dumps(silence).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as resp:  # nosec B310 # the test's own server
            silence_id = json.loads(resp.read())["silenceID"]
        assert "oncall" not in _get(am.url + "/api/v2/status")["config"]["original"]

        config.publish({"alertmanager.yml": config_file("ops", "oncall")})
        wait_until(lambda: "oncall" in _get(am.url + "/api/v2/status")["config"]["original"], 30, "the new receiver loaded",
                   am.server.proc)
        assert am.same_process()
        assert [s["id"] for s in _get(am.url + "/api/v2/silences") if s["status"]["state"] == "active"] == [silence_id]


def test_reload_script_needs_files_and_an_interval() -> None:
    with pytest.raises(ValueError, match="at least one file and an interval of 1 s or more"):
        reload_script("prometheus", [])
    with pytest.raises(ValueError, match="at least one file"):
        reload_script("prometheus", ["/etc/prometheus/prometheus.yml"], interval_s=0)
