"""Address parsing: native (single, batch with and without objects) against the
pure-Python parser and against ``urllib.parse.urlsplit`` with an adapter.

    python bench/bench_parse.py [--rounds N] [--quick] [--json FILE]

Inputs are 5000 distinct addresses (urlsplit caches fewer than 128, so small
sets measure its cache rather than its parser), in the mix a scanner's target
list has: host:port, IPv4, bracketed IPv6, every inet scheme, unix paths.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).parent))

import streamsock  # noqa: E402
from _harness import Contender, cli, measure, report, write_json  # noqa: E402

N_ADDRESSES = 5000
TARGETS = {"native single": 0.85, "native batch, objects": 0.45, "native batch, no objects": 0.10}


def make_addresses(n: int, seed: int = 20261124) -> list[str]:
    rng = random.Random(seed)
    words = ["api", "mail", "www", "edge", "db", "cache", "auth", "cdn", "vpn", "smtp", "imap", "git"]
    tlds = ["com", "net", "org", "io", "de", "example"]

    def hostname() -> str:
        return ".".join([rng.choice(words) + str(rng.randrange(1000)), rng.choice(words), rng.choice(tlds)])

    def ipv4() -> str:
        return ".".join(str(rng.randrange(256)) for _ in range(4))

    def ipv6() -> str:
        return f"2001:db8:{rng.randrange(65536):x}::{rng.randrange(65536):x}"

    makers = [
        (30, lambda: f"{hostname()}:{rng.randrange(1, 65536)}"),
        (20, lambda: f"{ipv4()}:{rng.choice([22, 25, 80, 443, 587, 8443, rng.randrange(65536)])}"),
        (15, lambda: f"tls://{hostname()}:443"),
        (10, lambda: f"{rng.choice(['tcp', 'ssl', 'tls'])}://[{ipv6()}]:{rng.randrange(65536)}"),
        (8, lambda: f"udp://{ipv4()}:{rng.randrange(65536)}"),
        (5, lambda: f"tlsv1.{rng.randrange(4)}://{hostname()}:{rng.randrange(65536)}"),
        (5, lambda: f"unix:///run/{rng.choice(words)}/{rng.randrange(10**6)}.sock"),
        (7, lambda: hostname()),
    ]
    weights = [w for w, _ in makers]
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        text = rng.choices(makers, weights)[0][1]()
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def urlsplit_adapter(text: str) -> tuple:
    """What a user would write instead: urlsplit plus PHP's bare-host rule."""
    parts = urlsplit(text if "://" in text else "tcp://" + text)
    if parts.scheme in ("unix", "udg"):
        return (parts.scheme, None, None, parts.netloc + parts.path)
    return (parts.scheme, parts.hostname, parts.port, None)


def main() -> None:
    args = cli(__doc__.splitlines()[0])
    addresses = make_addresses(N_ADDRESSES)
    native = streamsock.get_backend("native")
    pure = streamsock.get_backend("pure")

    # Every contender must agree on what it parsed before it is timed.
    expected = [pure.parse(a) for a in addresses]
    assert [native.parse(a) for a in addresses] == expected
    assert native.parse_many(addresses) == expected
    assert list(native.parse_batch(addresses)) == expected
    assert [urlsplit_adapter(a)[2] for a in addresses] == [a.port for a in expected]

    n = len(addresses)
    native_parse, pure_parse = native.parse, pure.parse
    contenders = [
        Contender("pure-Python parser", lambda: [pure_parse(a) for a in addresses], n),
        Contender("native single", lambda: [native_parse(a) for a in addresses], n, TARGETS["native single"]),
        Contender("native batch, objects", lambda: native.parse_many(addresses), n, TARGETS["native batch, objects"]),
        Contender(
            "native batch, no objects", lambda: native.parse_batch(addresses), n, TARGETS["native batch, no objects"]
        ),
        Contender("urllib.parse.urlsplit + adapter", lambda: [urlsplit_adapter(a) for a in addresses], n),
    ]
    measure(contenders, rounds=args.rounds)
    results = report(f"Parsing {n} distinct addresses", contenders, baseline="pure-Python parser")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
