"""``ems_runtime.file_watch.FileSetWatch``: reload on a content change only, a failing state once, never a moving file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ems_runtime.file_watch import FileSetWatch


def _files(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("cert 1")
    key.write_text("key 1")
    return cert, key


def _read(*paths: Path):
    return lambda: tuple(p.read_text() for p in paths)


def test_unchanged_and_touched_files_are_not_reloaded(tmp_path):
    cert, key = _files(tmp_path)
    watch = FileSetWatch((cert, key))
    assert watch.load(_read(cert, key)) == ("cert 1", "key 1")
    assert watch.poll(_read(cert, key)) is None
    os.utime(cert, ns=(1, 1))                     # new mtime, same bytes
    assert watch.poll(lambda: pytest.fail("a touch is not a change")) is None


def test_changed_content_is_loaded_once(tmp_path):
    cert, key = _files(tmp_path)
    watch = FileSetWatch((cert, key))
    watch.load(_read(cert, key))
    cert.write_text("cert 2 longer")
    assert watch.poll(_read(cert, key)) == ("cert 2 longer", "key 1")
    assert watch.poll(_read(cert, key)) is None


def test_a_state_that_fails_to_load_raises_once_then_the_next_change_is_tried(tmp_path):
    cert, key = _files(tmp_path)
    watch = FileSetWatch((cert, key))
    watch.load(_read(cert, key))
    key.unlink()
    calls = []

    def load():
        calls.append(1)
        return _read(cert, key)()

    with pytest.raises(FileNotFoundError):
        watch.poll(load)
    assert watch.poll(load) is None and len(calls) == 1       # same state: not retried, not raised again
    key.write_text("key 2")
    assert watch.poll(load) == ("cert 1", "key 2")


def test_files_that_move_during_the_load_are_looked_at_again(tmp_path):
    cert, key = _files(tmp_path)
    watch = FileSetWatch((cert, key))
    watch.load(_read(cert, key))
    cert.write_text("cert 2, half")

    def load_while_writing():
        value = _read(cert, key)()
        cert.write_text("cert 2, complete")
        return value

    assert watch.poll(load_while_writing) is None
    assert watch.poll(_read(cert, key)) == ("cert 2, complete", "key 1")


def test_a_kubelet_data_swap_is_a_change(tmp_path):
    """A Secret volume renewed by the kubelet: ``..data`` re-pointed, old files deleted, visible paths unchanged."""
    from devenv.kubelet_volume import KubeletVolume

    volume = KubeletVolume(tmp_path / "tls")
    first = volume.publish({"pod-0/tls.crt": b"cert 1", "pod-0/tls.key": b"key 1"})
    cert, key = volume.root / "pod-0" / "tls.crt", volume.root / "pod-0" / "tls.key"
    watch = FileSetWatch((cert, key))
    assert watch.load(_read(cert, key)) == ("cert 1", "key 1")
    volume.publish({"pod-0/tls.crt": b"cert 1", "pod-0/tls.key": b"key 1"})      # re-projected, same bytes
    assert watch.poll(lambda: pytest.fail("the same bytes are not a change")) is None
    volume.publish({"pod-0/tls.crt": b"cert 2", "pod-0/tls.key": b"key 2"})
    assert not first.exists()
    assert watch.poll(_read(cert, key)) == ("cert 2", "key 2")
    assert watch.poll(_read(cert, key)) is None
