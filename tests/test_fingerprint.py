"""ServerHello capture, JA3S, JA4S and JA4X.

The ServerHello a probe keeps is held to the bytes that crossed the wire (a
relay between the probe and the server records them), on both backends; the
fingerprints to FoxIO's and Salesforce's published definitions and examples.
"""

from __future__ import annotations

import datetime
import hashlib
import socket
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

import streamsock as ss
from peers import PyTLSServer
from streamsock.fingerprint import ServerHello, parse_server_hello, server_hello_from_records
from streamsock.ja4plus import ja4s, ja4x


class Relay:
    """Forwards one client to ``port`` on loopback, keeping what the server sent."""

    def __init__(self, port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.from_server = bytearray()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(port,), daemon=True)
        self.thread.start()

    def _run(self, port: int) -> None:
        self.listener.settimeout(10)
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", port), timeout=10)
        pump = threading.Thread(target=self._pump, args=(client, server, None), daemon=True)
        pump.start()
        self._pump(server, client, self.from_server)
        pump.join(10)
        for sock in (client, server, self.listener):
            sock.close()
        self.done.set()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, keep: bytearray | None) -> None:
        source.settimeout(10)
        try:
            while data := source.recv(65536):
                if keep is not None:
                    keep += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def ja3s_by_definition(body: bytes) -> str:
    """JA3S as Salesforce's README defines it, read with a parser of its own."""
    version, at = int.from_bytes(body[:2], "big"), 34
    at += 1 + body[at]
    cipher = int.from_bytes(body[at : at + 2], "big")
    at += 3
    end, at, kinds = at + 2 + int.from_bytes(body[at : at + 2], "big"), at + 2, []
    while at < end:
        kinds.append(str(int.from_bytes(body[at : at + 2], "big")))
        at += 4 + int.from_bytes(body[at + 2 : at + 4], "big")
    return hashlib.md5(f"{version},{cipher},{'-'.join(kinds)}".encode()).hexdigest()


@pytest.mark.parametrize("tls_version", ["1.2", "1.3"])
def test_the_server_hello_kept_is_the_one_on_the_wire(backend, pki, tls_version):
    with PyTLSServer(pki.server_certfile, pki.server_keyfile, alpn=["h2"], min_version=tls_version,
                     max_version=tls_version) as peer:
        relay = Relay(peer.port)
        context = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost", "alpn_protocols": "h2"})
        [record] = backend.probe([f"tls://127.0.0.1:{relay.port}"], timeout=10, context=context)
        assert relay.done.wait(15)
    assert record.ok, record.message
    wire = server_hello_from_records(relay.from_server)
    assert wire and record.server_hello == wire
    assert record.ja3s == ja3s_by_definition(wire)
    hello = parse_server_hello(wire)
    version = "13" if tls_version == "1.3" else "12"
    alpn = "00" if tls_version == "1.3" else "h2"  # TLS 1.3 sends ALPN in EncryptedExtensions
    assert record.ja4s == f"t{version}{len(hello.extensions):02d}{alpn}_{hello.cipher:04x}_" + hashlib.sha256(
        ",".join(f"{kind:04x}" for kind, _ in hello.extensions).encode()).hexdigest()[:12]
    assert record.to_dict()["ja3s"] == record.ja3s and "ja4s" not in record.to_dict()
    assert record.to_dict(ja4plus=True)["ja4s"] == record.ja4s


def test_a_failed_handshake_keeps_its_server_hello(backend, pki):
    with PyTLSServer(pki.expired.certfile, pki.expired.keyfile) as peer:
        [record] = backend.probe([f"tls://127.0.0.1:{peer.port}"], timeout=10,
                                 context=ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"}))
    assert not record.ok and record.error_class == "CertificateVerifyError"
    assert record.ja3s is not None and record.ja4x is not None


def test_plain_tcp_has_no_fingerprints(backend, tls_server):
    [record] = backend.probe([f"tcp://127.0.0.1:{tls_server.port}"], timeout=5)
    assert record.ok and (record.server_hello, record.ja3s, record.ja4s, record.ja4x) == (b"", None, None, None)


def test_ja4s_of_the_published_example():
    # technical_details/JA4S.md: TLS 1.2, extensions 0005,0017,ff01,0000, no ALPN, cipher c030
    hello = ServerHello(0x0303, 0xC030, ((0x0005, b""), (0x0017, b""), (0xFF01, b"\0"), (0x0000, b"")))
    assert ja4s(hello) == "t120400_c030_4e8089b08790"


def test_ja4s_alpn_characters():
    def alpn(name: bytes) -> ServerHello:
        data = len(name).to_bytes(1, "big") + name
        return ServerHello(0x0303, 0x1301, ((0x0010, len(data).to_bytes(2, "big") + data),))

    assert ja4s(alpn(b"http/1.1"))[5:7] == "h1" and ja4s(alpn(b"h2"))[5:7] == "h2"
    assert ja4s(alpn(b"\xab\xcd"))[5:7] == "ad" and ja4s(alpn(b"0\xab"))[5:7] == "3b"


def test_ja4x_of_the_published_example():
    # technical_details/JA4X.md: issuer and subject 550403,550406,550408,55040a; extensions 551d0f,551d25,551d11
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x"), x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                      x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "s"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "o")])
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("x")]), False)
            .sign(key, hashes.SHA256()))
    assert ja4x(cert.public_bytes(Encoding.DER)) == "96a6439c8f5c_96a6439c8f5c_aae71e8db6d7"


def test_server_hello_from_records_waits_for_a_whole_message_and_gives_up_on_others():
    body = bytes(range(40))
    message = b"\x02" + len(body).to_bytes(3, "big") + body
    records = b"".join(b"\x16\x03\x03" + len(part).to_bytes(2, "big") + part for part in (message[:10], message[10:]))
    assert server_hello_from_records(records) == body
    assert server_hello_from_records(records[:-1]) is None  # more is needed
    assert server_hello_from_records(b"\x15\x03\x03\x00\x02\x02\x28") == b""  # an alert came first
    certificate = b"\x0b\x00\x00\x01\x00"
    assert server_hello_from_records(b"\x16\x03\x03\x00\x05" + certificate) == b""
    assert parse_server_hello(body[:20]) is None
