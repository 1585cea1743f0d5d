"""Running ``ems-ingest twin-api`` and ``run`` reload certificates that the kubelet renews in place (``..data`` swap).

The pod's layout, reproduced on disk with :class:`devenv.kubelet_volume.KubeletVolume`: the server
certificate is a whole Secret volume (``server-tls/tls.crt -> ..data/tls.crt``), the MQTT client
certificates a projected volume with one directory per pod (``mqtt-tls/twin-api-0 -> ..data/twin-api-0``)
named by the environment :func:`components.ingest.pod_tls_env` renders, as Kubernetes expands it for
pod ``twin-api-0`` (the ingest worker's likewise for ``ingest-0``). The configs are the ones the components
render (``components/twin_api.py``, ``components/ingest.py``), only their paths and ports moved to this test's. A renewal swaps ``..data`` and deletes the old files; the process
must then show new connections the new server certificate and reconnect to the broker with the new
client certificate (its CN, which Mosquitto logs as the username, proves which one it presented).
"""

from __future__ import annotations

import os
import socket
import ssl
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from components.ingest import METRICS_PORT, STATE_DIR, TLS_DIR, ingest_toml, pod_tls_env
from components.twin_api import MQTT_TLS_DIR, PORT, SERVER_TLS_DIR, UNUSED_STATE_DIR, twin_api_toml
from devenv.demo_pipeline import ROOT, _ems_ingest
from devenv.kubelet_volume import KubeletVolume
from devenv.mosquitto import free_port, wait_for_port
from devenv.pki import CertPair
from devenv.process import ManagedProcess

pytestmark = pytest.mark.integration

POD = "twin-api-0"


def _tls_files(prefix: str, ca: Path, pair: CertPair) -> dict[str, bytes]:
    return {f"{prefix}ca.crt": ca.read_bytes(), f"{prefix}tls.crt": pair.cert.read_bytes(), f"{prefix}tls.key": pair.key.read_bytes()}


def _serial_seen(port: int, context: ssl.SSLContext) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def _until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _spawn(tmp_path: Path, command: str, config: str, tls_dir: str, volume: KubeletVolume, pod: str, broker,
           monkeypatch, metrics_port: int) -> ManagedProcess:
    """``ems-ingest <command>`` on ``config`` with the pod's environment: its broker files by path in ``volume``
    (the rendered ``pod_tls_env(tls_dir)`` as Kubernetes expands it for ``pod``), the test broker and metrics port."""
    (tmp_path / "ingest.toml").write_text(config)
    env = {name: value.replace(tls_dir, str(volume.root)).replace("$(POD_NAME)", pod)
           for name, value in pod_tls_env(tls_dir).items()}
    assert env["EMS_BROKER_CERT"] == f"{volume.root}/{pod}/tls.crt"
    env.update(EMS_BROKER_HOST="127.0.0.1", EMS_BROKER_PORT=str(broker.tls_port), EMS_METRICS_PORT=str(metrics_port),
               PYTHONPATH=str(ROOT))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    proc = ManagedProcess(tmp_path / f"{command}.log")
    proc.spawn(_ems_ingest() + ["--log-level", "info", command, "--config", str(tmp_path / "ingest.toml")],
               cwd=ROOT, env=dict(os.environ))
    return proc


def test_ingest_worker_process_reloads_after_a_kubelet_data_swap(tmp_path, broker, pki, prometheus, monkeypatch):
    volume, pod = KubeletVolume(tmp_path / "tls"), "ingest-0"
    volume.publish(_tls_files(f"{pod}/", pki.ca, pki.client("ingest-0-old")))
    metrics_port = free_port()
    config = (ingest_toml("broker.ems.svc.cluster.local", prometheus.remote_write_url)
              .replace(STATE_DIR, str(tmp_path / "state")).replace(f"port = {METRICS_PORT}", f"port = {metrics_port}"))
    proc = _spawn(tmp_path, "run", config, TLS_DIR, volume, pod, broker, monkeypatch, metrics_port)
    try:
        assert _until(lambda: "u'ingest-0-old'" in broker.log_path.read_text()), proc.tail()
        volume.publish(_tls_files(f"{pod}/", pki.ca, pki.client("ingest-0-new")))
        assert _until(lambda: "u'ingest-0-new'" in broker.log_path.read_text()), proc.tail()
        log = proc.tail(20000)
        assert "changed; reconnecting" in log and "cannot be used" not in log, log
    finally:
        proc.terminate(timeout=10, kill=True)


def test_twin_api_process_reloads_after_a_kubelet_data_swap(tmp_path, broker, pki, prometheus, monkeypatch):
    server_tls, mqtt_tls = KubeletVolume(tmp_path / "server-tls"), KubeletVolume(tmp_path / "mqtt-tls")
    first = server_tls.publish(_tls_files("", pki.ca, pki.server))
    mqtt_tls.publish(_tls_files(f"{POD}/", pki.ca, pki.client("twin-api-0-old")))
    twin_port, metrics_port = free_port(), free_port()
    config = (twin_api_toml("broker.ems.svc.cluster.local", prometheus.url)
              .replace(SERVER_TLS_DIR, str(server_tls.root)).replace(MQTT_TLS_DIR, str(mqtt_tls.root))
              .replace(UNUSED_STATE_DIR, str(tmp_path / "state")).replace('"0.0.0.0"', '"127.0.0.1"')
              .replace(f"port = {PORT}", f"port = {twin_port}"))
    proc = _spawn(tmp_path, "twin-api", config, MQTT_TLS_DIR, mqtt_tls, POD, broker, monkeypatch, metrics_port)
    try:
        wait_for_port(twin_port, 30, proc.proc)
        client = ssl.create_default_context(cafile=str(pki.ca))

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{twin_port}/healthz", context=client, timeout=5) as r:
                    return r.status == 200
            except OSError:
                return False

        assert _until(healthy), proc.tail()
        assert "u'twin-api-0-old'" in broker.log_path.read_text()
        old_serial = _serial_seen(twin_port, client)

        renewed_server = pki.server_pair("server-renewed")
        server_tls.publish(_tls_files("", pki.ca, renewed_server))
        mqtt_tls.publish(_tls_files(f"{POD}/", pki.ca, pki.client("twin-api-0-new")))
        assert not first.exists() and (server_tls.root / "tls.crt").is_symlink()     # the old files are gone

        new_serial = x509.load_pem_x509_certificate(renewed_server.cert.read_bytes()).serial_number
        assert new_serial != old_serial
        # cert_check_s is 5 s by default: within 30 s both watchers must have acted.
        assert _until(lambda: _serial_seen(twin_port, client) == new_serial), proc.tail()
        assert _until(lambda: "u'twin-api-0-new'" in broker.log_path.read_text()), proc.tail()
        assert _until(healthy), proc.tail()
        log = proc.tail(20000)
        assert "changed; new connections use them" in log and "changed; reconnecting" in log, log
        assert "cannot be used" not in log, log
    finally:
        proc.terminate(timeout=10, kill=True)
