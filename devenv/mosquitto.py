"""Start a real Mosquitto broker on 127.0.0.1 for the demo, tests and benchmarks.

The broker listens with mTLS (client certificate required, the certificate's
CN becomes the username) on one free port and, optionally, plain MQTT on
another (for test subscribers that only observe). Persistence is on, so a
broker stopped and started again keeps sessions and queued QoS 1 messages.
With ``dynsec`` (the text of a dynamic-security file, e.g. the platform's own from
``components.broker.dynsec_config``) the mTLS listener is governed as in the cluster:
the CN is also the client id and the file says who may publish, subscribe and receive what.

    with MosquittoBroker(workdir, pki) as broker:
        broker.tls_port, broker.plain_port
        broker.stop(kill=True); broker.start()      # fault injection
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from devenv.pki import LocalPki
from devenv.ports import free_port
from devenv.process import ManagedProcess, port_open, wait_until

__all__ = ["MosquittoBroker", "free_port", "wait_for_port", "find_mosquitto", "find_dynsec_plugin"]


def wait_for_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:port (``devenv.process.wait_until``)."""
    wait_until(lambda: port_open(port), timeout, f"listening on 127.0.0.1:{port}", proc)


def find_mosquitto() -> str:
    """Path of the mosquitto binary; raises with the install hint when missing."""
    path = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if not path:
        raise RuntimeError("mosquitto is not installed: run `make setup` (scripts/install-system-packages.sh)")
    return path


def find_dynsec_plugin() -> str:
    """Debian's dynamic-security plugin; raises with the install hint when missing."""
    found = sorted(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so"))
    if not found:
        raise RuntimeError("mosquitto_dynamic_security.so not found: run `make setup` (scripts/install-system-packages.sh)")
    return found[0]


class MosquittoBroker(ManagedProcess):
    """A Mosquitto process with its own config, persistence and log in ``workdir``."""

    def __init__(self, workdir: str | os.PathLike[str], pki: LocalPki, *, plain: bool = True,
                 tls_port: int | None = None, plain_port: int | None = None,
                 autosave_on_changes: bool = True, dynsec: str | None = None) -> None:
        super().__init__(Path(workdir) / "mosquitto.stderr")
        self.workdir = Path(workdir)
        self.pki = pki
        self.tls_port = tls_port or free_port()
        self.plain_port = (plain_port or free_port()) if plain else None
        self.autosave_on_changes = autosave_on_changes
        self.dynsec = dynsec
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            "per_listener_settings true",
            "user root" if os.geteuid() == 0 else "",
            "persistence true",
            f"persistence_location {self.workdir}/",
            # Save the in-memory state on every change: it narrows, but does not close, the window in
            # which a SIGKILL loses a message. Mosquitto 2.0 sends PUBACK before it saves, so a message
            # acknowledged at the instant of the kill and not yet written to a connected subscriber is
            # gone (README "Known limits"). Fault tests keep their subscribers connected.
            "autosave_interval 1" if self.autosave_on_changes else "autosave_interval 60",
            "autosave_on_changes true" if self.autosave_on_changes else "",
            "max_queued_messages 0",       # never drop queued QoS 1 messages for an offline subscriber
            "max_inflight_messages 100",
            "max_packet_size 1048576",
            f"log_dest file {self.log_path}",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            "connection_messages true",
            f"listener {self.tls_port} 127.0.0.1",
            f"cafile {self.pki.ca}",
            f"certfile {self.pki.server.cert}",
            f"keyfile {self.pki.server.key}",
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
        ]
        if self.dynsec is not None:
            dynsec_path = self.workdir / "dynamic-security.json"
            dynsec_path.write_text(self.dynsec)
            lines += ["use_username_as_clientid true", f"plugin {find_dynsec_plugin()}",
                      f"plugin_opt_config_file {dynsec_path}"]
        if self.plain_port:
            lines += [f"listener {self.plain_port} 127.0.0.1", "allow_anonymous true"]
        self.config_path.write_text("\n".join(line for line in lines if line) + "\n")

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self._write_config()
        self.spawn([find_mosquitto(), "-c", str(self.config_path)])
        try:
            wait_for_port(self.tls_port, timeout, self.proc)
            if self.plain_port:
                wait_for_port(self.plain_port, timeout, self.proc)
        except Exception as exc:
            tail = self.log_path.read_text()[-2000:] if self.log_path.exists() else ""
            self.stop(kill=True)
            raise RuntimeError(f"mosquitto did not start: {exc}\n{tail}") from exc

    def stop(self, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop the broker: SIGTERM (it saves its state) or, with ``kill``, SIGKILL."""
        self.terminate(timeout, kill=kill)
        self.proc = None

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def __enter__(self) -> "MosquittoBroker":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
