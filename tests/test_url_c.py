"""The C address parser (csrc/url.c) under AddressSanitizer + UBSan.

Builds two programs from tests/c/ against csrc/url.c and csrc/error.c:

* test_url: hand-written cases with exact expected results;
* fuzz_url: tests/c/fuzz_url.c (a libFuzzer-style target checking the
  parser's invariants) driven by tests/c/fuzz_main.c, a small mutation fuzzer,
  seeded with the inputs of tests/data/addresses.json.

The fuzz run is bounded by STREAMSOCK_FUZZ_ITERATIONS (default 200000) and
STREAMSOCK_FUZZ_SECONDS (default 20); STREAMSOCK_FUZZ_SEED fixes the PRNG
seed (by default a new one each run, printed in the output). Only a missing C
compiler skips these tests; a compiler that cannot build with the sanitizers
is a failure.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
CTESTS = ROOT / "tests" / "c"
VECTORS = ROOT / "tests" / "data" / "addresses.json"

LIBRARY_SOURCES = [CSRC / "url.c", CSRC / "error.c"]

STRICT_FLAGS = [
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Werror",
    # The project's own warning set (CMakeLists.txt STRICT_WARNINGS).
    "-Wshadow",
    "-Wstrict-prototypes",
    "-Wvla",
    "-D_POSIX_C_SOURCE=200809L",
    "-D_DEFAULT_SOURCE",
]
SANITIZER_FLAGS = [
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
    "-g",
    "-O1",
]
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}

COMPILE_TIMEOUT = 120
UNIT_TIMEOUT = 60

# Used only when tests/data/addresses.json does not exist.
BUILTIN_SEEDS = [
    "",
    "example.com",
    "example.com:80",
    "TCP://Example.com:0",
    "tcp://127.0.0.1:8080",
    "udp://10.0.0.1:53",
    "ssl://host:443",
    "tls://[::1]:443",
    "sslv2://h:1",
    "sslv3://h:1",
    "tlsv1.0://h:1",
    "tlsv1.1://h:1",
    "tlsv1.2://h:65535",
    "tlsv1.3://h:1",
    "HTTP://x",
    "a://x",
    "[::1]",
    "[::1]:",
    "[::1]x",
    "[::1",
    "[]:1",
    "[fe80::1%eth0]:8080",
    "fe80::1%eth0",
    "::ffff:1.2.3.4",
    "1:2:3",
    "host:",
    "host:99999",
    "host:0080",
    ":80",
    "a b:1",
    "h\u00e9:1",
    "unix:///tmp/sock",
    "unix://\0abstract",
    "unix:///tmp/a\0b",
    "unix://",
    "udg:///tmp/s:1",
    "unix:///" + "p" * 107,
    "udg://\0" + "p" * 107,
    "h" * 256 + ":1",
]


def _find_compiler() -> list[str] | None:
    cc = os.environ.get("CC")
    if cc:
        argv = shlex.split(cc)
        if argv and shutil.which(argv[0]):
            return argv
    for name in ("cc", "gcc"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


CC = _find_compiler()

pytestmark = pytest.mark.skipif(
    CC is None, reason="no C compiler found ($CC, cc and gcc are all missing)"
)


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def _compile(out: Path, sources: list[Path]) -> Path:
    assert CC is not None
    cmd = [
        *CC,
        *STRICT_FLAGS,
        *SANITIZER_FLAGS,
        f"-I{CSRC}",
        *map(str, sources),
        "-o",
        str(out),
        "-lssl",  # error.c reads OpenSSL's error queue
        "-lcrypto",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT, check=False
    )
    if proc.returncode != 0:
        pytest.fail(
            f"compiling {out.name} failed (exit {proc.returncode}):\n"
            f"{shlex.join(cmd)}\n{_output(proc)}",
            pytrace=False,
        )
    return out


def _sanitizer_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(SANITIZER_ENV)
    return env


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("url_c")


@pytest.fixture(scope="module")
def test_url_bin(build_dir: Path) -> Path:
    return _compile(build_dir / "test_url", [CTESTS / "test_url.c", *LIBRARY_SOURCES])


@pytest.fixture(scope="module")
def fuzz_url_bin(build_dir: Path) -> Path:
    return _compile(
        build_dir / "fuzz_url",
        [CTESTS / "fuzz_url.c", CTESTS / "fuzz_main.c", *LIBRARY_SOURCES],
    )


def _seed_inputs() -> list[bytes]:
    if not VECTORS.exists():
        return [s.encode("utf-8", "surrogatepass") for s in BUILTIN_SEEDS]
    doc = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and isinstance(doc.get("vectors"), list), (
        f"{VECTORS}: expected an object with a 'vectors' list"
    )
    inputs = []
    for i, vector in enumerate(doc["vectors"]):
        assert isinstance(vector, dict) and isinstance(vector.get("input"), str), (
            f"{VECTORS}: vectors[{i}] has no string 'input'"
        )
        inputs.append(vector["input"].encode("utf-8", "surrogatepass"))
    return inputs


def _env_number(name: str, default: str, kind: type) -> int | float:
    raw = os.environ.get(name, default)
    try:
        value = kind(raw)
    except ValueError:
        pytest.fail(f"{name}={raw!r} is not a number", pytrace=False)
    if value < 0:
        pytest.fail(f"{name}={raw!r} is negative", pytrace=False)
    return value


def test_url_unit_cases(test_url_bin: Path) -> None:
    proc = subprocess.run(
        [str(test_url_bin)],
        capture_output=True,
        text=True,
        errors="replace",
        env=_sanitizer_env(),
        timeout=UNIT_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, f"test_url exited {proc.returncode}\n{_output(proc)}"
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    match = re.fullmatch(r"(\d+) passed, 0 failed", last)
    assert match and int(match.group(1)) > 0, f"unexpected summary {last!r}\n{_output(proc)}"


def test_url_fuzz(fuzz_url_bin: Path, build_dir: Path) -> None:
    iterations = int(_env_number("STREAMSOCK_FUZZ_ITERATIONS", "200000", int))
    seconds = float(_env_number("STREAMSOCK_FUZZ_SECONDS", "20", float))
    seed = int(_env_number("STREAMSOCK_FUZZ_SEED", str(random.getrandbits(63)), int))

    seed_dir = build_dir / "seeds"
    if seed_dir.exists():
        shutil.rmtree(seed_dir)
    seed_dir.mkdir()
    inputs = _seed_inputs()
    for i, data in enumerate(inputs):
        (seed_dir / f"seed-{i:05d}").write_bytes(data)
    crash_file = build_dir / "crash-input"
    crash_file.unlink(missing_ok=True)

    cmd = [
        str(fuzz_url_bin),
        "-n",
        str(iterations),
        "-t",
        str(seconds),
        "-s",
        str(seed),
        "-o",
        str(crash_file),
        str(seed_dir),
    ]
    # The driver stops itself after `seconds`; the timeout only catches a hang.
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        errors="replace",
        env=_sanitizer_env(),
        timeout=seconds + 60,
        check=False,
    )
    where = (
        f"command: {shlex.join(cmd)}\n"
        f"(repeat the run with STREAMSOCK_FUZZ_SEED={seed}"
        + (f"; crashing input saved in {crash_file}" if crash_file.exists() else "")
        + f")\n{_output(proc)}"
    )
    assert proc.returncode == 0, f"fuzz_url exited {proc.returncode}\n{where}"
    match = re.search(r"^fuzz: (\d+) executions, (\d+) seeds, ", proc.stdout, re.M)
    assert match, f"no summary line in the output\n{where}"
    executions, seeds = int(match.group(1)), int(match.group(2))
    assert executions > 0, where
    assert seeds == len(inputs), f"fuzz_url read {seeds} seeds, wrote {len(inputs)}\n{where}"
