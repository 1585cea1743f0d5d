"""Start a real Alertmanager (the Debian package prometheus-alertmanager, 0.25) on 127.0.0.1 for tests and the demo.

    with AlertmanagerServer(workdir, config_text) as am:
        am.address                                  # 127.0.0.1:<port>, for Prometheus' alerting config
        am.alerts()                                 # GET /api/v2/alerts

The server gets its own config file, storage directory and free port; clustering
is off (``--cluster.listen-address=``), so one process is the whole Alertmanager.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from devenv.mosquitto import free_port
from devenv.process import ManagedProcess, http_ok, wait_until

__all__ = ["AlertmanagerServer", "find_alertmanager"]


def find_alertmanager() -> str:
    """Path of the Alertmanager binary; raises with the install hint when missing."""
    for name in ("prometheus-alertmanager", "alertmanager"):
        path = shutil.which(name)
        if path:
            return path
    if os.path.exists("/usr/bin/prometheus-alertmanager"):
        return "/usr/bin/prometheus-alertmanager"
    raise RuntimeError("prometheus-alertmanager is not installed: run `make setup` (scripts/install-system-packages.sh)")


class AlertmanagerServer(ManagedProcess):
    """An Alertmanager process with ``config_text`` as its alertmanager.yml, in ``workdir``."""

    def __init__(self, workdir: str | os.PathLike[str], config_text: str, *, port: int | None = None) -> None:
        super().__init__(Path(workdir) / "alertmanager.log")
        self.workdir = Path(workdir)
        self.config_text = config_text
        self.port = port or free_port()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until ``/-/ready`` answers 200."""
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "alertmanager.yml"
        config.write_text(self.config_text)
        (self.workdir / "data").mkdir(exist_ok=True)
        self.spawn([find_alertmanager(), f"--config.file={config}", f"--storage.path={self.workdir / 'data'}",
                    f"--web.listen-address={self.address}", "--cluster.listen-address=", "--log.level=warn"])
        try:
            wait_until(lambda: http_ok(f"{self.url}/-/ready"), timeout, f"ready ({self.url}/-/ready 200)", self.proc, 0.1)
        except (RuntimeError, TimeoutError) as exc:
            tail = self.tail(2000)
            self.terminate(kill=True)
            raise RuntimeError(f"alertmanager did not become ready: {exc}\n{tail}") from exc

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds (``/api/v2/alerts``), inhibited and silenced ones included."""
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5.0) as resp:  # nosec B310 # http://127.0.0.1
            return json.load(resp)

    def stop(self, timeout: float = 20.0) -> None:
        self.terminate(timeout)
        self.proc = None

    def __enter__(self) -> "AlertmanagerServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
