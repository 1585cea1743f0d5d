"""Change detection for a set of files that are loaded together (a CA, a certificate and its key).

``FileSetWatch.poll(load)`` is what a rotation check calls every few seconds. It
compares each file's (device, inode, mtime, size) with the state last loaded —
cheap enough to run forever — and only when that moved compares the files'
SHA-256 (a ``touch`` or a Secret re-projection of the same bytes is no change).
Then it calls ``load``; the result counts only if the files did not move while
it ran (a pair still being written is looked at again next time). When ``load``
raises, that state of the files is remembered and the exception re-raised once:
the caller logs it once and keeps what it has, and nothing is retried until the
files change again.

``CertificateWatch`` is the rotation check every EMS process runs on its certificate, key and
CA: a ``FileSetWatch`` over them, one warning per state of the files that does not load, and the
poll loop, as a thread's target (``watch``) or an asyncio task (``watch_async``). The edge agent's
and the ingest's MQTT links and ``ems_runtime.server_tls`` (the twin API, the north-bound command
listener) use it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

from ems_runtime.tls import error_reason

__all__ = ["CertificateWatch", "FileSetWatch"]

T = TypeVar("T")


class FileSetWatch:
    """Remembers the state of ``paths`` last loaded; ``poll`` reloads when their content changed."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = tuple(Path(p) for p in paths)
        self._signature: tuple | None = None
        self._digest: str | None = None
        self._refused: tuple | None = None

    def signature(self) -> tuple:
        """(device, inode, mtime, size) of each file; a missing file contributes its errno."""
        signature = []
        for path in self.paths:
            try:
                st = os.stat(path)
            except OSError as exc:
                signature.append(("missing", exc.errno))
            else:
                signature.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(signature)

    def digest(self) -> str | None:
        """SHA-256 over the files' bytes, or None when one cannot be read."""
        digest = hashlib.sha256()
        try:
            for path in self.paths:
                digest.update(path.read_bytes())
                digest.update(b"\0")
        except OSError:
            return None
        return digest.hexdigest()

    def load(self, load: Callable[[], T]) -> T:
        """The first load: ``load()``'s result (its exception propagates), its files' state remembered.

        The state is taken before ``load`` runs, so files that change during it are loaded again by ``poll``.
        """
        signature, digest = self.signature(), self.digest()
        loaded = load()
        self._signature, self._digest, self._refused = signature, digest, None
        return loaded

    def poll(self, load: Callable[[], T]) -> T | None:
        """``load()``'s result when the files changed and stayed put while it ran, else None.

        An exception from ``load`` propagates once per state of the files; that state is then ignored.
        """
        signature = self.signature()
        if signature == self._signature or signature == self._refused:
            return None
        digest = self.digest()
        if digest is not None and digest == self._digest:       # touched, not changed
            self._signature = signature
            return None
        try:
            loaded = load()
        except BaseException:
            self._refused = signature
            raise
        if self.signature() != signature:                      # still being written: look again next time
            return None
        self._signature, self._digest, self._refused = signature, digest, None
        return loaded


class CertificateWatch(Generic[T]):
    """A certificate, its key and (optionally) a CA, watched for a rotation; ``load()`` builds what they serve.

    ``load`` raises one of ``errors`` when the files are not a readable, matching set. ``first()`` is the
    load at start (its exception propagates: a bad pair at start is the caller's error). ``check()``
    returns a new build when the files changed and loaded, else None; a changed set that does not
    load is logged once as a warning naming ``what``, the certificate and the key (never their
    content), and None returned: the caller keeps what it has. ``watch`` and ``watch_async`` run
    ``check()`` every ``every_s`` and hand each new build to ``switch``; they outlive any one failing
    check or switch (logged with its traceback).
    """

    def __init__(self, cert: Path, key: Path, ca: Path | None, load: Callable[[], T], *,
                 errors: tuple[type[BaseException], ...], logger: logging.Logger, what: str = "certificate") -> None:
        self.cert, self.key, self.ca = Path(cert), Path(key), Path(ca) if ca is not None else None
        self.what = what
        self.log = logger
        self._load = load
        self._errors = errors
        self._files = FileSetWatch(((self.ca,) if self.ca is not None else ()) + (self.cert, self.key))

    def first(self) -> T:
        """The build from the files as they are now (``load``'s exception propagates); later checks compare to it."""
        return self._files.load(self._load)

    def check(self) -> T | None:
        """A new build when the files changed and load; None when unchanged or not loadable (logged once)."""
        try:
            return self._files.poll(self._load)
        except self._errors as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            self.log.warning("%s %s and key %s changed but cannot be used (not a readable, matching PEM pair: %s); "
                             "keeping the loaded certificate", self.what, self.cert, self.key, error_reason(cause))
            return None

    def watch(self, stop: threading.Event, every_s: float, switch: Callable[[T], object]) -> None:
        """Check every ``every_s`` until ``stop`` is set and ``switch`` to each new build (a thread's target)."""
        while not stop.wait(every_s):
            try:
                loaded = self.check()
                if loaded is not None:
                    switch(loaded)
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad check
                self.log.exception("%s check failed", self.what)

    async def watch_async(self, every_s: float, switch: Callable[[T], Awaitable[object]]) -> None:
        """Check every ``every_s`` until cancelled and await ``switch`` with each new build (a task's coroutine)."""
        while True:
            await asyncio.sleep(every_s)
            try:
                loaded = self.check()
                if loaded is not None:
                    await switch(loaded)
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad check
                self.log.exception("%s check failed", self.what)
