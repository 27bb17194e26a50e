"""Memory per connection for bench_probe.py: N connections held open at once,
the client's memory measured before and while they are held.

Two phases are held, each against its own server process (so the server's
memory is never counted):

* ``established``: a TLS 1.3 server that completes the handshake (and sends
  its session tickets, as servers do) and then stays silent; the client waits
  to read a banner byte that never comes.
* ``handshaking``: a TCP server that accepts and never answers; every client
  has sent its ClientHello and waits for the ServerHello.

Two figures per client process: the malloc heap in use (glibc's mallinfo2:
bytes handed out and not freed, in every arena plus mmapped blocks, so freed
memory that malloc keeps does not count) and the RSS. One-time costs (the
SSL_CTX, OpenSSL's lazily loaded algorithms, the engine's result arena) are
not per connection: the figure per connection is the slope between a small
and a large N, ((held - before) at N2 - (held - before) at N1) / (N2 - N1).

    python bench/_probe_memory.py serve established|handshaking CERT KEY
    python bench/_probe_memory.py hold native|pure established|handshaking CERT KEY CAFILE N
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import resource
import ssl
import subprocess
import sys
import threading
import time

SETTLE_SECONDS = 0.3  # unchanged heap for this long: the connections are parked
HOLD_TIMEOUT = 120.0  # a held connection outlives the whole measurement


def raise_fd_limit() -> int:
    """Lifts the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pin(cpu: int) -> None:
    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        pass


def last_cpu() -> int:
    return max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0


# --- what the process holds -------------------------------------------------------------


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


_libc = ctypes.CDLL(None)
_mallinfo2 = getattr(_libc, "mallinfo2", None)
if _mallinfo2 is not None:
    _mallinfo2.restype = _Mallinfo2


def trim() -> None:
    """Freed pages back to the system, so the RSS counts what is held, not
    the peak of the handshakes before."""
    if hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


def heap_in_use() -> int | None:
    """malloc'd bytes not yet freed (glibc 2.33+), or None without mallinfo2."""
    if _mallinfo2 is None:
        return None
    info = _mallinfo2()
    return info.uordblks + info.hblkhd


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGESIZE")


# --- the servers ------------------------------------------------------------------------


def serve(phase: str, certfile: str, keyfile: str) -> None:
    """Prints ``port N``, then ``count K`` each time a connection reaches the
    phase being held (handshake done, or TCP accepted); serves until killed."""
    raise_fd_limit()
    pin(last_cpu())
    tls = None
    if phase == "established":
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_3
        tls.load_cert_chain(certfile, keyfile)
    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1  # with tls, the handler runs once the handshake is done
        print(f"count {count}", flush=True)
        try:
            if phase == "established":
                await reader.read(1)  # silent until the client goes
            else:
                await asyncio.Event().wait()  # never read, never answer
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls, backlog=4096,
                                            ssl_handshake_timeout=HOLD_TIMEOUT if tls else None)
        print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class HoldServer:
    """The server in its own process, with its running count read on a thread."""

    def __init__(self, phase: str, certfile: str, keyfile: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "serve", phase, certfile, keyfile],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        )
        first = self.process.stdout.readline().split()
        if first[:1] != ["port"]:
            self.close()
            raise RuntimeError("the hold server did not start")
        self.port = int(first[1])
        self.count = 0
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        for line in self.process.stdout:
            if line.startswith("count "):
                self.count = int(line.split()[1])

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.count >= count

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


# --- the clients --------------------------------------------------------------------------


def wait_until_settled(timeout: float = 15.0) -> bool:
    """True once the heap has stopped moving (within 1 KB) for SETTLE_SECONDS."""
    deadline = time.monotonic() + timeout
    last, since = heap_in_use() or rss_bytes(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = heap_in_use() or rss_bytes()
        if abs(now - last) > 1024:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= SETTLE_SECONDS:
            return True
    return False


def hold_python(backend_name: str, phase: str, certfile: str, keyfile: str, cafile: str, connections: int) -> dict:
    """streamsock.probe() on one backend, N targets at concurrency N, held by
    the server; measured from this process while the probe runs on a thread
    (the native engine's C loop runs without the GIL)."""
    import streamsock

    raise_fd_limit()
    pin(0)
    backend = streamsock.get_backend(backend_name)
    server = HoldServer(phase, certfile, keyfile)
    context = streamsock.Context(ssl={"cafile": cafile, "peer_name": "localhost"})
    target = f"tls://127.0.0.1:{server.port}"
    try:
        # Warm up: builds the Context's SSL_CTX and runs one probe to its end,
        # so "before" has them (timing out is fine for the silent server).
        list(backend.probe([target], concurrency=1, timeout=0.5, context=context))
        server.wait_for(1, timeout=5)
        expected = server.count + connections
        trim()
        heap_before, rss_before = heap_in_use(), rss_bytes()
        results: list = []
        runner = threading.Thread(target=lambda: results.extend(backend.probe(
            [target] * connections, concurrency=connections, timeout=HOLD_TIMEOUT, banner=1, context=context)))
        runner.start()
        reached = server.wait_for(expected, timeout=60)
        settled = reached and wait_until_settled()
        trim()
        heap_held, rss_held = heap_in_use(), rss_bytes()
    finally:
        server.close()  # the held probes end now (end of stream or reset)
    runner.join(timeout=60)
    return {"connections": connections, "reached": server.count - (expected - connections), "settled": settled,
            "heap_before": heap_before, "heap_held": heap_held, "rss_before": rss_before, "rss_held": rss_held}


def hold_c(binary: str, phase: str, certfile: str, keyfile: str, cafile: str, connections: int,
           buffers: str = "keep") -> dict:
    """The C baseline holds its own connections and measures itself once they
    are all parked and quiet (a fresh process each time)."""
    server = HoldServer(phase, certfile, keyfile)
    try:
        out = subprocess.run(
            [binary, "--port", str(server.port), "--cafile", cafile, "--concurrency", str(connections),
             "--hold", phase, "--timeout-ms", str(int(HOLD_TIMEOUT * 1000)),
             "--buffers", buffers],
            capture_output=True, text=True, timeout=HOLD_TIMEOUT + 30, preexec_fn=lambda: pin(0),
        )
    finally:
        server.close()
    if out.returncode != 0:
        raise RuntimeError(f"epoll_tls_client --hold failed: {out.stderr.strip()}")
    figures = json.loads(out.stdout)
    figures["reached"] = figures["established"] if phase == "established" else figures["handshaking"]
    return figures


def held(backend_name: str, phase: str, certfile: str, keyfile: str, cafile: str, connections: int) -> dict:
    """One streamsock measurement in a fresh process (RSS never shrinks
    back, so runs must not share one)."""
    out = subprocess.run(
        [sys.executable, __file__, "hold", backend_name, phase, certfile, keyfile, cafile, str(connections)],
        capture_output=True, text=True, timeout=300,
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory child for {backend_name} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def per_connection(small: dict, large: dict) -> dict:
    """Bytes per connection: the slope between two runs, for heap and RSS."""
    span = large["connections"] - small["connections"]

    def slope(key: str) -> float | None:
        if small[f"{key}_before"] is None:
            return None
        grown_small = small[f"{key}_held"] - small[f"{key}_before"]
        grown_large = large[f"{key}_held"] - large[f"{key}_before"]
        return (grown_large - grown_small) / span

    complete = all(r["reached"] == r["connections"] and r["settled"] for r in (small, large))
    return {"heap": slope("heap"), "rss": slope("rss"), "complete": complete, "runs": [small, large]}


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(*sys.argv[2:5])
    elif sys.argv[1] == "hold":
        backend_name, phase, certfile, keyfile, cafile, n = sys.argv[2:8]
        print(json.dumps(hold_python(backend_name, phase, certfile, keyfile, cafile, int(n))))
    else:
        sys.exit(__doc__)
