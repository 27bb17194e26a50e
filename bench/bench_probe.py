"""Many TLS 1.3 handshakes at once: the C engine against the pure backend's
thread pool and plain asyncio + ssl, at concurrency 1, 10 and 100, each a full
handshake (no resumption) to one ``openssl s_server`` process pinned to its own
CPU. Figures are handshakes per second and client CPU per handshake.

    python bench/bench_probe.py [--targets N] [--quick]

Not measured yet: a plain C epoll + OpenSSL client (the issue's baseline) and
memory per connection in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import ssl
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_handshake import _pin, make_pki, start_server  # noqa: E402

import streamsock  # noqa: E402


def run_engine(name: str, port: int, cafile: str, count: int, concurrency: int) -> int:
    backend = streamsock.get_backend(name)
    ctx = streamsock.Context(ssl={"cafile": cafile, "peer_name": "localhost"})
    targets = (f"tls://127.0.0.1:{port}" for _ in range(count))
    ok = sum(r.ok for r in backend.probe(targets, concurrency=concurrency, timeout=30, context=ctx))
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


def measure(label: str, fn, count: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    ok = fn()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if ok != count:
        print(f"warning: {label}: {count - ok} of {count} failed", file=sys.stderr)
    return {"rate": ok / wall, "cpu_us": cpu / max(ok, 1) * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=2000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    count = 300 if args.quick else args.targets
    _pin(0)
    with tempfile.TemporaryDirectory() as directory:
        cafile, certfile, keyfile = make_pki(directory)
        server, port = start_server(certfile, keyfile)
        try:
            rows = []
            for concurrency in (1, 10, 100):
                figures = {
                    "native engine": measure("native", lambda: run_engine("native", port, cafile, count, concurrency),
                                             count),
                    "pure (threads)": measure("pure", lambda: run_engine("pure", port, cafile, count, concurrency),
                                              count),
                    "asyncio + ssl": measure("asyncio", lambda: run_asyncio(port, cafile, count, concurrency), count),
                }
                rows.append((concurrency, figures))
        finally:
            server.kill()
            server.wait()
    print(f"\n### {count} full TLS 1.3 handshakes per run, one s_server on its own CPU\n")
    print("| concurrency | client | handshakes/s | client CPU µs/handshake | rate vs asyncio |")
    print("|---:|---|---:|---:|---:|")
    for concurrency, figures in rows:
        base = figures["asyncio + ssl"]["rate"]
        for name, f in figures.items():
            print(f"| {concurrency} | {name} | {f['rate']:,.0f} | {f['cpu_us']:,.0f} | {f['rate'] / base:.2f} |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
