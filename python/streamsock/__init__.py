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

from typing import TYPE_CHECKING, Container, Iterable, Literal, overload

from . import _backend
from ._types import CryptoInfo, StreamMeta, TLSInfo
from .address import Address, AddressBatch, Transport
from .context import (
    CRYPTO_METHOD_ANY_CLIENT,
    CRYPTO_METHOD_ANY_SERVER,
    CRYPTO_METHOD_SSLv2_CLIENT,
    CRYPTO_METHOD_SSLv2_SERVER,
    CRYPTO_METHOD_SSLv3_CLIENT,
    CRYPTO_METHOD_SSLv3_SERVER,
    CRYPTO_METHOD_SSLv23_CLIENT,
    CRYPTO_METHOD_SSLv23_SERVER,
    CRYPTO_METHOD_TLS_ANY_CLIENT,
    CRYPTO_METHOD_TLS_ANY_SERVER,
    CRYPTO_METHOD_TLS_CLIENT,
    CRYPTO_METHOD_TLS_SERVER,
    CRYPTO_METHOD_TLSv1_0_CLIENT,
    CRYPTO_METHOD_TLSv1_0_SERVER,
    CRYPTO_METHOD_TLSv1_1_CLIENT,
    CRYPTO_METHOD_TLSv1_1_SERVER,
    CRYPTO_METHOD_TLSv1_2_CLIENT,
    CRYPTO_METHOD_TLSv1_2_SERVER,
    CRYPTO_METHOD_TLSv1_3_CLIENT,
    CRYPTO_METHOD_TLSv1_3_SERVER,
    CRYPTO_PROTO_SSLv3,
    CRYPTO_PROTO_TLSv1_0,
    CRYPTO_PROTO_TLSv1_1,
    CRYPTO_PROTO_TLSv1_2,
    CRYPTO_PROTO_TLSv1_3,
    Context,
)
from .probe import ProbeResult, ProbeRun
from .stream import (
    CLIENT_ASYNC_CONNECT,
    CLIENT_CONNECT,
    CLIENT_PERSISTENT,
    IPPROTO_ICMP,
    IPPROTO_IP,
    IPPROTO_RAW,
    IPPROTO_TCP,
    IPPROTO_UDP,
    OOB,
    PEEK,
    PF_INET,
    PF_INET6,
    PF_UNIX,
    SERVER_BIND,
    SERVER_LISTEN,
    SHUT_RD,
    SHUT_RDWR,
    SHUT_WR,
    SOCK_DGRAM,
    SOCK_RAW,
    SOCK_RDM,
    SOCK_SEQPACKET,
    SOCK_STREAM,
    Server,
    Stream,
    select,
)
from .errors import (
    AddressError,
    CertificateVerifyError,
    ConnectError,
    StreamSocketError,
    TimeoutError,
    TLSError,
    UnsupportedTransportError,
    WouldBlockError,
)

if TYPE_CHECKING:
    from . import aio  # imported on first use at run time (see __getattr__)

__version__ = "0.1.0"

__all__ = [
    "CLIENT_ASYNC_CONNECT",
    "CLIENT_CONNECT",
    "CLIENT_PERSISTENT",
    "Context",
    "SERVER_BIND",
    "SERVER_LISTEN",
    "SHUT_RD",
    "SHUT_RDWR",
    "SHUT_WR",
    "Server",
    "Stream",
    "client",
    "fsockopen",
    "pfsockopen",
    "select",
    "server",
    "socket_pair",
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
    "probe",
    "ProbeResult",
    "ProbeRun",
    "WouldBlockError",
    "StreamMeta",
    "CryptoInfo",
    "TLSInfo",
]

__all__ += [  # PHP's constants, spelled out so type checkers see them exported
    "CRYPTO_METHOD_ANY_CLIENT", "CRYPTO_METHOD_ANY_SERVER", "CRYPTO_METHOD_SSLv23_CLIENT",
    "CRYPTO_METHOD_SSLv23_SERVER", "CRYPTO_METHOD_SSLv2_CLIENT", "CRYPTO_METHOD_SSLv2_SERVER",
    "CRYPTO_METHOD_SSLv3_CLIENT", "CRYPTO_METHOD_SSLv3_SERVER", "CRYPTO_METHOD_TLS_ANY_CLIENT",
    "CRYPTO_METHOD_TLS_ANY_SERVER", "CRYPTO_METHOD_TLS_CLIENT", "CRYPTO_METHOD_TLS_SERVER",
    "CRYPTO_METHOD_TLSv1_0_CLIENT", "CRYPTO_METHOD_TLSv1_0_SERVER", "CRYPTO_METHOD_TLSv1_1_CLIENT",
    "CRYPTO_METHOD_TLSv1_1_SERVER", "CRYPTO_METHOD_TLSv1_2_CLIENT", "CRYPTO_METHOD_TLSv1_2_SERVER",
    "CRYPTO_METHOD_TLSv1_3_CLIENT", "CRYPTO_METHOD_TLSv1_3_SERVER", "CRYPTO_PROTO_SSLv3",
    "CRYPTO_PROTO_TLSv1_0", "CRYPTO_PROTO_TLSv1_1", "CRYPTO_PROTO_TLSv1_2", "CRYPTO_PROTO_TLSv1_3",
    "IPPROTO_ICMP", "IPPROTO_IP", "IPPROTO_RAW", "IPPROTO_TCP", "IPPROTO_UDP", "PF_INET", "PF_INET6",
    "PF_UNIX", "SOCK_DGRAM", "SOCK_RAW", "SOCK_RDM", "SOCK_SEQPACKET", "SOCK_STREAM", "OOB", "PEEK",
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


@overload
def parse_many(addresses: Iterable[str], errors: Literal["raise"] = "raise") -> list[Address]: ...
@overload
def parse_many(addresses: Iterable[str], errors: Literal["return"]) -> list[Address | AddressError]: ...


def parse_many(addresses: Iterable[str], errors: str = "raise") -> list[Address] | list[Address | AddressError]:
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


def client(address: Address | str, timeout: float | None = None, context: Context | None = None,
           flags: int = CLIENT_CONNECT) -> Stream:
    """Connect, as PHP's ``stream_socket_client``: ``client("tls://example.com:443", timeout=5)``.

    ``timeout`` bounds resolution, connect and the TLS handshake together
    (default 60 s, PHP's default_socket_timeout; negative: no limit).
    ``flags=CLIENT_ASYNC_CONNECT`` returns at once; the first read or write
    (or :func:`select` for writability) finishes connecting. Raises
    :class:`ConnectError` (refused: errno 111), :class:`TimeoutError` (errno
    110), :class:`TLSError` or :class:`CertificateVerifyError`.
    """
    return _active.client(address, timeout, context, flags)


def fsockopen(host: str, port: int | None = None, timeout: float | None = None,
              context: Context | None = None) -> Stream:
    """PHP's ``fsockopen(host, port)``: ``fsockopen("ssl://example.com", 443)``."""
    return _active.fsockopen(host, port, timeout, context)


def socket_pair(domain: int = PF_UNIX, type: int = SOCK_STREAM, protocol: int = IPPROTO_IP) -> tuple[Stream, Stream]:
    """PHP's ``stream_socket_pair``: two connected Streams, each the other's
    peer (``socket_pair()``: unix stream sockets; ``SOCK_DGRAM`` keeps
    message boundaries). A domain or type the system refuses (Linux makes
    pairs of unix sockets only) raises StreamSocketError with its errno."""
    return _active.socket_pair(domain, type, protocol)


def pfsockopen(host: str, port: int | None = None, timeout: float | None = None,
               context: Context | None = None) -> Stream:
    """PHP's ``pfsockopen``: ``fsockopen`` that hands out again the live
    stream to the same address with the same context options, in this
    process (as ``client(..., flags=CLIENT_PERSISTENT)``). A stream whose
    peer has gone is replaced by a new connection; ``close()`` ends a
    persistent stream like any other."""
    return _active.pfsockopen(host, port, timeout, context)


def server(address: Address | str, flags: int = SERVER_BIND | SERVER_LISTEN,
           context: Context | None = None, *, handshake_timeout: float | None = None) -> Server:
    """Listen (tcp, ssl/tls, unix) or bind (udp, udg), as PHP's ``stream_socket_server``.
    Port 0 picks a free port: see ``Server.local_name``. Each client's TLS
    handshake runs beside the others' and must end within
    ``handshake_timeout`` seconds (default 60, PHP's default_socket_timeout)."""
    return _active.server(address, flags, context, handshake_timeout=handshake_timeout)


def probe(targets: Iterable[str | Address], concurrency: int = 100, timeout: float = 5.0,
          context: Context | None = None, *, connect_timeout: float | None = None,
          handshake_timeout: float | None = None, payload: bytes = b"", banner: int = 0, capture_chain: bool = False,
          starttls: str | None = None, rate: float | None = None, resume: bool = False,
          shard: tuple[int, int] | None = None, seed: int = 0, skip: Container[int] | None = None) -> ProbeRun:
    """Connect to many targets at once; yields a :class:`ProbeResult` per target as it finishes.

    ``targets`` is any iterable of addresses (a generator over a file of
    millions of lines works in bounded memory); host names are looked up
    without holding up the other connections. ``timeout`` bounds each whole
    probe; ``connect_timeout`` (lookup and connect) and ``handshake_timeout``
    (connected to TLS done) its phases. TLS targets (``tls://``, ``ssl://``,
    ``tlsv1.x://``) are verified with ``context``; ``starttls`` ("smtp",
    "imap", "pop3", "ftp") runs that protocol's dialogue on plain ``tcp://``
    targets, then TLS. ``payload`` is sent once established and up to
    ``banner`` bytes of what comes back are kept (with ``starttls``, the
    server's greeting). ``rate`` caps new connections per second; ``resume``
    offers a target seen before its last TLS session. The native backend
    drives everything from one C epoll loop, the pure one from asyncio.

    ``shard=(i, n)`` probes only the targets of shard ``i`` of ``n`` (a
    BLAKE2b hash of the target's text keyed with ``seed``: n probes of one
    input, each with its own i, cover it exactly once); ``skip`` is a
    container of input positions not to probe (those an earlier run recorded:
    see :mod:`streamsock.resume`). ``index`` stays the position in the whole
    input.
    """
    return _active.probe(targets, concurrency, timeout, context, connect_timeout=connect_timeout,
                         handshake_timeout=handshake_timeout, payload=payload, banner=banner,
                         capture_chain=capture_chain, starttls=starttls, rate=rate, resume=resume,
                         shard=shard, seed=seed, skip=skip)


def openssl_version() -> str:
    """The version of the OpenSSL the active backend uses."""
    return _active.openssl_version()


def available_transports() -> tuple[str, ...]:
    """The transports usable here (``sslv2``/``sslv3`` only when OpenSSL has them)."""
    return _active.available_transports()


def __getattr__(name: str) -> object:
    # streamsock.aio on first use: importing asyncio is not free, and most
    # programs that use streamsock never need it.
    if name == "aio":
        import importlib

        return importlib.import_module(".aio", __name__)
    raise AttributeError(f"module 'streamsock' has no attribute {name!r}")
