"""STARTTLS with enable_crypto on both backends: upgrade, injection defence, downgrade."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import threading
import time

import pytest

import streamsock as ss
from peers import SMTPStartTLSServer


def smtp(pki, **kw) -> SMTPStartTLSServer:
    return SMTPStartTLSServer(pki.server_certfile, pki.server_keyfile, **kw)


def greet_and_starttls(s: ss.Stream) -> None:
    assert s.readline() == b"220 localhost ESMTP test\r\n"
    s.write(b"EHLO client.example\r\n")
    assert s.readline() == b"250-localhost\r\n"
    assert s.readline() == b"250 STARTTLS\r\n"
    s.write(b"STARTTLS\r\n")
    assert s.readline() == b"220 Ready to start TLS\r\n"


def test_smtp_starttls_upgrades_in_place(backend, pki):
    with smtp(pki) as peer:
        ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5, context=ctx) as s:
            greet_and_starttls(s)
            assert s.crypto is None
            assert s.enable_crypto(True, ss.CRYPTO_METHOD_TLS_CLIENT) is True
            assert s.meta["crypto"]["protocol"] == "TLSv1.3"
            s.write(b"EHLO client.example\r\n")
            assert s.readline() == b"250 localhost\r\n"
            s.write(b"QUIT\r\n")
            assert s.readline() == b"221 bye\r\n"
        peer.wait_for_connections(1)
        record = peer.connections[0]
        assert record.starttls and record.sni == "localhost"
        assert record.tls_lines[:2] == [b"EHLO client.example", b"QUIT"]


def test_starttls_verifies_the_certificate(backend, pki):
    with smtp(pki) as peer:
        ctx = ss.Context(ssl={"cafile": pki.other_cafile, "peer_name": "localhost"})
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5, context=ctx) as s:
            greet_and_starttls(s)
            with pytest.raises(ss.CertificateVerifyError, match="unable to get local issuer certificate"):
                s.enable_crypto(True)


def test_starttls_injection_is_refused(backend, pki):
    with smtp(pki, inject=b"250 INJECTED\r\n") as peer:
        ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5, context=ctx) as s:
            greet_and_starttls(s)
            with pytest.raises(ss.TLSError) as info:
                s.enable_crypto(True, ss.CRYPTO_METHOD_TLS_CLIENT)
            assert info.value.code == "SS_ERR_STARTTLS_BUFFERED"
            assert "injection" in str(info.value)
            assert s.crypto is None


def test_plaintext_waiting_in_the_socket_is_refused(backend, pki):
    # Bytes that arrived but were never read into our buffer are refused too.
    with smtp(pki) as peer:
        ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5, context=ctx) as s:
            assert s.readline() == b"220 localhost ESMTP test\r\n"
            s.write(b"NOOP\r\n")
            ss.select([s], [], [], 5)  # "250 NOOP" now waits in the socket, unread
            assert s.buffered() == 0
            with pytest.raises(ss.TLSError) as info:
                s.enable_crypto(True, ss.CRYPTO_METHOD_TLS_CLIENT)
            assert info.value.code == "SS_ERR_STARTTLS_BUFFERED"


def test_downgrade_returns_to_plaintext_without_losing_bytes(backend, pki):
    with smtp(pki, downgrade=True) as peer:
        ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5, context=ctx) as s:
            greet_and_starttls(s)
            s.enable_crypto(True)
            s.write(b"STOPTLS\r\n")
            assert s.readline() == b"220 plaintext again\r\n"
            assert s.enable_crypto(False) is True
            assert s.crypto is None
            s.write(b"HELLO PLAIN\r\n")
            assert s.readline() == b"250 plain HELLO PLAIN\r\n"
            s.write(b"QUIT\r\n")
            assert s.readline() == b"221 bye\r\n"
        peer.wait_for_connections(1)
        assert peer.connections[0].downgraded
        assert peer.connections[0].plain_after_lines[0] == b"HELLO PLAIN"


def test_enable_crypto_rules(backend, pki, tls_server, udp_echo):
    ctx = ss.Context(ssl={"cafile": pki.cafile})
    with backend.client(f"tls://localhost:{tls_server.port}", timeout=5, context=ctx) as s:
        with pytest.raises(ss.TLSError) as info:
            s.enable_crypto(True)
        assert info.value.code == "SS_ERR_TLS_ACTIVE"
    with backend.client(f"udp://{udp_echo.address}", timeout=5) as u:
        with pytest.raises(ss.UnsupportedTransportError):
            u.enable_crypto(True)
    with smtp(pki) as peer:
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5) as s:
            with pytest.raises(ss.StreamSocketError, match="TLS is not enabled"):
                s.enable_crypto(False)


def test_non_blocking_enable_crypto_returns_false_until_done(backend, pki):
    with smtp(pki) as peer:
        ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5, context=ctx) as s:
            greet_and_starttls(s)
            s.set_blocking(False)
            results = []
            for _ in range(1000):
                done = s.enable_crypto(True, ss.CRYPTO_METHOD_TLS_CLIENT)
                results.append(done)
                if done:
                    break
                ss.select([s], [], [], 1)
            assert results[-1] is True
            s.set_blocking(True)
            s.write(b"EHLO x\r\n")
            assert s.readline() == b"250 localhost\r\n"


def test_non_blocking_enable_crypto_against_a_silent_peer_keeps_returning_false(backend, silent_server):
    # (A live peer on loopback may answer before the first call returns, so
    # "False first" is shown against a peer that never answers.)
    with backend.client(f"tcp://127.0.0.1:{silent_server.port}", timeout=5) as s:
        s.set_blocking(False)
        results = [s.enable_crypto(True, ss.CRYPTO_METHOD_TLS_CLIENT) for _ in range(3)]
        assert results == [False, False, False]
        assert s.crypto is None  # not until the handshake is done


def test_session_stream_resumes_the_earlier_session(backend, pki):
    with smtp(pki) as peer:
        ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5, context=ctx) as first:
            greet_and_starttls(first)
            first.enable_crypto(True)
            first.write(b"EHLO x\r\n")
            assert first.readline() == b"250 localhost\r\n"  # the session tickets came with it
            assert first.tls_info["session_reused"] is False
            with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5, context=ctx) as second:
                greet_and_starttls(second)
                second.enable_crypto(True, session_stream=first)
                assert second.tls_info["session_reused"] is True


def test_a_plaintext_session_stream_is_refused_clearly(backend, pki):
    with smtp(pki) as peer:
        ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5, context=ctx) as plaintext, \
                backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5, context=ctx) as s:
            greet_and_starttls(s)
            with pytest.raises(ValueError, match="session_stream has no TLS session to offer: it is a plaintext stream"):
                s.enable_crypto(True, session_stream=plaintext)
            s.enable_crypto(True)  # refused before anything was sent: the upgrade still works
            s.write(b"EHLO x\r\n")
            assert s.readline() == b"250 localhost\r\n"


def _tls_and_plain_servers(backend, pki):
    ctx = ss.Context(ssl={"local_cert": pki.server_certfile, "local_pk": pki.server_keyfile})
    return backend.server("tls://127.0.0.1:0", context=ctx), backend.server("tcp://127.0.0.1:0", context=ctx)


def _serve_both(tls_srv, plain_srv):
    """The tls:// server says hello and waits; the tcp one upgrades on accept, then says hello."""
    import threading

    def tls_side():
        with tls_srv.accept(timeout=5)[0] as conn:
            conn.write(b"hello\n")
            conn.readline()

    def plain_side():
        try:
            with plain_srv.accept(timeout=5)[0] as conn:
                conn.enable_crypto(True)
                conn.write(b"upgraded\n")
                conn.readline()
        except ss.StreamSocketError:
            pass  # the client gave up before its handshake

    threads = [threading.Thread(target=tls_side), threading.Thread(target=plain_side)]
    for thread in threads:
        thread.start()
    return threads


@pytest.mark.parametrize("method", [None, ss.CRYPTO_METHOD_TLS_CLIENT, ss.CRYPTO_METHOD_TLSv1_3_CLIENT])
def test_a_tls_streams_session_resumes_in_a_starttls_stream(backend, pki, method):
    """A tls:// stream's session (TLS 1.2+) offered by a STARTTLS whose method allows other versions:
    OpenSSL takes it as it is; the pure backend offers it from the context that made it."""
    tls_srv, plain_srv = _tls_and_plain_servers(backend, pki)
    ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
    with tls_srv, plain_srv:
        threads = _serve_both(tls_srv, plain_srv)
        with backend.client(f"tls://{tls_srv.local_name}", timeout=5, context=ctx) as first:
            assert first.readline() == b"hello\n"  # the session tickets came before it
            with backend.client(f"tcp://{plain_srv.local_name}", timeout=5, context=ctx) as second:
                assert second.enable_crypto(True, method, session_stream=first) is True
                assert second.readline() == b"upgraded\n"
                assert second.tls_info["session_reused"] is True
                assert second.crypto["protocol"] == "TLSv1.3"
                second.write(b"bye\n")
            first.write(b"bye\n")
        for thread in threads:
            thread.join(10)


def test_a_session_from_other_tls_settings(backend, pki):
    """Settings that differ beyond the versions (here the ciphers): OpenSSL resumes the session;
    the pure backend cannot hand it to another SSLContext and says so before the handshake."""
    tls_srv, plain_srv = _tls_and_plain_servers(backend, pki)
    first_ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
    second_ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost", "ciphers": "ECDHE+AESGCM"})
    with tls_srv, plain_srv:
        threads = _serve_both(tls_srv, plain_srv)
        with backend.client(f"tls://{tls_srv.local_name}", timeout=5, context=first_ctx) as first:
            assert first.readline() == b"hello\n"
            with backend.client(f"tcp://{plain_srv.local_name}", timeout=5, context=second_ctx) as second:
                if backend.name == "native":
                    second.enable_crypto(True, session_stream=first)
                    assert second.tls_info["session_reused"] is True
                    assert second.readline() == b"upgraded\n"
                    second.write(b"bye\n")
                else:
                    with pytest.raises(ValueError, match="the pure backend cannot resume its session"):
                        second.enable_crypto(True, session_stream=first)
                    assert second.crypto is None
            first.write(b"bye\n")
        for thread in threads:
            thread.join(10)


def test_a_peer_that_floods_before_its_close_notify_fails_the_downgrade_clearly(backend, pki):
    """enable_crypto(False) keeps what arrives before the peer's close_notify, up
    to 1 MiB; beyond that a TLSError in the same words on both backends."""
    listener = socket.create_server(("127.0.0.1", 0))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.server_certfile, pki.server_keyfile)
    client_done = threading.Event()

    def flood():
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.settimeout(10)
            tls.sendall(b"x" * 64)  # the client reads this, then turns TLS off
            with contextlib.suppress(OSError):  # the client stops reading at its limit
                tls.sendall(b"y" * (2 << 20))  # more than the client keeps, and no close_notify
            client_done.wait(10)  # closing with our close_notify unread would reset the connection

    thread = threading.Thread(target=flood)
    thread.start()
    try:
        with listener:
            ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
            with backend.client(f"tls://127.0.0.1:{listener.getsockname()[1]}", timeout=10, context=ctx) as s:
                assert s.read(64) == b"x" * 64
                with pytest.raises(ss.TLSError) as raised:
                    s.enable_crypto(False)
    finally:
        client_done.set()
        thread.join(20)
    assert str(raised.value) == "Failed to enable crypto (more than 1048576 bytes arrived before the peer's close_notify)"


def test_a_downgrade_keeps_a_record_that_arrived_unread(backend, pki):
    """A TLS record that has arrived and is not read yet when enable_crypto(False)
    is called: the downgrade completes and the record's bytes are read after it.
    Python's shutdown() alone reads it as "application data after close notify"
    and fails the connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.server_certfile, pki.server_keyfile)
    first, tail = b"a" * 16384, b"tail\n"  # two records: TLS carries at most 16384 bytes in one
    two_records = len(first) + len(tail) + 2 * (5 + 17)  # TLS 1.3: header, content type and tag each

    def serve():
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.settimeout(10)
            tls.sendall(b"hello\n")
            assert tls.recv(5) == b"ready"
            tls.sendall(first + tail)
            plain = tls.unwrap()  # the client's close_notify, after ours
            plain.sendall(b"plaintext again\n")
            plain.recv(1)  # until the client closes

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with listener:
            ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost", "crypto_method":
                                  ss.CRYPTO_METHOD_TLSv1_3_CLIENT})
            with backend.client(f"tls://127.0.0.1:{listener.getsockname()[1]}", timeout=10, context=ctx) as s:
                assert s.readline() == b"hello\n"  # and the session tickets before it
                s.write(b"ready")
                with socket.socket(fileno=os.dup(s.fileno())) as peek:  # until both records have arrived
                    peek.settimeout(10)
                    deadline = time.monotonic() + 10
                    while len(peek.recv(two_records, socket.MSG_PEEK)) < two_records:
                        assert time.monotonic() < deadline  # the second follows the first within microseconds
                assert s.read(len(first)) == first
                assert s.enable_crypto(False) is True
                assert s.read(len(tail)) == tail
                assert s.readline() == b"plaintext again\n"
    finally:
        thread.join(20)
