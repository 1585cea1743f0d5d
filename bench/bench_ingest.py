"""Ingest throughput: readings/s one worker sustains into a real Prometheus with v1 and v2 payloads, CPU,
peak RSS, 1 vs 2 workers, and Prometheus' own remote-write receive ceiling as the denominator.

    python -m bench ingest          (or: python -m bench.bench_ingest [--messages N] [--readings-per-message R])

Method: real Mosquitto (mTLS) and Prometheus on 127.0.0.1. The workers first
connect once to create their persistent sessions on the shared subscription and
are then SIGKILLed; the broker queues the whole load for those sessions
(``N`` messages of ``R`` readings in the edge wire format, published with QoS 1).
The workers are then started again and their ``ems_ingest_readings_total{outcome="written"}``
is read every 0.2 s (0.05 s near the end) until every reading is written. Two rates come of it: the whole
drain, timed from process start (start-up included), and the steady drain, from the
first reading written to the last, which is also cut into 1-second windows whose
slowest, median and fastest rates are printed (how much the rate moves while the
machine's other work comes and goes). The v2 loads are long enough (24,000 messages
of 100 readings by default) that one worker's steady drain lasts several seconds.
CPU time and peak RSS come from ``/proc/<pid>`` of each worker just before it is
stopped; the CPU per reading leaves out what a worker's start-up costs (its CPU when
it first connected, before the load was queued), and depends far less on what else
the machine runs than the rates do. At the end Prometheus must hold exactly one
sample per published reading (``count_over_time``; every reading has its own
series and time, and an identical rewrite is no new sample) and the workers must
have counted no duplicate: anything else fails the benchmark.
Prometheus, Mosquitto and the workers share this machine's cores.

The ceiling: the same Prometheus alone, fed pre-encoded remote-write requests
(5,000 samples each, the label sets and time order of the load, encoded before
the clock starts) from two threads over kept-alive connections, no broker and
no worker — samples/s it accepts. A worker's readings/s divided by it is the
share of the TSDB's own limit the ingest reaches.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import os
import queue
import ssl
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Iterator

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from devenv.demo_pipeline import IngestProcess
from devenv.mosquitto import MosquittoBroker
from devenv.pki import LocalPki, make_pki
from devenv.prometheus import PrometheusServer
from ems_contract.telemetry import Reading, encode_batch, telemetry_topic
from ems_contract.telemetry_v2 import encode_batch_v2
from ingest.dedup import SeenSeqs
from ingest.metrics import IngestMetrics
from ingest.mqtt import Incoming
from ingest.remote_write import Sample, encode_write_request, series_labels
from ingest.worker import IngestWorker, tune_gc

_CLK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK          # utime + stime


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class BenchError(RuntimeError):
    """A service did not run or answered nothing: the benchmark fails instead of printing zeros."""


def _batches(count: int, per_batch: int, sites: int, prefix: str) -> Iterator[tuple[int, str, list[Reading]]]:
    """``(site index, site, readings)``: ``count`` batches of ``per_batch`` readings (10 assets × 7
    points, consecutive seqs per site), round robin over ``sites``, measured an hour ago."""
    base_ms = int(time.time() * 1000) - 3_600_000
    seqs = [0] * sites
    for n in range(count):
        site_index = n % sites
        readings = []
        for r in range(per_batch):
            seqs[site_index] += 1
            seq = seqs[site_index]
            readings.append(Reading(seq, base_ms + seq, f"asset{r % 10}", f"p{r % 7}", seq * 0.5, "kW"))
        yield site_index, f"{prefix}-{site_index:02d}", readings


def _load(messages: int, per_message: int, sites: int, payload_format: str) -> Iterator[tuple[str, bytes]]:
    """``(topic, payload)`` of the load, in the edge's wire format."""
    encode = encode_batch if payload_format == "v1" else encode_batch_v2
    for _, site, readings in _batches(messages, per_message, sites, "bench"):
        yield telemetry_topic(site), encode(site, readings, readings[0].ts_ms)


def _publish_load(broker: MosquittoBroker, pki: LocalPki, messages: int, per_message: int, sites: int,
                  payload_format: str = "v1") -> float:
    """Publish the load with QoS 1 (pipelined, waits for every PUBACK); returns seconds taken."""
    pair = pki.client("bench-edge")
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-edge", protocol=paho.MQTTv5)
    client.tls_set(ca_certs=str(pki.ca), certfile=str(pair.cert), keyfile=str(pair.key),
                   tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.max_inflight_messages_set(500)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", broker.tls_port)
    client.loop_start()
    started = time.perf_counter()
    infos = [client.publish(topic, payload, qos=1)
             for topic, payload in _load(messages, per_message, sites, payload_format)]
    for info in infos:
        info.wait_for_publish(60)
    took = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return took


def run_case(workdir: Path, pki: LocalPki, workers: int, messages: int, per_message: int,
             sites: int = 4, payload_format: str = "v1") -> dict[str, float]:
    broker = MosquittoBroker(workdir / "broker", pki, autosave_on_changes=False)
    prometheus = PrometheusServer(workdir / "prometheus")
    procs = [IngestProcess(workdir / f"ingest-{i}", broker=broker, pki=pki, prometheus=prometheus,
                           client_id=f"bench-ingest-{i}", max_readings=5000, max_delay_s=0.05,
                           receive_maximum=1000) for i in range(workers)]
    try:
        broker.start()
        prometheus.start()
        for proc in procs:                    # create the persistent sessions, then crash them
            proc.start()
        # what start-up (imports, TLS, connect) costs a worker, so the CPU of the drain can be told apart
        startup_cpu = sum(_cpu_seconds(p.proc.pid) for p in procs) / len(procs)
        for proc in procs:
            proc.kill()
        publish_s = _publish_load(broker, pki, messages, per_message, sites, payload_format)
        started = time.perf_counter()
        for proc in procs:
            proc.start()
        total = messages * per_message
        trace = _drain(procs, total, started)
        elapsed = trace[-1][0]
        cpu = [_cpu_seconds(p.proc.pid) for p in procs]
        rss = [_peak_rss_mib(p.proc.pid) for p in procs]
        handled = [p.metric("ems_ingest_messages_total") for p in procs]
        duplicates = sum(p.metric('ems_ingest_readings_total{outcome="duplicate"}') for p in procs)
        stored = prometheus.client().query('sum(count_over_time(ems_reading[2h]))')
        stored_n = float(stored[0]["value"][1]) if stored else 0.0
        if stored_n != total or duplicates or trace[-1][1] != total:
            raise BenchError(f"{payload_format}, {workers} worker(s): not exactly once: Prometheus holds {stored_n:.0f} "
                             f"samples, the workers wrote {trace[-1][1]:.0f} and dropped {duplicates:.0f} duplicates "
                             f"of {total} readings")
        steady, windows = _steady(trace)
        return {"format": payload_format, "workers": workers, "messages": messages, "readings": total, "publish_s": publish_s,
                "elapsed_s": elapsed, "written": trace[-1][1], "stored": stored_n, "steady": steady,
                "windows": windows, "cpu_s": sum(cpu), "startup_cpu_s": startup_cpu, "peak_rss_mib": max(rss),
                "share": min(handled) / max(max(handled), 1)}
    finally:
        for proc in procs:
            proc.stop()
        prometheus.stop(kill=True)
        broker.stop(kill=True)


def _drain(procs: list[IngestProcess], total: int, started: float) -> list[tuple[float, float]]:
    """``[(seconds since started, readings written)]`` until ``total`` are written (600 s at most): every
    0.2 s (each read of /metrics costs the worker CPU), every 0.05 s once 90 % are written (the end)."""
    trace = [(0.0, 0.0)]
    deadline = time.monotonic() + 600
    while trace[-1][1] < total:
        if time.monotonic() > deadline:
            raise BenchError(f"{trace[-1][1]:.0f} of {total} readings written within 600 s")
        time.sleep(0.05 if trace[-1][1] > 0.9 * total else 0.2)
        written = sum(p.metric('ems_ingest_readings_total{outcome="written"}') for p in procs)
        trace.append((time.perf_counter() - started, written))
    return trace


def _steady(trace: list[tuple[float, float]], window_s: float = 1.0) -> tuple[float, list[float]]:
    """The steady drain of a trace, from the first sample with a reading written to the last: its
    readings/s, and the rates of the whole ``window_s`` windows in it (interpolated between samples)."""
    t0, w0 = next(sample for sample in trace if sample[1] > 0)
    end, total = trace[-1]

    def written_at(t: float) -> float:
        for (ta, wa), (tb, wb) in zip(trace, trace[1:]):
            if ta <= t <= tb:
                return wa + (wb - wa) * (t - ta) / (tb - ta)
        return total

    cuts = [t0 + k * window_s for k in range(int((end - t0) / window_s) + 1)]
    windows = [(written_at(b) - written_at(a)) / window_s for a, b in zip(cuts, cuts[1:])]
    return (total - w0) / (end - t0) if end > t0 else float("nan"), windows


def prometheus_ceiling(workdir: Path, requests: int = 240, per_request: int = 5000, sites: int = 4,
                       threads: int = 2) -> dict[str, float]:
    """Samples/s a lone Prometheus accepts from pre-encoded remote-write requests (module docstring)."""
    prometheus = PrometheusServer(workdir / "prometheus")
    # thread t writes the sites t, t + threads, ...: each series stays in time order within one connection
    bodies: list[list[bytes]] = [[] for _ in range(threads)]
    for site_index, site, readings in _batches(requests, per_request, sites, "ceiling"):
        samples = [Sample(series_labels(site, r), r.ts_ms, r.value, site, r.seq) for r in readings]
        bodies[site_index % threads].append(encode_write_request(samples))
    errors: list[str] = []

    def post_all(chunk: list[bytes]) -> None:
        url = urllib.parse.urlsplit(prometheus.remote_write_url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                   "X-Prometheus-Remote-Write-Version": "0.1.0"}
        try:
            for body in chunk:
                conn.request("POST", url.path, body=body, headers=headers)
                response = conn.getresponse()
                detail = response.read()
                if response.status >= 300:
                    errors.append(f"HTTP {response.status}: {detail[:200]!r}")
                    return
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    try:
        prometheus.start()
        workers = [threading.Thread(target=post_all, args=(chunk,)) for chunk in bodies]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - started
        if errors:
            raise BenchError(f"Prometheus refused the ceiling load: {errors[0]}")
        stored = prometheus.client().query('sum(count_over_time(ems_reading[2h]))')
        return {"samples": requests * per_request, "elapsed_s": elapsed,
                "samples_per_s": requests * per_request / elapsed,
                "stored": float(stored[0]["value"][1]) if stored else 0.0}
    finally:
        prometheus.stop(kill=True)


class _QueuedLink:
    """The worker's side of the broker with the load already received: a queue in, acks counted."""

    network_alive = True

    def __init__(self, messages: list[Incoming], on_all_acked) -> None:  # type: ignore[no-untyped-def]
        self.incoming: queue.Queue[Incoming] = queue.Queue()
        for message in messages:
            self.incoming.put(message)
        self.left, self.on_all_acked = len(messages), on_all_acked

    def ack(self, message: Incoming) -> bool:
        self.left -= 1
        if not self.left:
            self.on_all_acked()
        return True

    def unsubscribe_all(self) -> None:
        pass


class _EncodingWriter:
    """Encodes every write request as the real writer does (protobuf + snappy) and sends it nowhere."""

    def __init__(self) -> None:
        self.samples = 0

    def write(self, samples) -> float:  # type: ignore[no-untyped-def]
        encode_write_request(samples)
        self.samples += len(samples)
        return 0.0


def worker_pipeline_cpu(workdir: Path, messages: int, per_message: int, payload_format: str,
                        sites: int = 4) -> dict[str, float]:
    """CPU seconds of the worker's own pipeline (decode, de-dup, samples, request encoding, the
    durable commit) for the load already received: no broker, no TSDB, no other process, so the
    figure depends on this code and the CPU, not on what else the machine runs."""
    load = [Incoming(topic, payload, mid, 1, False, 0)
            for mid, (topic, payload) in enumerate(_load(messages, per_message, sites, payload_format), 1)]
    writer = _EncodingWriter()
    seen = SeenSeqs(workdir)
    worker: IngestWorker

    def stop() -> None:
        worker.request_stop()

    worker = IngestWorker(link=_QueuedLink(load, stop), writer=writer, seen=seen,  # type: ignore[arg-type]
                          metrics=IngestMetrics(), max_readings=5000, max_delay_s=0.05, shutdown_grace_s=0)
    previous = tune_gc()                     # as ``ems-ingest run`` does
    try:
        cpu, started = time.process_time(), time.perf_counter()
        worker.run()
        cpu, elapsed = time.process_time() - cpu, time.perf_counter() - started
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()
    seen.close()
    if writer.samples != messages * per_message:
        raise BenchError(f"pipeline {payload_format}: {writer.samples} of {messages * per_message} samples written")
    return {"format": payload_format, "readings": messages * per_message, "cpu_s": cpu, "elapsed_s": elapsed}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ingest throughput benchmark")
    parser.add_argument("--messages", type=int, default=3000, help="v1 messages (and the pipeline-alone loads)")
    parser.add_argument("--v2-messages", type=int, default=24000, help="v2 messages of the 1- and 2-worker cases")
    parser.add_argument("--readings-per-message", type=int, default=100)
    parser.add_argument("--small-messages", type=int, default=10000, help="messages of 10 readings (msg/s bound)")
    args = parser.parse_args(argv or [])
    per = args.readings_per_message
    with tempfile.TemporaryDirectory(prefix="ems-bench-ingest-") as tmp:
        root = Path(tmp)
        pki = make_pki(root / "pki")
        ceiling = prometheus_ceiling(root / "ceiling")
        pipeline = [worker_pipeline_cpu(root / f"pipeline-{fmt}", args.messages, per, fmt) for fmt in ("v1", "v2")]
        results = [run_case(root / f"{fmt}-w{n}", pki, n, count, per, payload_format=fmt)
                   for fmt, n, count in (("v1", 1, args.messages), ("v2", 1, args.v2_messages),
                                         ("v2", 2, args.v2_messages))]
        small = run_case(root / "small", pki, 1, args.small_messages, 10, payload_format="v2")
    print(f"{os.cpu_count()} cores shared by the workers, Mosquitto and Prometheus; QoS 1 over mTLS; the load is "
          f"queued in the broker before the workers start")
    print(f"Prometheus remote-write receive ceiling (pre-encoded requests of 5,000 samples, 2 threads, no broker): "
          f"{ceiling['samples_per_s']:,.0f} samples/s ({ceiling['samples']:,} in {ceiling['elapsed_s']:.1f}s, "
          f"stored {ceiling['stored']:,.0f})")
    for r in pipeline:
        print(f"worker pipeline alone ({r['format']}, load already received, no broker or TSDB; request encoded, not "
              f"sent): {r['cpu_s'] / r['readings'] * 1e6:.2f} µs CPU/reading, {r['readings'] / r['cpu_s']:,.0f} "
              f"readings per CPU-second")
    for r in results + [small]:
        windows = sorted(r["windows"])
        spread = (f"1-s windows {windows[0]:,.0f} / {windows[len(windows) // 2]:,.0f} / {windows[-1]:,.0f} "
                  f"(slowest / median / fastest of {len(windows)}; in order, k/s: "
                  f"{' '.join(f'{w / 1000:.0f}' for w in r['windows'])})" if windows else "drain under 1 s: no window")
        print(f"{r['format']} {r['workers']} worker(s), {r['messages']} msgs × {r['readings'] // r['messages']} readings: "
              f"steady {r['steady']:,.0f} readings/s ({r['steady'] / r['workers']:,.0f}/worker, "
              f"{r['steady'] / ceiling['samples_per_s']:.0%} of the ceiling), {spread}\n"
              f"    whole drain from process start {r['readings'] / r['elapsed_s']:,.0f} readings/s "
              f"({r['messages'] / r['elapsed_s']:,.0f} messages/s) in {r['elapsed_s']:.2f}s  "
              f"CPU {r['cpu_s']:.2f}s ({r['cpu_s'] / r['elapsed_s'] * 100:.0f}% of a core; "
              f"{(r['cpu_s'] - r['workers'] * r['startup_cpu_s']) / r['readings'] * 1e6:.2f} µs/reading after "
              f"{r['startup_cpu_s']:.2f}s start-up each)  peak RSS {r['peak_rss_mib']:.0f} MiB/worker  "
              f"exactly once: stored {r['stored']:,.0f}/{r['readings']:,}, 0 duplicates  share {r['share']:.2f}")
    one_v1, one_v2, two_v2 = results
    print(f"v2 ÷ v1 (1 worker, steady): {one_v2['steady'] / one_v1['steady']:.2f}x readings/s; "
          f"scaling 1 → 2 workers (v2, steady): {two_v2['steady'] / one_v2['steady']:.2f}x; "
          f"publisher alone: {one_v2['messages'] / one_v2['publish_s']:.0f} messages/s")

if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
