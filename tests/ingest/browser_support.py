"""A headless Chromium (the Debian package) driven over the DevTools protocol, and a real Alertmanager.

``HeadlessChromium`` starts ``chromium --headless`` with its own profile and a DevTools port,
attaches to its page over the WebSocket and records every console error, uncaught exception
and browser log error (CSP violations, failed loads) in ``errors``. It trusts exactly one
server key (``--ignore-certificate-errors-spki-list``), the test PKI's, and no other.

``AlertmanagerProcess`` is ``prometheus-alertmanager`` (Debian) on a free port, without a
cluster, with a receiver that delivers nowhere: tests post alerts to its v2 API.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

import websocket
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from devenv.mosquitto import free_port
from devenv.process import ManagedProcess

__all__ = ["HeadlessChromium", "AlertmanagerProcess", "spki_sha256"]


def spki_sha256(cert_path: Path) -> str:
    """Base64 SHA-256 of a certificate's SubjectPublicKeyInfo, as Chromium's SPKI allow-list wants it."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _wait_http(url: str, timeout: float, proc: ManagedProcess) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if proc.proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.proc.returncode}:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # nosec B310 # 127.0.0.1, built here
                return json.loads(resp.read() or b"null")
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer in {timeout:.0f}s:\n{proc.tail()}") from None
            time.sleep(0.2)


class HeadlessChromium(ManagedProcess):
    def __init__(self, workdir: Path, *, trusted_cert: Path, size: tuple[int, int] = (1400, 1100)) -> None:
        super().__init__(workdir / "chromium.log")
        self.workdir = workdir
        self.port = free_port()
        self.trusted_cert = trusted_cert
        self.size = size
        self.errors: list[str] = []
        self._ws: websocket.WebSocket | None = None
        self._ids = itertools.count(1)

    def start(self) -> "HeadlessChromium":
        binary = shutil.which("chromium")
        if binary is None:
            raise RuntimeError("chromium is not installed: run `make setup` (scripts/install-system-packages.sh)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.spawn([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                    "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                    f"--user-data-dir={self.workdir / 'profile'}", f"--remote-debugging-port={self.port}",
                    "--remote-allow-origins=*", f"--window-size={self.size[0]},{self.size[1]}",
                    f"--ignore-certificate-errors-spki-list={spki_sha256(self.trusted_cert)}", "about:blank"])
        targets = []
        deadline = time.monotonic() + 30
        while not targets:
            targets = [t for t in _wait_http(f"http://127.0.0.1:{self.port}/json/list", 30, self) if t["type"] == "page"]
            if time.monotonic() > deadline:
                raise RuntimeError(f"chromium shows no page target:\n{self.tail()}")
            time.sleep(0.1)
        self._ws = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=30)
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")
        return self

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are recorded."""
        assert self._ws is not None
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._record(message)

    def _record(self, event: dict[str, Any]) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
            self.errors.append(f"console.{params['type']}: " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
            entry = params["entry"]
            self.errors.append(f"log {entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluate failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Evaluate ``expression`` until it is truthy (an exception counts as not yet: the page may be loading)."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError as exc:
                value = exc
            else:
                if value:
                    return value
            time.sleep(0.25)
        raise AssertionError(f"{expression!r} still {value!r} after {timeout:.0f}s; browser errors: {self.errors}")

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def stop(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None
        self.terminate(10)


class AlertmanagerProcess(ManagedProcess):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir / "alertmanager.log")
        self.workdir = workdir
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "AlertmanagerProcess":
        binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        if binary is None:
            raise RuntimeError("alertmanager is not installed: run `make setup` (scripts/install-system-packages.sh)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "alertmanager.yml"
        config.write_text("route:\n  receiver: nowhere\n  group_wait: 1s\nreceivers:\n  - name: nowhere\n")
        self.spawn([binary, f"--config.file={config}", f"--storage.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=", "--log.level=warn"])
        _wait_http(f"{self.url}/api/v2/status", 30, self)
        return self

    def raise_alert(self, labels: dict[str, str], annotations: dict[str, str]) -> None:
        """POST one firing alert, as Prometheus does."""
        body = json.dumps([{"labels": labels, "annotations": annotations}]).encode()
        request = urllib.request.Request(f"{self.url}/api/v2/alerts", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:  # nosec B310 # 127.0.0.1, built here
            assert resp.status == 200, resp.status

    def stop(self) -> None:
        self.terminate(10)
