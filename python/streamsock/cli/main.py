"""The ``streamsock`` command: argument parsing, dispatch, and what the commands share.

Each network command lives in a module of this package (probe, connect,
serve, demo), imported only when that command runs.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import os
import signal
import sys
from typing import IO, Any, Callable, Iterator, Sequence, TypeAlias

from .. import __version__, _backend
from ..address import Address
from ..context import LEGACY_CIPHERS, Context
from ..errors import AddressError
from ..starttls import PROTOCOLS as STARTTLS_PROTOCOLS
from ..stream import SHUT_WR, Stream, select


class UsageError(Exception):
    """A command line that cannot be run as given: exit status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C raises KeyboardInterrupt, so that a command
    stops the same clean way (its summary printed): exit status 143. See
    signals.StopOnSignal."""


# --- helpers the commands share ---------------------------------------------------------


def say(command: str, message: str) -> None:
    """One line on stderr, prefixed with the command's name."""
    print(f"streamsock {command}: {message}", file=sys.stderr, flush=True)


def backend_for(args: argparse.Namespace) -> _backend.Backend:
    return _backend.get(args.backend) if args.backend else _backend.select()


_TLS_VERSIONS = {"1.0": 8, "1.1": 16, "1.2": 32, "1.3": 64}  # CRYPTO_PROTO_TLSv1_x


def tls_client_context(args: argparse.Namespace) -> Context | None:
    """The Context for --cafile, --insecure, --peer-name/--sni, --pin and the
    options only probe has (--alpn, --cert/--key, --min-tls/--max-tls,
    --ciphers, --security-level); None
    when none was given, so the defaults apply."""
    ssl: dict[str, Any] = {}
    if args.cafile:
        ssl["cafile"] = args.cafile
    if args.peer_name:
        ssl["peer_name"] = args.peer_name
    if getattr(args, "alpn", None):
        ssl["alpn_protocols"] = args.alpn
    if getattr(args, "cert", None):
        ssl["local_cert"] = args.cert
        if args.key:
            ssl["local_pk"] = args.key
    elif getattr(args, "key", None):
        raise UsageError("--key goes with --cert")
    for option, name in (("min_tls", "min_proto_version"), ("max_tls", "max_proto_version")):
        if getattr(args, option, None):
            ssl[name] = _TLS_VERSIONS[getattr(args, option)]
    if getattr(args, "ciphers", None):
        ssl["ciphers"] = args.ciphers
    elif getattr(args, "min_tls", None) in ("1.0", "1.1"):
        ssl["ciphers"] = LEGACY_CIPHERS  # asked to reach old servers: their suites all use SHA-1
    if getattr(args, "security_level", None) is not None:
        ssl["security_level"] = args.security_level
    if args.insecure:
        ssl.update(verify_peer=False, verify_peer_name=False)
    if args.pin:
        # The pinned fingerprint is the trust: a self-signed certificate has no CA to verify against.
        ssl.update(peer_fingerprint=args.pin, verify_peer=False, verify_peer_name=False)
    try:
        return Context(ssl=ssl) if ssl else None
    except ValueError as exc:  # a malformed --pin
        raise UsageError(str(exc)) from None


def read_lines(file: IO[str], *, comments: bool = False) -> Iterator[str]:
    """The non-blank lines of ``file`` without their line ends, one at a time
    (never the whole file in memory); with ``comments``, lines starting with
    '#' are skipped too."""
    with file:
        for line in file:
            text = line.strip()
            if text and not (comments and text.startswith("#")):
                yield line.rstrip("\r\n")


class StdinFd:
    """Standard input as select() wants it (an object with fileno()), read unbuffered."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno() if sys.stdin is not None else -1

    def fileno(self) -> int:
        return self.fd

    def read(self, size: int) -> bytes:
        return os.read(self.fd, size) if self.fd >= 0 else b""


ECHO_IDLE_TIMEOUT = 60.0  # serve --echo closes a client idle this long (PHP's default_socket_timeout)
_RELAY_CHUNK = 65536
_RELAY_BACKLOG = 1 << 20  # stdin bytes held for a peer that is slow to read; then stdin waits


def relay(stream: Stream, datagram_idle: float, idle_timeout: float | None = None) -> bool:
    """nc's loop: stdin to ``stream`` and ``stream`` to stdout until the peer's
    end of stream; True then, False when ``idle_timeout`` seconds passed with
    nothing to read or write.

    At the end of stdin the stream's write side is shut down (after TLS
    close_notify), so the peer sees the end of the input, and the relay goes
    on reading until the peer closes. Datagram streams have no end: once
    stdin has ended, the relay stops after ``datagram_idle`` seconds without
    a reply. Stream errors propagate.
    """
    stdin = StdinFd()
    stdout = sys.stdout.buffer
    datagram = stream.address.transport.datagram
    outgoing: collections.deque[bytes] = collections.deque()  # one item per stdin read: a datagram each
    outgoing_bytes = 0
    reading_stdin = stdin.fd >= 0
    write_side_done = False
    stream.set_blocking(False)  # both directions at once: never wait inside read or write
    try:
        while True:
            readers: list[Stream | StdinFd] = [stream]
            if reading_stdin and outgoing_bytes < _RELAY_BACKLOG:
                readers.append(stdin)
            datagram_done = datagram and not reading_stdin and not outgoing
            idle: float | None = idle_timeout
            if datagram_done:
                idle = datagram_idle if idle_timeout is None else min(datagram_idle, idle_timeout)
            readable, writable, _ = select(readers, [stream] if outgoing else [], [], idle)
            if idle is not None and not readable and not writable:
                return datagram_done  # a datagram peer with nothing more to say, or the idle timeout
            if stream in readable:
                data = stream.read_nowait(_RELAY_CHUNK)  # None: readable, but no whole TLS record yet
                if data == b"":
                    return True
                if data:
                    stdout.write(data)
                    stdout.flush()
            if stdin in readable:
                chunk = stdin.read(_RELAY_CHUNK)
                if chunk:
                    outgoing.append(chunk)
                    outgoing_bytes += len(chunk)
                else:
                    reading_stdin = False
            while outgoing:  # as much as the socket takes now; select says when it takes more
                chunk = outgoing[0]
                sent = stream.write(chunk)
                outgoing_bytes -= sent
                if sent < len(chunk):
                    outgoing[0] = chunk[sent:]
                    break
                outgoing.popleft()
            if not reading_stdin and not outgoing and not write_side_done:
                write_side_done = True
                if not datagram:
                    stream.shutdown(SHUT_WR)
    finally:
        if not stream.closed:
            stream.set_blocking(True)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _port_number(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be 1-65535, not {value}")
    return value


def _shard_spec(text: str) -> tuple[int, int]:
    from ..shard import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seed(text: str) -> int:
    from ..shard import checked_seed

    try:
        return checked_seed(int(text, 0))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def escaped_bytes(text: str) -> bytes:
    r"""--payload's TEXT with \r, \n, \t, \\ and \xHH interpreted, as bytes."""
    try:
        # unicode_escape reads bytes as Latin-1, so UTF-8 text survives the round trip unchanged.
        return text.encode("utf-8").decode("unicode_escape").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not bytes: {exc.reason}") from None


# --- parse, demo, version --------------------------------------------------------------


def _record(text: str, item: Address | AddressError) -> dict[str, object]:
    if isinstance(item, AddressError):
        return {
            "input": text,
            "error": item.code,
            "message": str(item),
            "offset": item.offset,
            "length": item.length,
        }
    return {
        "input": text,
        "canonical": str(item),
        "transport": item.transport.value,
        "host": item.host,
        "port": item.port,
        "path": item.path,
        "secure": item.secure,
    }


def cmd_parse(args: argparse.Namespace) -> int:
    backend = backend_for(args)
    texts: list[str] = list(args.addresses)
    for file in args.file or ():
        texts.extend(read_lines(file))
    if not texts:
        raise UsageError("give addresses as arguments or with -f FILE")
    batch = backend.parse_batch(texts)
    out = sys.stdout
    for text, item in zip(texts, batch.addresses("return")):
        out.write(json.dumps(_record(text, item)) + "\n")
    if batch.failed:
        say("parse", f"{batch.failed} of {len(texts)} addresses failed")
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.run(sys.stdout, targets=args.targets, concurrency=args.concurrency)


def cmd_version(args: argparse.Namespace) -> int:
    backend = _backend.select()
    print(f"streamsock {__version__}: {_backend.describe(backend)}, {backend.openssl_version()}")
    return 0


def _command_module(name: str) -> Callable[[argparse.Namespace], int]:
    """A command's run(args), its module imported only when that command runs."""
    return lambda args: importlib.import_module(f".{name}", __package__).run(args)


# --- the parser -------------------------------------------------------------------------

_Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # what add_subparsers() returns

_ADDRESS_FILE = argparse.FileType("r", encoding="utf-8", errors="surrogateescape")


def _add_backend_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--backend", choices=_backend.NAMES, help=f"{what} (default: native when built)")


def _add_tls_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cafile", metavar="FILE", help="trust the CA certificates in FILE (PEM) instead of the system's")
    p.add_argument("--insecure", action="store_true", help="do not verify the server's certificate or name")
    p.add_argument("--peer-name", "--sni", metavar="NAME", dest="peer_name",
                   help="the name to send as SNI and verify the certificate against (default: the address's host)")
    p.add_argument("--pin", metavar="SHA256", help="trust the server certificate with this SHA-256 fingerprint "
                   "(as `streamsock serve --self-signed` prints it) instead of a CA")


def _add_probe_parser(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "probe",
        help="connect to many targets at once; one JSON line or summary line per target",
        description="Connect to many targets at once (TLS handshake and verification for ssl://, tls:// and "
        "tlsv1.x:// targets) and report each one as it finishes; a progress bar and a summary table "
        "(outcomes, rate, latency percentiles) go to stderr. Exit status 0 when every target was ok, "
        "1 when some failed, 2 for usage errors.",
    )
    p.add_argument("addresses", nargs="*", metavar="ADDR", help='e.g. "tls://example.com:443", "host:25"')
    p.add_argument("-f", "--file", action="append", type=_ADDRESS_FILE, metavar="FILE",
                   help="read targets, one a line ('-' for stdin; blank lines and #comments skipped); "
                   "read as the probe goes, so any size works. With no ADDR and no -f, targets come from "
                   "stdin when it is not a terminal")
    p.add_argument("-p", "--port", type=_port_number, metavar="N", help="the port of targets that give none")
    p.add_argument("--scheme", choices=("tcp", "ssl", "tls", "tlsv1.0", "tlsv1.1", "tlsv1.2", "tlsv1.3"),
                   help="the transport of targets written without one (default tcp, as PHP)")
    p.add_argument("--tls", action="store_const", const="tls", dest="scheme", help="short for --scheme tls")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="append the records to FILE (each written whole) instead of stdout")
    p.add_argument("--format", choices=("jsonl", "csv"),
                   help="the records as JSON lines or CSV (default: a line of text on stdout, jsonl with -o)")
    p.add_argument("-c", "--concurrency", type=positive_int, default=100, metavar="N",
                   help="connections in flight (default 100)")
    p.add_argument("--timeout", type=positive_float, default=5.0, metavar="S",
                   help="deadline for each whole target (default 5)")
    p.add_argument("--connect-timeout", type=positive_float, metavar="S",
                   help="deadline for the name lookup and the TCP connect (default: --timeout)")
    p.add_argument("--handshake-timeout", type=positive_float, metavar="S",
                   help="deadline from connected to TLS done, a STARTTLS dialogue included (default: --timeout)")
    p.add_argument("--rate", type=positive_float, metavar="R", help="at most R new connections per second")
    p.add_argument("--starttls", choices=STARTTLS_PROTOCOLS, metavar="PROTO",
                   help=f"upgrade tcp:// targets with STARTTLS ({', '.join(STARTTLS_PROTOCOLS)})")
    _add_tls_client_options(p)
    p.add_argument("--payload", type=escaped_bytes, default=b"", metavar="TEXT",
                   help=r"send TEXT once connected (\r, \n, \t, \xHH interpreted)")
    p.add_argument("--banner", type=int, default=0, metavar="N", help="keep up to N bytes of the reply")
    p.add_argument("--resume-sessions", action="store_true", help="resume TLS sessions for repeated targets")
    p.add_argument("--shard", type=_shard_spec, metavar="I/N",
                   help="probe only shard I of N (0 to N-1): N runs with the same input and --seed cover it once")
    p.add_argument("--seed", type=_seed, default=0, metavar="S", help="the key of the shard hash (default 0)")
    p.add_argument("--resume", metavar="FILE",
                   help="go on with the run that wrote FILE (its --json, -o or CSV output): skip the targets it "
                   "records and append the rest to it (or to -o)")
    p.add_argument("--cluster", metavar="ADDR",
                   help="run as --shards tasks on a Dask cluster: 'local' (a worker per core) or the scheduler's "
                   "address (tcp://host:8786); -o names a directory, one file per shard. Needs streamsock[dask]")
    p.add_argument("--shards", type=positive_int, metavar="N",
                   help="with --cluster, the number of shards (default: the cluster's worker threads)")
    p.add_argument("--chain", action="store_true",
                   help='add the certificate chain the server sent ("chain": each certificate\'s fields and '
                        'base64 DER, leaf first)')
    p.add_argument("--ja4plus", action="store_true",
                   help="add the JA4S and JA4X fingerprints (JA4+: FoxIO License 1.1, free for internal and "
                        "academic use, not for monetization)")
    p.add_argument("--json", action="store_const", const="jsonl", dest="format", help="short for --format jsonl")
    p.add_argument("--alpn", metavar="LIST", help="ALPN protocols to offer, e.g. h2,http/1.1")
    p.add_argument("--cert", metavar="FILE", help="a client certificate (PEM; may hold the key too)")
    p.add_argument("--key", metavar="FILE", help="its private key (PEM)")
    p.add_argument("--min-tls", choices=tuple(_TLS_VERSIONS),
                   help="the oldest TLS version to offer (1.0 and 1.1 also need --security-level 0 on OpenSSL 3)")
    p.add_argument("--max-tls", choices=tuple(_TLS_VERSIONS), help="the newest TLS version to offer")
    p.add_argument("--ciphers", metavar="LIST",
                   help="the TLS 1.2-and-older suites to offer, in OpenSSL's syntax (default: forward secrecy "
                        "and no SHA-1; OpenSSL's DEFAULT with --min-tls 1.0 or 1.1)")
    p.add_argument("--security-level", metavar="N", type=int, choices=range(6),
                   help="OpenSSL's security level 0-5 (default: the system's); TLS 1.0 and 1.1 need 0")
    _add_backend_option(p, "backend to probe with")
    p.set_defaults(func=_command_module("probe"))


def _add_connect_parser(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "connect",
        help="connect and copy stdin to the stream and the stream to stdout (nc, openssl s_client)",
        description="Connect to ADDR (TLS addresses are verified), say on stderr what was negotiated, then "
        "copy stdin to the connection and the connection to stdout until the server closes it. At the end "
        "of stdin the write side is shut down (TLS: close_notify first) and the server's reply is read to "
        "its end. Errors exit with status 1.",
    )
    p.add_argument("address", metavar="ADDR", help='e.g. "tls://example.com:443", "tcp://[::1]:25", "unix:///run/s"')
    p.add_argument("--starttls", choices=STARTTLS_PROTOCOLS, metavar="PROTO",
                   help=f"connect in plaintext, run the STARTTLS dialogue ({', '.join(STARTTLS_PROTOCOLS)}), "
                   "then continue over TLS")
    _add_tls_client_options(p)
    p.add_argument("--timeout", type=positive_float, default=10.0, metavar="S",
                   help="deadline for connecting, the handshake and the STARTTLS dialogue (default 10); "
                   "for udp and udg, how long to wait for replies once stdin has ended")
    p.add_argument("--idle-timeout", type=positive_float, metavar="S",
                   help="close the connection after S seconds with nothing sent or received (default: never)")
    _add_backend_option(p, "backend to connect with")
    p.set_defaults(func=_command_module("connect"))


def _add_serve_parser(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "serve",
        help="listen on an address: echo every client, or pass one client's data to stdout (nc -l)",
        description="Listen on ADDR (port 0: any free port) and say on stderr where. With --echo, every client "
        "gets its data back, all at once on one event loop (TLS handshakes concurrently, idle clients closed); "
        "otherwise the first client's data goes to stdout and stdin goes to it, as with `nc -l`. "
        "Ctrl-C or SIGTERM stops the server.",
    )
    p.add_argument("address", metavar="ADDR", help='e.g. "tls://127.0.0.1:0", "tcp://[::]:7000", "unix:///tmp/s"')
    p.add_argument("--cert", metavar="FILE", help="the server certificate (PEM; may hold the key too)")
    p.add_argument("--key", metavar="FILE", help="its private key (PEM)")
    p.add_argument("--self-signed", action="store_true",
                   help="use a fresh self-signed certificate; its SHA-256 fingerprint is printed for clients to pin")
    p.add_argument("--echo", action="store_true", help="send every client its data back")
    p.add_argument("--max-clients", type=positive_int, metavar="N",
                   help="exit after serving N clients (udp and udg: N datagrams)")
    p.add_argument("--idle-timeout", type=positive_float, metavar="S",
                   help=f"close a client after S seconds with nothing sent or received (default: "
                   f"{ECHO_IDLE_TIMEOUT:g} with --echo, else never)")
    p.add_argument("--max-connections", type=positive_int, default=512, metavar="N",
                   help="with --echo, clients connected at once; at N the one idle longest is closed to make "
                   "room for a new one (default 512)")
    p.add_argument("--backlog", type=positive_int, default=511, metavar="N",
                   help="the listen backlog: connections the system queues before they are accepted "
                   "(default 511, as nginx; the library's default is PHP's 32)")
    _add_backend_option(p, "backend to serve with")
    p.set_defaults(func=_command_module("serve"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamsock",
        description="PHP's stream-socket transports: tcp://, udp://, ssl://, tls://, unix://, udg://.",
    )
    parser.add_argument("--version", action="store_true", help="print the version, backend and OpenSSL")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "parse",
        help="parse addresses, print JSON lines",
        description="Parse transport addresses and print one JSON object per address "
        "(the canonical form and its parts, or the error). Exit status 1 if any failed.",
    )
    p.add_argument("addresses", nargs="*", metavar="ADDR", help='e.g. "tls://[::1]:443", "host:80", "unix:///run/s"')
    p.add_argument("-f", "--file", action="append", type=_ADDRESS_FILE, metavar="FILE",
                   help="read addresses, one a line ('-' for stdin)")
    _add_backend_option(p, "parser to use")
    p.set_defaults(func=cmd_parse)

    _add_probe_parser(sub)
    _add_connect_parser(sub)
    _add_serve_parser(sub)

    d = sub.add_parser(
        "demo",
        help="loopback servers for every transport, clients on every backend, a probe; prints a table",
        description="Starts tcp, udp, tls, SMTP-STARTTLS and unix servers on loopback (a fresh self-signed "
        "certificate for TLS), talks to each with every backend, then probes many loopback targets at once.",
    )
    d.add_argument("--targets", type=int, default=3000, help="TLS handshakes for the probe (default 3000)")
    d.add_argument("-c", "--concurrency", type=int, default=100, help="probe concurrency (default 100)")
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        return cmd_version(args)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    func: Callable[[argparse.Namespace], int] = args.func  # set_defaults(func=...) of its subparser
    try:
        return func(args)
    except (UsageError, AddressError) as exc:  # an address raised here is the ADDR argument's
        say(args.command, str(exc))
        return 2
    except Terminated:
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:  # Ctrl-C: no traceback, the shell's usual status
        return 130
    except BrokenPipeError:  # `streamsock probe ... | head`
        sys.stderr.close()
        return 0
    except (OSError, ImportError) as exc:  # every streamsock error is an OSError
        say(args.command, str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
