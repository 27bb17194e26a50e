"""Transport addresses: :class:`Transport`, :class:`Address`, and the pure-Python parser.

The parser here is the twin of ``csrc/url.c``: same rules, same order of
checks, same error codes and offsets (in characters here, converted from bytes
on the native side). DESIGN.md's Semantics section is the specification;
``tests/data/addresses.json`` holds the vectors both must pass.
"""

from __future__ import annotations

import enum
import functools
import re
import socket
from operator import itemgetter
from collections.abc import Sequence
from typing import Callable, Iterable, overload

from . import errors as _e

__all__ = ["Transport", "Address", "parse_pure", "join"]


class Transport(enum.StrEnum):
    """The socket transports of PHP's stream layer, by their scheme names."""

    TCP = "tcp"
    UDP = "udp"
    SSL = "ssl"
    TLS = "tls"
    SSLV2 = "sslv2"
    SSLV3 = "sslv3"
    TLSV1_0 = "tlsv1.0"
    TLSV1_1 = "tlsv1.1"
    TLSV1_2 = "tlsv1.2"
    TLSV1_3 = "tlsv1.3"
    UNIX = "unix"
    UDG = "udg"

    @property
    def secure(self) -> bool:
        """True for the TLS/SSL transports."""
        return self in _SECURE

    @property
    def local(self) -> bool:
        """True for unix-domain transports (a path, no host or port)."""
        return self is Transport.UNIX or self is Transport.UDG

    @property
    def datagram(self) -> bool:
        """True for udp and udg."""
        return self is Transport.UDP or self is Transport.UDG


_SECURE = frozenset(
    {Transport.SSL, Transport.TLS, Transport.SSLV2, Transport.SSLV3}
    | {Transport.TLSV1_0, Transport.TLSV1_1, Transport.TLSV1_2, Transport.TLSV1_3}
)

_LOCAL = frozenset({Transport.UNIX, Transport.UDG})

# C enum ss_transport value -> Transport (index = value).
TRANSPORT_BY_CODE: tuple[Transport | None, ...] = (
    None,
    Transport.TCP,
    Transport.UDP,
    Transport.SSL,
    Transport.TLS,
    Transport.SSLV2,
    Transport.SSLV3,
    Transport.TLSV1_0,
    Transport.TLSV1_1,
    Transport.TLSV1_2,
    Transport.TLSV1_3,
    Transport.UNIX,
    Transport.UDG,
)
TRANSPORT_CODE = {t: code for code, t in enumerate(TRANSPORT_BY_CODE) if t is not None}

_new = tuple.__new__


class Address(tuple[Transport, "str | None", "int | None", "str | None"]):
    """A parsed transport address: immutable, hashable, a 4-tuple
    ``(transport, host, port, path)`` like :func:`urllib.parse.urlsplit`'s result.

    ``host`` is without brackets (``"fe80::1"``) and ``None`` for unix/udg;
    ``port`` is an int or ``None`` when the address has none; ``path`` is the
    socket path of unix/udg (``"\\0name"`` for Linux's abstract namespace) and
    ``None`` otherwise. ``str(address)`` is the canonical form, and
    ``parse(str(address)) == address``.

    Constructing one directly validates the fields by the same rules as
    :func:`streamsock.parse`.
    """

    __slots__ = ()

    def __new__(
        cls,
        transport: Transport | str,
        host: str | None = None,
        port: int | None = None,
        path: str | None = None,
    ) -> "Address":
        try:
            transport = Transport(transport)
        except ValueError:
            raise _e.address_error(_e.ADDR_UNKNOWN_TRANSPORT, str(transport), 0, len(str(transport)),
                                   tuple(Transport)) from None
        if port is not None and (type(port) is not int or not 0 <= port <= 65535):
            raise _port_argument_error(str(host), port)
        fields = (transport, host, port, path)
        text = format_address(*fields)
        parsed = parse_pure(text)
        if tuple(parsed) != fields:
            raise _e.AddressError(
                f"Failed to build an address from {fields!r}: it reads back as {tuple(parsed)!r}",
                code="SS_ERR_ADDR_FIELDS", address=text, offset=0, length=len(text),
                reason="fields do not form an address",
            )
        return parsed

    transport: Transport = property(itemgetter(0), doc="The transport (a :class:`Transport`).")  # type: ignore[assignment]
    host: str | None = property(itemgetter(1), doc="Host name or IP literal, without brackets.")  # type: ignore[assignment]
    port: int | None = property(itemgetter(2), doc="Port number, or None.")  # type: ignore[assignment]
    path: str | None = property(itemgetter(3), doc="unix/udg socket path, or None.")  # type: ignore[assignment]

    @property
    def secure(self) -> bool:
        """True when the transport starts TLS on connect."""
        return self[0] in _SECURE

    @property
    def abstract(self) -> bool:
        """True for a unix/udg path in Linux's abstract namespace (leading NUL)."""
        return self[3] is not None and self[3][:1] == "\0"

    def with_port(self, port: int | None) -> "Address":
        """The same address with another port (unix/udg take none)."""
        return Address(self[0], self[1], port, self[3])

    def __str__(self) -> str:
        return format_address(*self)

    def __repr__(self) -> str:
        t, host, port, path = self
        if path is not None:
            return f"Address(transport={t.value!r}, path={path!r})"
        return f"Address(transport={t.value!r}, host={host!r}, port={port!r})"

    def __getnewargs__(self) -> tuple[Transport, str | None, int | None, str | None]:
        return (self[0], self[1], self[2], self[3])  # pickled as the fields Address() takes


def format_address(transport: str, host: str | None, port: int | None, path: str | None) -> str:
    """The canonical text of an address: lowercase scheme, IPv6 in brackets."""
    if transport in _LOCAL:
        return f"{transport}://{path or ''}"
    host = host or ""
    if ":" in host:
        host = f"[{host}]"
    if port is None:
        return f"{transport}://{host}"
    return f"{transport}://{host}:{port}"


# --- the pure-Python parser ---------------------------------------------------

_TRANSPORTS = {t.value: t for t in Transport}
_SCHEME_CHARS = re.compile(r"[A-Za-z0-9+.\-]+")
# Controls, space, URL delimiters, and UTF-16 surrogates (no resolver takes
# them; undecodable input bytes arrive as surrogates).
_BAD_HOST_CHAR = re.compile(r"[\x00-\x20\x7f/?#@\[\]\\\ud800-\udfff]")
_BAD_HOST_CHARS = frozenset(map(chr, [*range(0x21), 0x7F, *b"/?#@[]\\", *range(0xD800, 0xE000)]))
_ZONE = re.compile(r"[A-Za-z0-9._~\-]+")
_IPV6_TEXT = re.compile(r"[0-9A-Fa-f:.]{1,45}")
_HOST_MAX = 255
_UNIX_PATH_MAX = 107
_UNIX_ABSTRACT_MAX = 108
_UINT32_MAX = 0xFFFFFFFF
_TCP = Transport.TCP
_UNIX = Transport.UNIX
_UDG = Transport.UDG
_inet_pton = socket.inet_pton
_AF_INET6 = socket.AF_INET6


def ip_literal(name: str) -> str | None:
    """The IP address in ``name`` (an IPv4 or IPv6 literal, zone id dropped), or
    None for a host name: IP literals get IP checks and no SNI, names a lookup."""
    host = name.partition("%")[0]
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return host
        except OSError:
            pass
    return None


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _is_ipv6_literal(text: str) -> bool:
    if len(text) > _HOST_MAX or (not text.isascii() and _utf8_len(text) > _HOST_MAX):
        return False
    addr, pct, zone = text.partition("%")
    if pct and not _ZONE.fullmatch(zone):
        return False
    if not _IPV6_TEXT.fullmatch(addr):
        return False
    try:
        _inet_pton(_AF_INET6, addr)
    except OSError:
        return False
    return True


def _fail(code: int, text: str, offset: int, length: int) -> _e.AddressError:
    return _e.address_error(code, text, offset, length, available_transports_pure())


@functools.cache
def available_transports_pure() -> tuple[str, ...]:
    """Transports usable with Python's ssl module, in canonical order."""
    import ssl

    unavailable = set()
    if not getattr(ssl, "HAS_SSLv2", False):
        unavailable.add(Transport.SSLV2)
    if not getattr(ssl, "HAS_SSLv3", False):
        unavailable.add(Transport.SSLV3)
    if not getattr(ssl, "HAS_TLSv1", True):
        unavailable.add(Transport.TLSV1_0)
    if not getattr(ssl, "HAS_TLSv1_1", True):
        unavailable.add(Transport.TLSV1_1)
    if not getattr(ssl, "HAS_TLSv1_3", True):
        unavailable.add(Transport.TLSV1_3)
    return tuple(t.value for t in Transport if t not in unavailable)


def _port(text: str, start: int) -> int:
    digits = text[start:]
    if not digits:
        raise _fail(_e.ADDR_PORT_EMPTY, text, start, 0)
    if not (digits.isascii() and digits.isdigit()):
        raise _fail(_e.ADDR_PORT_SYNTAX, text, start, len(digits))
    # Strip zeros first: int() refuses more than 4300 digits.
    value = int(digits.lstrip("0")[:6] or "0")
    if value > 65535:
        raise _fail(_e.ADDR_PORT_RANGE, text, start, len(digits))
    return value


def parse_pure(text: str) -> Address:
    """Parse one address in pure Python; the twin of ``ss_parse_address``."""
    if type(text) is not str:
        raise TypeError(f"address must be str, not {type(text).__name__}")
    n = len(text)
    if not n:
        raise _fail(_e.ADDR_EMPTY, text, 0, 0)
    if n > _UINT32_MAX // 4 and _utf8_len(text) > _UINT32_MAX:
        raise _fail(_e.ADDR_TOO_LONG, text, 0, 0)

    transport = _TCP
    start = 0
    sep = text.find("://")
    if sep >= 2:
        scheme = text[:sep]
        known = _TRANSPORTS.get(scheme) or (scheme.isascii() and _TRANSPORTS.get(scheme.lower()))
        if known:
            transport = known
            start = sep + 3
        elif _SCHEME_CHARS.fullmatch(scheme):
            raise _fail(_e.ADDR_UNKNOWN_TRANSPORT, text, 0, sep)

    if transport is _UNIX or transport is _UDG:
        return _path(transport, text, start)
    if start == n:
        raise _fail(_e.ADDR_HOST_EMPTY, text, start, 0)

    if text[start] == "[":
        close = text.find("]", start + 1)
        if close < 0:
            raise _fail(_e.ADDR_IPV6_BRACKET, text, start, n - start)
        host = text[start + 1 : close]
        if not _is_ipv6_literal(host):
            raise _fail(_e.ADDR_IPV6_INVALID, text, start + 1, len(host))
        after = close + 1
        if after == n:
            return _new(Address, (transport, host, None, None))
        if text[after] != ":":
            raise _fail(_e.ADDR_AFTER_BRACKET, text, after, n - after)
        return _new(Address, (transport, host, _port(text, after + 1), None))

    colon = text.find(":", start)
    if colon >= 0 and text.find(":", colon + 1) >= 0:
        host = text[start:]
        if not _is_ipv6_literal(host):
            raise _fail(_e.ADDR_COLONS, text, start, n - start)
        return _new(Address, (transport, host, None, None))
    host = text[start:colon] if colon >= 0 else text[start:]
    if not host:
        raise _fail(_e.ADDR_HOST_EMPTY, text, start, 0)
    if not _BAD_HOST_CHARS.isdisjoint(host):
        bad = _BAD_HOST_CHAR.search(host).start()  # type: ignore[union-attr]
        raise _fail(_e.ADDR_HOST_CHAR, text, start + bad, 1)
    if len(host) > _HOST_MAX or (not host.isascii() and _utf8_len(host) > _HOST_MAX):
        raise _fail(_e.ADDR_HOST_TOO_LONG, text, start, len(host))
    if colon < 0:
        return _new(Address, (transport, host, None, None))
    return _new(Address, (transport, host, _port(text, colon + 1), None))


def _path(transport: Transport, text: str, start: int) -> Address:
    path = text[start:]
    if not path:
        raise _fail(_e.ADDR_PATH_EMPTY, text, start, 0)
    size = len(path) if path.isascii() else _utf8_len(path)
    if path[0] == "\0":
        if size > _UNIX_ABSTRACT_MAX:
            raise _fail(_e.ADDR_PATH_TOO_LONG, text, start, len(path))
    else:
        if size > _UNIX_PATH_MAX:
            raise _fail(_e.ADDR_PATH_TOO_LONG, text, start, len(path))
        nul = path.find("\0")
        if nul >= 0:
            raise _fail(_e.ADDR_PATH_NUL, text, start + nul, 1)
    return _new(Address, (transport, None, None, path))


def unnamed(transport: Transport) -> Address:
    """The address of an unnamed unix or udg socket (a socketpair's end):
    ``unix://`` with an empty path, which no parse makes."""
    return _new(Address, (transport, None, None, ""))


def split_host_port(name: str) -> tuple[str, int] | None:
    """("host", port) of a socket name "127.0.0.1:80" or "[::1]:80"; None when
    it ends in no port (a unix path, "")."""
    host, sep, port = name.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return (host[1:-1] if host.startswith("[") else host), int(port)


def join(parse: Callable[[str], Address], host: str, port: int | None) -> Address:
    """PHP's ``fsockopen(host, port)`` joining, with ``parse`` as the parser.

    An IPv6 literal gets its brackets; ``port`` of ``None`` (or PHP's default
    ``-1``) means the address stands as it is, and so does 0 for a unix/udg
    path (the manual: a unix socket's port "should be set to 0"); a host that
    already names a port, or a unix/udg path with any other port, is an error
    rather than PHP's silent choice.
    """
    address = parse(host)
    if port is None or port == -1:
        return address
    if type(port) is not int or not 0 <= port <= 65535:
        raise _port_argument_error(host, port)
    if address[3] is not None:
        if port == 0:
            return address
        raise _e.address_error(_e.ADDR_PORT_UNEXPECTED, host, 0, len(host))
    if address[2] is not None:
        colon = host.rfind(":")  # the port already in the text follows its last ':'
        raise _e.address_error(_e.ADDR_PORT_TWICE, host, colon + 1, len(host) - colon - 1)
    return _new(Address, (address[0], address[1], port, None))


def _port_argument_error(host: str, port: object) -> _e.AddressError:
    """A port argument that is not an int in 0-65535, reported in ``host:port`` text."""
    text = f"{host}:{port}"
    return _e.address_error(_e.ADDR_PORT_RANGE, text, len(host) + 1, len(text) - len(host) - 1)


def check_errors_arg(errors: str) -> None:
    if errors not in ("raise", "return"):
        raise ValueError(f'errors must be "raise" or "return", not {errors!r}')


class AddressBatch(Sequence["Address | _e.AddressError"]):
    """Many addresses parsed at once (see :func:`streamsock.parse_batch`).

    Item ``i`` is the :class:`Address` of input ``i``, or the
    :class:`~streamsock.AddressError` it raised; ``failed`` counts the errors.
    The native backend keeps C records and builds each Python object only
    when it is asked for.
    """

    __slots__ = ()

    @property
    def failed(self) -> int:
        raise NotImplementedError

    def _item(self, index: int) -> Address | _e.AddressError:
        raise NotImplementedError

    def addresses(self, errors: str = "raise") -> list[Address | _e.AddressError]:
        """Every item as a list: ``errors="raise"`` raises the first error (its
        ``index`` attribute says which input), ``"return"`` keeps it in place."""
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> Address | _e.AddressError: ...
    @overload
    def __getitem__(self, index: slice) -> list[Address | _e.AddressError]: ...

    def __getitem__(self, index: int | slice) -> Address | _e.AddressError | list[Address | _e.AddressError]:
        if isinstance(index, slice):
            return [self._item(i) for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("AddressBatch index out of range")
        return self._item(index)

    def errors(self) -> list[tuple[int, "_e.AddressError"]]:
        """``(index, error)`` for every input that failed."""
        if not self.failed:
            return []
        return [(i, item) for i, item in enumerate(self.addresses("return")) if isinstance(item, _e.AddressError)]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {len(self)} addresses, {self.failed} failed>"


class PureAddressBatch(AddressBatch):
    """AddressBatch of the pure-Python parser: parsed eagerly, one call per address."""

    __slots__ = ("_items", "_failed")

    def __init__(self, parse: Callable[[str], Address], texts: Iterable[str]) -> None:
        self._items = _parse_each(parse, texts, "return")
        self._failed = sum(1 for item in self._items if type(item) is not Address)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def failed(self) -> int:
        return self._failed

    def _item(self, index: int) -> Address | _e.AddressError:
        return self._items[index]

    def addresses(self, errors: str = "raise") -> list[Address | _e.AddressError]:
        check_errors_arg(errors)
        if errors == "raise" and self._failed:
            for index, item in enumerate(self._items):
                if isinstance(item, _e.AddressError):
                    item.index = index
                    raise item
        return list(self._items)


def _parse_each(parse: Callable[[str], Address], texts: Iterable[str], errors: str) -> list[Address | _e.AddressError]:
    out: list[Address | _e.AddressError] = []
    append = out.append
    for text in texts:
        try:
            append(parse(text))
        except _e.AddressError as exc:
            if errors == "raise":
                exc.index = len(out)
                raise
            append(exc)
    return out


def parse_many_pure(texts: Iterable[str], errors: str = "raise") -> list[Address | _e.AddressError]:
    """``parse_many`` of the pure-Python backend."""
    check_errors_arg(errors)
    return _parse_each(parse_pure, texts, errors)
