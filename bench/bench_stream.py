"""The data path: TLS echo servers of every kind under one C load generator,
side by side in one run.

    python bench/bench_stream.py [--seconds S] [--rounds N] [--quick] [--only NAME,...]
                                 [--tests rr256,rr64k,bulk,accept] [--json FILE]

Every server (bench/_echo_servers.py, bench/c/tls_echo_server.c, nginx) runs
in a process of its own pinned to the last CPU; the load generator
(bench/c/tls_load.c: one epoll loop and OpenSSL) is pinned to the first, so
the client is never the limit. The load generator reads the server's CPU time
(every thread, /proc/PID/task/*/schedstat) at the start and the end of its
measured window, after a warm-up. Servers alternate within each round so
drift hits them alike; figures are medians over the rounds. TLS 1.3, an
ECDSA P-256 certificate (trustme), TCP_NODELAY on both sides.

  rr256   request/response, 256 B, 50 persistent connections: requests/s and
          server CPU µs per request
  rr64k   request/response, 64 KiB, 8 connections
  bulk    one connection, 512 MiB each way (the client writes while it reads
          the echo): MB/s and server CPU ms per MB
  accept  10 clients connecting, handshaking (full, never resumed) and
          closing: handshakes/s and server CPU µs per handshake, with nginx
          (1 worker) as the C anchor, and streamsock's acceptor driven from C
          (bench/c/acceptor_server.c, built with csrc/) to tell the C core's
          cost from the interpreter's

Targets (streamsock.aio on asyncio's default loop unless said otherwise):
server CPU per 256 B request <= 0.6x asyncio + ssl and below uvloop + ssl; at
64 KiB <= 0.75x and requests/s >= 1x; bulk MB/s >= 1.1x stdlib ssl and >=
0.85x the C anchor (streamsock blocking and aio); server CPU per accepted
handshake <= 1.05x nginx.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_handshake import make_pki  # noqa: E402

from streamsock.context import DEFAULT_CIPHERS  # noqa: E402

HERE = Path(__file__).resolve().parent
SERVER_CPU = (os.cpu_count() or 2) - 1
CLIENT_CPU = 0

C_ANCHOR = "C epoll + OpenSSL"
ACCEPTOR_FROM_C = "streamsock acceptor from C"
NGINX = "nginx (1 worker)"
ASYNCIO = "asyncio + ssl"
UVLOOP = "uvloop + ssl"
SS_AIO = "streamsock.aio"
SS_AIO_UV = "streamsock.aio on uvloop"
SS_BLOCKING = "streamsock blocking (threads)"
SS_PROTOCOL = "streamsock.aio protocol"
ASYNCIO_PROTOCOL = "asyncio protocol + ssl"
STDLIB = "stdlib ssl (threads)"

# name -> kind for _echo_servers.py (None: not a Python server)
PYTHON_SERVERS = {
    SS_AIO: "streamsock-aio",
    SS_AIO_UV: "streamsock-aio-uvloop",
    SS_BLOCKING: "streamsock-blocking",
    SS_PROTOCOL: "streamsock-aio-protocol",
    ASYNCIO: "asyncio",
    UVLOOP: "uvloop",
    ASYNCIO_PROTOCOL: "asyncio-protocol",
    STDLIB: "stdlib-threads",
}

TESTS = {
    "rr256": {"mode": "rr", "connections": 50, "size": 256,
              "servers": [C_ANCHOR, SS_AIO, SS_AIO_UV, SS_PROTOCOL, SS_BLOCKING, ASYNCIO, UVLOOP, ASYNCIO_PROTOCOL]},
    "rr64k": {"mode": "rr", "connections": 8, "size": 65536,
              "servers": [C_ANCHOR, SS_AIO, SS_AIO_UV, SS_PROTOCOL, SS_BLOCKING, ASYNCIO, UVLOOP, ASYNCIO_PROTOCOL]},
    "bulk": {"mode": "bulk", "bytes": 512 << 20,
             "servers": [C_ANCHOR, SS_BLOCKING, SS_AIO, SS_PROTOCOL, STDLIB, ASYNCIO]},
    "accept": {"mode": "accept", "connections": 10,
               "servers": [NGINX, C_ANCHOR, ACCEPTOR_FROM_C, SS_AIO, SS_AIO_UV, SS_PROTOCOL, SS_BLOCKING, ASYNCIO,
                           UVLOOP]},
}


def _pin(cpu: int):
    return lambda: os.sched_setaffinity(0, {cpu})


CORE_DIR = HERE.parent / "csrc"


def _build(directory: str, name: str, with_core: bool = False) -> tuple[str | None, str]:
    """Compiles bench/c/NAME.c (with the C core's sources: as the extension is, -O3)."""
    if not shutil.which("gcc"):
        return None, "gcc not found"
    binary = os.path.join(directory, name)
    core = ["-O3", "-DNDEBUG", f"-I{CORE_DIR}", *map(str, sorted(CORE_DIR.glob("*.c"))), "-lpthread"] \
        if with_core else []
    command = ["gcc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE", "-o", binary,
               str(HERE / "c" / f"{name}.c"), *core, "-lssl", "-lcrypto"]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        return None, f"gcc failed: {out.stderr.strip()[:300]}"
    return binary, ""


class Server:
    """One server process on the server CPU, its port read from its first line."""

    def __init__(self, name: str, command: list[str], port: int | None = None, env: dict | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=_pin(SERVER_CPU), env=env)
        if port is None:
            line = self.proc.stdout.readline()
            if not line.strip().isdigit():
                self.stop()
                raise RuntimeError(f"{name} did not start: {line!r} {self.proc.stderr.read()[-2000:]}")
            port = int(line)
        self.port = port

    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_nginx(directory: str, certfile: str, keyfile: str) -> Server | None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not nginx:
        return None
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prefix = os.path.join(directory, "nginx")
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    Path(conf).write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy; fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {certfile};
        ssl_certificate_key {keyfile};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
""")
    server = Server(NGINX, [nginx, "-p", prefix, "-c", conf], port=port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # listening yet?
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return server
        if server.proc.poll() is not None:
            print(f"nginx failed: {server.proc.stderr.read()[-500:]}", file=sys.stderr)
            return None
        time.sleep(0.05)
    server.stop()
    return None


def run_load(load: str, server: Server, cafile: str, test: dict, seconds: float, warmup: float) -> dict:
    command = [load, "--port", str(server.port), "--cafile", cafile, "--host-name", "localhost",
               "--ciphers", DEFAULT_CIPHERS, "--mode", test["mode"], "--seconds", str(seconds),
               "--warmup", str(warmup), "--server-pid", str(server.pid())]
    if "connections" in test:
        command += ["--connections", str(test["connections"])]
    if "size" in test:
        command += ["--size", str(test["size"])]
    if "bytes" in test:
        command += ["--bytes", str(test["bytes"])]
    out = subprocess.run(command, capture_output=True, text=True, preexec_fn=_pin(CLIENT_CPU),
                         timeout=seconds + warmup + 120)
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"load against {server.name} failed ({out.returncode}): {out.stderr.strip()[-1000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def figures(runs: list[dict], mode: str) -> dict:
    """Medians over the rounds: rate (ops/s or MB/s) and server CPU per op (µs) or per MB (ms)."""
    if mode == "bulk":
        rate = statistics.median(r["bytes"] / r["seconds"] / 1e6 for r in runs)
        cpu = statistics.median(r["server_cpu_seconds"] * 1e3 / (r["bytes"] / 1e6) for r in runs)
    else:
        rate = statistics.median(r["ops"] / r["seconds"] for r in runs)
        cpu = statistics.median(r["server_cpu_seconds"] * 1e6 / max(r["ops"], 1) for r in runs)
    busy = statistics.median(r["server_cpu_seconds"] / r["seconds"] for r in runs)
    client = statistics.median(r["client_cpu_seconds"] / r["seconds"] for r in runs)
    return {"rate": rate, "cpu": cpu, "server_busy": busy, "client_busy": client,
            "errors": sum(r.get("errors", 0) for r in runs)}


UNITS = {
    "rr256": ("requests/s", "server CPU µs/request"),
    "rr64k": ("requests/s", "server CPU µs/request"),
    "bulk": ("MB/s", "server CPU ms/MB"),
    "accept": ("handshakes/s", "server CPU µs/handshake"),
}
BASELINE = {"rr256": ASYNCIO, "rr64k": ASYNCIO, "bulk": STDLIB, "accept": NGINX}


def print_table(test: str, table: dict, rounds: int) -> None:
    rate_unit, cpu_unit = UNITS[test]
    base = BASELINE[test] if BASELINE[test] in table else next(iter(table))
    print(f"\n### {test}: medians of {rounds} rounds\n")
    print(f"| server | {rate_unit} | {cpu_unit} | CPU vs {base} | rate vs {base} | server CPU busy | "
          f"load generator CPU busy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    b = table[base]
    for name, f in table.items():
        print(f"| {name} | {f['rate']:,.0f} | {f['cpu']:,.1f} | {f['cpu'] / b['cpu']:.2f} | "
              f"{f['rate'] / b['rate']:.2f} | {f['server_busy']:.0%} | {f['client_busy']:.0%} |")


def check_targets(results: dict) -> list[tuple[str, float, str, bool]]:
    """(what, ratio, target, met) for every target whose contenders ran."""
    checks = []

    def ratio(test: str, a: str, b: str, key: str) -> float | None:
        t = results.get(test, {})
        if a in t and b in t:
            return t[a][key] / t[b][key]
        return None

    def add(what: str, value: float | None, target: str, met) -> None:
        if value is not None:
            checks.append((what, value, target, met(value)))

    add(f"rr256: {SS_AIO} CPU/request vs {ASYNCIO}", ratio("rr256", SS_AIO, ASYNCIO, "cpu"), "<= 0.60",
        lambda v: v <= 0.60)
    add(f"rr256: {SS_AIO} CPU/request vs {UVLOOP}", ratio("rr256", SS_AIO, UVLOOP, "cpu"), "< 1.00",
        lambda v: v < 1.0)
    add(f"rr64k: {SS_AIO} CPU/request vs {ASYNCIO}", ratio("rr64k", SS_AIO, ASYNCIO, "cpu"), "<= 0.75",
        lambda v: v <= 0.75)
    add(f"rr64k: {SS_AIO} requests/s vs {ASYNCIO}", ratio("rr64k", SS_AIO, ASYNCIO, "rate"), ">= 1.00",
        lambda v: v >= 1.0)
    for name in (SS_BLOCKING, SS_AIO):
        add(f"bulk: {name} MB/s vs {STDLIB}", ratio("bulk", name, STDLIB, "rate"), ">= 1.10", lambda v: v >= 1.1)
        add(f"bulk: {name} MB/s vs {C_ANCHOR}", ratio("bulk", name, C_ANCHOR, "rate"), ">= 0.85",
            lambda v: v >= 0.85)
    add(f"accept: {SS_AIO} CPU/handshake vs {NGINX}", ratio("accept", SS_AIO, NGINX, "cpu"), "<= 1.05",
        lambda v: v <= 1.05)
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tests", default=",".join(TESTS))
    parser.add_argument("--only", help="servers to run (names as in the tables, comma-separated)")
    parser.add_argument("--quick", action="store_true", help="one round of 1 s, bulk of 64 MiB")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.rounds = 1.0, 0.5, 1
        TESTS["bulk"]["bytes"] = 64 << 20
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs two CPUs: the server on one, the load generator on the other")
    wanted_tests = [t for t in args.tests.split(",") if t]
    only = set(args.only.split(",")) if args.only else None
    results: dict = {}
    with tempfile.TemporaryDirectory() as directory:
        cafile, certfile, keyfile = make_pki(directory)
        load, why = _build(directory, "tls_load")
        if not load:
            sys.exit(f"cannot build the load generator: {why}")
        echo_c, why_c = _build(directory, "tls_echo_server")
        acceptor_c, why_acceptor = _build(directory, "acceptor_server", with_core=True)
        names = {name for t in wanted_tests for name in TESTS[t]["servers"]}
        if only:
            names &= only
        servers: dict[str, Server] = {}
        try:
            for name in sorted(names):
                if name == C_ANCHOR:
                    if echo_c:
                        servers[name] = Server(name, [echo_c, "--cert", certfile, "--key", keyfile])
                    else:
                        print(f"skipping {name}: {why_c}", file=sys.stderr)
                elif name == ACCEPTOR_FROM_C:
                    if acceptor_c:
                        servers[name] = Server(name, [acceptor_c, certfile, keyfile])
                    else:
                        print(f"skipping {name}: {why_acceptor}", file=sys.stderr)
                elif name == NGINX:
                    nginx = start_nginx(directory, certfile, keyfile)
                    if nginx:
                        servers[name] = nginx
                    else:
                        print("skipping nginx: not installed or not starting (Debian: nginx-light)", file=sys.stderr)
                else:
                    servers[name] = Server(name, [sys.executable, str(HERE / "_echo_servers.py"),
                                                  PYTHON_SERVERS[name], certfile, keyfile])
            for test in wanted_tests:
                spec = TESTS[test]
                runs: dict[str, list] = {n: [] for n in spec["servers"] if n in servers}
                for round_number in range(args.rounds):
                    for name in runs:
                        runs[name].append(run_load(load, servers[name], cafile, spec, args.seconds, args.warmup))
                    print(f"{test}: round {round_number + 1} of {args.rounds} done", file=sys.stderr)
                results[test] = {name: figures(r, spec["mode"]) for name, r in runs.items()}
        finally:
            for server in servers.values():
                server.stop()
    print(f"\nPython {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; servers on CPU "
          f"{SERVER_CPU}, the load generator on CPU {CLIENT_CPU}; {args.seconds:g} s measured after "
          f"{args.warmup:g} s of warm-up per run")
    for test in wanted_tests:
        if results.get(test):
            print_table(test, results[test], args.rounds)
    checks = check_targets(results)
    if checks:
        print("\n### Targets\n")
        for what, value, target, met in checks:
            print(f"- {what}: {value:.2f} (target {target}: {'met' if met else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "targets": checks}, indent=2))


if __name__ == "__main__":
    main()
