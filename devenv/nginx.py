"""The API gateway's proxy, nginx (Debian's ``nginx-core``), run on a config from ``components/api_gateway.py``.

``NginxGateway(workdir, config_text)`` writes the config, checks it with ``nginx -t`` (a bad config
fails here with nginx's own message), starts nginx in the foreground in its own session, and
waits until it accepts connections on ``port``. Its error log goes to ``workdir/nginx.log``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from devenv.process import ManagedProcess, port_open, wait_until

__all__ = ["NginxGateway", "find_nginx"]


def find_nginx() -> str:
    """The nginx binary; raises with the install hint when there is none."""
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("nginx not found: run scripts/install-system-packages.sh (Debian package nginx-core)")


class NginxGateway(ManagedProcess):
    """One nginx master (and its workers) on 127.0.0.1:``port``."""

    def __init__(self, workdir: str | os.PathLike[str], config_text: str, port: int) -> None:
        super().__init__(Path(workdir) / "nginx.log")
        self.workdir = Path(workdir)
        self.config_text = config_text
        self.port = port
        self.config_path = self.workdir / "nginx.conf"

    def start(self, timeout: float = 15.0) -> "NginxGateway":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text)
        command = [find_nginx(), "-e", "stderr", "-p", str(self.workdir), "-c", str(self.config_path)]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused the generated config:\n{check.stderr}")
        self.spawn(command)
        try:
            wait_until(lambda: port_open(self.port), timeout, f"listening on 127.0.0.1:{self.port}", self.proc)
        except (RuntimeError, TimeoutError) as exc:
            self.terminate(kill=True)
            raise RuntimeError(f"nginx did not start: {exc}\n{self.tail()}") from exc
        return self

    def stop(self) -> None:
        # SIGQUIT is nginx's graceful stop; SIGTERM its fast one: a test wants it gone.
        self.terminate(timeout=10)

    def __enter__(self) -> "NginxGateway":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
