"""Soak test: descriptor count and resident memory over many connections.

    python bench/soak.py [--cycles 10000] [--backend native|pure|both] [--every 1000]

For each backend: ``--cycles`` TLS connect + handshake + close cycles, then
``--cycles`` failing connects (alternately a refused port and a certificate that does
not verify), against one local ``openssl s_server -www -tls1_3``. The open-descriptor
count (/proc/self/fd) and RSS (/proc/self/statm) are sampled after a 200-cycle
warm-up and then every ``--every`` cycles, each time after ``gc.collect()``; a table per
backend and phase is printed, then a verdict: flat, or growing by so much per 1000
cycles (least-squares slope of RSS over the samples).

Why ``openssl s_server`` in a subprocess rather than a PyTLSServer in a thread: the
process being measured then holds nothing but the clients, so every descriptor and
every kilobyte in the figures is streamsock's; an in-process server would add its own
sockets, threads and SSL objects (and its allocator churn) to the numbers. s_server
serves one connection at a time, which is all a sequential soak needs. Each backend
runs in a fresh child interpreter, so one backend's allocations do not shift the
other's baseline.

Certificates come from trustme (the test extras): a CA the client trusts, a second
CA it does not (for the verification failures), and a localhost leaf.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

WARMUP = 200
FLAT_KIB_PER_1000 = 64  # below this slope (and no descriptor growth) a run is "flat"
PAGE = os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


# -- the child: one backend, measured --------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    import streamsock as ss

    backend = ss.get_backend(args.child)
    good = ss.Context(ssl={"cafile": args.cafile, "peer_name": "localhost"})
    untrusted = ss.Context(ssl={"cafile": args.other_cafile, "peer_name": "localhost"})
    tls_url = f"tls://127.0.0.1:{args.port}"
    refused_url = f"tls://127.0.0.1:{args.refused_port}"

    def tls_cycle(_: int) -> None:
        s = backend.client(tls_url, timeout=10, context=good)
        s.close()

    def failing_cycle(i: int) -> None:
        try:
            if i % 2:
                backend.client(tls_url, timeout=10, context=untrusted)
            else:
                backend.client(refused_url, timeout=10)
        except (ss.ConnectError, ss.CertificateVerifyError):
            return
        raise RuntimeError("a failing connect succeeded")

    for phase, cycle in (("tls", tls_cycle), ("fail", failing_cycle)):
        for i in range(WARMUP):
            cycle(i)
        start = time.monotonic()
        done = 0
        while True:
            gc.collect()
            sample = {"phase": phase, "cycles": done, "fds": open_fds(), "rss": rss_bytes(),
                      "seconds": round(time.monotonic() - start, 2)}
            print(json.dumps(sample), flush=True)
            if done >= args.cycles:
                break
            n = min(args.every, args.cycles - done)
            for i in range(done, done + n):
                cycle(i)
            done += n


# -- the parent: certificates, s_server, one child per backend, the tables -------------------


def make_certs(directory: str) -> dict[str, str]:
    import trustme

    ca, other = trustme.CA(), trustme.CA()
    paths = {name: os.path.join(directory, name) for name in ("ca.pem", "other-ca.pem", "server.pem")}
    ca.cert_pem.write_to_path(paths["ca.pem"])
    other.cert_pem.write_to_path(paths["other-ca.pem"])
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(paths["server.pem"])
    return paths


def start_s_server(certfile: str, log) -> tuple[subprocess.Popen, int]:
    openssl = shutil.which("openssl")
    if openssl is None:
        sys.exit("soak.py needs the openssl command line tool")
    port = refused_port()  # a free port now; s_server binds it a moment later
    proc = subprocess.Popen([openssl, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", certfile, "-www",
                             "-tls1_3"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:  # a plain TCP probe: s_server logs a failed handshake and goes on
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.01)
    proc.kill()
    proc.wait(5)
    sys.exit("openssl s_server did not start")


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slope_kib_per_1000(samples: list[dict]) -> float:
    xs = [s["cycles"] for s in samples]
    ys = [s["rss"] / 1024 for s in samples]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    if not var:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var * 1000


def report(backend: str, samples: list[dict]) -> bool:
    flat_all = True
    for phase, title in (("tls", "TLS connect + handshake + close"),
                         ("fail", "failing connects (refused / certificate not trusted, alternately)")):
        rows = [s for s in samples if s["phase"] == phase]
        print(f"\n{backend}: {title}, after a {WARMUP}-cycle warm-up\n")
        print("| cycles | fds | RSS MiB | seconds |")
        print("|---:|---:|---:|---:|")
        for s in rows:
            print(f"| {s['cycles']:,} | {s['fds']} | {s['rss'] / 2**20:.2f} | {s['seconds']:.1f} |")
        slope = slope_kib_per_1000(rows)
        fd_growth = rows[-1]["fds"] - rows[0]["fds"]
        total = (rows[-1]["rss"] - rows[0]["rss"]) / 1024
        flat = fd_growth == 0 and slope < FLAT_KIB_PER_1000
        flat_all &= flat
        verdict = "flat" if flat else "GROWING"
        print(f"\nverdict ({backend}, {phase}): {verdict}: fds {rows[0]['fds']} -> {rows[-1]['fds']}, "
              f"RSS {total:+.0f} KiB over {rows[-1]['cycles']:,} cycles "
              f"({slope:+.1f} KiB per 1000 cycles by least squares; flat means < {FLAT_KIB_PER_1000})")
    return flat_all


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=1000, help="sample every N cycles")
    parser.add_argument("--backend", choices=("native", "pure", "both"), default="both")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--refused-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cafile", help=argparse.SUPPRESS)
    parser.add_argument("--other-cafile", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0

    backends = ["native", "pure"] if args.backend == "both" else [args.backend]
    ok = True
    with tempfile.TemporaryDirectory(prefix="soak-") as directory, \
            open(os.path.join(directory, "s_server.log"), "wb") as log:
        certs = make_certs(directory)
        server, port = start_s_server(certs["server.pem"], log)
        try:
            import platform
            import ssl

            print(f"soak: {args.cycles:,} cycles per phase, sampled every {args.every:,}; Python "
                  f"{platform.python_version()}, {ssl.OPENSSL_VERSION}, openssl s_server -tls1_3 on 127.0.0.1:{port}")
            for name in backends:
                cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--port", str(port),
                       "--refused-port", str(refused_port()), "--cafile", certs["ca.pem"],
                       "--other-cafile", certs["other-ca.pem"], "--cycles", str(args.cycles),
                       "--every", str(args.every)]
                started = time.monotonic()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"\n{name}: child failed ({proc.returncode}):\n{proc.stderr}", file=sys.stderr)
                    ok = False
                    continue
                samples = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
                ok &= report(name, samples)
                print(f"({name}: {time.monotonic() - started:.0f} s in all)")
        finally:
            server.kill()
            server.wait(5)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
