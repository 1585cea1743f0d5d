"""A Secret or projected volume on disk as the kubelet lays it out and updates it, for reload tests.

The kubelet (``pkg/volume/util/atomic_writer.go``) never rewrites a file a pod can see. It writes
every file of the new version into a fresh hidden directory ``..<timestamp>``, points a temporary
symlink ``..data_tmp`` at it, renames that over ``..data`` (one atomic step: readers see the old
set or the new set, never a mix), makes sure each top-level name is a symlink into ``..data``
(``tls.crt -> ..data/tls.crt``; for a projected item ``twin-api-0/tls.crt`` it is the directory:
``twin-api-0 -> ..data/twin-api-0``), and removes the old ``..<timestamp>`` directory.

    volume = KubeletVolume(tmp_path / "mqtt-tls")
    volume.publish({"twin-api-0/tls.crt": cert, "twin-api-0/tls.key": key})   # first projection
    volume.publish({...})                                                      # a renewed Secret
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

__all__ = ["KubeletVolume"]


class KubeletVolume:
    """The mount point ``root`` of one volume; :meth:`publish` installs a new version of its files."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions = 0

    def publish(self, files: dict[str, bytes], mode: int = 0o440) -> Path:
        """Install ``files`` (path relative to the mount → bytes) as the kubelet does; returns the new data directory."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.versions += 1
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
        data_dir = self.root / f"..{stamp}.{os.getpid()}{self.versions:04d}"
        for rel, content in files.items():
            target = data_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            os.chmod(target, mode)
        link = self.root / "..data"
        old = os.readlink(link) if link.is_symlink() else None
        staged = self.root / "..data_tmp"
        staged.symlink_to(data_dir.name)
        os.replace(staged, link)
        for top in {rel.split("/", 1)[0] for rel in files}:
            visible = self.root / top
            if not visible.is_symlink():
                visible.symlink_to(f"..data/{top}")
        if old is not None:
            shutil.rmtree(self.root / old)
        return data_dir
