"""The native backend: the C core (``_core``, built from csrc/) behind the
backend surface ``_backend.BackendModule`` declares.

The modules here mirror csrc/ and are the only ones that import ``_core``:
``parse`` (url.c), ``tls`` (tls.c), ``conn`` (conn.c, sock.c), ``engine``
(engine.c, engine_thread.c).
"""

from __future__ import annotations

from ._core import ffi, lib
from .acceptor import Acceptor as acceptor
from .certinfo import describe as certificate
from .conn import DONE, WANT_READ, WANT_WRITE, NativeConnection, adopt, open_client, open_server
from .engine import Engine as engine

Connection = NativeConnection
from .parse import available_transports, parse, parse_batch, parse_many
from .tls import compile_tls, self_signed

NAME = "native"

#: What this backend can do beyond the common surface.
FEATURES = frozenset({"key_exchange_group", "allow_self_signed_chain", "group_list"})

__all__ = [
    "DONE", "FEATURES", "acceptor", "adopt", "NAME", "NativeConnection", "WANT_READ", "WANT_WRITE",
    "available_transports", "certificate", "compile_tls", "engine", "error_table", "open_client", "open_server",
    "openssl_version", "parse", "parse_batch", "parse_many", "self_signed",
]


def openssl_version() -> str:
    version: str = ffi.string(lib.ss_openssl_version()).decode()
    return version


def error_table() -> dict[int, tuple[str, str]]:
    """The C error table, as errors.ERROR_CODES lays out the Python one."""
    table: dict[int, tuple[str, str]] = {}
    for name in dir(lib):
        if name == "SS_OK" or name.startswith("SS_ERR_"):
            code = getattr(lib, name)
            table[code] = (
                ffi.string(lib.ss_error_name(code)).decode(),
                ffi.string(lib.ss_error_message(code)).decode(),
            )
    return table
