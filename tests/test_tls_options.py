"""ssl context options no_ticket, ecdh_curve, dh_param, single_dh_use,
reneg_limit and reneg_window, against real peers, on both backends."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading

import pytest
import trustme

import streamsock as ss
from peers import OpenSSLServer, run_s_client


def _serve(srv, accepted: list) -> threading.Thread:
    """Accepts one client on a thread, says hello and closes."""

    def run():
        try:
            conn, _ = srv.accept(timeout=10)
        except ss.StreamSocketError as exc:
            accepted.append(exc)
            return
        with conn:
            accepted.append(conn.tls_info)
            conn.write(b"hello\n")

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _python_client(port: int, cafile: str, *, ciphers: str | None = None) -> tuple[ssl.SSLSession, str]:
    """A stdlib TLS 1.2 client: (its session once it has read, the cipher)."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers:
        ctx.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.recv(100) == b"hello\n"
        return tls.session, tls.cipher()[0]


@pytest.mark.parametrize("no_ticket", [False, True])
def test_no_ticket_server_issues_no_session_ticket(backend, pki, no_ticket):
    ctx = ss.Context(ssl={"local_cert": pki.server_certfile, "local_pk": pki.server_keyfile, "no_ticket": no_ticket})
    with backend.server("tls://127.0.0.1:0", context=ctx) as srv:
        accepted: list = []
        thread = _serve(srv, accepted)
        session, _ = _python_client(int(srv.local_name.rsplit(":", 1)[1]), pki.cafile)
        thread.join(10)
    assert session.has_ticket is (not no_ticket)
    assert session.id  # TLS 1.2 resumes by session id instead


@pytest.mark.parametrize("no_ticket", [False, True])
def test_no_ticket_client_offers_no_ticket_extension(backend, pki, no_ticket):
    """s_server -tlsextdebug shows the ClientHello: SessionTicket (id=35) only without no_ticket."""
    ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost", "no_ticket": no_ticket,
                          "max_proto_version": ss.CRYPTO_PROTO_TLSv1_2})
    with OpenSSLServer(pki.server_certfile, pki.server_keyfile, extra_args=["-tlsextdebug"]) as server:
        with backend.client(f"tls://127.0.0.1:{server.port}", timeout=5, context=ctx) as s:
            s.write(b"GET / HTTP/1.0\r\n\r\n")
            assert s.readline().startswith(b"HTTP/1.0 200")
            assert s.read(-1)  # to its end: s_server is done with the connection
    output = server.stdout + server.stderr  # everything, once s_server has exited
    assert b"signature algorithms" in output, output  # the ClientHello was logged
    assert (b'"session ticket" (id=35)' in output) is (not no_ticket), output


def test_ecdh_curve_picks_the_server_group(backend, pki):
    ctx = ss.Context(ssl={"local_cert": pki.server_certfile, "local_pk": pki.server_keyfile, "ecdh_curve": "P-384"})
    with backend.server("tls://127.0.0.1:0", context=ctx) as srv:
        accepted: list = []
        thread = _serve(srv, accepted)
        result = run_s_client("127.0.0.1", int(srv.local_name.rsplit(":", 1)[1]), "-ign_eof", cafile=pki.cafile,
                              servername="localhost")
        thread.join(10)
    assert b"Server Temp Key: ECDH, secp384r1" in result.stdout or b"P-384" in result.stdout, result.stdout


@pytest.mark.parametrize("client_group, server_group, ok", [
    ("P-384", "P-384", True),
    ("X25519", "X25519", True),
    ("P-384", "X25519", False),  # no group in common: the handshake fails
])
def test_ecdh_curve_on_both_sides(backend, pki, client_group, server_group, ok):
    server_ctx = ss.Context(ssl={"local_cert": pki.server_certfile, "local_pk": pki.server_keyfile,
                                 "ecdh_curve": server_group})
    client_ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost", "ecdh_curve": client_group})
    with backend.server("tls://127.0.0.1:0", context=server_ctx) as srv:
        accepted: list = []
        thread = _serve(srv, accepted)
        try:
            if ok:
                with backend.client(f"tls://{srv.local_name}", timeout=5, context=client_ctx) as s:
                    assert s.readline() == b"hello\n"
            else:
                with pytest.raises(ss.TLSError):
                    backend.client(f"tls://{srv.local_name}", timeout=5, context=client_ctx)
        finally:
            thread.join(10)
    if ok and "key_exchange_group" in backend.features:
        assert accepted[0]["group"] == {"P-384": "secp384r1", "X25519": "x25519"}[server_group]


def test_ecdh_curve_lists_and_bad_names(backend, pki):
    base = {"cafile": pki.cafile, "peer_name": "localhost"}
    with pytest.raises(ss.TLSError, match="Invalid ecdh_curve `no-such-group'") as info:
        backend.client("tls://127.0.0.1:1", timeout=5, context=ss.Context(ssl={**base, "ecdh_curve": "no-such-group"}))
    assert info.value.code == "SS_ERR_TLS_CONFIG"
    listed = ss.Context(ssl={**base, "ecdh_curve": "X25519:P-256"})
    if "group_list" in backend.features:
        with pytest.raises(ss.ConnectError):  # the context builds; nothing listens there
            backend.client(f"tls://127.0.0.1:{_closed_port()}", timeout=5, context=listed)
    else:
        with pytest.raises(ss.TLSError, match="the pure backend takes one group, not a list"):
            backend.client("tls://127.0.0.1:1", timeout=5, context=listed)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rsa_server(tmp_path_factory):
    """An RSA certificate (the DHE suites authenticate with RSA), its CA, and DH parameters."""
    directory = tmp_path_factory.mktemp("dhe")
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    pem = directory / "server.pem"
    ca.issue_cert("localhost", key_type=trustme.KeyType.RSA).private_key_and_cert_chain_pem.write_to_path(str(pem))
    cafile = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    dh = directory / "dh.pem"
    subprocess.run(["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "dh_param:ffdhe2048",
                    "-out", str(dh)], check=True, capture_output=True, timeout=60)
    return str(pem), str(cafile), str(dh)


def test_dh_param_enables_the_dhe_suites(backend, rsa_server):
    pem, cafile, dh = rsa_server
    for dh_param, works in ((dh, True), (None, False)):
        options = {"local_cert": pem, **({"dh_param": dh_param} if dh_param else {})}
        with backend.server("tls://127.0.0.1:0", context=ss.Context(ssl=options)) as srv:
            accepted: list = []
            thread = _serve(srv, accepted)
            port = int(srv.local_name.rsplit(":", 1)[1])
            try:
                if works:
                    _, cipher = _python_client(port, cafile, ciphers="DHE-RSA-AES256-GCM-SHA384")
                    assert cipher == "DHE-RSA-AES256-GCM-SHA384"
                else:  # no DH group: no DHE suite to agree on
                    with pytest.raises(ssl.SSLError):
                        _python_client(port, cafile, ciphers="DHE-RSA-AES256-GCM-SHA384")
            finally:
                thread.join(10)


def test_dh_param_that_is_not_dh_parameters(backend, pki):
    ctx = ss.Context(ssl={"local_cert": pki.server_certfile, "local_pk": pki.server_keyfile,
                          "dh_param": pki.server_certfile})
    with pytest.raises(ss.TLSError, match="DH params") as info:
        backend.server("tls://127.0.0.1:0", context=ctx)
    assert info.value.code == "SS_ERR_TLS_CONFIG"


def test_accepted_options_without_effect_and_their_checks(backend, pki):
    ctx = ss.Context(ssl={"local_cert": pki.server_certfile, "local_pk": pki.server_keyfile,
                          "single_dh_use": True, "reneg_limit": 2, "reneg_window": 300})
    with backend.server("tls://127.0.0.1:0", context=ctx) as srv:
        accepted: list = []
        thread = _serve(srv, accepted)
        session, _ = _python_client(int(srv.local_name.rsplit(":", 1)[1]), pki.cafile)
        thread.join(10)
    for bad in ({"reneg_limit": -2}, {"reneg_window": -1}, {"single_dh_use": 1}, {"no_ticket": "yes"},
                {"ecdh_curve": ""}, {"dh_param": 5}):
        with pytest.raises(TypeError):
            ss.Context(ssl=bad)
    with pytest.raises(ValueError, match="unknown ssl context option 'no_tickets'; did you mean 'no_ticket'"):
        ss.Context(ssl={"no_tickets": True})


def test_client_initiated_renegotiation_is_refused(backend, pki):
    """TLS 1.2 renegotiation (s_client's "R" command) fails whatever reneg_limit says."""
    ctx = ss.Context(ssl={"local_cert": pki.server_certfile, "local_pk": pki.server_keyfile, "reneg_limit": -1})
    with backend.server("tls://127.0.0.1:0", context=ctx) as srv:
        done = threading.Event()

        def serve():
            with srv.accept(timeout=10)[0] as conn:
                conn.set_timeout(10)
                try:
                    while conn.readline():
                        pass
                except ss.StreamSocketError:
                    pass
                done.set()

        thread = threading.Thread(target=serve)
        thread.start()
        result = run_s_client("127.0.0.1", int(srv.local_name.rsplit(":", 1)[1]), "-tls1_2", cafile=pki.cafile,
                              servername="localhost", input_bytes=b"R\n", timeout=10)
        thread.join(15)
    assert done.is_set()
    output = result.stdout + result.stderr
    assert b"RENEGOTIATING" in output and b"no renegotiation" in output, output
    assert result.returncode == 1


def test_no_ticket_on_tls13_still_resumes_from_the_server_cache(backend, pki):
    ctx = ss.Context(ssl={"local_cert": pki.server_certfile, "local_pk": pki.server_keyfile, "no_ticket": True})
    client = ssl.create_default_context(cafile=pki.cafile)
    with backend.server("tls://127.0.0.1:0", context=ctx) as srv:
        port = int(srv.local_name.rsplit(":", 1)[1])
        session = None
        for round_ in range(2):
            accepted: list = []
            thread = _serve(srv, accepted)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    client.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
                assert tls.recv(100) == b"hello\n"
                assert tls.version() == "TLSv1.3"
                assert tls.session_reused is (round_ == 1)
                session = tls.session
            thread.join(10)


@pytest.mark.parametrize("honor", [False, True])
def test_honor_cipher_order_decides_whose_preference_wins(backend, rsa_server, honor):
    """The client's order wins unless honor_cipher_order (as in PHP and OpenSSL;
    Python's ssl would prefer the server's by default)."""
    pem, cafile, _ = rsa_server
    server_order = "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256"
    client_order = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"
    options = {"local_cert": pem, "ciphers": server_order, "honor_cipher_order": honor}
    with backend.server("tls://127.0.0.1:0", context=ss.Context(ssl=options)) as srv:
        accepted: list = []
        thread = _serve(srv, accepted)
        try:
            _, cipher = _python_client(int(srv.local_name.rsplit(":", 1)[1]), cafile, ciphers=client_order)
        finally:
            thread.join(10)
    expected = server_order.split(":")[0] if honor else client_order.split(":")[0]
    assert cipher == expected
    assert accepted[0]["cipher_name"] == expected


def test_default_suites_leave_out_rsa_key_exchange_until_asked(backend, rsa_server):
    """A server that offers only AES128-SHA (RSA key exchange, SHA-1): refused by
    the default list (forward secrecy, no SHA-1) on both backends; reached with
    ``ciphers="DEFAULT"`` (the README's Differences from PHP)."""
    pem, _, _ = rsa_server
    base = {"verify_peer": False, "verify_peer_name": False}
    with OpenSSLServer(pem, mode="www", tls_version="1.2", extra_args=("-cipher", "AES128-SHA")) as server:
        address = f"tls://127.0.0.1:{server.port}"
        with pytest.raises(ss.TLSError, match="handshake failure"):
            backend.client(address, context=ss.Context(ssl=base), timeout=10)
        with backend.client(address, context=ss.Context(ssl={**base, "ciphers": "DEFAULT"}), timeout=10) as s:
            assert s.crypto is not None and s.crypto["cipher_name"] == "AES128-SHA"
