"""Bounded leak checks, both backends: N connect/handshake/close cycles (and N failing
connects) must leave the process's open-descriptor count unchanged and its resident
memory flat.

Method: ``WARMUP`` cycles first (caches, the compiled TLS context, allocator arenas,
lazily imported modules), then ``gc.collect()`` and a measurement, then ``CYCLES``
cycles, ``gc.collect()`` and a second measurement.  The TLS server is ``openssl
s_server`` in a subprocess, so nothing but the client lives in this process and its
RSS is the client's alone.

The RSS bound: measured on this machine (Python 3.11, OpenSSL 3.0, x86_64), 1000
cycles after warm-up grow RSS by 0-60 KiB on either backend (5000 cycles: the same,
the growth does not accumulate; see bench/soak.py for 10,000).  A real per-connection
leak is much larger than that noise: an SSL object with its record buffers is ~40 KiB
(40 MiB per 1000), a Stream or NativeConnection with its buffers ~1-10 KiB (1-10 MiB per
1000), even a leaked 1 KiB error string costs 1 MiB per 1000. ``RSS_BOUND`` = 1 MiB per
1000 cycles is therefore ~16x the noise and catches anything of 1 KiB per cycle or more.
"""

from __future__ import annotations

import gc
import os
import socket
import threading
import time

import pytest

import streamsock as ss
from peers import OpenSSLServer, refused_port

WARMUP = 200
CYCLES = 1000
RSS_BOUND = 1 << 20  # bytes per CYCLES cycles; see the module docstring
PAGE = os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def measure() -> tuple[int, int]:
    gc.collect()
    return open_fds(), rss()


def check_flat(cycle, label: str, warmup: int = WARMUP, cycles: int = CYCLES) -> dict:
    """Run ``cycle`` warmup + cycles times; assert no fd, no thread and no significant
    RSS growth (RSS_BOUND) over the measured cycles."""
    for _ in range(warmup):
        cycle()
    fds0, rss0 = measure()
    threads0 = threading.active_count()
    start = time.monotonic()
    for _ in range(cycles):
        cycle()
    elapsed = time.monotonic() - start
    fds1, rss1 = measure()
    growth = rss1 - rss0
    report = {"label": label, "cycles": cycles, "fds": (fds0, fds1), "rss_kib": (rss0 >> 10, rss1 >> 10),
              "growth_kib": growth / 1024, "seconds": round(elapsed, 2)}
    print(report)
    assert fds1 == fds0, report
    assert threading.active_count() == threads0, report
    assert growth < RSS_BOUND, report
    return report


@pytest.fixture(scope="module")
def s_server(pki):
    """One openssl s_server (TLS 1.3, -www) for the whole module, shared by both backends."""
    with OpenSSLServer(pki.server_certfile, pki.server_keyfile, mode="www", tls_version="1.3") as server:
        yield server


@pytest.fixture(autouse=True)
def _quiet_fd_baseline(s_server):
    """Start s_server before conftest's per-test fd check takes its snapshot (its temp
    log files are module-lifetime descriptors, not the test's)."""


def test_tls_connect_handshake_close_cycles(backend, pki, s_server):
    ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
    url = f"tls://127.0.0.1:{s_server.port}"

    def cycle():
        s = backend.client(url, timeout=10, context=ctx)
        assert s.crypto is not None
        s.close()

    check_flat(cycle, f"{backend.name} tls cycles")


def test_tls_cycles_with_data_and_captured_certificates(backend, pki, s_server):
    """A request and response per connection, and the peer certificate captured."""
    ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost", "capture_peer_cert": True})
    url = f"tls://127.0.0.1:{s_server.port}"

    def cycle():
        with backend.client(url, timeout=10, context=ctx) as s:
            s.write(b"GET / HTTP/1.0\r\n\r\n")
            assert s.readline().startswith(b"HTTP/1.0 200")
            assert s.peer_certificate is not None

    # Fewer of these (s_server builds its status page for each); the same absolute bound.
    check_flat(cycle, f"{backend.name} tls request cycles", cycles=300)


def test_refused_connect_cycles(backend):
    port = refused_port()
    url = f"tls://127.0.0.1:{port}"

    def cycle():
        try:
            backend.client(url, timeout=5)
        except ss.ConnectError as exc:
            assert exc.errno == 111
        else:  # pragma: no cover - something took the port
            pytest.skip("the refused port got a listener")

    check_flat(cycle, f"{backend.name} refused")


def test_verification_failure_cycles(backend, pki, s_server):
    ctx = ss.Context(ssl={"cafile": pki.other_cafile})  # s_server's CA is not trusted
    url = f"tls://localhost:{s_server.port}"

    def cycle():
        try:
            backend.client(url, timeout=10, context=ctx)
        except ss.CertificateVerifyError as exc:
            assert exc.code == "SS_ERR_TLS_VERIFY"
        else:  # pragma: no cover
            raise AssertionError("verification should have failed")

    check_flat(cycle, f"{backend.name} verify failure")


@pytest.fixture
def unaccepting_listener():
    """A listener that never accepts, with a deep backlog: the kernel completes each TCP
    handshake and queues the connection, our ClientHello goes unanswered, and no
    server-side descriptor or thread exists in this process to blur the count."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4096)
        yield listener.getsockname()[1]


def test_handshake_timeout_cycles(backend, unaccepting_listener):
    """Timeouts are their own failure path: the connection is torn down mid-handshake."""
    url = f"tls://127.0.0.1:{unaccepting_listener}"
    ctx = ss.Context(ssl={"verify_peer": False})

    def cycle():
        try:
            backend.client(url, timeout=0.005, context=ctx)
        except ss.TimeoutError as exc:
            assert exc.errno == 110
        else:  # pragma: no cover
            raise AssertionError("the handshake should have timed out")

    check_flat(cycle, f"{backend.name} handshake timeout", warmup=50, cycles=250)


@pytest.mark.timeout(600)  # 76 s for the pure backend on a quiet CI machine; several times that under load
def test_probe_of_200k_lines_runs_in_bounded_memory(backend, tmp_path):
    """A 200,000-line target file: read lazily, never more than a few
    concurrency's worth ahead, and RSS flat between 20k and 200k results."""
    port = refused_port()
    path = tmp_path / "targets.txt"
    lines = 200_000
    with open(path, "w") as f:
        for i in range(lines):
            f.write(f"tcp://127.0.0.{1 + i % 200}:{port}\n")  # 200 different loopback hosts
    concurrency = 200
    seen = read = 0

    def targets():
        nonlocal read
        with open(path) as f:
            for line in f:
                read += 1
                yield line

    for result in backend.probe(targets(), concurrency=concurrency, timeout=5):
        seen += 1
        assert result.errno == 111, result.message
        assert read - seen <= 2 * max(2 * concurrency, 256) + 2  # read lazily: the queue and buffer ahead
        if seen == 20_000:
            rss_early = measure()[1]
    grown = measure()[1] - rss_early
    assert seen == lines
    assert grown < 2 * RSS_BOUND, f"RSS grew {grown / 1024:.0f} KiB from 20k to 200k targets"
