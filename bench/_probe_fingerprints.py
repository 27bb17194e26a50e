"""What a record's fingerprints and certificate fields cost, per handshake.

The engine keeps each ServerHello and describes each certificate as it
finishes a probe; Python computes JA3S, JA4S and JA4X, and decodes the
certificate's fields, only when a record is asked for them. This probes
``count`` full handshakes with the native backend (CPU time of the whole
process, engine thread included), then times each of those computations over
the records it got, and gives each as a share of the probe's CPU per
handshake. The C side's cost (ServerHello capture, certificate description)
is inside the probe's figure; bench_probe's callgrind notes in the README
split it out.
"""

from __future__ import annotations

import json
import time

import streamsock


def _cpu() -> float:
    return time.process_time()


def measure(port: int, cafile: str, count: int) -> dict:
    backend = streamsock.get_backend("native")
    context = streamsock.Context(ssl={"cafile": cafile, "peer_name": "localhost"})
    targets = [f"tls://127.0.0.1:{port}"] * count
    list(backend.probe(targets[:100], concurrency=10, timeout=30, context=context))  # warm-up
    start = _cpu()
    records = list(backend.probe(targets, concurrency=10, timeout=30, context=context))
    probe_us = (_cpu() - start) / count * 1e6
    figures = {"probe_cpu_us": probe_us, "ok": sum(r.ok for r in records)}
    steps = (
        ("certificate fields", lambda r: r.certificate.summary),
        ("JA3S", lambda r: r.ja3s),
        ("JA4S (JA4+)", lambda r: r.ja4s),
        ("JA4X (JA4+)", lambda r: r.ja4x),
        ("JSON record", lambda r: json.dumps(r.to_dict())),
        ("JSON record with JA4+", lambda r: json.dumps(r.to_dict(ja4plus=True))),
    )
    for name, step in steps:
        fresh = list(backend.probe(targets[: min(count, 500)], concurrency=10, timeout=30, context=context))
        start = _cpu()
        for record in fresh:
            step(record)
        figures[name] = (_cpu() - start) / len(fresh) * 1e6
    return figures


def print_fingerprints(figures: dict, count: int) -> None:
    probe_us = figures["probe_cpu_us"]
    print(f"\nRecord fields, native backend ({count} handshakes at concurrency 10, "
          f"{probe_us:.0f} us CPU per handshake, engine thread included):")
    print(f"{'computed when asked':<26}{'us/record':>10}{'of a handshake':>16}")
    for name, value in figures.items():
        if name in ("probe_cpu_us", "ok"):
            continue
        print(f"{name:<26}{value:>10.1f}{value / probe_us:>15.1%}")
