"""Hostile peers on loopback, both backends.

Every case must end in a specific exception (TLSError / CertificateVerifyError /
TimeoutError with errno 110 / ConnectError / StreamSocketError) within its
deadline, and leave no file descriptor (conftest's autouse check) and no thread
(``no_thread_leak`` below) behind.  Server-side cases also check that the same
listening server goes on to accept and serve a good client after each failure.
"""

from __future__ import annotations

import errno
import socket
import threading
import time

import pytest

import streamsock as ss
from peers import (
    GARBAGE,
    RawServer,
    SilentServer,
    TRUNCATED_RECORD,
    StallingTLSServer,
    client_hello,
    close_after_client_hello,
    garbage_script,
    reset_mid_handshake,
    reset_socket,
    send_then_close,
    slow_drip_handshake,
    split_record_script,
    trickle_record_script,
    truncated_app_record_script,
    truncated_record,
)

#: Failures that need no timer (a RST, a FIN, garbage) must be reported well within this.
PROMPT = 2.0
#: Slack allowed past a timeout before we call it late (loaded CI machines).
SLACK = 1.5


pytestmark = pytest.mark.usefixtures("no_thread_leak")


def expect(exc_type, fn, *, within: float, at_least: float = 0.0):
    """Run ``fn``; it must raise exactly ``exc_type`` (not a subclass, not a base)
    after at least ``at_least`` and at most ``within`` seconds. Returns the exception."""
    start = time.monotonic()
    with pytest.raises(ss.StreamSocketError) as info:
        result = fn()
        if isinstance(result, ss.Stream):  # must not happen; do not leak it either
            result.close()
        if isinstance(result, tuple) and result and isinstance(result[0], ss.Stream):
            result[0].close()
    elapsed = time.monotonic() - start
    assert type(info.value) is exc_type, f"{type(info.value).__name__}: {info.value} (code {info.value.code})"
    assert at_least <= elapsed <= within, f"took {elapsed:.3f} s, wanted [{at_least}, {within}]"
    return info.value


def port_of(server: ss.Server) -> int:
    return int(server.local_name.rsplit(":", 1)[1])


NO_VERIFY = ss.Context(ssl={"verify_peer": False, "verify_peer_name": False})


# ---------------------------------------------------------------------------------------------
# client side: broken TLS servers
# ---------------------------------------------------------------------------------------------


def test_client_peer_resets_mid_handshake(backend):
    with RawServer(reset_mid_handshake) as peer:
        exc = expect(ss.TLSError, lambda: backend.client(f"tls://127.0.0.1:{peer.port}", timeout=5,
                                                         context=NO_VERIFY), within=PROMPT)
        assert exc.errno == errno.ECONNRESET and exc.code == "SS_ERR_TLS"
        assert f"Unable to connect to tls://127.0.0.1:{peer.port}" in str(exc)
        assert "Connection reset by peer" in str(exc)
        record = peer.wait_for_connections(1)[0]
        assert record.result.startswith(b"\x16\x03")  # it did see our ClientHello


def test_client_peer_closes_after_client_hello(backend):
    with RawServer(close_after_client_hello) as peer:
        exc = expect(ss.TLSError, lambda: backend.client(f"tls://127.0.0.1:{peer.port}", timeout=5,
                                                         context=NO_VERIFY), within=PROMPT)
        assert exc.code == "SS_ERR_EOF" and exc.errno == 0
        assert "the peer closed the connection" in str(exc)
        assert f"Unable to connect to tls://127.0.0.1:{peer.port}" in str(exc)
        assert peer.wait_for_connections(1)[0].result.startswith(b"\x16\x03")


@pytest.mark.parametrize("read_first", [True, False], ids=["after-hello", "unprompted"])
def test_client_peer_sends_garbage(backend, read_first):
    with RawServer(garbage_script(GARBAGE, read_first=read_first)) as peer:
        exc = expect(ss.TLSError, lambda: backend.client(f"tls://127.0.0.1:{peer.port}", timeout=5,
                                                         context=NO_VERIFY), within=PROMPT)
        assert exc.code == "SS_ERR_TLS" and "wrong version number" in str(exc)
        assert f"Unable to connect to tls://127.0.0.1:{peer.port}" in str(exc)


def test_client_peer_sends_truncated_record(backend):
    # A record header announcing 1000 bytes, then 10 bytes, then FIN.
    with RawServer(truncated_record) as peer:
        exc = expect(ss.TLSError, lambda: backend.client(f"tls://127.0.0.1:{peer.port}", timeout=5,
                                                         context=NO_VERIFY), within=PROMPT)
        assert exc.code == "SS_ERR_EOF" and "the peer closed the connection" in str(exc)
        assert peer.wait_for_connections(1)[0].error is None


def test_client_truncated_record_does_not_wait_for_the_missing_bytes(backend):
    # Same, but a 10 s client timeout: the FIN must end it, not the timer.
    with RawServer(truncated_record) as peer:
        expect(ss.TLSError, lambda: backend.client(f"tls://127.0.0.1:{peer.port}", timeout=10,
                                                   context=NO_VERIFY), within=PROMPT)


def test_client_handshake_timeout_against_silent_peer(backend):
    with SilentServer() as peer:
        exc = expect(ss.TimeoutError, lambda: backend.client(f"tls://127.0.0.1:{peer.port}", timeout=0.5,
                                                             context=NO_VERIFY),
                     at_least=0.45, within=0.5 + SLACK)
        assert exc.errno == 110 and exc.code == "SS_ERR_TIMEOUT"
        assert "TLS handshake timed out" in str(exc)
        assert isinstance(exc, TimeoutError)


def test_client_starttls_handshake_timeout_against_silent_peer(backend):
    with SilentServer() as peer:
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5, context=NO_VERIFY) as s:
            s.set_timeout(0.4)
            exc = expect(ss.TimeoutError, lambda: s.enable_crypto(True, ss.CRYPTO_METHOD_TLS_CLIENT),
                         at_least=0.35, within=0.4 + SLACK)
            assert exc.errno == 110 and "timed out" in str(exc)


# ---------------------------------------------------------------------------------------------
# client side: servers that stall or hang up after the handshake
# ---------------------------------------------------------------------------------------------


def test_client_read_timeout_after_handshake(backend, pki):
    with StallingTLSServer(pki.server_certfile, pki.server_keyfile) as peer:
        with backend.client(f"tls://127.0.0.1:{peer.port}", timeout=5, context=NO_VERIFY) as s:
            assert s.crypto["protocol"] == "TLSv1.3"
            s.set_timeout(0.3)
            for op in (lambda: s.read(10), s.readline, lambda: s.read(-1)):
                exc = expect(ss.TimeoutError, op, at_least=0.28, within=0.3 + SLACK)
                assert exc.errno == 110 and "read on" in str(exc)
                assert s.meta["timed_out"] is True
                assert not s.eof and not s.closed
            # A timed-out stream is still usable: writes go through.
            assert s.write(b"still alive\n") == len(b"still alive\n")


def test_client_read_timeout_in_the_middle_of_a_record_loses_nothing(backend, pki):
    script = split_record_script(pki.server_context(), b"hello\n", split_at=7, pause=0.8)
    with RawServer(script) as peer:
        with backend.client(f"tls://127.0.0.1:{peer.port}", timeout=5, context=NO_VERIFY) as s:
            s.set_timeout(0.25)
            expect(ss.TimeoutError, s.readline, at_least=0.23, within=0.25 + SLACK)
            assert s.meta["timed_out"]
            s.set_timeout(5)
            assert s.readline() == b"hello\n"
            assert s.meta["timed_out"] is False


def test_client_slow_drip_handshake_deadline_is_total(backend):
    # One byte every 0.1 s: a timeout that restarted with each byte would never fire.
    with RawServer(slow_drip_handshake) as peer:
        exc = expect(ss.TimeoutError, lambda: backend.client(f"tls://127.0.0.1:{peer.port}", timeout=0.5,
                                                             context=NO_VERIFY),
                     at_least=0.45, within=0.5 + SLACK)
        assert exc.errno == 110 and "TLS handshake timed out" in str(exc)


def test_client_slow_drip_record_read_deadline_is_total(backend, pki):
    with RawServer(trickle_record_script(pki.server_context(), b"x" * 1000, interval=0.05)) as peer:
        with backend.client(f"tls://127.0.0.1:{peer.port}", timeout=5, context=NO_VERIFY) as s:
            s.set_timeout(0.4)
            for op in (lambda: s.read(10), s.readline):
                exc = expect(ss.TimeoutError, op, at_least=0.38, within=0.4 + SLACK)
                assert exc.errno == 110


def test_read_to_end_that_times_out_keeps_what_it_read(backend):
    """read(-1) gathering until EOF: a timeout must leave every byte for the next read."""

    def script(conn):
        conn.sendall(b"0123456789")
        time.sleep(0.6)
        conn.sendall(b"abc")
        _wait_for_hangup(conn)

    with RawServer(script) as peer:
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5) as s:
            s.set_timeout(5)
            assert s.read(3) == b"012"  # "3456789" stays buffered
            s.set_timeout(1.0)
            exc = expect(ss.TimeoutError, lambda: s.read(-1), at_least=0.95, within=1.0 + SLACK)
            assert exc.errno == 110 and s.meta["timed_out"]
            assert s.meta["unread_bytes"] == 10  # "3456789" + "abc"
            assert s.read(100) == b"3456789abc"


def _wait_for_hangup(conn, limit: float = 5.0) -> None:
    conn.settimeout(limit)
    try:
        while conn.recv(4096):
            pass
    except OSError:
        pass


def test_client_truncated_record_after_handshake_ends_the_stream(backend, pki):
    # Observed on both backends (OpenSSL's SSL_OP_IGNORE_UNEXPECTED_EOF, as PHP): a record
    # cut short by a FIN reads as end of stream. Whatever it is, it must be prompt, and the
    # data before it must be delivered.
    with RawServer(truncated_app_record_script(pki.server_context(), b"hello\n")) as peer:
        with backend.client(f"tls://127.0.0.1:{peer.port}", timeout=5, context=NO_VERIFY) as s:
            s.set_timeout(5)
            assert s.readline() == b"hello\n"
            start = time.monotonic()
            try:
                assert s.readline() == b""
                assert s.eof
            except ss.TLSError:
                pass
            assert time.monotonic() - start < PROMPT


def test_client_tls_peer_resets_mid_stream(backend, pki):

    def script(conn):
        from peers import _bio_server_handshake

        tls, outgoing = _bio_server_handshake(conn, pki.server_context())
        tls.write(b"abc")
        conn.sendall(outgoing.read())
        time.sleep(0.2)
        reset_socket(conn)

    with RawServer(script) as peer:
        with backend.client(f"tls://127.0.0.1:{peer.port}", timeout=5, context=NO_VERIFY) as s:
            s.set_timeout(5)
            assert s.read(10) == b"abc"
            peer.wait_for_connections(1)
            exc = expect(ss.TLSError, lambda: s.read(10), within=PROMPT)
            assert exc.errno == errno.ECONNRESET and exc.code == "SS_ERR_TLS"


def test_client_tcp_peer_resets_mid_stream(backend):
    def script(conn):
        conn.sendall(b"abc")
        time.sleep(0.2)
        reset_socket(conn)

    with RawServer(script) as peer:
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5) as s:
            s.set_timeout(5)
            assert s.read(10) == b"abc"
            peer.wait_for_connections(1)
            exc = expect(ss.StreamSocketError, lambda: s.read(10), within=PROMPT)
            assert exc.errno == errno.ECONNRESET and exc.code == "SS_ERR_SYSTEM"


PAYLOAD = 32 << 20  # far more than loopback socket buffers hold (a few MiB)


def test_client_write_to_a_peer_that_never_reads_times_out(backend):
    payload = b"x" * PAYLOAD
    with SilentServer() as peer:
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5) as s:
            s.set_timeout(0.4)
            exc = expect(ss.TimeoutError, lambda: s.write(payload), at_least=0.35, within=0.4 + SLACK)
            assert exc.errno == 110 and "write on" in str(exc)
            assert type(exc.written) is int and 0 < exc.written < len(payload)
            assert s.meta["timed_out"]


def test_client_tls_write_to_a_peer_that_never_reads_times_out(backend, pki):
    payload = b"x" * PAYLOAD
    with StallingTLSServer(pki.server_certfile, pki.server_keyfile) as peer:
        with backend.client(f"tls://127.0.0.1:{peer.port}", timeout=5, context=NO_VERIFY) as s:
            s.set_timeout(0.4)
            exc = expect(ss.TimeoutError, lambda: s.write(payload), at_least=0.35, within=0.4 + SLACK)
            assert exc.errno == 110
            assert type(exc.written) is int and 0 < exc.written < len(payload)


def test_client_plaintext_peer_closes_mid_line(backend):
    with RawServer(send_then_close(b"first line\npartial li")) as peer:
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5) as s:
            s.set_timeout(5)
            start = time.monotonic()
            assert s.readline() == b"first line\n"
            assert s.readline() == b"partial li"
            assert s.readline() == b""
            assert s.read() == b""
            assert s.eof and s.meta["eof"]
            assert time.monotonic() - start < PROMPT


def test_client_plaintext_peer_closes_mid_line_with_limit(backend):
    with RawServer(send_then_close(b"0123456789")) as peer:
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5) as s:
            assert s.readline(4) == b"0123"
            assert s.readline() == b"456789"
            assert s.readline() == b""


def test_client_refused_and_connect_timeout(backend, refused_tcp_port, full_backlog):
    exc = expect(ss.ConnectError, lambda: backend.client(f"tls://127.0.0.1:{refused_tcp_port}", timeout=5),
                 within=PROMPT)
    assert exc.errno == errno.ECONNREFUSED
    exc = expect(ss.TimeoutError, lambda: backend.client(f"tls://{full_backlog.address}", timeout=0.4),
                 at_least=0.35, within=0.4 + SLACK)
    assert exc.errno == 110


def test_client_verification_failure_is_certificate_verify_error(backend, pki):
    from peers import PyTLSServer

    with PyTLSServer(pki.untrusted.certfile, pki.untrusted.keyfile) as peer:
        ctx = ss.Context(ssl={"cafile": pki.cafile})
        exc = expect(ss.CertificateVerifyError,
                     lambda: backend.client(f"tls://localhost:{peer.port}", timeout=5, context=ctx), within=PROMPT)
        assert exc.code == "SS_ERR_TLS_VERIFY"


# ---------------------------------------------------------------------------------------------
# server side: hostile clients against our own server, then a good client
# ---------------------------------------------------------------------------------------------


def tls_server(backend, pki) -> ss.Server:
    ctx = ss.Context(ssl={"local_cert": pki.server_certfile, "local_pk": pki.server_keyfile})
    return backend.server("tls://127.0.0.1:0", context=ctx)


def serve_good_client(backend, pki, srv: ss.Server, secure: bool = True) -> None:
    """A well-behaved client (our own, on a thread) against ``srv``: accepted and echoed."""
    port = port_of(srv)
    outcome: dict = {}

    def client():
        try:
            if secure:
                ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
                url = f"tls://127.0.0.1:{port}"
            else:
                ctx, url = None, f"tcp://127.0.0.1:{port}"
            with backend.client(url, timeout=5, context=ctx) as s:
                s.write(b"good client\n")
                outcome["line"] = s.readline()
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    thread = threading.Thread(target=client)
    thread.start()
    try:
        conn, peer = srv.accept(timeout=5)
        with conn:
            conn.set_timeout(5)
            conn.write(b"echo: " + conn.readline())
            if secure:
                assert conn.crypto["protocol"] == "TLSv1.3"
    finally:
        thread.join(10)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["line"] == b"echo: good client\n"


def raw_client(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_server_client_sends_nothing_accept_times_out(backend, pki):
    with tls_server(backend, pki) as srv:
        with raw_client(port_of(srv)):
            time.sleep(0.05)  # the connection is in the accept queue before accept starts
            exc = expect(ss.TimeoutError, lambda: srv.accept(timeout=0.5), at_least=0.45, within=0.5 + SLACK)
            assert exc.errno == 110 and "accept on" in str(exc) and "timed out" in str(exc)
        serve_good_client(backend, pki, srv)  # the silent client, still mid-handshake, holds nobody up


def test_server_client_sends_partial_hello_accept_times_out(backend, pki):
    with tls_server(backend, pki) as srv:
        with raw_client(port_of(srv)) as c:
            c.sendall(client_hello()[:60])
            exc = expect(ss.TimeoutError, lambda: srv.accept(timeout=0.5), at_least=0.45, within=0.5 + SLACK)
            assert exc.errno == 110
        serve_good_client(backend, pki, srv)


def test_server_accept_timeout_counts_the_wait_and_the_handshake_together(backend, pki):
    # A silent client arriving 0.3 s into a 0.6 s accept: accept must give up at 0.6 s,
    # not 0.3 + 0.6 s.
    with tls_server(backend, pki) as srv:
        port = port_of(srv)
        holder: list = []

        def late_client():
            time.sleep(0.3)
            holder.append(raw_client(port))

        thread = threading.Thread(target=late_client)
        thread.start()
        try:
            expect(ss.TimeoutError, lambda: srv.accept(timeout=0.6), at_least=0.55, within=0.6 + 0.25 + SLACK / 2)
        finally:
            thread.join(5)
            for c in holder:
                c.close()
        serve_good_client(backend, pki, srv)


@pytest.mark.parametrize("after_hello", [False, True], ids=["unprompted", "after-hello"])
def test_server_client_sends_garbage(backend, pki, after_hello):
    with tls_server(backend, pki) as srv:
        with raw_client(port_of(srv)) as c:
            c.sendall((client_hello() if after_hello else b"") + GARBAGE)
            exc = expect(ss.TLSError, lambda: srv.accept(timeout=5), within=PROMPT)
            assert exc.code == "SS_ERR_TLS"
            assert "TLS handshake with the client failed" in str(exc)
        serve_good_client(backend, pki, srv)


def test_server_client_resets_mid_handshake(backend, pki):
    with tls_server(backend, pki) as srv:
        c = raw_client(port_of(srv))
        c.sendall(client_hello())
        time.sleep(0.05)
        reset_socket(c)
        exc = expect(ss.TLSError, lambda: srv.accept(timeout=5), within=PROMPT)
        assert exc.errno == errno.ECONNRESET and exc.code == "SS_ERR_TLS"
        assert "TLS handshake with the client failed" in str(exc)
        serve_good_client(backend, pki, srv)


def test_server_client_resets_before_sending_anything(backend, pki):
    with tls_server(backend, pki) as srv:
        reset_socket(raw_client(port_of(srv)))
        exc = expect(ss.TLSError, lambda: srv.accept(timeout=5), within=PROMPT)
        assert exc.errno == errno.ECONNRESET
        serve_good_client(backend, pki, srv)


@pytest.mark.parametrize("send", [b"", "hello", TRUNCATED_RECORD],
                         ids=["nothing", "client-hello", "truncated-record"])
def test_server_client_closes_early(backend, pki, send):
    with tls_server(backend, pki) as srv:
        with raw_client(port_of(srv)) as c:
            c.sendall(client_hello() if send == "hello" else send)
        exc = expect(ss.TLSError, lambda: srv.accept(timeout=5), within=PROMPT)
        assert exc.code == "SS_ERR_EOF" and "the peer closed the connection" in str(exc)
        serve_good_client(backend, pki, srv)


def test_server_stdlib_client_that_rejects_our_certificate(backend, pki):
    # A real TLS client that does not trust us aborts the handshake with an alert.
    import ssl

    with tls_server(backend, pki) as srv:
        port = port_of(srv)
        outcome: list = []

        def client():
            ctx = ssl.create_default_context(cafile=pki.other_cafile)
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                    ctx.wrap_socket(raw, server_hostname="localhost").close()
            except ssl.SSLError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=client)
        thread.start()
        try:
            exc = expect(ss.TLSError, lambda: srv.accept(timeout=5), within=PROMPT)
            assert "alert" in str(exc) or "unknown ca" in str(exc)
        finally:
            thread.join(10)
        assert outcome and isinstance(outcome[0], ssl.SSLCertVerificationError)
        serve_good_client(backend, pki, srv)


def test_server_many_hostile_clients_in_a_row_then_a_good_one(backend, pki):
    # Every flavour back to back on one listener; the listener survives all of them.
    with tls_server(backend, pki) as srv:
        port = port_of(srv)
        outcomes = []
        for action in ("nothing-fin", "garbage", "hello-fin", "truncated", "partial-silent"):
            c = raw_client(port)
            try:
                if action == "garbage":
                    c.sendall(GARBAGE)
                elif action == "hello-fin":
                    c.sendall(client_hello())
                elif action == "truncated":
                    c.sendall(TRUNCATED_RECORD)
                elif action == "partial-silent":
                    c.sendall(client_hello()[:40])
                if action != "partial-silent":
                    c.shutdown(socket.SHUT_WR)
                with pytest.raises(ss.StreamSocketError) as info:
                    srv.accept(timeout=0.5)
                outcomes.append((action, type(info.value).__name__))
            finally:
                c.close()
        assert outcomes == [("nothing-fin", "TLSError"), ("garbage", "TLSError"), ("hello-fin", "TLSError"),
                            ("truncated", "TLSError"), ("partial-silent", "TimeoutError")]
        serve_good_client(backend, pki, srv)


def test_tcp_server_client_resets_right_after_connecting(backend, pki):
    with backend.server("tcp://127.0.0.1:0") as srv:
        c = raw_client(port_of(srv))
        c.sendall(b"xy")
        time.sleep(0.05)
        reset_socket(c)
        conn, _ = srv.accept(timeout=5)
        with conn:
            conn.set_timeout(5)
            start = time.monotonic()
            try:
                data = conn.read(10)
            except ss.StreamSocketError as exc:  # the RST may discard the bytes before it
                assert exc.errno == errno.ECONNRESET
            else:
                assert data == b"xy"
                exc = expect(ss.StreamSocketError, lambda: conn.read(10), within=PROMPT)
                assert exc.errno == errno.ECONNRESET and exc.code == "SS_ERR_SYSTEM"
            assert time.monotonic() - start < PROMPT
        serve_good_client(backend, pki, srv, secure=False)


def test_tcp_server_client_that_never_reads(backend, pki):
    with backend.server("tcp://127.0.0.1:0") as srv:
        with raw_client(port_of(srv)):
            conn, _ = srv.accept(timeout=5)
            with conn:
                conn.set_timeout(0.4)
                exc = expect(ss.TimeoutError, lambda: conn.write(b"y" * PAYLOAD), at_least=0.35,
                             within=0.4 + SLACK)
                assert type(exc.written) is int and 0 < exc.written < PAYLOAD
        serve_good_client(backend, pki, srv, secure=False)
