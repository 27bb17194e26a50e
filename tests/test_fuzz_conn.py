"""The connection state machine (csrc/conn.c, tls.c, sock.c) against a hostile
peer, under AddressSanitizer + UBSan.

tests/c/fuzz_conn.c is a libFuzzer-style target: each input is one
conversation over a socketpair (TLS client, STARTTLS client, TLS server or
plaintext; see the file). tests/c/fuzz_main.c mutates seeds made here from real
TLS flights (a stdlib client and server talking through memory BIOs) plus every
input in tests/data/fuzz_conn/, where each crash ever found is kept as a
regression. Bounded by STREAMSOCK_FUZZ_ITERATIONS (default 100000) and
STREAMSOCK_FUZZ_SECONDS (default 15); STREAMSOCK_FUZZ_SEED repeats a run.
"""

from __future__ import annotations

import random
import re
import shlex
import ssl
import subprocess
from pathlib import Path

import pytest
import trustme

from test_url_c import CC, CSRC, CTESTS, SANITIZER_FLAGS, _env_number, _output, _sanitizer_env

ROOT = Path(__file__).resolve().parent.parent
REGRESSIONS = ROOT / "tests" / "data" / "fuzz_conn"
SOURCES = [CTESTS / "fuzz_conn.c", CTESTS / "fuzz_main.c", *sorted(CSRC.glob("*.c"))]
FLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wstrict-prototypes", "-Wvla", "-D_GNU_SOURCE"]

pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc or gcc) found")


def _flights(leaf: trustme.LeafCert, max_version=None) -> tuple[bytes, bytes]:
    """What a real server and a real client send each other in a handshake."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(server_ctx)
    if max_version:
        server_ctx.maximum_version = max_version
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    to_server = to_client = b""
    for _ in range(10):
        for side, out, peer_in in ((client, c_out, s_in), (server, s_out, c_in)):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            data = out.read()
            peer_in.write(data)
            if side is client:
                to_server += data
            else:
                to_client += data
    server.write(b"hello from the server\n")
    return to_client + s_out.read(), to_server


#: Mode 4 seeds: each protocol's server side of the STARTTLS dialogue, then the TLS flight.
STARTTLS_SERVER_SIDES = {
    0: b"220 mail ESMTP\r\n250-mail\r\n250 STARTTLS\r\n220 go ahead\r\n",
    1: b"* OK ready\r\n* CAPABILITY IMAP4rev1\r\na001 OK begin TLS\r\n",
    2: b"+OK ready\r\n+OK begin TLS\r\n",
    3: b"220-Welcome\r\n220 FTP ready\r\n234 AUTH TLS ok\r\n",
}


@pytest.fixture(scope="module")
def fuzz_setup(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzz_conn")
    binary = directory / "fuzz_conn"
    command = [*CC, *FLAGS, *SANITIZER_FLAGS, f"-I{CSRC}", *map(str, SOURCES), "-o", str(binary), "-lssl", "-lcrypto"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        pytest.fail(f"compiling fuzz_conn failed:\n{shlex.join(command)}\n{_output(proc)}", pytrace=False)
    leaf = trustme.CA().issue_cert("localhost")
    pem = directory / "server.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(pem))
    seeds = directory / "seeds"
    seeds.mkdir()
    for i, version in enumerate((None, ssl.TLSVersion.TLSv1_2)):
        to_client, to_server = _flights(leaf, version)
        (seeds / f"client-{i}").write_bytes(bytes([0, 7]) + to_client)
        (seeds / f"starttls-{i}").write_bytes(bytes([1, 3]) + b"220 ready\r\n" + to_client)
        (seeds / f"server-{i}").write_bytes(bytes([2, 5]) + to_server)
    (seeds / "plain").write_bytes(bytes([3, 1]) + b"hello\r\nworld\r\n")
    to_client, _ = _flights(leaf, None)
    for protocol, dialogue in STARTTLS_SERVER_SIDES.items():  # byte 1 picks the protocol
        (seeds / f"dialogue-{protocol}").write_bytes(bytes([4, protocol]) + dialogue + to_client)
    env = _sanitizer_env()
    env["STREAMSOCK_FUZZ_CERT"] = env["STREAMSOCK_FUZZ_KEY"] = str(pem)
    return binary, seeds, env


def test_fuzz_regressions_and_seeds_run_clean(fuzz_setup):
    binary, seeds, env = fuzz_setup
    proc = subprocess.run([str(binary), "-n", "0", str(seeds), str(REGRESSIONS)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, _output(proc)
    assert len(list(REGRESSIONS.iterdir())) >= 1


def test_fuzz_conn_bounded_run(fuzz_setup, tmp_path):
    binary, seeds, env = fuzz_setup
    iterations = int(_env_number("STREAMSOCK_FUZZ_ITERATIONS", "100000", int))
    seconds = _env_number("STREAMSOCK_FUZZ_SECONDS", "15", float)
    seed = int(_env_number("STREAMSOCK_FUZZ_SEED", str(random.getrandbits(63)), int))
    crash = tmp_path / "crash"
    command = [str(binary), "-n", str(iterations), "-t", str(seconds), "-s", str(seed), "-o", str(crash),
               str(seeds), str(REGRESSIONS)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, env=env)
    assert proc.returncode == 0, (
        f"fuzz_conn failed (repeat with STREAMSOCK_FUZZ_SEED={seed}; input kept in {crash}):\n{_output(proc)}"
    )
    match = re.search(r"^fuzz: (\d+) executions", proc.stdout, re.M)
    assert match and int(match.group(1)) > 0, _output(proc)
