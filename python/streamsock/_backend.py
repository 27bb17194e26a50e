"""Backend selection: the native C core when it is built, pure Python otherwise.

``STREAMSOCK_BACKEND=native`` or ``=pure`` chooses explicitly; asking for the
native backend when it is not built is an error, never a silent fallback.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from . import stream as _stream
from .address import Address, join

__all__ = ["Backend", "BackendUnavailableError", "get", "select"]

NAMES = ("native", "pure")
ENV = "STREAMSOCK_BACKEND"


class Backend:
    """One backend's public surface; ``streamsock``'s own functions are those
    of the active one. Obtain others with :func:`streamsock.get_backend`."""

    def __init__(self, impl: ModuleType) -> None:
        self._impl = impl
        self.name: str = impl.NAME
        self.parse = impl.parse
        self.parse_many = impl.parse_many
        self.parse_batch = impl.parse_batch

    def join(self, host: str, port: int | None = None) -> Address:
        """PHP ``fsockopen``-style joining of a host and a port into an Address."""
        return join(self.parse, host, port)

    def client(self, address, timeout=None, context=None, flags=_stream.CLIENT_CONNECT) -> _stream.Stream:
        """PHP's stream_socket_client; see :func:`streamsock.client`."""
        return _stream.client(self, address, timeout, context, flags)

    def fsockopen(self, host: str, port: int | None = None, timeout=None, context=None) -> _stream.Stream:
        """PHP's fsockopen; see :func:`streamsock.fsockopen`."""
        return _stream.fsockopen(self, host, port, timeout, context)

    def server(self, address, flags=_stream.SERVER_BIND | _stream.SERVER_LISTEN, context=None) -> _stream.Server:
        """PHP's stream_socket_server; see :func:`streamsock.server`."""
        return _stream.server(self, address, flags, context)

    def probe(self, targets, concurrency=100, timeout=5.0, context=None, *, connect_timeout=None,
              handshake_timeout=None, payload=b"", banner=0, capture_chain=False, starttls=None, rate=None,
              resume=False):
        """Probe many targets at once; see :func:`streamsock.probe`."""
        from .probe import ProbeOptions, probe

        options = ProbeOptions(concurrency, timeout, connect_timeout, handshake_timeout, payload, banner,
                               capture_chain, starttls, rate, resume)
        return probe(self, targets, context, options)

    def self_signed(self, name: str = "localhost", days: int = 30) -> tuple[str, str]:
        """A fresh self-signed certificate and key (PEM) for ``name``, 127.0.0.1
        and ::1: for local servers and tests, never for production trust."""
        return self._impl.self_signed(name, days)

    def openssl_version(self) -> str:
        """The OpenSSL this backend is linked to."""
        return self._impl.openssl_version()

    def available_transports(self) -> tuple[str, ...]:
        """The transports this backend can use with its OpenSSL."""
        return self._impl.available_transports()

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
            raise BackendUnavailableError(
                f"the {name} streamsock backend is not available ({exc}); "
                "reinstall streamsock with a C compiler and the OpenSSL headers "
                "(Debian: apt-get install gcc libssl-dev), or set STREAMSOCK_BACKEND=pure"
            ) from exc
        _loaded[name] = Backend(module)
    return _loaded[name]


def select() -> Backend:
    """The backend ``STREAMSOCK_BACKEND`` asks for, or native falling back to pure."""
    wanted = os.environ.get(ENV, "").strip().lower()
    if wanted:
        return get(wanted)
    try:
        return get("native")
    except BackendUnavailableError:
        return get("pure")


