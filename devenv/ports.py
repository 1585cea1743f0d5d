"""TCP ports for local services that no other process on this machine is handed at the same time.

Binding port 0, closing and returning the number (the usual trick) races: the kernel may hand the
same port to the next caller, or to any outgoing connection as its source port, before the service
binds it, and with four pytest-xdist workers (and other developers' runs) two services then get one
port. Here a port is taken from below the kernel's ephemeral range (``ip_local_port_range``), which
the kernel never picks for ``bind(0)`` or ``connect``, it is checked free by binding it, and it is
claimed in a machine-wide claims folder under a lock: no ``free_port`` caller in any process gets
it again for ``ttl`` seconds, time enough for the caller's service to bind it, nor while the process
that claimed it lives (a module-scoped service may be stopped and restarted on its port much later).

The claims folder sits in the shared temporary directory under a predictable name, so it is trusted
only when it is a real directory owned by this user with mode 0700, and its files are opened without
following symbolic links: another local user cannot make a root test run truncate or create a file
elsewhere.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import random
import socket
import stat
import tempfile
import time
from pathlib import Path

__all__ = ["PortClaims", "free_port"]


def unclaimed_range() -> range:
    """The ports below the kernel's ephemeral range (above it when that starts too low), at most 12,000."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999                     # Linux's default
    if low >= 12000:
        return range(max(10000, low - 12000), low)
    if high >= 65535:
        raise RuntimeError(f"ip_local_port_range is {low} {high}: no port range is left that the kernel does not "
                           "hand out itself; narrow it (sysctl net.ipv4.ip_local_port_range)")
    return range(high + 1, min(65536, high + 1 + 12000))


class PortClaims:
    """Claims on ports, one file per port in ``folder``; a claim lasts ``ttl`` seconds."""

    def __init__(self, folder: Path, ttl: float = 600.0, ports: range | None = None) -> None:
        self.folder = folder
        self.ttl = ttl
        self.ports = ports if ports is not None else unclaimed_range()

    def claim(self) -> int:
        """A port that is free on 127.0.0.1 now and unclaimed; raises when every port is claimed or taken."""
        self._trusted_folder()
        start = random.randrange(len(self.ports))     # from a random place: fewer claimed ports to skip
        candidates = itertools.chain(self.ports[start:], self.ports[:start])
        lock = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)         # one claimer at a time, across processes
            now = time.time()
            for port in candidates:
                if self._live(self.folder / str(port), now) or not _bindable(port):
                    continue
                self._write(self.folder / str(port))  # a new claim, or a stale one taken over
                return port
        finally:
            os.close(lock)
        raise RuntimeError(f"no free port in {self.ports.start}-{self.ports.stop - 1}: every one is claimed "
                           f"(claims in {self.folder}, {self.ttl:.0f} s each or while their process lives) or in use")

    def _trusted_folder(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(self.folder)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise RuntimeError(f"port claims folder {self.folder} is not a directory of uid {os.getuid()} with mode "
                               f"0700 (owner {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}); remove it")

    def _live(self, claim: Path, now: float) -> bool:
        """A claim younger than ``ttl``, or whose claiming process still runs."""
        try:
            fd = os.open(claim, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return False
        try:
            if now - os.fstat(fd).st_mtime < self.ttl:
                return True
            owner = os.read(fd, 32).strip()
        finally:
            os.close(fd)
        try:
            os.kill(int(owner), 0)
        except (ValueError, ProcessLookupError):
            return False
        except PermissionError:                      # a process of another user has that pid: alive
            pass
        return True

    @staticmethod
    def _write(claim: Path) -> None:
        fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)


def _bindable(port: int) -> bool:
    """Nothing is bound to 127.0.0.1:port (nor lingers there: no SO_REUSEADDR, so TIME_WAIT counts)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_CLAIMS = PortClaims(Path(tempfile.gettempdir()) / f"ems-port-claims-{os.getuid()}")


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 and that no other caller on this machine gets for 10 minutes."""
    return _CLAIMS.claim()
