"""Exceptions, the error-code table, and the one place error records become exceptions.

Every exception is a :class:`StreamSocketError`, itself an :class:`OSError`
carrying PHP's ``errno`` and ``errstr`` (``strerror``). Subclasses also derive
from the builtin exception users already catch: :class:`AddressError` is a
:class:`ValueError`, :class:`TimeoutError` is the builtin :class:`TimeoutError`.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .certificate import Certificate

__all__ = [
    "StreamSocketError",
    "AddressError",
    "UnsupportedTransportError",
    "ConnectError",
    "TimeoutError",
    "WouldBlockError",
    "TLSError",
    "CertificateVerifyError",
    "ERROR_CODES",
    "address_error",
]


class StreamSocketError(OSError):
    """Base of every streamsock error: ``errno`` and ``errstr`` as PHP reports them.

    ``errno`` is the system error number (``ECONNREFUSED`` is 111, ``ETIMEDOUT``
    110) or 0 where PHP reports 0 (address, DNS and TLS failures). ``errstr``
    says what happened; ``code`` is streamsock's own error name
    (``"SS_ERR_ADDR_PORT_RANGE"``), stable across releases.
    """

    #: OpenSSL's verify result when a TLS error carries one (0 otherwise).
    verify_result: int = 0

    def __init__(self, errno: int, errstr: str, *, code: str | None = None) -> None:
        super().__init__(errno, errstr)
        self.code = code

    @property
    def errstr(self) -> str:
        return self.strerror or ""

    def __str__(self) -> str:
        return self.strerror or ""


class AddressError(StreamSocketError, ValueError):
    """A malformed address. ``address`` is the input, ``offset``/``length`` the
    offending text within it (in characters), ``reason`` the rule it broke,
    ``index`` the position of the input when a batch parse raised it."""

    def __init__(
        self, errstr: str, *, code: str, address: str = "", offset: int = 0, length: int = 0, reason: str = ""
    ) -> None:
        super().__init__(0, errstr, code=code)
        self.address = address
        self.offset = offset
        self.length = length
        self.reason = reason
        self.index: int | None = None  # set by parse_many: which input failed

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_address_error,
            (type(self), self.strerror, self.code, self.address, self.offset, self.length, self.reason),
        )


def _rebuild_address_error(cls: type[AddressError], errstr: str, code: str, address: str, offset: int, length: int,
                           reason: str) -> AddressError:
    return cls(errstr, code=code, address=address, offset=offset, length=length, reason=reason)


class UnsupportedTransportError(AddressError):
    """The address names a transport this build cannot use: an unknown scheme,
    or ``sslv2://``/``sslv3://`` with an OpenSSL compiled without them."""


class ConnectError(StreamSocketError):
    """The connection could not be made (refused, unreachable, DNS failure)."""


class TimeoutError(StreamSocketError, builtins.TimeoutError):  # noqa: A001 - PHP's name, builtin's base
    """A deadline passed (``errno`` 110, ``ETIMEDOUT``). After a blocking
    write, ``written`` says how many bytes went before it (None otherwise)."""

    written: int | None = None


class WouldBlockError(StreamSocketError, builtins.BlockingIOError):
    """A non-blocking stream has nothing to read yet (``errno`` 11,
    ``EAGAIN``), as a non-blocking socket's ``recv`` raises
    :class:`BlockingIOError`. ``Stream.read_nowait`` and ``readline_nowait``
    return None instead."""


class TLSError(StreamSocketError):
    """The TLS layer failed: handshake, protocol, or a STARTTLS rule."""


class CertificateVerifyError(TLSError):
    """The peer's certificate or name did not verify. ``peer_certificate`` is
    the certificate that failed (a :class:`~streamsock.certificate.Certificate`),
    None when none arrived."""

    peer_certificate: Certificate | None = None


# Codes, as in csrc/streamsock.h's enum ss_error.
OK = 0
ADDR_EMPTY = -101
ADDR_TOO_LONG = -102
ADDR_UNKNOWN_TRANSPORT = -103
ADDR_HOST_EMPTY = -104
ADDR_HOST_CHAR = -105
ADDR_HOST_TOO_LONG = -106
ADDR_IPV6_BRACKET = -107
ADDR_IPV6_INVALID = -108
ADDR_COLONS = -109
ADDR_AFTER_BRACKET = -110
ADDR_PORT_EMPTY = -111
ADDR_PORT_SYNTAX = -112
ADDR_PORT_RANGE = -113
ADDR_PATH_EMPTY = -114
ADDR_PATH_NUL = -115
ADDR_PATH_TOO_LONG = -116
ADDR_PORT_MISSING = -117
ADDR_PORT_TWICE = -118
ADDR_PORT_UNEXPECTED = -119
NOMEM = -200
SYSTEM = -201
RESOLVE = -202
CONNECT = -203
TIMEOUT = -204
CLOSED = -205
STATE = -206
UNSUPPORTED = -207
EOF = -208
TLS = -300
TLS_CONFIG = -301
TLS_VERIFY = -302
TLS_PEER_NAME = -303
TLS_FINGERPRINT = -304
STARTTLS_BUFFERED = -305
TLS_ACTIVE = -306
BUSY = -307
STARTTLS_REFUSED = -308

# Code -> (name, message). The same table as csrc/internal.h's SS_ERROR_TABLE,
# so the pure-Python backend reports exactly what the native one does;
# tests/test_errors.py holds the two together.
ERROR_CODES: dict[int, tuple[str, str]] = {
    OK: ("SS_OK", "success"),
    ADDR_EMPTY: ("SS_ERR_ADDR_EMPTY", "empty address"),
    ADDR_TOO_LONG: ("SS_ERR_ADDR_TOO_LONG", "address longer than 4294967295 bytes"),
    ADDR_UNKNOWN_TRANSPORT: ("SS_ERR_ADDR_UNKNOWN_TRANSPORT", "unknown socket transport"),
    ADDR_HOST_EMPTY: ("SS_ERR_ADDR_HOST_EMPTY", "missing host"),
    ADDR_HOST_CHAR: ("SS_ERR_ADDR_HOST_CHAR", "invalid character in host"),
    ADDR_HOST_TOO_LONG: ("SS_ERR_ADDR_HOST_TOO_LONG", "host longer than 255 bytes"),
    ADDR_IPV6_BRACKET: ("SS_ERR_ADDR_IPV6_BRACKET", "missing ']' after IPv6 address"),
    ADDR_IPV6_INVALID: ("SS_ERR_ADDR_IPV6_INVALID", "not a valid IPv6 address"),
    ADDR_COLONS: (
        "SS_ERR_ADDR_COLONS",
        "more than one ':' but not an IPv6 address (write an IPv6 address with a port as [addr]:port)",
    ),
    ADDR_AFTER_BRACKET: ("SS_ERR_ADDR_AFTER_BRACKET", "expected ':port' after ']'"),
    ADDR_PORT_EMPTY: ("SS_ERR_ADDR_PORT_EMPTY", "missing port number after ':'"),
    ADDR_PORT_SYNTAX: ("SS_ERR_ADDR_PORT_SYNTAX", "port must be decimal digits"),
    ADDR_PORT_RANGE: ("SS_ERR_ADDR_PORT_RANGE", "port out of range 0-65535"),
    ADDR_PATH_EMPTY: ("SS_ERR_ADDR_PATH_EMPTY", "missing socket path"),
    ADDR_PATH_NUL: ("SS_ERR_ADDR_PATH_NUL", "NUL byte in socket path"),
    ADDR_PATH_TOO_LONG: (
        "SS_ERR_ADDR_PATH_TOO_LONG",
        "socket path too long (at most 107 bytes, or 108 with the leading NUL of an abstract name)",
    ),
    ADDR_PORT_MISSING: ("SS_ERR_ADDR_PORT_MISSING", "missing port"),
    ADDR_PORT_TWICE: ("SS_ERR_ADDR_PORT_TWICE", "port given twice (in the address and as an argument)"),
    ADDR_PORT_UNEXPECTED: ("SS_ERR_ADDR_PORT_UNEXPECTED", "unix and udg sockets take no port"),
    NOMEM: ("SS_ERR_NOMEM", "out of memory"),
    SYSTEM: ("SS_ERR_SYSTEM", "system call failed"),
    RESOLVE: ("SS_ERR_RESOLVE", "name resolution failed"),
    CONNECT: ("SS_ERR_CONNECT", "connection failed"),
    TIMEOUT: ("SS_ERR_TIMEOUT", "timed out"),
    CLOSED: ("SS_ERR_CLOSED", "stream is closed"),
    STATE: ("SS_ERR_STATE", "operation not valid in this state"),
    UNSUPPORTED: ("SS_ERR_UNSUPPORTED", "not supported by this transport or OpenSSL"),
    EOF: ("SS_ERR_EOF", "peer closed the connection"),
    TLS: ("SS_ERR_TLS", "TLS error"),
    TLS_CONFIG: ("SS_ERR_TLS_CONFIG", "invalid TLS configuration"),
    TLS_VERIFY: ("SS_ERR_TLS_VERIFY", "certificate verify failed"),
    TLS_PEER_NAME: ("SS_ERR_TLS_PEER_NAME", "peer certificate does not match the expected name"),
    TLS_FINGERPRINT: ("SS_ERR_TLS_FINGERPRINT", "peer certificate fingerprint does not match"),
    STARTTLS_BUFFERED: (
        "SS_ERR_STARTTLS_BUFFERED",
        "plaintext received before the TLS handshake (possible STARTTLS injection)",
    ),
    TLS_ACTIVE: ("SS_ERR_TLS_ACTIVE", "TLS is already enabled on this stream"),
    BUSY: ("SS_ERR_BUSY", "stream is in use by another thread"),
    STARTTLS_REFUSED: ("SS_ERR_STARTTLS_REFUSED", "the server refused STARTTLS"),
}

CODE_BY_NAME: dict[str, int] = {name: code for code, (name, _) in ERROR_CODES.items()}

_CLASS_BY_CODE: dict[int, type[StreamSocketError]] = {
    RESOLVE: ConnectError,
    CONNECT: ConnectError,
    TIMEOUT: TimeoutError,
    UNSUPPORTED: UnsupportedTransportError,
    EOF: TLSError,
    TLS: TLSError,
    TLS_CONFIG: TLSError,
    TLS_VERIFY: CertificateVerifyError,
    TLS_PEER_NAME: CertificateVerifyError,
    TLS_FINGERPRINT: CertificateVerifyError,
    STARTTLS_BUFFERED: TLSError,
    TLS_ACTIVE: TLSError,
    STARTTLS_REFUSED: TLSError,
}


def from_native(
    code: int, sys_errno: int, message: str, *, context: str | tuple[str, object] | None = None, verify_result: int = 0
) -> StreamSocketError:
    """The exception for an error record (from the C core or the pure backend).

    ``context`` ("Unable to connect to tls://h:443", or the tuple
    ``("Unable to connect to", address)`` to format later) goes before the record's
    message, PHP-style. Every backend error becomes an exception here.
    """
    name = ERROR_CODES.get(code, (f"SS_ERR_{-code}", ""))[0]
    cls = _CLASS_BY_CODE.get(code, StreamSocketError)
    text = message or ERROR_CODES.get(code, ("", "error"))[1]
    if context:
        if type(context) is tuple:  # (words, address): formatted only when an error happens
            context = " ".join(map(str, context))
        text = f"{context} ({text})"
    if issubclass(cls, AddressError):
        exc: StreamSocketError = cls(text, code=name, reason=message)
        exc.errno = sys_errno
    else:
        exc = cls(sys_errno, text, code=name)
    exc.verify_result = verify_result
    return exc


def error(code: int, message: str | None = None, sys_errno: int = 0, *,
          context: str | tuple[str, object] | None = None) -> StreamSocketError:
    """An exception for ``code`` raised by Python itself, with the table's message by default."""
    return from_native(code, sys_errno, message or ERROR_CODES[code][1], context=context)

_IPV6_CODES = frozenset({ADDR_IPV6_BRACKET, ADDR_IPV6_INVALID})
_QUOTE_LIMIT = 80


def quote(text: str) -> str:
    """``text`` for an error message: control characters escaped, long text cut."""
    shown = text if len(text) <= _QUOTE_LIMIT else text[: _QUOTE_LIMIT - 3] + "..."
    if shown.isprintable():
        return shown
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)


def address_error(
    code: int, address: str, offset: int, length: int, available: tuple[str, ...] = ()
) -> AddressError:
    """The exception for parser error ``code`` at ``address[offset:offset + length]``.

    Both backends build their parse errors here, so messages are identical.
    ``available`` lists the usable transports, for the unknown-transport message.
    """
    name, reason = ERROR_CODES[code]
    text = address[offset : offset + length]
    if code == ADDR_UNKNOWN_TRANSPORT:
        message = f'Unable to find the socket transport "{quote(text)}"; available: {", ".join(available)}'
        return UnsupportedTransportError(
            message, code=name, address=address, offset=offset, length=length, reason=reason
        )
    what = "IPv6 address" if code in _IPV6_CODES else "address"
    message = f'Failed to parse {what} "{quote(address)}": {reason}'
    if length:
        message += f' ("{quote(text)}" at offset {offset})'
    else:
        message += f" (at offset {offset})"
    return AddressError(message, code=name, address=address, offset=offset, length=length, reason=reason)
