"""The `streamsock` command, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def streamsock(*args: str, stdin: str | None = None, backend: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "streamsock", *args]
    if backend:
        command += ["--backend", backend]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60)


def test_parse_prints_the_canonical_form_as_json(backend):
    result = streamsock("parse", "TLS://[::1]:443", "unix:///run/app.sock", backend=backend.name)
    assert result.returncode == 0, result.stderr
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first == {
        "input": "TLS://[::1]:443", "canonical": "tls://[::1]:443", "transport": "tls",
        "host": "::1", "port": 443, "path": None, "secure": True,
    }
    assert second["path"] == "/run/app.sock" and second["host"] is None


def test_parse_reports_errors_and_exits_1(backend):
    result = streamsock("parse", "a:1", "tcp://[fe80::1:80", backend=backend.name)
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records[0]["canonical"] == "tcp://a:1"
    assert records[1]["error"] == "SS_ERR_ADDR_IPV6_BRACKET"
    assert records[1]["message"].startswith('Failed to parse IPv6 address "tcp://[fe80::1:80"')
    assert "1 of 2 addresses failed" in result.stderr


def test_parse_reads_a_file_from_stdin(backend):
    result = streamsock("parse", "-f", "-", stdin="a:1\n\nudp://b:2\r\n", backend=backend.name)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["canonical"] for line in result.stdout.splitlines()] == ["tcp://a:1", "udp://b:2"]


@pytest.mark.parametrize("args", [[], ["parse"]])
def test_usage_errors_exit_2(args):
    result = streamsock(*args)
    assert result.returncode == 2
    assert "streamsock" in result.stderr


def test_help_lists_every_command():
    result = streamsock("--help")
    assert result.returncode == 0
    for command in ("parse", "probe", "connect", "serve", "demo"):
        assert f"    {command} " in result.stdout


def test_version_names_backend_and_openssl():
    result = streamsock("--version")
    assert result.returncode == 0
    assert "backend" in result.stdout and "OpenSSL" in result.stdout


def test_console_script_is_installed():
    import shutil

    path = shutil.which("streamsock")
    if path is None:
        pytest.skip("the streamsock script is not on PATH in this environment")
    result = subprocess.run([path, "parse", "localhost:80"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert json.loads(result.stdout)["canonical"] == "tcp://localhost:80"


def test_demo_runs_every_transport_on_every_backend():
    result = streamsock("demo", "--targets", "200", "-c", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for label in ("tcp echo", "udp echo", "tls echo", "smtp STARTTLS", "unix echo"):
        [row] = [line for line in lines if line.startswith(label)]
        assert row.count(" ok ") == 2, row  # native and pure
    assert "200 ok" in result.stdout and "10 ConnectError" in result.stdout
    assert lines[-1] == "all steps ok"
