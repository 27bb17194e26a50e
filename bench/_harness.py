"""Side-by-side benchmark harness: every contender measured in one run, as ratios.

Contenders run round-robin (A B C A B C ...) so drift in machine speed hits all
of them alike; each one's figure is the median of its rounds. Targets are
ratios to a named baseline, checked and printed, never asserted in tests.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Contender:
    name: str
    run: Callable[[], object]  # one round: processes `items` units of work
    items: int
    target: float | None = None  # wanted ratio to the baseline (lower is better)
    rounds: list[float] = field(default_factory=list)  # seconds per unit

    @property
    def per_item(self) -> float:
        return statistics.median(self.rounds)


def measure(contenders: list[Contender], *, rounds: int, warmup: int = 1, min_time: float = 0.05) -> None:
    """Fill each contender's ``rounds``. A round repeats ``run`` until it has
    taken ``min_time`` seconds so short runs are not timer noise."""
    for c in contenders:
        for _ in range(warmup):
            c.run()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for c in contenders:
                reps = 0
                start = time.perf_counter()
                while True:
                    c.run()
                    reps += 1
                    elapsed = time.perf_counter() - start
                    if elapsed >= min_time:
                        break
                c.rounds.append(elapsed / (reps * c.items))
            gc.collect()
    finally:
        if gc_was_enabled:
            gc.enable()


def report(title: str, contenders: list[Contender], baseline: str, unit: str = "ns/address") -> dict:
    """Print a markdown table of per-item times and ratios to ``baseline``;
    return the figures (and whether each target was met) as a dict."""
    base = next(c for c in contenders if c.name == baseline).per_item
    scale = 1e9
    print(f"\n### {title}\n")
    print(f"Python {platform.python_version()} on {platform.machine()}, {len(contenders[0].rounds)} rounds, medians.\n")
    print(f"| contender | {unit} | ratio to {baseline} | target | met |")
    print("|---|---:|---:|---:|:---:|")
    results = {}
    for c in contenders:
        ratio = c.per_item / base
        met = None if c.target is None else ratio <= c.target
        target = "" if c.target is None else f"<= {c.target:.2f}"
        mark = "" if met is None else ("yes" if met else "NO")
        print(f"| {c.name} | {c.per_item * scale:,.0f} | {ratio:.3f} | {target} | {mark} |")
        results[c.name] = {"per_item_ns": c.per_item * scale, "ratio": ratio, "target": c.target, "met": met}
    return results


def cli(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=15, help="measured rounds per contender")
    parser.add_argument("--quick", action="store_true", help="few rounds, for a smoke run")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 3
    return args


def write_json(path: str | None, results: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nfigures written to {path}", file=sys.stderr)
