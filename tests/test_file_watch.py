"""``ems_runtime.file_watch``: ``FileSetWatch`` reloads on a content change only, a failing state once, never a moving
file; ``CertificateWatch`` logs a bad pair once and its poll loops (thread and asyncio) switch and outlive failures."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

import pytest

from ems_runtime.file_watch import CertificateWatch, FileSetWatch


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


def _pair_loader(cert: Path, key: Path):
    """A load that refuses a key not made for the certificate (as ``load_cert_chain`` does), by a ConfigError-like error."""
    def load() -> tuple[str, str]:
        pair = _read(cert, key)()
        if not pair[0] or pair[0][-1:] != pair[1][-1:]:        # an empty file: caught mid-write
            raise ValueError("key does not match") from OSError(0, "key values mismatch")
        return pair
    return load


def test_a_pair_that_does_not_load_is_logged_once_and_kept(tmp_path, caplog):
    cert, key = _files(tmp_path)
    log = logging.getLogger("test.certificate_watch")
    watch = CertificateWatch(cert, key, None, _pair_loader(cert, key), errors=(ValueError,), logger=log)
    assert watch.first() == ("cert 1", "key 1")
    caplog.set_level(logging.INFO, logger=log.name)
    cert.write_text("cert 2")                      # the key still the old one: half written
    assert [watch.check() for _ in range(3)] == [None, None, None]
    [line] = [r.getMessage() for r in caplog.records]
    assert line == f"certificate {cert} and key {key} changed but cannot be used (not a readable, matching PEM pair: " \
                   f"key values mismatch); keeping the loaded certificate"
    key.write_text("key 2")
    assert watch.check() == ("cert 2", "key 2") and watch.check() is None


def test_the_thread_loop_switches_and_outlives_a_failing_switch(tmp_path, caplog):
    cert, key = _files(tmp_path)
    log = logging.getLogger("test.certificate_watch")
    watch = CertificateWatch(cert, key, None, _pair_loader(cert, key), errors=(ValueError,), logger=log,
                             what="server certificate")
    watch.first()
    switched: list[tuple[str, str]] = []
    first, second = threading.Event(), threading.Event()

    def switch(pair: tuple[str, str]) -> None:
        switched.append(pair)
        if len(switched) == 1:
            first.set()
            raise RuntimeError("the first switch fails")
        second.set()
    stop = threading.Event()
    thread = threading.Thread(target=watch.watch, args=(stop, 0.01, switch), daemon=True)
    thread.start()
    try:
        cert.write_text("cert 2")
        key.write_text("key 2")
        assert first.wait(5), switched
        cert.write_text("cert 3")
        key.write_text("key 3")
        assert second.wait(5), switched
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert switched == [("cert 2", "key 2"), ("cert 3", "key 3")]
    assert [r.getMessage() for r in caplog.records if r.exc_info] == ["server certificate check failed"]


def test_the_asyncio_loop_awaits_each_switch(tmp_path):
    cert, key = _files(tmp_path)
    watch = CertificateWatch(cert, key, None, _pair_loader(cert, key), errors=(ValueError,),
                             logger=logging.getLogger("test.certificate_watch"))
    watch.first()

    async def go() -> list[tuple[str, str]]:
        switched: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        task = asyncio.create_task(watch.watch_async(0.01, switched.put))
        cert.write_text("cert 2")
        key.write_text("key 2")
        first = await asyncio.wait_for(switched.get(), 5)
        task.cancel()
        return [first]
    assert asyncio.run(go()) == [("cert 2", "key 2")]
