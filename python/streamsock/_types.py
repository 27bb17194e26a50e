"""Types the layers share: aliases, and the dictionaries streams report.

(No ``from __future__ import annotations`` here: TypedDict needs real
annotations at run time to know which keys are NotRequired.)
"""

from typing import TYPE_CHECKING, NotRequired, TypeAlias, TypedDict

if TYPE_CHECKING:
    from .certificate import Certificate

__all__ = ["BytesLike", "CryptoInfo", "EngineRecord", "ErrorContext", "ErrorRecord", "StreamMeta", "TLSInfo"]

#: What a write accepts: any contiguous bytes-like object (collections.abc.Buffer from 3.12).
BytesLike: TypeAlias = bytes | bytearray | memoryview

#: What a raised error's message starts with: words, or (words, address) formatted only when an error happens.
ErrorContext: TypeAlias = "str | tuple[str, object] | None"

#: An error as (code, errno, message): the C core's ss_error_info_t, and the pure backend's equivalent.
ErrorRecord: TypeAlias = tuple[int, int, str]

#: One finished probe as a backend's engine reports it (``Engine.take``): index, ok, error code,
#: errno, verify_result, message, peer, protocol, cipher, group, alpn, session_reused, resolve_ms,
#: connect_ms, handshake_ms, total_ms, banner, certificates, name_matched, verify_reason, ServerHello.
EngineRecord: TypeAlias = (
    "tuple[int, bool, int, int, int | None, str, str, str, str, str, str, bool, float, float, float, float,"
    " bytes, list[Certificate], bool | None, str | None, bytes]"
)


class CryptoInfo(TypedDict):
    """``Stream.crypto`` and ``meta["crypto"]``: PHP's crypto meta data."""

    protocol: str
    cipher_name: str
    cipher_bits: int
    cipher_version: str
    alpn_protocol: NotRequired[str]  # only when ALPN chose one, as in PHP


class TLSInfo(TypedDict):
    """``Stream.tls_info``: everything known of the TLS session."""

    protocol: str
    cipher_name: str
    cipher_bits: int
    cipher_version: str
    alpn_protocol: str | None
    group: str | None
    server_name: str | None
    session_reused: bool


class StreamMeta(TypedDict):
    """``Stream.meta``: PHP's stream_get_meta_data."""

    timed_out: bool
    blocked: bool
    eof: bool
    stream_type: str
    mode: str
    unread_bytes: int
    seekable: bool
    uri: NotRequired[str]  # absent on accepted streams and pairs, as in PHP
    crypto: NotRequired[CryptoInfo]  # only on an established TLS stream
