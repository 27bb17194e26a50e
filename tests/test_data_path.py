"""The data path: TCP_NODELAY by default, large and many reads and writes
against other TLS stacks (Python's ssl, openssl s_server), partial writes
under a slow reader, and nothing lost or reordered whatever the sizes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamsock as ss
import streamsock.aio as aio
from peers import OpenSSLServer, PyTLSServer, RawServer

LIMIT = 30.0  # seconds any one asyncio test may take before it fails instead of hanging


def run(coro):
    async def bounded():
        async with asyncio.timeout(LIMIT):
            return await coro
    return asyncio.run(bounded())


def nodelay(fd: int) -> int:
    with socket.socket(fileno=os.dup(fd)) as view:
        return view.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def client_ctx(pki, **socket_options) -> ss.Context:
    return ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"}, socket=socket_options or None)


def server_ctx(pki, **socket_options) -> ss.Context:
    return ss.Context(ssl={"local_cert": pki.server_certfile, "local_pk": pki.server_keyfile},
                      socket=socket_options or None)


def blob(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that differ at every offset and from any other seed's."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


class LateReader:
    """A TLS server (Python's ssl) that reads nothing until ``start`` is set,
    then everything until the end, into ``received``: a peer whose socket
    fills while the client writes."""

    def __init__(self, pki) -> None:
        self.context = pki.server_context()
        self.start = threading.Event()
        self.received = bytearray()

    def __call__(self, sock: socket.socket) -> None:
        with self.context.wrap_socket(sock, server_side=True) as tls:
            tls.settimeout(20)
            self.start.wait(20)
            while data := tls.recv(65536):
                self.received.extend(data)

    def read_all(self, peer: RawServer) -> bytes:
        """Lets the reader go and waits until it has read to the end."""
        self.start.set()
        peer.wait_for_connections(1, timeout=20)
        peer.connections[0].finished.wait(20)
        return bytes(self.received)


# --- TCP_NODELAY ------------------------------------------------------------------------------


def nodelay_of_both_ends(backend, address: str, server_context, client_context) -> tuple[int, int]:
    """(client's, accepted stream's) TCP_NODELAY, the accept on a thread of its own."""
    with backend.server(address, context=server_context) as srv:
        accepted: list[int] = []

        def accept() -> None:
            conn, _ = srv.accept(timeout=10)
            with conn:
                accepted.append(nodelay(conn.fileno()))
                conn.write(b"x")  # done: the client may go

        thread = threading.Thread(target=accept)
        thread.start()
        with backend.client(f"{address.split(':')[0]}://{srv.local_name}", timeout=10, context=client_context) as c:
            client = nodelay(c.fileno())
            assert c.read(1) == b"x"
        thread.join(10)
        return client, accepted[0]


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
def test_nodelay_is_on_by_default_on_both_ends(backend, pki, scheme):
    # accepted streams too, as asyncio's
    assert nodelay_of_both_ends(backend, f"{scheme}://127.0.0.1:0", server_ctx(pki), client_ctx(pki)) == (1, 1)


def test_nodelay_can_be_turned_off(backend, pki):
    assert nodelay_of_both_ends(backend, "tls://127.0.0.1:0", server_ctx(pki, tcp_nodelay=False),
                                client_ctx(pki, tcp_nodelay=False)) == (0, 0)


def test_aio_streams_and_transports_have_nodelay(backend, pki):
    async def main():
        seen: list[int] = []

        async def handler(stream):
            seen.append(nodelay(stream.fileno()))

        async with await aio.server("tls://127.0.0.1:0", handler, server_ctx(pki), backend=backend) as srv:
            async with await aio.client(f"tls://{srv.local_name}", timeout=5, context=client_ctx(pki),
                                        backend=backend) as s:
                assert nodelay(s.fileno()) == 1
                assert await s.read() == b""  # the handler returned: the server closed
        assert seen == [1]

    run(main())


# --- large transfers against other TLS stacks --------------------------------------------------------


@pytest.fixture
def stdlib_echo(pki):
    with PyTLSServer(pki.server_certfile, pki.server_keyfile) as peer:
        yield peer


def test_large_writes_and_reads_against_python_ssl(backend, pki, stdlib_echo):
    payload = blob(8 << 20)
    with backend.client(f"tls://127.0.0.1:{stdlib_echo.port}", timeout=10, context=client_ctx(pki)) as s:
        got = bytearray()
        for offset in range(0, len(payload), 1 << 20):  # the echo comes back while we write
            assert s.write(payload[offset:offset + (1 << 20)]) == 1 << 20
            while len(got) < offset + (1 << 20):
                got += s.read(1 << 20)
        assert bytes(got) == payload


def test_aio_reader_and_writer_tasks_move_16_mib_against_python_ssl(backend, pki, stdlib_echo):
    payload = blob(16 << 20, seed=1)

    async def main():
        async with await aio.client(f"tls://127.0.0.1:{stdlib_echo.port}", timeout=10, context=client_ctx(pki),
                                    backend=backend) as s:
            async def reader() -> bytes:
                got = bytearray()
                while len(got) < len(payload):
                    chunk = await s.read(1 << 20)
                    assert chunk, "the echo ended early"
                    got += chunk
                return bytes(got)

            task = asyncio.create_task(reader())
            assert await s.write(payload) == len(payload)
            assert await task == payload

    run(main())


def test_large_transfers_both_ways_with_openssl_s_server(backend, pki):
    # What s_server forwards from its stdin must not start with its commands ("Q" quits): hex text.
    down, up = blob(2 << 20, seed=2).hex().encode(), blob(4 << 20, seed=3)
    with OpenSSLServer(pki.server_certfile, pki.server_keyfile, mode="sink", naccept=1) as peer:
        with backend.client(f"tls://127.0.0.1:{peer.port}", timeout=10, context=client_ctx(pki)) as s:
            peer.wait_for_output(b"CIPHER is", stream="stdout")  # connected: s_server forwards its stdin now
            sender = threading.Thread(target=peer.send, args=(down,))  # the pipe fills while we read
            sender.start()
            got = bytearray()
            while len(got) < len(down):
                got += s.read(1 << 20)
            sender.join(10)
            assert bytes(got) == down
            assert s.write(up) == len(up)
            peer.wait_for_output(up[-64:], timeout=20, stream="stdout")
            assert up in peer.stdout


def test_openssl_s_client_through_our_server(backend, pki):
    """A C TLS client (s_client) sends 2 MiB to a server of ours, which closes
    once it has them all (s_client -quiet waits for the server to close)."""
    from peers import run_s_client

    payload = blob(2 << 20, seed=4).hex().encode()[: 2 << 20]  # text: s_client sends its stdin as it is

    with backend.server("tls://127.0.0.1:0", context=server_ctx(pki)) as srv:
        received = bytearray()

        def serve():
            conn, _ = srv.accept(timeout=10)
            with conn:
                conn.set_timeout(10)
                while len(received) < len(payload) and (data := conn.read(65536)):
                    received.extend(data)

        thread = threading.Thread(target=serve)
        thread.start()
        port = int(srv.local_name.rsplit(":", 1)[1])
        run_s_client("127.0.0.1", port, "-CAfile", pki.cafile, "-quiet", input_bytes=payload, timeout=20)
        thread.join(20)
        assert not thread.is_alive()
        assert bytes(received) == payload


def test_a_client_that_writes_and_closes_delivers_every_byte(backend, pki):
    """The TLS 1.3 session tickets a writing client never reads are unread
    bytes at close: closing must not turn into a reset that loses our tail."""
    reader = LateReader(pki)
    payload = blob(2 << 20, seed=10)
    with RawServer(reader) as peer:
        s = backend.client(f"tls://127.0.0.1:{peer.port}", timeout=10, context=client_ctx(pki))
        assert ss.select([s], [], [], 10)[0]  # the server's tickets have arrived, unread
        s.set_blocking(False)
        sent = s.write(payload)  # what fits: the peer is not reading yet
        s.close()  # our close comes first, with data still in flight
        received = reader.read_all(peer)
    assert 0 < sent and received == payload[:sent]


# --- partial writes under a slow reader ----------------------------------------------------------


def test_partial_writes_to_a_reader_that_waits(backend, pki):
    """Non-blocking writes stop when the socket is full and say how much went;
    once the peer reads, the rest follows, every byte once and in order."""
    reader = LateReader(pki)
    payload = blob(16 << 20, seed=5)
    with RawServer(reader) as peer:
        with backend.client(f"tls://127.0.0.1:{peer.port}", timeout=10, context=client_ctx(pki)) as s:
            s.set_blocking(False)
            sent = 0
            while True:  # until the socket (and the peer's) is full
                n = s.write(payload[sent:])
                assert 0 <= n <= len(payload) - sent
                if n == 0:
                    break
                sent += n
            assert 0 < sent < len(payload), "16 MiB should not fit in the socket buffers"
            reader.start.set()
            s.set_blocking(True)
            s.set_timeout(20)
            assert s.write(payload[sent:]) == len(payload) - sent
        received = reader.read_all(peer)
    assert received == payload


def test_a_blocking_write_that_times_out_says_how_much_went(backend, pki):
    reader = LateReader(pki)
    payload = blob(32 << 20, seed=6)
    with RawServer(reader) as peer:
        with backend.client(f"tls://127.0.0.1:{peer.port}", timeout=10, context=client_ctx(pki)) as s:
            s.set_timeout(0.3)
            with pytest.raises(ss.TimeoutError) as info:
                s.write(payload)
            written = info.value.written
            assert 0 < written < len(payload)
            assert s.meta["timed_out"]
            reader.start.set()
            s.set_timeout(20)
            assert s.write(payload[written:]) == len(payload) - written  # the rest, after what went
        received = reader.read_all(peer)
    assert received == payload


def test_aio_write_waits_for_a_slow_reader(backend, pki):
    reader = LateReader(pki)
    payload = blob(16 << 20, seed=7)

    async def main(port: int):
        async with await aio.client(f"tls://127.0.0.1:{port}", timeout=10, context=client_ctx(pki),
                                    backend=backend) as s:
            write = asyncio.create_task(s.write(payload))
            await asyncio.sleep(0)  # one turn of the loop: the write runs until the socket is full
            assert not write.done()  # and then waits, with the loop free
            reader.start.set()
            assert await write == len(payload)

    with RawServer(reader) as peer:
        run(main(peer.port))
        received = reader.read_all(peer)
    assert received == payload


# --- nothing lost or reordered, whatever the sizes ----
# (backend and pki are the same for every example: the fixtures' scope does not matter)------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(min_value=1, max_value=300_000), min_size=1, max_size=6),
       read_size=st.sampled_from([1, 100, 8192, 16384, 16385, 65536, 1 << 20]))
def test_messages_of_any_size_come_back_whole_and_in_order(backend, pki, sizes, read_size):
    with PyTLSServer(pki.server_certfile, pki.server_keyfile) as peer:
        with backend.client(f"tls://127.0.0.1:{peer.port}", timeout=10, context=client_ctx(pki)) as s:
            for index, size in enumerate(sizes):
                message = blob(size, seed=index)
                assert s.write(message) == size
                got = bytearray()
                while len(got) < size:
                    chunk = s.read(min(read_size, size - len(got)))
                    assert chunk
                    assert len(chunk) <= read_size
                    got += chunk
                assert bytes(got) == message


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(min_value=1, max_value=200_000), min_size=1, max_size=6))
def test_aio_echo_server_of_ours_returns_every_message_in_order(backend, pki, sizes):
    async def echo(stream):
        while data := await stream.read(65536):
            await stream.write(data)

    async def main():
        async with await aio.server("tls://127.0.0.1:0", echo, server_ctx(pki), backend=backend) as srv:
            async with await aio.client(f"tls://{srv.local_name}", timeout=10, context=client_ctx(pki),
                                        backend=backend) as s:
                for index, size in enumerate(sizes):
                    message = blob(size, seed=100 + index)
                    writer = asyncio.create_task(s.write(message))
                    got = bytearray()
                    while len(got) < size:
                        got += await s.read(size - len(got))
                    await writer
                    assert bytes(got) == message

    run(main())


# --- the asyncio Protocol/Transport face ------------------------------------------------------------


class EchoProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def test_create_server_serves_asyncios_own_tls_client(backend, pki):
    payload = blob(3 << 20, seed=8)

    async def main():
        protocols: list[EchoProtocol] = []

        def factory() -> EchoProtocol:
            protocols.append(EchoProtocol())
            return protocols[-1]

        async with await aio.create_server(factory, "tls://127.0.0.1:0", server_ctx(pki), backend=backend) as srv:
            host, port = srv.local_name.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port), ssl=pki.client_context(),
                                                           server_hostname="localhost")
            writer.write(payload)
            assert await reader.readexactly(len(payload)) == payload
            peer = protocols[0].transport.get_extra_info("peername")
            assert peer == writer.get_extra_info("sockname")  # (host, port), as asyncio reports it
            writer.close()
            assert await protocols[0].lost is None  # the client's close: connection_lost(None), once

    run(main())


def test_create_connection_runs_a_protocol_with_flow_control(backend, pki):
    """A protocol that writes more than the peer reads is paused, then resumed."""
    reader = LateReader(pki)
    payload = blob(8 << 20, seed=9)

    async def main(port: int):
        loop = asyncio.get_running_loop()
        paused, resumed, lost = loop.create_future(), loop.create_future(), loop.create_future()

        class Writer(asyncio.Protocol):
            def connection_lost(self, exc) -> None:
                lost.set_result(exc)

            def pause_writing(self) -> None:
                if not paused.done():
                    paused.set_result(None)

            def resume_writing(self) -> None:
                if not resumed.done():
                    resumed.set_result(None)

        transport, _ = await aio.create_connection(Writer, f"tls://127.0.0.1:{port}", 10, client_ctx(pki),
                                                   backend=backend)
        transport.write(payload)
        await paused
        assert transport.get_write_buffer_size() > 0
        reader.start.set()
        await resumed
        transport.close()  # closes once what is buffered has gone out
        assert await lost is None
        assert transport.get_write_buffer_size() == 0

    with RawServer(reader) as peer:
        run(main(peer.port))
        received = reader.read_all(peer)
    assert received == payload


def test_a_protocol_that_fails_loses_its_connection_and_the_server_goes_on(backend, pki):
    async def main():
        class Broken(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                raise RuntimeError("bug in the protocol")

        errors: list[dict] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        async with await aio.create_server(Broken, "tls://127.0.0.1:0", server_ctx(pki), backend=backend) as srv:
            for _ in range(2):
                async with await aio.client(f"tls://{srv.local_name}", timeout=5, context=client_ctx(pki),
                                            backend=backend) as s:
                    await s.write(b"boom")
                    assert await s.read() == b""  # the server closed this connection
        assert [type(e["exception"]) for e in errors] == [RuntimeError, RuntimeError]

    run(main())
