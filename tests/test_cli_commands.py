"""`streamsock probe`, `connect` and `serve`, run as a user runs them, against loopback peers.

Every command runs as a subprocess (``python -m streamsock``); every wait on one
has a deadline and every process is killed in a ``finally``.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

import streamsock as ss
from peers import OpenSSLServer, PyTLSServer, RawServer, SilentServer, UDPEchoServer, refused_port, short_tempdir

CLI = [sys.executable, "-m", "streamsock"]
DEADLINE = 20.0  # for any one command; the tests take well under a second each


def run_cli(*args: str, input: bytes = b"", timeout: float = DEADLINE) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], input=input, capture_output=True, timeout=timeout)


@contextlib.contextmanager
def running(*args: str):
    """The command running in the background with pipes on stdin, stdout and stderr."""
    with subprocess.Popen([*CLI, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


class PipeReader:
    """Reads a child's stdout or stderr, waiting at most ``timeout`` for what the test expects."""

    def __init__(self, pipe) -> None:
        self.fd = pipe.fileno()
        self.data = bytearray()

    def until(self, pattern: bytes, timeout: float = 10.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern, self.data)):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                raise AssertionError(f"no {pattern!r} within {timeout} s in {bytes(self.data)!r}")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise AssertionError(f"end of output before {pattern!r}: {bytes(self.data)!r}")
            self.data += chunk
        return match


def json_lines(output: bytes) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


def outcome_count(stderr: bytes, outcome: str) -> int:
    """A count from the probe's summary table."""
    match = re.search(rb"^\s+" + outcome.encode() + rb"\s+([\d,]+)$", stderr, re.M)
    assert match, stderr.decode()
    return int(match.group(1).replace(b",", b""))


# --- loopback peers the commands talk to ------------------------------------------------


def echo_until_eof(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def tls_line_echo(context):
    """A RawServer script: TLS, echoes each line, and after "bye" closes with close_notify."""

    def script(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as tls, tls.makefile("rb") as lines:
            for line in lines:
                tls.sendall(line)
                if line == b"bye\n":
                    break
            with contextlib.suppress(OSError):
                tls.settimeout(1.0)
                tls.unwrap()

    return script


def smtp_without_starttls(conn: socket.socket) -> None:
    conn.sendall(b"220 mail.example ESMTP\r\n")
    with conn.makefile("rb") as lines:
        for line in lines:
            if line.startswith(b"EHLO"):
                conn.sendall(b"250 mail.example\r\n")
            elif line.startswith(b"STARTTLS"):
                conn.sendall(b"454 TLS not available\r\n")
            else:
                conn.sendall(b"221 bye\r\n")
                return


# --- probe ------------------------------------------------------------------------------


def test_probe_prints_a_json_line_per_target_and_a_summary(backend, pki, tls_server):
    good = f"tls://127.0.0.1:{tls_server.port}"
    with PyTLSServer(pki.wrong_host.certfile, pki.wrong_host.keyfile) as wrong:
        targets = [good, f"tcp://127.0.0.1:{refused_port()}", good, f"tls://127.0.0.1:{wrong.port}", "tcp://[::1"]
        result = run_cli("probe", "--json", "--cafile", pki.cafile, "--peer-name", "localhost",
                         "--backend", backend.name, *targets)
    assert result.returncode == 1, result.stderr.decode()
    records = {r["index"]: r for r in json_lines(result.stdout)}
    assert sorted(records) == [0, 1, 2, 3, 4]
    for index in (0, 2):
        assert records[index]["ok"] and records[index]["target"] == good
        assert records[index]["tls_version"] == "TLSv1.3" and records[index]["cipher"]
        assert records[index]["cert_sha256"] == hashlib.sha256(pki.server_cert.der).hexdigest()
    assert (records[1]["ok"], records[1]["error_class"], records[1]["errno"]) == (False, "ConnectError", 111)
    assert records[3]["error_class"] == "CertificateVerifyError"
    assert records[4]["error_class"] == "AddressError" and records[4]["address"] is None

    summary = result.stderr
    assert b"5 targets" in summary and b"2 TLS handshakes" in summary
    assert [outcome_count(summary, name) for name in ("ok", "ConnectError", "CertificateVerifyError",
                                                      "AddressError")] == [2, 1, 1, 1]
    assert re.search(rb"^\s+total(\s+\d+\.\d){4}$", summary, re.M), summary.decode()  # p50 p90 p99 max


def test_probe_prints_a_line_per_target_and_exits_0_when_all_are_ok(pki, tls_server):
    target = f"tls://127.0.0.1:{tls_server.port}"
    result = run_cli("probe", "--cafile", pki.cafile, "--peer-name", "localhost", target, target)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert re.fullmatch(re.escape(target) + r"  ok  TLSv1\.3  TLS_\w+  \d+\.\d ms", line), line
    assert outcome_count(result.stderr, "ok") == 2


def test_probe_reads_targets_as_they_come():
    """-f - streams: results come out while stdin is still open (the input is never read whole)."""
    refused = f"tcp://127.0.0.1:{refused_port()}"
    with running("probe", "--json", "-c", "1", "-f", "-") as proc:
        proc.stdin.write(f"# a comment\n\n{refused}\n  {refused}\r\n{refused}\n".encode())
        proc.stdin.flush()
        stdout = PipeReader(proc.stdout)
        first = json.loads(stdout.until(rb"[^\n]*\n").group(0))
        assert (first["target"], first["error_class"]) == (refused, "ConnectError")
        proc.stdin.close()
        assert proc.wait(DEADLINE) == 1
        records = json_lines(bytes(stdout.data) + proc.stdout.read())
    assert sorted(r["index"] for r in records) == [0, 1, 2]  # the comment and the blank line are no targets
    assert all(r["error_class"] == "ConnectError" for r in records)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_probe_stopped_by_a_signal_prints_the_summary(backend, tmp_path, signum, status):
    """Ctrl-C or SIGTERM while hundreds of probes are in flight (some connecting, some
    in a handshake that never ends): the summary of what finished, the signal's exit
    status, and no task or traceback left behind."""
    with SilentServer() as silent:
        refused = refused_port()
        targets = tmp_path / "targets"
        targets.write_text("".join(f"tls://127.0.0.1:{silent.port}\n" if i % 50 == 0 else
                                   f"tls://localhost:{refused}\n" for i in range(20000)))
        with subprocess.Popen([*CLI, "probe", "--backend", backend.name, "-c", "200", "--timeout", "30",
                               "-f", str(targets)], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            try:
                for _ in range(300):  # results are coming: the engine is busy
                    assert proc.stdout.readline()
                proc.send_signal(signum)
                _, stderr = proc.communicate(timeout=DEADLINE)
            finally:
                if proc.poll() is None:
                    proc.kill()
    assert proc.returncode == status, stderr.decode()
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    assert stderr.startswith(f"streamsock probe: stopped by {name} after ".encode()), stderr.decode()
    finished = outcome_count(stderr, "ConnectError") + outcome_count(stderr, "ok")
    assert finished >= 300
    in_flight = outcome_count(stderr, "stopped in flight")
    assert 1 <= in_flight <= 2 * 200  # the silent handshakes at least; the engine holds 2x the concurrency at most
    assert in_flight + outcome_count(stderr, "not started") == 20000 - finished
    assert b"Task" not in stderr and b"Traceback" not in stderr, stderr.decode()


RFC3339_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def test_probe_reads_bare_hosts_from_stdin_with_a_default_scheme_and_port(backend, pki, tls_server):
    """`echo host | streamsock probe --tls -p PORT`: targets from stdin, transport and port
    filled in, and each record with its timestamp, host, ip, port and SNI apart."""
    result = run_cli("probe", "--tls", "-p", str(tls_server.port), "--json", "--cafile", pki.cafile,
                     "--backend", backend.name, input=b"localhost\n127.0.0.1\nudp://127.0.0.1:9\n")
    assert result.returncode == 0, result.stderr.decode()
    records = sorted(json_lines(result.stdout), key=lambda r: r["index"])
    by_host, ip_literal, explicit = records
    assert by_host["ok"] and by_host["target"] == f"tls://localhost:{tls_server.port}"
    assert (by_host["host"], by_host["ip"], by_host["port"], by_host["sni"]) == \
        ("localhost", "127.0.0.1", tls_server.port, "localhost")
    assert re.fullmatch(RFC3339_UTC, by_host["timestamp"]), by_host["timestamp"]
    assert ip_literal["ok"] and ip_literal["tls_version"]  # the test certificate names 127.0.0.1 too
    assert (ip_literal["host"], ip_literal["sni"]) == ("127.0.0.1", None)  # no SNI for an IP address
    assert (explicit["target"], explicit["tls_version"]) == ("udp://127.0.0.1:9", None)  # a transport given is kept


def test_probe_appends_whole_records_to_a_file_as_csv(backend, tmp_path):
    refused = f"tcp://127.0.0.1:{refused_port()}"
    out = tmp_path / "records.csv"
    for _ in range(2):
        result = run_cli("probe", "-o", str(out), "--format", "csv", "--backend", backend.name, refused, "a b")
        assert result.returncode == 1 and result.stdout == b"", result.stderr.decode()
    rows = list(csv.DictReader(out.open(newline="")))
    assert len(rows) == 4  # one header, then the records of both runs
    assert sorted((r["target"], r["error_class"]) for r in rows) == \
        sorted([(refused, "ConnectError"), ("a b", "AddressError")] * 2)
    assert all(re.fullmatch(RFC3339_UTC, r["timestamp"]) for r in rows)


def test_probe_offers_alpn_a_client_certificate_and_tls_versions(backend, pki):
    with PyTLSServer(pki.server_cert.certfile, pki.server_cert.keyfile, alpn=["h2"], require_client_cert=True,
                     cafile=pki.cafile) as peer:
        result = run_cli("probe", "--json", "--cafile", pki.cafile, "--sni", "localhost", "--alpn", "h2,http/1.1",
                         "--cert", pki.client.certfile, "--key", pki.client.keyfile, "--max-tls", "1.2",
                         "--backend", backend.name, f"tls://127.0.0.1:{peer.port}")
        assert result.returncode == 0, result.stderr.decode()
        [record] = json_lines(result.stdout)
        assert (record["alpn"], record["tls_version"], record["sni"]) == ("h2", "TLSv1.2", "localhost")
        peer.wait_for_connections(1)
        assert peer.connections[0].client_cert_der == pki.client.der
    too_new = run_cli("probe", "--json", "--min-tls", "1.3", "--max-tls", "1.2", "--backend", backend.name,
                      "tls://127.0.0.1:1")
    assert too_new.returncode in (1, 2), too_new.stderr.decode()


def test_probe_sends_a_payload_keeps_the_banner_and_the_chain(pki):
    with PyTLSServer(pki.server_certfile, pki.server_keyfile, mode="echo") as peer:
        result = run_cli("probe", "--json", "--cafile", pki.cafile, "--peer-name", "localhost",
                         "--payload", r"PING\r\n", "--banner", "6", "--chain", f"tls://127.0.0.1:{peer.port}")
    assert result.returncode == 0, result.stderr.decode()
    [record] = json_lines(result.stdout)
    assert record["banner"] == "PING\r\n"
    assert base64.b64decode(record["chain"][0]["der"]) == pki.server_cert.der


def test_probe_insecure_accepts_a_certificate_that_does_not_verify(pki):
    with PyTLSServer(pki.self_signed.certfile, pki.self_signed.keyfile) as peer:
        target = f"tls://127.0.0.1:{peer.port}"
        verified = run_cli("probe", "--json", target)
        insecure = run_cli("probe", "--json", "--insecure", target)
    assert verified.returncode == 1
    assert json_lines(verified.stdout)[0]["error_class"] == "CertificateVerifyError"
    assert insecure.returncode == 0, insecure.stderr.decode()
    assert json_lines(insecure.stdout)[0]["ok"]


def test_probe_pin_trusts_a_certificate_by_its_fingerprint(pki):
    pin = hashlib.sha256(pki.self_signed.der).hexdigest()
    with PyTLSServer(pki.self_signed.certfile, pki.self_signed.keyfile) as peer:
        target = f"tls://127.0.0.1:{peer.port}"
        pinned = run_cli("probe", "--json", "--pin", pin, target)
        wrong = run_cli("probe", "--json", "--pin", "00" * 32, target)
    assert pinned.returncode == 0, pinned.stderr.decode()
    assert json_lines(pinned.stdout)[0]["cert_sha256"] == pin
    assert wrong.returncode == 1
    assert json_lines(wrong.stdout)[0]["error_class"] == "CertificateVerifyError"


def test_probe_draws_a_progress_bar_on_a_terminal(pki, tls_server):
    with SilentServer() as silent:
        targets = [f"tls://127.0.0.1:{tls_server.port}", f"tls://127.0.0.1:{silent.port}"]
        controller, terminal = pty.openpty()
        try:
            with subprocess.Popen([*CLI, "probe", "--cafile", pki.cafile, "--peer-name", "localhost",
                                   "--timeout", "0.5", *targets],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal) as proc:
                os.close(terminal)
                terminal = -1
                shown = bytearray()
                deadline = time.monotonic() + DEADLINE
                while time.monotonic() < deadline and select.select([controller], [], [], 1.0)[0]:
                    try:
                        chunk = os.read(controller, 65536)
                    except OSError:  # EIO: the command has exited and closed the terminal
                        break
                    if not chunk:
                        break
                    shown += chunk
                assert proc.wait(DEADLINE) == 1
        finally:
            os.close(controller)
            if terminal >= 0:
                os.close(terminal)
    # The second result comes after the 0.5 s timeout: the bar has been drawn by then.
    assert re.search(rb"\r[12]/2 done  [\d,]+/s  [01] failed  ETA \d+:\d\d\x1b\[K", shown), bytes(shown)
    assert b"\r\x1b[K" in shown and b"TimeoutError" in shown  # cleared, then the summary


def test_probe_without_targets_reads_stdin_unless_it_is_a_terminal():
    assert b"done: 0 targets" in run_cli("probe", input=b"").stderr  # an empty list: nothing to do
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run([*CLI, "probe"], stdin=terminal, capture_output=True, timeout=DEADLINE)
    finally:
        os.close(controller)
        os.close(terminal)
    assert result.returncode == 2
    assert result.stderr == b"streamsock probe: give targets as arguments, with -f FILE, or on stdin\n"


@pytest.mark.parametrize("args", [
    ["-c", "0", "localhost:1"],
    ["--timeout", "0", "localhost:1"],
    ["--payload", r"\u1234", "localhost:1"],    # not a byte
    ["--banner", "70000", "localhost:1"],       # probe() refuses it
    ["--starttls", "gopher", "localhost:1"],
    ["-f", "/nonexistent/targets.txt"],
])
def test_probe_usage_errors_exit_2(args):
    result = run_cli("probe", *args)
    assert result.returncode == 2
    assert b"streamsock probe" in result.stderr and b"Traceback" not in result.stderr


# These need probe(starttls=..., rate=..., resume=...) in the library.


def test_probe_starttls_upgrades_each_target(pki, smtp_server):
    with RawServer(smtp_without_starttls) as refusing:
        result = run_cli("probe", "--json", "--starttls", "smtp", "--cafile", pki.cafile, "--peer-name", "localhost",
                         f"tcp://127.0.0.1:{smtp_server.port}", f"tcp://127.0.0.1:{refusing.port}")
    assert result.returncode == 1, result.stderr.decode()
    upgraded, refused = sorted(json_lines(result.stdout), key=lambda r: r["index"])
    assert upgraded["ok"] and upgraded["tls_version"] == "TLSv1.3"
    assert (refused["ok"], refused["error"]) == (False, "SS_ERR_STARTTLS_REFUSED")
    assert "454" in refused["message"]


def test_probe_rate_limits_new_connections(pki, tls_server):
    targets = [f"tls://127.0.0.1:{tls_server.port}"] * 6
    result = run_cli("probe", "--rate", "10", "--cafile", pki.cafile, "--peer-name", "localhost", *targets)
    assert result.returncode == 0, result.stderr.decode()
    elapsed = float(re.search(rb"6 targets in (\d+\.\d+) s", result.stderr).group(1))
    assert elapsed >= 0.4  # 6 connections at 10/s: the last one starts 0.5 s after the first


def test_probe_resume_reuses_sessions_for_repeated_targets(pki, tls_server):
    targets = [f"tls://127.0.0.1:{tls_server.port}"] * 4
    result = run_cli("probe", "--json", "--resume-sessions", "-c", "1", "--cafile", pki.cafile, "--peer-name", "localhost",
                     *targets)
    assert result.returncode == 0, result.stderr.decode()
    records = sorted(json_lines(result.stdout), key=lambda r: r["index"])
    assert not records[0]["session_reused"]
    assert any(r["session_reused"] for r in records[1:]), records


# --- connect ----------------------------------------------------------------------------


def test_connect_round_trips_data_over_tcp():
    data = bytes(range(256)) * 4096  # 1 MiB both ways at once: the relay must not deadlock
    with RawServer(echo_until_eof) as peer:
        result = run_cli("connect", f"tcp://127.0.0.1:{peer.port}", input=data)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == data
    assert result.stderr.decode() == f"streamsock connect: connected to 127.0.0.1:{peer.port} (plaintext)\n"


@pytest.mark.parametrize("trust", ["cafile", "pin"])
def test_connect_round_trips_data_over_tls(backend, pki, trust):
    certkey = pki.server_cert if trust == "cafile" else pki.self_signed
    options = ["--cafile", pki.cafile] if trust == "cafile" else ["--pin", hashlib.sha256(certkey.der).hexdigest()]
    with RawServer(tls_line_echo(pki.server_context(certkey))) as peer:
        result = run_cli("connect", f"tls://127.0.0.1:{peer.port}", *options, "--backend", backend.name,
                         input=b"hello\nbye\n")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"hello\nbye\n"
    summary = result.stderr.decode()
    assert summary.startswith(f"streamsock connect: connected to 127.0.0.1:{peer.port} (TLSv1.3, TLS_")
    assert ("certificate verified for 127.0.0.1" if trust == "cafile" else "pinned") in summary


def tls_echo_until_close_notify(context):
    """Echoes over TLS until the client's close_notify (a bare FIN raises), then closes cleanly."""
    def script(conn: socket.socket) -> None:
        tls = context.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False)
        while data := tls.recv(65536):
            tls.sendall(data)
        tls.unwrap()
    return script


def test_connect_over_tls_ends_the_write_side_at_the_end_of_stdin(backend, pki):
    """The server learns of the end of stdin (close_notify, then FIN) and closes; every byte comes back."""
    data = bytes(range(256)) * 4096
    with RawServer(tls_echo_until_close_notify(pki.server_context())) as peer:
        result = run_cli("connect", f"tls://127.0.0.1:{peer.port}", "--cafile", pki.cafile,
                         "--backend", backend.name, input=data)
        peer.wait_for_connections(1)
        assert peer.connections[0].finished.wait(5)
        assert peer.connections[0].error is None, (peer.connections[0].error, result.stderr.decode())
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == data


def test_connect_idle_timeout_closes_a_connection_where_nothing_happens(backend):
    with SilentServer() as peer:
        result = run_cli("connect", f"tcp://127.0.0.1:{peer.port}", "--idle-timeout", "0.3",
                         "--backend", backend.name, input=b"")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr.decode().endswith("streamsock connect: nothing sent or received for 0.3 s: closing\n")


@pytest.mark.parametrize("problem, expected", [
    ("wrong_host", "mismatch"),
    ("untrusted", "verify failed"),
    ("wrong_pin", "fingerprint"),
    ("refused", "Connection refused"),
    ("silent", "timed out"),
])
def test_connect_fails_with_status_1_and_one_clear_line(pki, problem, expected):
    with contextlib.ExitStack() as peers:
        if problem == "refused":
            port = refused_port()
        elif problem == "silent":  # accepts, never answers the ClientHello
            port = peers.enter_context(SilentServer()).port
        else:
            certkey = {"wrong_host": pki.wrong_host, "untrusted": pki.untrusted, "wrong_pin": pki.self_signed}[problem]
            port = peers.enter_context(PyTLSServer(certkey.certfile, certkey.keyfile)).port
        trust = ["--pin", "ab" * 32] if problem == "wrong_pin" else ["--cafile", pki.cafile]
        result = run_cli("connect", f"tls://127.0.0.1:{port}", *trust, "--timeout", "1")
    assert result.returncode == 1
    message = result.stderr.decode()
    assert message.startswith(f"streamsock connect: Unable to connect to tls://127.0.0.1:{port}"), message
    assert expected in message and message.count("\n") == 1
    assert result.stdout == b""


def test_connect_udp_waits_for_replies_after_stdin_ends():
    with UDPEchoServer() as peer:
        result = run_cli("connect", f"udp://127.0.0.1:{peer.port}", "--timeout", "0.5", input=b"ping")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"ping"


@pytest.mark.parametrize("args", [
    ["tls://127.0.0.1:1", "--starttls", "smtp"],   # STARTTLS starts in plaintext
    ["tcp://[::1"],
    ["tls://127.0.0.1:1", "--pin", "not-hex"],
])
def test_connect_usage_errors_exit_2(args):
    result = run_cli("connect", *args)
    assert result.returncode == 2
    assert result.stderr.startswith(b"streamsock connect: ")


# These need streamsock.starttls.negotiate.


def test_connect_starttls_talks_smtp_over_tls(pki, smtp_server):
    result = run_cli("connect", f"tcp://127.0.0.1:{smtp_server.port}", "--starttls", "smtp", "--cafile", pki.cafile,
                     "--peer-name", "localhost", input=b"EHLO client.example\r\nQUIT\r\n")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"250 localhost\r\n221 bye\r\n"
    lines = result.stderr.decode().splitlines()
    assert lines[0] == "streamsock connect: greeting: 220 localhost ESMTP test"
    assert "(STARTTLS smtp, TLSv1.3, " in lines[1] and "certificate verified for localhost" in lines[1]
    [record] = smtp_server.wait_for_connections(1)
    assert record.tls_lines == [b"EHLO client.example", b"QUIT"]


def test_connect_starttls_refused_fails_with_status_1(pki):
    with RawServer(smtp_without_starttls) as peer:
        result = run_cli("connect", f"tcp://127.0.0.1:{peer.port}", "--starttls", "smtp", "--cafile", pki.cafile)
    assert result.returncode == 1
    message = result.stderr.decode()
    assert message.startswith("streamsock connect: ") and "454 TLS not available" in message


# --- serve ------------------------------------------------------------------------------

ANNOUNCEMENT = rb"listening on (\S+?)(?: \(self-signed certificate, sha256 fingerprint ([0-9a-f]{64})\))?\n"


def test_serve_echo_self_signed_answers_a_client_that_pins_it(backend):
    with running("serve", "tls://127.0.0.1:0", "--echo", "--self-signed", "--max-clients", "1",
                 "--backend", backend.name) as proc:
        stderr = PipeReader(proc.stderr)
        url, fingerprint = stderr.until(ANNOUNCEMENT).groups()
        url = url.decode()
        assert re.fullmatch(r"tls://127\.0\.0\.1:[1-9]\d*", url)
        # A client that fails its handshake is logged and does not stop the server ...
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5) as plain:
            plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
            with contextlib.suppress(OSError):
                plain.recv(1024)
        stderr.until(rb"streamsock serve: a client failed: [^\n]+\n")
        # ... and the next one, pinning the printed fingerprint, gets its data back.
        pinned = ss.Context(ssl={"verify_peer": False, "peer_fingerprint": fingerprint.decode()})
        with ss.client(url, timeout=5, context=pinned) as client:
            client.set_timeout(5)
            client.write(b"hello\n")
            assert client.readline() == b"hello\n"
        assert proc.wait(DEADLINE) == 0  # --max-clients 1
        assert b"Traceback" not in proc.stderr.read()


def test_serve_echo_serves_a_new_client_whatever_the_idle_ones_do(backend, pki):
    """Silent TCP clients (no ClientHello) and idle TLS clients fill the server: a new
    client is served at once, the client idle longest making room for it."""
    with running("serve", "tls://127.0.0.1:0", "--echo", "--self-signed", "--max-connections", "4",
                 "--backend", backend.name) as proc, contextlib.ExitStack() as clients:
        url = PipeReader(proc.stderr).until(ANNOUNCEMENT).group(1).decode()
        port = int(url.rsplit(":", 1)[1])
        insecure = ss.Context(ssl={"verify_peer": False, "verify_peer_name": False})
        for _ in range(20):
            clients.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
        idle = []
        for i in range(4):
            stream = clients.enter_context(ss.client(url, timeout=5, context=insecure))
            stream.write(b"%d\n" % i)
            assert stream.readline() == b"%d\n" % i  # served, then idle
            idle.append(stream)
        with ss.client(url, timeout=5, context=insecure) as newcomer:
            newcomer.write(b"new\n")
            assert newcomer.readline() == b"new\n"
        assert idle[0].read(1) == b""  # idle longest: closed to make room
        idle[3].write(b"still here\n")
        assert idle[3].readline() == b"still here\n"


def test_serve_echo_closes_an_idle_client_after_the_idle_timeout(backend):
    with running("serve", "tcp://127.0.0.1:0", "--echo", "--idle-timeout", "0.2", "--backend", backend.name) as proc:
        port = int(PipeReader(proc.stderr).until(ANNOUNCEMENT).group(1).rsplit(b":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"x")
            assert client.recv(1) == b"x"
            assert client.recv(1) == b""  # nothing more for 0.2 s: the server closed it


def test_serve_listens_with_the_backlog_asked_for():
    with running("serve", "tcp://127.0.0.1:0", "--echo", "--backlog", "77") as proc:
        port = PipeReader(proc.stderr).until(ANNOUNCEMENT).group(1).rsplit(b":", 1)[1].decode()
        listing = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=10)
    assert listing.stdout.split()[2] == "77", listing.stdout  # Send-Q of a listening socket: its backlog


def test_serve_without_echo_passes_data_both_ways_like_nc():
    with running("serve", "tcp://127.0.0.1:0") as proc:
        port = int(PipeReader(proc.stderr).until(ANNOUNCEMENT).group(1).rsplit(b":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"from the client\n")
            PipeReader(proc.stdout).until(rb"^from the client\n$")
            proc.stdin.write(b"from the server\n")
            proc.stdin.close()  # the end of stdin: the server shuts its write side down
            received = b""
            while chunk := client.recv(1024):
                received += chunk
            assert received == b"from the server\n"
        assert proc.wait(DEADLINE) == 0


def test_serve_and_connect_over_a_unix_socket():
    with short_tempdir() as directory, running("serve", f"unix://{directory}/echo.sock", "--echo",
                                               "--max-clients", "1") as proc:
        url = PipeReader(proc.stderr).until(ANNOUNCEMENT).group(1).decode()
        assert url == f"unix://{directory}/echo.sock"
        result = run_cli("connect", url, input=b"over unix\n")
        assert (result.returncode, result.stdout) == (0, b"over unix\n"), result.stderr.decode()
        assert proc.wait(DEADLINE) == 0
        assert not os.path.exists(f"{directory}/echo.sock")  # the server removed its socket


def test_serve_echoes_udp_datagrams():
    with running("serve", "udp://127.0.0.1:0", "--echo", "--max-clients", "2") as proc:
        port = int(PipeReader(proc.stderr).until(ANNOUNCEMENT).group(1).rsplit(b":", 1)[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            for datagram in (b"one", b"two"):
                client.sendto(datagram, ("127.0.0.1", port))
                assert client.recv(100) == datagram
        assert proc.wait(DEADLINE) == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_a_signal(signum):
    with running("serve", "tcp://127.0.0.1:0", "--echo") as proc:
        port = int(PipeReader(proc.stderr).until(ANNOUNCEMENT).group(1).rsplit(b":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"x")
            assert client.recv(1) == b"x"  # a client thread is busy when the signal comes
            proc.send_signal(signum)
            assert proc.wait(DEADLINE) == 0
        assert proc.stderr.read() == b""


@pytest.mark.parametrize("args, expected", [
    (["tls://127.0.0.1:0"], b"needs --cert FILE [--key FILE] or --self-signed"),
    (["tcp://127.0.0.1:0", "--self-signed"], b"certificates are for"),
    (["tls://127.0.0.1:0", "--key", "k.pem"], b"--key goes with --cert"),
    (["tcp://127.0.0.1"], b"missing port"),
])
def test_serve_usage_errors_exit_2(args, expected):
    result = run_cli("serve", *args)
    assert result.returncode == 2
    assert result.stderr.startswith(b"streamsock serve: ") and expected in result.stderr, result.stderr


def test_probe_reaches_a_tls10_server_once_asked(backend, pki):
    """OpenSSL 3 speaks TLS 1.0 only at security level 0, and TLS 1.0 has only
    SHA-1 suites: --min-tls 1.0 with --security-level 0 reaches such a server
    (the default suites widen to OpenSSL's below TLS 1.2), --ciphers picks them."""
    legacy_only = ("-tls1", "-cipher", "DEFAULT:@SECLEVEL=0")
    with OpenSSLServer(pki.server_certfile, pki.server_keyfile, mode="www", extra_args=legacy_only) as peer:
        common = ("probe", "--json", "--cafile", pki.cafile, "--sni", "localhost", "--backend", backend.name,
                  f"tls://127.0.0.1:{peer.port}")
        refused = run_cli(*common)
        reached = run_cli(*common, "--min-tls", "1.0", "--security-level", "0")
        picked = run_cli(*common, "--min-tls", "1.0", "--security-level", "0",
                         "--ciphers", "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA")
    assert refused.returncode == 1 and json_lines(refused.stdout)[0]["error"] == "SS_ERR_TLS"
    for result in (reached, picked):
        assert result.returncode == 0, result.stderr.decode()
        assert json_lines(result.stdout)[0]["tls_version"] == "TLSv1"
    assert json_lines(picked.stdout)[0]["cipher"].endswith("-AES128-SHA")
    bad_level = run_cli("probe", "--security-level", "9", "tls://127.0.0.1:1")
    assert bad_level.returncode == 2 and b"--security-level" in bad_level.stderr
