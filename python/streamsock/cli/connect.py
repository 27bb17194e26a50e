"""`streamsock connect`: nc and openssl s_client in one, over any streamsock address."""

from __future__ import annotations

import argparse

from ..address import Transport
from .main import UsageError, backend_for, relay, say, tls_client_context
from ..stream import Stream


def run(args: argparse.Namespace) -> int:
    backend = backend_for(args)
    address = backend.parse(args.address)
    if args.starttls and address.transport is not Transport.TCP:
        raise UsageError(f"--starttls needs a tcp:// address (the dialogue starts in plaintext), not {address}")
    context = tls_client_context(args)
    stream = backend.client(address, timeout=args.timeout, context=context)
    with stream:
        if args.starttls:
            _upgrade(stream, args.starttls, args.timeout)
        say("connect", _describe(stream, args))
        if not relay(stream, datagram_idle=args.timeout, idle_timeout=args.idle_timeout):
            say("connect", f"nothing sent or received for {args.idle_timeout:g} s: closing")
    return 0


def _upgrade(stream: Stream, protocol: str, timeout: float) -> None:
    from ..starttls import negotiate

    stream.set_timeout(timeout)  # the dialogue and the handshake share the connect deadline's length
    greeting = negotiate(stream, protocol)
    say("connect", "greeting: " + (greeting.decode("latin-1").splitlines() or [""])[0])
    stream.enable_crypto(True)


def _describe(stream: Stream, args: argparse.Namespace) -> str:
    """The one-line account of the connection: who, and how it is protected."""
    peer = stream.peer_name or str(stream.address)
    crypto = stream.crypto
    if crypto is None:
        return f"connected to {peer} (plaintext)"
    if args.pin:
        trust = "certificate pinned by its SHA-256 fingerprint"
    elif args.insecure:
        trust = "certificate NOT verified (--insecure)"
    else:
        trust = f"certificate verified for {stream.context.peer_name(stream.address)}"
    via = f"STARTTLS {args.starttls}, " if args.starttls else ""
    return f"connected to {peer} ({via}{crypto['protocol']}, {crypto['cipher_name']}, {trust})"
