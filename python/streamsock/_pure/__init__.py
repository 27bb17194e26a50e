"""The pure-Python backend: the surface ``_backend.BackendModule`` declares, on
the standard library alone (``socket``, ``ssl``, ``asyncio``).

Each module is the twin of a C source: ``conn`` (csrc/conn.c, sock.c),
``tls`` (tls.c), ``engine`` (engine.c, as asyncio tasks). The address parser
lives in ``address.py`` beside the types it builds.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Iterable

from ..certificate import Certificate as certificate
from ..address import PureAddressBatch, available_transports_pure, parse_many_pure, parse_pure
from .acceptor import Acceptor as acceptor
from .conn import DONE, WANT_READ, WANT_WRITE, PureConnection, adopt, open_client, open_server
from .engine import Engine as engine
from .tls import PureTLS, self_signed

if TYPE_CHECKING:
    from ..context import TLSSettings

Connection = PureConnection


NAME = "pure"

#: What this backend can do beyond the common surface (see _native.FEATURES).
FEATURES: frozenset[str] = frozenset()

parse = parse_pure
parse_many = parse_many_pure

__all__ = [
    "DONE", "FEATURES", "acceptor", "adopt", "NAME", "PureConnection", "WANT_READ", "WANT_WRITE",
    "available_transports", "certificate", "compile_tls", "engine", "open_client", "open_server", "openssl_version",
    "parse", "parse_batch", "parse_many", "self_signed",
]


def parse_batch(texts: Iterable[str]) -> PureAddressBatch:
    return PureAddressBatch(parse_pure, texts)


def openssl_version() -> str:
    return ssl.OPENSSL_VERSION


def available_transports() -> tuple[str, ...]:
    return available_transports_pure()


def compile_tls(settings: TLSSettings) -> PureTLS:
    return PureTLS(settings)
