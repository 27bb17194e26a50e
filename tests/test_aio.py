"""streamsock.aio: the backend connections driven by asyncio, on both backends.

No pytest-asyncio here: each test runs its own loop with asyncio.run.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import streamsock as ss
import streamsock.aio as aio
from peers import PyTLSServer, SilentServer, SMTPStartTLSServer, refused_port


def run(coro, limit: float = 20.0):
    async def bounded():
        async with asyncio.timeout(limit):  # a hang fails the test instead of the run
            return await coro
    return asyncio.run(bounded())


async def echo(stream: aio.AsyncStream) -> None:
    while True:
        data = await stream.read(65536)
        if not data:
            return
        await stream.write(data)


def tls_server_context(pki) -> ss.Context:
    return ss.Context(ssl={"local_cert": pki.server_certfile, "local_pk": pki.server_keyfile})


def registered_fds(loop) -> set[int]:
    """What asyncio's selector loop watches, its own wake-up socket aside."""
    return set(loop._selector.get_map().keys()) - {loop._ssock.fileno()}


# -- plaintext ---------------------------------------------------------------------------------


def test_tcp_round_trip_with_our_own_server(backend):
    async def main():
        async with await aio.server("tcp://127.0.0.1:0", echo, backend=backend) as srv:
            host_port = srv.local_name
            assert host_port.startswith("127.0.0.1:")
            async with await aio.client(f"tcp://{host_port}", timeout=5, backend=backend) as s:
                assert s.peer_name == host_port
                assert s.local_name.startswith("127.0.0.1:")
                assert s.crypto is None and s.peer_certificate is None
                assert s.fileno() >= 0
                assert await s.write(b"one\ntwo\nthree") == 13
                assert await s.readline() == b"one\n"
                assert await s.readline(2) == b"tw"
                assert await s.readline() == b"o\n"
                assert await s.read(3) == b"thr"
                meta = s.meta
                assert meta["stream_type"] == "tcp_socket/ssl" and meta["eof"] is False
                assert meta["blocked"] is False and "crypto" not in meta
                assert await s.read(100) == b"ee"
                await s.write(b"a\nb\nc")
                s.shutdown(ss.SHUT_WR)
                assert [line async for line in s] == [b"a\n", b"b\n", b"c"]
                assert await s.read() == b"" and s.eof
            assert s.closed
            with pytest.raises(ss.StreamSocketError) as info:
                await s.read()
            assert info.value.code == "SS_ERR_CLOSED"
        assert not srv.serving

    run(main())


@pytest.mark.parametrize("secure", [False, True], ids=["tcp", "tls"])
def test_read_all_and_large_writes_with_a_concurrent_reader(backend, pki, secure):
    payload = os.urandom(1 << 20)
    scheme = "tls" if secure else "tcp"

    async def main():
        server_ctx = tls_server_context(pki) if secure else None
        client_ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
        async with await aio.server(f"{scheme}://127.0.0.1:0", echo, server_ctx, backend=backend) as srv:
            async with await aio.client(f"{scheme}://{srv.local_name}", timeout=5, context=client_ctx,
                                        backend=backend) as s:
                async def send():
                    await s.write(payload)
                    s.shutdown(ss.SHUT_WR)

                sender = asyncio.create_task(send())
                got = await s.read(-1)  # reads while the writer task is still writing
                await sender
                assert got == payload

    run(main())


def test_localhost_is_resolved_by_the_loop(backend):
    async def main():
        async with await aio.server("tcp://127.0.0.1:0", echo, backend=backend) as srv:
            port = srv.local_name.rsplit(":", 1)[1]
            # localhost may resolve to ::1 first: nothing listens there, the next address is tried
            async with await aio.client(f"tcp://localhost:{port}", timeout=5, backend=backend) as s:
                assert s.address.host == "localhost"
                assert s.peer_name == f"127.0.0.1:{port}"
                await s.write(b"ping\n")
                assert await s.readline() == b"ping\n"

    run(main())


def test_unresolvable_name_is_a_connect_error(backend):
    async def main():
        with pytest.raises(ss.ConnectError) as info:
            await aio.client("tcp://no-such-host.invalid:80", timeout=5, backend=backend)
        assert info.value.code == "SS_ERR_RESOLVE"
        assert "Unable to connect to tcp://no-such-host.invalid:80" in str(info.value)

    run(main())


def test_refused_port_is_connect_error_111(backend):
    port = refused_port()

    async def main():
        for host in ("127.0.0.1", "localhost"):
            with pytest.raises(ss.ConnectError) as info:
                await aio.client(f"tcp://{host}:{port}", timeout=5, backend=backend)
            assert info.value.errno == 111
            assert info.value.code == "SS_ERR_CONNECT"
            assert f"Unable to connect to tcp://{host}:{port}" in str(info.value)

    run(main())


def test_connect_timeout_is_timeout_error_110(backend):
    with SilentServer() as peer:  # TCP connects, the TLS handshake never gets an answer
        async def main():
            for host in ("127.0.0.1", "localhost"):
                start = time.monotonic()
                with pytest.raises(ss.TimeoutError) as info:
                    await aio.client(f"tls://{host}:{peer.port}", timeout=0.3, backend=backend)
                elapsed = time.monotonic() - start
                assert 0.25 <= elapsed < 2.0
                assert info.value.errno == 110 and info.value.code == "SS_ERR_TIMEOUT"
                assert isinstance(info.value, TimeoutError)
                assert f"tls://{host}:{peer.port}" in str(info.value)
            assert registered_fds(asyncio.get_running_loop()) == set()

        run(main())
        peer.wait_for_connections(2, finished=False)


# -- cancellation ------------------------------------------------------------------------------


def test_cancelled_read_unregisters_and_the_stream_closes_cleanly(backend):
    with SilentServer() as peer:
        async def main():
            loop = asyncio.get_running_loop()
            before = registered_fds(loop)
            opened: list[aio.AsyncStream] = []

            async def reader():
                async with await aio.client(f"tcp://127.0.0.1:{peer.port}", timeout=5, backend=backend) as s:
                    opened.append(s)
                    await s.read()

            task = asyncio.create_task(reader())
            while not opened or opened[0].fileno() not in registered_fds(loop):
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert opened[0].closed
            assert registered_fds(loop) == before

            # A read cancelled by a timeout leaves the stream usable (nothing is lost).
            async with await aio.client(f"tcp://127.0.0.1:{peer.port}", timeout=5, backend=backend) as s:
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await s.read()
                assert not s.closed and registered_fds(loop) == before
                await s.write(b"still fine")

        run(main())


def test_cancelled_connect_and_handshake_leave_no_fd(backend):
    with SilentServer() as peer:
        async def main():
            loop = asyncio.get_running_loop()
            for url in (f"tls://127.0.0.1:{peer.port}", f"tls://localhost:{peer.port}"):
                task = asyncio.create_task(aio.client(url, timeout=10, backend=backend))
                await asyncio.sleep(0.1)  # connected, waiting for the ServerHello
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert registered_fds(loop) == set()

        run(main())


def test_close_wakes_a_waiting_reader(backend):
    with SilentServer() as peer:
        async def main():
            s = await aio.client(f"tcp://127.0.0.1:{peer.port}", timeout=5, backend=backend)
            task = asyncio.create_task(s.read())
            await asyncio.sleep(0.05)
            with pytest.raises(ss.StreamSocketError) as busy:
                await s.read()  # one reader at a time
            assert busy.value.code == "SS_ERR_BUSY"
            s.close()
            with pytest.raises(ss.StreamSocketError) as info:
                await task
            assert info.value.code == "SS_ERR_CLOSED"

        run(main())


# -- TLS ---------------------------------------------------------------------------------------


def test_tls_client_verifies_the_server(backend, pki):
    with PyTLSServer(pki.server_certfile, pki.server_keyfile) as peer:
        async def main():
            ctx = ss.Context(ssl={"cafile": pki.cafile, "capture_peer_cert": True})
            for host in ("127.0.0.1", "localhost"):
                async with await aio.client(f"tls://{host}:{peer.port}", timeout=5, context=ctx,
                                            backend=backend) as s:
                    await s.write(b"hello over tls\n")
                    assert await s.readline() == b"hello over tls\n"
                    assert s.crypto["protocol"] == "TLSv1.3"
                    assert s.meta["crypto"]["cipher_name"].startswith("TLS_")
                    assert s.peer_certificate is not None

        run(main())
        peer.wait_for_connections(2)
        assert peer.connections[0].sni is None  # IP literal: no SNI
        assert peer.connections[1].sni == "localhost"  # the name survives our own resolution


def test_tls_verification_failure_names_the_reason(backend, pki):
    with PyTLSServer(pki.wrong_host.certfile, pki.wrong_host.keyfile) as peer:
        async def main():
            ctx = ss.Context(ssl={"cafile": pki.cafile})
            for host in ("localhost", "127.0.0.1"):
                with pytest.raises(ss.CertificateVerifyError, match="mismatch") as info:
                    await aio.client(f"tls://{host}:{peer.port}", timeout=5, context=ctx, backend=backend)
                assert "Unable to connect to" in str(info.value)
            with pytest.raises(ss.CertificateVerifyError, match="hostname mismatch"):
                await aio.client(f"tls://localhost:{peer.port}", timeout=5, context=ctx, backend=backend)
            # an explicit peer_name wins over the name in the address
            named = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "wrong.example"})
            async with await aio.client(f"tls://localhost:{peer.port}", timeout=5, context=named,
                                        backend=backend) as s:
                assert s.crypto is not None

        run(main())
        peer.wait_for_connections(4)
        assert peer.connections[3].sni == "wrong.example"


def test_aio_tls_server_and_aio_client(backend, pki):
    async def handler(stream: aio.AsyncStream) -> None:
        assert stream.crypto["protocol"] == "TLSv1.3"
        await stream.write(b"hello " + (await stream.readline()))

    async def main():
        async with await aio.server("tls://127.0.0.1:0", handler, tls_server_context(pki),
                                    backend=backend) as srv:
            port = srv.local_name.rsplit(":", 1)[1]
            ctx = ss.Context(ssl={"cafile": pki.cafile, "capture_peer_cert": True})
            async with await aio.client(f"tls://localhost:{port}", timeout=5, context=ctx, backend=backend) as s:
                await s.write(b"world\n")
                assert await s.readline() == b"hello world\n"
                assert await s.read() == b""
                assert s.peer_certificate is not None
            # a blocking client of the other backend against the aio server
            other = ss.get_backend("pure" if backend.name == "native" else backend.name)
            blocking = await asyncio.to_thread(other.client, f"tls://localhost:{port}", 5, ctx)
            with blocking:
                await asyncio.to_thread(blocking.write, b"thread\n")
                assert await asyncio.to_thread(blocking.readline) == b"hello thread\n"
            assert srv.handshake_failures == 0

    run(main())


def test_tls_half_close_between_aio_server_and_client(backend, pki):
    """The client's shutdown(SHUT_WR) is a clean end of stream for the server
    (close_notify), which answers with everything it read; the client reads it."""
    async def handler(stream: aio.AsyncStream) -> None:
        await stream.write(b"got:" + await stream.read(-1))

    async def main():
        async with await aio.server("tls://127.0.0.1:0", handler, tls_server_context(pki), backend=backend) as srv:
            port = srv.local_name.rsplit(":", 1)[1]
            ctx = ss.Context(ssl={"cafile": pki.cafile})
            async with await aio.client(f"tls://localhost:{port}", timeout=5, context=ctx, backend=backend) as s:
                await s.write(b"x" * 100_000)
                s.shutdown(ss.SHUT_WR)
                assert await s.read(-1) == b"got:" + b"x" * 100_000
            with pytest.raises(ValueError):
                s.shutdown(7)

    run(main())


def test_aio_tls_server_handshake_timeout_and_failure(backend, pki):
    async def handler(stream):  # pragma: no cover - never reached
        raise AssertionError("no handshake, no handler")

    async def main():
        async with await aio.server("tls://127.0.0.1:0", handler, tls_server_context(pki), backend=backend,
                                    handshake_timeout=0.2) as srv:
            async with await aio.client(f"tcp://{srv.local_name}", timeout=5, backend=backend) as s:
                assert await s.read() == b""  # the server gave up on us
            assert srv.handshake_failures == 1
            async with await aio.client(f"tcp://{srv.local_name}", timeout=5, backend=backend) as s:
                await s.write(b"GET / HTTP/1.0\r\n\r\n")  # not a ClientHello
                try:
                    await s.read(-1)  # an alert, then the end (or a reset)
                except ss.StreamSocketError as exc:
                    assert exc.errno == 104
            assert srv.handshake_failures == 2
            assert isinstance(srv.last_handshake_error, ss.TLSError)

    run(main())


# -- STARTTLS ----------------------------------------------------------------------------------


async def greet_and_starttls(s: aio.AsyncStream) -> None:
    assert await s.readline() == b"220 localhost ESMTP test\r\n"
    await s.write(b"EHLO client.example\r\n")
    assert await s.readline() == b"250-localhost\r\n"
    assert await s.readline() == b"250 STARTTLS\r\n"
    await s.write(b"STARTTLS\r\n")
    assert await s.readline() == b"220 Ready to start TLS\r\n"


def test_starttls_upgrade_and_downgrade(backend, pki):
    with SMTPStartTLSServer(pki.server_certfile, pki.server_keyfile, downgrade=True) as peer:
        async def main():
            ctx = ss.Context(ssl={"cafile": pki.cafile})
            async with await aio.client(f"tcp://localhost:{peer.port}", timeout=5, context=ctx,
                                        backend=backend) as s:
                await greet_and_starttls(s)
                assert s.crypto is None
                assert await s.enable_crypto(True, ss.CRYPTO_METHOD_TLS_CLIENT) is True
                assert s.meta["crypto"]["protocol"] == "TLSv1.3"
                with pytest.raises(ss.TLSError) as active:
                    await s.enable_crypto(True)
                assert active.value.code == "SS_ERR_TLS_ACTIVE"
                await s.write(b"EHLO client.example\r\n")
                assert await s.readline() == b"250 localhost\r\n"
                await s.write(b"STOPTLS\r\n")
                assert await s.readline() == b"220 plaintext again\r\n"
                assert await s.enable_crypto(False) is True
                assert s.crypto is None
                await s.write(b"HELLO PLAIN\r\n")
                assert await s.readline() == b"250 plain HELLO PLAIN\r\n"
                await s.write(b"QUIT\r\n")
                assert await s.readline() == b"221 bye\r\n"

        run(main())
        peer.wait_for_connections(1)
        record = peer.connections[0]
        assert record.starttls and record.downgraded and record.sni == "localhost"
        assert record.tls_lines[:2] == [b"EHLO client.example", b"STOPTLS"]


def test_starttls_injection_is_refused(backend, pki):
    with SMTPStartTLSServer(pki.server_certfile, pki.server_keyfile, inject=b"250 INJECTED\r\n") as peer:
        async def main():
            ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
            async with await aio.client(f"tcp://127.0.0.1:{peer.port}", timeout=5, context=ctx,
                                        backend=backend) as s:
                await greet_and_starttls(s)
                with pytest.raises(ss.TLSError) as info:
                    await s.enable_crypto(True, ss.CRYPTO_METHOD_TLS_CLIENT)
                assert info.value.code == "SS_ERR_STARTTLS_BUFFERED"
                assert "injection" in str(info.value)
                assert s.crypto is None

        run(main())


def test_starttls_verification_failure(backend, pki):
    with SMTPStartTLSServer(pki.server_certfile, pki.server_keyfile) as peer:
        async def main():
            ctx = ss.Context(ssl={"cafile": pki.other_cafile})
            async with await aio.client(f"tcp://localhost:{peer.port}", timeout=5, context=ctx,
                                        backend=backend) as s:
                await greet_and_starttls(s)
                with pytest.raises(ss.CertificateVerifyError, match="unable to get local issuer certificate"):
                    await s.enable_crypto(True)

        run(main())


# -- many at once ------------------------------------------------------------------------------


@pytest.mark.parametrize("secure", [False, True], ids=["tcp", "tls"])
def test_many_concurrent_clients_in_one_loop(backend, pki, secure):
    n = 50
    served: list[str] = []

    async def handler(stream: aio.AsyncStream) -> None:
        line = await stream.readline()
        served.append(stream.peer_name)
        await asyncio.sleep(0.01)  # every connection is open at the same time
        await stream.write(line.upper())

    async def one(url: str, ctx, i: int) -> bytes:
        async with await aio.client(url, timeout=10, context=ctx, backend=backend) as s:
            await s.write(b"client %d\n" % i)
            return await s.readline()

    async def main():
        scheme = "tls" if secure else "tcp"
        # 50 connects at once overflow the default backlog (32): the kernel drops SYNs, retried after 1 s
        server_ctx = tls_server_context(pki) if secure else ss.Context()
        server_ctx.set_option("socket", "backlog", 128)
        async with await aio.server(f"{scheme}://127.0.0.1:0", handler, server_ctx, backend=backend) as srv:
            ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
            url = f"{scheme}://{srv.local_name}"
            replies = await asyncio.gather(*(one(url, ctx, i) for i in range(n)))
            assert replies == [b"CLIENT %d\n" % i for i in range(n)]
        assert len(set(served)) == n

    run(main())


def test_server_close_clients_cancels_handlers(backend):
    async def main():
        ready = asyncio.Event()

        async def handler(stream):
            ready.set()
            await stream.read()  # blocks until cancelled

        srv = await aio.server("tcp://127.0.0.1:0", handler, backend=backend)
        s = await aio.client(f"tcp://{srv.local_name}", timeout=5, backend=backend)
        await ready.wait()
        srv.close()
        with pytest.raises(ss.StreamSocketError):
            srv.local_name
        srv.close_clients()
        await srv.wait_closed()
        assert await s.read() == b""  # the handler's stream was closed
        s.close()

    run(main())


def test_unix_socket_and_a_server_bound_by_name(backend, tmp_path):
    path = str(tmp_path / "aio.sock")

    async def main():
        async with await aio.server(f"unix://{path}", echo, backend=backend) as srv:
            async with await aio.client(f"unix://{path}", timeout=5, backend=backend) as s:
                assert s.meta["stream_type"] == "unix_socket"
                await s.write(b"over unix\n")
                assert await s.readline() == b"over unix\n"
        async with await aio.server("tcp://localhost:0", echo, backend=backend) as srv:  # bound off the loop
            async with await aio.client(f"tcp://{srv.local_name}", timeout=5, backend=backend) as s:
                await s.write(b"named\n")
                assert await s.readline() == b"named\n"
        with pytest.raises(ss.StreamSocketError):
            await aio.server("udp://127.0.0.1:0", echo, backend=backend)

    run(main())
    if os.path.exists(path):
        os.unlink(path)


SERVER_OUT_OF_DESCRIPTORS = r"""
import asyncio, resource, sys, time
import streamsock as ss
from streamsock import aio

resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

async def main():
    reports = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: reports.append(context["message"]))
    held = []
    arrived = asyncio.Event()

    async def hold(stream):
        held.append(stream)
        arrived.set()
        await asyncio.Event().wait()

    srv = await aio.server("tcp://127.0.0.1:0", hold, backend=ss.get_backend(sys.argv[1]))
    print(srv.local_name.rsplit(":", 1)[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # the parent's clients are all connected
    cpu = time.process_time()
    await asyncio.sleep(2.0)  # the window in which a spinning server would burn its CPU
    print(f"{time.process_time() - cpu:.3f} {len(reports)} {len(held)}", flush=True)
    for stream in held:  # descriptors come free: the waiting clients are served
        stream.close()
    held.clear()
    arrived.clear()
    async with asyncio.timeout(5):
        await arrived.wait()
    print(len(held), flush=True)

asyncio.run(main())
"""


def test_a_server_out_of_descriptors_rests_instead_of_spinning(backend):
    import socket
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", SERVER_OUT_OF_DESCRIPTORS, backend.name], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    clients: list[socket.socket] = []
    try:
        port = int(child.stdout.readline())
        for _ in range(200):  # more than the server's descriptors and its backlog: connects left in flight
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            clients.append(sock)
        child.stdin.write("go\n")
        child.stdin.flush()
        cpu, reports, held = child.stdout.readline().split()
        assert float(cpu) < 0.5, f"the server burned {cpu} s of CPU in 2 s"
        assert 1 <= int(reports) <= 4  # heard of, once a second at most
        assert 0 < int(held) < 64
        assert 0 < int(child.stdout.readline())  # the clients that waited in the backlog got served
    finally:
        for sock in clients:
            sock.close()
        child.kill()
        child.communicate(timeout=10)
