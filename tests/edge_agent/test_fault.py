"""Fault tests with counts: real Mosquitto (mTLS), real pymodbus simulator, the agent as a subprocess.

Every test runs with each payload format (``broker.payload_format`` v1 and v2).
After each fault: every reading the audit log accepted reached the observer
(lost = 0, except those the spool cap dropped — and those are in the audit log
and the metrics), no seq carries two different readings (after de-duplication
by (site, seq) nothing is duplicated), every received reading equals its audit
record, the spool is empty after SIGTERM, and ``ems-edge audit verify`` passes.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509

from devenv.demo_edge import AgentProcess, Observer, SimulatorProcess, bench_device_tables, write_agent_config
from devenv.lossy_proxy import LossyProxy, ProxyThread
from devenv.mosquitto import MosquittoBroker, free_port
from devenv.pki import LocalPki
from edge_agent.audit import read_audit, verify

pytestmark = pytest.mark.integration

DEVICES, POINTS = 3, 40          # ~70 readings/s from the simulator's bench profile


@dataclass
class Site:
    workdir: Path
    broker: MosquittoBroker
    sim: SimulatorProcess
    observer: Observer
    pki: LocalPki
    payload_format: str

    def config(self, *, broker_port: int | None = None, **sections) -> Path:
        broker = {"payload_format": self.payload_format, **sections.pop("broker", {})}
        return write_agent_config(self.workdir / "site", self.pki, broker_port=broker_port or self.broker.tls_port,
                                  modbus_port=self.sim.port, client="edge-sub-07",
                                  devices=bench_device_tables(DEVICES, POINTS, poll_interval_s=0.2), broker=broker,
                                  **sections)


@pytest.fixture(params=["v1", "v2"])
def site(request: pytest.FixtureRequest, tmp_path: Path, pki: LocalPki, broker: MosquittoBroker) -> Iterator[Site]:
    sim = SimulatorProcess(tmp_path, free_port(), profile=f"bench:{DEVICES}x{POINTS}")
    sim.start()
    observer = Observer(broker.plain_port, client_id=f"fault-observer-{tmp_path.name}").start()
    try:
        yield Site(tmp_path, broker, sim, observer, pki, request.param)
    finally:
        observer.stop()
        sim.stop()


def _audit(path: Path) -> tuple[dict[int, dict], frozenset[int]]:
    contents = read_audit(path)
    return contents.readings, contents.dropped


def _spooled(workdir: Path) -> int:
    """Readings in the agent's spool (rows are batches)."""
    db = sqlite3.connect(workdir / "spool" / "spool.db")
    try:
        return db.execute("SELECT COALESCE(SUM(seq_last - seq_first + 1), 0) FROM batches").fetchone()[0]
    finally:
        db.close()


def _metric(http_port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(0.1)


def _check_delivery(site: Site, config: Path, agent: AgentProcess, *, expect_drops: bool = False) -> dict:
    """The counts every fault test asserts; returns them for the test's own checks."""
    site.observer.wait_quiet(quiet_s=1.0, timeout=20)
    workdir = config.parent
    accepted, dropped = _audit(workdir / "telemetry-audit.log")
    received = site.observer.readings()
    by_seq: dict[int, set] = {}
    for r in received:
        by_seq.setdefault(r.seq, set()).add((r.ts_ms, r.asset, r.point, r.value, r.unit, r.quality))
    lost = set(accepted) - set(by_seq) - dropped
    conflicting = {seq for seq, variants in by_seq.items() if len(variants) > 1}
    unaudited = set(by_seq) - set(accepted)
    mismatched = {seq for seq, variants in by_seq.items() if seq in accepted and
                  (lambda a: (a["ts_ms"], a["asset"], a["point"], a["value"], a["unit"], a["q"]))(accepted[seq])
                  not in variants}
    counts = {"accepted": len(accepted), "received_unique": len(by_seq), "received_raw": len(received),
              "lost": len(lost), "dropped": len(dropped), "conflicting": len(conflicting),
              "unaudited": len(unaudited), "mismatched": len(mismatched)}
    print("counts:", counts)
    assert counts["accepted"] > 100, (counts, agent.tail())
    versions = {json.loads(p)["v"] for t, p, _ in site.observer.messages if t.endswith("/telemetry")}
    assert versions == {int(site.payload_format[1:])}, versions
    assert not lost, f"{len(lost)} readings lost, e.g. seq {sorted(lost)[:10]}; {counts}\n{agent.tail()}"
    assert not conflicting and not unaudited and not mismatched, counts
    assert bool(dropped) == expect_drops, counts
    assert sorted(accepted) == list(range(1, max(accepted) + 1)), "the audited seqs have a gap"
    depth = _spooled(workdir)
    assert depth == 0, f"{depth} readings left in the spool after SIGTERM"
    verify = subprocess.run([sys.executable, "-m", "edge_agent.cli", "audit", "verify", "--path",
                             str(workdir / "telemetry-audit.log")], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"{len(accepted)} readings" in verify.stdout
    return counts


def test_broker_killed_and_restarted_mid_stream(site: Site) -> None:
    config = site.config()
    agent = AgentProcess(config)
    agent.start()
    try:
        _wait_for(lambda: len(site.observer.readings()) > 100, 60, "readings before the fault")
        site.broker.stop(kill=True)
        time.sleep(3)                                   # the agent keeps polling into its spool
        site.broker.start()
        received_before = len(site.observer.readings())
        _wait_for(lambda: len(site.observer.readings()) > received_before + 150, 25, "readings after the restart")
    finally:
        code = agent.stop(timeout=25)
    assert code == 0, agent.tail()
    _check_delivery(site, config, agent)
    assert "connection to broker" in agent.tail(20000) and "lost" in agent.tail(20000)


def test_delivery_resumes_within_5_s_of_a_short_broker_restart(site: Site) -> None:
    """The broker is down ~4 s; the first telemetry after it is back arrives within 5 s (not after a grown backoff)."""
    config = site.config()
    agent = AgentProcess(config)
    agent.start()
    try:
        _wait_for(lambda: len(site.observer.readings()) > 100, 60, "readings before the restart")
        site.broker.stop(kill=True)
        time.sleep(4)
        site.broker.start()
        back = time.monotonic()
        with site.observer.lock:
            seen = len(site.observer.messages)

        def telemetry_after_restart() -> bool:
            with site.observer.lock:
                return any(t.endswith("/telemetry") for t, _, _ in site.observer.messages[seen:])

        _wait_for(telemetry_after_restart, 20, "telemetry after the restart")
        resumed_s = time.monotonic() - back
    finally:
        code = agent.stop(timeout=25)
    assert code == 0, agent.tail()
    print(f"delivery resumed {resumed_s:.2f} s after the broker was back")
    assert resumed_s <= 5.0, agent.tail(20000)
    _check_delivery(site, config, agent)


def test_agent_sigkilled_and_restarted(site: Site) -> None:
    config = site.config()
    agent = AgentProcess(config)
    agent.start()
    try:
        _wait_for(lambda: len(site.observer.readings()) > 150, 60, "readings before the kill")
        agent.kill()                                    # no flush, no offline message: the last will says it
        first_run_max = max(_audit(config.parent / "telemetry-audit.log")[0])
        agent = AgentProcess(config)
        agent.start()
        _wait_for(lambda: max(r.seq for r in site.observer.readings()) > first_run_max + 150, 25,
                  "readings from the second run")
    finally:
        code = agent.stop(timeout=25)
    assert code == 0, agent.tail()
    counts = _check_delivery(site, config, agent)
    statuses = [p for t, p, _ in site.observer.messages if t.endswith("/status")]
    assert statuses.count(b"offline") >= 2 and statuses.count(b"online") == 2, statuses   # will + clean stop
    assert counts["received_unique"] == counts["accepted"]


# syscalls (x86-64) that write or sync a file: write, pwrite64, fsync, fdatasync
_WRITE_SYSCALLS = {"1": "write", "18": "pwrite64", "74": "fsync", "75": "fdatasync"}


def _kill_during_commit(pid: int, files: set[str], budget_s: float = 30.0) -> str:
    """SIGKILL ``pid`` while one of its threads writes or syncs one of ``files`` (basenames); returns what it did.

    The process is stopped (SIGSTOP) at random moments and each thread's current
    syscall read from ``/proc/<pid>/task/<tid>/syscall``; a thread caught writing
    or syncing one of the files gets the process killed right there, still stopped.
    Raises AssertionError when no such moment came within ``budget_s``.
    """
    deadline = time.monotonic() + budget_s
    rng = random.Random(7)
    while time.monotonic() < deadline:
        os.kill(pid, signal.SIGSTOP)
        caught = None
        try:
            time.sleep(0.002)                                     # let every thread reach its stop
            for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                    fields = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
                    if fields[0] in _WRITE_SYSCALLS:
                        target = os.path.basename(os.readlink(f"/proc/{pid}/fd/{int(fields[1], 16)}"))
                        if target in files:
                            caught = f"{_WRITE_SYSCALLS[fields[0]]}({target})"
                            break
                except (OSError, IndexError, ValueError):
                    continue
            if caught:
                os.kill(pid, signal.SIGKILL)
                return caught
        finally:
            if not caught:
                os.kill(pid, signal.SIGCONT)
        time.sleep(rng.uniform(0.001, 0.02))
    raise AssertionError(f"the agent was never caught writing {sorted(files)} within {budget_s:.0f}s")


def test_agent_sigkilled_while_a_large_batch_is_being_committed(site: Site) -> None:
    """One device of 1000 points reported whole at every poll: 1000-reading batches, one spool row and one
    audit record each. The agent is killed while its spool thread writes or fsyncs the spool's WAL (inside
    the commit of a batch, before its audit record); after a restart nothing is lost, nothing conflicts,
    the audit verifies."""
    sim = SimulatorProcess(site.workdir / "big", free_port(), profile="bench:1x1000")
    sim.start()
    try:
        devices = bench_device_tables(1, 1000, poll_interval_s=0.25)
        for point in devices[0]["points"]:
            point["heartbeat_s"] = 0.1                         # every poll reports every point: 1000 a batch
        config = write_agent_config(site.workdir / "site", site.pki, broker_port=site.broker.tls_port,
                                    modbus_port=sim.port, devices=devices,
                                    broker={"payload_format": site.payload_format})
        agent = AgentProcess(config)
        agent.start()
        try:
            _wait_for(lambda: len(site.observer.readings()) >= 3000, 90, "readings before the kill")
            assert agent.proc is not None
            caught = _kill_during_commit(agent.proc.pid, {"spool.db-wal"})
            agent.proc.wait(10)
            print("killed in", caught)
            first_run_max = max(_audit(config.parent / "telemetry-audit.log")[0])
            agent = AgentProcess(config)
            agent.start()
            _wait_for(lambda: max(r.seq for r in site.observer.readings()) > first_run_max + 3000, 30,
                      "readings from the second run")
        finally:
            code = agent.stop(timeout=30)
        assert code == 0, agent.tail()
        counts = _check_delivery(site, config, agent)
        assert counts["received_unique"] == counts["accepted"]
        summary = verify(config.parent / "telemetry-audit.log")
        assert summary.readings / summary.kinds["b"] > 500, f"the batches were not large: {summary.lines()}"
    finally:
        sim.stop()


def test_lossy_slow_link(site: Site) -> None:
    proxy = LossyProxy("127.0.0.1", site.broker.tls_port, latency_s=0.03, jitter_s=0.03, cut_probability=0.1,
                       refuse_probability=0.3, max_faults=8, seed=1234)
    with ProxyThread(proxy):
        config = site.config(broker_port=proxy.port)
        agent = AgentProcess(config, grace_s=20)
        agent.start()
        try:
            _wait_for(lambda: proxy.cuts + proxy.refusals >= 4 and len(site.observer.readings()) > 300, 30,
                      lambda: f"faults on the link (cuts {proxy.cuts}, refusals {proxy.refusals})")
        finally:
            code = agent.stop(timeout=30)
    assert code == 0, agent.tail()
    _check_delivery(site, config, agent)
    print(f"proxy: {proxy.connections} connections, {proxy.cuts} cuts, {proxy.refusals} refusals")
    assert proxy.connections >= 3


def test_full_spool_drops_oldest_counted_and_audited(site: Site) -> None:
    site.broker.stop()                                  # the link is down from the start
    http_port = free_port()
    config = site.config(http={"port": http_port}, spool={"max_readings": 100, "fsync_batch": 16})
    agent = AgentProcess(config)
    agent.start()
    try:
        _wait_for(lambda: _safe_metric(http_port, "ems_edge_spool_dropped_total") >= 100, 25, "the spool to overflow")
        site.broker.start()
        _wait_for(lambda: len(site.observer.readings()) > 200, 25, "delivery after the outage")
        dropped_metric = _metric(http_port, "ems_edge_spool_dropped_total")
        accepted_metric = _metric(http_port, "ems_edge_readings_accepted_total")
    finally:
        code = agent.stop(timeout=25)
    assert code == 0, agent.tail()
    counts = _check_delivery(site, config, agent, expect_drops=True)
    # every drop is counted and audited: the audit's drop ranges hold at least what the metric said a moment earlier
    assert counts["dropped"] >= dropped_metric > 0
    assert counts["accepted"] >= accepted_metric
    assert "spool full" in agent.tail(50000)


def _safe_metric(port: int, name: str) -> float:
    try:
        return _metric(port, name)
    except OSError:
        return 0.0


def test_sigterm_during_an_outage_keeps_the_spool_for_the_next_start(site: Site) -> None:
    site.broker.stop()
    config = site.config()
    agent = AgentProcess(config, grace_s=1)
    agent.start()
    _wait_for(lambda: (config.parent / "telemetry-audit.log").exists()
              and len(_audit(config.parent / "telemetry-audit.log")[0]) > 150, 20, "readings spooled offline")
    started = time.monotonic()
    assert agent.stop(timeout=20) == 0, agent.tail()
    assert time.monotonic() - started < 10                      # the grace bounds the shutdown
    left = _spooled(config.parent)
    assert left == len(_audit(config.parent / "telemetry-audit.log")[0]) > 150   # all still there, nothing sent
    assert "stay in the spool for the next start" in agent.tail(50000)

    site.broker.start()
    agent = AgentProcess(config)
    agent.start()
    try:
        _wait_for(lambda: len(site.observer.readings()) > left + 100, 25, "the backlog and new readings")
    finally:
        assert agent.stop(timeout=25) == 0, agent.tail()
    counts = _check_delivery(site, config, agent)
    assert counts["received_unique"] == counts["accepted"]


def test_client_certificate_rotated_while_publishing(site: Site) -> None:
    """A half-written certificate is refused (logged once, old one kept); the new pair is then used
    (the broker logs the new certificate's identity) with 0 readings lost and 0 sent twice."""
    http_port = free_port()
    # 0.3 s each way: PUBACKs are always outstanding when the switch comes, so it must wait for them.
    proxy = LossyProxy("127.0.0.1", site.broker.tls_port, latency_s=0.3, jitter_s=0.0, cut_probability=0.0,
                       refuse_probability=0.0, max_faults=0, seed=1)
    with ProxyThread(proxy):
        config = site.config(broker_port=proxy.port, http={"port": http_port})
        agent = AgentProcess(config)
        agent.start()
        try:
            _rotate(site, agent, config, http_port)
        finally:
            code = agent.stop(timeout=25)
    assert code == 0, agent.tail()
    counts = _check_delivery(site, config, agent)
    assert counts["received_raw"] == counts["received_unique"], f"readings sent twice: {counts}"
    log = agent.tail(200000)
    assert log.count("cannot be used") == 1, log
    in_flight = [int(n) for n in re.findall(r"switching the certificate: (\d+) messages were in flight", log)]
    assert len(in_flight) == 1 and in_flight[0] > 0, log
    assert "delivery interrupted" not in log and "connection to broker" not in log, log    # no re-send


def _rotate(site: Site, agent: AgentProcess, config: Path, http_port: int) -> None:
    """Half-write a new certificate, then write the new key and certificate; wait for the broker to see it."""
    pki_dir = config.parent / "pki"
    new = site.pki.client("edge-sub-07-rotated")        # the broker's username is the certificate's CN
    _wait_for(lambda: len(site.observer.readings()) > 100, 60, "readings before the rotation")
    text = new.cert.read_bytes()
    (pki_dir / "edge.crt").write_bytes(text[: len(text) // 2])       # a writer caught half-way
    _wait_for(lambda: "cannot be used" in agent.tail(20000), 15, "the half-written certificate refused")
    received = len(site.observer.readings())
    _wait_for(lambda: len(site.observer.readings()) > received + 100, 20, "readings on the old certificate")
    (pki_dir / "edge.key").write_bytes(new.key.read_bytes())
    (pki_dir / "edge.crt").write_bytes(text)
    _wait_for(lambda: "u'edge-sub-07-rotated'" in site.broker.log_path.read_text(), 20,
              lambda: "the broker to see the new certificate\n" + agent.tail())
    received = len(site.observer.readings())
    _wait_for(lambda: len(site.observer.readings()) > received + 150, 20, "readings on the new certificate")
    expiry = x509.load_pem_x509_certificate(text).not_valid_after_utc.timestamp()
    assert _metric(http_port, 'ems_edge_certificate_expiry_timestamp_seconds{certificate="broker-client"}') \
        == expiry
