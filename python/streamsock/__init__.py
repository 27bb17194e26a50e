"""streamsock: PHP's stream-socket transports for Python.

``tcp://``, ``udp://``, ``ssl://``, ``tls://``, ``tlsv1.x://``, ``unix://`` and
``udg://`` addresses, parsed by a small C core linked against the system
OpenSSL (or by the pure-Python twin of it).

>>> import streamsock as ss
>>> a = ss.parse("tls://[::1]:443")
>>> a.transport, a.host, a.port, a.secure, str(a)
(<Transport.TLS: 'tls'>, '::1', 443, True, 'tls://[::1]:443')
"""

from __future__ import annotations

from typing import Iterable

from . import _backend
from .address import Address, AddressBatch, Transport
from .errors import (
    AddressError,
    CertificateVerifyError,
    ConnectError,
    StreamSocketError,
    TimeoutError,
    TLSError,
    UnsupportedTransportError,
)

__version__ = "0.1.0"

__all__ = [
    "Address",
    "AddressBatch",
    "AddressError",
    "CertificateVerifyError",
    "ConnectError",
    "StreamSocketError",
    "TLSError",
    "TimeoutError",
    "Transport",
    "UnsupportedTransportError",
    "available_transports",
    "backend",
    "get_backend",
    "join",
    "openssl_version",
    "parse",
    "parse_batch",
    "parse_many",
]

_active = _backend.select()

#: Name of the backend in use: "native" (the C core) or "pure".
backend: str = _active.name

get_backend = _backend.get


def parse(address: str) -> Address:
    """Parse a transport address (``"tls://[::1]:443"``, ``"host:80"``, ``"unix:///run/s.sock"``).

    Raises :class:`AddressError` naming the offending text, or
    :class:`UnsupportedTransportError` for an unknown scheme.
    """
    return _active.parse(address)


def parse_many(addresses: Iterable[str], errors: str = "raise") -> list:
    """Parse many addresses in one C call. ``errors="raise"`` raises the first
    :class:`AddressError` (its ``index`` says which); ``errors="return"`` puts
    each error in the list in place of its address."""
    return _active.parse_many(addresses, errors)


def parse_batch(addresses: Iterable[str]) -> AddressBatch:
    """Parse many addresses in one C call and keep the results as C records:
    a sequence whose items (an Address or an AddressError) are built when read."""
    return _active.parse_batch(addresses)


def join(host: str, port: int | None = None) -> Address:
    """Join a host and a port as PHP's ``fsockopen(host, port)`` does.

    ``join("fe80::1", 80)`` is ``tcp://[fe80::1]:80``; ``join("ssl://h", 443)``
    is ``ssl://h:443``. A host that already carries a port, or a unix path,
    with a port is an :class:`AddressError` (PHP ignores the argument).
    """
    return _active.join(host, port)


def openssl_version() -> str:
    """The version of the OpenSSL the active backend uses."""
    return _active.openssl_version()


def available_transports() -> tuple[str, ...]:
    """The transports usable here (``sslv2``/``sslv3`` only when OpenSSL has them)."""
    return _active.available_transports()
