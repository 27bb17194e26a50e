"""`streamsock demo`: loopback servers for every transport, a client of each on
every backend, and a probe of many loopback targets, reported as a table.

Everything runs on 127.0.0.1 and a unix socket in a temporary directory; the
TLS servers use a fresh self-signed certificate that the clients pin by its
SHA-256 fingerprint.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from contextlib import ExitStack
from typing import Callable, TextIO

from .. import _backend
from .. import errors as _e
from ..certificate import Certificate
from ..context import Context
from ..stream import Server, Stream, select

_SMTP_GREETING = b"220 demo.local ESMTP streamsock demo\r\n"


class _Serving:
    """A server of the active backend answering connections on a thread until closed."""

    def __init__(self, server: Server, handle: Callable[[Stream], None] | None, *, threads: int = 1) -> None:
        """``handle(conn)`` serves an accepted client; a datagram server, which
        echoes each datagram, has none."""
        self.server = server
        self.handle = handle
        self.stop = threading.Event()
        self.accepting = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    @property
    def port(self) -> int:
        return int(self.server.local_name.rsplit(":", 1)[1])

    def _loop(self) -> None:
        datagram = self.server.address.transport.datagram
        while not self.stop.is_set():
            try:
                if datagram:
                    data, peer = self.server.recvfrom(65536, timeout=0.1)
                    self.server.sendto(data, peer)
                    continue
                # Wait for a client in short steps (to notice stop), then give
                # accept, which also runs the TLS handshake, its own deadline;
                # one thread at a time, so a woken thread always finds its client.
                with self.accepting:
                    if not select([self.server], [], [], 0.1)[0]:
                        continue
                    conn, _ = self.server.accept(timeout=10)
            except _e.TimeoutError:
                continue
            except _e.StreamSocketError:
                if self.stop.is_set():
                    return
                continue  # a client that failed its handshake
            with conn:
                try:
                    if self.handle is not None:
                        self.handle(conn)
                except _e.StreamSocketError:
                    pass

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)
        self.server.close()


def _line(stream: Stream) -> bytes:
    """The next line of a blocking ``stream`` (b"" at its end; only a
    non-blocking stream has none yet)."""
    line = stream.readline()
    assert line is not None, "a blocking stream returned no line"
    return line


def _negotiated(stream: Stream) -> tuple[str, str]:
    """The TLS protocol and cipher of ``stream``."""
    crypto = stream.crypto
    assert crypto is not None, "no TLS on the stream"
    return crypto["protocol"], crypto["cipher_name"]


def _echo_line(conn: Stream) -> None:
    conn.set_timeout(5)
    conn.write(_line(conn))


def _smtp(conn: Stream) -> None:
    conn.set_timeout(5)
    conn.write(_SMTP_GREETING)
    while True:
        line = _line(conn)
        if not line or line.upper().startswith(b"QUIT"):
            conn.write(b"221 bye\r\n")
            return
        if line.upper().startswith(b"EHLO"):
            conn.write(b"250-demo.local\r\n250 STARTTLS\r\n" if not conn.crypto else b"250 demo.local\r\n")
        elif line.upper().startswith(b"STARTTLS"):
            conn.write(b"220 go ahead\r\n")
            conn.enable_crypto(True)
        else:
            conn.write(b"250 " + line)


def _just_handshake(conn: Stream) -> None:
    pass  # accept() has completed the TLS handshake; closing is all that is left


def _timed(fn: Callable[[], str]) -> tuple[bool, str, float]:
    start = time.perf_counter()
    try:
        detail = fn()
        ok = True
    except (_e.StreamSocketError, AssertionError) as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return ok, detail, (time.perf_counter() - start) * 1000


def _client_checks(backend: _backend.Backend, addresses: dict[str, str],
                   ctx: Context) -> list[tuple[str, bool, str, float]]:
    def tcp() -> str:
        with backend.client(addresses["tcp"], timeout=5) as s:
            s.write(b"hello over tcp\n")
            assert _line(s) == b"hello over tcp\n", "echo mismatch"
            return s.peer_name

    def udp() -> str:
        with backend.client(addresses["udp"], timeout=5) as s:
            s.write(b"hello over udp")
            assert s.read(100) == b"hello over udp", "echo mismatch"
            return s.peer_name

    def tls() -> str:
        with backend.client(addresses["tls"], timeout=5, context=ctx) as s:
            s.write(b"hello over tls\n")
            assert _line(s) == b"hello over tls\n", "echo mismatch"
            protocol, cipher = _negotiated(s)
            return f"{protocol} {cipher}"

    def starttls() -> str:
        with backend.client(addresses["smtp"], timeout=5, context=ctx) as s:
            assert _line(s) == _SMTP_GREETING, "no greeting"
            s.write(b"EHLO demo.client\r\n")
            while not (line := _line(s)).startswith(b"250 "):
                assert line, "closed during EHLO"  # b"" again and again at the end: never the last line
            s.write(b"STARTTLS\r\n")
            assert _line(s).startswith(b"220"), "STARTTLS refused"
            s.enable_crypto(True)
            s.write(b"EHLO demo.client\r\n")
            assert _line(s) == b"250 demo.local\r\n", "no EHLO over TLS"
            s.write(b"QUIT\r\n")
            _line(s)
            return f"upgraded to {_negotiated(s)[0]} in place"

    def unix() -> str:
        with backend.client(addresses["unix"], timeout=5) as s:
            s.write(b"hello over unix\n")
            assert _line(s) == b"hello over unix\n", "echo mismatch"
            return "unix socket"

    rows = []
    for label, fn in (("tcp echo", tcp), ("udp echo", udp), ("tls echo", tls), ("smtp STARTTLS", starttls),
                      ("unix echo", unix)):
        ok, detail, ms = _timed(fn)
        rows.append((label, ok, detail, ms))
    return rows


def run(out: TextIO, targets: int = 3000, concurrency: int = 100) -> int:
    """Runs the demo, writes the report to ``out``; returns the exit status."""
    active = _backend.select()
    backends = [active] + [b for b in (_try("native"), _try("pure")) if b is not None and b.name != active.name]
    out.write(f"streamsock demo: every transport on loopback, {active.openssl_version()}\n\n")
    failures = 0
    with tempfile.TemporaryDirectory(prefix="streamsock-demo-") as directory, ExitStack() as stack:
        cert_pem, key_pem = active.self_signed("localhost", days=1)
        certfile, keyfile = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        with open(certfile, "w") as f:
            f.write(cert_pem)
        with open(keyfile, "w") as f:
            f.write(key_pem)
        server_ctx = Context(ssl={"local_cert": certfile, "local_pk": keyfile}, socket={"backlog": 1024})
        serving = {
            "tcp": _Serving(active.server("tcp://127.0.0.1:0"), _echo_line),
            "udp": _Serving(active.server("udp://127.0.0.1:0", flags=4), None),
            "tls": _Serving(active.server("tls://127.0.0.1:0", context=server_ctx), _echo_line),
            "smtp": _Serving(active.server("tcp://127.0.0.1:0", context=server_ctx), _smtp),
            "unix": _Serving(active.server(f"unix://{directory}/demo.sock"), _echo_line),
            "probe": _Serving(active.server("tls://127.0.0.1:0", context=server_ctx), _just_handshake, threads=2),
        }
        for s in serving.values():
            stack.callback(s.close)
        addresses = {
            "tcp": f"tcp://127.0.0.1:{serving['tcp'].port}",
            "udp": f"udp://127.0.0.1:{serving['udp'].port}",
            "tls": f"tls://localhost:{serving['tls'].port}",
            "smtp": f"tcp://127.0.0.1:{serving['smtp'].port}",
            "unix": f"unix://{directory}/demo.sock",
        }
        # The certificate is self-signed: pin it rather than trust it.
        pin = Certificate.from_pem(cert_pem).fingerprint("sha256")
        client_ctx = Context(ssl={"verify_peer": False, "peer_name": "localhost", "peer_fingerprint": pin})

        width = 16
        header = f"{'':{width}}" + "".join(f"{b.name + ' backend':<52}" for b in backends)
        out.write(header.rstrip() + "\n")
        results = [_client_checks(b, addresses, client_ctx) for b in backends]
        for i, (label, *_rest) in enumerate(results[0]):
            cells = []
            for rows in results:
                _, ok, detail, ms = rows[i]
                failures += not ok
                cells.append(f"{'ok' if ok else 'FAILED':<6} {ms:6.1f} ms  {detail}"[:50].ljust(52))
            out.write(f"{label:<{width}}" + "".join(cells).rstrip() + "\n")

        out.write("\n")
        refused = _closed_port(active)
        probe_targets = [f"tls://127.0.0.1:{serving['probe'].port}"] * targets + [f"tcp://127.0.0.1:{refused}"] * 10
        start = time.perf_counter()
        outcome: dict[str, int] = {}
        for r in active.probe(probe_targets, concurrency=concurrency, timeout=10, context=client_ctx):
            key = "ok" if r.ok else (r.error_class or "error")
            outcome[key] = outcome.get(key, 0) + 1
        elapsed = time.perf_counter() - start
        handshakes = outcome.get("ok", 0)
        summary = ", ".join(f"{n} {k}" for k, n in sorted(outcome.items()))
        out.write(f"probe: {len(probe_targets)} targets ({targets} TLS 1.3 handshakes, 10 closed ports) with "
                  f"the {active.name} backend, concurrency {concurrency}: {summary} "
                  f"in {elapsed:.2f} s ({handshakes / elapsed:,.0f} handshakes/s)\n")
        if handshakes != targets or outcome.get("ConnectError", 0) != 10:
            failures += 1
    out.write("\nall steps ok\n" if not failures else f"\n{failures} step(s) FAILED\n")
    return 0 if not failures else 1


def _try(name: str) -> _backend.Backend | None:
    try:
        return _backend.get(name)
    except ImportError:
        return None


def _closed_port(backend: _backend.Backend) -> int:
    with backend.server("tcp://127.0.0.1:0") as probe_port:
        return int(probe_port.local_name.rsplit(":", 1)[1])
