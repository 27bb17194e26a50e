"""Threads, both backends: many streams at once on a shared Context, one stream from
two threads (SS_ERR_BUSY, never corrupted state), and blocking calls that release
the GIL so blocked streams do not hold each other up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import streamsock as ss
from peers import PyTLSServer, SilentServer, SMTPStartTLSServer, StallingTLSServer

TESTS = Path(__file__).parent


pytestmark = pytest.mark.usefixtures("no_thread_leak")


def port_of(server: ss.Server) -> int:
    return int(server.local_name.rsplit(":", 1)[1])


def run_threads(target, count: int, timeout: float = 60.0) -> list:
    """Run ``target(index)`` on ``count`` threads started together; returns the
    exceptions they raised (empty when all succeeded)."""
    errors: list = []
    lock = threading.Lock()
    barrier = threading.Barrier(count)

    def wrapper(index):
        try:
            barrier.wait(10)
            target(index)
        except BaseException as exc:  # collected, asserted by the caller
            with lock:
                errors.append((index, exc))

    threads = [threading.Thread(target=wrapper, args=(i,), name=f"worker-{i}") for i in range(count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "worker threads hung"
    return errors


# ---------------------------------------------------------------------------------------------
# (a) many TLS connections at once, one shared Context
# ---------------------------------------------------------------------------------------------

THREADS, CYCLES = 16, 20


def test_concurrent_tls_cycles_against_pytls_server(backend, pki):
    ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
    results: dict = {}
    compiled: set[int] = set()

    with PyTLSServer(pki.server_certfile, pki.server_keyfile) as peer:
        url = f"tls://127.0.0.1:{peer.port}"

        def worker(k):
            got = []
            compiled.add(id(backend.tls_context(ctx, False, ss.Transport.TLS)))  # all threads at once
            for i in range(CYCLES):
                with backend.client(url, timeout=20, context=ctx) as s:
                    s.set_timeout(20)
                    line = f"thread {k} cycle {i} {'x' * (k * 37 + i)}\n".encode()
                    assert s.write(line) == len(line)
                    got.append(s.readline() == line)
                    assert s.crypto["protocol"] == "TLSv1.3"
            results[k] = got

        errors = run_threads(worker, THREADS)
        assert not errors, errors[:3]
        peer.wait_for_connections(THREADS * CYCLES, timeout=20)
        assert all(c.handshake_error is None for c in peer.connections)
    assert sorted(results) == list(range(THREADS))
    assert all(all(v) and len(v) == CYCLES for v in results.values())
    assert len(compiled) == 1  # one compiled TLS context, shared by every thread


def test_concurrent_tls_cycles_against_our_own_server(backend, pki):
    """16 client threads, 4 acceptor threads on ONE Server, one Context per side."""
    sctx = ss.Context(ssl={"local_cert": pki.server_certfile, "local_pk": pki.server_keyfile})
    cctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
    served: list = []
    server_errors: list = []
    lock = threading.Lock()
    stop = threading.Event()

    with backend.server("tls://127.0.0.1:0", context=sctx) as srv:
        port = port_of(srv)

        def acceptor():
            while not stop.is_set():
                try:
                    conn, _ = srv.accept(timeout=0.2)
                except ss.TimeoutError:
                    continue
                except BaseException as exc:
                    with lock:
                        server_errors.append(exc)
                    continue
                with conn:
                    try:
                        conn.set_timeout(10)
                        line = conn.readline()
                        conn.write(b"echo: " + line)
                        with lock:
                            served.append(line)
                    except BaseException as exc:
                        with lock:
                            server_errors.append(exc)

        acceptors = [threading.Thread(target=acceptor, name=f"acceptor-{i}") for i in range(4)]
        for t in acceptors:
            t.start()
        try:
            def worker(k):
                for i in range(CYCLES):
                    with backend.client(f"tls://127.0.0.1:{port}", timeout=20, context=cctx) as s:
                        s.set_timeout(20)
                        line = f"{k}/{i}\n".encode()
                        s.write(line)
                        assert s.readline() == b"echo: " + line

            errors = run_threads(worker, THREADS)
        finally:
            stop.set()
            for t in acceptors:
                t.join(10)
        assert not errors, errors[:3]
        assert not server_errors, server_errors[:3]
    assert sorted(served) == sorted(f"{k}/{i}\n".encode() for k in range(THREADS) for i in range(CYCLES))


# ---------------------------------------------------------------------------------------------
# (b) one stream, two threads: SS_ERR_BUSY, and the stream keeps working afterwards
# ---------------------------------------------------------------------------------------------


class Blocked:
    """Runs ``call()`` on a thread and waits until it is (very probably) blocked inside."""

    def __init__(self, call, settle: float = 0.2):
        self.call = call
        self.result = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="blocked-call")
        self.settle = settle

    def _run(self):
        try:
            self.result = self.call()
        except BaseException as exc:
            self.error = exc

    def __enter__(self):
        self.thread.start()
        time.sleep(self.settle)
        assert self.thread.is_alive(), "the call returned instead of blocking"
        return self

    def __exit__(self, *exc):
        self.thread.join(10)
        assert not self.thread.is_alive()


def assert_busy(fn) -> None:
    start = time.monotonic()
    with pytest.raises(ss.StreamSocketError) as info:
        fn()
    assert info.value.code == "SS_ERR_BUSY", info.value
    assert type(info.value) is ss.StreamSocketError
    assert "in use by another thread" in str(info.value)
    assert time.monotonic() - start < 0.5  # refused at once, not after waiting


def test_tls_stream_busy_while_another_thread_reads(backend, pki):
    ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
    with PyTLSServer(pki.server_certfile, pki.server_keyfile) as peer:
        with backend.client(f"tls://127.0.0.1:{peer.port}", timeout=5, context=ctx) as s:
            s.set_timeout(1.0)
            with Blocked(lambda: s.read(10)) as reader:
                assert_busy(lambda: s.write(b"x\n"))
                assert_busy(lambda: s.read(1))
                assert_busy(s.readline)
                assert_busy(lambda: s.enable_crypto(False))
                assert_busy(lambda: s.shutdown(ss.SHUT_WR))
            # The reader ends with its own timeout, untouched by the refused calls.
            assert isinstance(reader.error, ss.TimeoutError) and reader.error.errno == 110
            # Nothing was corrupted: the TLS session still round-trips.
            s.set_timeout(5)
            for i in range(3):
                s.write(b"after busy %d\n" % i)
                assert s.readline() == b"after busy %d\n" % i
            assert s.crypto["protocol"] == "TLSv1.3"


def test_tls_stream_busy_while_another_thread_writes(backend, pki):
    with StallingTLSServer(pki.server_certfile, pki.server_keyfile) as peer:
        ctx = ss.Context(ssl={"verify_peer": False})
        with backend.client(f"tls://127.0.0.1:{peer.port}", timeout=5, context=ctx) as s:
            s.set_timeout(0.8)
            if backend.name == "pure":
                # test_faults' PURE_TLS_WRITE_BUG: its first big TLS write is buffered rather
                # than blocking; prime it so the next one blocks (harmless once fixed).
                try:
                    s.write(b"y" * (8 << 20))
                except ss.TimeoutError:
                    pass
            with Blocked(lambda: s.write(b"y" * (32 << 20))) as writer:
                assert_busy(lambda: s.read(1))
                assert_busy(lambda: s.write(b"z"))
            assert isinstance(writer.error, ss.TimeoutError)


def test_readline_vs_enable_crypto(backend, pki):
    """One thread blocked in readline on a plaintext SMTP session while another tries
    STARTTLS: refused with SS_ERR_BUSY; the session then upgrades normally."""
    ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
    with SMTPStartTLSServer(pki.server_certfile, pki.server_keyfile) as peer:
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5, context=ctx) as s:
            s.set_timeout(5)
            assert s.readline() == SMTPStartTLSServer.BANNER
            s.set_timeout(0.8)
            with Blocked(s.readline) as reader:  # the server says nothing until we do
                assert_busy(lambda: s.enable_crypto(True, ss.CRYPTO_METHOD_TLS_CLIENT))
                assert_busy(lambda: s.enable_crypto(True))
            assert isinstance(reader.error, ss.TimeoutError)
            assert s.crypto is None  # still plaintext: the refused call changed nothing
            s.set_timeout(5)
            s.write(b"EHLO me\r\n")
            assert s.readline() == b"250-localhost\r\n"
            assert s.readline() == b"250 STARTTLS\r\n"
            s.write(b"STARTTLS\r\n")
            assert s.readline() == SMTPStartTLSServer.READY
            assert s.enable_crypto(True, ss.CRYPTO_METHOD_TLS_CLIENT) is True
            s.write(b"EHLO me\r\n")
            assert s.readline() == SMTPStartTLSServer.EHLO_TLS
            assert s.crypto["protocol"] == "TLSv1.3"
        record = peer.wait_for_connections(1)[0]
        assert record.handshake_error is None and record.tls_lines == [b"EHLO me"]


def test_enable_crypto_in_progress_vs_readline(backend):
    """The reverse: a STARTTLS handshake blocked on a silent peer; readline and write
    from another thread are refused, and the handshake times out on its own."""
    with SilentServer() as peer:
        ctx = ss.Context(ssl={"verify_peer": False})
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5, context=ctx) as s:
            s.set_timeout(0.8)
            with Blocked(lambda: s.enable_crypto(True, ss.CRYPTO_METHOD_TLS_CLIENT)) as upgrade:
                assert_busy(s.readline)
                assert_busy(lambda: s.write(b"EHLO\r\n"))
                assert_busy(lambda: s.enable_crypto(True, ss.CRYPTO_METHOD_TLS_CLIENT))
            assert isinstance(upgrade.error, ss.TimeoutError) and upgrade.error.errno == 110


_CLOSE_RACE = r"""
import json, os, random, sys, threading, time
sys.path.insert(0, sys.argv[4])
import streamsock as ss
from peers import RawServer, flood_script
import ssl
backend = ss.get_backend(sys.argv[1])
server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain(sys.argv[2], sys.argv[3])
ctx = ss.Context(ssl={"verify_peer": False})
outcomes, wake = {}, []
fds_before = len(os.listdir("/proc/self/fd"))
with RawServer(flood_script(server_ctx)) as peer:
    for i in range(int(sys.argv[5])):
        s = backend.client(f"tls://127.0.0.1:{peer.port}", timeout=5, context=ctx)
        s.set_timeout(5)  # a reader that close() failed to wake would sit here for 5 s
        ended = []
        def reader():
            try:
                while s.read(65536):
                    pass
                key = "eof"
            except ss.StreamSocketError as exc:
                key = exc.code
            except BaseException as exc:
                key = type(exc).__name__ + ": " + str(exc)[:80]
            ended.append(time.monotonic())
            outcomes[key] = outcomes.get(key, 0) + 1
        t = threading.Thread(target=reader)
        t.start()
        time.sleep(random.random() * 0.005)
        closing = time.monotonic()
        try:
            s.close()
        except BaseException as exc:
            key = "close: " + type(exc).__name__ + " " + str(getattr(exc, "code", ""))
            outcomes[key] = outcomes.get(key, 0) + 1
        t.join(10)
        if ended:
            wake.append(ended[0] - closing)
        if not s.closed:
            outcomes["not closed after the reader left"] = outcomes.get("not closed after the reader left", 0) + 1
fds_after = len(os.listdir("/proc/self/fd"))  # the peer has closed its own sockets by now
print(json.dumps({"outcomes": outcomes, "max_wake": max(wake), "fds": [fds_before, fds_after]}))
"""


def test_close_while_another_thread_reads_is_safe(backend, pki):
    """close() from a second thread while the first is inside read() on a flooding TLS
    stream: never a crash or a corrupted SSL object. The reader is woken at once and ends
    with SS_ERR_CLOSED ("stream closed by another thread"), the stream ends closed, its
    descriptor released. Run in a subprocess: the failure mode of this bug is a SIGSEGV."""
    proc = subprocess.run(
        [sys.executable, "-c", _CLOSE_RACE, backend.name, pki.server_certfile, pki.server_keyfile, str(TESTS),
         "150"],
        capture_output=True, timeout=120, text=True,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report["outcomes"]) == {"SS_ERR_CLOSED"}, report
    assert report["max_wake"] < 1.0, report  # woken by close(), not by its 5 s timeout
    assert report["fds"][0] == report["fds"][1], report


def test_close_wakes_a_reader_blocked_on_a_silent_peer(backend):
    with SilentServer() as peer:
        s = backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5)
        s.set_timeout(5)
        with Blocked(lambda: s.read(10)) as reader:
            start = time.monotonic()
            s.close()
            reader.thread.join(5)
            woke = time.monotonic() - start
        assert woke < 1.0, woke
        assert isinstance(reader.error, ss.StreamSocketError) and reader.error.code == "SS_ERR_CLOSED"
        assert s.closed
        with pytest.raises(ss.StreamSocketError) as info:
            s.read(1)
        assert info.value.code == "SS_ERR_CLOSED"


# ---------------------------------------------------------------------------------------------
# (c) blocking calls release the GIL
# ---------------------------------------------------------------------------------------------

BLOCKED = 8


def test_blocked_reads_do_not_block_each_other(backend):
    with SilentServer() as peer:
        streams = [backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5) for _ in range(BLOCKED)]
        try:
            took: dict = {}

            def worker(k):
                s = streams[k]
                s.set_timeout(1.0)
                start = time.monotonic()
                try:
                    s.read(10)
                except ss.TimeoutError:
                    took[k] = time.monotonic() - start

            start = time.monotonic()
            errors = run_threads(worker, BLOCKED)
            wall = time.monotonic() - start
        finally:
            for s in streams:
                s.close()
    assert not errors, errors
    assert len(took) == BLOCKED and all(0.95 <= t < 2.5 for t in took.values()), took
    assert wall < 2.5, f"{BLOCKED} reads of 1 s took {wall:.2f} s together: the GIL was held"


def test_blocked_tls_reads_do_not_block_each_other(backend, pki):
    with StallingTLSServer(pki.server_certfile, pki.server_keyfile) as peer:
        ctx = ss.Context(ssl={"verify_peer": False})
        streams = [backend.client(f"tls://127.0.0.1:{peer.port}", timeout=5, context=ctx) for _ in range(BLOCKED)]
        try:
            took: dict = {}

            def worker(k):
                s = streams[k]
                s.set_timeout(1.0)
                start = time.monotonic()
                try:
                    s.readline()
                except ss.TimeoutError:
                    took[k] = time.monotonic() - start

            start = time.monotonic()
            errors = run_threads(worker, BLOCKED)
            wall = time.monotonic() - start
        finally:
            for s in streams:
                s.close()
    assert not errors, errors
    assert len(took) == BLOCKED, took
    assert wall < 2.5, f"{BLOCKED} TLS reads of 1 s took {wall:.2f} s together"


def test_blocked_handshakes_do_not_block_each_other(backend):
    with SilentServer() as peer:
        took: dict = {}

        def worker(k):
            start = time.monotonic()
            try:
                backend.client(f"tls://127.0.0.1:{peer.port}", timeout=1.0,
                               context=ss.Context(ssl={"verify_peer": False})).close()
            except ss.TimeoutError:
                took[k] = time.monotonic() - start

        start = time.monotonic()
        errors = run_threads(worker, BLOCKED)
        wall = time.monotonic() - start
    assert not errors, errors
    assert len(took) == BLOCKED and all(t >= 0.95 for t in took.values()), took
    assert wall < 2.5, f"{BLOCKED} handshake timeouts of 1 s took {wall:.2f} s together"


def test_blocked_read_does_not_stall_python_work(backend):
    """While one thread waits in read, the main thread keeps running Python code."""
    with SilentServer() as peer:
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5) as s:
            s.set_timeout(1.0)
            with Blocked(lambda: s.read(10), settle=0.05) as reader:
                spins, start = 0, time.monotonic()
                while time.monotonic() - start < 0.5:
                    spins += 1
            assert isinstance(reader.error, ss.TimeoutError)
            assert spins > 10_000, spins  # a held GIL would leave a handful of switch-interval slices
