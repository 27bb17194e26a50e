"""Connect + TLS 1.3 handshake + close, one connection after another, against one
``openssl s_server`` process: client CPU per connection and median latency.

    python bench/bench_handshake.py [--rounds N] [--connections N] [--quick] [--json FILE]

Contenders: OpenSSL's own C client (``openssl s_time -new``), the native
backend, the pure backend, and stdlib ``ssl`` (``socket.create_connection`` +
``wrap_socket``), all verifying the server's chain against the same CA. The
server runs pinned to the last CPU and every client pinned to the first, each
client in its own process; CPU is the client's user time (what ``s_time``
reports as connections per user second) measured around its timed loop. Rounds
alternate the contenders so drift hits them alike; each figure is the median
of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"native": (("openssl s_time", 1.03), ("pure", 0.95))}
CLIENTS = ("openssl s_time", "native", "pure", "stdlib ssl")


def _pin(cpu: int) -> None:
    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        pass


# --- the client side, run in a child process ------------------------------------------------


def _connect_once_factory(name: str, port: int, cafile: str):
    if name == "stdlib ssl":
        import ssl

        ctx = ssl.create_default_context(cafile=cafile)

        def once() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost"):
                    pass

        return once
    import streamsock

    backend = streamsock.get_backend(name)
    context = streamsock.Context(ssl={"cafile": cafile, "peer_name": "localhost"})
    address = f"tls://127.0.0.1:{port}"

    def once() -> None:
        backend.client(address, timeout=10, context=context).close()

    return once


def child(name: str, port: int, cafile: str, count: int) -> None:
    _pin(0)
    once = _connect_once_factory(name, port, cafile)
    for _ in range(min(50, count)):
        once()
    latencies = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for _ in range(count):
        t = time.perf_counter()
        once()
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "connections": count,
        "user_per_conn": (after.ru_utime - before.ru_utime) / count,
        "cpu_per_conn": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / count,
        "median_latency": statistics.median(latencies),
        "wall": wall,
    }))


def run_child(name: str, port: int, cafile: str, count: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, str(port), cafile, str(count)],
        capture_output=True, text=True, timeout=600, check=True,
    )
    return json.loads(out.stdout)


def run_s_time(port: int, cafile: str, seconds: float) -> dict:
    """OpenSSL's client: s_time reports connections per user CPU second."""
    command = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-tls1_3",
               "-time", str(max(1, round(seconds))), "-verify", "2", "-CAfile", cafile]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, preexec_fn=lambda: _pin(0))
    m = re.search(r"(\d+) connections in ([\d.]+)s; ([\d.]+) connections/user sec", proc.stdout)
    if not m:
        raise RuntimeError(f"unexpected s_time output:\n{proc.stdout}\n{proc.stderr}")
    count, real, per_user_sec = int(m.group(1)), float(m.group(2)), float(m.group(3))
    return {
        "connections": count,
        "user_per_conn": 1.0 / per_user_sec,
        "cpu_per_conn": None,  # s_time reports user time only
        "median_latency": real / count,  # s_time gives no per-connection times: mean
        "wall": real,
    }


# --- the server and the orchestration -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_pki(directory: str) -> tuple[str, str, str]:
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cafile, certfile, keyfile = (os.path.join(directory, n) for n in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(cafile)
    with open(certfile, "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    leaf.private_key_pem.write_to_path(keyfile)
    return cafile, certfile, keyfile


def start_server(certfile: str, keyfile: str) -> tuple[subprocess.Popen, int]:
    last_cpu = max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    port = _free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", certfile, "-key", keyfile,
         "-tls1_3", "-www", "-quiet"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: _pin(last_cpu),
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise RuntimeError("openssl s_server did not start")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        name, port, cafile, count = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
        child(name, port, cafile, count)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=2000, help="per contender per round")
    parser.add_argument("--quick", action="store_true", help="1 round of 300 connections")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.connections = 1, 300
    if not shutil.which("openssl"):
        sys.exit("needs the openssl command (Debian: apt-get install openssl)")

    results: dict[str, list[dict]] = {name: [] for name in CLIENTS}
    with tempfile.TemporaryDirectory() as directory:
        cafile, certfile, keyfile = make_pki(directory)
        server, port = start_server(certfile, keyfile)
        try:
            for _ in range(args.rounds):
                for name in CLIENTS:
                    if name == "openssl s_time":
                        # as long as a native run of the same count takes, at least 2 s
                        seconds = max(2.0, results["native"][-1]["wall"] if results["native"] else 3.0)
                        results[name].append(run_s_time(port, cafile, seconds))
                    else:
                        results[name].append(run_child(name, port, cafile, args.connections))
        finally:
            server.kill()
            server.wait()

    summary = {
        name: {
            "user_us_per_conn": statistics.median(r["user_per_conn"] for r in runs) * 1e6,
            "cpu_us_per_conn": (statistics.median(r["cpu_per_conn"] for r in runs) * 1e6
                                if runs[0]["cpu_per_conn"] is not None else None),
            "median_latency_us": statistics.median(r["median_latency"] for r in runs) * 1e6,
            "connections": sum(r["connections"] for r in runs),
        }
        for name, runs in results.items()
    }
    base = summary["openssl s_time"]["user_us_per_conn"]
    print(f"\n### Connect + TLS 1.3 handshake + close ({args.rounds} rounds, medians; server pinned to its own CPU)\n")
    print("| client | user CPU µs/conn | ratio to s_time | user+sys µs/conn | median latency µs |")
    print("|---|---:|---:|---:|---:|")
    for name, s in summary.items():
        cpu = f"{s['cpu_us_per_conn']:,.0f}" if s["cpu_us_per_conn"] is not None else "n/a"
        latency = f"{s['median_latency_us']:,.0f}" + (" (mean)" if name == "openssl s_time" else "")
        print(f"| {name} | {s['user_us_per_conn']:,.0f} | {s['user_us_per_conn'] / base:.3f} | {cpu} | {latency} |")
    print()
    for name, targets in TARGETS.items():
        for other, target in targets:
            ratio = summary[name]["user_us_per_conn"] / summary[other]["user_us_per_conn"]
            print(f"{name} / {other} user CPU per connection: {ratio:.3f} (target <= {target}: "
                  f"{'met' if ratio <= target else 'NOT met'})")
    native_latency = summary["native"]["median_latency_us"] / summary["pure"]["median_latency_us"]
    print(f"native / pure median latency: {native_latency:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
