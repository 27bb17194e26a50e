"""The engine's thread (csrc/engine_thread.c) under ThreadSanitizer, driven from C.

Python holds the GIL around its side of the hand-over, which would hide races
from a Python-driven test; tests/c/engine_thread_driver.c calls the C API the
way _native.Engine does (adds from one thread, takes in batches) with the
whole core built with -fsanitize=thread, against a TLS server and a plain TCP
listener on loopback. Its consumer falls behind after the first batch: it
waits until the engine can go no further without it (both batches taken up,
finished probes held back in the engine), an event the driver waits for
rather than a pause it hopes is long enough. Only a missing C compiler skips
these tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from peers import PyTLSServer

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
CORE_SOURCES = sorted(p for p in CSRC.glob("*.c"))

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    binary = tmp_path_factory.mktemp("tsan") / "engine_thread_driver"
    command = ["gcc", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-O1", "-g",
               "-fsanitize=thread", f"-I{CSRC}", "-o", str(binary), str(ROOT / "tests" / "c" / "engine_thread_driver.c"),
               *map(str, CORE_SOURCES), "-lssl", "-lcrypto", "-lpthread"]
    out = subprocess.run(command, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return binary


def _tsan_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # the ASan run preloads libasan
    env["TSAN_OPTIONS"] = "halt_on_error=1 exitcode=66"
    return env


def run_driver(driver: Path, port: int, cafile: str, count: int, concurrency: int, stalls: int, host: str) -> dict:
    out = subprocess.run([str(driver), str(port), cafile, str(count), str(concurrency), str(stalls), host],
                         capture_output=True, text=True, timeout=300,
                         env=_tsan_env())
    assert "ThreadSanitizer" not in out.stderr, out.stderr[-4000:]
    assert out.returncode == 0, (out.stdout, out.stderr[-2000:])
    words = out.stdout.split()
    return dict(zip(words[::2], map(int, words[1::2])))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])  # a name goes through the resolver's threads
def test_tls_probes_from_c_are_race_free(driver, pki, host):
    with PyTLSServer(pki.server_certfile, pki.server_keyfile) as server:
        figures = run_driver(driver, server.port, pki.cafile, 300, 100, 1, host)
    assert (figures["probes"], figures["ok"], figures["duplicates"]) == (300, 300, 0)


def test_a_caller_that_falls_behind_is_race_free(driver):
    """Connects finish far faster than the caller takes them: both batches fill,
    the engine holds the rest back, and every probe still comes back once.

    The caller lets the engine stall twice: the batch published right after
    its first take holds whatever the engine's run had then (a run hands over
    what finished within 10 ms, less than a batch on a slow machine); the
    second stall finds the batch filled during the first one waiting and the
    engine's own full again."""
    with socket.create_server(("127.0.0.1", 0), backlog=4096) as listener:
        figures = run_driver(driver, listener.getsockname()[1], "-", 3000, 300, 2, "127.0.0.1")
    assert (figures["probes"], figures["ok"], figures["duplicates"]) == (3000, 3000, 0)
    assert figures["after_stall"] == 2 * 256  # two full batches (BATCH_RECORDS) were waiting
