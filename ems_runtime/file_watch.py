"""Change detection for a set of files that are loaded together (a CA, a certificate and its key).

``FileSetWatch.poll(load)`` is what a rotation check calls every few seconds. It
compares each file's (device, inode, mtime, size) with the state last loaded —
cheap enough to run forever — and only when that moved compares the files'
SHA-256 (a ``touch`` or a Secret re-projection of the same bytes is no change).
Then it calls ``load``; the result counts only if the files did not move while
it ran (a pair still being written is looked at again next time). When ``load``
raises, that state of the files is remembered and the exception re-raised once:
the caller logs it once and keeps what it has, and nothing is retried until the
files change again. Used by the edge agent's and the ingest's MQTT links and the
twin API's HTTPS server.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence, TypeVar

__all__ = ["FileSetWatch"]

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
