"""TLS echo servers of every kind bench_stream.py measures, each run as its own
process: ``python _echo_servers.py KIND CERTFILE KEYFILE`` listens on
127.0.0.1 (an ephemeral port), prints the port on a line of its own once it
accepts connections, and echoes every byte of every client until SIGTERM.

Every server does what a user of that API would write: read up to 64 KiB,
write it back, until the client closes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import sys
import threading

CHUNK = 65536


def _announce(port: int) -> None:
    print(port, flush=True)


def _ssl_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


# --- streamsock ------------------------------------------------------------------------------


def _streamsock_context(certfile: str, keyfile: str):
    import streamsock

    return streamsock.Context(ssl={"local_cert": certfile, "local_pk": keyfile})


def streamsock_blocking(certfile: str, keyfile: str) -> None:
    """A thread per client, the blocking API."""
    import streamsock

    srv = streamsock.server("tls://127.0.0.1:0", context=_streamsock_context(certfile, keyfile))

    def echo(stream) -> None:
        with stream:
            stream.set_timeout(-1)
            try:
                while data := stream.read(CHUNK):
                    stream.write(data)
            except streamsock.StreamSocketError:
                pass

    _announce(int(srv.local_name.rsplit(":", 1)[1]))
    while True:
        try:
            stream, _ = srv.accept(timeout=-1)
        except streamsock.StreamSocketError:
            continue
        threading.Thread(target=echo, args=(stream,), daemon=True).start()


async def _streamsock_aio(certfile: str, keyfile: str) -> None:
    import streamsock
    from streamsock import aio

    async def echo(stream) -> None:
        try:
            while data := await stream.read(CHUNK):
                await stream.write(data)
        except streamsock.StreamSocketError:
            pass

    srv = await aio.server("tls://127.0.0.1:0", echo, _streamsock_context(certfile, keyfile))
    _announce(int(srv.local_name.rsplit(":", 1)[1]))
    await asyncio.Event().wait()


async def _streamsock_aio_protocol(certfile: str, keyfile: str) -> None:
    from streamsock import aio

    class Echo(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    srv = await aio.create_server(Echo, "tls://127.0.0.1:0", _streamsock_context(certfile, keyfile))
    _announce(int(srv.local_name.rsplit(":", 1)[1]))
    await asyncio.Event().wait()


# --- the standard library and uvloop -----------------------------------------------------------


async def _asyncio_streams(certfile: str, keyfile: str) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=_ssl_context(certfile, keyfile))
    _announce(srv.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


async def _asyncio_protocol(certfile: str, keyfile: str) -> None:
    class Echo(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    loop = asyncio.get_running_loop()
    srv = await loop.create_server(Echo, "127.0.0.1", 0, ssl=_ssl_context(certfile, keyfile))
    _announce(srv.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


def stdlib_threads(certfile: str, keyfile: str) -> None:
    """A thread per client over ssl.SSLSocket: the standard library's blocking API."""
    ctx = _ssl_context(certfile, keyfile)
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def echo(sock: socket.socket) -> None:
        try:
            with ctx.wrap_socket(sock, server_side=True) as tls:
                while data := tls.recv(CHUNK):
                    tls.sendall(data)
        except (OSError, ssl.SSLError):
            pass

    _announce(listener.getsockname()[1])
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=echo, args=(sock,), daemon=True).start()


def _on_loop(main, uvloop: bool):
    def run(certfile: str, keyfile: str) -> None:
        if uvloop:
            import uvloop as _uvloop

            _uvloop.install()
        asyncio.run(main(certfile, keyfile))

    return run


SERVERS = {
    "streamsock-blocking": streamsock_blocking,
    "streamsock-aio": _on_loop(_streamsock_aio, uvloop=False),
    "streamsock-aio-uvloop": _on_loop(_streamsock_aio, uvloop=True),
    "streamsock-aio-protocol": _on_loop(_streamsock_aio_protocol, uvloop=False),
    "asyncio": _on_loop(_asyncio_streams, uvloop=False),
    "asyncio-protocol": _on_loop(_asyncio_protocol, uvloop=False),
    "uvloop": _on_loop(_asyncio_streams, uvloop=True),
    "stdlib-threads": stdlib_threads,
}


def main() -> None:
    kind, certfile, keyfile = sys.argv[1:4]
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    SERVERS[kind](certfile, keyfile)


if __name__ == "__main__":
    main()
