"""Servers on both backends: accept, TLS servers (checked with openssl s_client and
our own client), client certificates, SNI, server-side STARTTLS."""

from __future__ import annotations

import socket
import threading
import time

import pytest

import streamsock as ss
from peers import requires_ipv6, run_s_client


def port_of(server: ss.Server) -> int:
    return int(server.local_name.rsplit(":", 1)[1])


class Serving:
    """Runs ``handler(stream)`` for one accepted connection on a thread; keeps its error."""

    def __init__(self, server: ss.Server, handler, timeout=5.0):
        self.server, self.handler, self.timeout = server, handler, timeout
        self.error: BaseException | None = None
        self.peer = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            stream, self.peer = self.server.accept(timeout=self.timeout)
            with stream:
                self.handler(stream)
        except BaseException as exc:  # reported by __exit__
            self.error = exc

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join(10)
        assert not self.thread.is_alive()


def echo_line(stream: ss.Stream) -> None:
    stream.write(b"echo: " + stream.readline())


def test_tcp_server_accepts_and_reports_the_peer(backend):
    with backend.server("tcp://127.0.0.1:0") as srv:
        assert srv.local_name.startswith("127.0.0.1:") and port_of(srv) > 0
        with Serving(srv, echo_line) as serving:
            with backend.client(f"tcp://127.0.0.1:{port_of(srv)}", timeout=5) as s:
                s.write(b"hi\n")
                assert s.readline() == b"echo: hi\n"
                local = s.local_name
        assert serving.error is None
        assert serving.peer == local


def test_accept_times_out_with_errno_110(backend):
    with backend.server("tcp://127.0.0.1:0") as srv:
        start = time.monotonic()
        with pytest.raises(ss.TimeoutError) as info:
            srv.accept(timeout=0.2)
        assert info.value.errno == 110 and time.monotonic() - start < 2


def test_port_in_use_is_a_clear_error(backend):
    with backend.server("tcp://127.0.0.1:0") as srv:
        with pytest.raises(ss.ConnectError) as info:
            backend.server(f"tcp://127.0.0.1:{port_of(srv)}")
        assert info.value.errno == 98 and "Unable to bind to" in str(info.value)


@requires_ipv6
def test_ipv6_server(backend):
    with backend.server("tcp://[::1]:0") as srv:
        assert srv.local_name.startswith("[::1]:")
        with Serving(srv, echo_line):
            with backend.client(f"tcp://[::1]:{port_of(srv)}", timeout=5) as s:
                s.write(b"six\n")
                assert s.readline() == b"echo: six\n"


def tls_server_context(pki, **extra) -> ss.Context:
    return ss.Context(ssl={"local_cert": pki.server_certfile, "local_pk": pki.server_keyfile, **extra})


def test_tls_server_with_our_client(backend, pki):
    with backend.server("tls://127.0.0.1:0", context=tls_server_context(pki)) as srv:
        def handler(stream):
            assert stream.crypto["protocol"] == "TLSv1.3"
            assert stream.tls_info["server_name"] == "localhost"
            echo_line(stream)

        with Serving(srv, handler) as serving:
            ctx = ss.Context(ssl={"cafile": pki.cafile})
            with backend.client(f"tls://localhost:{port_of(srv)}", timeout=5, context=ctx) as s:
                s.write(b"secure\n")
                assert s.readline() == b"echo: secure\n"
        assert serving.error is None


def test_tls_server_with_openssl_s_client(backend, pki):
    with backend.server("ssl://127.0.0.1:0", context=tls_server_context(pki)) as srv:
        with Serving(srv, echo_line) as serving:
            result = run_s_client("127.0.0.1", port_of(srv), "-tls1_3", input_bytes=b"from s_client\n",
                                  cafile=pki.cafile, servername="localhost", verify_hostname="localhost",
                                  wait_for=b"echo: from s_client")
        assert serving.error is None, serving.error
        assert b"echo: from s_client" in result.stdout
        assert b"Verify return code: 0 (ok)" in result.stdout


def test_tls_server_handshake_failure_is_raised_by_accept(backend, pki):
    with backend.server("tls://127.0.0.1:0", context=tls_server_context(pki)) as srv:
        with Serving(srv, echo_line) as serving:
            with socket.create_connection(("127.0.0.1", port_of(srv)), timeout=5) as raw:
                raw.sendall(b"this is not TLS\r\n\r\n")
                try:
                    raw.recv(100)  # an alert, or a reset: the server closed with our bytes unread
                except ConnectionResetError:
                    pass
        assert isinstance(serving.error, ss.TLSError)


def test_tls_server_without_certificate_is_a_config_error(backend):
    with pytest.raises(ss.TLSError, match="local_cert"):
        backend.server("tls://127.0.0.1:0")


def test_server_requires_client_certificates_when_asked(backend, pki):
    ctx = tls_server_context(pki, verify_peer=True, cafile=pki.cafile, capture_peer_cert=True)
    with backend.server("tls://127.0.0.1:0", context=ctx) as srv:
        seen = {}

        def handler(stream):
            seen["cert"] = stream.peer_certificate
            echo_line(stream)

        with Serving(srv, handler) as serving:
            client_ctx = ss.Context(ssl={"cafile": pki.cafile, "local_cert": pki.client.certfile,
                                         "local_pk": pki.client.keyfile})
            with backend.client(f"tls://localhost:{port_of(srv)}", timeout=5, context=client_ctx) as s:
                s.write(b"cert\n")
                assert s.readline() == b"echo: cert\n"
        assert serving.error is None
        assert seen["cert"].der == pki.client.der

        with Serving(srv, echo_line) as serving:
            no_cert = ss.Context(ssl={"cafile": pki.cafile})
            with pytest.raises(ss.StreamSocketError):
                with backend.client(f"tls://localhost:{port_of(srv)}", timeout=5, context=no_cert) as s:
                    s.write(b"x\n")
                    s.readline()  # TLS 1.3: the server's refusal arrives after our handshake
        assert isinstance(serving.error, ss.TLSError)


def test_sni_server_certs_pick_the_certificate(backend, pki):
    ctx = tls_server_context(pki, SNI_server_certs={
        "alt.example": {"local_cert": pki.sni_alt.certfile, "local_pk": pki.sni_alt.keyfile},
    })
    with backend.server("tls://127.0.0.1:0", context=ctx) as srv:
        for name, der in (("alt.example", pki.sni_alt.der), ("localhost", pki.server_cert.der)):
            with Serving(srv, echo_line):
                client_ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": name, "capture_peer_cert": True})
                with backend.client(f"tls://127.0.0.1:{port_of(srv)}", timeout=5, context=client_ctx) as s:
                    assert s.peer_certificate.der == der
                    s.write(b"sni\n")
                    assert s.readline() == b"echo: sni\n"


def test_server_alpn(backend, pki):
    with backend.server("tls://127.0.0.1:0", context=tls_server_context(pki, alpn_protocols="h2,http/1.1")) as srv:
        with Serving(srv, echo_line):
            client_ctx = pki.client_context(alpn=["http/1.1"])
            with socket.create_connection(("127.0.0.1", port_of(srv)), timeout=5) as raw:
                with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                    assert tls.selected_alpn_protocol() == "http/1.1"
                    tls.sendall(b"alpn\n")
                    assert tls.recv(100) == b"echo: alpn\n"


def test_server_side_starttls(backend, pki):
    with backend.server("tcp://127.0.0.1:0", context=tls_server_context(pki)) as srv:
        def handler(stream):
            stream.write(b"220 ready\r\n")
            assert stream.readline() == b"STARTTLS\r\n"
            stream.write(b"220 go ahead\r\n")
            assert stream.enable_crypto(True, ss.CRYPTO_METHOD_TLS_SERVER) is True
            echo_line(stream)

        with Serving(srv, handler) as serving:
            with socket.create_connection(("127.0.0.1", port_of(srv)), timeout=5) as raw:
                f = raw.makefile("rb")
                assert f.readline() == b"220 ready\r\n"
                raw.sendall(b"STARTTLS\r\n")
                assert f.readline() == b"220 go ahead\r\n"
                with pki.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"inside\n")
                    assert tls.recv(100) == b"echo: inside\n"
                f.close()
        assert serving.error is None, serving.error


def test_udp_server_recvfrom_and_sendto(backend):
    with backend.server("udp://127.0.0.1:0", flags=ss.SERVER_BIND) as srv:
        with pytest.raises(ss.StreamSocketError, match="recvfrom"):
            srv.accept(timeout=0.1)
        with backend.client(f"udp://127.0.0.1:{port_of(srv)}", timeout=5) as c:
            c.write(b"ping")
            data, peer = srv.recvfrom(1500, timeout=5)
            assert data == b"ping" and peer == c.local_name
            assert srv.sendto(b"pong", peer) == 4
            assert c.read(1500) == b"pong"


def test_recvfrom_timeout(backend):
    with backend.server("udp://127.0.0.1:0", flags=ss.SERVER_BIND) as srv:
        with pytest.raises(ss.TimeoutError):
            srv.recvfrom(10, timeout=0.1)


@requires_ipv6
def test_udp_over_ipv6(backend):
    with backend.server("udp://[::1]:0", flags=ss.SERVER_BIND) as srv:
        with backend.client(f"udp://[::1]:{port_of(srv)}", timeout=5) as c:
            c.write(b"v6")
            data, peer = srv.recvfrom(100, timeout=5)
            assert data == b"v6" and peer.startswith("[::1]:")
            srv.sendto(b"back", peer)
            assert c.read(100) == b"back"


# --- accepting and handshaking apart: no client holds another up -----------------------------------


def test_silent_clients_do_not_hold_up_a_good_one(backend, pki):
    """Five clients that connect and never send a ClientHello sit in their
    handshakes while the sixth is served at once."""
    with backend.server("tls://127.0.0.1:0", context=tls_server_context(pki)) as srv:
        port = port_of(srv)
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
        try:
            got: list = []

            def good_client():
                ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
                with backend.client(f"tls://127.0.0.1:{port}", timeout=5, context=ctx) as s:
                    got.append(s.read(100))

            thread = threading.Thread(target=good_client)
            thread.start()
            start = time.monotonic()
            conn, _ = srv.accept(timeout=10)
            with conn:
                conn.write(b"served")
            assert time.monotonic() - start < 2.0
            thread.join(10)
            assert got == [b"served"]
        finally:
            for sock in silent:
                sock.close()


def test_a_stalled_handshake_ends_at_handshake_timeout(backend, pki):
    with backend.server("tls://127.0.0.1:0", context=tls_server_context(pki), handshake_timeout=0.3) as srv:
        with socket.create_connection(("127.0.0.1", port_of(srv)), timeout=5) as silent:
            # accept() keeps running the acceptor; the silent client's handshake ends at its deadline
            with pytest.raises(ss.TimeoutError):
                srv.accept(timeout=1.0)
            assert srv.handshake_failures == 1
            assert silent.recv(100) == b""  # the server closed it


def test_close_from_another_thread_ends_a_waiting_accept(backend, pki):
    with backend.server("tls://127.0.0.1:0", context=tls_server_context(pki)) as srv:
        outcome: list = []
        entered = threading.Event()

        def accept():
            entered.set()
            try:
                srv.accept(timeout=8)
            except BaseException as exc:
                outcome.append((exc, time.monotonic()))

        thread = threading.Thread(target=accept)
        thread.start()
        entered.wait(5)  # about to wait in accept, or waiting: either way the close must end it
        closed_at = time.monotonic()
        srv.close()
        thread.join(5)
        assert not thread.is_alive()
        exc, ended_at = outcome[0]
        assert isinstance(exc, ss.StreamSocketError) and exc.code == "SS_ERR_CLOSED"
        assert ended_at - closed_at < 1.0
        with pytest.raises(ss.StreamSocketError, match="closed"):
            srv.accept(timeout=1)


def test_accepting_threads_share_one_server(backend, pki):
    """Four threads in accept() at once: one drives the acceptor, each gets a client."""
    with backend.server("tls://127.0.0.1:0", context=tls_server_context(pki)) as srv:
        port = port_of(srv)
        served: list = []
        lock = threading.Lock()

        def acceptor():
            conn, peer = srv.accept(timeout=10)
            with conn:
                conn.write(b"hi")
                with lock:
                    served.append(peer)

        threads = [threading.Thread(target=acceptor) for _ in range(4)]
        for t in threads:
            t.start()
        ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
        clients = [backend.client(f"tls://127.0.0.1:{port}", timeout=10, context=ctx) for _ in range(4)]
        for c in clients:
            assert c.read(2) == b"hi"
            c.close()
        for t in threads:
            t.join(10)
        assert len(set(served)) == 4


def test_select_sees_clients_the_acceptor_already_holds(backend, pki):
    """Two clients at once: the first accept() takes both in (one hands over,
    one waits), and select() must still call the server readable."""
    with backend.server("tls://127.0.0.1:0", context=tls_server_context(pki)) as srv:
        port = port_of(srv)
        ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
        results: list = []

        def client():
            with backend.client(f"tls://127.0.0.1:{port}", timeout=10, context=ctx) as s:
                results.append(s.read(2))

        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        for _ in range(2):
            assert ss.select([srv], [], [], 5)[0] == [srv]
            conn, _ = srv.accept(timeout=5)
            with conn:
                conn.write(b"ok")
        for t in threads:
            t.join(10)
        assert results == [b"ok", b"ok"]
