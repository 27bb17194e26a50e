"""Self-signed certificates for local servers (serve --self-signed, the demo)."""

from __future__ import annotations

import datetime
import threading

import streamsock as ss
from streamsock.certificate import Certificate


def test_self_signed_certificate_fields(backend):
    cert_pem, key_pem = backend.self_signed("demo.local", days=3)
    cert = Certificate.from_pem(cert_pem)
    assert cert.is_self_signed and not cert.is_ca
    assert cert.subject["CN"] == "demo.local"
    assert set(cert.san) == {("DNS", "demo.local"), ("IP Address", "127.0.0.1"), ("IP Address", "::1")}
    now = datetime.datetime.now(datetime.timezone.utc)
    assert cert.valid_at(now) and not cert.valid_at(now + datetime.timedelta(days=4))
    assert "PRIVATE KEY" in key_pem
    assert backend.self_signed("demo.local")[0] != cert_pem  # fresh key and serial every time


def test_self_signed_certificate_serves_tls(backend, tmp_path):
    cert_pem, key_pem = backend.self_signed("localhost")
    (tmp_path / "cert.pem").write_text(cert_pem)
    (tmp_path / "key.pem").write_text(key_pem)
    server_ctx = ss.Context(ssl={"local_cert": str(tmp_path / "cert.pem"), "local_pk": str(tmp_path / "key.pem")})
    with backend.server("tls://127.0.0.1:0", context=server_ctx) as srv:
        port = int(srv.local_name.rsplit(":", 1)[1])

        def serve():
            conn, _ = srv.accept(timeout=5)
            with conn:
                conn.write(conn.readline())

        t = threading.Thread(target=serve)
        t.start()
        fingerprint = Certificate.from_pem(cert_pem).fingerprint("sha256")
        ctx = ss.Context(ssl={"verify_peer": False, "peer_fingerprint": fingerprint})
        with backend.client(f"tls://localhost:{port}", timeout=5, context=ctx) as s:
            s.write(b"pinned\n")
            assert s.readline() == b"pinned\n"
        t.join(10)
