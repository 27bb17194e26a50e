"""meta (PHP's stream_get_meta_data) with PHP's keys, the same on both
backends and for blocking and asyncio streams."""

from __future__ import annotations

import asyncio
import threading

import streamsock as ss
import streamsock.aio as aio

# What PHP's stream_get_meta_data gives for a socket stream: no wrapper_type
# (socket streams have no wrapper) and no wrapper_data.
PHP_KEYS = {"timed_out", "blocked", "eof", "stream_type", "mode", "unread_bytes", "seekable"}
CRYPTO_KEYS = {"protocol", "cipher_name", "cipher_bits", "cipher_version"}


def _contexts(pki, alpn: str | None):
    extra = {"alpn_protocols": alpn} if alpn else {}
    server = ss.Context(ssl={"local_cert": pki.server_certfile, "local_pk": pki.server_keyfile, **extra})
    client = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost", **extra})
    return server, client


def _check_tls_meta(meta: dict, *, uri: str | None, blocked: bool, alpn: str | None) -> None:
    assert PHP_KEYS <= set(meta) and "wrapper_type" not in meta
    assert meta["stream_type"] == "tcp_socket/ssl" and meta["mode"] == "r+" and meta["seekable"] is False
    assert meta["blocked"] is blocked and meta["timed_out"] is False and meta["eof"] is False
    assert meta.get("uri") == uri
    crypto = meta["crypto"]
    assert set(crypto) == CRYPTO_KEYS | ({"alpn_protocol"} if alpn else set())
    assert crypto["protocol"] == "TLSv1.3" and crypto["cipher_version"] == "TLSv1.3"
    assert crypto["cipher_name"].startswith("TLS_") and crypto["cipher_bits"] in (128, 256)
    assert crypto.get("alpn_protocol") == alpn


def test_blocking_streams_client_and_accepted(backend, pki):
    for alpn in (None, "h2"):
        server_ctx, client_ctx = _contexts(pki, alpn)
        with backend.server("tls://127.0.0.1:0", context=server_ctx) as srv:
            accepted = []
            thread = threading.Thread(target=lambda: accepted.append(srv.accept(timeout=5)[0]))
            thread.start()
            address = f"tls://{srv.local_name}"
            with backend.client(address, timeout=5, context=client_ctx) as s:
                thread.join(10)
                with accepted[0] as conn:
                    conn.write(b"one\ntwo\n")
                    assert s.readline() == b"one\n"
                    _check_tls_meta(s.meta, uri=address, blocked=True, alpn=alpn)
                    assert s.meta["unread_bytes"] == 4
                    _check_tls_meta(conn.meta, uri=None, blocked=True, alpn=alpn)  # accepted: no uri
                    s.set_blocking(False)
                    assert s.meta["blocked"] is False
                assert s.read(10) == b"two\n"
                s.set_blocking(True)
                assert s.read(10) == b"" and s.meta["eof"] is True


def test_plaintext_stream_types(backend, udp_echo):
    with backend.client(f"udp://{udp_echo.address}", timeout=5) as s:
        meta = s.meta
        assert meta["stream_type"] == "udp_socket" and "crypto" not in meta
        assert meta["uri"] == f"udp://{udp_echo.address}"
    with backend.server("tcp://127.0.0.1:0") as srv, backend.client(f"tcp://{srv.local_name}", timeout=5) as s:
        assert s.meta["stream_type"] == "tcp_socket/ssl"  # PHP's with the openssl extension loaded


def test_async_streams_report_the_same(backend, pki):
    server_ctx, client_ctx = _contexts(pki, "h2")
    seen = {}

    async def handler(stream):
        seen["accepted"] = stream.meta
        await stream.write(b"hi\n")

    async def main():
        async with await aio.server("tls://127.0.0.1:0", handler, context=server_ctx, backend=backend) as srv:
            address = f"tls://{srv.local_name}"
            async with await aio.client(address, timeout=5, context=client_ctx, backend=backend) as s:
                assert await s.readline() == b"hi\n"
                _check_tls_meta(s.meta, uri=address, blocked=False, alpn="h2")
        _check_tls_meta(seen["accepted"], uri=None, blocked=False, alpn="h2")

    asyncio.run(asyncio.wait_for(main(), 20))
