"""How far a peer would be trusted when its handshake did not say: OpenSSL's
own verification of the chain it sent, reached through Python's ssl.

Python's ssl gives no verify result for a handshake that did not enforce one,
so the chain is verified again, in memory: a client SSLObject (TLS 1.2, the
context's CA store, verification on) is fed a server's first flight made of
a ServerHello and the peer's Certificate message. OpenSSL verifies the chain
as soon as that message arrives, before anything that needs the server's key,
so the client either fails with the verify result (SSLCertVerificationError)
or goes on (verified). The name is checked the same way with the leaf as the
only trust anchor, so that only the name can fail. No signature is made and
nothing touches the network.
"""

from __future__ import annotations

import os
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..context import TLSSettings

_HANDSHAKE = 22
_SERVER_HELLO = 2
_CERTIFICATE = 11
_TLS12 = b"\x03\x03"
_ECDHE_RSA_AES128_GCM_SHA256 = b"\xc0\x2f"  # in every client's default list
_RENEGOTIATION_INFO = b"\xff\x01\x00\x01\x00"  # OpenSSL 3 refuses a server without it
_RECORD_MAX = 16384
VERIFIED = (0, "ok")  # X509_V_OK, in X509_verify_cert_error_string's words
NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
# Results that come after the name check (x509_vfy.c: check_id before internal_verify).
_AFTER_NAME_CHECK = (9, 10, 7, 8, 13, 14)  # not yet valid, expired, bad signatures, bad times


# Python's ssl rewords these two (adding the name); OpenSSL's own words, as the C core reports them.
_OPENSSL_WORDS = {62: "hostname mismatch", 64: "IP address mismatch"}


def verify_failure(exc: ssl.SSLCertVerificationError) -> tuple[int, str]:
    """(code, OpenSSL's words) of a verification that failed in Python's ssl."""
    return exc.verify_code, _OPENSSL_WORDS.get(exc.verify_code, exc.verify_message)


def _records(message: bytes) -> bytes:
    return b"".join(bytes([_HANDSHAKE]) + _TLS12 + len(chunk).to_bytes(2, "big") + chunk
                    for chunk in (message[i : i + _RECORD_MAX] for i in range(0, len(message), _RECORD_MAX)))


def _handshake_message(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def _server_hello() -> bytes:
    extensions = _RENEGOTIATION_INFO
    body = (_TLS12 + os.urandom(32) + b"\x00" + _ECDHE_RSA_AES128_GCM_SHA256 + b"\x00"
            + len(extensions).to_bytes(2, "big") + extensions)
    return _records(_handshake_message(_SERVER_HELLO, body))


def _certificate_message(chain: list[bytes]) -> bytes:
    entries = b"".join(len(der).to_bytes(3, "big") + der for der in chain)
    return _records(_handshake_message(_CERTIFICATE, len(entries).to_bytes(3, "big") + entries))


def _verify_code(context: ssl.SSLContext, chain: list[bytes], name: str | None) -> tuple[int, str] | None:
    """OpenSSL's verify result and its words for chain under context; None when it could not be had."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    incoming.write(_server_hello())
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    except ssl.SSLError:
        return None  # the ServerHello itself was refused: nothing was verified
    incoming.write(_certificate_message(chain))
    try:
        client.do_handshake()
    except ssl.SSLCertVerificationError as exc:
        return verify_failure(exc)
    except ssl.SSLWantReadError:
        return VERIFIED  # now waiting for the server's key exchange
    except ssl.SSLError:
        return VERIFIED  # then refused for the key type or size (checked after)
    return None


class TrustEvaluator:
    """Verifies chains against the CA store a TLSSettings names (cafile,
    capath, or the system's), as the native backend's context does."""

    def __init__(self, settings: TLSSettings) -> None:
        self._settings = settings
        self._chain_context: ssl.SSLContext | None = None

    def _context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0")  # judge the chain, not our policy
        return context

    def chain_result(self, chain: list[bytes]) -> tuple[int, str] | None:
        """(X509_V_OK or X509_V_ERR_*, OpenSSL's words) for the chain, leaf first, names not checked."""
        if not chain:
            return None
        context = self._chain_context
        if context is None:
            s = self._settings
            context = self._context()
            context.check_hostname = False
            if s.cafile or s.capath:
                context.load_verify_locations(cafile=s.cafile, capath=s.capath)
            else:
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
            self._chain_context = context
        return _verify_code(context, chain, None)

    def name_matched(self, leaf: bytes, name: str | None) -> bool | None:
        """Whether the leaf names ``name`` (X509_check_host/ip's rules); None when unknown."""
        if not name:
            return None
        context = self._context()
        context.check_hostname = True
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        try:
            context.load_verify_locations(cadata=leaf)
        except ssl.SSLError:
            return None
        result = _verify_code(context, [leaf], name)
        code = result[0] if result is not None else None
        if code in NAME_MISMATCH:
            return False
        if code == VERIFIED[0] or code in _AFTER_NAME_CHECK:
            return True
        return None
