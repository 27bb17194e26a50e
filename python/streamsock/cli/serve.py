"""`streamsock serve`: a server on any streamsock address, echoing or `nc -l` style."""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import sys
import tempfile
from contextlib import ExitStack
from typing import Callable

from .. import _backend, aio
from ..address import Address
from ..certificate import Certificate
from .main import ECHO_IDLE_TIMEOUT, StdinFd, UsageError, backend_for, relay, say
from ..context import Context
from ..errors import StreamSocketError
from ..stream import SERVER_BIND, SERVER_LISTEN, Server, Stream, select

_HANDSHAKE_TIMEOUT = 10.0  # a client that stalls its TLS handshake is dropped after this long
_CHUNK = 65536


def run(args: argparse.Namespace) -> int:
    backend = backend_for(args)
    address = backend.parse(args.address)
    _check_certificate_options(args, address)
    with ExitStack() as cleanup:
        context, fingerprint = _server_context(args, backend, cleanup)

        def announce(bound: str) -> None:
            if fingerprint:
                bound += f" (self-signed certificate, sha256 fingerprint {fingerprint})"
            say("serve", f"listening on {bound}")

        if args.echo and not address.transport.datagram:
            EchoService(backend, address, context, idle_timeout=args.idle_timeout or ECHO_IDLE_TIMEOUT,
                        max_connections=args.max_connections, max_clients=args.max_clients).run(announce)
            return 0
        # SIGTERM stops the server as Ctrl-C does: the same clean path out.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        flags = SERVER_BIND if address.transport.datagram else SERVER_BIND | SERVER_LISTEN
        server = cleanup.enter_context(backend.server(address, flags=flags, context=context))
        announce(_bound_address(server))
        try:
            if address.transport.datagram:
                _serve_datagrams(server, args.echo, args.max_clients)
            else:
                _serve_one(server, args.idle_timeout)
        except KeyboardInterrupt:
            pass  # Ctrl-C or SIGTERM: the usual way to stop a server, not an error
    return 0


def _check_certificate_options(args: argparse.Namespace, address: Address) -> None:
    if args.self_signed and args.cert:
        raise UsageError("give either --cert or --self-signed, not both")
    if args.key and not args.cert:
        raise UsageError("--key goes with --cert")
    has_certificate = bool(args.cert or args.self_signed)
    scheme = address.transport.value
    if address.secure and not has_certificate:
        raise UsageError(f"a {scheme}:// server needs --cert FILE [--key FILE] or --self-signed")
    if has_certificate and not address.secure:
        raise UsageError(f"certificates are for ssl://, tls:// and tlsv1.x:// servers, not {scheme}://")


def _server_context(args: argparse.Namespace, backend: _backend.Backend,
                    cleanup: ExitStack) -> tuple[Context, str | None]:
    """The server's Context and, for a fresh self-signed certificate, its SHA-256 fingerprint."""
    sock = {"backlog": args.backlog}
    if args.cert:
        ssl = {"local_cert": args.cert}
        if args.key:
            ssl["local_pk"] = args.key
        return Context(ssl=ssl, socket=sock), None
    if not args.self_signed:
        return Context(socket=sock), None
    cert_pem, key_pem = backend.self_signed("localhost")
    directory = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="streamsock-serve-"))  # mode 0700
    certfile, keyfile = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    for path, pem in ((certfile, cert_pem), (keyfile, key_pem)):
        with open(path, "w", encoding="ascii") as f:
            f.write(pem)
    context = Context(ssl={"local_cert": certfile, "local_pk": keyfile}, socket=sock)
    return context, Certificate.from_pem(cert_pem).fingerprint("sha256")


def _bound_address(server: Server | aio.AsyncServer) -> str:
    """Where clients reach the server: port 0 replaced by the port the system chose."""
    address = server.address
    if address.transport.local:
        return str(address)
    return f"{address.transport.value}://{server.local_name}"


def _accept(server: Server) -> tuple[Stream, str] | None:
    """The next client and its name, or None when it failed before it became one
    (a failed TLS handshake): that is logged and the server goes on."""
    select([server], [], [], None)  # wait here, where Ctrl-C and SIGTERM get through
    try:
        return server.accept(timeout=_HANDSHAKE_TIMEOUT)
    except StreamSocketError as exc:
        say("serve", f"a client failed: {exc}")
        return None


def _serve_one(server: Server, idle_timeout: float | None) -> None:
    """`nc -l`: the first client's data to stdout, stdin to it."""
    while (client := _accept(server)) is None:
        pass
    stream, peer = client
    server.close()  # one client only: the next ones are refused rather than left waiting
    say("serve", f"connection from {peer}")
    with stream:
        if not relay(stream, datagram_idle=0, idle_timeout=idle_timeout):
            say("serve", f"nothing sent or received for {idle_timeout:g} s: closing")


class EchoService:
    """Echoes every client its data, all of them on one asyncio loop.

    Resources stay bounded whatever the clients do: TLS handshakes run
    concurrently in the acceptor, each within the handshake timeout; a client
    with nothing sent or received for ``idle_timeout`` seconds is closed; and
    at ``max_connections`` the client idle longest is closed to make room, so
    a new client is always served, however many idle ones hold connections.
    """

    def __init__(self, backend: _backend.Backend, address: Address, context: Context | None, *,
                 idle_timeout: float, max_connections: int, max_clients: int | None) -> None:
        self.backend = backend
        self.address = address
        self.context = context
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_clients = max_clients
        # The clients' handlers, the one idle longest first.
        self.clients: collections.OrderedDict[asyncio.Task[None], None] = collections.OrderedDict()
        self.served = 0
        self.all_served = asyncio.Event()
        self.failures_reported = 0

    def run(self, announce: Callable[[str], None]) -> None:
        try:
            asyncio.run(self._main(announce))
        except KeyboardInterrupt:
            pass  # Ctrl-C before the loop had its own handler in place

    async def _main(self, announce: Callable[[str], None]) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        server = await aio.server(self.address, self._echo, self.context, backend=self.backend,
                                  handshake_timeout=_HANDSHAKE_TIMEOUT)
        self.server = server
        announce(_bound_address(server))
        reporter = loop.create_task(self._report_failures(server))
        try:
            waits = [loop.create_task(stop.wait()), loop.create_task(self.all_served.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for wait in waits:
                wait.cancel()
            server.close()
            if not stop.is_set():  # served enough: the last clients finish, unless a signal comes first
                finishing = loop.create_task(server.wait_closed())
                await asyncio.wait([finishing, loop.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        finally:
            reporter.cancel()
            server.close()
            server.close_clients()
            await server.wait_closed()

    async def _echo(self, stream: aio.AsyncStream) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.served += 1
        if self.max_clients is not None and self.served >= self.max_clients:
            self.server.close()  # later clients are refused
            self.all_served.set()
        while len(self.clients) >= self.max_connections:
            oldest, _ = self.clients.popitem(last=False)
            oldest.cancel()  # its stream is closed as its handler ends
        self.clients[task] = None
        peer = stream.peer_name
        try:
            while True:
                async with asyncio.timeout(self.idle_timeout):
                    data = await stream.read(_CHUNK)
                if not data:
                    return
                self.clients.move_to_end(task)
                async with asyncio.timeout(self.idle_timeout):  # a client that never reads
                    await stream.write(data)
        except TimeoutError:
            pass  # idle too long: closed
        except StreamSocketError as exc:
            say("serve", f"client {peer}: {exc}")
        finally:
            self.clients.pop(task, None)

    async def _report_failures(self, server: aio.AsyncServer) -> None:
        """Failed TLS handshakes, told once a second at most."""
        while True:
            await asyncio.sleep(1.0)
            failures = server.handshake_failures
            if failures > self.failures_reported:
                new = failures - self.failures_reported
                self.failures_reported = failures
                who = "a client" if new == 1 else f"{new} clients"
                say("serve", f"{who} failed{'' if new == 1 else ', the last'}: {server.last_handshake_error}")


def _serve_datagrams(server: Server, echo: bool, max_datagrams: int | None) -> None:
    """udp and udg: each datagram back to its sender (--echo), or to stdout
    with stdin going to the latest sender."""
    stdin = None if echo else StdinFd()
    stdout = sys.stdout.buffer
    latest_sender: str | None = None
    received = 0
    while max_datagrams is None or received < max_datagrams:
        readers: list[Server | StdinFd] = [server]
        if stdin is not None and latest_sender is not None:  # until someone writes, stdin has no one to go to
            readers.append(stdin)
        readable = select(readers, [], [], None)[0]
        if server in readable:
            data, latest_sender = server.recvfrom(_CHUNK, timeout=0)
            received += 1
            if echo:
                server.sendto(data, latest_sender)
            else:
                stdout.write(data)
                stdout.flush()
        if stdin is not None and latest_sender is not None and stdin in readable:  # (read once someone wrote)
            chunk = stdin.read(_CHUNK)
            if chunk:
                server.sendto(chunk, latest_sender)
            else:
                stdin = None  # stdin has ended; datagrams still arrive
