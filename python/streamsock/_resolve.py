"""Name lookup on an event loop (``loop.getaddrinfo``), for asyncio clients and
the pure engine: the same flags, fallbacks and messages as the C core's
resolver (csrc/sock.c)."""

from __future__ import annotations

import asyncio
import socket

from . import errors as _e
from .address import Address


async def resolve(loop: asyncio.AbstractEventLoop, address: Address,
                  context_words: str | tuple[str, object] | None) -> list[str]:
    """The numeric hosts of ``address.host``, in getaddrinfo's order, looked up
    without blocking the loop."""
    stype = socket.SOCK_DGRAM if address.transport.datagram else socket.SOCK_STREAM
    flags = socket.AI_NUMERICSERV | socket.AI_ADDRCONFIG
    host, port = address.host, address.port or 0
    try:
        try:
            infos = await loop.getaddrinfo(host, port, type=stype, flags=flags)
        except socket.gaierror as exc:
            if exc.errno not in (socket.EAI_ADDRFAMILY, socket.EAI_NONAME, socket.EAI_NODATA):
                raise
            infos = await loop.getaddrinfo(host, port, type=stype, flags=flags & ~socket.AI_ADDRCONFIG)
    except socket.gaierror as exc:
        raise _e.error(_e.RESOLVE, f"getaddrinfo for {host} failed: {exc.strerror}", context=context_words) from None
    except UnicodeError as exc:
        raise _e.error(_e.RESOLVE, f"getaddrinfo for {host} failed: {exc}", context=context_words) from None
    hosts: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        numeric = str(sockaddr[0])  # a str for IP families; typeshed also allows other families
        if numeric not in hosts:
            hosts.append(numeric)
    if not hosts:
        raise _e.error(_e.RESOLVE, f"getaddrinfo for {host} failed: no addresses", context=context_words)
    return hosts
