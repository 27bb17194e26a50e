"""probe(): many targets at once (the C engine natively, a thread pool in pure Python)."""

from __future__ import annotations

import time

import pytest

import streamsock as ss
from peers import PyTLSServer, refused_port


def by_index(results):
    return {r.index: r for r in results}


def test_mixed_targets_each_get_the_right_record(backend, pki, tls_server, silent_server, full_backlog):
    refused = refused_port()
    with PyTLSServer(pki.wrong_host.certfile, pki.wrong_host.keyfile) as wrong:
        targets = [
            f"tls://127.0.0.1:{tls_server.port}",      # 0 good
            f"tcp://127.0.0.1:{refused}",              # 1 refused
            f"tls://127.0.0.1:{silent_server.port}",   # 2 handshake never answered
            f"tls://127.0.0.1:{wrong.port}",           # 3 wrong certificate
            "not an address",                          # 4 does not parse
            f"tcp://{full_backlog.address}",           # 5 connect never answered
            f"tcp://127.0.0.1:{tls_server.port}",      # 6 plain tcp connect
        ]
        ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost", "capture_peer_cert": True})
        start = time.monotonic()
        results = by_index(backend.probe(targets, concurrency=10, timeout=1.0, context=ctx))
        elapsed = time.monotonic() - start
    assert sorted(results) == list(range(len(targets)))
    good = results[0]
    assert good.ok and good.error is None and good.tls_version == "TLSv1.3" and good.cipher
    assert good.cert_der == pki.server_cert.der and len(good.cert_sha256) == 64
    assert good.connect_ms is not None and good.total_ms >= good.connect_ms
    assert good.peer == f"127.0.0.1:{tls_server.port}"
    assert (results[1].ok, results[1].error_class, results[1].errno) == (False, "ConnectError", 111)
    assert (results[2].error_class, results[2].errno) == ("TimeoutError", 110)
    assert "handshake" in results[2].message.lower()
    assert results[3].error_class == "CertificateVerifyError" and "hostname mismatch" in results[3].message
    assert results[4].error_class == "AddressError" and results[4].address is None
    assert (results[5].error_class, results[5].errno) == ("TimeoutError", 110)
    assert results[6].ok and results[6].tls_version is None
    assert elapsed < 1.0 + 2.0  # every deadline held, all in parallel


def test_many_targets_against_one_server(backend, pki, tls_server):
    ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
    targets = [f"tls://127.0.0.1:{tls_server.port}"] * 120
    results = list(backend.probe(targets, concurrency=20, timeout=10, context=ctx))
    assert len(results) == 120 and all(r.ok for r in results), [r.message for r in results if not r.ok][:3]
    assert sorted(r.index for r in results) == list(range(120))


def test_payload_and_banner(backend, pki):
    with PyTLSServer(pki.server_certfile, pki.server_keyfile, mode="echo") as peer:
        ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
        [result] = backend.probe([f"tls://127.0.0.1:{peer.port}"], timeout=5, context=ctx,
                                 payload=b"HEAD / HTTP/1.0\r\n\r\n", banner=8)
    assert result.ok and result.banner == b"HEAD / H"


def test_streamed_input_in_bounded_chunks(backend):
    refused = refused_port()
    handed = []

    def targets():
        for i in range(3000):
            handed.append(i)
            yield f"tcp://127.0.0.1:{refused}"

    seen = 0
    for result in backend.probe(targets(), concurrency=50, timeout=5):
        seen += 1
        # the input is pulled lazily: never far ahead of what has been reported
        assert len(handed) - seen <= 50 * 2 + 1
        assert result.errno == 111
    assert seen == 3000


def test_probe_options_are_checked(backend):
    with pytest.raises(ValueError):
        list(backend.probe(["tcp://127.0.0.1:1"], concurrency=0))
    with pytest.raises(ValueError):
        list(backend.probe(["tcp://127.0.0.1:1"], timeout=0))
    with pytest.raises(ValueError):
        list(backend.probe(["tcp://127.0.0.1:1"], banner=1 << 20))
