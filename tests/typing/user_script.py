"""What a user's script sees under ``mypy --strict``: checked by
tests/test_types.py (never run; it needs no peer)."""

from __future__ import annotations

import asyncio
from typing import Any, assert_type

import streamsock as ss
from streamsock.certificate import Certificate


def blocking(s: ss.Stream) -> None:
    assert_type(s.read(), bytes)
    assert_type(s.read(-1), bytes)
    assert_type(s.readline(), bytes)
    assert_type(s.read_nowait(), bytes | None)
    assert_type(s.readline_nowait(), bytes | None)
    assert_type(s.recvfrom(100, ss.PEEK), tuple[bytes, str])
    assert_type(s.write(b"x"), int)
    for line in s:
        assert_type(line, bytes)
    meta = s.meta
    assert_type(meta, ss.StreamMeta)
    assert_type(meta["timed_out"], bool)
    assert_type(meta["unread_bytes"], int)
    crypto = s.crypto
    if crypto is not None:
        assert_type(crypto["protocol"], str)
        assert_type(crypto["cipher_bits"], int)
    info = s.tls_info
    if info is not None:
        assert_type(info["session_reused"], bool)
    assert_type(s.peer_certificate, Certificate | None)
    assert_type(s.enable_crypto(True, ss.CRYPTO_METHOD_TLS_CLIENT), bool)


def servers() -> None:
    with ss.server("tcp://127.0.0.1:0") as srv:
        stream, peer = srv.accept(timeout=5)
        assert_type(stream, ss.Stream)
        assert_type(peer, str)
        ready, _, _ = ss.select([stream], [], [], 0)
        assert_type(ready, list[ss.Stream])
    with ss.server("udp://127.0.0.1:0", flags=ss.SERVER_BIND) as udp:
        assert_type(udp.recvfrom(512), tuple[bytes, str])


def parsing(lines: list[str]) -> None:
    assert_type(ss.parse_many(lines), list[ss.Address])
    assert_type(ss.parse_many(lines, errors="return"), list[ss.Address | ss.AddressError])
    address = ss.parse("tls://[::1]:443")
    assert_type(address.port, int | None)
    assert_type(address.transport, ss.Transport)


def probing(targets: list[str]) -> None:
    run = ss.probe(targets, concurrency=10, timeout=2)
    assert_type(run, ss.ProbeRun)
    for r in run:
        assert_type(r, ss.ProbeResult)
        assert_type(r.ok, bool)
        assert_type(r.tls_version, str | None)
        assert_type(r.certificate, Certificate | None)
        assert_type(r.trusted, bool | None)
        assert_type(r.to_dict(), dict[str, Any])  # JSON-ready values
    assert_type(run.in_flight, int)
    run.close()


async def with_asyncio() -> None:
    async with await ss.aio.client("tls://127.0.0.1:8443", timeout=5) as s:
        assert_type(await s.read(), bytes)
        assert_type(await s.readline(), bytes)
        assert_type(s.meta, ss.StreamMeta)
    transport, protocol = await ss.aio.create_connection(asyncio.Protocol, "tcp://127.0.0.1:80", timeout=5)
    assert_type(protocol, asyncio.Protocol)
