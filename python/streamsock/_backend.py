"""The backend boundary: what a backend provides, checked when it loads, and
which one is used.

A backend is a package (``_native``: the C core; ``_pure``: the standard
library) whose module provides :class:`BackendModule`, whose connections
provide :class:`Connection` and whose engine provides :class:`Engine`.
Everything above it (``stream.py``, ``aio.py``, ``probe.py``) speaks only
through :class:`Backend`, never to a backend's module directly, and never
asks which backend it has: what differs is declared in ``FEATURES``.

``STREAMSOCK_BACKEND=native`` or ``=pure`` chooses explicitly; asking for the
native backend when it is not built is an error, never a silent fallback.
"""

from __future__ import annotations

import importlib
import os
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Container, Iterable, Protocol, TypeAlias, cast

from . import stream as _stream
from .address import Address, AddressBatch, Transport, join
from .errors import AddressError
from .certificate import Certificate
from .context import Context, TLSSettings, check_version_range
from ._types import BytesLike, EngineRecord, ErrorContext, ErrorRecord, TLSInfo

if TYPE_CHECKING:
    from .probe import ProbeOptions, ProbeRun

__all__ = [
    "Acceptor", "Backend", "BackendModule", "BackendUnavailableError", "Connection", "Engine", "describe", "get",
    "select",
]

NAMES = ("native", "pure")
ENV = "STREAMSOCK_BACKEND"

# What a connection's non-blocking calls return besides data (the C core's values).
DONE, WANT_READ, WANT_WRITE = 0, 1, 2

#: A backend's compiled TLS settings (``compile_tls``): opaque above the
#: boundary, handed back only to the backend that made it.
CompiledTLS: TypeAlias = Any


class Connection(Protocol):
    """One socket of a backend, as a non-blocking state machine.

    ``step`` advances connect / TLS handshake / TLS shutdown and returns DONE,
    WANT_READ or WANT_WRITE; errors raise the specific StreamSocketError and
    stick. ``read(size)`` returns bytes (``b""`` at end of stream) or a want:
    everything readable without waiting, up to ``size``, so a read that returns
    less than ``size`` leaves no complete data behind in a buffer of ours or
    of TLS, and waiting for the socket is then right. ``write`` writes as much
    as it can (count > 0, or -WANT_*). ``read_wait``/``write_wait`` are the
    blocking forms (one call each); ``run`` drives ``step`` to DONE blocking.
    ``context`` (str or (words, address)) prefixes a raised error's message.
    """

    @property
    def state(self) -> str: ...
    @property
    def is_tls(self) -> bool: ...
    def fileno(self) -> int: ...
    def step(self, context: ErrorContext = None) -> int: ...
    def run(self, timeout: float | None, context: ErrorContext = None) -> None: ...
    def wait(self, want: int, timeout: float | None) -> bool: ...
    def read(self, size: int) -> bytes | int: ...
    def read_wait(self, size: int, timeout: float | None) -> bytes | None: ...
    def write(self, data: BytesLike) -> int: ...
    def write_wait(self, data: BytesLike, timeout: float | None) -> int: ...
    def recvfrom(self, size: int, peek: bool = False) -> tuple[bytes, str] | int: ...
    def sendto(self, data: BytesLike, address: Address) -> int: ...
    def recv_oob(self, size: int) -> bytes | int: ...  # TCP urgent data; TLS refuses
    def send_oob(self, data: BytesLike) -> int: ...
    def accept(self) -> "Connection | None": ...
    def start_tls(self, tls: CompiledTLS, peer_name: str | None, verify_peer_name: bool, sni_enabled: bool,
                  session_from: "Connection | None" = None) -> None: ...
    def stop_tls(self) -> None: ...
    def shutdown(self, how: int) -> bool: ...  # False: TLS close_notify waits until writable; call again
    def interrupt(self) -> None: ...  # from another thread: wakes a call waiting on the socket
    def close(self) -> None: ...
    def pending(self) -> int: ...
    def name(self, peer: bool) -> str: ...
    def tls_info(self) -> TLSInfo: ...
    def peer_certs(self, chain: bool) -> list[bytes]: ...


class Engine(Protocol):
    """Many probes at once (``probe()``'s driver). ``add`` queues one; ``take``
    returns finished ones as records laid out as ``_native.engine.Engine.take``
    documents, waiting up to ``timeout_ms`` for the first."""

    def add(self, index: int, address: Address, tls: CompiledTLS, starttls_tls: CompiledTLS) -> None: ...
    def take(self, timeout_ms: int) -> list[EngineRecord]: ...
    def close(self) -> None: ...


class Acceptor(Protocol):
    """A listener's accepting and TLS handshakes, none waiting on another.

    ``run`` accepts what waits, steps every handshake whose socket is ready,
    ends those past ``handshake_timeout``, and returns the connections that
    are established (waiting up to ``timeout`` for one; [] when the time ran
    out, a signal came, ``wake`` was called, or a handshake accepted since the
    last ``begin`` failed: ``epoch_failure`` says which; the failures of
    handshakes accepted before are only counted). ``fileno`` is readable
    whenever ``run`` has work; ``next_timer`` says when a run is due without
    any event. ``stats``: (failed handshakes, accept errors, the last of each
    as (code, errno, message) or None); ``counts``: the two counts alone."""

    def fileno(self) -> int: ...
    def run(self, timeout: float | None) -> list[Connection]: ...
    def next_timer(self) -> float | None: ...
    def counts(self) -> tuple[int, int]: ...
    def stats(self) -> tuple[int, int, ErrorRecord | None, ErrorRecord | None]: ...
    def begin(self) -> None: ...
    def epoch_failure(self) -> ErrorRecord | None: ...
    def wake(self) -> None: ...
    def close(self) -> None: ...


_Connection = Connection  # for BackendModule, whose attribute of that name hides the protocol


class BackendModule(Protocol):
    """What a backend package's module provides."""

    NAME: str
    FEATURES: frozenset[str]
    Connection: type[_Connection]  # its connection class, checked against Connection
    engine: Callable[[ProbeOptions, Context], Engine]  # its engine class, checked against Engine
    acceptor: Callable[[_Connection, float | None], Acceptor]  # its acceptor class, checked against Acceptor

    def parse(self, text: str) -> Address: ...
    def parse_many(self, texts: Iterable[str], errors: str = "raise") -> list[Address | AddressError]: ...
    def parse_batch(self, texts: Iterable[str]) -> AddressBatch: ...
    def openssl_version(self) -> str: ...
    def available_transports(self) -> tuple[str, ...]: ...
    def compile_tls(self, settings: TLSSettings) -> CompiledTLS: ...
    def open_client(self, address: Address, context: Context, tls: CompiledTLS) -> _Connection: ...
    def open_server(self, address: Address, context: Context, tls: CompiledTLS) -> _Connection: ...
    def adopt(self, fd: int, address: Address) -> _Connection: ...  # owns fd from now on
    def self_signed(self, name: str, days: int) -> tuple[str, str]: ...
    def certificate(self, der: bytes) -> Certificate: ...  # ValueError when it cannot be read


def _members(protocol: type) -> set[str]:
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {name for name in vars(protocol) if not name.startswith("_")}
    return names


def _has(cls: type, name: str) -> bool:
    """The class defines ``name``, or declares it as an instance attribute."""
    return hasattr(cls, name) or any(name in getattr(c, "__annotations__", {}) for c in cls.__mro__)


def _check_surface(module: ModuleType) -> None:
    """A backend that lacks part of the surface fails when it loads, not mid-call."""
    missing = [name for name in sorted(_members(BackendModule)) if not hasattr(module, name)]
    for attribute, protocol in (("Connection", Connection), ("engine", Engine), ("acceptor", Acceptor)):
        cls = getattr(module, attribute, None)
        if cls is not None:
            missing += [f"{attribute}.{name}" for name in sorted(_members(protocol)) if not _has(cls, name)]
    if missing:
        raise BackendUnavailableError(f"the {module.__name__} backend lacks {', '.join(missing)}")


_TLS_CACHE_MAX = 256  # compiled TLS contexts kept per backend


class Backend:
    """One backend's public surface; ``streamsock``'s own functions are those
    of the active one. Obtain others with :func:`streamsock.get_backend`.

    It also keeps what the backend compiles from a Context (TLS contexts),
    keyed by the Context's options, so a Context never holds backend state."""

    def __init__(self, loaded: ModuleType) -> None:
        _check_surface(loaded)
        module = cast(BackendModule, loaded)  # what _check_surface has just checked
        self.name: str = module.NAME
        self.features: frozenset[str] = module.FEATURES
        self.parse = module.parse
        self.parse_many = module.parse_many
        self.parse_batch = module.parse_batch
        self.open_client = module.open_client
        self.open_server = module.open_server
        self.adopt = module.adopt
        self.certificate = module.certificate
        self._module = module
        self._tls_by_use: dict[tuple[object, bool, Transport | None, int | None], CompiledTLS] = {}
        self._tls_by_settings: dict[TLSSettings, CompiledTLS] = {}
        self._lock = threading.Lock()
        from ._persistent import PersistentStreams

        #: Persistent client streams (pfsockopen, CLIENT_PERSISTENT), per process.
        self.persistent = PersistentStreams()

    # -- for the drivers (stream.py, aio.py, probe.py) ----------------------------------------

    def tls_context(self, context: Context, server: bool, transport: Transport | None = None,
                    method: int | None = None) -> CompiledTLS:
        """The compiled TLS context for one use of ``context``: computed and
        built once, then a dictionary look-up per connection. Contexts with the
        same settings share one."""
        key = (context.cache_key, server, transport, method)
        found = self._tls_by_use.get(key)
        if found is None:
            settings = check_version_range(context.tls_settings(server, transport, method), self)
            with self._lock:
                found = self._tls_by_settings.get(settings)
                if found is None:
                    if len(self._tls_by_settings) >= _TLS_CACHE_MAX:
                        self._tls_by_settings.clear()  # connections keep what they use alive
                    found = self._tls_by_settings[settings] = self._module.compile_tls(settings)
                if len(self._tls_by_use) >= _TLS_CACHE_MAX:
                    self._tls_by_use.clear()
                self._tls_by_use[key] = found
        return found

    def engine(self, options: ProbeOptions, context: Context) -> Engine:
        """A probe engine for ``options`` (probe.ProbeOptions) and ``context``."""
        return self._module.engine(options, context)

    def acceptor(self, listener: Connection, handshake_timeout: float | None) -> Acceptor:
        """The acceptor of a listening connection (each handshake within
        ``handshake_timeout`` seconds; None: no limit)."""
        return self._module.acceptor(listener, handshake_timeout)

    # -- the public surface -------------------------------------------------------------------

    def join(self, host: str, port: int | None = None) -> Address:
        """PHP ``fsockopen``-style joining of a host and a port into an Address."""
        return join(self.parse, host, port)

    def client(self, address: Address | str, timeout: float | None = None, context: Context | None = None,
               flags: int = _stream.CLIENT_CONNECT) -> _stream.Stream:
        """PHP's stream_socket_client; see :func:`streamsock.client`."""
        return _stream.client(self, address, timeout, context, flags)

    def fsockopen(self, host: str, port: int | None = None, timeout: float | None = None,
                  context: Context | None = None) -> _stream.Stream:
        """PHP's fsockopen; see :func:`streamsock.fsockopen`."""
        return _stream.fsockopen(self, host, port, timeout, context)

    def pfsockopen(self, host: str, port: int | None = None, timeout: float | None = None,
                   context: Context | None = None) -> _stream.Stream:
        """PHP's pfsockopen; see :func:`streamsock.pfsockopen`."""
        return _stream.fsockopen(self, host, port, timeout, context, _stream.CLIENT_PERSISTENT)

    def socket_pair(self, domain: int = _stream.PF_UNIX, type: int = _stream.SOCK_STREAM,
                    protocol: int = _stream.IPPROTO_IP) -> tuple[_stream.Stream, _stream.Stream]:
        """PHP's stream_socket_pair; see :func:`streamsock.socket_pair`."""
        return _stream.socket_pair(self, domain, type, protocol)

    def server(self, address: Address | str, flags: int = _stream.SERVER_BIND | _stream.SERVER_LISTEN,
               context: Context | None = None, *, handshake_timeout: float | None = None) -> _stream.Server:
        """PHP's stream_socket_server; see :func:`streamsock.server`."""
        return _stream.server(self, address, flags, context, handshake_timeout)

    def probe(self, targets: Iterable[str | Address], concurrency: int = 100, timeout: float = 5.0,
              context: Context | None = None, *, connect_timeout: float | None = None,
              handshake_timeout: float | None = None, payload: bytes = b"", banner: int = 0,
              capture_chain: bool = False, starttls: str | None = None, rate: float | None = None,
              resume: bool = False, shard: tuple[int, int] | None = None, seed: int = 0,
              skip: Container[int] | None = None) -> ProbeRun:
        """Probe many targets at once; see :func:`streamsock.probe`."""
        from .probe import ProbeOptions, probe
        from .shard import Selection

        options = ProbeOptions(concurrency, timeout, connect_timeout, handshake_timeout, payload, banner,
                               capture_chain, starttls, rate, resume)
        return probe(self, targets, context, options, Selection.of(shard, seed, skip))

    def self_signed(self, name: str = "localhost", days: int = 30) -> tuple[str, str]:
        """A fresh self-signed certificate and key (PEM) for ``name``, 127.0.0.1
        and ::1: for local servers and tests, never for production trust."""
        return self._module.self_signed(name, days)

    def openssl_version(self) -> str:
        """The OpenSSL this backend is linked to."""
        return self._module.openssl_version()

    def available_transports(self) -> tuple[str, ...]:
        """The transports this backend can use with its OpenSSL."""
        return self._module.available_transports()

    def __repr__(self) -> str:
        return f"<streamsock backend {self.name!r}>"


_loaded: dict[str, Backend] = {}


class BackendUnavailableError(ImportError):
    """The requested backend cannot be loaded."""


def get(name: str) -> Backend:
    """The backend called ``name`` ("native" or "pure")."""
    if name not in NAMES:
        raise ValueError(f"unknown streamsock backend {name!r}; choose one of {', '.join(NAMES)}")
    if name not in _loaded:
        try:
            module = importlib.import_module(f"._{name}", __package__)
        except ImportError as exc:
            raise BackendUnavailableError(_unavailable_message(name, exc)) from exc
        _loaded[name] = Backend(module)
    return _loaded[name]


_GET_NATIVE = ("install a C compiler and the OpenSSL 3 headers (Debian: apt-get install gcc libssl-dev) and "
               "reinstall streamsock, bypassing pip's cache of the wheel built without it "
               "(pip install --force-reinstall --no-cache-dir streamsock, or . in its source tree)")


def _native_not_built() -> str | None:
    """Why the C core was not built, when this streamsock was installed without
    it (the pure wheel ships the reason CMake gave as ``_native_skipped``)."""
    try:
        reason: str = importlib.import_module("._native_skipped", __package__).REASON
    except ImportError:
        return None
    return reason


def _unavailable_message(name: str, exc: ImportError) -> str:
    not_built = _native_not_built() if name == "native" else None
    if not_built:
        return (f"the native streamsock backend is not available: this streamsock was installed without its "
                f"C core ({not_built}); to get it, {_GET_NATIVE}; or set STREAMSOCK_BACKEND=pure")
    return (f"the {name} streamsock backend is not available ({exc}); {_GET_NATIVE}; "
            "or set STREAMSOCK_BACKEND=pure")


def describe(backend: Backend) -> str:
    """``backend``'s name, and why the native core is missing when it is:
    "native backend", or "pure backend (native core not built: <reason>)"."""
    words = f"{backend.name} backend"
    if backend.name == "native":
        return words
    try:
        get("native")
    except BackendUnavailableError as exc:
        not_built = _native_not_built()
        why = f"not built: {not_built}" if not_built else f"not loadable: {exc.__cause__ or exc}"
        return f"{words} (native core {why})"
    return words


def select() -> Backend:
    """The backend ``STREAMSOCK_BACKEND`` asks for, or native falling back to pure."""
    wanted = os.environ.get(ENV, "").strip().lower()
    if wanted:
        return get(wanted)
    try:
        return get("native")
    except BackendUnavailableError:
        return get("pure")
