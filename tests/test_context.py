"""Context: PHP option names, validation at construction, constants."""

from __future__ import annotations

import os
import socket
import threading

import pytest

import streamsock as ss
from streamsock.context import version_range


def test_unknown_option_names_suggest_the_right_one():
    with pytest.raises(ValueError, match="unknown ssl context option 'verify_peers'; did you mean 'verify_peer'"):
        ss.Context(ssl={"verify_peers": False})
    with pytest.raises(ValueError, match="unknown socket context option 'nodelay'"):
        ss.Context(socket={"nodelay": True})


@pytest.mark.parametrize(
    "options",
    [
        {"verify_peer": "no"},
        {"verify_depth": -1},
        {"security_level": 9},
        {"crypto_method": 1},
        {"peer_fingerprint": 123},
        {"alpn_protocols": 5},
        {"SNI_server_certs": ["a"]},
    ],
)
def test_mistyped_options_raise(options):
    with pytest.raises((TypeError, ValueError)):
        ss.Context(ssl=options)


def test_bad_values_fail_at_construction():
    with pytest.raises(ValueError, match="ALPN"):
        ss.Context(ssl={"alpn_protocols": "h2,,http/1.1"})
    with pytest.raises(ValueError):
        ss.Context(ssl={"peer_fingerprint": "abc"})
    with pytest.raises(TypeError):
        ss.Context(ssl=["verify_peer"])


def test_passphrase_is_never_shown():
    ctx = ss.Context(ssl={"passphrase": "hunter2", "cafile": "/etc/ssl/certs/ca.pem"})
    assert "hunter2" not in repr(ctx)
    assert "hunter2" not in repr(ctx.tls_settings(server=False))


def test_php_constant_values():
    assert (ss.CRYPTO_METHOD_TLS_CLIENT, ss.CRYPTO_METHOD_TLS_SERVER) == (121, 120)
    assert (ss.CRYPTO_METHOD_TLSv1_2_CLIENT, ss.CRYPTO_METHOD_TLSv1_3_SERVER) == (33, 64)
    assert (ss.CRYPTO_METHOD_ANY_CLIENT, ss.CRYPTO_METHOD_SSLv23_CLIENT) == (127, 57)
    assert (ss.CLIENT_CONNECT, ss.CLIENT_ASYNC_CONNECT, ss.SERVER_BIND, ss.SERVER_LISTEN) == (4, 2, 4, 8)


def test_method_masks_are_ranges():
    assert version_range(ss.CRYPTO_METHOD_TLS_CLIENT) == (0x0301, 0x0304)
    assert version_range(ss.CRYPTO_METHOD_TLSv1_2_CLIENT) == (0x0303, 0x0303)
    assert version_range(ss.CRYPTO_METHOD_TLSv1_1_CLIENT | ss.CRYPTO_METHOD_TLSv1_3_CLIENT) == (0x0302, 0x0304)


def test_defaults_are_secure():
    client = ss.Context().tls_settings(server=False)
    assert client.verify_peer and client.min_version == 0x0303 and client.max_version == 0
    assert ss.Context().verify_peer_name and ss.Context().sni_enabled
    server = ss.Context().tls_settings(server=True)
    assert not server.verify_peer  # servers ask for client certificates only when told to


def test_transport_pins_the_version():
    settings = ss.Context(ssl={"crypto_method": ss.CRYPTO_METHOD_TLS_CLIENT}).tls_settings(
        False, ss.Transport.TLSV1_2
    )
    assert (settings.min_version, settings.max_version) == (0x0303, 0x0303)


def test_sslv3_only_method_is_refused(backend, tls_server):
    ctx = ss.Context(ssl={"crypto_method": ss.CRYPTO_METHOD_SSLv3_CLIENT})
    with pytest.raises(ss.UnsupportedTransportError, match="SSLv3 is not supported by the linked OpenSSL"):
        backend.client(f"ssl://127.0.0.1:{tls_server.port}", timeout=1, context=ctx)


def _sockopt(stream, level, name) -> int:
    with socket.socket(fileno=os.dup(stream.fileno())) as view:
        return view.getsockopt(level, name)


def test_socket_options_reach_the_socket(backend, udp_echo, tls_server):
    ctx = ss.Context(socket={"so_broadcast": True, "so_reuseport": True})
    with backend.client(f"udp://{udp_echo.address}", timeout=5, context=ctx) as s:
        assert _sockopt(s, socket.SOL_SOCKET, socket.SO_BROADCAST) == 1
        assert _sockopt(s, socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    with backend.client(f"tcp://127.0.0.1:{tls_server.port}", timeout=5,
                        context=ss.Context(socket={"tcp_nodelay": False})) as s:
        assert _sockopt(s, socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    with backend.client(f"tcp://127.0.0.1:{tls_server.port}", timeout=5) as s:
        assert _sockopt(s, socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1  # on by default, as in asyncio


def test_server_socket_options(backend):
    from peers import has_ipv6

    if not has_ipv6():
        pytest.skip("no IPv6 loopback")
    ctx = ss.Context(socket={"ipv6_v6only": True, "backlog": 3})
    with backend.server("tcp://[::]:0", context=ctx) as srv:
        with socket.socket(fileno=os.dup(srv.fileno())) as view:
            assert view.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        port = int(srv.local_name.rsplit(":", 1)[1])
        with pytest.raises(ss.ConnectError):  # v6-only: no IPv4 on the same port
            backend.client(f"tcp://127.0.0.1:{port}", timeout=2)


def test_tls10_is_pinned_and_works_only_at_security_level_0(backend, pki):
    """tlsv1.0:// needs security_level 0 on OpenSSL 3, and nothing more: below
    TLS 1.2 the default suites are OpenSSL's (TLS 1.0 has none without SHA-1)."""
    server_ctx = ss.Context(ssl={"local_cert": pki.server_certfile, "local_pk": pki.server_keyfile,
                                 "security_level": 0})
    with backend.server("tlsv1.0://127.0.0.1:0", context=server_ctx) as srv:
        port = int(srv.local_name.rsplit(":", 1)[1])
        seen = []

        def serve():
            try:
                conn, _ = srv.accept(timeout=5)
                with conn:
                    seen.append(conn.crypto["protocol"])
                    conn.write(conn.readline())
            except ss.StreamSocketError as exc:
                seen.append(exc)

        t = threading.Thread(target=serve)
        t.start()
        ctx = ss.Context(ssl={"cafile": pki.cafile, "security_level": 0})
        with backend.client(f"tlsv1.0://localhost:{port}", timeout=5, context=ctx) as s:
            assert s.crypto["protocol"] == "TLSv1"
            s.write(b"old\n")
            assert s.readline() == b"old\n"
        t.join(10)
        assert seen == ["TLSv1"]
        # At OpenSSL's default security level the same client cannot speak TLS 1.0 at all.
        t = threading.Thread(target=serve)
        t.start()
        with pytest.raises(ss.TLSError):
            backend.client(f"tlsv1.0://localhost:{port}", timeout=5, context=ss.Context(ssl={"cafile": pki.cafile}))
        t.join(10)
