"""The loopback peers in peers.py really behave as documented, checked with stdlib clients."""

from __future__ import annotations

import errno
import os
import socket
import ssl
import time

import pytest


import peers  # noqa: E402
from peers import (  # noqa: E402
    LOOPBACK4,
    LOOPBACK6,
    FullBacklogListener,
    OpenSSLServer,
    PyTLSServer,
    RawServer,
    SilentServer,
    SMTPStartTLSServer,
    UDPEchoServer,
    UdgEchoServer,
    UnixEchoServer,
    requires_ipv6,
    run_s_client,
)



T = 5.0  # client-side timeout for everything that should be quick


# ---------------------------------------------------------------------------
# client helpers
# ---------------------------------------------------------------------------

def tls_connect(host, port, ctx, server_hostname="localhost", timeout=T):
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        return ctx.wrap_socket(sock, server_hostname=server_hostname)
    except BaseException:
        sock.close()
        raise


def recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recv_all(sock):
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


class LineClient:
    """Buffered line reading over a (plain or TLS) socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, f"EOF before a full line, have {self.buf!r}"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def send(self, data):
        self.sock.sendall(data)


class BIOClient:
    """A TLS client over an already connected socket using SSLObject + MemoryBIO."""

    def __init__(self, sock, ctx, server_hostname):
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)
        self.buf = b""

    def _pump(self, fn, *args):
        while True:
            try:
                result = fn(*args)
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                if data:
                    self.incoming.write(data)
                else:
                    self.incoming.write_eof()
                continue
            self._flush()
            return result

    def _flush(self):
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def handshake(self):
        self._pump(self.obj.do_handshake)

    def send(self, data):
        self._pump(self.obj.write, data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self._pump(self.obj.read, 65536)
            assert chunk, f"TLS EOF before a full line, have {self.buf!r}"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def unwrap(self):
        self._pump(self.obj.unwrap)


# ---------------------------------------------------------------------------
# PKI + PyTLSServer
# ---------------------------------------------------------------------------

def test_pki_files(pki):
    for pair in (pki.server_cert, pki.wrong_host, pki.expired, pki.self_signed, pki.untrusted, pki.client,
                 pki.sni_alt):
        assert os.path.isfile(pair.certfile) and os.path.isfile(pair.keyfile)
        assert pair.der.startswith(b"\x30")
    assert os.path.isfile(pki.cafile) and os.path.isfile(pki.other_cafile)
    assert pki.server_certfile == pki.server_cert.certfile
    assert pki.server_keyfile == pki.server_cert.keyfile
    certfile, keyfile = pki.client
    assert certfile.endswith(".pem") and keyfile.endswith(".key")


def test_tls_echo_records_handshake(pki, tls_server):
    assert tls_server.address == f"127.0.0.1:{tls_server.port}"
    with tls_connect(LOOPBACK4, tls_server.port, pki.client_context()) as tls:
        assert tls.version() == "TLSv1.3"
        tls.sendall(b"ping\n")
        assert recv_exactly(tls, 5) == b"ping\n"
    (record,) = tls_server.wait_for_connections(1)
    assert record.handshake_error is None
    assert record.sni == "localhost"
    assert record.version == "TLSv1.3"
    assert record.alpn is None
    assert record.client_cert_der is None
    assert bytes(record.received) == b"ping\n"
    assert bytes(record.sent) == b"ping\n"


@pytest.mark.parametrize(("which", "message"), [
    ("wrong_host", "Hostname mismatch"),
    ("expired", "certificate has expired"),
    ("self_signed", "self-signed certificate"),
    ("untrusted", "unable to get local issuer certificate"),
])
def test_bad_certificates_fail_verification(pki, make_peer, which, message):
    pair = getattr(pki, which)
    server = make_peer(PyTLSServer, pair.certfile, pair.keyfile)
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        tls_connect(LOOPBACK4, server.port, pki.client_context())
    assert message in str(info.value)
    (record,) = server.wait_for_connections(1)
    assert record.handshake_error is not None  # the client aborted with an alert


def test_untrusted_cert_is_fine_with_its_own_ca(pki, make_peer):
    server = make_peer(PyTLSServer, pki.untrusted.certfile, pki.untrusted.keyfile)
    with tls_connect(LOOPBACK4, server.port, pki.client_context(pki.other_cafile)) as tls:
        assert tls.getpeercert(binary_form=True) == pki.untrusted.der


def test_tls_ip_identity_and_no_sni(pki, tls_server):
    # IP addresses are checked against the IP SANs, and no SNI is sent for them
    with tls_connect(LOOPBACK4, tls_server.port, pki.client_context(), server_hostname="127.0.0.1") as tls:
        tls.sendall(b"x")
        assert tls.recv(1) == b"x"
    (record,) = tls_server.wait_for_connections(1)
    assert record.sni is None


@requires_ipv6
def test_tls_server_ipv6(pki, make_peer):
    server = make_peer(PyTLSServer, pki.server_certfile, pki.server_keyfile, host=LOOPBACK6, mode="greeting")
    assert server.address == f"[::1]:{server.port}"
    with tls_connect(LOOPBACK6, server.port, pki.client_context(), server_hostname="::1") as tls:
        assert recv_exactly(tls, len(PyTLSServer.GREETING)) == PyTLSServer.GREETING


def test_tls_alpn_and_versions(pki, make_peer):
    server = make_peer(PyTLSServer, pki.server_certfile, pki.server_keyfile, alpn=["h2", "http/1.1"],
                       max_version="1.2")
    with tls_connect(LOOPBACK4, server.port, pki.client_context(alpn=["foo", "http/1.1"])) as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"
        assert tls.version() == "TLSv1.2"
    (record,) = server.wait_for_connections(1)
    assert (record.alpn, record.version) == ("http/1.1", "TLSv1.2")

    tls13_only = make_peer(PyTLSServer, pki.server_certfile, pki.server_keyfile, min_version=ssl.TLSVersion.TLSv1_3)
    ctx = pki.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        tls_connect(LOOPBACK4, tls13_only.port, ctx)


def test_tls_client_certificate(pki, make_peer):
    server = make_peer(PyTLSServer, pki.server_certfile, pki.server_keyfile, request_client_cert=True,
                       cafile=pki.cafile)
    with tls_connect(LOOPBACK4, server.port, pki.client_context(cert=pki.client)) as tls:
        tls.sendall(b"a")
        assert tls.recv(1) == b"a"
    with tls_connect(LOOPBACK4, server.port, pki.client_context()) as tls:  # optional: none is fine
        tls.sendall(b"b")
        assert tls.recv(1) == b"b"
    first, second = server.wait_for_connections(2)
    assert first.client_cert_der == pki.client.der
    assert second.client_cert_der is None


def test_tls_client_certificate_required(pki, make_peer):
    server = make_peer(PyTLSServer, pki.server_certfile, pki.server_keyfile, require_client_cert=True,
                       cafile=pki.cafile)
    with tls_connect(LOOPBACK4, server.port, pki.client_context()) as tls:
        # TLS 1.3: the client's handshake is over before the server has looked at its Certificate
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED|certificate required"):
            tls.recv(1)
    (record,) = server.wait_for_connections(1)
    assert record.handshake_error is not None


def test_tls_sni_certificate_switch(pki, make_peer):
    server = make_peer(PyTLSServer, pki.server_certfile, pki.server_keyfile, sni_certs={"alt.example": pki.sni_alt})
    with tls_connect(LOOPBACK4, server.port, pki.client_context(), server_hostname="alt.example") as tls:
        assert tls.getpeercert(binary_form=True) == pki.sni_alt.der
    with tls_connect(LOOPBACK4, server.port, pki.client_context()) as tls:
        assert tls.getpeercert(binary_form=True) == pki.server_cert.der
    first, second = server.wait_for_connections(2)
    assert (first.sni, second.sni) == ("alt.example", "localhost")


def test_tls_concurrent_connections(pki, tls_server):
    ctx = pki.client_context()
    clients = [tls_connect(LOOPBACK4, tls_server.port, ctx) for _ in range(4)]
    try:
        for i, tls in enumerate(clients):
            tls.sendall(b"client %d\n" % i)
        for i, tls in enumerate(clients):
            assert recv_exactly(tls, 9) == b"client %d\n" % i
    finally:
        for tls in clients:
            tls.close()
    assert len(tls_server.wait_for_connections(4)) == 4


def test_tls_close_modes(pki, make_peer):
    abrupt = make_peer(PyTLSServer, pki.server_certfile, pki.server_keyfile, mode="close_after_handshake")
    with tls_connect(LOOPBACK4, abrupt.port, pki.client_context()) as tls:
        tls.suppress_ragged_eofs = False
        with pytest.raises(ssl.SSLEOFError):
            tls.recv(1)
    clean = make_peer(PyTLSServer, pki.server_certfile, pki.server_keyfile, mode="shutdown_after_handshake")
    with tls_connect(LOOPBACK4, clean.port, pki.client_context()) as tls:
        tls.suppress_ragged_eofs = False
        assert tls.recv(1) == b""  # close_notify


def test_tls_server_stops_with_clients_still_connected(pki):
    # close() must not hang on a handler blocked in recv(), and must release every fd
    server = PyTLSServer(pki.server_certfile, pki.server_keyfile).__enter__()
    tls = tls_connect(LOOPBACK4, server.port, pki.client_context())
    raw = socket.create_connection((LOOPBACK4, server.port), timeout=T)  # never handshakes
    try:
        server.wait_for_connections(2, finished=False)
        started = time.monotonic()
        server.close()
        assert time.monotonic() - started < 2
        assert recv_all(tls) == b""
    finally:
        tls.close()
        raw.close()


# ---------------------------------------------------------------------------
# openssl s_server / s_client
# ---------------------------------------------------------------------------

def test_openssl_server_www(pki, openssl_server):
    assert openssl_server.address == f"127.0.0.1:{openssl_server.port}"
    with tls_connect(LOOPBACK4, openssl_server.port, pki.client_context()) as tls:
        tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
        page = recv_all(tls)
    assert page.startswith(b"HTTP/1.0 200 ok\r\n")
    assert b"no client certificate available" in page


def test_openssl_server_rev_alpn_tls12(pki, make_peer):
    server = make_peer(OpenSSLServer, pki.server_certfile, pki.server_keyfile, mode="rev", alpn=["h2", "http/1.1"],
                       tls_version="1.2")
    with tls_connect(LOOPBACK4, server.port, pki.client_context(alpn=["http/1.1"])) as tls:
        assert tls.version() == "TLSv1.2"
        assert tls.selected_alpn_protocol() == "http/1.1"
        tls.sendall(b"hello world\n")
        assert recv_exactly(tls, 12) == b"dlrow olleh\n"
    server.wait_for_output(b"ALPN protocols selected: http/1.1")


def test_openssl_server_sni_cert2(pki, make_peer):
    server = make_peer(OpenSSLServer, pki.server_certfile, pki.server_keyfile, servername="alt.example",
                       cert2=pki.sni_alt.certfile, key2=pki.sni_alt.keyfile)
    with tls_connect(LOOPBACK4, server.port, pki.client_context(), server_hostname="alt.example") as tls:
        assert tls.getpeercert(binary_form=True) == pki.sni_alt.der
    with tls_connect(LOOPBACK4, server.port, pki.client_context()) as tls:
        assert tls.getpeercert(binary_form=True) == pki.server_cert.der
    out = server.wait_for_output(b'Hostname in TLS extension: "localhost"')
    assert b"Switching server context." in out


def test_openssl_server_client_cert(pki, make_peer):
    server = make_peer(OpenSSLServer, pki.server_certfile, pki.server_keyfile, verify_cafile=pki.cafile,
                       naccept=2)
    with tls_connect(LOOPBACK4, server.port, pki.client_context(cert=pki.client)) as tls:
        tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
        page = recv_all(tls)
    assert b"client.example" in page and b"BEGIN CERTIFICATE" in page
    with tls_connect(LOOPBACK4, server.port, pki.client_context()) as tls:
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED|certificate required"):
            tls.recv(1)
    assert server.wait(5) == 0  # -naccept 2: it exits by itself
    assert b"peer did not return a certificate" in server.stderr


def test_openssl_server_sink_mode(pki, make_peer):
    server = make_peer(OpenSSLServer, pki.server_certfile, pki.server_keyfile, mode="sink")
    with tls_connect(LOOPBACK4, server.port, pki.client_context()) as tls:
        tls.sendall(b"to the server\n")
        server.wait_for_output(b"to the server\n")
        server.send(b"to the client\n")
        assert recv_exactly(tls, 14) == b"to the client\n"


@requires_ipv6
def test_openssl_server_ipv6(pki, make_peer):
    server = make_peer(OpenSSLServer, pki.server_certfile, pki.server_keyfile, host=LOOPBACK6, mode="rev")
    assert server.address == f"[::1]:{server.port}"
    with tls_connect(LOOPBACK6, server.port, pki.client_context(), server_hostname="::1") as tls:
        tls.sendall(b"abc\n")
        assert recv_exactly(tls, 4) == b"cba\n"


def test_s_client_against_python_server(pki, make_peer):
    server = make_peer(PyTLSServer, pki.server_certfile, pki.server_keyfile, mode="greeting")
    rc, out, err = run_s_client(LOOPBACK4, server.port, input_bytes=b"echo me\n", servername="localhost",
                                cafile=pki.cafile, verify_hostname="localhost", wait_for=b"echo me\n", timeout=10)
    assert rc == 0, err
    assert PyTLSServer.GREETING in out and b"echo me\n" in out
    assert b"Verify return code: 0 (ok)" in out
    (record,) = server.wait_for_connections(1)
    assert record.sni == "localhost"
    assert bytes(record.received) == b"echo me\n"


def test_s_client_rejects_wrong_host(pki, make_peer):
    server = make_peer(PyTLSServer, pki.wrong_host.certfile, pki.wrong_host.keyfile)
    result = run_s_client(LOOPBACK4, server.port, servername="localhost", cafile=pki.cafile,
                          verify_hostname="localhost", timeout=10)
    assert result.returncode == 1
    assert b"hostname mismatch" in result.stdout + result.stderr


def test_s_client_with_client_cert_against_s_server(pki, make_peer):
    server = make_peer(OpenSSLServer, pki.server_certfile, pki.server_keyfile, mode="www",
                       verify_cafile=pki.cafile, tls_version="1.3")
    result = run_s_client(LOOPBACK4, server.port, "-cert", pki.client.certfile, "-key", pki.client.keyfile,
                          "-ign_eof", input_bytes=b"GET / HTTP/1.0\r\n\r\n", cafile=pki.cafile,
                          verify_hostname="127.0.0.1", timeout=10)
    assert result.returncode == 0, result.stderr
    assert b"HTTP/1.0 200 ok" in result.stdout
    assert b"Protocol  : TLSv1.3" in result.stdout or b"TLSv1.3" in result.stdout


# ---------------------------------------------------------------------------
# SMTP STARTTLS
# ---------------------------------------------------------------------------

def smtp_plain_prelude(sock):
    client = LineClient(sock)
    assert client.line() == b"220 localhost ESMTP test"
    client.send(b"EHLO client.example\r\n")
    assert client.line() == b"250-localhost"
    assert client.line() == b"250 STARTTLS"
    client.send(b"STARTTLS\r\n")
    assert client.line() == b"220 Ready to start TLS"
    return client


def test_smtp_starttls_with_sslsocket(pki, smtp_server):
    raw = socket.create_connection((LOOPBACK4, smtp_server.port), timeout=T)
    with raw:
        client = smtp_plain_prelude(raw)
        assert client.buf == b""  # nothing pipelined behind the 220
        with pki.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            client = LineClient(tls)
            client.send(b"EHLO client.example\r\n")
            assert client.line() == b"250 localhost"
            client.send(b"MAIL FROM:<a@b>\r\n")
            assert client.line() == b"250 MAIL FROM:<a@b>"
            client.send(b"STOPTLS\r\n")
            assert client.line() == b"502 STOPTLS not supported"
            client.send(b"QUIT\r\n")
            assert client.line() == b"221 bye"
    (record,) = smtp_server.wait_for_connections(1)
    assert record.plain_lines == [b"EHLO client.example", b"STARTTLS"]
    assert record.tls_lines == [b"EHLO client.example", b"MAIL FROM:<a@b>", b"STOPTLS", b"QUIT"]
    assert record.sni == "localhost" and record.version == "TLSv1.3"
    assert record.quit and not record.downgraded and record.error is None


def test_smtp_downgrade_with_memory_bio(pki, make_peer):
    server = make_peer(SMTPStartTLSServer, pki.server_certfile, pki.server_keyfile, downgrade=True)
    with socket.create_connection((LOOPBACK4, server.port), timeout=T) as raw:
        smtp_plain_prelude(raw)
        tls = BIOClient(raw, pki.client_context(), "localhost")
        tls.handshake()
        tls.send(b"EHLO client.example\r\n")
        assert tls.line() == b"250 localhost"
        tls.send(b"STOPTLS\r\n")
        assert tls.line() == b"220 plaintext again"
        tls.unwrap()
        assert tls.incoming.pending == 0 and tls.buf == b""
        plain = LineClient(raw)
        plain.send(b"NOOP\r\n")
        assert plain.line() == b"250 plain NOOP"
        plain.send(b"QUIT\r\n")
        assert plain.line() == b"221 bye"
        assert raw.recv(1) == b""
    (record,) = server.wait_for_connections(1)
    assert record.tls_lines == [b"EHLO client.example", b"STOPTLS"]
    assert record.plain_after_lines == [b"NOOP", b"QUIT"]
    assert record.downgraded and record.error is None


def test_smtp_downgrade_with_sslsocket(pki, make_peer):
    server = make_peer(SMTPStartTLSServer, pki.server_certfile, pki.server_keyfile, downgrade=True)
    with socket.create_connection((LOOPBACK4, server.port), timeout=T) as raw:
        smtp_plain_prelude(raw)
        tls = pki.client_context().wrap_socket(raw, server_hostname="localhost")
        client = LineClient(tls)
        client.send(b"STOPTLS\r\n")
        assert client.line() == b"220 plaintext again"
        plain = tls.unwrap()
        try:
            client = LineClient(plain)
            client.send(b"hello\r\n")
            assert client.line() == b"250 plain hello"
        finally:
            plain.close()
    (record,) = server.wait_for_connections(1)
    assert record.plain_after_lines == [b"hello"]


def test_smtp_injection_arrives_in_the_same_segment(pki, make_peer):
    inject = b"250 INJECTED\r\n"
    server = make_peer(SMTPStartTLSServer, pki.server_certfile, pki.server_keyfile, inject=inject)
    with socket.create_connection((LOOPBACK4, server.port), timeout=T) as raw:
        client = LineClient(raw)
        assert client.line() == b"220 localhost ESMTP test"
        client.send(b"STARTTLS\r\n")
        expected = b"220 Ready to start TLS\r\n" + inject
        data = raw.recv(65536)
        assert data == expected  # one recv: both came in one segment
        # a correct client now refuses and hangs up; the server's handshake fails
    (record,) = server.wait_for_connections(1)
    assert record.starttls and record.handshake_error is not None
    assert bytes(record.sent).endswith(expected)


def test_smtp_records_client_pipelining(pki, smtp_server):
    with socket.create_connection((LOOPBACK4, smtp_server.port), timeout=T) as raw:
        client = LineClient(raw)
        client.line()
        client.send(b"STARTTLS\r\nEHLO sneaky\r\n")
        assert client.line() == b"220 Ready to start TLS"
    (record,) = smtp_server.wait_for_connections(1)
    assert record.pipelined_after_starttls == b"EHLO sneaky\r\n"


# ---------------------------------------------------------------------------
# timeouts, refusals, misbehaving peers
# ---------------------------------------------------------------------------

def test_silent_server_times_out_tls_handshake(pki, silent_server):
    raw = socket.create_connection((LOOPBACK4, silent_server.port), timeout=0.5)
    with raw:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="handshake operation timed out"):
            pki.client_context().wrap_socket(raw, server_hostname="localhost")
        assert 0.4 < time.monotonic() - started < 2
    assert len(silent_server.wait_for_connections(1, finished=False)) == 1


def test_full_backlog_connect_times_out(full_backlog):
    assert full_backlog.filled >= 1
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        socket.create_connection((LOOPBACK4, full_backlog.port), timeout=1).close()
    assert 0.9 < time.monotonic() - started < 2.0


def test_full_backlog_nonblocking_connect_stays_in_progress(full_backlog):
    with socket.socket() as s:
        s.setblocking(False)
        assert s.connect_ex((LOOPBACK4, full_backlog.port)) == errno.EINPROGRESS
        time.sleep(0.3)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        with pytest.raises(OSError) as info:  # still not connected
            s.getpeername()
        assert info.value.errno == errno.ENOTCONN


def test_refused_port(refused_tcp_port):
    with pytest.raises(ConnectionRefusedError) as info:
        socket.create_connection((LOOPBACK4, refused_tcp_port), timeout=T).close()
    assert info.value.errno == errno.ECONNREFUSED == 111
    port6 = peers.refused_port(LOOPBACK6) if peers.has_ipv6() else None
    if port6 is not None:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((LOOPBACK6, port6), timeout=T).close()


def test_raw_close_after_client_hello(pki, make_peer):
    server = make_peer(RawServer, peers.close_after_client_hello)
    with pytest.raises(ssl.SSLEOFError):
        tls_connect(LOOPBACK4, server.port, pki.client_context())
    (record,) = server.wait_for_connections(1)
    assert record.result[:1] == b"\x16"  # a TLS handshake record: the ClientHello


def test_raw_send_garbage(pki, make_peer):
    server = make_peer(RawServer, peers.send_garbage)
    with pytest.raises(ssl.SSLError) as info:
        tls_connect(LOOPBACK4, server.port, pki.client_context())
    assert "WRONG_VERSION_NUMBER" in str(info.value) or "wrong version number" in str(info.value)
    (record,) = server.wait_for_connections(1)
    assert record.error is None


def test_raw_reset_mid_handshake(pki, make_peer):
    server = make_peer(RawServer, peers.reset_mid_handshake)
    with pytest.raises(ConnectionResetError) as info:
        tls_connect(LOOPBACK4, server.port, pki.client_context())
    assert info.value.errno == errno.ECONNRESET
    server.wait_for_connections(1)


# ---------------------------------------------------------------------------
# datagram and unix echo peers
# ---------------------------------------------------------------------------

def test_udp_echo(udp_echo):
    assert udp_echo.address == f"127.0.0.1:{udp_echo.port}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(T)
        s.sendto(b"dgram", (LOOPBACK4, udp_echo.port))
        data, addr = s.recvfrom(100)
    assert data == b"dgram" and addr == (LOOPBACK4, udp_echo.port)
    assert udp_echo.received[0][0] == b"dgram"


def test_udp6_echo(udp6_echo):
    assert udp6_echo.address == f"[::1]:{udp6_echo.port}"
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.settimeout(T)
        s.connect((LOOPBACK6, udp6_echo.port))
        s.send(b"six")
        assert s.recv(100) == b"six"


@pytest.mark.parametrize("fixture", ["unix_echo", "unix_echo_abstract"])
def test_unix_echo(request, fixture):
    server = request.getfixturevalue(fixture)
    if fixture == "unix_echo":
        assert os.path.exists(server.path) and server.abstract is None
    else:
        assert server.path is None and server.sockaddr == "\0" + server.abstract
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(T)
        s.connect(server.sockaddr)
        s.sendall(b"unix stream")
        assert recv_exactly(s, 11) == b"unix stream"
    server.wait_for_connections(1)


def test_unix_echo_removes_its_socket_file():
    with UnixEchoServer() as server:
        path = server.path
        assert os.path.exists(path)
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))


@pytest.mark.parametrize("fixture", ["udg_echo", "udg_echo_abstract"])
def test_udg_echo(request, fixture):
    server = request.getfixturevalue(fixture)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.settimeout(T)
        s.bind("")  # Linux autobind: an abstract address the echo can answer to
        s.sendto(b"unix dgram", server.sockaddr)
        assert s.recv(100) == b"unix dgram"
    with peers.short_tempdir() as d, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.settimeout(T)
        s.bind(os.path.join(d, "client.sock"))  # a path-bound client
        s.sendto(b"from a path", server.sockaddr)
        assert s.recv(100) == b"from a path"
    assert [data for data, _ in server.received] == [b"unix dgram", b"from a path"]


def test_udg_unbound_sender_gets_no_reply(udg_echo):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(b"nobody home", udg_echo.sockaddr)
        assert peers._wait_until(lambda: len(udg_echo.received) == 1, T)
    assert udg_echo.received[0][0] == b"nobody home"


@requires_ipv6
def test_full_backlog_ipv6(make_peer):
    listener = make_peer(FullBacklogListener, LOOPBACK6)
    assert listener.address == f"[::1]:{listener.port}"
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        socket.create_connection((LOOPBACK6, listener.port), timeout=1).close()
    assert 0.9 < time.monotonic() - started < 2.0


def test_peers_join_their_threads(pki):
    import threading

    before = set(threading.enumerate())
    with PyTLSServer(pki.server_certfile, pki.server_keyfile) as tls_server, \
            SMTPStartTLSServer(pki.server_certfile, pki.server_keyfile) as smtp, \
            SilentServer() as silent, UDPEchoServer() as udp, UdgEchoServer() as udg, \
            RawServer(peers.close_after_client_hello) as raw:
        held = [socket.create_connection((LOOPBACK4, port), timeout=T)
                for port in (tls_server.port, smtp.port, silent.port, raw.port)]
        try:
            for server in (tls_server, smtp, silent, raw):
                server.wait_for_connections(1, finished=False)
            assert len(set(threading.enumerate()) - before) >= 8
        finally:
            for sock in held:
                sock.close()
        del udp, udg
    assert set(threading.enumerate()) - before == set()
