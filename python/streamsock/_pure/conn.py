"""Connections of the pure backend: the twin of csrc/conn.c and sock.c, on the
standard library alone (``socket``, ``ssl``).

Theory of operation: a PureConnection is a non-blocking socket plus, while
TLS is on, an ssl.SSLObject over two MemoryBIOs that we pump by hand: TLS
output goes from the outgoing BIO to the socket (what does not fit waits in
``_unsent``), socket input goes into the incoming BIO. States and their names
match the C core's, and the stream drivers drive both alike. Because we feed
the incoming BIO ourselves, bytes that arrive after the peer's close_notify
stay in it and go back to the plaintext stream when TLS ends
(enable_crypto(False)). What Python's ssl cannot check during the handshake
(allow_self_signed, a name without SNI, verify_depth) is checked right after
it, before any application data moves.
"""

from __future__ import annotations

import _ssl  # Python's ssl module's own core (ENCODING_DER is not re-exported by ssl)
import datetime
import errno as _errno
import fcntl
import math
import os
import select
import socket
import ssl
import struct
import sys
import termios
from typing import TYPE_CHECKING, Callable, NoReturn, Protocol, Sequence, TypeAlias, TypeVar, TypeVarTuple

from .. import errors as _e
from .._deadline import deadline_after, time_left
from ..address import Address, Transport, ip_literal
from ..fingerprint import server_hello_from_records
from .trust import NAME_MISMATCH, VERIFIED, verify_failure
from .tls import (
    _X509_V_ERR_HOSTNAME_MISMATCH,
    _X509_V_ERR_IP_ADDRESS_MISMATCH,
    PureTLS,
    cert_matches,
    ssl_reason,
)

if TYPE_CHECKING:
    from .._types import BytesLike, ErrorContext, ErrorRecord, TLSInfo
    from ..context import Context

DONE, WANT_READ, WANT_WRITE = 0, 1, 2
_RECV = 65536
_RECORD = 16384  # TLS's largest record payload
_HANDBACK_MAX = 1 << 20
_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

#: What a raised error's message starts with (``_backend.Connection``): words,
#: or (words, address) formatted only when an error happens.
#: One of getaddrinfo's answers: family, type, protocol, canonical name, and the
#: address as connect, bind and sendto take it (opaque to us).
_AddrInfo: TypeAlias = "tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[object, ...]]"
#: A socket address as the kernel reports it (getpeername, recvfrom): (host, port),
#: IPv6's (host, port, flowinfo, scope_id), or a unix path (bytes in Linux's abstract namespace).
_SockAddr: TypeAlias = "tuple[str, int] | tuple[str, int, int, int] | str | bytes"

_T = TypeVar("_T")
_Args = TypeVarTuple("_Args")


class _SSLCore(Protocol):
    """What we use of an SSLObject's private ``_ssl._SSLSocket``: Python's ssl
    (before 3.13) offers no shutdown that does not also unwrap, and no chains."""

    def shutdown(self) -> None: ...
    def get_verified_chain(self) -> list[_ssl.Certificate] | None: ...
    def get_unverified_chain(self) -> list[_ssl.Certificate] | None: ...


def _core(ssl_object: ssl.SSLObject) -> _SSLCore:
    core: _SSLCore = ssl_object._sslobj  # type: ignore[attr-defined]  # private: see _SSLCore
    return core


def error_code(exc: _e.StreamSocketError, default: int) -> int:
    """The number (the C core's ss_err_t) of an error raised as an exception, ``default`` when it has no code."""
    return _e.CODE_BY_NAME.get(exc.code, default) if exc.code is not None else default


def _discard_unread(sock: socket.socket) -> None:
    """Bytes left unread make close() reset the connection, and a reset can
    cost the peer the tail of what we sent (the TLS 1.3 session tickets a
    client never reads are enough): what has arrived is read away first, as
    the C core does (bounded, never waiting)."""
    for _ in range(64):
        try:
            if not sock.recv(4096, socket.MSG_DONTWAIT):
                return
        except OSError:
            return


def _format_sockaddr(family: int, sockaddr: _SockAddr) -> str:
    if isinstance(sockaddr, tuple):  # AF_INET or AF_INET6
        host, port = sockaddr[0], sockaddr[1]
        if family == socket.AF_INET6:
            return f"[{host.partition('%')[0]}]:{port}"
        return f"{host}:{port}"
    if isinstance(sockaddr, bytes):
        return sockaddr.decode("utf-8", "surrogateescape")
    return sockaddr or ""


class PureConnection:
    """socket + ssl behind the backend's Connection surface (``_backend.Connection``)."""

    state: str  # the C core's state names: "resolve", "connecting", "handshaking", "established", ...

    def __init__(self, address: Address, context: Context, tls: PureTLS | None,
                 sock: socket.socket | None = None) -> None:
        self._address = address
        self._context = context
        self._initial_tls = tls
        self._sock = sock
        self._addrs: list[_AddrInfo] = []
        self._connect_errno = 0
        # While TLS is on: the SSLObject, its compiled context and its two BIOs, together.
        self._ssl: ssl.SSLObject | None = None
        self._tls: PureTLS | None = None
        self._in: ssl.MemoryBIO | None = None
        self._out: ssl.MemoryBIO | None = None
        self._unsent = b""
        self._handback = bytearray()
        self._shutdown_sent = False
        self._error: ErrorRecord | None = None
        self.capture_hello = False  # keep the first ServerHello (fingerprints), as the C core's capture_hello
        self.server_hello = b""
        self._hello_tap: bytearray | None = None
        self._peer_name = context.peer_name(address) if address.host is not None else None
        self._verify_peer_name = context.verify_peer_name
        self._sni = context.sni_enabled
        self._accepted = sock is not None
        self.offer_session: ssl.SSLSession | None = None  # client: resume this session (probe's cache)
        self._version_range: tuple[int, int] | None = None  # versions held after a handshake from another context
        self.state = "established" if sock is not None else "resolve"

    # -- errors -------------------------------------------------------------

    def _fail(self, code: int, sys_errno: int, message: str, context: ErrorContext = None) -> NoReturn:
        self._error = (code, sys_errno, message)
        self.state = "failed"
        raise _e.from_native(code, sys_errno, message, context=context)

    def _raise_sticky(self, context: ErrorContext) -> NoReturn:
        assert self._error is not None  # "failed" comes only from _fail, which keeps the error
        code, sys_errno, message = self._error
        raise _e.from_native(code, sys_errno, message, context=context)

    def _live_sock(self) -> socket.socket:
        """The socket, which a connection has from connecting until it is closed."""
        if self._sock is None:
            raise _e.error(_e.CLOSED)
        return self._sock

    # -- the state machine ----------------------------------------------------------

    def step(self, context: ErrorContext = None) -> int:
        while True:
            state = self.state
            if state == "established":
                return DONE
            if state == "resolve":
                rc = self._start_connect(context)
                self.state = "connecting"
                if rc:
                    return rc
            elif state == "connecting":
                sock = self._live_sock()
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    if self._address.transport.local:
                        self._fail(_e.CONNECT, error, os.strerror(error), context)
                    self._connect_errno = error
                    sock.close()
                    self._sock = None
                    rc = self._connect_next(context)
                    if rc:
                        return rc
                    continue
                if self._initial_tls is not None:
                    self._attach(self._initial_tls)
                    self.state = "handshaking"
                else:
                    self.state = "established"
            elif state == "handshaking":
                rc = self._handshake(context)
                if rc:
                    return rc
                self.state = "established"
            elif state == "tls_shutdown":
                rc = self._tls_shutdown(context)
                if rc:
                    return rc
                self._detach()
                self.state = "established"
            elif state == "closed":
                raise _e.error(_e.CLOSED)
            elif state == "failed":
                self._raise_sticky(context)
            else:
                return DONE  # listening

    def _start_connect(self, context: ErrorContext) -> int:
        a = self._address
        if a.transport.local:
            family = socket.AF_UNIX
            stype = socket.SOCK_DGRAM if a.transport.datagram else socket.SOCK_STREAM
            sock = socket.socket(family, stype | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            self._sock = sock
            bind_host, _ = self._context.bindto(local=True)
            if stype == socket.SOCK_DGRAM:
                # A udg client needs an address of its own to receive replies:
                # the bindto path, or else one the kernel picks ("" autobinds).
                try:
                    sock.bind(bind_host or "")
                except OSError as exc:
                    self._fail(_e.CONNECT, exc.errno or 0, f"bindto {bind_host or '(auto)'} failed: {exc.strerror}",
                               context)
            assert a.path is not None  # a unix or udg address always has its path
            rc = sock.connect_ex(a.path.encode("utf-8", "surrogateescape"))
            if rc == 0:
                return DONE
            if rc == _errno.EINPROGRESS:
                return WANT_WRITE
            self._fail(_e.CONNECT, rc, os.strerror(rc), context)
        stype = socket.SOCK_DGRAM if a.transport.datagram else socket.SOCK_STREAM
        self._addrs = list(_resolve(self, a.host, a.port, stype, False, context))  # tried in turn, popped
        return self._connect_next(context)

    def _connect_next(self, context: ErrorContext) -> int:
        while self._addrs:
            family, stype, proto, _, sockaddr = self._addrs.pop(0)
            try:
                sock = socket.socket(family, stype | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, proto)
            except OSError as exc:
                self._connect_errno = exc.errno or 0
                continue
            try:
                _apply_options(self._context, sock, family, stype)
                _bind_local(self._context, sock, family, stype)
            except _e.StreamSocketError as exc:
                sock.close()
                # worded as the C core words it
                self._fail(error_code(exc, _e.SYSTEM), exc.errno or 0, exc.errstr, context)
            self._sock = sock
            rc = sock.connect_ex(sockaddr)
            if rc == 0:
                return DONE
            if rc == _errno.EINPROGRESS:
                return WANT_WRITE
            self._connect_errno = rc
            sock.close()
            self._sock = None
        e = self._connect_errno or _errno.ECONNREFUSED
        self._fail(_e.CONNECT, e, os.strerror(e), context)

    # -- TLS pumping -------------------------------------------------------------------

    def _attach(self, tls: PureTLS, session: ssl.SSLSession | None = None,
                session_from: PureConnection | None = None) -> None:
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        s = tls.settings
        name = self._peer_name
        context: ssl.SSLContext = tls.ssl_context
        hostname: str | None = None
        check = bool(not s.server and name and s.verify_peer and self._verify_peer_name and not s.allow_self_signed)
        # Python's ssl sends SNI (never for IP literals) and checks the name
        # together, both from server_hostname: use that when both are wanted.
        self._check_name_in_handshake = check and self._sni
        if self._check_name_in_handshake:
            assert tls.checked_context is not None  # made for every client that checks names (PureTLS)
            context, hostname = tls.checked_context, name
        elif not s.server and name and self._sni and ip_literal(name) is None:
            hostname = name
        self._version_range = None
        if (session is not None and session_from is not None and session_from._ssl is not None
                and session_from._ssl.context is not context):
            context = self._context_for_session(tls, context, session_from)
        if session is None and not s.server:
            session, self.offer_session = self.offer_session, None
        self._ssl = context.wrap_bio(self._in, self._out, server_side=s.server, server_hostname=hostname,
                                     session=session)
        self._tls = tls
        self._shutdown_sent = False
        self._verify_failure: tuple[int, str] | None = None
        if self.capture_hello and not s.server and not self.server_hello:
            self._hello_tap = bytearray()

    def _context_for_session(self, tls: PureTLS, wanted: ssl.SSLContext, other: PureConnection) -> ssl.SSLContext:
        """Python's ssl resumes a session only in the SSLContext that made it,
        where OpenSSL itself takes it in any. A session made with other
        versions allowed (a tls:// stream's, resumed by a STARTTLS with a
        crypto method) is offered from its own context, which differs from
        ours only in the version range; the version negotiated is then held
        to our range after the handshake. Other differences cannot be bridged."""
        from dataclasses import replace

        assert other._ssl is not None and other._tls is not None  # its session is offered: its TLS is on
        mine, theirs = tls.settings, other._tls.settings
        same_role = (other._ssl.context is other._tls.checked_context) == (wanted is tls.checked_context)
        if not same_role or replace(theirs, min_version=mine.min_version, max_version=mine.max_version) != mine:
            raise ValueError("session_stream's TLS settings differ from this stream's in more than the protocol "
                             "versions: the pure backend cannot resume its session (Python's ssl ties a session "
                             "to the SSLContext that made it)")
        version = _VERSIONS.get(other._ssl.version() or "", 0)
        if not mine.min_version <= version <= (mine.max_version or version):
            raise ValueError(f"session_stream's session is {other._ssl.version()}, outside the protocol versions "
                             "this stream allows")
        self._version_range = (mine.min_version, mine.max_version)
        return other._ssl.context

    def _detach(self) -> None:
        self._ssl = None
        self._tls = None
        self._in = self._out = None
        self._shutdown_sent = False

    def _flush(self) -> bool:
        """Sends what TLS produced; False when the socket is full. A socket
        error propagates as OSError: the caller names the TLS operation."""
        data = self._unsent + self._out.read() if self._out is not None else self._unsent
        if not data:
            self._unsent = b""
            return True
        sock = self._live_sock()
        while data:
            try:
                n = sock.send(data)
            except BlockingIOError:
                self._unsent = data
                return False
            except OSError:
                self._unsent = b""
                raise
            data = data[n:]
        self._unsent = b""
        return True

    def _fill(self) -> int:
        """Moves socket input into TLS: DONE, or WANT_READ when none is waiting.
        A socket error propagates as OSError, as in _flush."""
        assert self._in is not None  # TLS is on
        sock = self._live_sock()
        try:
            data = sock.recv(_RECV)
        except BlockingIOError:
            return WANT_READ
        if data:
            if self._hello_tap is not None:
                self._tap_hello(self._hello_tap, data)
            self._in.write(data)
        else:
            self._in.write_eof()
        return DONE

    def _tap_hello(self, tap: bytearray, data: bytes) -> None:
        """Keeps the ServerHello from the first records the server sends (``tap``: those so far)."""
        tap += data
        found = server_hello_from_records(tap)
        if found is not None:
            self.server_hello = found
            self._hello_tap = None

    def _tls_call(self, operation: Callable[[*_Args], _T], *args: *_Args,
                  reading: bool = False) -> tuple[_T | None, int]:
        """Runs an SSLObject operation, pumping I/O: (result, want). A read
        (``reading``) goes on reading while earlier output waits for room in
        the socket: that output is a writer's, which waits for it itself."""
        while True:
            try:
                result = operation(*args)
            except ssl.SSLWantReadError:
                if not self._flush() and not reading:
                    return None, WANT_WRITE
                if self._fill() == WANT_READ:
                    return None, WANT_READ
                continue
            if not self._flush():
                return result, WANT_WRITE
            return result, DONE

    def _socket_failed(self, exc: OSError, what: str, context: ErrorContext) -> NoReturn:
        """A socket error under TLS, reported as the C core does (SSL_ERROR_SYSCALL)."""
        if isinstance(exc, _e.StreamSocketError):
            raise exc  # ours already, in its own words
        self._fail(_e.TLS, exc.errno or 0, f"{what}: {exc.strerror or exc}", context)

    def _handshake(self, context: ErrorContext) -> int:
        assert self._ssl is not None  # "handshaking" comes with _attach
        try:
            if self._unsent and not self._flush():
                return WANT_WRITE
            _, want = self._tls_call(self._ssl.do_handshake)
        except ssl.SSLError as exc:
            self._fail_tls(exc, "TLS handshake failed", context)
        except OSError as exc:
            self._socket_failed(exc, "TLS handshake failed", context)
        if want == WANT_READ:
            return want
        if want == WANT_WRITE and not self._ssl.server_side and self._unsent:
            return WANT_WRITE
        if self._version_range is not None:  # offered from another context: see _context_for_session
            low, high = self._version_range
            version = _VERSIONS.get(self._ssl.version() or "", 0)
            if not low <= version <= (high or version):
                self._fail(_e.TLS, 0, f"TLS handshake failed: {self._ssl.version()} was negotiated, outside the "
                           "protocol versions allowed", context)
        self._check_peer(context)
        return DONE

    def _fail_tls(self, exc: ssl.SSLError, what: str, context: ErrorContext) -> NoReturn:
        try:
            self._flush()  # send the alert
        except OSError:
            pass
        code = _e.TLS_VERIFY if isinstance(exc, ssl.SSLCertVerificationError) else _e.TLS
        if isinstance(exc, ssl.SSLCertVerificationError):
            self._verify_failure = verify_failure(exc)
        if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            code = _e.EOF
        message = f"{what}: {ssl_reason(exc)}"
        if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_code in (
            _X509_V_ERR_HOSTNAME_MISMATCH, _X509_V_ERR_IP_ADDRESS_MISMATCH
        ):
            message += f' (expected "{self._peer_name}")'
        self._fail(code, 0, message, context)

    def _check_peer(self, context: ErrorContext) -> None:
        """What Python's ssl could not check during the handshake."""
        assert self._ssl is not None and self._tls is not None  # after a handshake
        s = self._tls.settings
        if s.server or self._ssl.server_side:
            return
        der = self._ssl.getpeercert(binary_form=True)
        name = self._peer_name
        if s.verify_peer and s.allow_self_signed:
            from ..certificate import Certificate

            cert = Certificate(der) if der else None
            if cert is None or not cert.is_self_signed:
                self._fail(_e.TLS_VERIFY, 0, "TLS handshake failed: certificate verify failed: the pure backend "
                           "accepts only a self-signed certificate when allow_self_signed is set", context)
            if not cert.valid_at():
                self._fail(_e.TLS_VERIFY, 0, "TLS handshake failed: certificate verify failed: certificate has expired"
                           if cert.not_after < datetime.datetime.now(datetime.timezone.utc) else "TLS handshake failed: certificate verify failed: "
                           "certificate is not yet valid", context)
            if self._verify_peer_name and name and not cert_matches(cert, name):
                self._fail(_e.TLS_VERIFY, 0, f'TLS handshake failed: certificate verify failed: hostname mismatch '
                           f'(expected "{name}")', context)
        elif self._verify_peer_name and name and not self._check_name_in_handshake:
            from ..certificate import Certificate

            if der and not cert_matches(Certificate(der), name):
                code = _e.TLS_VERIFY if s.verify_peer else _e.TLS_PEER_NAME
                if s.verify_peer:
                    self._fail(code, 0, f'TLS handshake failed: certificate verify failed: hostname mismatch '
                               f'(expected "{name}")', context)
                self._fail(code, 0, f'Peer certificate CN or subjectAltName did not match expected "{name}"', context)
        if s.verify_peer and s.verify_depth >= 0:
            chain = _core(self._ssl).get_verified_chain() or []
            if len(chain) > s.verify_depth + 2:
                self._fail(_e.TLS_VERIFY, 0, "TLS handshake failed: certificate verify failed: certificate chain too long",
                           context)

    def _tls_shutdown(self, context: ErrorContext) -> int:
        try:
            return self._tls_shutdown_step(context)
        except OSError as exc:
            self._socket_failed(exc, "TLS shutdown failed", context)

    def _tls_shutdown_step(self, context: ErrorContext) -> int:
        assert self._ssl is not None  # "tls_shutdown" comes only from stop_tls, with TLS on
        if not self._shutdown_sent:
            done = self._send_close_notify(context)
            if not self._flush():
                return WANT_WRITE
            if done:
                self._return_leftovers()
                return DONE
        # Our close_notify is out: read until the peer's, keeping its data.
        while True:
            try:
                data, want = self._tls_call(self._ssl.read, _RECV)
            except ssl.SSLZeroReturnError:
                self._flush()
                self._return_leftovers()
                return DONE
            except ssl.SSLError as exc:
                self._fail_tls(exc, "TLS shutdown failed", context)
            if data is None:
                return want
            if not data:  # the peer's close_notify
                self._flush()
                self._return_leftovers()
                return DONE
            self._hand_back(data, context)

    def _send_close_notify(self, context: ErrorContext) -> bool:
        """Sends our close_notify; True when the peer's has come too.

        Python's shutdown() calls SSL_shutdown a second time when the first
        only sent ours, and that call fails the connection on any application
        data it finds waiting ("application data after close notify"), where
        the C core reads on. So what has arrived is decrypted first, into the
        handback, as the C core keeps what comes before the peer's close_notify."""
        assert self._ssl is not None  # TLS is on
        peer_done = False
        while not peer_done:
            try:
                data = self._ssl.read(_RECV)
            except ssl.SSLWantReadError:
                break  # the rest, if any, is a record still arriving: after our close_notify
            except ssl.SSLZeroReturnError:
                peer_done = True
            except ssl.SSLError as exc:
                self._fail_tls(exc, "TLS shutdown failed", context)
            else:
                peer_done = not data
                self._hand_back(data, context)
        try:
            _core(self._ssl).shutdown()
            done = True
        except ssl.SSLWantReadError:
            done = False
        except ssl.SSLError as exc:
            self._fail_tls(exc, "TLS shutdown failed", context)
        self._shutdown_sent = True
        return done or peer_done

    def _hand_back(self, data: bytes, context: ErrorContext) -> None:
        if len(self._handback) + len(data) > _HANDBACK_MAX:
            self._fail(_e.TLS, 0, f"more than {_HANDBACK_MAX} bytes arrived before the peer's close_notify", context)
        self._handback += data

    def _return_leftovers(self) -> None:
        # Plaintext that followed the peer's close_notify in the same read.
        leftover = self._in.read() if self._in is not None else b""
        if leftover:
            self._handback += leftover

    # -- the interface Stream uses --------------------------------------------------------

    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    @property
    def is_tls(self) -> bool:
        return self._ssl is not None

    def run(self, timeout: float | None, context: ErrorContext = None) -> None:
        deadline = deadline_after(timeout)
        while True:
            rc = self.step(context)
            if rc == DONE:
                return
            remaining = time_left(deadline)
            if not self.wait(rc, remaining):
                what = {"handshaking": "TLS handshake timed out", "tls_shutdown": "TLS shutdown timed out"}.get(
                    self.state, "Connection timed out")
                self._fail(_e.TIMEOUT, _errno.ETIMEDOUT, what, context)

    def wait(self, want: int, timeout: float | None) -> bool:
        if self._sock is None:
            raise _e.error(_e.CLOSED)
        if want == WANT_READ and self.pending():
            return True
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLOUT if want == WANT_WRITE else select.POLLIN)
        wait_ms = -1 if timeout is None or math.isinf(timeout) else min(math.ceil(timeout * 1000), 0x7FFFFFFF)
        return bool(poller.poll(wait_ms))

    def read(self, size: int) -> bytes | int:
        if self.state != "established":
            rc = self.step()
            if rc:
                return rc
        if self._handback:
            handed_back = bytes(self._handback[:size])
            del self._handback[:size]
            return handed_back
        if self._ssl is None:
            sock = self._sock
            if sock is None:  # inline: the plaintext data path
                raise _e.error(_e.CLOSED)
            try:
                return sock.recv(size)
            except BlockingIOError:
                return WANT_READ
            except OSError as exc:
                self._fail(_e.SYSTEM, exc.errno or 0, f"read failed: {exc.strerror}")
        try:
            data, want = self._tls_call(self._ssl.read, size, reading=True)
        except ssl.SSLZeroReturnError:
            return b""
        except ssl.SSLError as exc:
            self._fail_tls(exc, "TLS read failed", None)
        except OSError as exc:
            self._socket_failed(exc, "TLS read failed", None)
        if data is None:
            return want  # no record complete yet
        if data and len(data) < size:
            data = self._drain(data, size)
        return data  # b"" once the peer's close_notify arrived

    def _drain(self, data: bytes, size: int) -> bytes:
        """``data`` plus every whole record already received, up to ``size``
        (what is left in the incoming BIO is then at most part of a record,
        the rule a read that returns less than asked for keeps)."""
        assert self._ssl is not None  # read() drains only under TLS
        parts = [data]
        got = len(data)
        while got < size:
            try:
                more = self._ssl.read(size - got)
            except ssl.SSLError:  # no whole record left, or a failure the next read reports
                break
            if not more:
                break
            parts.append(more)
            got += len(more)
        try:
            self._flush()  # what reading made TLS send (a key update's answer)
        except OSError:
            pass  # the next call meets the socket's error
        return b"".join(parts) if len(parts) > 1 else data

    def write(self, data: BytesLike) -> int:
        if self.state != "established":
            rc = self.step()
            if rc:
                return -rc
        if not len(data):
            return 0
        if self._ssl is not None and self._shutdown_sent:  # as a plain socket's after shutdown(SHUT_WR)
            self._fail(_e.SYSTEM, _errno.EPIPE, f"write failed: {os.strerror(_errno.EPIPE)}")
        if self._ssl is None:
            sock = self._sock
            if sock is None:  # inline: the plaintext data path
                raise _e.error(_e.CLOSED)
            try:
                return sock.send(data)
            except BlockingIOError:
                return -WANT_WRITE
            except OSError as exc:
                self._fail(_e.SYSTEM, exc.errno or 0, f"write failed: {exc.strerror}")
        try:
            if self._unsent and not self._flush():
                return -WANT_WRITE
            # One record at a time: what the socket cannot take waits in
            # _unsent (at most a record) and holds back the next write, so a
            # peer that stops reading stalls us instead of filling memory.
            n = self._ssl.write(data[:_RECORD])
            self._flush()
        except ssl.SSLError as exc:
            self._fail_tls(exc, "TLS write failed", None)
        except OSError as exc:
            self._socket_failed(exc, "TLS write failed", None)
        return n

    def accept(self) -> PureConnection | None:
        """A listener's next connection, or None when none is waiting."""
        listener = self._live_sock()
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _e.error(_e.SYSTEM, f"accept failed: {exc.strerror}", exc.errno or 0) from None
        sock.setblocking(False)
        conn = PureConnection(self._address, self._context, None, sock=sock)
        if self._initial_tls is not None:
            conn._attach(self._initial_tls)
            conn.state = "handshaking"
        return conn

    def read_wait(self, size: int, timeout: float | None) -> bytes | None:
        """Blocks up to ``timeout`` seconds (None: no limit) for data: bytes
        (b"" at end of stream), or None when the time ran out."""
        deadline = deadline_after(timeout)
        while True:
            data = self.read(size)
            if isinstance(data, bytes):
                return data
            remaining = time_left(deadline)
            if not self.wait(data, remaining):
                return None

    def write_wait(self, data: BytesLike, timeout: float | None) -> int:
        """Writes all of ``data``, blocking up to ``timeout`` seconds; returns
        how much went out (less than all only when the time ran out)."""
        view = memoryview(data).cast("B")
        deadline = deadline_after(timeout)
        total = 0
        while total < len(view):
            n = self.write(view[total:])
            if n > 0:
                total += n
                continue
            remaining = time_left(deadline)
            if not self.wait(-n, remaining):
                break
        return total

    def recvfrom(self, size: int, peek: bool = False) -> tuple[bytes, str] | int:
        sock = self._live_sock()
        try:
            data, sockaddr = sock.recvfrom(size, socket.MSG_PEEK if peek else 0)
        except BlockingIOError:
            return WANT_READ
        except OSError as exc:
            raise _e.error(_e.SYSTEM, f"recvfrom failed: {exc.strerror}", exc.errno or 0) from None
        return data, _format_sockaddr(sock.family, sockaddr)

    def sendto(self, data: BytesLike, address: Address) -> int:
        sock = self._live_sock()
        target: bytes | tuple[object, ...]
        if address.path is not None:
            target = address.path.encode("utf-8", "surrogateescape")
        else:
            target = _resolve(self, address.host, address.port or 0, sock.type, False, None)[0][4]
        try:
            return sock.sendto(data, target)
        except BlockingIOError:
            return -WANT_WRITE
        except OSError as exc:
            raise _e.error(_e.SYSTEM, f"sendto failed: {exc.strerror}", exc.errno or 0) from None

    def _oob_socket(self) -> socket.socket:
        """The socket, for urgent data: which a closed or TLS stream refuses."""
        sock = self._live_sock()
        if self._ssl is not None:  # an urgent byte would bypass the record layer
            raise _e.error(_e.UNSUPPORTED, "out-of-band data cannot be sent or received on a TLS stream",
                           _errno.EOPNOTSUPP)
        return sock

    def recv_oob(self, size: int) -> bytes | int:
        """The pending urgent byte(s) (TCP MSG_OOB), or WANT_READ when announced and not yet here."""
        sock = self._oob_socket()
        try:
            return sock.recv(size, socket.MSG_OOB)
        except BlockingIOError:
            return WANT_READ
        except OSError as exc:
            if exc.errno == _errno.EINVAL:
                raise _e.error(_e.SYSTEM, "no out-of-band data is pending", _errno.EINVAL) from None
            raise _e.error(_e.SYSTEM, f"recv(MSG_OOB) failed: {exc.strerror}", exc.errno or 0) from None

    def send_oob(self, data: BytesLike) -> int:
        """Sends ``data`` with its last byte urgent (TCP MSG_OOB): the count, or -WANT_WRITE."""
        sock = self._oob_socket()
        try:
            return sock.send(data, socket.MSG_OOB | socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return -WANT_WRITE
        except OSError as exc:
            raise _e.error(_e.SYSTEM, f"send(MSG_OOB) failed: {exc.strerror}", exc.errno or 0) from None

    def start_tls(self, tls: PureTLS, peer_name: str | None, verify_peer_name: bool, sni_enabled: bool,
                  session_from: PureConnection | None = None) -> None:
        if self.state != "established":
            raise _e.error(_e.STATE, "cannot enable crypto: the stream is not connected")
        if self._ssl is not None:
            raise _e.error(_e.TLS_ACTIVE)
        sock = self._live_sock()
        if sock.type != socket.SOCK_STREAM or self._address.transport.local:
            raise _e.error(_e.UNSUPPORTED, f"TLS needs a tcp stream, not {self._address.transport.value}")
        if self._handback:  # left over from an earlier TLS session
            raise _e.error(_e.STARTTLS_BUFFERED)
        if not tls.settings.server:  # a server's ClientHello may already be waiting
            waiting = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
            if int.from_bytes(waiting, sys.byteorder):
                raise _e.error(_e.STARTTLS_BUFFERED)
        if peer_name is not None:
            self._peer_name = peer_name
        self._verify_peer_name = verify_peer_name
        self._sni = sni_enabled
        if session_from is not None and session_from._ssl is not None:
            self._attach(tls, session_from._ssl.session, session_from)
        else:
            self._attach(tls)
        self.state = "handshaking"

    def resumable_session(self) -> ssl.SSLSession | None:
        """The TLS session, once it can be resumed (TLS 1.3: after the server's ticket)."""
        if self._ssl is None:
            return None
        session = self._ssl.session
        if session is None or not (session.has_ticket or (session.id and self._ssl.version() != "TLSv1.3")):
            return None  # a TLS 1.3 session's id is only the legacy echo
        return session

    def stop_tls(self) -> None:
        if self.state != "established" or self._ssl is None:
            raise _e.error(_e.STATE, "cannot disable crypto: TLS is not enabled")
        self.state = "tls_shutdown"

    def shutdown(self, how: int) -> bool:
        if self._ssl is not None and self.state == "established" and how != socket.SHUT_RD:
            # TLS ends its write side with close_notify: a bare FIN would read as a truncation.
            if not self._shutdown_sent:
                self._send_close_notify(None)
            try:
                if not self._flush():
                    return False
            except OSError as exc:
                self._socket_failed(exc, "TLS shutdown failed", None)
        sock = self._live_sock()
        try:
            sock.shutdown(how)
        except OSError as exc:
            raise _e.error(_e.SYSTEM, f"shutdown failed: {exc.strerror}", exc.errno or 0) from None
        return True

    def interrupt(self) -> None:
        sock = self._sock  # close() may clear it meanwhile, in the thread we wake
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # closed meanwhile
            pass

    def close(self) -> None:
        if self._ssl is not None and self.state == "established":
            if not self._shutdown_sent:
                try:  # best effort close_notify, as the C core does
                    _core(self._ssl).shutdown()
                except ssl.SSLError:
                    pass
            try:
                self._flush()
            except OSError:
                pass
        self._detach()
        if self._sock is not None:
            if self.state == "listening" and self._address.transport is Transport.UNIX:
                path = self._address.path
                if path and not path.startswith("\0"):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
            elif self._sock.type == socket.SOCK_STREAM:
                _discard_unread(self._sock)
            self._sock.close()
            self._sock = None
        self.state = "closed"

    def pending(self) -> int:
        n = len(self._handback)
        if self._ssl is not None and self.state == "established":
            n += self._ssl.pending()
        return n

    def name(self, peer: bool) -> str:
        if self._sock is None:
            return ""
        try:
            sockaddr = self._sock.getpeername() if peer else self._sock.getsockname()
        except OSError:
            return ""
        return _format_sockaddr(self._sock.family, sockaddr)

    def tls_info(self) -> TLSInfo:
        if self._ssl is None:
            return {"protocol": "", "cipher_name": "", "cipher_bits": 0, "cipher_version": "", "alpn_protocol": None,
                    "group": None, "server_name": None, "session_reused": False}
        # Mid-handshake nothing is negotiated yet: empty fields, as the C core reports them.
        name, version, bits = self._ssl.cipher() or ("", "", 0)
        return {
            "protocol": self._ssl.version() or "",
            "cipher_name": name,
            "cipher_bits": bits,
            "cipher_version": version,
            "alpn_protocol": self._ssl.selected_alpn_protocol(),
            "group": None,  # Python's ssl does not report the key-exchange group
            "server_name": getattr(self._ssl, "streamsock_sni", None) if self._ssl.server_side else None,
            "session_reused": self._ssl.session_reused,
        }

    def peer_certs(self, chain: bool) -> list[bytes]:
        """The peer's certificates, leaf first; after a failed verification, or
        during the handshake, what it sent so far."""
        if self._ssl is None:
            return []
        try:
            leaf = self._ssl.getpeercert(binary_form=True)
        except ValueError:  # the handshake is not done
            leaf = None
        if leaf and not chain:
            return [leaf]
        ders = [c.public_bytes(_ssl.ENCODING_DER) for c in _core(self._ssl).get_unverified_chain() or []]
        if leaf and (not ders or ders[0] != leaf):  # the server side's chain omits the leaf
            ders.insert(0, leaf)
        return ders if chain else ders[:1]

    def trust(self) -> tuple[int | None, str | None, bool | None]:
        """(verify result, its words, name matched) of a client's peer, as the C
        core's ss_conn_trust gives them: enforced or not; Nones when unknown."""
        if self._ssl is None or self._ssl.server_side:
            return None, None, None
        chain = self.peer_certs(True)
        if not chain:
            return None, None, None
        tls, name = self._tls, self._peer_name
        assert tls is not None  # with self._ssl
        failure = self._verify_failure
        result: tuple[int, str] | None
        if failure is not None:
            result = failure
        elif self._ssl.context.verify_mode == ssl.CERT_REQUIRED and self.state == "established":
            result = VERIFIED
        else:
            result = tls.trust.chain_result(chain)
        matched: bool | None
        if failure is not None and failure[0] in NAME_MISMATCH:
            matched = False
        elif self._check_name_in_handshake and self.state == "established":
            matched = True
        else:
            matched = tls.trust.name_matched(chain[0], name)
        return (result[0], result[1], matched) if result is not None else (None, None, matched)


def _resolve(conn: PureConnection, host: str | None, port: int | None, stype: int, passive: bool,
             context: ErrorContext) -> Sequence[_AddrInfo]:
    flags = socket.AI_NUMERICSERV | (socket.AI_PASSIVE if passive else socket.AI_ADDRCONFIG)
    try:
        try:
            return socket.getaddrinfo(host, port, socket.AF_UNSPEC, stype, 0, flags)
        except socket.gaierror as exc:
            if passive or exc.errno not in (socket.EAI_ADDRFAMILY, socket.EAI_NONAME, socket.EAI_NODATA):
                raise
            return socket.getaddrinfo(host, port, socket.AF_UNSPEC, stype, 0, flags & ~socket.AI_ADDRCONFIG)
    except socket.gaierror as exc:
        conn._fail(_e.RESOLVE, 0, f"getaddrinfo for {host} failed: {exc.strerror}", context)
    except UnicodeError as exc:
        conn._fail(_e.RESOLVE, 0, f"getaddrinfo for {host} failed: {exc}", context)


def _apply_options(context: Context, sock: socket.socket, family: int, stype: int) -> None:
    so = context.socket
    try:
        if so.get("tcp_nodelay", True) and stype == socket.SOCK_STREAM and family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if so.get("so_broadcast"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if so.get("so_reuseport"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if "ipv6_v6only" in so and family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(so["ipv6_v6only"]))
        for name, option in (("so_reuseaddr", socket.SO_REUSEADDR), ("so_keepalive", socket.SO_KEEPALIVE)):
            if name in so:
                sock.setsockopt(socket.SOL_SOCKET, option, int(so[name]))
        if stype == socket.SOCK_STREAM and family != socket.AF_UNIX:
            for name, option in (("tcp_keepidle", socket.TCP_KEEPIDLE), ("tcp_keepintvl", socket.TCP_KEEPINTVL),
                                 ("tcp_keepcnt", socket.TCP_KEEPCNT)):
                if name in so:
                    sock.setsockopt(socket.IPPROTO_TCP, option, so[name])
        if "so_linger" in so:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, so["so_linger"]))
        for name, option in (("so_rcvbuf", socket.SO_RCVBUF), ("so_sndbuf", socket.SO_SNDBUF)):
            if name in so:
                sock.setsockopt(socket.SOL_SOCKET, option, so[name])
    except OSError as exc:
        raise _e.error(_e.SYSTEM, f"setsockopt failed: {exc.strerror}", exc.errno or 0) from None


def _bind_local(context: Context, sock: socket.socket, family: socket.AddressFamily, stype: int) -> None:
    host, port = context.bindto()
    if host is None and port < 0:
        return
    # A literal of the other family: its wildcard means any local address, as
    # PHP has it since bug 74764; any other address of it cannot work.
    other = socket.AF_INET6 if family == socket.AF_INET else socket.AF_INET
    try:
        literal = socket.inet_pton(other, host) if host else None
    except OSError:
        literal = None
    if literal is not None:
        if any(literal):
            names = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}
            raise _e.error(_e.CONNECT, f"bindto {host} is an {names[other]} address and the target is {names[family]}",
                           _errno.EAFNOSUPPORT)
        host = None
    try:
        info = socket.getaddrinfo(host, max(port, 0), family, stype, 0, socket.AI_PASSIVE | socket.AI_NUMERICSERV)
        sock.bind(info[0][4])
    except socket.gaierror as exc:
        raise _e.error(_e.RESOLVE, f"bindto {host or '*'} failed: {exc.strerror}") from None
    except OSError as exc:
        raise _e.error(_e.CONNECT, f"bindto {host or '*'}:{port} failed: {exc.strerror}", exc.errno or 0) from None


def open_client(address: Address, context: Context, tls: PureTLS | None) -> PureConnection:
    return PureConnection(address, context, tls)


def adopt(fd: int, address: Address) -> PureConnection:
    """A connection over an already connected socket (a socketpair's end):
    the connection owns ``fd`` from now on, also when this fails."""
    from ..context import DEFAULT_CONTEXT

    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        raise
    sock.setblocking(False)
    return PureConnection(address, DEFAULT_CONTEXT, None, sock=sock)


def open_server(address: Address, context: Context, tls: PureTLS | None) -> PureConnection:
    conn = PureConnection(address, context, tls, sock=None)
    stype = socket.SOCK_DGRAM if address.transport.datagram else socket.SOCK_STREAM
    backlog = context.socket.get("backlog", 32) or 32
    label = f"Unable to bind to {address}"
    if address.transport.local:
        assert address.path is not None  # a unix or udg address always has its path
        sock = socket.socket(socket.AF_UNIX, stype | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.bind(address.path.encode("utf-8", "surrogateescape"))
            if stype == socket.SOCK_STREAM:
                sock.listen(backlog)
        except OSError as exc:
            sock.close()
            raise _e.error(_e.CONNECT, f"{exc.strerror}", exc.errno or 0, context=label) from None
    else:
        last = _errno.EADDRNOTAVAIL
        sock = None
        for family, socktype, proto, _, sockaddr in _resolve(conn, address.host, address.port, stype, True, label):
            candidate = socket.socket(family, socktype | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, proto)
            try:
                candidate.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                _apply_options(context, candidate, family, socktype)
                candidate.bind(sockaddr)
                if stype == socket.SOCK_STREAM:
                    candidate.listen(backlog)
            except OSError as exc:
                last = exc.errno or last
                candidate.close()
                continue
            sock = candidate
            break
        if sock is None:
            raise _e.error(_e.CONNECT, os.strerror(last), last, context=label)
    conn._sock = sock
    conn._accepted = False
    conn.state = "listening"
    return conn
