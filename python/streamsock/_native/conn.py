"""Connections of the C core (csrc/conn.c): one ``ss_conn_t`` each, behind
the backend's Connection surface (see ``_backend.Connection``).

A NativeConnection owns its handle with ``ffi.gc`` (freed with it); every
call crosses the FFI once, without the GIL. ``run`` is the C blocking driver
of connect plus handshake; ``read_wait``/``write_wait`` are the blocking
data path, also one C call each.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, NoReturn, TypeAlias

from .. import errors as _e
from .._deadline import deadline_after, time_left
from .._types import BytesLike, TLSInfo
from ..address import TRANSPORT_BY_CODE, Address
from .._types import ErrorContext
from ._cdata import Strings, raise_record, text, timeout_ms
from ._core import ffi, lib

if TYPE_CHECKING:
    from ..context import Context

DONE: int = lib.SS_DONE
WANT_READ: int = lib.SS_WANT_READ
WANT_WRITE: int = lib.SS_WANT_WRITE
_IO_WANT: dict[int, int] = {lib.SS_IO_WANT_READ: WANT_READ, lib.SS_IO_WANT_WRITE: WANT_WRITE}
_TIMEOUT: int = lib.SS_IO_TIMEOUT
_INTERRUPTED: int = lib.SS_IO_INTERRUPTED
_READ_CHUNK = 65536
_STATE_NAMES: dict[int, str] = {
    getattr(lib, name): name.removeprefix("SS_STATE_").lower() for name in dir(lib) if name.startswith("SS_STATE_")
}
_OPTIONS_CACHE_MAX = 256  # distinct (context, address, tls) option structs kept


def _conn_options(address: Address, context: Context, tls: Any, s: Strings) -> Any:
    """An ss_conn_options_t for one use of ``context`` (its strings kept by ``s``)."""
    o = ffi.new("ss_conn_options_t *")
    o.transport = TRANSPORT_BY_CODE.index(address.transport)
    o.port = -1 if address.port is None else address.port
    if address.path is not None:
        path = address.path.encode("utf-8", "surrogateescape")
        o.path = s(path)
        o.path_len = len(path)
    else:
        o.host = s(address.host)
    o.tls = tls if tls is not None else ffi.NULL
    o.peer_name = s(context.peer_name(address))
    o.verify_peer_name = context.verify_peer_name
    o.sni_enabled = context.sni_enabled
    bind_host, bind_port = context.bindto(address.transport.local)
    o.bind_host = s(bind_host)
    o.bind_port = bind_port
    so = context.socket
    o.backlog = so.get("backlog", 32)
    o.tcp_nodelay = so.get("tcp_nodelay", True)
    o.so_reuseport = so.get("so_reuseport", False)
    o.so_broadcast = so.get("so_broadcast", False)
    o.ipv6_v6only = int(so["ipv6_v6only"]) if "ipv6_v6only" in so else -1
    for flag in ("so_reuseaddr", "so_keepalive"):
        if flag in so:
            setattr(o, flag, 1 if so[flag] else -1)
    for count in ("tcp_keepidle", "tcp_keepintvl", "tcp_keepcnt", "so_rcvbuf", "so_sndbuf"):
        setattr(o, count, so.get(count, 0))
    o.so_linger = so["so_linger"] + 1 if "so_linger" in so else 0
    return o


#: (ss_conn_options_t, the strings it points to, the tls context it points to).
_OptionsEntry: TypeAlias = tuple[Any, Strings, Any]
_options_cache: dict[tuple[object, Address, Any], _OptionsEntry] = {}


def cached_options(address: Address, context: Context, tls: Any) -> _OptionsEntry:
    """(ss_conn_options_t, the strings it points to, tls) for one use of a
    Context, built once: the C side copies what it keeps, so one struct serves
    every connection. Callers hold the whole entry during their call, so a
    clear on another thread cannot free the strings under it."""
    key = (context.cache_key, address, tls)
    entry = _options_cache.get(key)
    if entry is None:
        s = Strings()
        entry = (_conn_options(address, context, tls, s), s, tls)
        if len(_options_cache) >= _OPTIONS_CACHE_MAX:  # many distinct targets: keep it small
            _options_cache.clear()
        _options_cache[key] = entry
    return entry


_unpack: Callable[[Any, int], bytes] = ffi.unpack  # a char[]'s first n bytes
_scratch = threading.local()


def _read_buffer(size: int) -> Any:
    """This thread's buffer for reads (a read's bytes are copied out at once,
    so every connection of a thread shares one)."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < size:
        buf = _scratch.buf = ffi.new("char[]", max(size, _READ_CHUNK))
    return buf


class NativeConnection:
    """One C connection handle (``ss_conn_t``)."""

    __slots__ = ("_h", "_status", "__weakref__")

    def __init__(self, handle: Any) -> None:
        self._h = ffi.gc(handle, lib.ss_conn_free)
        self._status: Any = None  # write_wait's out-parameter (int32_t *), made on its first use

    def _raise(self, context: ErrorContext = None) -> NoReturn:
        err = ffi.new("ss_error_info_t *")
        lib.ss_conn_error(self._h, err)
        raise_record(err, context)

    def fileno(self) -> int:
        fd: int = lib.ss_conn_fd(self._h)
        return fd

    @property
    def state(self) -> str:
        return _STATE_NAMES.get(lib.ss_conn_state(self._h), "unknown")

    @property
    def is_tls(self) -> bool:
        return bool(lib.ss_conn_is_tls(self._h))

    def step(self, context: ErrorContext = None) -> int:
        rc: int = lib.ss_conn_step(self._h)
        if rc < 0:
            self._raise(context)
        return rc

    # A blocking call returns _INTERRUPTED when a signal came: back in Python
    # its handler runs (Ctrl-C raises KeyboardInterrupt here), and otherwise
    # the call goes on with the time that is left.

    def run(self, timeout: float | None, context: ErrorContext = None) -> None:
        deadline = deadline_after(timeout)
        while (rc := lib.ss_conn_run(self._h, timeout_ms(timeout))) == _INTERRUPTED:
            timeout = time_left(deadline)
        if rc < 0:
            self._raise(context)

    def wait(self, want: int, timeout: float | None) -> bool:
        deadline = deadline_after(timeout)
        rc: int
        while (rc := lib.ss_conn_wait(self._h, want, timeout_ms(timeout))) == _INTERRUPTED:
            timeout = time_left(deadline)
        if rc < 0:
            self._raise()
        return rc == 1

    def read(self, size: int) -> bytes | int:
        """bytes (b"" at end of stream), or WANT_READ / WANT_WRITE."""
        try:  # _read_buffer inlined: this is every read's path
            buf = _scratch.buf
            if len(buf) < size:
                buf = _read_buffer(size)
        except AttributeError:
            buf = _read_buffer(size)
        n: int = lib.ss_conn_read(self._h, buf, size)
        if n > 0:
            return _unpack(buf, n)
        if n == 0:
            return b""
        if n in _IO_WANT:
            return _IO_WANT[n]
        self._raise()

    def read_wait(self, size: int, timeout: float | None) -> bytes | None:
        """Blocks up to ``timeout`` seconds (None: no limit) for data: bytes
        (b"" at end of stream), or None when the time ran out."""
        buf = _read_buffer(size)
        n: int = lib.ss_conn_read_wait(self._h, buf, size, timeout_ms(timeout))
        if n == _INTERRUPTED:
            deadline = deadline_after(timeout)
            while n == _INTERRUPTED:
                n = lib.ss_conn_read_wait(self._h, buf, size, timeout_ms(time_left(deadline)))
        if n > 0:
            return _unpack(buf, n)
        if n == 0:
            return b""
        if n == _TIMEOUT:
            return None
        self._raise()

    def write(self, data: BytesLike) -> int:
        """Bytes written (> 0), or -WANT_READ / -WANT_WRITE when nothing could be."""
        # cffi passes bytes as a char pointer without a copy; other buffers need from_buffer
        n: int = lib.ss_conn_write(self._h, data if type(data) is bytes else ffi.from_buffer(data), len(data))
        if n >= 0:
            return n
        if n in _IO_WANT:
            return -_IO_WANT[n]
        self._raise()

    def write_wait(self, data: BytesLike, timeout: float | None) -> int:
        """Writes all of ``data``, blocking up to ``timeout`` seconds; returns
        how much went out (less than all only when the time ran out)."""
        status = self._status
        if status is None:
            status = self._status = ffi.new("int32_t *")
        n: int = lib.ss_conn_write_wait(self._h, data if type(data) is bytes else ffi.from_buffer(data), len(data),
                                        timeout_ms(timeout), status)
        if status[0] == 0:
            return n
        deadline = deadline_after(timeout)
        total = n
        view = memoryview(data)
        while status[0] == _INTERRUPTED:
            rest = view[total:]
            total += lib.ss_conn_write_wait(self._h, ffi.from_buffer(rest), len(rest), timeout_ms(time_left(deadline)),
                                            status)
        if status[0] < 0 and status[0] != _TIMEOUT:
            self._raise()
        return total

    def recvfrom(self, size: int, peek: bool = False) -> tuple[bytes, str] | int:
        buf = ffi.new("char[]", max(size, 1))
        peer = ffi.new("char[]", 128)
        peer_len = ffi.new("uint32_t *")
        n: int = lib.ss_conn_recvfrom(self._h, buf, size, peek, peer, 128, peer_len)
        if n >= 0:
            return ffi.buffer(buf, n)[:], ffi.buffer(peer, peer_len[0])[:].decode("utf-8", "surrogateescape")
        if n in _IO_WANT:
            return _IO_WANT[n]
        self._raise()

    def sendto(self, data: BytesLike, address: Address) -> int:
        s = Strings()
        if address.path is not None:
            path = address.path.encode("utf-8", "surrogateescape")
            n: int = lib.ss_conn_sendto(self._h, ffi.from_buffer(data), len(data), ffi.NULL, 0, s(path), len(path))
        else:
            n = lib.ss_conn_sendto(
                self._h, ffi.from_buffer(data), len(data), s(address.host), address.port or 0, ffi.NULL, 0
            )
        if n >= 0:
            return n
        if n in _IO_WANT:
            return -_IO_WANT[n]
        self._raise()

    def recv_oob(self, size: int) -> bytes | int:
        """The pending urgent byte(s) (TCP MSG_OOB), or WANT_READ when announced and not yet here."""
        buf = ffi.new("char[]", max(size, 1))
        n: int = lib.ss_conn_recv_oob(self._h, buf, size)
        if n >= 0:
            data: bytes = ffi.buffer(buf, n)[:]
            return data
        if n in _IO_WANT:
            return _IO_WANT[n]
        self._raise()

    def send_oob(self, data: BytesLike) -> int:
        """Sends ``data`` with its last byte urgent (TCP MSG_OOB): the count, or -WANT_WRITE."""
        n: int = lib.ss_conn_send_oob(self._h, ffi.from_buffer(data), len(data))
        if n >= 0:
            return n
        if n in _IO_WANT:
            return -_IO_WANT[n]
        self._raise()

    def accept(self) -> "NativeConnection | None":
        """A listener's next connection, or None when none is waiting."""
        err = ffi.new("ss_error_info_t *")
        handle = lib.ss_conn_accept(self._h, err)
        if handle == ffi.NULL:
            if err.code:
                raise_record(err)
            return None
        return NativeConnection(handle)

    def start_tls(self, tls: Any, peer_name: str | None, verify_peer_name: bool, sni_enabled: bool,
                  session_from: "NativeConnection | None" = None) -> None:
        s = Strings()
        session = session_from._h if session_from is not None else ffi.NULL
        if lib.ss_conn_start_tls(self._h, tls, s(peer_name), verify_peer_name, sni_enabled, session) < 0:
            self._raise()

    def stop_tls(self) -> None:
        if lib.ss_conn_stop_tls(self._h) < 0:
            self._raise()

    def shutdown(self, how: int) -> bool:
        rc: int = lib.ss_conn_shutdown(self._h, how)
        if rc < 0:
            self._raise()
        return rc == DONE

    def interrupt(self) -> None:
        lib.ss_conn_interrupt(self._h)

    def close(self) -> None:
        lib.ss_conn_close(self._h)

    def pending(self) -> int:
        n: int = lib.ss_conn_pending(self._h)
        return n

    def name(self, peer: bool) -> str:
        out = ffi.new("char[]", 256)
        n = lib.ss_conn_name(self._h, peer, out, 256)
        if n < 0:
            return ""
        name: str = ffi.buffer(out, n)[:].decode("utf-8", "surrogateescape")
        return name

    def tls_info(self) -> TLSInfo:
        info = ffi.new("ss_tls_info_t *")
        lib.ss_conn_tls_info(self._h, info)
        return {
            "protocol": text(info.protocol),
            "cipher_name": text(info.cipher_name),
            "cipher_bits": info.cipher_bits,
            "cipher_version": text(info.cipher_version),
            "alpn_protocol": text(info.alpn) or None,
            "group": text(info.group) or None,
            "server_name": text(info.server_name) or None,
            "session_reused": bool(info.session_reused),
        }

    def peer_certs(self, chain: bool) -> list[bytes]:
        """DER of the peer's leaf (and, with chain, the rest it sent)."""
        out: list[bytes] = []
        for index in range(64 if chain else 1):
            size: int = lib.ss_conn_peer_cert(self._h, index, ffi.NULL, 0)
            if size <= 0:
                break
            buf = ffi.new("unsigned char[]", size)
            lib.ss_conn_peer_cert(self._h, index, buf, size)
            out.append(ffi.buffer(buf, size)[:])
        return out


def open_client(address: Address, context: Context, tls: Any) -> NativeConnection:
    err = ffi.new("ss_error_info_t *")
    entry = cached_options(address, context, tls)
    handle = lib.ss_conn_client(entry[0], err)
    if handle == ffi.NULL:
        raise_record(err)
    return NativeConnection(handle)


def adopt(fd: int, address: Address) -> NativeConnection:
    """A connection over an already connected socket (a socketpair's end):
    the connection owns ``fd`` from now on, also when this fails."""
    err = ffi.new("ss_error_info_t *")
    handle = lib.ss_conn_from_fd(fd, TRANSPORT_BY_CODE.index(address.transport), ffi.NULL, ffi.NULL, err)
    if handle == ffi.NULL:
        import os

        os.close(fd)
        raise_record(err)
    return NativeConnection(handle)


def open_server(address: Address, context: Context, tls: Any) -> NativeConnection:
    s = Strings()
    err = ffi.new("ss_error_info_t *")
    handle = lib.ss_conn_server(_conn_options(address, context, tls, s), err)
    if handle == ffi.NULL:
        raise_record(err, f"Unable to bind to {address}")
    return NativeConnection(handle)
