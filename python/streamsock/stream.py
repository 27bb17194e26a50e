"""Stream and Server: PHP's socket streams, driven blocking (or non-blocking).

The stream's state lives in a sans-IO :class:`~streamsock._state.StreamState`;
this module is the blocking driver above it: the stream lock, timeouts, and
the backend connection's blocking calls (``read_wait``, ``write_wait``,
``run``: one call into the backend each). The asyncio driver (``aio.py``)
drives the same state, so both APIs behave the same by construction.
"""

from __future__ import annotations

import collections
import math
import select as _select
import socket as _socket
import threading
from typing import TYPE_CHECKING, Iterable, Iterator, Protocol, TypeVar

from . import errors as _e
from ._deadline import deadline_after, limit_of, time_left
from ._state import CHUNK, READ_CAP, StateViews, StreamState, check_shutdown_how
from ._types import BytesLike, StreamMeta
from .address import Address, Transport
from .context import DEFAULT_CONTEXT, Context, check_transport_available

if TYPE_CHECKING:
    from ._backend import Acceptor, Backend, Connection

DONE, WANT_READ, WANT_WRITE = 0, 1, 2

# PHP's flags for stream_socket_client / stream_socket_server / stream_socket_shutdown.
CLIENT_PERSISTENT = 1
CLIENT_ASYNC_CONNECT = 2
CLIENT_CONNECT = 4
SERVER_BIND = 4
SERVER_LISTEN = 8
SHUT_RD, SHUT_WR, SHUT_RDWR = 0, 1, 2
# ... for stream_socket_recvfrom / sendto (STREAM_OOB, STREAM_PEEK) ...
OOB, PEEK = 1, 2
# ... and stream_socket_pair (STREAM_PF_*, STREAM_SOCK_*, STREAM_IPPROTO_*: the Linux values).
PF_UNIX, PF_INET, PF_INET6 = 1, 2, 10
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_RDM, SOCK_SEQPACKET = 1, 2, 3, 4, 5
IPPROTO_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_RAW = 0, 1, 6, 17, 255

_READ_ALL_CHUNK = 65536  # read(-1) gathers the stream in chunks of this size

default_socket_timeout = 60.0  # PHP's ini default; None passed as a timeout means this


def timeout_value(timeout: float | None) -> float | None:
    """Seconds to wait: None means the default (PHP's default_socket_timeout),
    a negative value or infinity forever (None); NaN is a ValueError."""
    return limit_of(timeout, default_socket_timeout)


class Stream(StateViews):
    """A connected socket stream (PHP's stream resource from stream_socket_client/accept).

    Reads are buffered; ``read`` returns up to ``size`` bytes, ``b""`` at end of
    stream, or ``None`` in non-blocking mode when nothing is there yet. In
    blocking mode a read or write waits at most the stream timeout (default 60 s,
    ``set_timeout``) and then raises :class:`~streamsock.TimeoutError` with
    ``meta["timed_out"]`` set; no data is lost.
    """

    __slots__ = ("_st", "_timeout", "_blocking", "_lock", "_close_pending", "_persistent_key", "__weakref__")

    def __init__(self, state: StreamState) -> None:
        self._st = state
        self._timeout = timeout_value(None)
        self._blocking = True
        self._lock = threading.Lock()
        self._close_pending = False
        self._persistent_key: str | None = None  # set on a persistent client stream

    # -- plumbing -----------------------------------------------------------

    def _enter(self, wait: bool | None = None) -> bool:
        """Takes the stream for one call and finishes a pending handshake
        first: False when ``wait`` is false (default: the stream is
        non-blocking) and the handshake still needs I/O."""
        if not self._lock.acquire(blocking=False):
            raise _e.error(_e.BUSY)
        st = self._st
        if st.conn is None:
            self._leave()
            raise _e.error(_e.CLOSED)
        if not st.ready:
            try:
                ready = self._finish_handshake(self._blocking if wait is None else wait)
            except BaseException:
                self._leave()
                raise
            if not ready:
                self._leave()
                return False
        return True

    def _leave(self) -> None:
        self._lock.release()
        if self._close_pending:  # close() was called while another thread was inside
            self.close()

    def _closed_under_us(self, exc: _e.StreamSocketError) -> _e.StreamSocketError:
        """What a call interrupted by close() from another thread raises: the
        stream is closed, whatever the torn-down socket said."""
        if self._close_pending:
            closed = _e.error(_e.CLOSED, "stream closed by another thread")
            closed.__cause__ = exc
            return closed
        return exc

    def _finish_handshake(self, wait: bool) -> bool:
        """Completes a pending async connect or STARTTLS (waiting for it when
        ``wait``), then runs its checks (fingerprint, capture): True when done."""
        st = self._st
        conn = st.conn
        assert conn is not None  # _enter saw it open; a close from another thread waits for _leave
        try:
            if wait:
                conn.run(self._timeout, st.pending_context)
            elif conn.step(st.pending_context) != DONE:
                return False
        except _e.CertificateVerifyError as exc:
            st.note_verify_failure(exc)
            raise
        st.after_handshake()
        return True

    def _recv(self, size: int, wait: bool) -> bytes | None:
        """One read from the connection, waiting when ``wait``; None when not
        waiting and nothing is there."""
        st = self._st
        conn = st.conn
        assert conn is not None  # _enter saw it open; a close from another thread waits for _leave
        try:
            if wait:
                data = conn.read_wait(size, self._timeout)
                if data is None:
                    st.timed_out = True
                    raise _e.error(_e.TIMEOUT, f"read on {st.address} timed out after {self._timeout:g} s", 110)
            else:
                got = conn.read(size)
                if type(got) is not bytes:
                    return None
                data = got
        except _e.StreamSocketError as exc:
            raise self._closed_under_us(exc) from None
        st.timed_out = False
        if not data and self._close_pending:
            raise _e.error(_e.CLOSED, "stream closed by another thread")
        return data

    def _would_block(self, call: str) -> _e.WouldBlockError:
        return _e.WouldBlockError(11, f"{call} on {self._st.address}: no data yet (the stream is non-blocking; "
                                      f"{call}_nowait returns None instead)", code="SS_WANT_READ")

    # -- reading ------------------------------------------------------------------

    def read(self, size: int = CHUNK) -> bytes:
        """Up to ``size`` bytes, ``b""`` at end of stream; ``size=-1`` reads to
        the end of the stream. Waits at most the stream timeout. A
        non-blocking stream with nothing to read raises
        :class:`~streamsock.WouldBlockError` (a :class:`BlockingIOError`);
        :meth:`read_nowait` returns None instead."""
        data = self._read(size, self._blocking)
        if data is None:
            raise self._would_block("read")
        return data

    def read_nowait(self, size: int = CHUNK) -> bytes | None:
        """What ``read`` gives, without waiting, in either mode: None when no
        data is there yet (``size=-1``: until the whole stream has arrived)."""
        return self._read(size, False)

    def _read(self, size: int, wait: bool) -> bytes | None:
        if not self._enter(wait):
            return None
        try:
            st = self._st
            if size < 0:
                while (out := st.all_now()) is None:
                    data = self._recv(_READ_ALL_CHUNK, wait)
                    if data is None:
                        return None
                    st.feed(data)
                return out
            while (out := st.read_now(size)) is None:
                data = self._recv(CHUNK if size < CHUNK else size if size < READ_CAP else READ_CAP, wait)
                if data is None:
                    return None
                st.feed(data)
            return out
        finally:
            self._leave()

    def readline(self, limit: int = -1) -> bytes:
        """One line, its ``b"\\n"`` included (PHP's fgets): at most ``limit``
        bytes, ``b""`` at end of stream. A non-blocking stream without a whole
        line raises :class:`~streamsock.WouldBlockError`;
        :meth:`readline_nowait` returns None instead."""
        line = self._readline(limit, self._blocking)
        if line is None:
            raise self._would_block("readline")
        return line

    def readline_nowait(self, limit: int = -1) -> bytes | None:
        """What ``readline`` gives, without waiting, in either mode: None until
        a whole line (or ``limit`` bytes, or the end) has arrived."""
        return self._readline(limit, False)

    def _readline(self, limit: int, wait: bool) -> bytes | None:
        if not self._enter(wait):
            return None
        try:
            st = self._st
            while (out := st.line_now(limit)) is None:
                data = self._recv(CHUNK, wait)
                if data is None:
                    return None
                st.feed(data)
            return out
        finally:
            self._leave()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    # -- writing ----------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Writes all of ``data`` (blocking mode) or what fits now (non-blocking);
        returns the count. A stream that fails mid-write raises and says so."""
        if not self._enter():
            return 0
        try:
            st = self._st
            conn = st.conn
            assert conn is not None  # _enter saw it open; a close from another thread waits for _leave
            try:
                if not self._blocking:
                    return max(conn.write(data), 0)
                if type(data) is not bytes:
                    data = memoryview(data).cast("B")
                total = conn.write_wait(data, self._timeout)
            except _e.StreamSocketError as exc:
                raise self._closed_under_us(exc) from None
            if total < len(data):
                st.timed_out = True
                timed_out = _e.error(_e.TIMEOUT, f"write on {st.address} timed out after {self._timeout:g} s", 110)
                assert isinstance(timed_out, _e.TimeoutError)
                timed_out.written = total
                raise timed_out
            return total
        finally:
            self._leave()

    # -- recvfrom / sendto -------------------------------------------------------------

    def recvfrom(self, size: int, flags: int = 0) -> tuple[bytes, str]:
        """PHP's stream_socket_recvfrom on a connected stream: up to ``size``
        bytes and the peer's name (``b""`` at end of stream). A non-blocking
        stream with nothing there raises :class:`~streamsock.WouldBlockError`.

        ``flags=PEEK`` leaves the bytes to be read again: what is buffered,
        else what one read brings (plaintext on TLS, where PHP hands back
        ciphertext). ``flags=OOB`` takes TCP's pending urgent byte (wait for
        it with ``select`` on the except list; a TLS stream refuses, since
        the byte would bypass TLS). Reads without flags are ``read``'s."""
        if type(size) is not int or size < 1:
            raise ValueError(f"size must be an int greater than 0, not {size!r}")
        check_recv_flags(flags)
        if not self._enter():
            raise self._would_block("recvfrom")
        try:
            st = self._st
            if flags & OOB:
                data = self._recv_oob(size)
            else:
                now = st.peek_now if flags & PEEK else st.read_now
                while (data := now(size)) is None:
                    more = self._recv(CHUNK if size < CHUNK else size if size < READ_CAP else READ_CAP, self._blocking)
                    if more is None:
                        break
                    st.feed(more)
            if data is None:
                raise self._would_block("recvfrom")
            return data, st.live().name(True)
        finally:
            self._leave()

    def _recv_oob(self, size: int) -> bytes | None:
        conn = self._st.live()
        deadline = deadline_after(self._timeout if self._blocking else 0)
        while not isinstance(data := conn.recv_oob(size), bytes):
            if not self._blocking:
                return None
            remaining = time_left(deadline)  # urgent data wakes POLLPRI, not POLLIN
            poller = _select.poll()
            poller.register(conn.fileno(), _select.POLLPRI)
            wait_ms = -1 if remaining is None else min(math.ceil(remaining * 1000), 0x7FFFFFFF)
            if remaining == 0 or not poller.poll(wait_ms):
                self._st.timed_out = True
                raise _e.error(_e.TIMEOUT, f"recvfrom on {self._st.address} timed out after {self._timeout:g} s", 110)
        return data

    def sendto(self, data: bytes | bytearray | memoryview, flags: int = 0) -> int:
        """PHP's stream_socket_sendto on a connected stream (to its peer; a
        connected stream takes no address). ``flags=OOB`` sends ``data`` as
        TCP urgent data (its last byte is the urgent one; not on TLS) and
        returns what the socket took; without flags it is ``write``."""
        if flags not in (0, OOB):
            raise ValueError(f"flags must be 0 or OOB, not {flags!r}")
        if not flags:
            return self.write(data)
        if not self._enter():
            return 0
        try:
            conn = self._st.live()
            deadline = deadline_after(self._timeout if self._blocking else 0)
            while (n := conn.send_oob(data)) < 0:
                if not self._blocking:
                    return 0
                if not conn.wait(-n, time_left(deadline)):
                    self._st.timed_out = True
                    raise _e.error(_e.TIMEOUT, f"sendto on {self._st.address} timed out after {self._timeout:g} s", 110)
            return n
        finally:
            self._leave()

    # -- state ------------------------------------------------------------------------

    def set_blocking(self, blocking: bool) -> None:
        """PHP's stream_set_blocking."""
        self._blocking = bool(blocking)

    def set_timeout(self, seconds: float | None) -> None:
        """PHP's stream_set_timeout: read/write timeout; None, a negative value or infinity: forever."""
        self._timeout = limit_of(seconds, None)

    @property
    def blocking(self) -> bool:
        return self._blocking

    @property
    def timeout(self) -> float | None:
        return self._timeout

    @property
    def meta(self) -> StreamMeta:
        """PHP's stream_get_meta_data."""
        return self._st.meta(self._blocking)

    # -- TLS ---------------------------------------------------------------------------

    def enable_crypto(self, enable: bool, method: int | None = None, session_stream: "Stream | None" = None) -> bool:
        """PHP's stream_socket_enable_crypto: STARTTLS (``True``) or back to plaintext (``False``).

        ``method`` is a CRYPTO_METHOD_* constant (its bit 0 says client or
        server; default: the stream's role with TLS 1.2+ or the context's
        crypto_method). Plaintext already buffered when TLS starts is refused
        (STARTTLS injection). In non-blocking mode, returns False while the
        handshake needs more I/O: call again until it returns True.
        """
        pending = not self._st.ready  # a call before this one started the handshake
        if not self._enter():
            return False
        try:
            if pending:
                return True  # _enter just finished it
            self._st.begin_crypto_change(enable, method, session_stream._st if session_stream is not None else None)
            return self._finish_handshake(self._blocking)
        finally:
            self._leave()

    # -- closing -----------------------------------------------------------------------

    def shutdown(self, how: int = SHUT_RDWR) -> None:
        """PHP's stream_socket_shutdown: SHUT_RD, SHUT_WR or SHUT_RDWR.

        On a TLS stream, SHUT_WR and SHUT_RDWR send close_notify before the
        socket's FIN, so the peer reads a clean end of stream rather than a
        truncation; after SHUT_WR this side still reads until the peer's end.
        When the socket's send buffer has no room for the alert, this waits
        for it, at most the stream timeout."""
        check_shutdown_how(how)
        if not self._enter():
            return
        try:
            conn = self._st.live()
            deadline = deadline_after(self._timeout)
            while not conn.shutdown(how):
                if not conn.wait(WANT_WRITE, time_left(deadline)):
                    raise _e.error(_e.TIMEOUT, f"shutdown of {self._st.address} timed out after "
                                   f"{self._timeout:g} s (no room for the TLS close_notify)", 110)
        finally:
            self._leave()

    def close(self) -> None:
        """Closes the stream (sending TLS close_notify when TLS is on); idempotent.

        From another thread while a call is inside the stream, the socket is
        shut down at once (waking that call, which then fails) and closed
        when that call returns."""
        st = self._st
        if not self._lock.acquire(blocking=False):
            conn = st.conn
            self._close_pending = True
            if conn is not None:
                conn.interrupt()
            return
        try:
            conn, st.conn = st.conn, None
            self._close_pending = False
            if conn is not None:
                conn.close()
        finally:
            self._lock.release()
        if self._persistent_key is not None:
            st.backend.persistent.forget(self)

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Stream {self._st.address} {self._st.describe()}>"


class Server:
    """A server socket (PHP's stream_socket_server): ``accept`` for stream
    transports, ``recvfrom``/``sendto`` for udp and udg.

    Accepting and handshaking are separate steps: the backend's acceptor runs
    every client's TLS handshake at once, each within ``handshake_timeout``
    seconds, so a client that stalls holds nobody else up. Threads may call
    ``accept`` on one Server at once (one drives the acceptor, the others
    take what it hands over); ``close()`` from another thread ends a waiting
    ``accept`` with ClosedError."""

    __slots__ = ("_conn", "_backend", "address", "context", "handshake_timeout", "_acceptor", "_ready", "_cond",
                 "_driving", "_listener_to_close", "__weakref__")

    def __init__(self, conn: Connection, backend: Backend, address: Address, context: Context,
                 handshake_timeout: float | None = None) -> None:
        self._conn: Connection | None = conn
        self._backend = backend
        self.address = address
        self.context = context
        #: Seconds a client has from its connect to the end of its TLS handshake (None: no limit).
        self.handshake_timeout = limit_of(handshake_timeout, default_socket_timeout, "handshake_timeout")
        self._acceptor: Acceptor | None = None  # made on the first accept
        self._ready: collections.deque[Connection] = collections.deque()  # established, not yet accepted
        self._cond = threading.Condition()
        self._driving = False  # a thread is inside the acceptor
        self._listener_to_close: Connection | None = None  # close() from another thread: the driving thread closes it

    def _live(self) -> Connection:
        if self._conn is None:
            raise _e.error(_e.CLOSED)
        return self._conn

    @property
    def handshake_failures(self) -> int:
        """Clients whose handshake failed or timed out so far."""
        acceptor = self._acceptor
        return acceptor.counts()[0] if acceptor is not None else 0

    def accept(self, timeout: float | None = None) -> tuple[Stream, str]:
        """Waits up to ``timeout`` (default 60 s; negative: forever) for a
        connection, established (TLS handshake done) on ssl/tls servers.
        Returns the stream and the peer's name. A client accepted during this
        call whose handshake fails, while no other client is ready, raises its
        error (PHP's accept returns false for it); the failures of clients
        accepted earlier are only counted in ``handshake_failures``."""
        if self.address.transport.datagram:
            raise _e.error(_e.STATE, f"{self.address.transport.value} servers use recvfrom, not accept")
        seconds = timeout_value(timeout)
        deadline = deadline_after(seconds)
        began = False
        with self._cond:
            while True:
                listener = self._live()
                if self._ready:
                    conn = self._ready.popleft()
                    break
                remaining = time_left(deadline)
                if remaining == 0:
                    raise _e.error(_e.TIMEOUT, f"accept on {self.address} timed out", 110)
                if self._driving:  # another thread drives the acceptor: take what it hands over
                    self._cond.wait(remaining)
                    continue
                self._drive(listener, remaining, not began)
                began = True
        return self._stream(conn)

    def _drive(self, listener: Connection, remaining: float | None, begin: bool) -> None:
        """One run of the acceptor, the lock released meanwhile (called with it
        held). ``begin``: this accept call's first run, whose clients' failed
        handshakes it reports (earlier clients' failures are only counted)."""
        acceptor = self._acceptor
        if acceptor is None:
            acceptor = self._acceptor = self._backend.acceptor(listener, self.handshake_timeout)
        if begin:
            acceptor.begin()
        self._driving = True
        self._cond.release()
        try:
            conns = acceptor.run(remaining)
            failure = acceptor.epoch_failure()
        finally:
            self._cond.acquire()
            self._driving = False
            self._cond.notify_all()
        if self._conn is None:  # closed meanwhile: this thread closes up
            for conn in conns:
                conn.close()
            self._finish_close()
            raise _e.error(_e.CLOSED, "server closed by another thread")
        self._ready.extend(conns)
        if not conns and failure is not None:
            code, sys_errno, message = failure
            raise _e.from_native(code, sys_errno, message, context="TLS handshake with the client failed")

    def _stream(self, conn: Connection) -> tuple[Stream, str]:
        st = StreamState(conn, self._backend, self.address, self.context, server_side=True)
        st.pending_context = "TLS handshake with the client failed"
        stream = Stream(st)
        try:
            st.after_handshake()  # capture_peer_cert, peer_fingerprint of a client certificate
            return stream, conn.name(True)
        except BaseException:
            stream.close()
            raise

    def recvfrom(self, size: int = 65536, timeout: float | None = None, flags: int = 0) -> tuple[bytes, str]:
        """One datagram and its sender ("127.0.0.1:5353", "[::1]:53", or a udg path).
        A ``size`` below 1 is a ValueError, as in PHP (it would drop the datagram).
        ``flags=PEEK`` leaves the datagram to be received again (datagrams have
        no out-of-band data: ``OOB`` is a ValueError)."""
        if type(size) is not int or size < 1:
            raise ValueError(f"size must be an int greater than 0, not {size!r}")
        if flags not in (0, PEEK):
            raise ValueError(f"flags must be 0 or PEEK for a datagram server, not {flags!r}")
        conn = self._live()
        seconds = timeout_value(timeout)
        deadline = deadline_after(seconds)
        while True:
            result = conn.recvfrom(size, bool(flags))
            if isinstance(result, tuple):
                return result
            remaining = time_left(deadline)
            if not conn.wait(result, remaining):
                raise _e.error(_e.TIMEOUT, f"recvfrom on {self.address} timed out", 110)

    def sendto(self, data: BytesLike, peer: str) -> int:
        """Sends one datagram to ``peer`` as recvfrom reported it."""
        conn = self._live()
        if self.address.transport is Transport.UDG:
            target = Address(Transport.UDG, path=peer)
        else:
            target = self._backend.parse(f"udp://{peer}")
            if target.port is None:  # as client() says it, not the kernel's EINVAL
                raise _e.address_error(_e.ADDR_PORT_MISSING, peer, len(peer), 0)
        n = conn.sendto(data, target)
        if n < 0:
            raise _e.error(_e.SYSTEM, "sendto would block", 11)
        return n

    @property
    def local_name(self) -> str:
        return self._live().name(False)

    def fileno(self) -> int:
        return self._live().fileno()

    def _has_ready(self) -> bool:
        return bool(self._ready)

    def _readiness_fd(self) -> int:
        """What select() watches: the acceptor's fd once there is one (readable
        for a waiting client and for a handshake to step), else the listener's."""
        listener = self._live()
        acceptor = self._acceptor
        return acceptor.fileno() if acceptor is not None else listener.fileno()

    def close(self) -> None:
        """Stops listening; clients mid-handshake and not yet accepted are
        closed. From another thread, a waiting accept ends with ClosedError."""
        with self._cond:
            if self._conn is None:
                return
            self._conn, self._listener_to_close = None, self._conn
            if self._driving:  # the driving thread closes up when its run returns
                assert self._acceptor is not None  # made before the first run
                self._acceptor.wake()
                self._cond.notify_all()
                return
            self._finish_close()

    def _finish_close(self) -> None:
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.close()
        while self._ready:
            self._ready.popleft().close()
        listener, self._listener_to_close = self._listener_to_close, None
        if listener is not None:
            listener.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Server {self.address}{' closed' if self._conn is None else ''}>"


# --- the functions each backend offers -----------------------------------------------------


def address_for(backend: Backend, address: Address | str, needs_port: bool) -> Address:
    a = address if isinstance(address, Address) else backend.parse(address)
    check_transport_available(a, backend)
    if needs_port and a.port is None and not a.transport.local:
        text = str(address)
        raise _e.address_error(_e.ADDR_PORT_MISSING, text, len(text), 0)
    return a


def client(backend: Backend, address: Address | str, timeout: float | None = None, context: Context | None = None,
           flags: int = CLIENT_CONNECT) -> Stream:
    """PHP's stream_socket_client. With CLIENT_PERSISTENT, a live stream to
    the same address with the same context options is handed out again."""
    a = address_for(backend, address, needs_port=True)
    ctx = context if context is not None else DEFAULT_CONTEXT
    if flags & CLIENT_PERSISTENT:
        from ._persistent import key_of

        return backend.persistent.get(key_of(a, ctx), lambda: _connect(backend, a, ctx, timeout, flags))
    return _connect(backend, a, ctx, timeout, flags)


def _connect(backend: Backend, a: Address, ctx: Context, timeout: float | None, flags: int) -> Stream:
    tls = backend.tls_context(ctx, False, a.transport) if a.secure else None
    conn = backend.open_client(a, ctx, tls)
    st = StreamState(conn, backend, a, ctx, ready=False)
    stream = Stream(st)
    if flags & CLIENT_ASYNC_CONNECT:
        stream._timeout = timeout_value(timeout)  # bounds the connect the first I/O finishes
        conn.step(st.pending_context)
        return stream
    try:
        conn.run(timeout_value(timeout), st.pending_context)
        st.after_handshake()
    except BaseException as exc:
        st.note_verify_failure(exc)  # before the close frees what the peer sent
        stream.close()
        raise
    return stream


def fsockopen(backend: Backend, host: str, port: int | None = None, timeout: float | None = None,
              context: Context | None = None, flags: int = CLIENT_CONNECT) -> Stream:
    """PHP's fsockopen: host and port apart (an IPv6 literal is bracketed for
    you). ``timeout``: None (the default), at least 0, or -1 for no limit;
    other negative values are a ValueError (PHP waits forever or fails with
    EINVAL, as the platform's poll takes them)."""
    if isinstance(timeout, (int, float)) and timeout < 0 and timeout != -1:
        raise ValueError(f"timeout must be at least 0, -1 (no limit) or None, not {timeout!r}")
    return client(backend, backend.join(host, port), timeout=timeout, context=context, flags=flags)


def server(backend: Backend, address: Address | str, flags: int = SERVER_BIND | SERVER_LISTEN,
           context: Context | None = None, handshake_timeout: float | None = None) -> Server:
    """PHP's stream_socket_server. udp and udg servers are bound, never listening."""
    a = address_for(backend, address, needs_port=True)
    if not flags & SERVER_BIND:
        raise ValueError("stream_socket_server needs SERVER_BIND")
    ctx = context if context is not None else DEFAULT_CONTEXT
    tls = backend.tls_context(ctx, True, a.transport) if a.secure else None
    conn = backend.open_server(a, ctx, tls)
    return Server(conn, backend, a, ctx, handshake_timeout)


def check_recv_flags(flags: object) -> None:
    """recvfrom's flags: 0, PEEK or OOB (PHP's STREAM_PEEK, STREAM_OOB)."""
    if flags not in (0, OOB, PEEK):
        raise ValueError(f"flags must be 0, PEEK or OOB, not {flags!r}")


def _pair_address(socktype: int) -> Address:
    """The address a socket_pair() end reports: unix, or udg for datagrams, with no path."""
    from .address import unnamed

    return unnamed(Transport.UDG if socktype == _socket.SOCK_DGRAM else Transport.UNIX)


def pair_states(backend: Backend, domain: int, type: int, protocol: int) -> tuple[StreamState, StreamState]:
    """PHP's stream_socket_pair for both drivers: the two ends' stream states."""
    for name, value in (("domain", domain), ("type", type), ("protocol", protocol)):
        if _builtin_type(value) is not int:
            raise TypeError(f"{name} must be an int, not {_builtin_type(value).__name__}")
    try:
        first, second = _socket.socketpair(domain, type, protocol)
    except OSError as exc:
        raise _e.error(_e.SYSTEM, f"Failed to create sockets: [{exc.errno}]: {exc.strerror}", exc.errno or 0) \
            from None
    conns: list[Connection] = []
    try:
        address = _pair_address(first.getsockopt(_socket.SOL_SOCKET, _socket.SO_TYPE))
        for sock in (first, second):
            conns.append(backend.adopt(sock.detach(), address))
    except BaseException:
        for sock in (first, second):
            sock.close()  # a no-op once detached
        for conn in conns:
            conn.close()
        raise
    states = []
    for conn in conns:
        st = StreamState(conn, backend, address, DEFAULT_CONTEXT, server_side=True)
        st.generic = True
        states.append(st)
    return states[0], states[1]


def socket_pair(backend: Backend, domain: int = PF_UNIX, type: int = SOCK_STREAM,
                protocol: int = IPPROTO_IP) -> tuple[Stream, Stream]:
    """PHP's stream_socket_pair: two connected Streams, each the other's peer."""
    first, second = pair_states(backend, domain, type, protocol)
    return Stream(first), Stream(second)


_builtin_type = type


class Selectable(Protocol):
    """What ``select`` watches: a Stream, a Server, or any object with a file descriptor."""

    def fileno(self) -> int: ...


R = TypeVar("R", bound=Selectable)
W = TypeVar("W", bound=Selectable)
X = TypeVar("X", bound=Selectable)


def select(read: Iterable[R], write: Iterable[W], except_: Iterable[X],
           timeout: float | None = None) -> tuple[list[R], list[W], list[X]]:
    """PHP's stream_select over Streams and Servers: the ready ones of each
    list. Data already buffered (ours or TLS's) counts as readable, as does a
    Server with a connection established and not yet accepted, or one whose
    acceptor can make progress (a client waiting, a handshake to step).
    ``timeout`` None (or infinity) waits without limit; a negative one is a
    ValueError, as in PHP."""
    if isinstance(timeout, (int, float)) and timeout < 0:
        raise ValueError(f"timeout must be at least 0, or None for no limit, not {timeout!r}")
    reads, writes, excepts = list(read), list(write), list(except_)
    ready_read = [s for s in reads if (s.buffered() if isinstance(s, Stream) else
                                       isinstance(s, Server) and s._has_ready())]
    poller = _select.poll()
    by_fd: dict[int, list[tuple[int, Selectable]]] = {}
    watched: tuple[tuple[list[R], int], tuple[list[W], int], tuple[list[X], int]] = (
        (reads, _select.POLLIN), (writes, _select.POLLOUT), (excepts, _select.POLLPRI))
    for items, event in watched:
        for item in items:
            fd = item._readiness_fd() if isinstance(item, Server) and event == _select.POLLIN else item.fileno()
            by_fd.setdefault(fd, [])
            poller.register(fd, event | sum(e for e, _ in by_fd[fd]))
            by_fd[fd].append((event, item))
    limit = limit_of(timeout, None)
    wait_ms = 0 if ready_read else (-1 if limit is None else min(math.ceil(limit * 1000), 0x7FFFFFFF))
    events = dict(poller.poll(wait_ms))
    result: tuple[list[Selectable], list[Selectable], list[Selectable]] = ([], [], [])
    for fd, entries in by_fd.items():
        happened = events.get(fd, 0)
        for event, watcher in entries:
            hit = happened & event or (event == _select.POLLIN and happened & (_select.POLLHUP | _select.POLLERR))
            index = {_select.POLLIN: 0, _select.POLLOUT: 1, _select.POLLPRI: 2}[event]
            if hit or (index == 0 and watcher in ready_read):
                if watcher not in result[index]:
                    result[index].append(watcher)
    return result  # type: ignore[return-value]  # each list holds items of the list it watched
