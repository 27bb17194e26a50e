"""The `streamsock` command, run as a user runs it."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import weakref

import pytest

from streamsock.cli.main import Terminated
from streamsock.cli.signals import StopOnSignal


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


def test_sigterm_in_the_middle_of_a_task_stops_the_event_loop_between_callbacks():
    """SIGTERM that comes in the middle of a task's step (the pure backend's probe engine
    runs its event loop in the command's main thread) is raised by the loop between two
    callbacks: the step runs to its end, the task waits where it was, and the loop can
    run again to cancel it and close. The summary's words and status are the signal's."""
    steps = []

    async def task_body(never: asyncio.Future) -> None:
        signal.raise_signal(signal.SIGTERM)  # its handler runs before this call returns
        steps.append("the rest of the step")
        await never

    before = signal.getsignal(signal.SIGTERM)
    loop = asyncio.new_event_loop()
    try:
        with StopOnSignal() as stop:
            task = loop.create_task(task_body(loop.create_future()))
            with pytest.raises(Terminated):
                loop.run_until_complete(task)
            assert steps == ["the rest of the step"] and not task.done()
            assert asyncio._get_running_loop() is None  # the loop is not left marked running
            task.cancel()
            loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
            assert task.cancelled()
            assert (stop.stopped_by, stop.exit_status) == ("SIGTERM", 143)
    finally:
        loop.close()
    assert signal.getsignal(signal.SIGTERM) is before  # the handler in place before is back


def test_ctrl_c_with_no_event_loop_running_raises_at_once():
    with StopOnSignal() as stop:
        with pytest.raises(KeyboardInterrupt) as raised:
            signal.raise_signal(signal.SIGINT)
        assert type(raised.value) is KeyboardInterrupt
        assert (stop.stopped_by, stop.exit_status) == ("Ctrl-C", 130)


def test_a_stop_python_drops_in_a_weak_reference_callback_is_raised_at_the_next_check():
    """A signal whose handler runs inside a weak reference's callback (asyncio keeps its
    tasks in a WeakSet) raises there, and Python drops the exception; the command's next
    safe point, between two results, raises the stop again."""
    class Referent:
        pass

    dropped = []
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: dropped.append(unraisable.exc_type)
    try:
        with StopOnSignal() as stop:
            referent = Referent()
            watch = weakref.ref(referent, lambda _: signal.raise_signal(signal.SIGTERM))
            del referent  # the callback runs here, and the signal's handler inside it
            assert watch() is None and dropped == [Terminated]
            with pytest.raises(Terminated):
                stop.check()
            assert (stop.stopped_by, stop.exit_status) == ("SIGTERM", 143)
    finally:
        sys.unraisablehook = hook
