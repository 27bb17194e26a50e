"""asyncio's Protocol/Transport face over a streamsock connection.

:class:`StreamTransport` is an ``asyncio.Transport``: existing asyncio
protocols (h11-based servers, websockets' protocol, anything written for
``loop.create_server``) run on it unchanged. Data goes from the loop's
readiness callback straight into ``protocol.data_received``: one call into
the backend per readable event, no task, no future. ``write`` goes straight
to the connection; what the socket does not take waits in a buffer (with
``pause_writing`` above the high-water mark) and goes out when it is
writable.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from . import errors as _e
from ._state import StreamState
from .address import split_host_port

DONE, WANT_READ, WANT_WRITE = 0, 1, 2
READ_MAX = 262144      # bytes taken from the connection per readiness event at most
_READS_PER_EVENT = 16  # reads in one callback while the connection may hold more
_HIGH_WATER = 65536
_LOW_WATER = 16384


def _host_port(name: str) -> tuple[str, int] | str:
    """"127.0.0.1:80" / "[::1]:80" as asyncio reports peers, a unix path as it is."""
    return split_host_port(name) or name


class StreamTransport(asyncio.Transport):
    """A connection's asyncio transport (see the module's docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, state: StreamState, protocol: asyncio.BaseProtocol,
                 on_lost: Callable[["StreamTransport"], None] | None = None) -> None:
        super().__init__()
        self._loop = loop
        self._st = state
        self._conn = state.live()
        self._fd = self._conn.fileno()
        # An asyncio.Protocol or a BufferedProtocol (self._buffered says which, once): Any,
        # so the data path calls the one it has without a cast per call.
        self._protocol: Any = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._on_lost = on_lost
        self._wbuf = bytearray()
        self._writer = False  # watching for writability
        self._reading = True
        self._watching = False  # the fd is registered for reading
        self._closing = False
        self._lost = False
        self._write_paused = False  # protocol.pause_writing() was called
        self._high, self._low = _HIGH_WATER, _LOW_WATER

    def start(self) -> None:
        """connection_made, then reading: what the handshake left buffered
        first, and the socket watched only if the connection goes on."""
        self._protocol.connection_made(self)
        if self._reading and not self._closing:
            self._read_ready()
            if self._reading and not self._closing and not self._watching:
                self._loop.add_reader(self._fd, self._read_ready)
                self._watching = True

    # -- reading ---------------------------------------------------------------------------

    def _read_ready(self) -> None:
        for _ in range(_READS_PER_EVENT):
            if not self._reading or self._closing:
                return
            try:
                data = self._conn.read(READ_MAX)
            except BaseException as exc:
                self._fatal(exc)
                return
            if type(data) is not bytes:
                if data == WANT_WRITE:  # TLS must write before it reads on: go on when writable
                    self._watch_write()
                return
            if not data:
                self._eof()
                return
            try:
                if self._buffered:
                    self._deliver_buffered(data)
                else:
                    self._protocol.data_received(data)
            except BaseException as exc:
                self._fatal(exc)
                return
            if len(data) < READ_MAX:
                return  # nothing whole is left in a buffer: the next event brings more

    def _deliver_buffered(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            buf = memoryview(self._protocol.get_buffer(len(view))).cast("B")
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            self._protocol.buffer_updated(n)
            view = view[n:]

    def _eof(self) -> None:
        self._stop_reading()
        keep_open = False
        try:
            keep_open = bool(self._protocol.eof_received())
        except BaseException as exc:
            self._fatal(exc)
            return
        if not keep_open or self._conn.is_tls:  # no half-open TLS
            self.close()

    def _stop_reading(self) -> None:
        self._reading = False
        if self._watching:
            self._watching = False
            self._loop.remove_reader(self._fd)

    def pause_reading(self) -> None:
        if not self._closing:
            self._stop_reading()

    def resume_reading(self) -> None:
        if self._closing or self._reading:
            return
        self._reading = True
        if not self._watching:
            self._loop.add_reader(self._fd, self._read_ready)
            self._watching = True
        self._loop.call_soon(self._read_ready)  # what is buffered already raises no event

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # -- writing ---------------------------------------------------------------------------

    def write(self, data: Any) -> None:
        if self._closing or self._lost:
            return
        if type(data) is not bytes:
            data = bytes(data)
        if not data:
            return
        if self._wbuf:
            self._wbuf += data
            self._check_high_water()
            return
        try:
            n = self._conn.write(data)
        except BaseException as exc:
            self._fatal(exc)
            return
        if n == len(data):
            return
        self._wbuf += memoryview(data)[max(n, 0):]
        self._watch_write()
        self._check_high_water()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))  # one record run, one send

    def _write_ready(self) -> None:
        if self._lost:
            return
        if self._wbuf:
            try:
                n = self._conn.write(self._wbuf)
            except BaseException as exc:
                self._fatal(exc)
                return
            if n > 0:
                del self._wbuf[:n]
        if self._wbuf:
            return
        self._unwatch_write()
        if self._write_paused and not self._closing:
            self._write_paused = False
            self._protocol.resume_writing()
        if self._closing:
            self._finish(None)
        elif self._reading:
            self._read_ready()  # a read that waited for this write (TLS) goes on

    def _watch_write(self) -> None:
        if not self._writer:
            self._loop.add_writer(self._fd, self._write_ready)
            self._writer = True

    def _unwatch_write(self) -> None:
        if self._writer:
            self._loop.remove_writer(self._fd)
            self._writer = False

    def _check_high_water(self) -> None:
        if not self._write_paused and len(self._wbuf) > self._high:
            self._write_paused = True
            self._protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return len(self._wbuf)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        high = _HIGH_WATER if high is None else high
        low = high // 4 if low is None else low
        if not 0 <= low <= high:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._check_high_water()

    def can_write_eof(self) -> bool:
        return not self._conn.is_tls  # TLS has no half-close

    def write_eof(self) -> None:
        if not self.can_write_eof():
            raise NotImplementedError("a TLS stream cannot send end of stream alone; close() it")
        if self._wbuf:
            raise RuntimeError("write_eof with data still buffered")
        self._conn.shutdown(1)

    # -- closing ---------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Closes after what is buffered has gone out (TLS close_notify then)."""
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self._wbuf:
            self._loop.call_soon(self._finish, None)

    def abort(self) -> None:
        self._closing = True
        self._stop_reading()
        self._wbuf.clear()
        self._finish(None)

    def _fatal(self, exc: BaseException) -> None:
        if not isinstance(exc, (_e.StreamSocketError, ConnectionError)):
            self._loop.call_exception_handler(
                {"message": "fatal error on a streamsock transport", "exception": exc, "transport": self,
                 "protocol": self._protocol})
        self._closing = True
        self._stop_reading()
        self._wbuf.clear()
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._unwatch_write()
        conn, self._st.conn = self._st.conn, None
        if conn is not None:
            conn.close()
        try:
            self._protocol.connection_lost(exc)
        finally:
            if self._on_lost is not None:
                self._on_lost(self)

    # -- what asyncio code asks of a transport -------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        st = self._st
        if name in ("peername", "sockname"):
            text = st.name(name == "peername")
            return _host_port(text) if text else default
        if name == "cipher":
            info = st.tls_info()
            return (info["cipher_name"], info["cipher_version"], info["cipher_bits"]) if info else default
        if name == "streamsock_crypto":
            return st.crypto() or default
        if name == "peercert_der":
            return st.conn.peer_certs(False)[0] if st.conn is not None and st.conn.is_tls else default
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        protocol: asyncio.BaseProtocol = self._protocol
        return protocol

    def __repr__(self) -> str:
        return f"<StreamTransport {self._st.address} {self._st.describe()}>"
