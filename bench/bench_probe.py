"""Many TLS 1.3 handshakes at once: the C engine against a plain C epoll +
OpenSSL client (the baseline), the pure backend's asyncio probe and plain
asyncio + ssl, at concurrency 1, 10 and 100; then memory per connection.
The engine also runs driven from a C program (bench/c/engine_client.c), which
tells what the engine costs from what the interpreter around it costs.

    python bench/bench_probe.py [--targets N] [--rounds N] [--memory-connections N]
                                [--no-memory] [--no-mix] [--no-runner] [--mix-targets N] [--quick]
                                [--json FILE]

Throughput: every handshake is a full one (no resumption) to one
``openssl s_server -tls1_3`` process pinned to the last CPU, with every client
pinned to the first and verifying the chain against the same CA and the name
``localhost``. Every client runs in a process of its own and times its own
loop, after a warm-up (the C baseline after its SSL_CTX set-up). s_server serves one connection at a time, so the client's CPU
per handshake stays on the critical path at every concurrency. Contenders
alternate within each round so drift hits them alike; figures are medians
over the rounds, and the run says how much CPU other processes took meanwhile.
The C programs (bench/c/epoll_tls_client.c, and engine_client.c with csrc/)
are compiled with gcc at run time and skipped, with the reason, when that
fails.

Memory (bench/_probe_memory.py): N connections held at once, established
(the server went silent after the handshake) and mid-handshake (the server
never answers the ClientHello), each against a server in its own process;
bytes per connection are the slope of the client's malloc heap in use
(mallinfo2) and of its RSS between N/4 and N connections. The C baseline
also runs with OpenSSL's record buffers given back while a connection waits
(SSL_MODE_RELEASE_BUFFERS, SSL_free_buffers: what the engine does).

Record fields (bench/_probe_fingerprints.py): what decoding a record's
certificate and computing JA3S, JA4S and JA4X cost, per record, as a share
of the native probe's CPU per handshake (all are computed only when asked).

Live among dead (bench/_probe_mix.py): one target in a hundred a live TLS
server, the rest a closed port, 1,000 at once; live hosts reported dead, and
the live handshakes' p50 against the live targets probed alone.

The Dask runner (bench/_probe_runner.py): streamsock.distributed with two
worker processes and two shards against plain probe() (counting, and writing
the same JSON records), client CPU per handshake at concurrency 100.

Targets (for the native engine): handshakes/s >= 0.95x the C baseline at the
same concurrency, <= 30 KB per open TLS connection, <= 45 KB per handshake in
flight (heap figures); among dead targets no live one reported dead, and the
handshake p50 within 2x of the live targets alone; the runner's client CPU
per handshake <= 1.05x plain probe()'s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import _probe_fingerprints  # noqa: E402
import _probe_memory  # noqa: E402
import _probe_mix  # noqa: E402
import _probe_runner  # noqa: E402
from bench_handshake import _pin, make_pki, start_server  # noqa: E402

import streamsock  # noqa: E402
from streamsock.context import DEFAULT_CIPHERS  # noqa: E402

CONCURRENCIES = (1, 10, 100)
C_BASELINE = "C epoll + OpenSSL"
ENGINE_FROM_C = "engine from C"
ASYNCIO = "asyncio + ssl"
NATIVE = "native engine"
PURE = "pure (asyncio)"
TARGET_RATE_VS_C = 0.95
TARGET_KB = {"established": 30.0, "handshaking": 45.0}
C_SOURCE = Path(__file__).parent / "c" / "epoll_tls_client.c"
ENGINE_CLIENT_SOURCE = Path(__file__).parent / "c" / "engine_client.c"
CORE_DIR = Path(__file__).resolve().parent.parent / "csrc"


# --- the contenders: each runs `count` handshakes and says how many succeeded --------------


def run_engine(name: str, port: int, cafile: str, count: int, concurrency: int) -> int:
    backend = streamsock.get_backend(name)
    ctx = streamsock.Context(ssl={"cafile": cafile, "peer_name": "localhost"})
    targets = (f"tls://127.0.0.1:{port}" for _ in range(count))
    ok = resumed = 0
    for r in backend.probe(targets, concurrency=concurrency, timeout=30, context=ctx):
        ok += r.ok
        resumed += r.session_reused  # every handshake must be a full one
    if resumed:
        print(f"warning: {name}: {resumed} of {count} handshakes resumed a session", file=sys.stderr)
    return ok


def run_asyncio(port: int, cafile: str, count: int, concurrency: int) -> int:
    ctx = ssl.create_default_context(cafile=cafile)

    async def one(sem: asyncio.Semaphore) -> bool:
        async with sem:
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), 30)
            except (OSError, asyncio.TimeoutError):
                return False
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass
            return True

    async def main() -> int:
        sem = asyncio.Semaphore(concurrency)
        return sum(await asyncio.gather(*(one(sem) for _ in range(count))))

    return asyncio.run(main())


def measure_in_process(fn) -> dict:
    """Wall time and this process's CPU time around one run."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    ok = fn()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"ok": ok, "seconds": wall, "cpu_seconds": cpu}


def build_c_client(directory: str) -> tuple[str | None, str]:
    """(path of the compiled baseline, "") or (None, why it cannot be built)."""
    return _build(os.path.join(directory, "epoll_tls_client"), [str(C_SOURCE)])


def build_engine_client(directory: str) -> tuple[str | None, str]:
    """(path of the engine driven from C, "") or (None, why it cannot be built)."""
    sources = [str(ENGINE_CLIENT_SOURCE), *map(str, sorted(CORE_DIR.glob("*.c")))]
    # Built as the extension is (CMake Release: -O3 -DNDEBUG).
    return _build(os.path.join(directory, "engine_client"),
                  ["-O3", "-DNDEBUG", "-D_GNU_SOURCE", f"-I{CORE_DIR}", *sources, "-lpthread"])


def _build(binary: str, arguments: list[str]) -> tuple[str | None, str]:
    if not shutil.which("gcc"):
        return None, "gcc not found"
    command = ["gcc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-o", binary, *arguments, "-lssl", "-lcrypto"]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        first = next((line for line in out.stderr.splitlines() if "error" in line), out.stderr.strip()[:300])
        return None, f"gcc failed ({first}); Debian needs gcc and libssl-dev"
    return binary, ""


def run_c_client(binary: str, port: int, cafile: str, count: int, concurrency: int) -> dict:
    """The baseline times its own loop (process start-up and SSL_CTX set-up excluded)."""
    return _run_c([binary, "--port", str(port), "--cafile", cafile, "--host-name", "localhost",
                   "--concurrency", str(concurrency), "--handshakes", str(count), "--ciphers", DEFAULT_CIPHERS])


def run_engine_client(binary: str, port: int, cafile: str, count: int, concurrency: int) -> dict:
    """The engine from C times its own loop too, after a warm-up."""
    return _run_c([binary, str(port), cafile, "localhost", str(concurrency), str(count), DEFAULT_CIPHERS])


def _run_c(command: list[str]) -> dict:
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{os.path.basename(command[0])} failed: {out.stderr.strip()}")
    figures = json.loads(out.stdout)
    return {"ok": figures["handshakes"], "seconds": figures["seconds"], "cpu_seconds": figures["cpu_seconds"]}


PYTHON_CONTENDERS = {
    NATIVE: lambda port, cafile, n, c: run_engine("native", port, cafile, n, c),
    PURE: lambda port, cafile, n, c: run_engine("pure", port, cafile, n, c),
    ASYNCIO: run_asyncio,
}
CHILD_WARMUP = 100  # handshakes a child makes before it times its loop


def run_child(name: str, port: int, cafile: str, count: int, concurrency: int) -> dict:
    """A Python contender in a process of its own, as the C baseline runs: a warm-up
    (imports, lazy OpenSSL set-up), then its timed loop. Contenders sharing one
    process would leave each other heaps, threads and OpenSSL state."""
    out = subprocess.run([sys.executable, __file__, "--child", name, str(port), cafile, str(count), str(concurrency)],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout)


def child_main(name: str, port: str, cafile: str, count: str, concurrency: str) -> None:
    run = PYTHON_CONTENDERS[name]
    run(int(port), cafile, CHILD_WARMUP, 10)
    print(json.dumps(measure_in_process(lambda: run(int(port), cafile, int(count), int(concurrency)))))


def contenders(c_binary: str | None, engine_binary: str | None, port: int, cafile: str) -> dict:
    """name -> run(count, concurrency) -> {"ok", "seconds", "cpu_seconds"}."""
    runs = {}
    if c_binary:
        runs[C_BASELINE] = lambda n, c: run_c_client(c_binary, port, cafile, n, c)
    if engine_binary:
        runs[ENGINE_FROM_C] = lambda n, c: run_engine_client(engine_binary, port, cafile, n, c)
    for name in PYTHON_CONTENDERS:
        runs[name] = lambda n, c, name=name: run_child(name, port, cafile, n, c)
    return runs


# --- throughput ------------------------------------------------------------------------------


def machine_busy_seconds() -> float:
    """CPU time every CPU spent busy so far (/proc/stat), in seconds."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this process and of its children that have been waited for."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def throughput(runs: dict, count: int, rounds: int) -> dict:
    """{concurrency: {name: {"rate", "cpu_us"}}}, medians over the rounds."""
    for run in runs.values():  # warm-up: lazy OpenSSL and interpreter set-up stays out
        run(min(100, count), 10)
    samples = {c: {name: [] for name in runs} for c in CONCURRENCIES}
    for round_number in range(rounds):
        for concurrency in CONCURRENCIES:
            for name, run in runs.items():
                r = run(count, concurrency)
                if r["ok"] != count:
                    print(f"warning: {name} at {concurrency}: {count - r['ok']} of {count} failed", file=sys.stderr)
                samples[concurrency][name].append(r)
        print(f"round {round_number + 1} of {rounds} done", file=sys.stderr)
    return {
        concurrency: {
            name: {
                "rate": statistics.median(r["ok"] / r["seconds"] for r in rs),
                "cpu_us": statistics.median(r["cpu_seconds"] / max(r["ok"], 1) * 1e6 for r in rs),
            }
            for name, rs in by_name.items()
        }
        for concurrency, by_name in samples.items()
    }


def print_throughput(table: dict, count: int, rounds: int) -> dict:
    """Prints the table; returns {concurrency: native/C ratio} (empty without the baseline)."""
    print(f"\n### {count} full TLS 1.3 handshakes per run, one s_server (one connection at a time) on its own CPU "
          f"(Python {platform.python_version()}, {os.cpu_count()} CPUs, medians of {rounds} rounds)\n")
    has_c = any(C_BASELINE in figures for figures in table.values())
    print("| concurrency | client | handshakes/s | client CPU µs/handshake | vs C baseline | vs asyncio + ssl |")
    print("|---:|---|---:|---:|---:|---:|")
    native_vs_c = {}
    for concurrency, figures in table.items():
        c_rate = figures[C_BASELINE]["rate"] if has_c else None
        asyncio_rate = figures[ASYNCIO]["rate"]
        for name, f in figures.items():
            vs_c = f"{f['rate'] / c_rate:.2f}" if c_rate else "n/a"
            print(f"| {concurrency} | {name} | {f['rate']:,.0f} | {f['cpu_us']:,.0f} | {vs_c} | "
                  f"{f['rate'] / asyncio_rate:.2f} |")
        if c_rate:
            native_vs_c[concurrency] = figures[NATIVE]["rate"] / c_rate
    print()
    for concurrency, ratio in native_vs_c.items():
        met = "met" if ratio >= TARGET_RATE_VS_C else "NOT met"
        print(f"native engine / C baseline at concurrency {concurrency}: {ratio:.3f} "
              f"(target >= {TARGET_RATE_VS_C}: {met})")
    return native_vs_c


# --- memory ------------------------------------------------------------------------------------


# The C baseline once more with OpenSSL's per-connection buffers given back while
# a connection waits (bench/c/epoll_tls_client.c --buffers); the engine does the last.
C_BUFFER_VARIANTS = {
    C_BASELINE: "keep",
    "C + SSL_MODE_RELEASE_BUFFERS": "release",
    "C + SSL_free_buffers while waiting": "free-idle",
}


def memory(c_binary: str | None, certfile: str, keyfile: str, cafile: str, connections: int) -> dict:
    """{phase: {contender: per_connection figures}} for N/4 and N held connections."""
    who = [NATIVE] + (list(C_BUFFER_VARIANTS) if c_binary else []) + [PURE]
    sizes = (max(connections // 4, 1), connections)
    results: dict = {}
    for phase in ("established", "handshaking"):
        results[phase] = {}
        for name in who:
            runs = []
            for n in sizes:
                if name in C_BUFFER_VARIANTS:
                    runs.append(_probe_memory.hold_c(c_binary, phase, certfile, keyfile, cafile, n,
                                                     buffers=C_BUFFER_VARIANTS[name]))
                else:
                    backend_name = "native" if name == NATIVE else "pure"
                    runs.append(_probe_memory.held(backend_name, phase, certfile, keyfile, cafile, n))
            results[phase][name] = _probe_memory.per_connection(*runs)
            if not results[phase][name]["complete"]:
                print(f"warning: memory, {name}, {phase}: not every connection was held and settled "
                      f"({[(r['connections'], r['reached'], r['settled']) for r in runs]})", file=sys.stderr)
        print(f"memory: {phase} done", file=sys.stderr)
    return results


def print_memory(results: dict, connections: int) -> dict:
    """Prints the table; returns {phase: native heap KB per connection}."""
    print(f"\n### Client memory per connection, {connections // 4} and {connections} held at once "
          f"(slope between the two; KB = 1024 bytes)\n")
    print("heap: malloc'd and not freed (glibc mallinfo2); RSS: resident set after malloc_trim(0).\n")
    print("| client | open TLS connection: heap KB | RSS KB | handshake in flight: heap KB | RSS KB |")
    print("|---|---:|---:|---:|---:|")

    def kb(value: float | None) -> str:
        return "n/a" if value is None else f"{value / 1024:.1f}"

    for name in results["established"]:
        e, h = results["established"][name], results["handshaking"][name]
        print(f"| {name} | {kb(e['heap'])} | {kb(e['rss'])} | {kb(h['heap'])} | {kb(h['rss'])} |")
    print()
    native = {}
    for phase, label in (("established", "per open TLS connection"), ("handshaking", "per handshake in flight")):
        heap = results[phase][NATIVE]["heap"]
        if heap is None:
            continue
        native[phase] = heap / 1024
        met = "met" if native[phase] <= TARGET_KB[phase] else "NOT met"
        print(f"native engine, heap {label}: {native[phase]:.1f} KB (target <= {TARGET_KB[phase]:.0f} KB: {met})")
    return native


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=1500, help="handshakes per contender per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-connections", type=int, default=1000, help="connections held at once")
    parser.add_argument("--no-memory", action="store_true", help="no memory figures")
    parser.add_argument("--no-mix", action="store_true", help="no live-among-dead scan")
    parser.add_argument("--no-runner", action="store_true", help="no Dask runner row (needs streamsock[dask])")
    parser.add_argument("--mix-targets", type=int, default=50_000, help="targets of the live-among-dead scan")
    parser.add_argument("--quick", action="store_true", help="one round of 300, memory with 400")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    if args.quick:
        args.targets, args.rounds, args.memory_connections, args.mix_targets = 300, 1, 400, 10_000
    if not shutil.which("openssl"):
        sys.exit("needs the openssl command (Debian: apt-get install openssl)")
    fd_limit = _probe_memory.raise_fd_limit()
    if not args.no_memory and fd_limit < args.memory_connections + 100:
        sys.exit(f"RLIMIT_NOFILE is {fd_limit}: too low to hold {args.memory_connections} connections")
    _pin(0)
    report: dict = {}
    with tempfile.TemporaryDirectory() as directory:
        cafile, certfile, keyfile = make_pki(directory)
        c_binary, why_not = build_c_client(directory)
        if not c_binary:
            print(f"skipping the C baseline: {why_not}", file=sys.stderr)
        engine_binary, why_not = build_engine_client(directory)
        if not engine_binary:
            print(f"skipping the engine driven from C: {why_not}", file=sys.stderr)
        busy_before, own_before = machine_busy_seconds(), own_cpu_seconds()
        server, port = start_server(certfile, keyfile)
        runner_table = None
        try:
            table = throughput(contenders(c_binary, engine_binary, port, cafile), args.targets, args.rounds)
            # Other jobs on the machine skew the figures: say how much CPU went elsewhere
            # (kernel network work not charged to a process counts here too).
            busy, own = machine_busy_seconds() - busy_before, own_cpu_seconds() - own_before
            elsewhere = (busy - own) / max(busy, 1e-9)
            fingerprints = _probe_fingerprints.measure(port, cafile, args.targets)
            if not args.no_runner:
                runner_table = _probe_runner.runner_vs_probe(port, cafile, args.targets, args.rounds)
        finally:
            server.kill()
            server.wait()
        memory_results = None
        if not args.no_memory:
            memory_results = memory(c_binary, certfile, keyfile, cafile, args.memory_connections)
    report["throughput"] = table
    report["native_vs_c"] = print_throughput(table, args.targets, args.rounds)
    report["cpu_elsewhere"] = elsewhere
    print(f"CPU time spent outside the benchmark's processes during these runs: {elsewhere:.0%} of the busy "
          f"time{' (other jobs were running: the figures are skewed)' if elsewhere > 0.1 else ''}")
    report["record_fields"] = fingerprints
    _probe_fingerprints.print_fingerprints(fingerprints, args.targets)
    if runner_table:
        report["runner"] = runner_table
        report["runner_cpu_ratio"] = _probe_runner.print_runner(runner_table, args.targets, args.rounds)
    if memory_results:
        report["memory"] = memory_results
        report["native_memory_kb"] = print_memory(memory_results, args.memory_connections)
    if not args.no_mix:
        report["live_among_dead"] = mix_table = _probe_mix.mix(args.mix_targets, args.rounds)
        _probe_mix.print_mix(mix_table, args.mix_targets, args.rounds)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if sys.argv[1:2] == ["--child"]:
        child_main(*sys.argv[2:])
    else:
        main()
