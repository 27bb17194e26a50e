"""asyncio integration: the same backend connections, driven by the event loop.

A backend connection (``_native.NativeConnection`` or ``_pure.PureConnection``)
is a non-blocking state machine: ``step()``, ``read()`` and ``write()`` say
WANT_READ or WANT_WRITE when they need the socket, and this module waits for
that with ``loop.add_reader`` / ``loop.add_writer`` instead of blocking
(``conn.run`` and ``conn.wait`` are never called). The stream state itself
(read buffer, metadata, the post-handshake checks) is an ordinary
:class:`~streamsock.Stream` used only as a holder, so both APIs report the
same things and raise the same exceptions.

>>> async def main():
...     async with await streamsock.aio.client("tls://example.com:443", timeout=5) as s:
...         await s.write(b"GET / HTTP/1.0\\r\\nHost: example.com\\r\\n\\r\\n")
...         print(await s.readline())

Host names are resolved with ``loop.getaddrinfo`` (the core's resolver would
block the loop); the name stays the TLS peer name (verification and SNI).
Cancelling a connect or a TLS handshake closes the connection; cancelling a
read leaves the stream usable (nothing read is lost); cancelling a write
closes the stream (how much of the data went out is unknown).
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from typing import Any, AsyncIterator, Awaitable, Callable

from . import _backend
from . import errors as _e
from . import stream as _stream
from .address import Address, Transport, ip_literal
from .context import DEFAULT_CONTEXT, Context

__all__ = ["AsyncStream", "AsyncServer", "client", "server"]

DONE, WANT_READ, WANT_WRITE = _stream.DONE, _stream.WANT_READ, _stream.WANT_WRITE
_CHUNK = _stream._CHUNK
DEFAULT_HANDSHAKE_TIMEOUT = 60.0


class _Waiter:
    """Futures waiting for one connection's socket to become readable or
    writable; one loop registration per direction, however many wait."""

    __slots__ = ("loop", "conn", "futures", "fds")

    def __init__(self, loop: asyncio.AbstractEventLoop, conn) -> None:
        self.loop = loop
        self.conn = conn
        self.futures: dict[int, set] = {WANT_READ: set(), WANT_WRITE: set()}
        self.fds: dict[int, int | None] = {WANT_READ: None, WANT_WRITE: None}

    async def wait(self, want: int) -> None:
        if want not in (WANT_READ, WANT_WRITE):
            raise _e.error(_e.STATE, f"unexpected want {want!r} from the connection")
        fd = self.conn.fileno() if self.conn is not None else -1
        if fd < 0:
            raise _e.error(_e.CLOSED)
        if self.fds[want] not in (None, fd):  # the connection moved to another socket
            self._unregister(want)
        if self.fds[want] is None:
            if want == WANT_READ:
                self.loop.add_reader(fd, self._ready, want)
            else:
                self.loop.add_writer(fd, self._ready, want)
            self.fds[want] = fd
        future = self.loop.create_future()
        waiting = self.futures[want]
        waiting.add(future)
        try:
            await future
        finally:
            waiting.discard(future)
            if not waiting:
                self._unregister(want)

    def _ready(self, want: int) -> None:
        self._unregister(want)
        for future in self.futures[want]:
            if not future.done():
                future.set_result(None)

    def _unregister(self, want: int) -> None:
        fd = self.fds[want]
        if fd is None:
            return
        self.fds[want] = None
        if want == WANT_READ:
            self.loop.remove_reader(fd)
        else:
            self.loop.remove_writer(fd)

    def close(self) -> None:
        """Before the connection closes its socket: nothing stays registered,
        and whoever waits wakes up with ClosedError."""
        for want in (WANT_READ, WANT_WRITE):
            self._unregister(want)
            for future in self.futures[want]:
                if not future.done():
                    future.set_exception(_e.error(_e.CLOSED, "stream closed while waiting"))
        self.conn = None


class AsyncStream:
    """A connected stream for asyncio (see :class:`~streamsock.Stream` for the
    semantics). One task may read while another writes; a second concurrent
    reader (or writer) gets SS_ERR_BUSY, as does any I/O during a handshake."""

    __slots__ = ("_s", "_waiter", "_reading", "_writing", "__weakref__")

    def __init__(self, conn, backend, address: Address, context: Context, *, server_side: bool = False,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._s = _stream.Stream(conn, backend, address, context, server_side=server_side)
        self._s._blocking = False  # for meta: nothing here ever blocks
        self._waiter = _Waiter(loop or asyncio.get_running_loop(), conn)
        self._reading = False
        self._writing = False

    # -- plumbing -----------------------------------------------------------

    def _live(self):
        conn = self._s._conn
        if conn is None:
            raise _e.error(_e.CLOSED)
        return conn

    def _claim(self, read: bool, write: bool):
        conn = self._live()
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

    async def _handshake(self) -> None:
        """Drives connect / TLS handshake / TLS shutdown to DONE, then runs
        the post-handshake checks (peer_fingerprint, capture_peer_cert)."""
        conn = self._live()
        context = self._s._pending_context
        while True:
            rc = conn.step(context)
            if rc == DONE:
                break
            await self._waiter.wait(rc)
        self._s._after_handshake()

    async def _recv(self, size: int) -> bytes:
        conn = self._live()
        while True:
            data = conn.read(size)
            if type(data) is bytes:
                if not data:
                    self._s._eof = True
                return data
            await self._waiter.wait(data)

    # -- reading --------------------------------------------------------------

    async def read(self, size: int = _CHUNK) -> bytes:
        """Up to ``size`` bytes as soon as any are there; ``b""`` at end of
        stream. ``size=-1`` reads to the end of the stream."""
        self._claim(True, False)
        try:
            buf = self._s._rbuf
            if size < 0:
                while True:  # kept in the buffer until the end: cancelling loses nothing
                    data = await self._recv(65536)
                    if not data:
                        out = bytes(buf)
                        buf.clear()
                        return out
                    buf += data
            if buf:
                return _stream.take(buf, size)
            if size == 0:
                return b""
            return _stream.keep_rest(buf, await self._recv(max(size, _CHUNK)), size)
        finally:
            self._release(True, False)

    async def readline(self, limit: int = -1) -> bytes:
        """One line, its ``b"\\n"`` included, at most ``limit`` bytes;
        ``b""`` at end of stream (PHP's fgets)."""
        self._claim(True, False)
        try:
            buf = self._s._rbuf
            scanned = 0
            while (end := _stream.line_end(buf, scanned, limit)) < 0:
                scanned = len(buf)
                data = await self._recv(_CHUNK)
                if not data:  # end of stream: the last line has no b"\n"
                    end = len(buf)
                    break
                buf += data
            return _stream.take(buf, end)
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
        conn = self._claim(False, True)
        try:
            view = memoryview(data).cast("B")
            total = 0
            while total < len(view):
                n = conn.write(view[total:])
                if n > 0:
                    total += n
                    continue
                await self._waiter.wait(-n if n < 0 else WANT_WRITE)
            return total
        except asyncio.CancelledError:
            self.close()
            raise
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
        s = self._s
        try:
            other = session_stream._s if isinstance(session_stream, AsyncStream) else session_stream
            s._begin_crypto_change(enable, method, other)
            s._pending_context = "Failed to enable crypto"
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
    def address(self) -> Address:
        return self._s.address

    @property
    def context(self) -> Context:
        return self._s.context

    @property
    def closed(self) -> bool:
        return self._s._conn is None

    @property
    def eof(self) -> bool:
        return self._s.eof

    def fileno(self) -> int:
        return self._s.fileno()

    def buffered(self) -> int:
        return self._s.buffered()

    @property
    def local_name(self) -> str:
        return self._s.local_name

    @property
    def peer_name(self) -> str:
        return self._s.peer_name

    @property
    def crypto(self) -> dict[str, Any] | None:
        return self._s.crypto

    @property
    def tls_info(self) -> dict[str, Any] | None:
        return self._s.tls_info

    @property
    def meta(self) -> dict[str, Any]:
        return self._s.meta

    @property
    def peer_certificate(self):
        return self._s.peer_certificate

    @property
    def peer_certificate_chain(self):
        return self._s.peer_certificate_chain

    # -- closing ----------------------------------------------------------------

    def shutdown(self, how: int = _stream.SHUT_RDWR) -> None:
        """PHP's stream_socket_shutdown (never waits)."""
        self._live().shutdown(how)

    def close(self) -> None:
        """Closes the stream (TLS close_notify is sent when it fits); idempotent.
        A task waiting on the stream wakes up with ClosedError."""
        self._waiter.close()  # unregister before the socket goes away
        self._s.close()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> "AsyncStream":
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._s._conn is None else self._s._conn.state
        return f"<AsyncStream {self._s.address} {state}>"



# --- client ---------------------------------------------------------------------------------


async def _resolve(loop, address: Address, context_words) -> list[str]:
    """The numeric hosts of ``address.host``, in getaddrinfo's order."""
    stype = socket.SOCK_DGRAM if address.transport.datagram else socket.SOCK_STREAM
    flags = socket.AI_NUMERICSERV | socket.AI_ADDRCONFIG
    host, port = address.host, address.port or 0
    try:
        try:
            infos = await loop.getaddrinfo(host, port, type=stype, flags=flags)
        except socket.gaierror as exc:
            if exc.errno not in (socket.EAI_ADDRFAMILY, socket.EAI_NONAME, socket.EAI_NODATA):
                raise
            infos = await loop.getaddrinfo(host, port, type=stype, flags=flags & ~socket.AI_ADDRCONFIG)
    except socket.gaierror as exc:
        raise _e.error(_e.RESOLVE, f"getaddrinfo for {host} failed: {exc.strerror}", context=context_words) from None
    except UnicodeError as exc:
        raise _e.error(_e.RESOLVE, f"getaddrinfo for {host} failed: {exc}", context=context_words) from None
    hosts: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        if sockaddr[0] not in hosts:
            hosts.append(sockaddr[0])
    if not hosts:
        raise _e.error(_e.RESOLVE, f"getaddrinfo for {host} failed: no addresses", context=context_words)
    return hosts


async def _connect(loop, backend, a: Address, ctx: Context) -> AsyncStream:
    words = ("Unable to connect to", a)
    impl = backend._impl
    needs_resolving = a.host is not None and ip_literal(a.host) is None
    if not needs_resolving:
        tls = ctx.tls_context(backend, False, a.transport) if a.secure else None
        stream = AsyncStream(impl.open_client(a, ctx, tls), backend, a, ctx, loop=loop)
        stream._s._pending_context = words
        try:
            await stream._handshake()
        except BaseException:
            stream.close()
            raise
        return stream

    # A host name: resolve without blocking the loop, connect to each address
    # in turn, then (ssl/tls) start TLS on the connection with the name as the
    # peer name, exactly what the backend does with the name itself.
    tls = ctx.tls_context(backend, False, a.transport) if a.secure else None
    plain = Transport.UDP if a.transport.datagram else Transport.TCP
    last: BaseException | None = None
    for host in await _resolve(loop, a, words):
        numeric = Address(plain, host, a.port)
        stream = AsyncStream(impl.open_client(numeric, ctx, None), backend, a, ctx, loop=loop)
        stream._s._pending_context = words
        try:
            try:
                await stream._handshake()
            except _e.ConnectError as exc:
                last = exc
                stream.close()
                continue
            if tls is not None:
                stream._live().start_tls(tls, ctx.peer_name(a), ctx.verify_peer_name, ctx.sni_enabled)
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
    a = _stream._address_for(backend, address, needs_port=True)
    ctx = context if context is not None else DEFAULT_CONTEXT
    seconds = _stream._timeout_value(timeout)
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


# --- server ---------------------------------------------------------------------------------

Handler = Callable[[AsyncStream], Awaitable[Any]]


class AsyncServer:
    """A listening socket whose connections each run ``handler(stream)`` in a
    task (after the TLS handshake on ssl/tls servers); the stream is closed
    when the handler returns. Handshakes that fail are counted in
    ``handshake_failures`` (the last error in ``last_handshake_error``)."""

    def __init__(self, conn, backend, address: Address, context: Context, handler: Handler,
                 handshake_timeout: float | None, loop: asyncio.AbstractEventLoop) -> None:
        self._conn = conn
        self._backend = backend
        self.address = address
        self.context = context
        self._handler = handler
        self._handshake_timeout = handshake_timeout
        self._loop = loop
        self._tasks: set[asyncio.Task] = set()
        self._listening_fd = conn.fileno()
        self.handshake_failures = 0
        self.last_handshake_error: BaseException | None = None
        loop.add_reader(self._listening_fd, self._on_readable)

    def _on_readable(self) -> None:
        impl = self._backend._impl
        for _ in range(64):
            if self._conn is None:
                return
            try:
                conn = impl.accept(self._conn)
            except _e.StreamSocketError as exc:  # EMFILE and friends: report, keep serving
                self._loop.call_exception_handler(
                    {"message": f"accept on {self.address} failed", "exception": exc, "server": self})
                return
            if conn is None:
                return
            task = self._loop.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn) -> None:
        stream = AsyncStream(conn, self._backend, self.address, self.context, server_side=True, loop=self._loop)
        stream._s._pending_context = "TLS handshake with the client failed"
        try:
            if conn.state != "established":
                try:
                    if self._handshake_timeout is None:
                        await stream._handshake()
                    else:
                        async with asyncio.timeout(self._handshake_timeout):
                            await stream._handshake()
                except (_e.StreamSocketError, TimeoutError) as exc:
                    self.handshake_failures += 1
                    self.last_handshake_error = exc
                    return
            try:
                result = self._handler(stream)
                if inspect.isawaitable(result):
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
        """Stops listening (connections already accepted go on); idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._loop.remove_reader(self._listening_fd)
            conn.close()

    def close_clients(self) -> None:
        """Cancels every running handler (their streams get closed)."""
        for task in list(self._tasks):
            task.cancel()

    async def wait_closed(self) -> None:
        """Waits until the server is closed and every handler has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def __aenter__(self) -> "AsyncServer":
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.close()
        self.close_clients()
        await self.wait_closed()

    def __repr__(self) -> str:
        return f"<AsyncServer {self.address}{' closed' if self._conn is None else ''}>"


async def server(address: Address | str, handler: Handler, context: Context | None = None, *,
                 backend: _backend.Backend | None = None,
                 handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT) -> AsyncServer:
    """stream_socket_server for asyncio: listens on ``address`` and runs
    ``await handler(stream)`` for each connection. ssl/tls servers complete
    the handshake first, within ``handshake_timeout`` seconds (None: no limit)."""
    backend = backend if backend is not None else _backend.select()
    a = _stream._address_for(backend, address, needs_port=True)
    if a.transport.datagram:
        raise _e.error(_e.STATE, f"{a.transport.value} servers have no connections to serve")
    ctx = context if context is not None else DEFAULT_CONTEXT
    tls = ctx.tls_context(backend, True, a.transport) if a.secure else None
    loop = asyncio.get_running_loop()
    open_server = backend._impl.open_server
    if a.host is not None and ip_literal(a.host) is None:
        # binding to a name resolves it (blocking): done off the loop
        future = loop.run_in_executor(None, open_server, a, ctx, tls)
        try:
            conn = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(lambda f: f.cancelled() or f.exception() or f.result().close())
            raise
    else:
        conn = open_server(a, ctx, tls)
    try:
        return AsyncServer(conn, backend, a, ctx, handler, handshake_timeout, loop)
    except BaseException:
        conn.close()
        raise
