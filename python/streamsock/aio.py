"""asyncio integration: the same backend connections, driven by the event loop.

A backend connection is a non-blocking state machine: ``step()``, ``read()``
and ``write()`` say WANT_READ or WANT_WRITE when they need the socket, and
this module waits for that with ``loop.add_reader`` / ``loop.add_writer``
instead of blocking (``run``, ``wait`` and the ``*_wait`` calls are never
used). The stream's state (buffer, metadata, the post-handshake checks) is
the same sans-IO :class:`~streamsock._state.StreamState` the blocking
:class:`~streamsock.Stream` drives, so both APIs report the same things and
raise the same exceptions.

>>> async def main():
...     async with await streamsock.aio.client("tls://example.com:443", timeout=5) as s:
...         await s.write(b"GET / HTTP/1.0\\r\\nHost: example.com\\r\\n\\r\\n")
...         print(await s.readline())

The data path: a stream watches its socket for reading once, while someone
reads, and keeps the registration between reads (no add/remove per read).
When the socket becomes readable the loop's callback reads, in one call into
the backend, as much as the waiting read asked for (every whole TLS record
there, up to that size) and hands it to the read, which returns it as it is;
a TLS record that is still incomplete wakes nobody. Writes go straight to the
connection and wait only when the socket is full.

Host names are resolved with ``loop.getaddrinfo`` (the core's resolver would
block the loop); the name stays the TLS peer name (verification and SNI).
Cancelling a connect or a TLS handshake closes the connection; cancelling a
read leaves the stream usable (nothing read is lost); cancelling a write
closes the stream (how much of the data went out is unknown).
"""

from __future__ import annotations

import asyncio
import inspect
import types
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, TypeVar

from . import _backend
from . import errors as _e
from . import stream as _stream
from ._aio_transport import StreamTransport
from ._deadline import limit_of
from ._resolve import resolve
from ._state import CHUNK, READ_CAP, StateViews, StreamState, check_shutdown_how
from .address import Address, Transport, ip_literal
from .context import DEFAULT_CONTEXT, Context
from ._types import StreamMeta

if TYPE_CHECKING:
    from ._backend import Acceptor, Connection

__all__ = ["AsyncServer", "AsyncStream", "StreamTransport", "client", "create_connection", "create_server", "server",
           "socket_pair"]

DONE, WANT_READ, WANT_WRITE = _stream.DONE, _stream.WANT_READ, _stream.WANT_WRITE
DEFAULT_HANDSHAKE_TIMEOUT = 60.0
_FILL = 65536  # bytes taken from the connection when a read has no size of its own (readline, read(-1))
_COROUTINE = types.CoroutineType
P = TypeVar("P", bound=asyncio.BaseProtocol)  # create_connection's protocol, returned as it was made
_Future = asyncio.Future


class AsyncStream(StateViews):
    """A connected stream for asyncio (see :class:`~streamsock.Stream` for the
    semantics). One task may read while another writes; a second concurrent
    reader (or writer) gets SS_ERR_BUSY, as does any I/O during a handshake."""

    __slots__ = ("_st", "_loop", "_reading", "_writing", "_read_waiter", "_step_waiter", "_write_waiters",
                 "_read_fd", "_write_fd", "_may_hold_more", "_want", "_shutdown_task", "__weakref__")

    def __init__(self, state: StreamState, loop: asyncio.AbstractEventLoop) -> None:
        self._st = state
        self._loop = loop
        self._reading = False
        self._writing = False
        self._read_waiter: asyncio.Future[bytes | int] | None = None  # a read waiting for data (or WANT_WRITE)
        self._step_waiter: asyncio.Future[None] | None = None  # a handshake step waiting for readability
        self._write_waiters: list[asyncio.Future[None]] = []  # a writer, and a TLS read that must write first
        self._read_fd = -1   # the fd watched for reading, -1: none
        self._write_fd = -1
        self._may_hold_more = True  # the connection may have data without the socket becoming readable
        self._want = _FILL  # what the waiting read asked for: taken as it is, no copy of a rest
        self._shutdown_task: asyncio.Task[None] | None = None  # a TLS close_notify waiting for room

    # -- plumbing -------------------------------------------------------------------------------

    def _claim(self, read: bool, write: bool) -> Connection:
        conn = self._st.live()
        if (read and self._reading) or (write and self._writing):
            raise _e.error(_e.BUSY, "stream is in use by another task")
        if read:
            self._reading = True
        if write:
            self._writing = True
        return conn

    def _release(self, read: bool, write: bool) -> None:
        if read:
            self._reading = False
        if write:
            self._writing = False

    def _watch_read(self, conn: Connection) -> None:
        fd = conn.fileno()
        if fd != self._read_fd:
            if fd < 0:
                raise _e.error(_e.CLOSED)
            self._unwatch_read()
            self._loop.add_reader(fd, self._on_readable)
            self._read_fd = fd

    def _unwatch_read(self) -> None:
        if self._read_fd >= 0:
            self._loop.remove_reader(self._read_fd)
            self._read_fd = -1

    def _on_readable(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            conn = self._st.conn
            assert conn is not None  # close() ends the waiter before it lets the connection go
            want = self._want
            try:
                data = conn.read(want)
            except BaseException as exc:  # the reader raises it
                waiter.set_exception(exc)
                return
            if type(data) is bytes:
                self._may_hold_more = len(data) >= want
                waiter.set_result(data)  # the reader feeds it to the state (see _keep_delivered)
            elif data == WANT_WRITE:  # TLS must write before it can read on (a key update)
                waiter.set_result(WANT_WRITE)
            return  # WANT_READ: an incomplete record; the reader sleeps on
        step_waiter = self._step_waiter
        if step_waiter is not None and not step_waiter.done():
            step_waiter.set_result(None)
            return
        self._unwatch_read()  # nobody waits: stop watching until someone does

    def _keep_delivered(self, waiter: asyncio.Future[bytes | int]) -> None:
        """A read cancelled after the callback handed it data: the data stays
        in the stream's state, for the next read."""
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            data = waiter.result()
            if type(data) is bytes:
                self._st.feed(data)

    async def _readable(self, conn: Connection) -> None:
        """Waits until the socket is readable (for a handshake step)."""
        self._watch_read(conn)
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._step_waiter = waiter
        try:
            await waiter
        except BaseException:
            self._unwatch_read()  # cancelled: an idle stream keeps nothing registered
            raise
        finally:
            self._step_waiter = None

    async def _writable(self, conn: Connection) -> None:
        fd = conn.fileno()
        if fd < 0:
            raise _e.error(_e.CLOSED)
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._write_waiters.append(waiter)
        if self._write_fd != fd:
            self._loop.add_writer(fd, self._on_writable)
            self._write_fd = fd
        try:
            await waiter
        finally:
            self._write_waiters.remove(waiter)
            if not self._write_waiters and self._write_fd >= 0:
                self._loop.remove_writer(self._write_fd)
                self._write_fd = -1

    def _on_writable(self) -> None:
        for waiter in self._write_waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self, conn: Connection, want: int) -> None:
        if want == WANT_READ:
            await self._readable(conn)
        elif want == WANT_WRITE:
            await self._writable(conn)
        else:
            raise _e.error(_e.STATE, f"unexpected want {want!r} from the connection")

    async def _handshake(self) -> None:
        """Drives connect / TLS handshake / TLS shutdown to DONE, then runs
        the post-handshake checks (peer_fingerprint, capture_peer_cert)."""
        st = self._st
        conn = st.live()
        try:
            while (rc := conn.step(st.pending_context)) != DONE:
                await self._wait(conn, rc)
        except _e.CertificateVerifyError as exc:
            st.note_verify_failure(exc)
            raise
        self._may_hold_more = True  # the handshake's last read may have taken data too
        st.after_handshake()

    async def _fill(self) -> None:
        """Gets more bytes into the stream's state (``b""``: the end)."""
        st = self._st
        conn = st.live()
        if self._may_hold_more:
            data = conn.read(_FILL)
            if type(data) is bytes:
                self._may_hold_more = len(data) >= _FILL
                st.feed(data)
                return
            self._may_hold_more = False
            if data == WANT_WRITE:
                await self._writable(conn)
                self._may_hold_more = True
                return
        self._watch_read(conn)
        self._want = _FILL
        waiter: asyncio.Future[bytes | int] = self._loop.create_future()
        self._read_waiter = waiter
        try:
            result = await waiter
        except BaseException:
            self._keep_delivered(waiter)
            self._unwatch_read()  # cancelled: an idle stream keeps nothing registered
            raise
        finally:
            self._read_waiter = None
        if type(result) is bytes:
            st.feed(result)
        else:  # WANT_WRITE
            await self._writable(conn)
            self._may_hold_more = True

    # -- reading --------------------------------------------------------------

    async def read(self, size: int = CHUNK) -> bytes:
        """Up to ``size`` bytes as soon as any are there; ``b""`` at end of
        stream. ``size=-1`` reads to the end of the stream."""
        st = self._st
        if size < 0:
            return await self._read_all()
        if self._reading:
            raise _e.error(_e.BUSY, "stream is in use by another task")
        conn = st.conn
        if conn is None:
            raise _e.error(_e.CLOSED)
        if st.head or st.rest or st.eof or not size:
            return st.read_now(size) or b""  # buffered (or the end): no waiting, never None
        # The hot path of every request: _fill's work inlined, one coroutine frame.
        want = size if size <= READ_CAP else READ_CAP
        self._reading = True
        try:
            while True:
                if self._may_hold_more:
                    data = conn.read(want)
                    if type(data) is not bytes:
                        self._may_hold_more = False
                        if data == WANT_WRITE:
                            await self._writable(conn)
                            self._may_hold_more = True
                        continue
                    self._may_hold_more = len(data) >= want
                    if data and len(data) <= size:
                        return data
                    st.feed(data)
                else:
                    if self._read_fd < 0:
                        self._watch_read(conn)
                    self._want = want
                    waiter: asyncio.Future[bytes | int] = _Future(loop=self._loop)
                    self._read_waiter = waiter
                    try:
                        data = await waiter
                    except BaseException:
                        self._keep_delivered(waiter)
                        self._unwatch_read()  # cancelled: an idle stream keeps nothing registered
                        raise
                    finally:
                        self._read_waiter = None
                    if type(data) is not bytes:  # WANT_WRITE
                        await self._writable(conn)
                        self._may_hold_more = True
                        continue
                    if data and len(data) <= size:
                        return data  # the state is empty while a read waits: no copy into it
                    st.feed(data)
                if (out := st.read_now(size)) is not None:
                    return out
                conn = st.live()
        finally:
            self._reading = False

    async def _read_all(self) -> bytes:
        self._claim(True, False)
        try:
            st = self._st
            while (out := st.all_now()) is None:
                await self._fill()
            return out
        finally:
            self._release(True, False)

    async def readline(self, limit: int = -1) -> bytes:
        """One line, its ``b"\\n"`` included, at most ``limit`` bytes;
        ``b""`` at end of stream (PHP's fgets)."""
        self._claim(True, False)
        try:
            st = self._st
            while (out := st.line_now(limit)) is None:
                await self._fill()
            return out
        finally:
            self._release(True, False)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[bytes]:
        while True:
            line = await self.readline()
            if not line:
                return
            yield line

    # -- writing ----------------------------------------------------------------

    async def write(self, data: bytes | bytearray | memoryview) -> int:
        """Writes all of ``data``; returns its length. Cancelled midway, the
        stream is closed (the peer got an unknown part of the data)."""
        if self._writing:
            raise _e.error(_e.BUSY, "stream is in use by another task")
        conn = self._st.conn
        if conn is None:
            raise _e.error(_e.CLOSED)
        self._writing = True
        try:
            if type(data) is not bytes:
                data = memoryview(data).cast("B")
            total = conn.write(data)
            size = len(data)
            if total == size:
                return total  # the common case: it all fitted
            if total < 0:
                await self._wait(conn, -total)
                total = 0
            view = memoryview(data)
            while total < size:
                n = conn.write(view[total:])
                if n > 0:
                    total += n
                else:
                    await self._wait(conn, -n if n < 0 else WANT_WRITE)
            return total
        except asyncio.CancelledError:
            self.close()
            raise
        finally:
            self._writing = False

    # -- recvfrom / sendto -------------------------------------------------------

    async def recvfrom(self, size: int, flags: int = 0) -> tuple[bytes, str]:
        """:meth:`Stream.recvfrom` for asyncio: ``PEEK`` leaves the bytes to be
        read again (plaintext on TLS), ``OOB`` takes TCP's pending urgent byte
        (none pending: StreamSocketError, errno 22; a TLS stream refuses)."""
        if type(size) is not int or size < 1:
            raise ValueError(f"size must be an int greater than 0, not {size!r}")
        _stream.check_recv_flags(flags)
        self._claim(True, False)
        try:
            st = self._st
            if flags & _stream.OOB:
                conn = st.live()
                while not isinstance(urgent := conn.recv_oob(size), bytes):
                    await self._readable(conn)  # announced: it comes with its segment
                data = urgent
            else:
                now = st.peek_now if flags & _stream.PEEK else st.read_now
                while (buffered := now(size)) is None:
                    await self._fill()
                data = buffered
            return data, st.name(True)
        finally:
            self._release(True, False)

    async def sendto(self, data: bytes | bytearray | memoryview, flags: int = 0) -> int:
        """:meth:`Stream.sendto` for asyncio: ``OOB`` sends ``data`` as TCP
        urgent data (its last byte urgent; not on TLS); without flags it is
        ``write``."""
        if flags not in (0, _stream.OOB):
            raise ValueError(f"flags must be 0 or OOB, not {flags!r}")
        if not flags:
            return await self.write(data)
        conn = self._claim(False, True)
        try:
            while (n := conn.send_oob(data)) < 0:
                await self._writable(conn)
            return n
        finally:
            self._release(False, True)

    # -- TLS ------------------------------------------------------------------

    async def enable_crypto(self, enable: bool, method: int | None = None,
                            session_stream: "AsyncStream | _stream.Stream | None" = None) -> bool:
        """STARTTLS (``True``) or back to plaintext (``False``), as
        :meth:`Stream.enable_crypto`; plaintext already buffered when TLS
        starts is refused (SS_ERR_STARTTLS_BUFFERED). Cancelled during the
        handshake, the stream is closed."""
        self._claim(True, True)
        try:
            other = session_stream._st if session_stream is not None else None
            self._st.begin_crypto_change(enable, method, other)
            try:
                await self._handshake()
            except asyncio.CancelledError:
                self.close()
                raise
            return True
        finally:
            self._release(True, True)

    # -- state ------------------------------------------------------------------

    @property
    def meta(self) -> StreamMeta:
        return self._st.meta(False)  # nothing here ever blocks

    # -- closing ----------------------------------------------------------------

    def shutdown(self, how: int = _stream.SHUT_RDWR) -> None:
        """PHP's stream_socket_shutdown (never waits). On a TLS stream SHUT_WR
        and SHUT_RDWR send close_notify first, as :meth:`Stream.shutdown`
        does; when the socket has no room for it yet, it goes out (then the
        FIN) as soon as there is."""
        check_shutdown_how(how)
        conn = self._st.live()
        if not conn.shutdown(how) and self._shutdown_task is None:
            self._shutdown_task = self._loop.create_task(self._finish_shutdown(conn, how))

    async def _finish_shutdown(self, conn: Connection, how: int) -> None:
        try:
            while not conn.shutdown(how):
                await self._writable(conn)
        except _e.StreamSocketError:
            pass  # closed meanwhile, or the peer went away: there is no one left to tell

    def close(self) -> None:
        """Closes the stream (TLS close_notify is sent when it fits); idempotent.
        A task waiting on the stream wakes up with ClosedError."""
        # Unregister before the socket goes away, then wake whoever waits.
        self._unwatch_read()
        if self._write_fd >= 0:
            self._loop.remove_writer(self._write_fd)
            self._write_fd = -1
        for waiter in (self._read_waiter, self._step_waiter, *self._write_waiters):
            if waiter is not None and not waiter.done():
                waiter.set_exception(_e.error(_e.CLOSED, "stream closed while waiting"))
        st = self._st
        conn, st.conn = st.conn, None
        if conn is not None:
            conn.close()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> "AsyncStream":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<AsyncStream {self._st.address} {self._st.describe()}>"


# --- client ---------------------------------------------------------------------------------


async def _connect(loop: asyncio.AbstractEventLoop, backend: _backend.Backend, a: Address,
                   ctx: Context) -> AsyncStream:
    words = ("Unable to connect to", a)
    tls = backend.tls_context(ctx, False, a.transport) if a.secure else None
    if a.host is None or ip_literal(a.host) is not None:
        stream = AsyncStream(StreamState(backend.open_client(a, ctx, tls), backend, a, ctx, ready=False), loop)
        try:
            await stream._handshake()
        except BaseException:
            stream.close()
            raise
        return stream

    # A host name: resolve without blocking the loop, connect to each address
    # in turn, then (ssl/tls) start TLS on the connection with the name as the
    # peer name, exactly what the backend does with the name itself.
    plain = Transport.UDP if a.transport.datagram else Transport.TCP
    last: BaseException | None = None
    for host in await resolve(loop, a, words):
        numeric = Address(plain, host, a.port)
        st = StreamState(backend.open_client(numeric, ctx, None), backend, a, ctx, ready=False)
        stream = AsyncStream(st, loop)
        try:
            try:
                await stream._handshake()
            except _e.ConnectError as exc:
                last = exc
                stream.close()
                continue
            if tls is not None:
                st.live().start_tls(tls, ctx.peer_name(a), ctx.verify_peer_name, ctx.sni_enabled)
                await stream._handshake()
        except BaseException:
            stream.close()
            raise
        return stream
    assert last is not None
    raise last


async def client(address: Address | str, timeout: float | None = None, context: Context | None = None, *,
                 backend: _backend.Backend | None = None) -> AsyncStream:
    """stream_socket_client for asyncio: resolve, connect and (ssl://, tls://)
    the TLS handshake, all within ``timeout`` seconds (None: the default
    socket timeout, 60 s; negative: no limit). Raises what the blocking
    :func:`streamsock.client` raises (TimeoutError errno 110, ConnectError, ...)."""
    backend = backend if backend is not None else _backend.select()
    a = _stream.address_for(backend, address, needs_port=True)
    ctx = context if context is not None else DEFAULT_CONTEXT
    seconds = _stream.timeout_value(timeout)
    loop = asyncio.get_running_loop()
    task = _connect(loop, backend, a, ctx)
    if seconds is None:
        return await task
    try:
        async with asyncio.timeout(seconds):
            return await task
    except TimeoutError as exc:
        if isinstance(exc, _e.StreamSocketError):
            raise
        raise _e.error(_e.TIMEOUT, f"timed out after {seconds:g} s", 110,
                       context=("Unable to connect to", a)) from None


async def socket_pair(domain: int = _stream.PF_UNIX, type: int = _stream.SOCK_STREAM,
                      protocol: int = _stream.IPPROTO_IP, *,
                      backend: _backend.Backend | None = None) -> tuple[AsyncStream, AsyncStream]:
    """PHP's stream_socket_pair for asyncio: two connected AsyncStreams (see
    :func:`streamsock.socket_pair`)."""
    backend = backend if backend is not None else _backend.select()
    loop = asyncio.get_running_loop()
    first, second = _stream.pair_states(backend, domain, type, protocol)
    return AsyncStream(first, loop), AsyncStream(second, loop)


# --- server ---------------------------------------------------------------------------------

Handler = Callable[[AsyncStream], Awaitable[Any]]


class AsyncServer:
    """A listening socket whose connections each run ``handler(stream)`` in a
    task, or get a ``protocol_factory()`` protocol on a transport (see
    :func:`create_server`), after the TLS handshake on ssl/tls servers; the
    stream is closed when the handler returns. The backend's acceptor runs
    every handshake at once on a readiness set of its own (one loop callback
    for any number of sockets), each within ``handshake_timeout``, so a
    client that stalls holds nobody else; those that fail are counted in
    ``handshake_failures`` (the last error in ``last_handshake_error``).
    Running out of file descriptors makes the acceptor rest a moment instead
    of spinning; the loop's exception handler hears of it once a second at
    most."""

    def __init__(self, conn: Connection, backend: _backend.Backend, address: Address, context: Context,
                 handler: Handler | None, handshake_timeout: float | None, loop: asyncio.AbstractEventLoop,
                 protocol_factory: Callable[[], asyncio.BaseProtocol] | None = None) -> None:
        self._conn: Connection | None = conn
        self._backend = backend
        self.address = address
        self.context = context
        self._handler = handler
        self._protocol_factory = protocol_factory
        self._loop = loop
        self._tasks: set[asyncio.Task[None]] = set()
        self._transports: set[StreamTransport] = set()
        self._idle: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._counts = (0, 0)  # the acceptor's (failed handshakes, accept errors) last seen
        self._failed_checks = 0  # handshakes done whose checks (peer_fingerprint) failed here
        self._accept_error_reported_at = -1.0
        self.handshake_failures = 0
        self.last_handshake_error: BaseException | None = None
        self._acceptor: Acceptor | None = backend.acceptor(conn, limit_of(handshake_timeout, None,
                                                                          "handshake_timeout"))
        self._acceptor_fd = self._acceptor.fileno()
        loop.add_reader(self._acceptor_fd, self._on_ready)

    def _on_timer(self) -> None:
        self._timer = None
        self._on_ready()

    def _on_ready(self) -> None:
        acceptor = self._acceptor
        if acceptor is None:
            return
        try:
            conns = acceptor.run(0)
        except _e.StreamSocketError as exc:
            self._loop.call_exception_handler(
                {"message": f"accepting on {self.address} failed", "exception": exc, "server": self})
            return
        for conn in conns:
            st = StreamState(conn, self._backend, self.address, self.context, server_side=True)
            st.pending_context = "TLS handshake with the client failed"
            try:
                st.after_handshake()  # capture_peer_cert, peer_fingerprint of a client certificate
            except _e.StreamSocketError as exc:
                self._failed_checks += 1
                self.handshake_failures += 1
                self.last_handshake_error = exc
                continue
            self._established(st)
        counts = acceptor.counts()
        if counts != self._counts:  # a failure or an accept error: say so, and see when to run again
            self._note_stats(acceptor, counts[1] > self._counts[1])
            self._counts = counts
        elif self._timer is not None:
            return  # handshake deadlines only move later: the timer armed still comes first
        due = acceptor.next_timer()
        if due is not None:  # a handshake deadline or the end of a pause: a run then, events or not
            at = self._loop.time() + due
            if self._timer is None or at < self._timer.when():
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = self._loop.call_at(at, self._on_timer)

    def _note_stats(self, acceptor: Acceptor, accept_failed: bool) -> None:
        failures, _, last_handshake, last_accept = acceptor.stats()
        if last_handshake is not None:
            code, sys_errno, message = last_handshake
            self.last_handshake_error = _e.from_native(code, sys_errno, message,
                                                       context="TLS handshake with the client failed")
        self.handshake_failures = failures + self._failed_checks
        if accept_failed and last_accept is not None:
            now = self._loop.time()
            if now - self._accept_error_reported_at >= 1.0:  # once a second at most
                self._accept_error_reported_at = now
                code, sys_errno, message = last_accept
                self._loop.call_exception_handler(
                    {"message": f"accept on {self.address} failed", "server": self,
                     "exception": _e.from_native(code, sys_errno, message)})

    def _established(self, st: StreamState) -> None:
        if self._protocol_factory is not None:
            try:
                protocol = self._protocol_factory()
            except BaseException as exc:
                st.live().close()
                st.conn = None
                self._loop.call_exception_handler(
                    {"message": f"protocol factory of {self.address} failed", "exception": exc, "server": self})
                return
            transport = StreamTransport(self._loop, st, protocol, on_lost=self._transport_lost)
            self._transports.add(transport)
            transport.start()
            return
        stream = AsyncStream(st, self._loop)
        task = self._loop.create_task(self._serve(stream))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._check_idle()

    def _transport_lost(self, transport: StreamTransport) -> None:
        self._transports.discard(transport)
        self._check_idle()

    def _check_idle(self) -> None:
        if self._idle is not None and not (self._tasks or self._transports):
            if not self._idle.done():
                self._idle.set_result(None)

    async def _serve(self, stream: AsyncStream) -> None:
        handler = self._handler
        assert handler is not None  # a server with a protocol factory serves no streams
        try:
            result = handler(stream)
            if type(result) is _COROUTINE or inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._loop.call_exception_handler(
                {"message": f"handler of {self.address} failed", "exception": exc, "server": self})
        finally:
            stream.close()

    @property
    def local_name(self) -> str:
        if self._conn is None:
            raise _e.error(_e.CLOSED)
        return self._conn.name(False)

    def fileno(self) -> int:
        if self._conn is None:
            raise _e.error(_e.CLOSED)
        return self._conn.fileno()

    @property
    def serving(self) -> bool:
        return self._conn is not None

    def close(self) -> None:
        """Stops listening and drops handshakes in progress (connections
        already established go on); idempotent."""
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            self._loop.remove_reader(self._acceptor_fd)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            acceptor.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close_clients(self) -> None:
        """Cancels every running handler (their streams get closed) and
        closes every transport."""
        for task in list(self._tasks):
            task.cancel()
        for transport in list(self._transports):
            transport.abort()

    async def wait_closed(self) -> None:
        """Waits until the server is closed and every handler and transport has finished."""
        while self._tasks or self._transports:
            self._idle = self._loop.create_future()
            try:
                await self._idle
            finally:
                self._idle = None

    async def __aenter__(self) -> "AsyncServer":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        self.close_clients()
        await self.wait_closed()

    def __repr__(self) -> str:
        return f"<AsyncServer {self.address}{' closed' if self._conn is None else ''}>"


async def _listen(address: Address | str, context: Context | None, backend: _backend.Backend | None,
                  loop: asyncio.AbstractEventLoop) -> tuple[Connection, _backend.Backend, Address, Context]:
    """(connection, backend, address, context) of a new listening socket."""
    backend = backend if backend is not None else _backend.select()
    a = _stream.address_for(backend, address, needs_port=True)
    if a.transport.datagram:
        raise _e.error(_e.STATE, f"{a.transport.value} servers have no connections to serve")
    ctx = context if context is not None else DEFAULT_CONTEXT
    tls = backend.tls_context(ctx, True, a.transport) if a.secure else None
    open_server = backend.open_server
    if a.host is not None and ip_literal(a.host) is None:
        # binding to a name resolves it (blocking): done off the loop
        future = loop.run_in_executor(None, open_server, a, ctx, tls)
        try:
            conn = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(_close_when_opened)
            raise
    else:
        conn = open_server(a, ctx, tls)
    return conn, backend, a, ctx


def _close_when_opened(future: asyncio.Future[Connection]) -> None:
    """A listening socket opened after its server() call was cancelled: nobody will use it."""
    if not future.cancelled() and future.exception() is None:
        future.result().close()


async def server(address: Address | str, handler: Handler, context: Context | None = None, *,
                 backend: _backend.Backend | None = None,
                 handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT) -> AsyncServer:
    """stream_socket_server for asyncio: listens on ``address`` and runs
    ``await handler(stream)`` for each connection. ssl/tls servers complete
    the handshake first, within ``handshake_timeout`` seconds (None: no limit)."""
    loop = asyncio.get_running_loop()
    conn, backend, a, ctx = await _listen(address, context, backend, loop)
    try:
        return AsyncServer(conn, backend, a, ctx, handler, handshake_timeout, loop)
    except BaseException:
        conn.close()
        raise


async def create_server(protocol_factory: Callable[[], asyncio.BaseProtocol], address: Address | str,
                        context: Context | None = None, *, backend: _backend.Backend | None = None,
                        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT) -> AsyncServer:
    """``loop.create_server`` on a streamsock address: each connection gets
    ``protocol_factory()`` on a :class:`StreamTransport` once its TLS
    handshake is done (within ``handshake_timeout`` seconds), so asyncio
    protocols written for ``loop.create_server`` run unchanged."""
    loop = asyncio.get_running_loop()
    conn, backend, a, ctx = await _listen(address, context, backend, loop)
    try:
        return AsyncServer(conn, backend, a, ctx, None, handshake_timeout, loop, protocol_factory)
    except BaseException:
        conn.close()
        raise


async def create_connection(protocol_factory: Callable[[], P], address: Address | str,
                            timeout: float | None = None, context: Context | None = None, *,
                            backend: _backend.Backend | None = None) -> tuple[StreamTransport, P]:
    """``loop.create_connection`` on a streamsock address: connects as
    :func:`client` does (TLS verified), then returns ``(transport, protocol)``."""
    stream = await client(address, timeout, context, backend=backend)
    stream._unwatch_read()
    protocol = protocol_factory()
    transport = StreamTransport(stream._loop, stream._st, protocol)
    transport.start()
    return transport, protocol
