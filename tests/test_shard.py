"""probe(shard=(i, n), seed=S, skip=...): n probes of one input cover it exactly once."""

from __future__ import annotations

import collections
import itertools

import pytest

from peers import refused_port
from streamsock.shard import Selection, parse_shard, shard_of

# The native engine fails a closed loopback port in about 60 us; the pure backend's
# asyncio loop takes about six times as long, so it probes a fifth of the targets.
TARGETS = {"native": 100_000, "pure": 20_000}


def loopback_targets(count: int, port: int) -> list[str]:
    """``count`` distinct targets on 127.0.0.0/8, all on ``port`` (closed: each fails at once)."""
    return [f"127.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:{port}" for i in range(1, count + 1)]


def test_three_shards_of_a_stream_take_each_target_once_and_evenly():
    targets = loopback_targets(100_000, 9)
    taken = collections.Counter()
    for index in range(3):
        selection = Selection((index, 3), seed=7)
        for position, text in enumerate(targets):
            if selection.wants(position, text):
                taken[position] += 1
                assert shard_of(text, 3, seed=7) == index
    assert sorted(taken) == list(range(len(targets))) and set(taken.values()) == {1}
    sizes = collections.Counter(shard_of(text, 3, seed=7) for text in targets)
    assert all(abs(size - len(targets) / 3) < 0.02 * len(targets) for size in sizes.values()), sizes


def test_the_shard_depends_on_the_text_and_the_seed_only():
    texts = [f"tls://host{i}.example:443" for i in range(2000)]
    assert [shard_of(t, 5) for t in texts] == [shard_of(t, 5) for t in reversed(texts)][::-1]
    assert shard_of("  tls://a:1 \r", 4, 3) == shard_of("tls://a:1", 4, 3)  # as the record shows the target
    moved = sum(shard_of(t, 5, 0) != shard_of(t, 5, 1) for t in texts)
    assert 0.7 * len(texts) < moved < 0.9 * len(texts)  # another seed: another split (4 in 5 move)


def test_probe_over_three_shards_reports_every_target_once_with_its_input_position(backend):
    targets = loopback_targets(TARGETS[backend.name], refused_port())
    seen: dict[int, str] = {}
    for index in range(3):
        # A generator: the shards are chosen as the input streams by.
        for r in backend.probe((t for t in targets), concurrency=500, timeout=5, shard=(index, 3), seed=11):
            assert r.index not in seen
            assert r.target == targets[r.index] and shard_of(r.target, 3, 11) == index
            assert r.error_class == "ConnectError", r.message
            seen[r.index] = r.target
    assert len(seen) == len(targets)


def test_probe_skips_the_positions_given(backend):
    targets = loopback_targets(300, refused_port())
    skip = set(range(0, 300, 3))
    indexes = sorted(r.index for r in backend.probe(targets, timeout=5, skip=skip))
    assert indexes == [i for i in range(300) if i not in skip]
    both = sorted(r.index for r in backend.probe(targets, timeout=5, skip=skip, shard=(1, 2)))
    assert both == [i for i in range(300) if i not in skip and shard_of(targets[i], 2) == 1]


@pytest.mark.parametrize("shard, message", [
    ((3, 3), "shard index must be between 0 and 2"), ((0, 0), "shard count must be >= 1"),
    ((-1, 2), "shard index"), ([0, 2], "shard must be a tuple"), ((0.0, 2), "shard must be a tuple"),
])
def test_a_bad_shard_is_a_clear_error(backend, shard, message):
    with pytest.raises(ValueError, match=message):
        backend.probe(["127.0.0.1:1"], shard=shard)


def test_a_bad_seed_or_skip_is_a_clear_error(backend):
    for seed in (-1, 1 << 64, "1"):
        with pytest.raises(ValueError, match="seed must be an int between 0 and 2\\*\\*64 - 1"):
            backend.probe(["127.0.0.1:1"], shard=(0, 2), seed=seed)
    with pytest.raises(ValueError, match="skip must be a container"):
        backend.probe(["127.0.0.1:1"], skip=5)


@pytest.mark.parametrize("text, expected", [("0/3", (0, 3)), ("2/3", (2, 3)), (" 1/2", (1, 2))])
def test_the_command_line_form_of_a_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text, message", [("3", "a shard is written I/N"), ("a/b", "a shard is written I/N"),
                                           ("3/3", "between 0 and 2"), ("1/0", "count must be >= 1")])
def test_a_malformed_command_line_shard_says_how_it_is_written(text, message):
    with pytest.raises(ValueError, match=message):
        parse_shard(text)


def test_the_input_is_read_once_per_shard_lazily(backend):
    """A shard takes its targets from an endless input as they come: the first of them are reported
    while the input is still being read."""
    port = refused_port()
    endless = (f"127.0.{i >> 8 & 255}.{i & 255}:{port}" for i in itertools.count(1))
    results = backend.probe(endless, timeout=5, shard=(1, 4))
    try:
        first = [next(results) for _ in range(50)]
    finally:
        results.close()
    assert all(shard_of(r.target, 4) == 1 for r in first)
