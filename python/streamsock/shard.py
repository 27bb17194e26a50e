"""Which targets of the input one probe takes: its shard, less the targets
already recorded.

A target's shard is a keyed hash of its text, so n probes given the same
input, the same n and the same seed split it exactly: each target goes to one
shard whatever order the lines come in, and no probe needs to know what the
others do. Targets are chosen as the input streams by; each keeps its
position in the whole input as its record's ``index``.
"""

from __future__ import annotations

import hashlib
from typing import Container

SEED_LIMIT = 1 << 64  # the seed is a 64-bit key


def shard_of(text: str, count: int, seed: int = 0) -> int:
    """The shard (0 to ``count`` - 1) of the target written ``text``: BLAKE2b
    of the text keyed with ``seed``; surrounding whitespace does not count."""
    digest = hashlib.blake2b(text.strip().encode("utf-8", "surrogateescape"), digest_size=8,
                             key=seed.to_bytes(8, "big")).digest()
    return int.from_bytes(digest, "big") % count


def checked_shard(shard: object) -> tuple[int, int]:
    """``shard`` as (index, count), or a ValueError saying what is wrong."""
    if (not isinstance(shard, tuple) or len(shard) != 2
            or not all(type(part) is int for part in shard)):
        raise ValueError(f"shard must be a tuple (index, count) of two ints, not {shard!r}")
    index, count = shard
    if count < 1:
        raise ValueError(f"shard count must be >= 1, not {count}")
    if not 0 <= index < count:
        raise ValueError(f"shard index must be between 0 and {count - 1} (shards are numbered from 0), not {index}")
    return index, count


def parse_shard(text: str) -> tuple[int, int]:
    """("I/N" of the command line) as (I, N)."""
    index, slash, count = text.partition("/")
    try:
        numbers = int(index), int(count)
    except ValueError:
        slash = ""
    if not slash:
        raise ValueError(f"a shard is written I/N, e.g. 0/3, not {text!r}")
    return checked_shard(numbers)


def checked_seed(seed: object) -> int:
    if type(seed) is not int or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be an int between 0 and 2**64 - 1, not {seed!r}")
    return seed


class Selection:
    """The targets one probe takes: those of shard ``shard`` = (index, count)
    under ``seed``, whose position in the input is not in ``skip``."""

    __slots__ = ("index", "count", "seed", "skip")

    def __init__(self, shard: tuple[int, int] | None = None, seed: int = 0,
                 skip: Container[int] | None = None) -> None:
        self.index, self.count = checked_shard(shard) if shard is not None else (0, 1)
        self.seed = checked_seed(seed)
        if skip is not None and not hasattr(skip, "__contains__"):
            raise ValueError(f"skip must be a container of input positions (a set, ...), not {type(skip).__name__}")
        self.skip = skip

    @classmethod
    def of(cls, shard: tuple[int, int] | None, seed: int, skip: Container[int] | None) -> Selection | None:
        """A Selection, or None when every target is taken (the arguments checked all the same)."""
        selection = cls(shard, seed, skip)
        return selection if selection.count > 1 or skip is not None else None

    def wants(self, position: int, text: str) -> bool:
        """Whether the target at ``position`` in the input, written ``text``, is probed."""
        if self.skip is not None and position in self.skip:
            confirm = getattr(self.skip, "confirm", None)
            if confirm is not None:
                confirm(position, text)
            return False
        return self.count == 1 or shard_of(text, self.count, self.seed) == self.index
