"""JA4S (a server's ServerHello) and JA4X (a certificate's shape) fingerprints.

JA4S and JA4X are JA4+ methods of FoxIO, LLC, licensed under the FoxIO
License 1.1 and patent pending: free for internal business, academic and
personal use, not for monetization (selling them in a product or service
needs an OEM licence from FoxIO). This module is streamsock's own code,
written from FoxIO's published specifications (github.com/FoxIO-LLC/ja4,
technical_details/JA4S.md and JA4X.md); streamsock computes these
fingerprints only when asked (``probe(..., ja4plus=True)``, ``streamsock
probe --ja4plus``, or these functions), so that using streamsock never uses
JA4+ unknowingly. See the README's "Fingerprints" section.
"""

from __future__ import annotations

import hashlib

from .certificate import _CONTEXT_0, _CONTEXT_3, _OID, _SEQUENCE, _SET, _Reader
from .fingerprint import ServerHello

_SUPPORTED_VERSIONS = 0x002B
_ALPN = 0x0010
_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3", 0x0002: "s2",
             0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3"}


def _truncated_sha256(items: list[str]) -> str:
    return hashlib.sha256(",".join(items).encode("ascii")).hexdigest()[:12]


def _alpn_chars(value: bytes) -> str:
    """First and last characters of the chosen protocol (JA4's rule: hex digits
    when either byte is not alphanumeric), "00" when there is none."""
    if not value:
        return "00"
    first, last = value[0], value[-1]
    if chr(first).isascii() and chr(first).isalnum() and chr(last).isascii() and chr(last).isalnum():
        return chr(first) + chr(last)
    text = value.hex()
    return text[0] + text[-1]


def ja4s(hello: ServerHello) -> str:
    """JA4S: t(version)(extension count)(ALPN)_(cipher)_(hash of the extensions in order)."""
    extensions = dict(hello.extensions)
    version = hello.version
    chosen = extensions.get(_SUPPORTED_VERSIONS, b"")
    if len(chosen) == 2:
        version = int.from_bytes(chosen, "big")
    alpn = extensions.get(_ALPN, b"")
    # ALPN in a ServerHello: a list of one protocol (2-byte list length, 1-byte name length, name)
    protocol = alpn[3 : 3 + alpn[2]] if len(alpn) >= 3 else b""
    head = f"t{_VERSIONS.get(version, '00')}{min(len(hello.extensions), 99):02d}{_alpn_chars(protocol)}"
    return f"{head}_{hello.cipher:04x}_{_truncated_sha256([f'{kind:04x}' for kind, _ in hello.extensions])}"


def ja4x(der: bytes) -> str:
    """JA4X: hashes of the issuer's attribute types, the subject's, and the
    extensions', each in certificate order (OIDs as the hex of their DER contents)."""
    issuer, subject, extensions = _ja4x_parts(der)
    return f"{_truncated_sha256(issuer)}_{_truncated_sha256(subject)}_{_truncated_sha256(extensions)}"


def _ja4x_parts(der: bytes) -> tuple[list[str], list[str], list[str]]:
    top = _Reader(der, 0, len(der), "Certificate")
    cert = top.inner(top.expect(_SEQUENCE, "Certificate"), "Certificate")
    tbs = cert.inner(cert.expect(_SEQUENCE, "tbsCertificate"), "tbsCertificate")
    if tbs.peek() == _CONTEXT_0:
        tbs.read("version")
    tbs.read("serialNumber")
    tbs.read("signature")
    issuer = _attribute_types(tbs, "issuer")
    tbs.read("validity")
    subject = _attribute_types(tbs, "subject")
    tbs.read("subjectPublicKeyInfo")
    extensions: list[str] = []
    while tbs.more():
        field = tbs.read("tbsCertificate")
        if field.tag != _CONTEXT_3:
            continue  # issuerUniqueID, subjectUniqueID
        explicit = tbs.inner(field, "extensions")
        sequence = explicit.inner(explicit.expect(_SEQUENCE, "extensions"), "extensions")
        while sequence.more():
            extension = sequence.inner(sequence.expect(_SEQUENCE, "extension"), "extension")
            oid = extension.expect(_OID, "extension")
            extensions.append(der[oid.body : oid.end].hex())
    return issuer, subject, extensions


def _attribute_types(tbs: _Reader, what: str) -> list[str]:
    names = tbs.inner(tbs.expect(_SEQUENCE, what), what)
    types = []
    while names.more():
        rdn = names.inner(names.expect(_SET, what), what)
        while rdn.more():
            pair = rdn.inner(rdn.expect(_SEQUENCE, what), what)
            oid = pair.expect(_OID, what)
            types.append(tbs.data[oid.body : oid.end].hex())
    return types
