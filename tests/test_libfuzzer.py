"""Coverage-guided fuzzing of the C fuzz targets with clang's libFuzzer.

The address parser and connection targets are those of tests/test_url_c.py and
tests/test_fuzz_conn.py (which run them with the gcc mutation driver); the
certificate describer's (tests/c/fuzz_cert.c) starts from the certificate
corpus of tests/test_certificate.py. Each is built with
-fsanitize=fuzzer,address,undefined and run for STREAMSOCK_LIBFUZZER_SECONDS
(default 20) each. .ci/run installs clang and its runtime (Debian: clang,
libclang-rt-14-dev); without them these tests skip, except under CI=true,
where a missing fuzzer toolchain is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from test_fuzz_conn import REGRESSIONS, STARTTLS_SERVER_SIDES, _flights
from test_url_c import CSRC, CTESTS, _env_number, _output, _seed_inputs

CLANG = shutil.which("clang")
FLAGS = ["-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all", "-D_GNU_SOURCE"]


def _build(tmp: Path, name: str, sources: list[Path]) -> Path:
    if CLANG is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs clang with libFuzzer (apt-get install clang libclang-rt-14-dev)")
        pytest.skip("clang is not installed")
    binary = tmp / name
    proc = subprocess.run([CLANG, *FLAGS, f"-I{CSRC}", *map(str, sources), "-o", str(binary), "-lssl", "-lcrypto"],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        if "fuzzer" in proc.stderr and not os.environ.get("CI"):
            pytest.skip(f"clang has no libFuzzer runtime: {proc.stderr.strip()[-200:]}")
        pytest.fail(f"building {name} failed:\n{_output(proc)}", pytrace=False)
    return binary


def _fuzz(binary: Path, corpus: Path, artifacts: Path, env: dict | None = None) -> str:
    seconds = int(_env_number("STREAMSOCK_LIBFUZZER_SECONDS", "20", float))
    artifacts.mkdir(exist_ok=True)
    proc = subprocess.run(
        [str(binary), f"-max_total_time={seconds}", "-print_final_stats=1", f"-artifact_prefix={artifacts}/",
         str(corpus)],
        capture_output=True, text=True, timeout=seconds + 120, env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, f"libFuzzer found a failure; input kept in {artifacts}:\n{proc.stderr[-4000:]}"
    assert "stat::number_of_executed_units" in proc.stderr
    return proc.stderr


def test_libfuzzer_address_parser(tmp_path):
    binary = _build(tmp_path, "lf_url", [CTESTS / "fuzz_url.c", CSRC / "url.c", CSRC / "error.c"])
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(_seed_inputs()):
        (corpus / f"vector-{i}").write_bytes(seed)
    _fuzz(binary, corpus, tmp_path / "artifacts")


def test_libfuzzer_connection_state_machine(tmp_path):
    import trustme

    binary = _build(tmp_path, "lf_conn", [CTESTS / "fuzz_conn.c", *sorted(CSRC.glob("*.c"))])
    leaf = trustme.CA().issue_cert("localhost")
    pem = tmp_path / "server.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(pem))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    to_client, to_server = _flights(leaf)
    (corpus / "client").write_bytes(bytes([0, 7]) + to_client)
    (corpus / "starttls").write_bytes(bytes([1, 3]) + b"220 ready\r\n" + to_client)
    (corpus / "server").write_bytes(bytes([2, 5]) + to_server)
    for protocol, dialogue in STARTTLS_SERVER_SIDES.items():
        (corpus / f"dialogue-{protocol}").write_bytes(bytes([4, protocol]) + dialogue + to_client)
    for regression in REGRESSIONS.iterdir():
        shutil.copy(regression, corpus / regression.name)
    _fuzz(binary, corpus, tmp_path / "artifacts", {"STREAMSOCK_FUZZ_CERT": str(pem), "STREAMSOCK_FUZZ_KEY": str(pem)})


def test_libfuzzer_certificate_describer(tmp_path):
    from test_certificate import corpus as certificates

    binary = _build(tmp_path, "lf_cert", [CTESTS / "fuzz_cert.c", *sorted(CSRC.glob("*.c"))])
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, der in certificates().items():
        (corpus / name).write_bytes(der)
    _fuzz(binary, corpus, tmp_path / "artifacts")
