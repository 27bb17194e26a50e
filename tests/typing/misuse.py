"""Mistakes ``mypy --strict`` must catch in a user's script; each line
marked ``# E: code`` is an error of that code, and nothing else is
(tests/test_types.py). Never run."""

from __future__ import annotations

import streamsock as ss


def nowait_may_be_none(s: ss.Stream) -> int:
    return len(s.read_nowait())  # E: arg-type


def read_is_bytes_not_text(s: ss.Stream) -> str:
    return s.readline()  # E: return-value


def meta_keys_are_known(s: ss.Stream) -> object:
    return s.meta["no_such_key"]  # E: typeddict-item


def crypto_may_be_none(s: ss.Stream) -> str:
    return s.crypto["protocol"]  # E: index


def results_are_typed(targets: list[str]) -> str:
    for r in ss.probe(targets):
        return r.errno  # E: return-value
    return ""
