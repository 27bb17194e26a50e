"""The ``streamsock`` command."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from . import __version__, _backend
from .address import Address
from .errors import AddressError


def _record(text: str, item: Address | AddressError) -> dict:
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


def _read_lines(path: str) -> list[str]:
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8", errors="surrogateescape")
    with stream:
        return [line.rstrip("\r\n") for line in stream if line.strip()]


def cmd_parse(args: argparse.Namespace) -> int:
    backend = _backend.get(args.backend) if args.backend else _backend.select()
    texts: list[str] = list(args.addresses)
    for path in args.file or ():
        texts.extend(_read_lines(path))
    if not texts:
        print("streamsock parse: give addresses as arguments or with -f FILE", file=sys.stderr)
        return 2
    batch = backend.parse_batch(texts)
    out = sys.stdout
    for text, item in zip(texts, batch.addresses("return")):
        out.write(json.dumps(_record(text, item)) + "\n")
    if batch.failed:
        print(f"streamsock parse: {batch.failed} of {len(texts)} addresses failed", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.run(sys.stdout, targets=args.targets, concurrency=args.concurrency)


def cmd_version(args: argparse.Namespace) -> int:
    backend = _backend.select()
    print(f"streamsock {__version__} ({backend.name} backend, {backend.openssl_version()})")
    return 0


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
    p.add_argument("-f", "--file", action="append", metavar="FILE", help="read addresses, one a line ('-' for stdin)")
    p.add_argument("--backend", choices=_backend.NAMES, help="parser to use (default: native when built)")
    p.set_defaults(func=cmd_parse)

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
    try:
        return args.func(args)
    except BrokenPipeError:  # `streamsock parse ... | head`
        sys.stderr.close()
        return 0
    except (OSError, ImportError) as exc:
        print(f"streamsock: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
