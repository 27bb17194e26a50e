"""Blocking calls and signals: Python's signal handlers run while a call
waits, the call's own deadline still holds, and a handler that raises
(Ctrl-C's KeyboardInterrupt) ends the call at once, leaving the stream
usable with nothing lost."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time

import pytest

import streamsock as ss
from peers import PyTLSServer, SilentServer

INTERVAL = 0.1  # seconds between SIGALRMs


@pytest.fixture
def alarms():
    """SIGALRM every INTERVAL while the test runs; the list of times the handler ran."""
    ran: list[float] = []
    previous = signal.signal(signal.SIGALRM, lambda *_: ran.append(time.monotonic()))
    signal.setitimer(signal.ITIMER_REAL, INTERVAL, INTERVAL)
    try:
        yield ran
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def waited(fn, exc_type) -> float:
    start = time.monotonic()
    with pytest.raises(exc_type):
        fn()
    return time.monotonic() - start


def test_a_read_runs_the_handlers_and_keeps_its_deadline(backend, alarms):
    with SilentServer() as peer:
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5) as s:
            s.set_timeout(1.0)
            elapsed = waited(lambda: s.read(10), ss.TimeoutError)
    assert 0.95 <= elapsed < 1.5  # the deadline is not restarted by each signal
    assert len(alarms) >= 5      # and the handler ran while the read waited


def test_a_handshake_runs_the_handlers_and_keeps_its_deadline(backend, alarms):
    with SilentServer() as peer:  # accepts and never answers the ClientHello
        elapsed = waited(lambda: backend.client(f"tls://127.0.0.1:{peer.port}", timeout=1.0), ss.TimeoutError)
    assert 0.95 <= elapsed < 1.5
    assert len(alarms) >= 5


def test_an_accept_runs_the_handlers_and_keeps_its_deadline(backend, alarms):
    with backend.server("tcp://127.0.0.1:0") as srv:
        elapsed = waited(lambda: srv.accept(timeout=1.0), ss.TimeoutError)
    assert 0.95 <= elapsed < 1.5
    assert len(alarms) >= 5


def test_a_handler_that_raises_ends_a_read_at_once_and_loses_nothing(backend):
    """Ctrl-C in a read with no deadline: KeyboardInterrupt within a signal's
    reach, then the stream reads on, every byte there."""
    def interrupt(*_):
        raise KeyboardInterrupt

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with backend.client(f"tcp://127.0.0.1:{port}", timeout=5) as s:
            peer, _ = listener.accept()
            with peer:
                previous = signal.signal(signal.SIGALRM, interrupt)
                signal.setitimer(signal.ITIMER_REAL, 0.3)
                try:
                    s.set_timeout(-1)  # no deadline at all
                    elapsed = waited(lambda: s.read(10), KeyboardInterrupt)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    signal.signal(signal.SIGALRM, previous)
                assert 0.25 <= elapsed < 0.5
                peer.sendall(b"after the interrupt\n")
                s.set_timeout(5)
                assert s.readline() == b"after the interrupt\n"


def test_a_write_to_a_reader_that_never_reads_keeps_its_deadline(backend, alarms):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with backend.client(f"tcp://127.0.0.1:{port}", timeout=5) as s:
            peer, _ = listener.accept()
            with peer:
                s.set_timeout(1.0)
                elapsed = waited(lambda: s.write(b"x" * (64 << 20)), ss.TimeoutError)
    assert 0.95 <= elapsed < 1.5
    assert len(alarms) >= 5


def test_a_handler_runs_while_another_thread_waits_in_a_read(backend):
    """A read on a thread (cffi drops the GIL while C waits) never stops the
    main thread's handlers."""
    with SilentServer() as peer:
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5) as s:
            s.set_timeout(1.0)
            outcome: list = []
            reader = threading.Thread(target=lambda: outcome.append(waited(lambda: s.read(10), ss.TimeoutError)))
            ran = threading.Event()
            previous = signal.signal(signal.SIGALRM, lambda *_: ran.set())
            try:
                reader.start()
                signal.setitimer(signal.ITIMER_REAL, 0.2)
                assert ran.wait(2)  # the main thread took the signal while the reader waited
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
                reader.join(5)
    assert outcome and 0.95 <= outcome[0] < 1.5


class _Stop(BaseException):
    """A handler's own exception, not Ctrl-C's (a test runner's timeout, say)."""


def _probe_task_running() -> bool:
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no loop running in this thread
        return False
    return task is not None and task.get_coro().__qualname__ == "Engine._probe"


def test_a_handler_that_raises_inside_a_probe_ends_the_probe_with_it(backend, pki):
    """The handler's exception reaches the caller of the probe, and nothing is
    left open. On the pure backend it is raised inside one of the engine's probe
    tasks (the handler waits for one), where asyncio keeps any exception but
    Ctrl-C's and SystemExit in the task; the engine raises it from take()."""
    raised_in: list[bool] = []

    def stop(*_):
        in_probe = _probe_task_running()
        if not raised_in and (in_probe or backend.name == "native"):  # the C engine has no tasks: anywhere will do
            raised_in.append(in_probe)
            raise _Stop

    with PyTLSServer(pki.server_certfile, pki.server_keyfile, mode="close_after_handshake") as server:
        context = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
        run = backend.probe([f"tls://127.0.0.1:{server.port}"] * 3000, context=context, concurrency=50)
        previous = signal.signal(signal.SIGPROF, stop)
        signal.setitimer(signal.ITIMER_PROF, 0.002, 0.002)  # every 2 ms of the process's CPU time
        try:
            with pytest.raises(_Stop):
                for _ in run:
                    pass
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
            signal.signal(signal.SIGPROF, previous)
            run.close()
    assert raised_in == [backend.name == "pure"]
