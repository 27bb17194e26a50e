"""A server's accepting and handshaking in the pure backend: the twin of
csrc/acceptor.c, on a selector of its own.

The same rules: what waits in the backlog is accepted, handshakes step when
their sockets are ready and end at their deadline, at most max_handshakes
(handshakes plus established connections not handed over) at once, and after
running out of descriptors the listener rests for 100 ms instead of spinning.
"""

from __future__ import annotations

import collections
import errno as _errno
import selectors
import socket
import time
from typing import TYPE_CHECKING

from .. import errors as _e
from .._deadline import deadline_after, time_left
from .conn import DONE, WANT_READ, PureConnection, error_code

if TYPE_CHECKING:
    from .._types import ErrorRecord

_BATCH = 64
_DEFAULT_MAX = 1024
_FD_SHORTAGE_PAUSE = 0.1
_FD_SHORTAGE = frozenset({_errno.EMFILE, _errno.ENFILE, _errno.ENOBUFS, _errno.ENOMEM})
_EVENTS = {WANT_READ: selectors.EVENT_READ}


class Acceptor:
    """See ``_backend.Acceptor``."""

    def __init__(self, listener: PureConnection, handshake_timeout: float | None, max_handshakes: int = 0) -> None:
        if listener.state != "listening" or listener._sock is None or listener._sock.type != socket.SOCK_STREAM:
            raise _e.error(_e.STATE, "an acceptor needs a listening stream socket")
        self._listener = listener
        self._timeout = handshake_timeout
        self._max = max_handshakes or _DEFAULT_MAX
        self._selector = selectors.DefaultSelector()
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._selector.register(self._wake_in, selectors.EVENT_READ, "wake")
        self._pending: dict[PureConnection, tuple[float | None, int]] = {}  # handshakes -> (deadline, epoch)
        self._ready: collections.deque[PureConnection] = collections.deque()
        self._listening = False
        self._resume_at: float | None = None
        self._failures = 0
        self._accept_errors = 0
        self._last_handshake: ErrorRecord | None = None
        self._last_accept: ErrorRecord | None = None
        self._epoch = 0
        self._epoch_failure: ErrorRecord | None = None
        self._epoch_failures = 0
        self._update_listening()

    def fileno(self) -> int:
        return self._selector.fileno()

    # -- what the listener may do ---------------------------------------------------------------

    def _room(self) -> bool:
        return len(self._pending) + len(self._ready) < self._max

    def _update_listening(self) -> None:
        sock = self._listener._sock
        on = self._resume_at is None and self._room() and sock is not None
        if on != self._listening:
            if sock is not None:  # a closed listener has nothing left to watch
                if on:
                    self._selector.register(sock, selectors.EVENT_READ, "listener")
                else:
                    self._selector.unregister(sock)
            self._listening = on

    def _accept_waiting(self, now: float) -> None:
        while self._room():
            try:
                conn = self._listener.accept()
            except _e.StreamSocketError as exc:
                self._accept_errors += 1
                self._last_accept = (error_code(exc, _e.SYSTEM), exc.errno or 0, str(exc))
                if exc.errno in _FD_SHORTAGE:  # rest rather than spin on a listener that stays readable
                    self._resume_at = now + _FD_SHORTAGE_PAUSE
                    break
                continue
            if conn is None:
                break
            if conn.state == "established":
                self._ready.append(conn)
                continue
            self._pending[conn] = (None if self._timeout is None else now + self._timeout, self._epoch)
            self._step(conn)
        self._update_listening()

    # -- one handshake -------------------------------------------------------------------------

    def _step(self, conn: PureConnection) -> None:
        try:
            rc = conn.step()
        except _e.StreamSocketError as exc:
            self._failed(conn, exc)
            return
        if rc == DONE:
            self._forget(conn)
            self._ready.append(conn)
            return
        sock = conn._sock
        assert sock is not None  # a handshake under way has its socket
        events = _EVENTS.get(rc, selectors.EVENT_WRITE)
        key = self._selector.get_map().get(sock)
        if key is None:
            self._selector.register(sock, events, conn)
        elif key.events != events:
            self._selector.modify(sock, events, conn)

    def _forget(self, conn: PureConnection) -> int:
        """Takes a handshake out; its epoch."""
        _, epoch = self._pending.pop(conn, (None, -1))
        if conn._sock is not None and conn._sock in self._selector.get_map():
            self._selector.unregister(conn._sock)
        return epoch

    def _failed(self, conn: PureConnection, exc: _e.StreamSocketError) -> None:
        epoch = self._forget(conn)
        self._failures += 1
        self._last_handshake = (error_code(exc, _e.TLS), exc.errno or 0, exc.errstr)
        if epoch == self._epoch:
            self._epoch_failures += 1
            self._epoch_failure = self._last_handshake
        conn.close()

    def _expire(self, now: float) -> None:
        for conn, (deadline, _) in list(self._pending.items()):
            if deadline is not None and deadline <= now:
                self._failed(conn, _e.error(_e.TIMEOUT, "TLS handshake timed out", 110))

    # -- the surface ---------------------------------------------------------------------------

    def run(self, timeout: float | None) -> list[PureConnection]:
        until = deadline_after(timeout)
        failures = self._epoch_failures
        while True:
            now = time.monotonic()
            self._expire(now)
            if self._resume_at is not None and now >= self._resume_at:
                self._resume_at = None
            self._update_listening()
            if self._ready:
                return self._hand_over()
            due = self.next_timer()
            wait = None if until is None else max(0.0, until - now)
            if due is not None and (wait is None or due < wait):
                wait = due
            woken = False
            try:
                events = self._selector.select(wait)
            except InterruptedError:
                return []
            now = time.monotonic()
            for key, _ in events:
                if key.data == "wake":
                    try:
                        while self._wake_in.recv(64):
                            pass
                    except BlockingIOError:
                        pass
                    woken = True
                elif key.data == "listener":
                    self._accept_waiting(now)
                elif key.data in self._pending:
                    self._step(key.data)
            self._update_listening()
            if self._ready:
                return self._hand_over()
            if woken or self._epoch_failures != failures:  # a blocking accept reports its clients' failures
                return []
            if until is not None and time.monotonic() >= until:
                self._expire(time.monotonic())
                return []

    def _hand_over(self) -> list[PureConnection]:
        out = [self._ready.popleft() for _ in range(min(_BATCH, len(self._ready)))]
        self._update_listening()
        return out

    def next_timer(self) -> float | None:
        due = [d for d, _ in self._pending.values() if d is not None]
        if self._resume_at is not None:
            due.append(self._resume_at)
        return max(0.0, min(due) - time.monotonic()) if due else None

    def counts(self) -> tuple[int, int]:
        return self._failures, self._accept_errors

    def stats(self) -> tuple[int, int, tuple[int, int, str] | None, tuple[int, int, str] | None]:
        return self._failures, self._accept_errors, self._last_handshake, self._last_accept

    def begin(self) -> None:
        self._epoch += 1
        self._epoch_failures = 0
        self._epoch_failure = None

    def epoch_failure(self) -> tuple[int, int, str] | None:
        return self._epoch_failure if self._epoch_failures else None

    def wake(self) -> None:
        try:
            self._wake_out.send(b"\0")
        except BlockingIOError:
            pass  # woken already

    def close(self) -> None:
        for conn in list(self._pending):
            self._forget(conn)
            conn.close()
        while self._ready:
            self._ready.popleft().close()
        if self._listening and self._listener._sock is not None:
            self._selector.unregister(self._listener._sock)
            self._listening = False
        self._selector.close()
        self._wake_in.close()
        self._wake_out.close()
