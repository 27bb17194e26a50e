"""The Dask runner (streamsock.distributed) against plain probe(): client CPU per
handshake, for bench_probe.py.

The same full TLS 1.3 handshakes to the same s_server, three ways: plain
probe() counting its results, plain probe() writing each record as JSON to a
file (what every shard of the runner does), and the runner with two worker
processes and two shards. Every client is pinned to the first CPU, as in the
throughput table. The runner's figure is the CPU of its worker processes
during their tasks (the engine, the records, and whatever Dask's own threads
did meanwhile); the scheduler and the caller (one process here) are counted
apart. The targets are one server written 64 ways (leading zeros in the port),
so that they hash into both shards.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import streamsock

PLAIN = "plain probe()"
PLAIN_RECORDS = "plain probe(), JSON records to a file"
RUNNER = "streamsock.distributed, 2 workers"
CONCURRENCY = 100
TARGET_RATIO = 1.05
SPELLINGS = 64


def targets(port: int, count: int) -> list[str]:
    return [f"tls://127.0.0.1:{'0' * (i % SPELLINGS)}{port}" for i in range(count)]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def plain_child(port: int, cafile: str, count: int, records: bool) -> dict:
    """In a child process: a warm-up, then ``count`` handshakes timed."""
    ctx = streamsock.Context(ssl={"cafile": cafile, "peer_name": "localhost"})
    from streamsock.cli.probe import _json_line

    def run(n: int) -> int:
        ok = 0
        with tempfile.TemporaryFile() as out:
            for r in streamsock.get_backend("native").probe(targets(port, n), concurrency=CONCURRENCY, timeout=30,
                                                             context=ctx):
                ok += r.ok
                if records:
                    os.write(out.fileno(), _json_line(r, False, False).encode())
        return ok

    run(100)
    before, start = _cpu(), time.perf_counter()
    ok = run(count)
    return {"ok": ok, "seconds": time.perf_counter() - start, "cpu_seconds": _cpu() - before, "other_cpu": 0.0}


def _plain(port: int, cafile: str, count: int, records: bool) -> dict:
    out = subprocess.run([sys.executable, __file__, str(port), cafile, str(count), "records" if records else "count"],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"plain probe() failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout)


def _runner(client, port: int, cafile: str, count: int) -> dict:
    import streamsock.distributed as ssd

    context = streamsock.Context(ssl={"cafile": cafile, "peer_name": "localhost"})
    with tempfile.TemporaryDirectory() as output_dir:
        before, start = _cpu(), time.perf_counter()
        reports = ssd.probe(targets(port, count), output_dir, shards=2, cluster=client, context=context,
                            backend="native", concurrency=CONCURRENCY, timeout=30)
        seconds, caller = time.perf_counter() - start, _cpu() - before
    if len({r.worker_pid for r in reports}) != 2:
        print("warning: runner: both shards ran on one worker", file=sys.stderr)
    return {"ok": sum(r.handshakes for r in reports), "seconds": seconds,
            "cpu_seconds": sum(r.cpu_seconds for r in reports), "other_cpu": caller}


def runner_vs_probe(port: int, cafile: str, count: int, rounds: int) -> dict:
    """{contender: {"rate", "cpu_us", "other_cpu_us"}}, medians over the rounds."""
    from distributed import Client

    from streamsock.distributed import local_cluster

    samples: dict = {PLAIN: [], PLAIN_RECORDS: [], RUNNER: []}
    # The workers inherit this process's CPU: the first, as every client's.
    with local_cluster(2) as cluster, Client(cluster) as client:
        _runner(client, port, cafile, 200)  # warm-up: the workers import streamsock and set up OpenSSL
        for _ in range(rounds):
            samples[PLAIN].append(_plain(port, cafile, count, records=False))
            samples[PLAIN_RECORDS].append(_plain(port, cafile, count, records=True))
            samples[RUNNER].append(_runner(client, port, cafile, count))
    for name, runs in samples.items():
        for r in runs:
            if r["ok"] != count:
                print(f"warning: {name}: {count - r['ok']} of {count} handshakes failed", file=sys.stderr)
    return {name: {"rate": statistics.median(r["ok"] / r["seconds"] for r in runs),
                   "cpu_us": statistics.median(r["cpu_seconds"] / max(r["ok"], 1) * 1e6 for r in runs),
                   "other_cpu_us": statistics.median(r["other_cpu"] / max(r["ok"], 1) * 1e6 for r in runs)}
            for name, runs in samples.items()}


def print_runner(table: dict, count: int, rounds: int) -> dict:
    print(f"\n### The Dask runner against plain probe(): {count} full TLS 1.3 handshakes per run, concurrency "
          f"{CONCURRENCY} (per shard for the runner), clients on one CPU, medians of {rounds} rounds\n")
    print("| client | handshakes/s | client CPU µs/handshake | vs plain probe() | vs plain probe() + records | "
          "scheduler + caller CPU µs/handshake |")
    print("|---|---:|---:|---:|---:|---:|")
    plain, records = table[PLAIN]["cpu_us"], table[PLAIN_RECORDS]["cpu_us"]
    for name, f in table.items():
        other = f"{f['other_cpu_us']:,.0f}" if name == RUNNER else "-"
        print(f"| {name} | {f['rate']:,.0f} | {f['cpu_us']:,.0f} | {f['cpu_us'] / plain:.3f} | "
              f"{f['cpu_us'] / records:.3f} | {other} |")
    ratios = {"vs_plain": table[RUNNER]["cpu_us"] / plain, "vs_plain_records": table[RUNNER]["cpu_us"] / records}
    print()
    for label, key in (("plain probe()", "vs_plain"), ("plain probe() writing the same records", "vs_plain_records")):
        met = "met" if ratios[key] <= TARGET_RATIO else "NOT met"
        print(f"runner / {label}, client CPU per handshake: {ratios[key]:.3f} (target <= {TARGET_RATIO}: {met})")
    return ratios


if __name__ == "__main__":
    port, cafile, count, mode = sys.argv[1:5]
    print(json.dumps(plain_child(int(port), cafile, int(count), records=mode == "records")))
