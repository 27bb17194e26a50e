"""Stream and Server: PHP's socket streams over either backend's connection.

A backend connection (``_native.NativeConnection`` or ``_pure.PureConnection``)
is a non-blocking state machine: ``step()`` returns WANT_READ / WANT_WRITE /
DONE, ``read()`` and ``write()`` return data or a want. Everything here is the
driver above it: buffering, timeouts, readline, STARTTLS, metadata. The same
code runs for both backends, so they behave the same by construction.
"""

from __future__ import annotations

import select as _select
import threading
import time
from typing import Any, Iterable, Iterator

from . import errors as _e
from .address import Address, Transport
from .context import DEFAULT_CONTEXT, Context, check_transport_available

DONE, WANT_READ, WANT_WRITE = 0, 1, 2

# PHP's flags for stream_socket_client / stream_socket_server / stream_socket_shutdown.
CLIENT_PERSISTENT = 1
CLIENT_ASYNC_CONNECT = 2
CLIENT_CONNECT = 4
SERVER_BIND = 4
SERVER_LISTEN = 8
SHUT_RD, SHUT_WR, SHUT_RDWR = 0, 1, 2

_CHUNK = 8192  # PHP reads sockets in 8 KiB chunks
_STREAM_TYPES = {
    Transport.UDP: "udp_socket",
    Transport.UNIX: "unix_socket",
    Transport.UDG: "udg_socket",
}

default_socket_timeout = 60.0  # PHP's ini default; None passed as a timeout means this


def take(buf: bytearray, size: int) -> bytes:
    """The first ``size`` bytes of a read buffer, removed from it."""
    data = bytes(buf[:size])
    del buf[:size]
    return data


def keep_rest(buf: bytearray, data: bytes, size: int) -> bytes:
    """``data[:size]``; the rest waits in the read buffer."""
    if len(data) <= size:
        return data
    buf += memoryview(data)[size:]
    return data[:size]


def line_end(buf: bytearray, start: int, limit: int) -> int:
    """Where the first line in ``buf`` ends (after its b"\n", or at ``limit``
    when that comes first), or -1 when more data is needed. ``start``: where
    to look for the b"\n" (what came before was searched already)."""
    end = buf.find(b"\n", start)
    if end >= 0:
        return end + 1 if limit < 0 else min(end + 1, limit)
    return limit if 0 <= limit <= len(buf) else -1


def _timeout_value(timeout: float | None) -> float | None:
    """Seconds to wait: None means the default, a negative value forever (None)."""
    if timeout is None:
        timeout = default_socket_timeout
    return None if timeout < 0 else float(timeout)


class Stream:
    """A connected socket stream (PHP's stream resource from stream_socket_client/accept).

    Reads are buffered; ``read`` returns up to ``size`` bytes, ``b""`` at end of
    stream, or ``None`` in non-blocking mode when nothing is there yet. In
    blocking mode a read or write waits at most the stream timeout (default 60 s,
    ``set_timeout``) and then raises :class:`~streamsock.TimeoutError` with
    ``meta["timed_out"]`` set; no data is lost.
    """

    __slots__ = (
        "_conn",
        "_backend",
        "address",
        "context",
        "_rbuf",
        "_timeout",
        "_blocking",
        "_timed_out",
        "_eof",
        "_lock",
        "_ready",
        "_pending_context",
        "_close_pending",
        "_server_side",
        "_peer_certificate",
        "_peer_certificate_chain",
        "__weakref__",
    )

    def __init__(self, conn, backend, address: Address, context: Context, *, server_side: bool = False,
                 ready: bool = True) -> None:
        self._conn = conn
        self._backend = backend
        self.address = address
        self.context = context
        self._rbuf = bytearray()
        self._timeout = _timeout_value(None)
        self._blocking = True
        self._timed_out = False
        self._eof = False
        self._lock = threading.Lock()
        self._ready = ready  # False while a handshake (connect or STARTTLS) owes its checks
        self._pending_context: tuple | str = ("Unable to connect to", address)
        self._close_pending = False
        self._server_side = server_side
        self._peer_certificate = None
        self._peer_certificate_chain = None

    # -- plumbing -----------------------------------------------------------

    def _enter(self):
        if not self._lock.acquire(blocking=False):
            raise _e.error(_e.BUSY)
        if self._conn is None:
            self._leave()
            raise _e.error(_e.CLOSED)
        if not self._ready:
            try:
                ready = self._finish_handshake()
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

    def _finish_handshake(self) -> bool:
        """Completes a pending async connect or non-blocking STARTTLS, then runs
        its checks (fingerprint, capture): True when done."""
        if self._blocking:
            self._conn.run(self._timeout, self._pending_context)
        elif self._conn.step(self._pending_context) != DONE:
            return False
        self._ready = True
        self._after_handshake()
        return True

    def _wait(self, want: int, deadline: float | None, what: str) -> None:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._conn.wait(want, remaining):
            self._timed_out = True
            raise _e.error(_e.TIMEOUT, f"{what} on {self.address} timed out after {self._timeout:g} s", 110)

    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    def _recv(self, size: int) -> bytes | None:
        """One read from the connection, waiting in blocking mode; None when
        non-blocking and nothing is there."""
        conn = self._conn
        deadline = -1.0
        while True:
            try:
                data = conn.read(size)
            except _e.StreamSocketError as exc:
                raise self._closed_under_us(exc) from None
            if type(data) is bytes:
                self._timed_out = False
                if not data and self._close_pending:
                    raise _e.error(_e.CLOSED, "stream closed by another thread")
                if not data:
                    self._eof = True
                return data
            if not self._blocking:
                return None
            if deadline == -1.0:
                deadline = self._deadline()
            self._wait(data, deadline, "read")

    def _after_handshake(self) -> None:
        """PHP's checks after a TLS handshake: peer_fingerprint, certificate capture."""
        if not self._conn.is_tls:
            return
        ssl = self.context._ssl
        wants_chain = ssl.get("capture_peer_cert_chain", False)
        if not ("peer_fingerprint" in ssl or ssl.get("capture_peer_cert") or wants_chain):
            return
        from .certificate import Certificate, fingerprint_matches

        ders = self._conn.peer_certs(wants_chain)
        if "peer_fingerprint" in ssl:
            if not ders or not fingerprint_matches(ders[0], ssl["peer_fingerprint"]):
                self._conn.close()
                raise _e.error(_e.TLS_FINGERPRINT, "peer_fingerprint match failure", context=self._pending_context)
        try:
            if ssl.get("capture_peer_cert") and ders:
                self._peer_certificate = Certificate(ders[0])
            if wants_chain:
                self._peer_certificate_chain = [Certificate(d) for d in ders]
        except ValueError as exc:
            self._conn.close()
            raise _e.error(_e.TLS, f"the peer's certificate could not be read: {exc}",
                           context=self._pending_context) from exc

    # -- reading ------------------------------------------------------------------

    def read(self, size: int = _CHUNK) -> bytes | None:
        """Up to ``size`` bytes; ``b""`` at end of stream; ``None`` when
        non-blocking and no data is waiting. ``size=-1`` reads to the end of
        the stream (non-blocking: ``None`` until the end has arrived)."""
        if not self._enter():
            return None
        try:
            if size < 0:
                return self._read_all()
            if self._rbuf:
                return take(self._rbuf, size)
            data = self._recv(max(size, _CHUNK))
            return data if data is None else keep_rest(self._rbuf, data, size)
        finally:
            self._leave()

    def _read_all(self) -> bytes | None:
        # Everything read stays in our buffer until the end is reached, so a
        # timeout (or non-blocking "not yet") loses nothing.
        while True:
            data = self._recv(65536)
            if data is None:
                return None
            if not data:
                out = bytes(self._rbuf)
                self._rbuf.clear()
                return out
            self._rbuf += data

    def readline(self, limit: int = -1) -> bytes | None:
        """One line, its ``b"\\n"`` included (PHP's fgets): at most ``limit``
        bytes, ``b""`` at end of stream, ``None`` when non-blocking and no
        whole line has arrived yet."""
        if not self._enter():
            return None
        try:
            buf = self._rbuf
            scanned = 0
            while (end := line_end(buf, scanned, limit)) < 0:
                scanned = len(buf)
                data = self._recv(_CHUNK)
                if data is None:
                    return None
                if not data:  # end of stream: the last line has no b"\n"
                    end = len(buf)
                    break
                buf += data
            return take(buf, end)
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
            view = memoryview(data).cast("B")
            total = 0
            deadline = -1.0
            conn = self._conn
            while total < len(view):
                try:
                    n = conn.write(view[total:])
                except _e.StreamSocketError as exc:
                    raise self._closed_under_us(exc) from None
                if n > 0:
                    total += n
                    continue
                if not self._blocking:
                    break
                if deadline == -1.0:
                    deadline = self._deadline()
                try:
                    self._wait(-n, deadline, "write")
                except _e.TimeoutError as exc:
                    exc.written = total  # type: ignore[attr-defined]
                    raise
            return total
        finally:
            self._leave()

    # -- state ------------------------------------------------------------------------

    def set_blocking(self, blocking: bool) -> None:
        """PHP's stream_set_blocking."""
        self._blocking = bool(blocking)

    def set_timeout(self, seconds: float | None) -> None:
        """PHP's stream_set_timeout: read/write timeout; None or a negative value: forever."""
        self._timeout = None if seconds is None or seconds < 0 else float(seconds)

    @property
    def blocking(self) -> bool:
        return self._blocking

    @property
    def timeout(self) -> float | None:
        return self._timeout

    @property
    def eof(self) -> bool:
        """True once the peer has closed and the buffer is drained (PHP's feof)."""
        return self._eof and not self._rbuf

    @property
    def closed(self) -> bool:
        return self._conn is None

    def fileno(self) -> int:
        if self._conn is None:
            raise _e.error(_e.CLOSED)
        return self._conn.fileno()

    def buffered(self) -> int:
        """Bytes readable without touching the socket (our buffer plus TLS's)."""
        if self._conn is None:
            return 0
        return len(self._rbuf) + self._conn.pending()

    @property
    def local_name(self) -> str:
        """Local address, PHP's stream_socket_get_name(s, false): "127.0.0.1:5000", "[::1]:5000"."""
        return self._conn.name(False) if self._conn is not None else ""

    @property
    def peer_name(self) -> str:
        """Remote address, PHP's stream_socket_get_name(s, true)."""
        return self._conn.name(True) if self._conn is not None else ""

    @property
    def crypto(self) -> dict[str, Any] | None:
        """The negotiated TLS parameters, or None on a plaintext stream."""
        if self._conn is None or not self._conn.is_tls or self._conn.state != "established":
            return None
        info = self._conn.tls_info()
        crypto = {k: info[k] for k in ("protocol", "cipher_name", "cipher_bits", "cipher_version")}
        if info["alpn_protocol"]:
            crypto["alpn_protocol"] = info["alpn_protocol"]
        return crypto

    @property
    def tls_info(self) -> dict[str, Any] | None:
        """Everything known of the TLS session (key-exchange group, SNI, reuse) or None."""
        if self._conn is None or not self._conn.is_tls:
            return None
        return self._conn.tls_info()

    @property
    def meta(self) -> dict[str, Any]:
        """PHP's stream_get_meta_data."""
        meta: dict[str, Any] = {
            "timed_out": self._timed_out,
            "blocked": self._blocking,
            "eof": self.eof,
            "stream_type": _STREAM_TYPES.get(self.address.transport, "tcp_socket/ssl"),
            "mode": "r+",
            "unread_bytes": len(self._rbuf),
            "seekable": False,
        }
        crypto = self.crypto
        if crypto is not None:
            meta["crypto"] = crypto
        return meta

    @property
    def peer_certificate(self):
        """The peer's Certificate when the context had capture_peer_cert."""
        return self._peer_certificate

    @property
    def peer_certificate_chain(self):
        """The peer's certificates, leaf first, when capture_peer_cert_chain was set."""
        return self._peer_certificate_chain

    # -- TLS ---------------------------------------------------------------------------

    def enable_crypto(self, enable: bool, method: int | None = None, session_stream: "Stream | None" = None) -> bool:
        """PHP's stream_socket_enable_crypto: STARTTLS (``True``) or back to plaintext (``False``).

        ``method`` is a CRYPTO_METHOD_* constant (its bit 0 says client or
        server; default: the stream's role with TLS 1.2+ or the context's
        crypto_method). Plaintext already buffered when TLS starts is refused
        (STARTTLS injection). In non-blocking mode, returns False while the
        handshake needs more I/O: call again until it returns True.
        """
        pending = not self._ready  # a call before this one started the handshake
        if not self._enter():
            return False
        try:
            if pending:
                return True  # _enter just finished it
            self._begin_crypto_change(enable, method, session_stream)
            return self._drive_handshake()
        finally:
            self._leave()

    def _begin_crypto_change(self, enable: bool, method: int | None, session_stream: "Stream | None") -> None:
        """enable_crypto's checks, then the change started on the connection: a
        STARTTLS handshake or a TLS shutdown, which the caller drives (blocking,
        non-blocking or asyncio)."""
        conn = self._conn
        if not enable:
            if not conn.is_tls:
                raise _e.error(_e.STATE, "cannot disable crypto: TLS is not enabled")
            conn.stop_tls()
            return
        if conn.is_tls:
            raise _e.error(_e.TLS_ACTIVE)
        if self.address.transport not in (Transport.TCP,) and not self.address.secure:
            raise _e.error(
                _e.UNSUPPORTED, f"TLS needs a tcp stream; {self.address.transport.value} streams cannot enable crypto"
            )
        if self._rbuf:
            raise _e.error(_e.STARTTLS_BUFFERED, None, 0)
        server = self._server_side if method is None else not (method & 1)
        tls = self.context.tls_context(self._backend, server, None, method)
        session = None
        if session_stream is not None:
            # A resumed session skips certificate checks: only for the same peer.
            if session_stream.context.peer_name(session_stream.address) != self.context.peer_name(self.address):
                raise ValueError("session_stream was made for another peer name")
            session = session_stream._conn
        conn.start_tls(tls, self.context.peer_name(self.address), self.context.verify_peer_name,
                       self.context.sni_enabled, session)

    def _drive_handshake(self) -> bool:
        self._pending_context = "Failed to enable crypto"
        self._ready = False  # until done, any read or write finishes it and runs the checks
        return self._finish_handshake()

    # -- closing -----------------------------------------------------------------------

    def shutdown(self, how: int = SHUT_RDWR) -> None:
        """PHP's stream_socket_shutdown: SHUT_RD, SHUT_WR or SHUT_RDWR."""
        if not self._enter():
            return
        try:
            self._conn.shutdown(how)
        finally:
            self._leave()

    def close(self) -> None:
        """Closes the stream (sending TLS close_notify when TLS is on); idempotent.

        From another thread while a call is inside the stream, the socket is
        shut down at once (waking that call, which then fails) and closed
        when that call returns."""
        if not self._lock.acquire(blocking=False):
            conn = self._conn
            self._close_pending = True
            if conn is not None:
                try:
                    conn.shutdown(SHUT_RDWR)
                except _e.StreamSocketError:
                    pass
            return
        try:
            conn, self._conn = self._conn, None
            self._close_pending = False
            if conn is not None:
                conn.close()
        finally:
            self._lock.release()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else self._conn.state
        return f"<Stream {self.address} {state}>"


class Server:
    """A server socket (PHP's stream_socket_server): ``accept`` for stream
    transports, ``recvfrom``/``sendto`` for udp and udg."""

    __slots__ = ("_conn", "_backend", "address", "context", "_tls", "__weakref__")

    def __init__(self, conn, backend, address: Address, context: Context, tls) -> None:
        self._conn = conn
        self._backend = backend
        self.address = address
        self.context = context
        self._tls = tls

    def _live(self):
        if self._conn is None:
            raise _e.error(_e.CLOSED)
        return self._conn

    def accept(self, timeout: float | None = None) -> tuple[Stream, str]:
        """Waits up to ``timeout`` (default 60 s; negative: forever) for a
        connection; for ssl/tls servers also completes the handshake in that
        time. Returns the stream and the peer's name."""
        listener = self._live()
        if self.address.transport.datagram:
            raise _e.error(_e.STATE, f"{self.address.transport.value} servers use recvfrom, not accept")
        seconds = _timeout_value(timeout)
        deadline = None if seconds is None else time.monotonic() + seconds
        impl = self._backend._impl
        while True:
            conn = impl.accept(listener)
            if conn is not None:
                break
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not listener.wait(WANT_READ, remaining):
                raise _e.error(_e.TIMEOUT, f"accept on {self.address} timed out", 110)
        stream = Stream(conn, self._backend, self.address, self.context, server_side=True)
        stream._pending_context = "TLS handshake with the client failed"
        try:
            if conn.state != "established":
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                conn.run(remaining, stream._pending_context)
                stream._after_handshake()
            return stream, conn.name(True)
        except BaseException:
            stream.close()
            raise

    def recvfrom(self, size: int = 65536, timeout: float | None = None) -> tuple[bytes, str]:
        """One datagram and its sender ("127.0.0.1:5353", "[::1]:53", or a udg path)."""
        conn = self._live()
        seconds = _timeout_value(timeout)
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            result = conn.recvfrom(size)
            if type(result) is tuple:
                return result
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not conn.wait(result, remaining):
                raise _e.error(_e.TIMEOUT, f"recvfrom on {self.address} timed out", 110)

    def sendto(self, data: bytes, peer: str) -> int:
        """Sends one datagram to ``peer`` as recvfrom reported it."""
        conn = self._live()
        if self.address.transport is Transport.UDG:
            target = Address(Transport.UDG, path=peer)
        else:
            target = self._backend.parse(f"udp://{peer}")
        n = conn.sendto(data, target)
        if n < 0:
            raise _e.error(_e.SYSTEM, "sendto would block", 11)
        return n

    @property
    def local_name(self) -> str:
        return self._live().name(False)

    def fileno(self) -> int:
        return self._live().fileno()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Server {self.address}{' closed' if self._conn is None else ''}>"


# --- the functions each backend offers -----------------------------------------------------


def _address_for(backend, address: Address | str, needs_port: bool) -> Address:
    a = address if isinstance(address, Address) else backend.parse(address)
    check_transport_available(a, backend)
    if needs_port and a.port is None and not a.transport.local:
        text = str(address)
        raise _e.address_error(_e.ADDR_PORT_MISSING, text, len(text), 0)
    return a


def client(backend, address: Address | str, timeout: float | None = None, context: Context | None = None,
           flags: int = CLIENT_CONNECT) -> Stream:
    """PHP's stream_socket_client."""
    a = _address_for(backend, address, needs_port=True)
    ctx = context if context is not None else DEFAULT_CONTEXT
    tls = ctx.tls_context(backend, False, a.transport) if a.secure else None
    conn = backend._impl.open_client(a, ctx, tls)
    stream = Stream(conn, backend, a, ctx, ready=False)
    stream._timeout = _timeout_value(timeout)
    if flags & CLIENT_ASYNC_CONNECT:
        conn.step(("Unable to connect to", a))
        return stream
    try:
        conn.run(stream._timeout, ("Unable to connect to", a))
        stream._ready = True
        stream._after_handshake()
    except BaseException:
        stream.close()
        raise
    stream._timeout = _timeout_value(None)
    return stream


def fsockopen(backend, host: str, port: int | None = None, timeout: float | None = None,
              context: Context | None = None) -> Stream:
    """PHP's fsockopen: host and port apart (an IPv6 literal is bracketed for you)."""
    return client(backend, backend.join(host, port), timeout=timeout, context=context)


def server(backend, address: Address | str, flags: int = SERVER_BIND | SERVER_LISTEN,
           context: Context | None = None) -> Server:
    """PHP's stream_socket_server. udp and udg servers are bound, never listening."""
    a = _address_for(backend, address, needs_port=True)
    if not flags & SERVER_BIND:
        raise ValueError("stream_socket_server needs SERVER_BIND")
    ctx = context if context is not None else DEFAULT_CONTEXT
    tls = ctx.tls_context(backend, True, a.transport) if a.secure else None
    conn = backend._impl.open_server(a, ctx, tls)
    return Server(conn, backend, a, ctx, tls)


def select(read: Iterable, write: Iterable, except_: Iterable, timeout: float | None = None):
    """PHP's stream_select over Streams and Servers: the ready ones of each
    list. Data already buffered (ours or TLS's) counts as readable."""
    read, write, except_ = list(read), list(write), list(except_)
    ready_read = [s for s in read if isinstance(s, Stream) and s.buffered()]
    poller = _select.poll()
    by_fd: dict[int, list] = {}
    for items, event in ((read, _select.POLLIN), (write, _select.POLLOUT), (except_, _select.POLLPRI)):
        for item in items:
            fd = item.fileno()
            by_fd.setdefault(fd, [])
            poller.register(fd, event | sum(e for e, _ in by_fd[fd]))
            by_fd[fd].append((event, item))
    wait_ms = 0 if ready_read else (-1 if timeout is None or timeout < 0 else int(timeout * 1000))
    events = dict(poller.poll(wait_ms))
    result: tuple[list, list, list] = ([], [], [])
    for fd, entries in by_fd.items():
        happened = events.get(fd, 0)
        for event, item in entries:
            hit = happened & event or (event == _select.POLLIN and happened & (_select.POLLHUP | _select.POLLERR))
            index = {_select.POLLIN: 0, _select.POLLOUT: 1, _select.POLLPRI: 2}[event]
            if hit or (index == 0 and item in ready_read):
                if item not in result[index]:
                    result[index].append(item)
    return result
