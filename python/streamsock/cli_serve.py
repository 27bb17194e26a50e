"""`streamsock serve`: a server on any streamsock address, echoing or `nc -l` style."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from contextlib import ExitStack

from .address import Address
from .certificate import Certificate
from .cli import StdinFd, UsageError, backend_for, relay, say
from .context import Context
from .errors import StreamSocketError
from .stream import SERVER_BIND, SERVER_LISTEN, Server, Stream, select

_MAX_CONCURRENT_CLIENTS = 64  # echo clients served at once; the next ones wait in the listen backlog
_HANDSHAKE_TIMEOUT = 10.0     # accept() runs the TLS handshake: a silent client holds it this long at most
_JOIN_TIMEOUT = 5.0
_CHUNK = 65536


def run(args: argparse.Namespace) -> int:
    backend = backend_for(args)
    address = backend.parse(args.address)
    _check_certificate_options(args, address)
    # SIGTERM stops the server as Ctrl-C does: the same clean path out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with ExitStack() as cleanup:
        context, fingerprint = _server_context(args, backend, cleanup)
        flags = SERVER_BIND if address.transport.datagram else SERVER_BIND | SERVER_LISTEN
        server = cleanup.enter_context(backend.server(address, flags=flags, context=context))
        announcement = f"listening on {_bound_address(server)}"
        if fingerprint:
            announcement += f" (self-signed certificate, sha256 fingerprint {fingerprint})"
        say("serve", announcement)
        try:
            if address.transport.datagram:
                _serve_datagrams(server, args.echo, args.max_clients)
            elif args.echo:
                EchoService(server).run(args.max_clients)
            else:
                _serve_one(server)
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


def _server_context(args: argparse.Namespace, backend, cleanup: ExitStack) -> tuple[Context | None, str | None]:
    """The server's Context and, for a fresh self-signed certificate, its SHA-256 fingerprint."""
    if args.cert:
        ssl = {"local_cert": args.cert}
        if args.key:
            ssl["local_pk"] = args.key
        return Context(ssl=ssl), None
    if not args.self_signed:
        return None, None
    cert_pem, key_pem = backend.self_signed("localhost")
    directory = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="streamsock-serve-"))  # mode 0700
    certfile, keyfile = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    for path, pem in ((certfile, cert_pem), (keyfile, key_pem)):
        with open(path, "w", encoding="ascii") as f:
            f.write(pem)
    context = Context(ssl={"local_cert": certfile, "local_pk": keyfile})
    return context, Certificate.from_pem(cert_pem).fingerprint("sha256")


def _bound_address(server: Server) -> str:
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


def _serve_one(server: Server) -> None:
    """`nc -l`: the first client's data to stdout, stdin to it."""
    while (client := _accept(server)) is None:
        pass
    stream, peer = client
    server.close()  # one client only: the next ones are refused rather than left waiting
    say("serve", f"connection from {peer}")
    with stream:
        relay(stream, datagram_idle=0)


class EchoService:
    """Echoes every client its data, a thread per client, at most
    _MAX_CONCURRENT_CLIENTS at once."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.slots = threading.BoundedSemaphore(_MAX_CONCURRENT_CLIENTS)
        self.lock = threading.Lock()
        self.clients: dict[threading.Thread, Stream] = {}
        self.stopping = False

    def run(self, max_clients: int | None) -> None:
        served = 0
        try:
            while max_clients is None or served < max_clients:
                self.slots.acquire()
                client = _accept(self.server)
                if client is None:
                    self.slots.release()
                    continue
                served += 1
                stream, peer = client
                thread = threading.Thread(target=self._echo, args=(stream, peer), daemon=True,
                                          name=f"streamsock-serve {peer}")
                with self.lock:
                    self.clients[thread] = stream
                thread.start()
            self.server.close()  # served enough: later clients are refused
            for thread in self._threads():
                thread.join()
        finally:
            self._stop_clients()

    def _echo(self, stream: Stream, peer: str) -> None:
        try:
            stream.set_timeout(-1)  # an idle client may stay; stopping the server closes it
            while data := stream.read(_CHUNK):
                stream.write(data)
        except StreamSocketError as exc:
            if not self.stopping:
                say("serve", f"client {peer}: {exc}")
        finally:
            stream.close()
            with self.lock:
                del self.clients[threading.current_thread()]
            self.slots.release()

    def _threads(self) -> list[threading.Thread]:
        with self.lock:
            return list(self.clients)

    def _stop_clients(self) -> None:
        self.stopping = True
        with self.lock:
            streams = list(self.clients.values())
        for stream in streams:
            stream.close()  # from another thread: wakes the client's thread, which then ends
        for thread in self._threads():
            thread.join(_JOIN_TIMEOUT)


def _serve_datagrams(server: Server, echo: bool, max_datagrams: int | None) -> None:
    """udp and udg: each datagram back to its sender (--echo), or to stdout
    with stdin going to the latest sender."""
    stdin = None if echo else StdinFd()
    stdout = sys.stdout.buffer
    latest_sender = None
    received = 0
    while max_datagrams is None or received < max_datagrams:
        readers: list = [server]
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
        if stdin is not None and stdin in readable:
            chunk = stdin.read(_CHUNK)
            if chunk:
                server.sendto(chunk, latest_sender)
            else:
                stdin = None  # stdin has ended; datagrams still arrive
