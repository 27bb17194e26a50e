"""The pure-Python backend: the same internal surface as ``_native``, on the
standard library alone (``socket``, ``ssl``).

The parser lives in ``address.py`` beside the types it builds; this module is
the backend's face for ``_backend``.
"""

from __future__ import annotations

import ssl
from typing import Iterable

from .address import PureAddressBatch, Transport, available_transports_pure, parse_many_pure, parse_pure

NAME = "pure"

parse = parse_pure
parse_many = parse_many_pure


def parse_batch(texts: Iterable[str]) -> PureAddressBatch:
    return PureAddressBatch(parse_pure, texts)


def openssl_version() -> str:
    return ssl.OPENSSL_VERSION


def available_transports() -> tuple[str, ...]:
    return available_transports_pure()


def transport_available(transport: Transport) -> bool:
    return Transport(transport).value in available_transports_pure()
