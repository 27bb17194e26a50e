"""ssl://, tls:// and tlsv1.x:// clients on both backends against real TLS peers."""

from __future__ import annotations

import hashlib
import ssl
import time

import pytest

import streamsock as ss
from peers import OpenSSLServer, PyTLSServer, RawServer, close_after_client_hello, garbage_script


def ctx_for(pki, **ssl_options) -> ss.Context:
    return ss.Context(ssl={"cafile": pki.cafile, **ssl_options})


def serve(cert, **kw) -> PyTLSServer:
    return PyTLSServer(cert.certfile, cert.keyfile, **kw)


def test_tls_round_trip_and_crypto_meta(backend, pki, tls_server):
    with backend.client(f"tls://localhost:{tls_server.port}", timeout=5, context=ctx_for(pki)) as s:
        s.write(b"hello over tls\n")
        assert s.readline() == b"hello over tls\n"
        crypto = s.meta["crypto"]
        assert crypto["protocol"] == "TLSv1.3"
        assert crypto["cipher_name"].startswith("TLS_") and crypto["cipher_bits"] >= 128
        assert crypto["cipher_version"] == "TLSv1.3"
        assert "alpn_protocol" not in crypto
    tls_server.wait_for_connections(1)
    assert tls_server.connections[0].sni == "localhost"


@pytest.mark.parametrize("scheme", ["ssl", "tls", "tlsv1.2", "tlsv1.3"])
def test_every_tls_transport_connects(backend, pki, scheme):
    with serve(pki.server_cert) as peer:
        with backend.client(f"{scheme}://127.0.0.1:{peer.port}", timeout=5, context=ctx_for(pki)) as s:
            s.write(b"x\n")
            assert s.readline() == b"x\n"
            expected = {"tlsv1.2": "TLSv1.2", "tlsv1.3": "TLSv1.3"}.get(scheme, "TLSv1.3")
            assert s.crypto["protocol"] == expected
        peer.wait_for_connections(1)
        assert peer.connections[0].version == expected
        assert peer.connections[0].sni is None  # IP literals get no SNI (RFC 6066)


def test_version_pinning_fails_against_a_server_without_it(backend, pki):
    with serve(pki.server_cert, max_version="1.2") as peer:
        with pytest.raises(ss.TLSError) as info:
            backend.client(f"tlsv1.3://127.0.0.1:{peer.port}", timeout=5, context=ctx_for(pki))
        assert "protocol version" in str(info.value) or "alert" in str(info.value)


def test_default_minimum_is_tls12(backend, pki):
    # A server limited to TLS 1.1 cannot reach a default client (TLS 1.2+).
    with serve(pki.server_cert, max_version=ssl.TLSVersion.TLSv1_1) as peer:
        with pytest.raises(ss.TLSError):
            backend.client(f"tls://127.0.0.1:{peer.port}", timeout=5, context=ctx_for(pki))


def test_sslv3_and_sslv2_are_refused_naming_openssl(backend):
    for scheme in ("sslv3", "sslv2"):
        with pytest.raises(ss.UnsupportedTransportError) as info:
            backend.client(f"{scheme}://127.0.0.1:443", timeout=1)
        assert scheme in str(info.value) and "OpenSSL" in str(info.value)


@pytest.mark.parametrize(
    "cert_name, message",
    [
        ("wrong_host", 'hostname mismatch (expected "localhost")'),
        ("expired", "certificate has expired"),
        ("self_signed", "self-signed certificate"),
        ("untrusted", "unable to get local issuer certificate"),
    ],
)
def test_verification_failures_name_the_reason(backend, pki, cert_name, message):
    with serve(getattr(pki, cert_name)) as peer:
        with pytest.raises(ss.CertificateVerifyError) as info:
            backend.client(f"tls://localhost:{peer.port}", timeout=5, context=ctx_for(pki))
        assert message in str(info.value)
        assert info.value.errno == 0 and info.value.code == "SS_ERR_TLS_VERIFY"
        assert f"Unable to connect to tls://localhost:{peer.port}" in str(info.value)


def test_system_trust_store_is_the_default(backend, pki, tls_server):
    with pytest.raises(ss.CertificateVerifyError, match="unable to get local issuer certificate"):
        backend.client(f"tls://localhost:{tls_server.port}", timeout=5)


def test_ip_literal_is_checked_against_ip_sans(backend, pki, tls_server):
    with backend.client(f"tls://127.0.0.1:{tls_server.port}", timeout=5, context=ctx_for(pki)) as s:
        assert s.crypto is not None
    with serve(pki.wrong_host) as peer:
        with pytest.raises(ss.CertificateVerifyError, match="IP address mismatch"):
            backend.client(f"tls://127.0.0.1:{peer.port}", timeout=5, context=ctx_for(pki))


def test_verify_peer_false_accepts_anything(backend, pki):
    with serve(pki.untrusted) as peer:
        ctx = ss.Context(ssl={"verify_peer": False, "verify_peer_name": False})
        with backend.client(f"tls://localhost:{peer.port}", timeout=5, context=ctx) as s:
            s.write(b"ok\n")
            assert s.readline() == b"ok\n"


def test_verify_peer_false_still_checks_the_name(backend, pki):
    with serve(pki.wrong_host) as peer:
        ctx = ss.Context(ssl={"verify_peer": False})
        with pytest.raises(ss.CertificateVerifyError, match='did not match expected "localhost"'):
            backend.client(f"tls://localhost:{peer.port}", timeout=5, context=ctx)


def test_peer_name_overrides_the_host(backend, pki):
    with serve(pki.wrong_host) as peer:
        ctx = ctx_for(pki, peer_name="wrong.example")
        with backend.client(f"tls://127.0.0.1:{peer.port}", timeout=5, context=ctx) as s:
            assert s.crypto["protocol"] == "TLSv1.3"
        peer.wait_for_connections(1)
        assert peer.connections[0].sni == "wrong.example"


def test_verify_peer_name_false_skips_the_name_only(backend, pki):
    with serve(pki.wrong_host) as peer:
        with backend.client(f"tls://localhost:{peer.port}", timeout=5,
                            context=ctx_for(pki, verify_peer_name=False)) as s:
            assert s.crypto is not None
    with serve(pki.untrusted) as peer, pytest.raises(ss.CertificateVerifyError):
        backend.client(f"tls://localhost:{peer.port}", timeout=5, context=ctx_for(pki, verify_peer_name=False))


def test_allow_self_signed_accepts_a_self_signed_leaf_with_the_right_name(backend, pki):
    with serve(pki.self_signed) as peer:
        with backend.client(f"tls://localhost:{peer.port}", timeout=5,
                            context=ctx_for(pki, allow_self_signed=True)) as s:
            assert s.crypto is not None
        with pytest.raises(ss.CertificateVerifyError, match="hostname mismatch"):
            backend.client(f"tls://localhost:{peer.port}", timeout=5,
                           context=ctx_for(pki, allow_self_signed=True, peer_name="other.example"))


def test_allow_self_signed_does_not_accept_an_untrusted_ca(backend, pki):
    with serve(pki.untrusted) as peer, pytest.raises(ss.CertificateVerifyError):
        backend.client(f"tls://localhost:{peer.port}", timeout=5, context=ctx_for(pki, allow_self_signed=True))


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256"])
def test_peer_fingerprint_string_forms(backend, pki, tls_server, algorithm):
    digest = hashlib.new(algorithm, pki.server_cert.der).hexdigest()
    ok = ctx_for(pki, peer_fingerprint=digest.upper())
    with backend.client(f"tls://localhost:{tls_server.port}", timeout=5, context=ok) as s:
        assert s.crypto is not None
    wrong = ctx_for(pki, peer_fingerprint="0" * len(digest))
    with pytest.raises(ss.CertificateVerifyError, match="peer_fingerprint match failure"):
        backend.client(f"tls://localhost:{tls_server.port}", timeout=5, context=wrong)


def test_peer_fingerprint_dict_and_without_verification(backend, pki):
    with serve(pki.untrusted) as peer:
        der = pki.untrusted.der
        spec = {"sha256": hashlib.sha256(der).hexdigest(), "sha1": hashlib.sha1(der).hexdigest()}
        ctx = ss.Context(ssl={"verify_peer": False, "peer_fingerprint": spec})
        with backend.client(f"tls://localhost:{peer.port}", timeout=5, context=ctx) as s:
            assert s.crypto is not None
        spec["sha1"] = "1" * 40
        with pytest.raises(ss.CertificateVerifyError, match="peer_fingerprint"):
            backend.client(f"tls://localhost:{peer.port}", timeout=5,
                           context=ss.Context(ssl={"verify_peer": False, "peer_fingerprint": spec}))


def test_capture_peer_cert_and_chain(backend, pki, tls_server):
    ctx = ctx_for(pki, capture_peer_cert=True, capture_peer_cert_chain=True)
    with backend.client(f"tls://localhost:{tls_server.port}", timeout=5, context=ctx) as s:
        cert = s.peer_certificate
        assert cert.der == pki.server_cert.der
        assert ("DNS", "localhost") in cert.san
        assert s.peer_certificate_chain[0] == cert
    with backend.client(f"tls://localhost:{tls_server.port}", timeout=5, context=ctx_for(pki)) as s:
        assert s.peer_certificate is None


def test_sni_is_sent_and_can_be_disabled(backend, pki, tls_server):
    with backend.client(f"tls://localhost:{tls_server.port}", timeout=5, context=ctx_for(pki)):
        pass
    with backend.client(f"tls://localhost:{tls_server.port}", timeout=5, context=ctx_for(pki, SNI_enabled=False)):
        pass
    tls_server.wait_for_connections(2)
    assert [c.sni for c in tls_server.connections] == ["localhost", None]


def test_alpn_is_negotiated(backend, pki):
    with serve(pki.server_cert, alpn=["h2", "http/1.1"]) as peer:
        ctx = ctx_for(pki, alpn_protocols="http/1.1,h2")
        with backend.client(f"tls://localhost:{peer.port}", timeout=5, context=ctx) as s:
            assert s.crypto["alpn_protocol"] in ("h2", "http/1.1")
            selected = s.crypto["alpn_protocol"]
        peer.wait_for_connections(1)
        assert peer.connections[0].alpn == selected


def test_client_certificate_is_presented(backend, pki):
    with serve(pki.server_cert, require_client_cert=True, cafile=pki.cafile) as peer:
        ctx = ctx_for(pki, local_cert=pki.client.certfile, local_pk=pki.client.keyfile)
        with backend.client(f"tls://localhost:{peer.port}", timeout=5, context=ctx) as s:
            s.write(b"with cert\n")
            assert s.readline() == b"with cert\n"
        peer.wait_for_connections(1)
        assert peer.connections[0].client_cert_der == pki.client.der


def test_against_openssl_s_server(backend, pki):
    with OpenSSLServer(pki.server_certfile, pki.server_keyfile, mode="www", tls_version="1.3", alpn="h2") as peer:
        ctx = ctx_for(pki, alpn_protocols=["h2"])
        with backend.client(f"ssl://localhost:{peer.port}", timeout=5, context=ctx) as s:
            s.write(b"GET / HTTP/1.0\r\n\r\n")
            assert s.readline().startswith(b"HTTP/1.0 200")
            body = s.read(-1)
            assert b"TLSv1.3" in body
            assert s.crypto["alpn_protocol"] == "h2"


def test_tls_info_mid_handshake_reports_nothing_yet(backend, silent_server):
    """A tls:// stream connected asynchronously, its handshake waiting for a
    server that never answers: what it reports is empty, not an error."""
    with backend.client(f"tls://127.0.0.1:{silent_server.port}", timeout=5,
                        flags=ss.CLIENT_ASYNC_CONNECT) as s:
        assert s.read_nowait() is None  # connected, the ClientHello sent, no answer
        assert s.tls_info == {"protocol": "", "cipher_name": "", "cipher_bits": 0, "cipher_version": "",
                              "alpn_protocol": None, "group": None, "server_name": None,  # no SNI for an IP
                              "session_reused": False}
        assert s.crypto is None and "crypto" not in s.meta


def test_handshake_timeout_against_a_silent_server(backend, silent_server):
    start = time.monotonic()
    with pytest.raises(ss.TimeoutError) as info:
        backend.client(f"tls://127.0.0.1:{silent_server.port}", timeout=0.5)
    assert info.value.errno == 110
    assert "TLS handshake timed out" in str(info.value)
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("script", [close_after_client_hello, garbage_script()], ids=["closes", "garbage"])
def test_broken_peers_give_tls_errors(backend, script):
    with RawServer(script) as peer:
        with pytest.raises(ss.TLSError):
            backend.client(f"tls://127.0.0.1:{peer.port}", timeout=5,
                           context=ss.Context(ssl={"verify_peer": False}))


def test_one_context_is_compiled_once_and_shared(backend, pki, tls_server):
    ctx = ctx_for(pki)
    for _ in range(3):
        with backend.client(f"tls://localhost:{tls_server.port}", timeout=5, context=ctx):
            pass
    compiled = backend.tls_context(ctx, False, ss.Transport.TLS)
    assert backend.tls_context(ctx, False, ss.Transport.TLS) is compiled
    assert backend.tls_context(ctx_for(pki), False, ss.Transport.TLS) is compiled  # equal options share it
    ctx.set_option("ssl", "verify_depth", 5)
    assert backend.tls_context(ctx, False, ss.Transport.TLS) is not compiled  # changed options: built anew


def _half_close_peer(pki):
    """Sends b"before" after the handshake, reads until the client's end of stream
    (a bare FIN raises: only close_notify is a clean end), answers with what it read."""
    def script(conn):
        tls = pki.server_context().wrap_socket(conn, server_side=True, suppress_ragged_eofs=False)
        tls.sendall(b"before")
        data = b""
        while chunk := tls.recv(4096):
            data += chunk
        tls.sendall(b"got:" + data)
        tls.unwrap()
        return data
    return RawServer(script)


def test_shutdown_write_side_of_a_tls_stream_sends_close_notify_and_reads_on(backend, pki):
    with _half_close_peer(pki) as peer:
        with backend.client(f"tls://localhost:{peer.port}", timeout=5, context=ctx_for(pki)) as s:
            s.write(b"question")
            assert ss.select([s], [], [], 5)[0] == [s]  # b"before" waits unread when the write side ends
            s.shutdown(ss.SHUT_WR)
            assert s.read(-1) == b"beforegot:question"
            with pytest.raises(ss.StreamSocketError) as info:
                s.write(b"more")
            assert (info.value.errno, str(info.value)) == (32, "write failed: Broken pipe")
        peer.wait_for_connections(1)
        record = peer.connections[0]
        assert record.finished.wait(5)
    assert (record.error, record.result) == (None, b"question")
