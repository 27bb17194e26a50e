"""Shared fixtures: the backend under test, and a file-descriptor leak check around every test."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

import streamsock

DATA = Path(__file__).parent / "data"

pytest_plugins = ["peers"]  # loopback servers, certificates: tests/peers.py


def _available_backends() -> list[str]:
    names = ["pure"]
    try:
        streamsock.get_backend("native")
        names.insert(0, "native")
    except ImportError:
        if os.environ.get("CI"):  # CI builds the core: a missing one is a failure, not a skip
            raise
    return names


BACKENDS = _available_backends()


@pytest.fixture(params=BACKENDS)
def backend(request) -> streamsock._backend.Backend:
    """Each behavioural test runs once per backend."""
    return streamsock.get_backend(request.param)


@pytest.fixture(scope="session")
def address_vectors() -> dict:
    return json.loads((DATA / "addresses.json").read_text())


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.fixture(autouse=True)
def no_fd_leak():
    """Fail a test that leaves a file descriptor open behind it."""
    before = _open_fds()
    yield
    leaked = _open_fds() - before
    # listdir's own descriptor is gone by now; anything else is the test's.
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    if leaked:
        targets = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leaked}
        pytest.fail(f"file descriptors leaked: {targets}")


@pytest.fixture
def no_thread_leak():
    """Fail a test that leaves a thread running (peers join theirs when their ``with`` ends)."""
    before = threading.active_count()
    yield
    deadline = time.monotonic() + 2.0
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before, [t.name for t in threading.enumerate()]
