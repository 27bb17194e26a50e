"""Context: PHP's ``ssl`` and ``socket`` stream-context options, typed and checked.

``Context(ssl={...}, socket={...})`` takes PHP's option names. Unknown names
and wrong types raise at construction, so a typo is an error rather than a
silently ignored option. A Context holds options only: each backend compiles
them (one OpenSSL ``SSL_CTX`` per role and version range, the CA bundle loaded
once) on first use and caches the result under ``cache_key``, which changes
whenever an option does.
"""

from __future__ import annotations

import difflib
import os
import threading
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping

from . import errors as _e
from .address import Address, Transport, parse_pure

if TYPE_CHECKING:
    from ._backend import Backend

# PHP's STREAM_CRYPTO_METHOD_* (bit 0: client; then one bit per version) ...
CRYPTO_METHOD_SSLv2_CLIENT = 3
CRYPTO_METHOD_SSLv3_CLIENT = 5
CRYPTO_METHOD_SSLv23_CLIENT = 57
CRYPTO_METHOD_TLSv1_0_CLIENT = 9
CRYPTO_METHOD_TLSv1_1_CLIENT = 17
CRYPTO_METHOD_TLSv1_2_CLIENT = 33
CRYPTO_METHOD_TLSv1_3_CLIENT = 65
CRYPTO_METHOD_TLS_CLIENT = 121
CRYPTO_METHOD_TLS_ANY_CLIENT = 121
CRYPTO_METHOD_ANY_CLIENT = 127
CRYPTO_METHOD_SSLv2_SERVER = 2
CRYPTO_METHOD_SSLv3_SERVER = 4
CRYPTO_METHOD_SSLv23_SERVER = 120
CRYPTO_METHOD_TLSv1_0_SERVER = 8
CRYPTO_METHOD_TLSv1_1_SERVER = 16
CRYPTO_METHOD_TLSv1_2_SERVER = 32
CRYPTO_METHOD_TLSv1_3_SERVER = 64
CRYPTO_METHOD_TLS_SERVER = 120
CRYPTO_METHOD_TLS_ANY_SERVER = 120
CRYPTO_METHOD_ANY_SERVER = 126
# ... and STREAM_CRYPTO_PROTO_* for min_proto_version / max_proto_version.
CRYPTO_PROTO_SSLv3 = 4
CRYPTO_PROTO_TLSv1_0 = 8
CRYPTO_PROTO_TLSv1_1 = 16
CRYPTO_PROTO_TLSv1_2 = 32
CRYPTO_PROTO_TLSv1_3 = 64

# Version bits -> OpenSSL protocol version numbers (SSL3_VERSION, TLS1_x_VERSION).
_SSL2, _SSL3, _TLS10, _TLS11, _TLS12, _TLS13 = 0x0002, 0x0300, 0x0301, 0x0302, 0x0303, 0x0304
_VERSION_BITS = ((1 << 1, _SSL2), (1 << 2, _SSL3), (1 << 3, _TLS10), (1 << 4, _TLS11), (1 << 5, _TLS12), (1 << 6, _TLS13))
VERSION_NAMES = {_SSL2: "SSLv2", _SSL3: "SSLv3", _TLS10: "TLSv1.0", _TLS11: "TLSv1.1", _TLS12: "TLSv1.2", _TLS13: "TLSv1.3"}
_TRANSPORT_VERSION = {
    Transport.SSLV2: _SSL2,
    Transport.SSLV3: _SSL3,
    Transport.TLSV1_0: _TLS10,
    Transport.TLSV1_1: _TLS11,
    Transport.TLSV1_2: _TLS12,
    Transport.TLSV1_3: _TLS13,
}
_VERSION_TRANSPORT = {v: t for t, v in _TRANSPORT_VERSION.items()}

DEFAULT_SOCKET_TIMEOUT = 60.0  # PHP's default_socket_timeout

# TLS 1.2 suites when the ``ciphers`` option is not given: forward secrecy and
# no SHA-1 (the list CPython's ssl module uses), so both backends offer the
# same suites. Narrower than PHP's list (see the README's Differences from PHP).
# TLS 1.3 suites are not affected.
DEFAULT_CIPHERS = "ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"
# ... and when every version allowed is older than TLS 1.2 (tlsv1.0://, say),
# where the list above has no suite to offer: OpenSSL's own list (OpenSSL 3
# allows those versions only at security_level 0). A range that includes TLS
# 1.2 keeps the list above: PHP code asks for CRYPTO_METHOD_TLS_CLIENT (1.0 to
# 1.3) as a matter of course.
LEGACY_CIPHERS = "DEFAULT"


_INT32_MAX = 0x7FFFFFFF  # integer options reach C as int32


def _is_text(value: Any) -> bool:
    # A NUL would cut the C string short: "localhost\0.evil" must not verify as "localhost".
    return isinstance(value, str) and "\0" not in value


def _is_path(value: Any) -> bool:
    return _is_text(value) or (isinstance(value, os.PathLike) and "\0" not in os.fspath(value))


def _is_fingerprint(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values()))


def _is_alpn(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))


def _is_sni_certs(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and (_is_path(v) or (isinstance(v, Mapping) and "local_cert" in v)) for k, v in value.items()
    )


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_bool(value: Any) -> bool:
    return type(value) is bool


# name -> (check, what the check wants)
_SSL_OPTIONS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "verify_peer": (_is_bool, "bool"),
    "verify_peer_name": (_is_bool, "bool"),
    "allow_self_signed": (_is_bool, "bool"),
    "cafile": (_is_path, "path"),
    "capath": (_is_path, "path"),
    "local_cert": (_is_path, "path"),
    "local_pk": (_is_path, "path"),
    "passphrase": (_is_text, "str without NUL"),
    "peer_name": (lambda v: _is_text(v) and v != "", "non-empty str without NUL"),
    "verify_depth": (lambda v: _is_int(v) and 0 <= v <= _INT32_MAX, "int 0-2147483647"),
    "ciphers": (_is_text, "str without NUL"),
    "capture_peer_cert": (_is_bool, "bool"),
    "capture_peer_cert_chain": (_is_bool, "bool"),
    "SNI_enabled": (_is_bool, "bool"),
    "disable_compression": (_is_bool, "bool"),
    "peer_fingerprint": (_is_fingerprint, "hex str or {algorithm: hex}"),
    "security_level": (lambda v: _is_int(v) and 0 <= v <= 5, "int 0-5"),
    "alpn_protocols": (_is_alpn, "'h2,http/1.1' or a list of str"),
    "crypto_method": (lambda v: _is_int(v) and 0 < v < 128, "a CRYPTO_METHOD_* constant"),
    "min_proto_version": (lambda v: _is_int(v) and v in (4, 8, 16, 32, 64), "a CRYPTO_PROTO_* constant"),
    "max_proto_version": (lambda v: _is_int(v) and v in (4, 8, 16, 32, 64), "a CRYPTO_PROTO_* constant"),
    "SNI_server_certs": (_is_sni_certs, "{name: cert path or {'local_cert': ..., 'local_pk': ...}}"),
    "honor_cipher_order": (_is_bool, "bool"),
    "no_ticket": (_is_bool, "bool"),
    "ecdh_curve": (lambda v: _is_text(v) and v.strip(": ") != "", "group list str, 'X25519:P-256'"),
    "dh_param": (_is_path, "path"),
    # Accepted for PHP's sake, with no effect: OpenSSL 3 always makes a fresh
    # DH key, and renegotiation is refused outright (see README).
    "single_dh_use": (_is_bool, "bool"),
    "reneg_limit": (lambda v: _is_int(v) and -1 <= v <= _INT32_MAX, "int -1-2147483647"),
    "reneg_window": (lambda v: _is_int(v) and 0 <= v <= _INT32_MAX, "int 0-2147483647 (seconds)"),
}

_SOCKET_OPTIONS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "bindto": (_is_text, "'ip:port' str"),
    "backlog": (lambda v: _is_int(v) and 0 <= v <= _INT32_MAX, "int 0-2147483647"),
    "ipv6_v6only": (_is_bool, "bool"),
    "so_reuseport": (_is_bool, "bool"),
    "so_broadcast": (_is_bool, "bool"),
    "tcp_nodelay": (_is_bool, "bool"),
    "so_reuseaddr": (_is_bool, "bool"),
    "so_keepalive": (_is_bool, "bool"),
    "tcp_keepidle": (lambda v: _is_int(v) and 1 <= v <= 32767, "int 1-32767 (seconds)"),
    "tcp_keepintvl": (lambda v: _is_int(v) and 1 <= v <= 32767, "int 1-32767 (seconds)"),
    "tcp_keepcnt": (lambda v: _is_int(v) and 1 <= v <= 127, "int 1-127"),
    "so_linger": (lambda v: _is_int(v) and 0 <= v <= 65535, "int 0-65535 (seconds; 0: close resets)"),
    "so_rcvbuf": (lambda v: _is_int(v) and 1 <= v <= _INT32_MAX // 2, "int 1-1073741823 (bytes)"),
    "so_sndbuf": (lambda v: _is_int(v) and 1 <= v <= _INT32_MAX // 2, "int 1-1073741823 (bytes)"),
}


def _check(kind: str, given: Mapping[str, Any] | None,
           schema: dict[str, tuple[Callable[[Any], bool], str]]) -> dict[str, Any]:
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise TypeError(f"{kind} options must be a dict, not {type(given).__name__}")
    out = {}
    for name, value in given.items():
        if name not in schema:
            close = difflib.get_close_matches(str(name), schema, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown {kind} context option {name!r}{hint}")
        check, wanted = schema[name]
        if not check(value):
            shown = "a value of type " + type(value).__name__ if name == "passphrase" else repr(value)
            raise TypeError(f"{kind} context option {name!r} must be {wanted}, not {shown}")
        out[name] = value
    return out


def alpn_wire(protocols: str | list[str] | tuple[str, ...]) -> bytes:
    """ALPN names in TLS wire format (each prefixed with its length)."""
    names = protocols.split(",") if isinstance(protocols, str) else list(protocols)
    wire = bytearray()
    for name in (n.strip() for n in names):
        encoded = name.encode("ascii")
        if not 0 < len(encoded) < 256:
            raise ValueError(f"invalid ALPN protocol name {name!r}")
        wire.append(len(encoded))
        wire += encoded
    return bytes(wire)


@dataclass(frozen=True)
class TLSSettings:
    """What a compiled TLS context is made of: options resolved for one role
    and version range. Hashable, so compiled contexts can be cached on it."""

    server: bool
    min_version: int
    max_version: int
    verify_peer: bool
    allow_self_signed: bool
    verify_depth: int
    security_level: int
    disable_compression: bool
    honor_cipher_order: bool
    cafile: str | None
    capath: str | None
    local_cert: str | None
    local_pk: str | None
    passphrase: str | None = field(repr=False)
    ciphers: str | None
    alpn: bytes
    sni_certs: tuple[tuple[str, str, str | None], ...]
    no_ticket: bool = False
    groups: str | None = None      # ecdh_curve: the key-exchange groups, OpenSSL's list syntax
    dh_param: str | None = None    # servers: DH parameters (PEM) for the DHE suites


def version_range(mask: int) -> tuple[int, int]:
    """A CRYPTO_METHOD_* mask as the range from its lowest to its highest version."""
    versions = [v for bit, v in _VERSION_BITS if mask & bit]
    if not versions:
        raise ValueError(f"crypto method {mask} names no protocol version")
    return min(versions), max(versions)


class Context:
    """PHP's stream context: ``ssl`` and ``socket`` options.

    >>> ctx = Context(ssl={"cafile": "ca.pem", "peer_name": "mail.example.com"},
    ...               socket={"tcp_nodelay": True})
    """

    __slots__ = ("_ssl", "_socket", "_key", "_lock")

    def __init__(self, ssl: Mapping[str, Any] | None = None, socket: Mapping[str, Any] | None = None) -> None:
        self._ssl: dict[str, Any] = {}
        self._socket: dict[str, Any] = {}
        self._key = _CacheKey()
        self._lock = threading.Lock()
        self._apply(_check("ssl", ssl, _SSL_OPTIONS), _check("socket", socket, _SOCKET_OPTIONS))

    def _apply(self, ssl: dict[str, Any], socket: dict[str, Any]) -> None:
        if "alpn_protocols" in ssl:
            alpn_wire(ssl["alpn_protocols"])  # fail now, not at connect
        if "peer_fingerprint" in ssl:
            from .certificate import parse_fingerprint_spec

            parse_fingerprint_spec(ssl["peer_fingerprint"])
        if "crypto_method" in ssl:
            version_range(ssl["crypto_method"])
        with self._lock:
            self._ssl.update(ssl)
            self._socket.update(socket)
            self._key = _CacheKey()

    @property
    def cache_key(self) -> object:
        """Identifies this Context's current options: a backend caches what it
        compiles from them under it. A new one after every set_option."""
        return self._key

    @property
    def ssl(self) -> Mapping[str, Any]:
        """The ssl options (read-only: change them with :meth:`set_option`;
        a passphrase reads back as "***")."""
        if "passphrase" in self._ssl:
            return MappingProxyType({**self._ssl, "passphrase": "***"})
        return MappingProxyType(self._ssl)

    @property
    def socket(self) -> Mapping[str, Any]:
        """The socket options (read-only: change them with :meth:`set_option`)."""
        return MappingProxyType(self._socket)

    def set_option(self, wrapper: str, name: str, value: Any) -> None:
        """PHP's stream_context_set_option: ``set_option("ssl", "verify_peer", False)``.
        Streams opened afterwards use the new value."""
        if wrapper == "ssl":
            self._apply(_check("ssl", {name: value}, _SSL_OPTIONS), {})
        elif wrapper == "socket":
            self._apply({}, _check("socket", {name: value}, _SOCKET_OPTIONS))
        else:
            raise ValueError(f'unknown context wrapper {wrapper!r}; streamsock has "ssl" and "socket"')

    def __repr__(self) -> str:
        shown = {k: ("***" if k == "passphrase" else v) for k, v in self._ssl.items()}
        return f"Context(ssl={shown!r}, socket={self._socket!r})"

    # -- TLS ------------------------------------------------------------------

    def tls_settings(self, server: bool, transport: Transport | None = None, method: int | None = None) -> TLSSettings:
        """The TLS settings for a connection: ``transport`` pins a version
        (tlsv1.x://); otherwise ``method`` (enable_crypto) or the
        ``crypto_method`` option gives the range, and TLS 1.2+ is the default."""
        o = self._ssl
        low, high = _TLS12, 0
        if transport in _TRANSPORT_VERSION:  # tlsv1.x:// pins its version; nothing widens it
            low = high = _TRANSPORT_VERSION[transport]
        else:
            if method is not None or "crypto_method" in o:
                low, high = version_range(method if method is not None else o["crypto_method"])
            if "min_proto_version" in o:
                low = dict(_VERSION_BITS)[o["min_proto_version"]]
            if "max_proto_version" in o:
                high = dict(_VERSION_BITS)[o["max_proto_version"]]
        sni = tuple(
            (name, str(v), None) if _is_path(v) else (name, str(v["local_cert"]), _opt_path(v.get("local_pk")))
            for name, v in o.get("SNI_server_certs", {}).items()
        )
        return TLSSettings(
            server=server,
            min_version=low,
            max_version=high,
            verify_peer=o.get("verify_peer", not server),
            allow_self_signed=o.get("allow_self_signed", False),
            verify_depth=o.get("verify_depth", -1),
            security_level=o.get("security_level", -1),
            disable_compression=o.get("disable_compression", True),
            honor_cipher_order=o.get("honor_cipher_order", False),
            cafile=_opt_path(o.get("cafile")),
            capath=_opt_path(o.get("capath")),
            local_cert=_opt_path(o.get("local_cert")),
            local_pk=_opt_path(o.get("local_pk")),
            passphrase=o.get("passphrase"),
            ciphers=o.get("ciphers", LEGACY_CIPHERS if 0 < high < _TLS12 else DEFAULT_CIPHERS),
            alpn=alpn_wire(o["alpn_protocols"]) if "alpn_protocols" in o else b"",
            sni_certs=sni,
            no_ticket=o.get("no_ticket", False),
            groups=o.get("ecdh_curve"),
            dh_param=_opt_path(o.get("dh_param")) if server else None,  # a client has no use for it
        )

    # -- per connection -----------------------------------------------------------

    def peer_name(self, address: Address) -> str | None:
        return self._ssl.get("peer_name", address.host)

    @property
    def verify_peer_name(self) -> bool:
        return bool(self._ssl.get("verify_peer_name", True))

    @property
    def sni_enabled(self) -> bool:
        return bool(self._ssl.get("SNI_enabled", True))

    def bindto(self, local: bool = False) -> tuple[str | None, int]:
        """socket option ``bindto`` ("ip:port", "0:7000", "[::1]:0") as (host or
        None, port or -1); for unix/udg (``local``) the path as it is."""
        text = self._socket.get("bindto")
        if text is None:
            return None, -1
        if local:
            return text, -1
        address = parse_pure(text)
        host = address.host
        if host in ("0", "0.0.0.0", "*", ""):
            host = None
        return host, -1 if address.port is None else address.port


class _CacheKey:
    """A unique, cheaply hashed token (hash and equality by identity)."""

    __slots__ = ("__weakref__",)


def _opt_path(value: Any) -> str | None:
    return None if value is None else os.fspath(value)


DEFAULT_CONTEXT = Context()


def check_transport_available(address: Address, backend: Backend) -> None:
    """sslv2:// and sslv3:// (and any pinned version the OpenSSL lacks) fail clearly."""
    if address.transport.value not in backend.available_transports():
        text = str(address)
        raise _e.UnsupportedTransportError(
            f'the "{address.transport.value}" transport is not supported by the linked {backend.openssl_version()}',
            code="SS_ERR_UNSUPPORTED",
            address=text,
            offset=0,
            length=len(address.transport.value),
            reason="transport not supported by OpenSSL",
        )


def check_version_range(settings: TLSSettings, backend: Backend) -> TLSSettings:
    """Clamp a range to the versions the OpenSSL has; a range with none left is an error."""
    available = backend.available_transports()
    usable = [v for v in sorted(VERSION_NAMES) if _VERSION_TRANSPORT[v].value in available]
    high = settings.max_version or max(usable)
    low = settings.min_version
    candidates = [v for v in usable if low <= v <= high]
    if not candidates:
        asked = VERSION_NAMES.get(low, hex(low)) + ("" if high == low else f"-{VERSION_NAMES.get(high, hex(high))}")
        raise _e.UnsupportedTransportError(
            f"{asked} is not supported by the linked {backend.openssl_version()}",
            code="SS_ERR_UNSUPPORTED",
            address=asked,
            offset=0,
            length=len(asked),
            reason="protocol version not supported by OpenSSL",
        )
    if candidates[0] == low:
        return settings
    from dataclasses import replace

    return replace(settings, min_version=candidates[0])
