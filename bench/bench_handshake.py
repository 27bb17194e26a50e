"""Connect + TLS 1.3 handshake + close, one connection after another, against one
``openssl s_server`` process: client CPU per connection and median latency.

    python bench/bench_handshake.py [--rounds N] [--connections N] [--quick] [--json FILE]
                                    [--instructions] [--syscalls]

Contenders: OpenSSL's own C client (``openssl s_time -new``), the native
backend, the pure backend, and stdlib ``ssl`` (``socket.create_connection`` +
``wrap_socket``), all verifying the server's chain against the same CA. The
server runs pinned to the last CPU and every client pinned to the first, each
client in its own process; CPU is the client's user + system time, from
getrusage around its timed loop (for ``s_time``, from wait4 on the whole
process, whose start-up adds a few milliseconds to a multi-second run; Linux
splits user from system time by sampling, so the sum is the steadier figure). Rounds
alternate the contenders so drift hits them alike; each figure is the median
of the rounds. ``--syscalls`` counts each client's system calls per
connection with strace (two runs of different lengths, the difference
divided by the difference in connections, so start-up drops out).
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

TARGETS = {"native": (("openssl s_time", 1.03), ("stdlib ssl", 0.97), ("pure", 0.95))}
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
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL, preexec_fn=lambda: _pin(0))
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own CPU, from the kernel
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    m = re.search(r"(\d+) connections in ([\d.]+)s; ([\d.]+) connections/user sec", text)
    if not m:
        raise RuntimeError(f"unexpected s_time output:\n{text}")
    count = int(m.group(1))
    return {
        "connections": count,
        "user_per_conn": usage.ru_utime / count,
        "cpu_per_conn": (usage.ru_utime + usage.ru_stime) / count,  # includes its start-up (a few ms)
        "median_latency": wall / count,  # s_time gives no per-connection times: the mean
        "wall": wall,
    }


# --- instruction counts (valgrind) -------------------------------------------------------------
#
# CPU time on a shared 2-core machine wanders by a few percent between runs,
# as much as the gap being measured. callgrind counts instructions exactly:
# each client runs twice with different numbers of connections, and the
# difference divided by the difference in connections is the cost of one
# connection, start-up excluded.


def _callgrind(command: list[str]) -> tuple[int, str]:
    with tempfile.TemporaryDirectory() as directory:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={directory}/cg.out", *command],
            capture_output=True, text=True, timeout=1800,
        )
    m = re.search(r"Collected : (\d+)", out.stderr)
    if not m:
        raise RuntimeError(f"callgrind failed:\n{out.stderr[-2000:]}")
    return int(m.group(1)), out.stdout


def instructions_per_connection(name: str, port: int, cafile: str, counts=(20, 220)) -> float:
    if name == "openssl s_time":
        runs = []
        for seconds in (2, 8):  # under valgrind s_time makes tens of connections a second
            ir, text = _callgrind(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-tls1_3",
                                   "-time", str(seconds), "-verify", "2", "-CAfile", cafile])
            runs.append((ir, int(re.search(r"(\d+) connections in", text).group(1))))
    else:
        runs = []
        for count in counts:
            ir, _ = _callgrind([sys.executable, __file__, "--count-only", name, str(port), cafile, str(count)])
            runs.append((ir, count))
    (ir1, n1), (ir2, n2) = runs
    return (ir2 - ir1) / (n2 - n1)


def _strace_counts(command: list[str]) -> tuple[dict[str, int], str]:
    """(calls by system call, the command's stdout) for one run under strace -c."""
    with tempfile.TemporaryDirectory() as directory:
        table = os.path.join(directory, "strace.txt")
        out = subprocess.run(["strace", "-f", "-c", "-o", table, *command], capture_output=True, text=True,
                             timeout=600)
        calls = {}
        with open(table) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
                    calls[fields[-1]] = int(fields[3])
    return calls, out.stdout


def syscalls_per_connection(name: str, port: int, cafile: str, counts=(50, 550)) -> dict[str, float]:
    """System calls of one connection, by call, start-up excluded."""
    runs = []
    if name == "openssl s_time":
        for seconds in (1, 4):
            calls, text = _strace_counts(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-tls1_3",
                                          "-time", str(seconds), "-verify", "2", "-CAfile", cafile])
            runs.append((calls, int(re.search(r"(\d+) connections in", text).group(1))))
    else:
        for count in counts:
            calls, _ = _strace_counts([sys.executable, __file__, "--count-only", name, str(port), cafile, str(count)])
            runs.append((calls, count))
    (c1, n1), (c2, n2) = runs
    per = {call: (c2.get(call, 0) - c1.get(call, 0)) / (n2 - n1) for call in set(c1) | set(c2)}
    return {call: n for call, n in sorted(per.items(), key=lambda item: -item[1]) if n >= 0.05}


def count_only(name: str, port: int, cafile: str, count: int) -> None:
    once = _connect_once_factory(name, port, cafile)
    for _ in range(count):
        once()


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
    if len(sys.argv) > 1 and sys.argv[1] in ("--child", "--count-only"):
        name, port, cafile, count = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
        (child if sys.argv[1] == "--child" else count_only)(name, port, cafile, count)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=2000, help="per contender per round")
    parser.add_argument("--quick", action="store_true", help="1 round of 300 connections")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions per connection with valgrind (a few minutes)")
    parser.add_argument("--syscalls", action="store_true", help="also count system calls per connection (strace)")
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
            counted = {}
            if args.instructions and shutil.which("valgrind"):
                for name in CLIENTS:
                    counted[name] = instructions_per_connection(name, port, cafile)
            syscalls = {}
            if args.syscalls and shutil.which("strace"):
                for name in CLIENTS:
                    syscalls[name] = syscalls_per_connection(name, port, cafile)
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
            "cpu_us_per_conn": statistics.median(r["cpu_per_conn"] for r in runs) * 1e6,
            "median_latency_us": statistics.median(r["median_latency"] for r in runs) * 1e6,
            "connections": sum(r["connections"] for r in runs),
        }
        for name, runs in results.items()
    }
    base = summary["openssl s_time"]["cpu_us_per_conn"]
    print(f"\n### Connect + TLS 1.3 handshake + close ({args.rounds} rounds, medians; server pinned to its own CPU)\n")
    print("| client | CPU µs/conn (user+sys) | ratio to s_time | user µs/conn | median latency µs |")
    print("|---|---:|---:|---:|---:|")
    for name, s in summary.items():
        latency = f"{s['median_latency_us']:,.0f}" + (" (mean)" if name == "openssl s_time" else "")
        print(f"| {name} | {s['cpu_us_per_conn']:,.0f} | {s['cpu_us_per_conn'] / base:.3f} | "
              f"{s['user_us_per_conn']:,.0f} | {latency} |")
    print()
    for name, targets in TARGETS.items():
        for other, target in targets:
            ratio = summary[name]["cpu_us_per_conn"] / summary[other]["cpu_us_per_conn"]
            print(f"{name} / {other} CPU per connection: {ratio:.3f} (target <= {target}: "
                  f"{'met' if ratio <= target else 'NOT met'})")
    native_latency = summary["native"]["median_latency_us"] / summary["pure"]["median_latency_us"]
    print(f"native / pure median latency: {native_latency:.3f}")
    if syscalls:
        print("\n| client | system calls per connection | of which |")
        print("|---|---:|---|")
        for name, calls in syscalls.items():
            detail = ", ".join(f"{call} {n:.1f}" for call, n in calls.items())
            print(f"| {name} | {sum(calls.values()):.1f} | {detail} |")
        summary["syscalls_per_connection"] = syscalls
    if counted:
        print("\n| client | instructions per connection (callgrind) | ratio to s_time |")
        print("|---|---:|---:|")
        for name, ir in counted.items():
            print(f"| {name} | {ir:,.0f} | {ir / counted['openssl s_time']:.3f} |")
        summary["instructions_per_connection"] = counted
        print()
        for name, targets in TARGETS.items():
            for other, target in targets:
                ratio = counted[name] / counted[other]
                print(f"{name} / {other} instructions per connection: {ratio:.3f} (target <= {target}: "
                      f"{'met' if ratio <= target else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
