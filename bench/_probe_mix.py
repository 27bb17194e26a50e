"""The realistic scan for bench_probe.py: live TLS targets among many dead ones.

One target in a hundred is a live TLS server (``streamsock serve --echo``,
native, pinned to the last CPU); the others are a closed loopback port, which
refuses at once. The probe runs 1,000 at once with a 0.5 s handshake timeout,
in a child process pinned to the first CPU. What counts: live hosts reported
dead (false timeouts: the target is 0), the live handshakes' p50 against the
same live targets probed alone (at concurrency 10, about what they have in
the mix), and the client's CPU per target.

    python bench/_probe_mix.py [--targets N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import time

import streamsock

LIVE_EVERY = 100
CONCURRENCY = 1000
HANDSHAKE_TIMEOUT = 0.5


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_main(backend_name: str, live: str, targets: str, live_only: str) -> None:
    """Runs one probe and prints its figures as JSON (in a child: its own CPU time)."""
    backend = streamsock.get_backend(backend_name)
    count = int(targets)
    if live_only == "1":
        mix, concurrency = [live] * (count // LIVE_EVERY), 10
    else:
        dead = f"tls://127.0.0.1:{_closed_port()}"
        mix, concurrency = [live if i % LIVE_EVERY == 0 else dead for i in range(count)], CONCURRENCY
    insecure = streamsock.Context(ssl={"verify_peer": False, "verify_peer_name": False})
    start_cpu, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    handshakes, false_dead, done = [], 0, 0
    for r in backend.probe(mix, concurrency=concurrency, handshake_timeout=HANDSHAKE_TIMEOUT, timeout=5,
                           context=insecure):
        done += 1
        if r.target == live:
            if r.ok:
                handshakes.append(r.handshake_ms)
            else:
                false_dead += 1
    wall = time.perf_counter() - start
    end_cpu = resource.getrusage(resource.RUSAGE_SELF)
    cpu = end_cpu.ru_utime - start_cpu.ru_utime + end_cpu.ru_stime - start_cpu.ru_stime
    handshakes.sort()
    print(json.dumps({"done": done, "wall_s": wall, "cpu_us_per_target": cpu / done * 1e6,
                      "false_dead": false_dead, "p50_ms": handshakes[len(handshakes) // 2] if handshakes else None,
                      "p99_ms": handshakes[int(len(handshakes) * 0.99)] if handshakes else None}))


def _run_child(backend: str, live: str, targets: int, live_only: bool) -> dict:
    out = subprocess.run(["taskset", "-c", "0", sys.executable, __file__, "--child", backend, live, str(targets),
                          "1" if live_only else "0"], capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout)


def mix(targets: int, rounds: int) -> dict:
    """{backend: {"mix": figures, "alone": figures}}, medians over the rounds."""
    last_cpu = os.cpu_count() - 1
    server = subprocess.Popen(["taskset", "-c", str(last_cpu), sys.executable, "-m", "streamsock", "serve",
                               "tls://127.0.0.1:0", "--self-signed", "--echo", "--backend", "native"],
                              stderr=subprocess.PIPE, text=True)
    try:
        live = re.search(r"listening on (\S+)", server.stderr.readline()).group(1)
        runs: dict = {name: {"mix": [], "alone": []} for name in ("native", "pure")}
        for _ in range(rounds):
            for name in runs:  # contenders alternate within a round
                runs[name]["alone"].append(_run_child(name, live, targets, True))
                runs[name]["mix"].append(_run_child(name, live, targets, False))
    finally:
        server.terminate()
        server.wait()
    return {name: {kind: {key: statistics.median(r[key] for r in results) if results[0][key] is not None else None
                          for key in results[0]}
                   for kind, results in kinds.items()}
            for name, kinds in runs.items()}


def print_mix(table: dict, targets: int, rounds: int) -> None:
    print(f"\nLive among dead: {targets:,} targets, 1 in {LIVE_EVERY} a live TLS server, {CONCURRENCY} at once, "
          f"handshake timeout {HANDSHAKE_TIMEOUT} s; medians of {rounds} rounds")
    print(f"{'backend':<10}{'live dead':>10}{'hs p50 ms':>11}{'alone p50':>11}{'ratio':>7}{'hs p99 ms':>11}"
          f"{'targets/s':>11}{'CPU us/tgt':>12}")
    for name, kinds in table.items():
        m, a = kinds["mix"], kinds["alone"]
        ratio = m["p50_ms"] / a["p50_ms"] if m["p50_ms"] and a["p50_ms"] else float("nan")
        print(f"{name:<10}{m['false_dead']:>10.0f}{m['p50_ms']:>11.1f}{a['p50_ms']:>11.1f}{ratio:>7.2f}"
              f"{m['p99_ms']:>11.1f}{m['done'] / m['wall_s']:>11,.0f}{m['cpu_us_per_target']:>12.1f}")
    print("targets: 0 live targets reported dead, handshake p50 within 2x of the live targets alone")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print_mix(mix(args.targets, args.rounds), args.targets, args.rounds)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child_main(*sys.argv[2:])
    else:
        main()
