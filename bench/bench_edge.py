"""End to end through the edge agent: simulator → ``ems-edge run`` → Mosquitto (mTLS) → subscriber.

    python -m bench edge            (BENCH_EDGE_SECONDS=8 by default per scenario)

For 10 devices × 100 points and 60 devices × 100 points (the simulator's
``bench:<devices>x100`` profile in its own process, one Modbus unit per device),
the agent runs as a subprocess with every point reported at every poll
(``heartbeat_s`` below the poll interval, so report-by-exception does not hide
load) and polls flat out (``poll_interval_s`` 0.01). A QoS 1 subscriber on the
broker's plain port counts what arrives. Figures, measured after a warm-up:

* readings/s delivered end to end (unique (site, seq) at the subscriber), and
  readings/s accepted into the spool in the same window (when the polling side
  outruns delivery the difference waits in the spool);
* CPU seconds of the agent process per 1,000 readings (user + system, /proc);
* peak RSS of the agent process (VmHWM);
* the Modbus read ceiling measured in the same run against the same simulator
  (``measure_modbus_ceiling``: a bare pymodbus client, back-to-back 100-register
  reads, as many connections as devices up to 10), as reads/s and as points/s,
  and the ratio end-to-end readings/s ÷ ceiling points/s;
* lost and duplicated readings after SIGTERM (lost must be 0), and how many were
  still spooled when the shutdown grace ended (sent at the next start).

All processes share the machine: on a small box the simulator and the broker
take much of the CPU, so the ratio is the figure to compare across machines.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from devenv.demo_edge import AgentProcess, Observer, SimulatorProcess, bench_device_tables, write_agent_config
from devenv.mosquitto import MosquittoBroker, free_port
from devenv.pki import make_pki
from edge_agent.audit import verify
from edge_agent.modbus_source import measure_modbus_ceiling

SECONDS = float(os.environ.get("BENCH_EDGE_SECONDS", "8"))
WARMUP = 3.0
POINTS = 100
# 60, not 100 devices: 100 × 100 points make a 1.4 MB sensors.conf, over the config reader's 1 MiB limit.
SCENARIOS = (10, 60)
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK           # utime + stime


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _audited(path: Path) -> int:
    """Readings the agent accepted so far (0 before it wrote its first audit record)."""
    return verify(path).readings if path.exists() else 0


def _unique(observer: Observer) -> int:
    seen: set[int] = set()
    with observer.lock:
        messages = list(observer.messages)
    for topic, payload, _ in messages:
        if topic.endswith("/telemetry"):
            body = json.loads(payload)
            seen.update(range(body["seq_first"], body["seq_last"] + 1) if body["v"] == 2
                        else (r["seq"] for r in body["readings"]))
    return len(seen)


def run_scenario(root: Path, pki, devices: int) -> dict[str, float]:
    work = root / f"{devices}x{POINTS}"
    # Persistence saved every 60 s, as a production broker would, not after every message (the fault tests do that)
    broker = MosquittoBroker(work / "broker", pki, autosave_on_changes=False)
    sim = SimulatorProcess(work, free_port(), profile=f"bench:{devices}x{POINTS}")
    tables = bench_device_tables(devices, POINTS, poll_interval_s=0.01)
    for table in tables:
        for point in table["points"]:
            point["heartbeat_s"] = 0.001
    observer = None
    agent = None
    try:
        broker.start()
        sim.start()
        config = write_agent_config(work / "site", pki, broker_port=broker.tls_port, modbus_port=sim.port,
                                    devices=tables)
        ceiling_reads = measure_modbus_ceiling("127.0.0.1", sim.port, 3.0, unit=1, count=POINTS,
                                               clients=min(devices, 10))
        observer = Observer(broker.plain_port, client_id=f"bench-{devices}").start()
        agent = AgentProcess(config, grace_s=30)
        agent.start()
        assert agent.proc is not None
        time.sleep(WARMUP)
        audit = work / "site" / "telemetry-audit.log"
        n0, a0, cpu0, t0 = _unique(observer), _audited(audit), _cpu_seconds(agent.proc.pid), time.monotonic()
        time.sleep(SECONDS)
        n1, a1, cpu1, t1 = _unique(observer), _audited(audit), _cpu_seconds(agent.proc.pid), time.monotonic()
        rss = _peak_rss_mb(agent.proc.pid)
        code = agent.stop(timeout=40)
        observer.wait_quiet(quiet_s=1.0, timeout=30)
        readings = n1 - n0
        rate = readings / (t1 - t0)
        accepted = _audited(audit)
        with observer.lock:
            raw = sum(len(json.loads(p)["readings"]) for t, p, _ in observer.messages if t.endswith("/telemetry"))
        unique = _unique(observer)
        db = sqlite3.connect(work / "site" / "spool" / "spool.db")
        left = db.execute("SELECT COALESCE(SUM(seq_last - seq_first + 1), 0) FROM batches").fetchone()[0]      # sent at the next start, not lost
        db.close()
        return {"devices": devices, "readings_per_s": rate, "accepted_per_s": (a1 - a0) / (t1 - t0), "cpu_s_per_1000": (cpu1 - cpu0) / max(readings, 1) * 1000,
                "peak_rss_mb": rss, "ceiling_reads_per_s": ceiling_reads, "ceiling_points_per_s": ceiling_reads * POINTS,
                "ratio": rate / (ceiling_reads * POINTS) if ceiling_reads else float("nan"),
                "accepted": accepted, "left_in_spool": left, "lost": accepted - unique - left,
                "duplicates": raw - unique, "exit_code": code}
    finally:
        if observer is not None:
            observer.stop()
        if agent is not None:
            agent.stop()
        sim.stop()
        broker.stop()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ems-bench-edge-") as tmp:
        root = Path(tmp)
        pki = make_pki(root / "pki")
        print(f"edge end to end, {SECONDS:.0f}s per scenario after {WARMUP:.0f}s warm-up, "
              f"{os.cpu_count()} CPUs (shared with simulator and broker)")
        print(f"{'scenario':>10} {'readings/s':>11} {'spooled/s':>10} {'CPU s/1k':>9} {'peak RSS':>9} {'Modbus ceiling':>22} "
              f"{'ratio':>6} {'lost':>5} {'dup':>5} {'spooled':>8}")
        for devices in SCENARIOS:
            r = run_scenario(root, pki, devices)
            print(f"{devices:>4}×{POINTS:<5} {r['readings_per_s']:>11.0f} {r['accepted_per_s']:>10.0f} "
                  f"{r['cpu_s_per_1000']:>9.3f} "
                  f"{r['peak_rss_mb']:>7.1f}MB {r['ceiling_reads_per_s']:>8.0f} reads/s "
                  f"({r['ceiling_points_per_s']:>7.0f} pts/s) {r['ratio']:>6.2f} {r['lost']:>5} {r['duplicates']:>5} {r['left_in_spool']:>8}",
                  flush=True)
            if r["lost"] or r["exit_code"] != 0:
                print(f"  !! agent exit code {r['exit_code']}, {r['lost']} readings lost "
                      f"(of {r['accepted']} accepted)", flush=True)
        print("readings/s = delivered to the subscriber; spooled/s = accepted into the spool (polling side)")
        print("ratio = end-to-end readings/s ÷ (bare pymodbus 100-register reads/s × 100 points)")


if __name__ == "__main__":
    sys.exit(main())
