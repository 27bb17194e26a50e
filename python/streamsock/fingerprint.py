"""A TLS server's ServerHello, and its JA3S fingerprint.

Both backends keep the body of the first ServerHello a probe receives (the
native engine through OpenSSL's message callback, the pure one from the
records it reads); this module reads it once for both. JA3S (Salesforce,
BSD 3-Clause) is the MD5 of "version,cipher,extensions" in decimal, the
extensions in the order the server sent them. The JA4+ fingerprints, under
another licence, live in :mod:`streamsock.ja4plus`.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

_HANDSHAKE = 22
_SERVER_HELLO = 2
_RECORD_HEADER = 5
TAP_LIMIT = 1 << 14  # bytes read for a ServerHello before giving up (SS_SERVER_HELLO_MAX is 4096)


class ServerHello(NamedTuple):
    """The fields of a ServerHello the fingerprints use."""

    version: int  # legacy_version (0x0303 for TLS 1.2 and 1.3)
    cipher: int
    extensions: tuple[tuple[int, bytes], ...]  # (type, data), in the order sent


def parse_server_hello(body: bytes) -> ServerHello | None:
    """The ServerHello in ``body`` (without its handshake header); None when malformed."""
    if len(body) < 38:
        return None
    version = int.from_bytes(body[0:2], "big")
    at = 34  # version, random
    session_id_len = body[at]
    at += 1 + session_id_len
    if at + 3 > len(body):
        return None
    cipher = int.from_bytes(body[at : at + 2], "big")
    at += 3  # cipher, compression method
    extensions: list[tuple[int, bytes]] = []
    if at + 2 <= len(body):
        end = at + 2 + int.from_bytes(body[at : at + 2], "big")
        at += 2
        if end > len(body):
            return None
        while at + 4 <= end:
            kind, size = int.from_bytes(body[at : at + 2], "big"), int.from_bytes(body[at + 2 : at + 4], "big")
            if at + 4 + size > end:
                return None
            extensions.append((kind, body[at + 4 : at + 4 + size]))
            at += 4 + size
    return ServerHello(version, cipher, tuple(extensions))


def ja3s(hello: ServerHello) -> str:
    text = f"{hello.version},{hello.cipher},{'-'.join(str(kind) for kind, _ in hello.extensions)}"
    return hashlib.md5(text.encode("ascii"), usedforsecurity=False).hexdigest()


def server_hello_from_records(data: bytes | bytearray) -> bytes | None:
    """The first handshake message's body if it is a ServerHello, from the raw TLS
    records a client reads: the body once complete, None while more is needed,
    b"" when there is none to find (another message or record came first)."""
    handshake = bytearray()
    at = 0
    while at + _RECORD_HEADER <= len(data):
        kind, size = data[at], int.from_bytes(data[at + 3 : at + 5], "big")
        if kind != _HANDSHAKE:
            return b""
        if at + _RECORD_HEADER + size > len(data):
            break
        handshake += data[at + _RECORD_HEADER : at + _RECORD_HEADER + size]
        at += _RECORD_HEADER + size
        if len(handshake) >= 4:
            if handshake[0] != _SERVER_HELLO:
                return b""
            length = int.from_bytes(handshake[1:4], "big")
            if len(handshake) >= 4 + length:
                return bytes(handshake[4 : 4 + length])
    return None if len(data) < TAP_LIMIT else b""
