"""Certificates and trust in probe records and verification errors, on both backends.

Every TLS record carries the certificate the peer sent and how far it would be
trusted, whether or not verification was enforced. The servers are
`openssl s_server` and Python's ssl, presenting certificates made for the
tests: trusted, wrong name, expired, self-signed, unknown CA, a long chain. The expected verify results
and their words come from `openssl verify` run on the same certificates, and
the certificate fields from the DER reader (streamsock.certificate), which
tests/test_certificate.py holds to `openssl x509`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys

import pytest

import streamsock as ss
from peers import OpenSSLServer, PyTLSServer
from streamsock.certificate import Certificate

NAME = "localhost"
CHAIN_DEPTH = 3  # intermediates between the root and the leaf


class Served:
    """A certificate file a test server presents: leaf first, then its intermediates."""

    def __init__(self, certfile: str, keyfile: str) -> None:
        self.certfile, self.keyfile = certfile, keyfile
        with open(certfile) as f:
            self.chain = Certificate.load_pem_chain(f.read())
        self.leaf = self.chain[0]


@pytest.fixture(scope="module")
def long_chain(pki, tmp_path_factory) -> Served:
    """A leaf under CHAIN_DEPTH intermediates of the trusted test CA."""
    issuer = pki.ca
    for _ in range(CHAIN_DEPTH):
        issuer = issuer.create_child_ca()
    leaf = issuer.issue_cert(NAME, "127.0.0.1", common_name=NAME)
    directory = tmp_path_factory.mktemp("long-chain")
    certfile, keyfile = str(directory / "chain.pem"), str(directory / "chain.key")
    with open(certfile, "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    leaf.private_key_pem.write_to_path(keyfile)
    return Served(certfile, keyfile)


def served(pki, which: str, long_chain: Served) -> Served:
    if which == "long-chain":
        return long_chain
    cert = {"trusted": pki.server_cert, "wrong-name": pki.wrong_host, "expired": pki.expired,
            "self-signed": pki.self_signed, "unknown-ca": pki.untrusted}[which]
    return Served(cert.certfile, cert.keyfile)


def openssl_verify(cafile: str, cert: Served, hostname: str | None = None) -> tuple[int, str]:
    """(code, reason) of the first error `openssl verify` finds, or (0, "ok")."""
    directory = os.path.dirname(cert.certfile)
    leaf, intermediates = os.path.join(directory, "verify-leaf.pem"), os.path.join(directory, "verify-chain.pem")
    with open(leaf, "w") as f:
        f.write(cert.leaf.pem)
    with open(intermediates, "w") as f:
        f.write("".join(c.pem for c in cert.chain[1:]) or cert.leaf.pem)
    args = ["openssl", "verify", "-purpose", "sslserver", "-CAfile", cafile, "-untrusted", intermediates]
    if hostname is not None:
        args += ["-verify_hostname", hostname]
    out = subprocess.run([*args, leaf], capture_output=True, text=True, timeout=20)
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith("error ") and " depth lookup: " in line:
            code = int(line.split()[1])
            return code, line.split(" depth lookup: ", 1)[1].strip()
    assert out.returncode == 0, out.stdout + out.stderr
    return 0, "ok"


def openssl_name_matches(cert: Served, hostname: str) -> bool:
    """Whether the leaf names hostname: verified with itself as the only anchor, only the name can fail."""
    leaf = os.path.join(os.path.dirname(cert.certfile), "name-leaf.pem")
    with open(leaf, "w") as f:
        f.write(cert.leaf.pem)
    out = subprocess.run(["openssl", "verify", "-partial_chain", "-CAfile", leaf, "-verify_hostname", hostname, leaf],
                         capture_output=True, text=True, timeout=20)
    return not any(f"error {code} at 0 depth" in out.stdout + out.stderr for code in (62, 64))  # name, IP mismatch


KINDS = ["trusted", "wrong-name", "expired", "self-signed", "unknown-ca", "long-chain"]


def probe_one(backend, cert: Served, ssl_options: dict, *, openssl: bool = False, **options):
    """One probe against Python's ssl as the server, or `openssl s_server` (sending the chain too)."""
    peer = (OpenSSLServer(cert.certfile, cert.keyfile, extra_args=["-cert_chain", cert.certfile]) if openssl else
            PyTLSServer(cert.certfile, cert.keyfile))
    with peer:
        [record] = backend.probe([f"tls://127.0.0.1:{peer.port}"], timeout=10, context=ss.Context(ssl=ssl_options),
                                 **options)
    return record


@pytest.mark.parametrize("which", KINDS)
def test_a_record_says_why_a_certificate_would_not_be_trusted_when_not_enforced(backend, pki, long_chain, which):
    cert = served(pki, which, long_chain)
    record = probe_one(backend, cert, {"verify_peer": False, "verify_peer_name": False, "cafile": pki.cafile,
                                       "peer_name": NAME}, openssl=True)
    assert record.ok, record.message
    assert record.certificate == cert.leaf and record.cert_sha256 == hashlib.sha256(cert.leaf.der).hexdigest()
    assert (record.verify_result, record.verify_reason) == openssl_verify(pki.cafile, cert)
    assert record.name_matched is openssl_name_matches(cert, NAME)
    assert record.trusted is (record.verify_result == 0 and record.name_matched)
    assert record.trusted is (which in ("trusted", "long-chain"))


@pytest.mark.parametrize("which", KINDS)
def test_a_failed_verification_keeps_the_certificate_and_the_reason(backend, pki, long_chain, which):
    cert = served(pki, which, long_chain)
    record = probe_one(backend, cert, {"cafile": pki.cafile, "peer_name": NAME})
    expected = openssl_verify(pki.cafile, cert, hostname=NAME)
    assert record.ok is (expected[0] == 0), record.message
    if not record.ok:
        assert record.error_class == "CertificateVerifyError"
    assert record.certificate == cert.leaf
    assert (record.verify_result, record.verify_reason) == expected
    assert record.trusted is record.ok


def test_chain_records_describe_every_certificate(backend, pki, long_chain):
    record = probe_one(backend, long_chain, {"cafile": pki.cafile, "peer_name": NAME}, capture_chain=True)
    assert record.ok and record.verify_result == 0 and record.name_matched is True, record.message
    assert len(record.chain) == CHAIN_DEPTH + 1
    for got, sent in zip(record.chain, long_chain.chain):
        assert got == sent and got.summary == sent.summary  # the backend's reading against the DER reader
    leaf = record.to_dict()["cert"]
    assert leaf["subject"] == long_chain.leaf.subject_text and leaf["common_name"] == NAME
    assert leaf["san"] == ["DNS:localhost", "IP Address:127.0.0.1"]
    assert leaf["issuer"] == long_chain.chain[1].subject_text and not leaf["self_signed"] and not leaf["expired"]
    assert leaf["sha1"] == hashlib.sha1(long_chain.leaf.der).hexdigest()
    assert leaf["key_type"] == "id-ecPublicKey" and leaf["key_bits"] == 256


def test_an_expired_certificate_is_reported_expired(backend, pki, long_chain):
    record = probe_one(backend, served(pki, "expired", long_chain), {"verify_peer": False, "cafile": pki.cafile,
                                                                     "peer_name": NAME})
    fields = record.to_dict()["cert"]
    assert fields["expired"] and fields["not_after"] == served(pki, "expired", long_chain).leaf.not_after.isoformat(
    ).replace("+00:00", "Z")


def test_a_record_without_tls_has_no_trust(backend, tls_server):
    [record] = backend.probe([f"tcp://127.0.0.1:{tls_server.port}"], timeout=5)
    assert record.ok and record.certificate is None and record.chain == ()
    assert (record.verify_result, record.verify_reason, record.name_matched, record.trusted) == (None,) * 4


@pytest.mark.parametrize("which", ["expired", "unknown-ca", "wrong-name"])
def test_certificate_verify_error_carries_the_peer_certificate(backend, pki, long_chain, which):
    cert = served(pki, which, long_chain)
    with PyTLSServer(cert.certfile, cert.keyfile) as peer:
        with pytest.raises(ss.CertificateVerifyError) as caught:
            backend.client(f"tls://127.0.0.1:{peer.port}", timeout=10,
                           context=ss.Context(ssl={"cafile": pki.cafile, "peer_name": NAME}))
    assert caught.value.peer_certificate == cert.leaf
    assert caught.value.peer_certificate.summary == cert.leaf.summary


def test_probe_cli_writes_the_certificate_and_its_trust(backend, pki):
    cert = Served(pki.self_signed.certfile, pki.self_signed.keyfile)
    with PyTLSServer(cert.certfile, cert.keyfile) as peer:
        target = f"tls://127.0.0.1:{peer.port}"
        command = [sys.executable, "-m", "streamsock", "probe", "--backend", backend.name, "--insecure"]
        as_json = subprocess.run([*command, "--json", target], capture_output=True, timeout=20)
        as_csv = subprocess.run([*command, "--format", "csv", target], capture_output=True, text=True, timeout=20)
    assert as_json.returncode == 0, as_json.stderr.decode()
    record = json.loads(as_json.stdout)
    code, reason = openssl_verify(pki.cafile, cert)
    assert (record["trusted"], record["verify_result"], record["verify_reason"]) == (False, code, reason)
    assert record["cert"]["self_signed"] and record["cert"]["sha256"] == hashlib.sha256(cert.leaf.der).hexdigest()
    assert record["cert"]["spki_sha256"] == cert.leaf.spki_sha256
    [columns] = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert columns["trusted"] == "False" and columns["cert_self_signed"] == "True"
    assert columns["cert_subject"] == cert.leaf.subject_text and columns["verify_reason"] == reason


def test_spki_pin_is_the_hash_of_the_subject_public_key_info(pki):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = pki.server_cert.der
    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert Certificate(der).spki_sha256 == hashlib.sha256(spki).hexdigest()

