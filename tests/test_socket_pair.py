"""socket_pair (PHP's stream_socket_pair) on both backends."""

from __future__ import annotations

import errno

import pytest

import streamsock as ss


def test_constants_have_php_and_linux_values():
    assert (ss.PF_UNIX, ss.PF_INET, ss.PF_INET6) == (1, 2, 10)
    assert (ss.SOCK_STREAM, ss.SOCK_DGRAM, ss.SOCK_RAW, ss.SOCK_RDM, ss.SOCK_SEQPACKET) == (1, 2, 3, 4, 5)
    assert (ss.IPPROTO_IP, ss.IPPROTO_ICMP, ss.IPPROTO_TCP, ss.IPPROTO_UDP, ss.IPPROTO_RAW) == (0, 1, 6, 17, 255)
    assert (ss.OOB, ss.PEEK) == (1, 2)


def test_stream_pair_carries_bytes_both_ways_and_ends(backend):
    a, b = backend.socket_pair(ss.PF_UNIX, ss.SOCK_STREAM, ss.IPPROTO_IP)
    with a, b:
        a.write(b"ping\n")
        assert b.readline() == b"ping\n"
        b.write(b"pong\n" * 3)
        assert a.readline() == b"pong\n"
        assert a.meta["unread_bytes"] == 10
        assert a.read(100) == b"pong\npong\n"
        meta = b.meta
        assert meta["stream_type"] == "generic_socket" and meta["mode"] == "r+" and "uri" not in meta
        assert b.peer_name == "" and b.local_name == ""  # unnamed sockets
        a.shutdown(ss.SHUT_WR)
        assert b.read(10) == b"" and b.eof
        b.write(b"after")  # the other direction stays open
        assert a.read(10) == b"after"


@pytest.mark.parametrize("kind", [ss.SOCK_DGRAM, ss.SOCK_RAW])  # Linux makes a unix SOCK_RAW a datagram socket
def test_datagram_pair_keeps_message_boundaries(backend, kind):
    a, b = backend.socket_pair(ss.PF_UNIX, kind, 0)
    with a, b:
        a.write(b"one")
        a.write(b"two!")
        assert b.read(100) == b"one"
        assert b.read(100) == b"two!"
        assert b.meta["stream_type"] == "generic_socket"


def test_seqpacket_pair(backend):
    a, b = backend.socket_pair(ss.PF_UNIX, ss.SOCK_SEQPACKET, 0)
    with a, b:
        a.write(b"record")
        assert b.read(100) == b"record"
        a.close()
        assert b.read(100) == b""


def test_pair_ends_work_with_select_and_non_blocking_reads(backend):
    a, b = backend.socket_pair()
    with a, b:
        b.set_blocking(False)
        assert b.read_nowait(10) is None
        assert ss.select([b], [], [], 0) == ([], [], [])
        a.write(b"x")
        assert ss.select([b], [], [], 5)[0] == [b]
        assert b.read(10) == b"x"


def test_pair_refuses_tls(backend):
    a, b = backend.socket_pair()
    with a, b, pytest.raises(ss.StreamSocketError, match="TLS needs a tcp stream"):
        a.enable_crypto(True)


@pytest.mark.parametrize("domain, kind, wanted", [
    (ss.PF_INET, ss.SOCK_STREAM, errno.EOPNOTSUPP),   # Linux pairs unix sockets only
    (ss.PF_INET6, ss.SOCK_DGRAM, errno.EOPNOTSUPP),
    (ss.PF_UNIX, ss.SOCK_RDM, errno.ESOCKTNOSUPPORT),
    (ss.PF_UNIX, ss.SOCK_STREAM, errno.EPROTONOSUPPORT),  # with IPPROTO_TCP
])
def test_what_the_system_refuses_raises_with_its_errno(backend, domain, kind, wanted):
    protocol = ss.IPPROTO_TCP if wanted == errno.EPROTONOSUPPORT else 0
    with pytest.raises(ss.StreamSocketError) as info:
        backend.socket_pair(domain, kind, protocol)
    assert info.value.errno == wanted
    assert str(info.value).startswith(f"Failed to create sockets: [{wanted}]: ")  # PHP's warning


def test_arguments_must_be_ints(backend):
    with pytest.raises(TypeError, match="type must be an int"):
        backend.socket_pair(ss.PF_UNIX, "stream", 0)


def test_async_pair(backend):
    import asyncio

    import streamsock.aio as aio

    async def main():
        a, b = await aio.socket_pair(ss.PF_UNIX, ss.SOCK_STREAM, 0, backend=backend)
        async with a, b:
            await a.write(b"one\ntwo\n")
            assert await b.readline() == b"one\n"
            assert await b.recvfrom(100, ss.PEEK) == (b"two\n", "")
            assert await b.read(100) == b"two\n"
            assert b.meta["stream_type"] == "generic_socket"
            a.close()
            assert await b.read(100) == b""

    asyncio.run(asyncio.wait_for(main(), 20))
