"""recvfrom/sendto on connected streams (PHP's stream_socket_recvfrom/sendto
with STREAM_PEEK and STREAM_OOB), plaintext and TLS, on both backends."""

from __future__ import annotations

import socket
import threading

import pytest

import streamsock as ss


@pytest.fixture
def tcp_pair(backend):
    """A streamsock client and the stdlib socket the listener accepted for it."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        stream = backend.client(f"tcp://127.0.0.1:{listener.getsockname()[1]}", timeout=5)
        peer, _ = listener.accept()
    finally:
        listener.close()
    peer.settimeout(5)
    with stream, peer:
        yield stream, peer


def test_peek_leaves_the_bytes_for_the_next_read(tcp_pair):
    s, peer = tcp_pair
    peer.sendall(b"hello world\n")
    data, name = s.recvfrom(5, ss.PEEK)
    assert data == b"hello" and name == s.peer_name
    assert s.recvfrom(100, ss.PEEK)[0] == b"hello world\n"
    assert s.readline() == b"hello world\n"


def test_peek_sees_what_readline_left_buffered(tcp_pair):
    s, peer = tcp_pair
    peer.sendall(b"one\ntwo\n")
    assert s.readline() == b"one\n"
    assert s.recvfrom(100, ss.PEEK)[0] == b"two\n"  # PHP's recvfrom bypasses its buffer here
    assert s.recvfrom(100) == (b"two\n", s.peer_name)


def test_peek_at_end_of_stream_and_without_data(tcp_pair):
    s, peer = tcp_pair
    s.set_blocking(False)
    with pytest.raises(ss.WouldBlockError):
        s.recvfrom(10, ss.PEEK)
    peer.shutdown(socket.SHUT_WR)
    assert ss.select([s], [], [], 5)[0] == [s]
    assert s.recvfrom(10, ss.PEEK) == (b"", s.peer_name)
    assert s.read(10) == b""


def test_peek_waits_in_blocking_mode_and_times_out(tcp_pair):
    s, peer = tcp_pair
    s.set_timeout(0.05)
    with pytest.raises(ss.TimeoutError):
        s.recvfrom(10, ss.PEEK)
    assert s.meta["timed_out"]
    peer.sendall(b"late")
    assert s.recvfrom(10, ss.PEEK)[0] == b"late"
    assert not s.meta["timed_out"]


def test_out_of_band_both_ways(tcp_pair):
    s, peer = tcp_pair
    peer.sendall(b"normal")
    peer.send(b"!", socket.MSG_OOB)
    assert ss.select([], [], [s], 5)[2] == [s]
    assert s.recvfrom(1, ss.OOB) == (b"!", s.peer_name)
    assert s.read(100) == b"normal"  # the urgent byte is not in the stream
    with pytest.raises(ss.StreamSocketError, match="no out-of-band data is pending") as info:
        s.recvfrom(1, ss.OOB)
    assert info.value.errno == 22
    assert s.sendto(b"abc", ss.OOB) == 3
    assert peer.recv(1, socket.MSG_OOB) == b"c"  # the last byte is the urgent one
    assert peer.recv(10) == b"ab"
    assert s.sendto(b"plain") == 5 and peer.recv(10) == b"plain"  # usable after all of it


def test_bad_flags_and_sizes(tcp_pair):
    s, _ = tcp_pair
    with pytest.raises(ValueError, match="flags must be 0, PEEK or OOB"):
        s.recvfrom(10, ss.PEEK | ss.OOB)
    with pytest.raises(ValueError, match="size must be an int greater than 0"):
        s.recvfrom(0)
    with pytest.raises(ValueError, match="flags must be 0 or OOB"):
        s.sendto(b"x", ss.PEEK)


def test_tls_recvfrom_is_plaintext_and_oob_is_refused(backend, pki):
    ctx = ss.Context(ssl={"local_cert": pki.server_certfile, "local_pk": pki.server_keyfile,
                          "cafile": pki.cafile, "peer_name": "localhost"})
    with backend.server("tls://127.0.0.1:0", context=ctx) as srv:
        accepted = []
        thread = threading.Thread(target=lambda: accepted.append(srv.accept(timeout=5)[0]))
        thread.start()
        with backend.client(f"tls://{srv.local_name}", timeout=5, context=ctx) as s:
            thread.join(10)
            with accepted[0] as conn:
                conn.write(b"secret line\n")
                assert s.recvfrom(6, ss.PEEK)[0] == b"secret"  # PHP hands back ciphertext here
                assert s.recvfrom(100) == (b"secret line\n", s.peer_name)
                for call in (lambda: s.recvfrom(1, ss.OOB), lambda: s.sendto(b"x", ss.OOB)):
                    with pytest.raises(ss.StreamSocketError, match="out-of-band data cannot be sent or received "
                                                                   "on a TLS stream") as info:
                        call()
                    assert info.value.code == "SS_ERR_UNSUPPORTED"
                s.write(b"still fine\n")  # the refusal did not break the stream
                assert conn.readline() == b"still fine\n"


def test_datagram_stream_recvfrom(backend, udp_echo):
    with backend.client(f"udp://{udp_echo.address}", timeout=5) as s:
        s.write(b"dgram")
        assert s.recvfrom(100, ss.PEEK) == (b"dgram", udp_echo.address)
        assert s.recvfrom(100) == (b"dgram", udp_echo.address)


def test_datagram_server_peek(backend):
    with backend.server("udp://127.0.0.1:0", flags=ss.SERVER_BIND) as srv:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"first", ("127.0.0.1", int(srv.local_name.rsplit(":", 1)[1])))
            sender.sendto(b"second", ("127.0.0.1", int(srv.local_name.rsplit(":", 1)[1])))
            name = f"127.0.0.1:{sender.getsockname()[1]}"
            assert srv.recvfrom(100, timeout=5, flags=ss.PEEK) == (b"first", name)
            assert srv.recvfrom(100, timeout=5, flags=ss.PEEK) == (b"first", name)  # still there
            assert srv.recvfrom(100, timeout=5) == (b"first", name)
            assert srv.recvfrom(100, timeout=5) == (b"second", name)
        with pytest.raises(ValueError, match="flags must be 0 or PEEK for a datagram server"):
            srv.recvfrom(100, timeout=5, flags=ss.OOB)


def test_async_recvfrom_and_sendto(backend):
    import asyncio

    import streamsock.aio as aio

    async def main():
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        loop = asyncio.get_running_loop()
        with listener:
            accepting = loop.create_task(loop.sock_accept(listener))
            s = await aio.client(f"tcp://127.0.0.1:{listener.getsockname()[1]}", timeout=5, backend=backend)
            peer, _ = await accepting
        with peer:
            async with s:
                await loop.sock_sendall(peer, b"hello\n")
                assert await s.recvfrom(3, ss.PEEK) == (b"hel", s.peer_name)
                assert await s.readline() == b"hello\n"
                peer.send(b"!", socket.MSG_OOB)
                assert await s.recvfrom(1, ss.OOB) == (b"!", s.peer_name)
                with pytest.raises(ss.StreamSocketError, match="no out-of-band data is pending"):
                    await s.recvfrom(1, ss.OOB)
                assert await s.sendto(b"xy", ss.OOB) == 2
                assert await s.sendto(b"z") == 1
                peer.setblocking(True)
                peer.settimeout(5)
                assert peer.recv(1, socket.MSG_OOB) == b"y"
                got = peer.recv(10)  # a read stops at the urgent mark: "x", then "z"
                assert got + (peer.recv(10) if got == b"x" else b"") == b"xz"

    asyncio.run(asyncio.wait_for(main(), 20))
