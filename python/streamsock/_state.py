"""Sans-IO stream state: what a stream knows, whatever drives it.

A :class:`StreamState` holds one connection's read buffer, end-of-stream and
timeout flags, the handshake it still owes its checks, the STARTTLS rules and
the captured certificates. It never waits and never touches a socket: the
blocking driver (``stream.py``) and the asyncio driver (``aio.py``) ask it
for a result (``read_now``, ``line_now``, ``all_now``), and when it answers
None they get more bytes their own way and ``feed`` them in. Both APIs
therefore buffer, split lines, check and report identically by construction.

The buffer is a ``bytes`` head, handed back whole when it fits a read (no
copy on the common path), and a ``bytearray`` for what a read leaves over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import errors as _e
from ._types import CryptoInfo, StreamMeta, TLSInfo
from .address import Address, Transport
from .certificate import Certificate
from .context import Context

if TYPE_CHECKING:
    from ._backend import Backend, Connection
    from ._types import ErrorContext

CHUNK = 8192  # PHP reads sockets in 8 KiB chunks
READ_CAP = 262144  # bytes a driver takes from the connection per call at most, however large the read
STREAM_TYPES = {
    Transport.UDP: "udp_socket",
    Transport.UNIX: "unix_socket",
    Transport.UDG: "udg_socket",
}


def check_shutdown_how(how: object) -> None:
    """shutdown()'s ``how`` for both drivers: SHUT_RD, SHUT_WR or SHUT_RDWR (0-2), else a ValueError as in PHP."""
    if how not in (0, 1, 2):
        raise ValueError(f"how must be one of SHUT_RD, SHUT_WR, or SHUT_RDWR, not {how!r}")


def line_end(buf: bytearray, start: int, limit: int) -> int:
    """Where the first line in ``buf`` ends (after its b"\\n", or at ``limit``
    when that comes first), or -1 when more data is needed. ``start``: where
    to look for the b"\\n" (what came before was searched already)."""
    end = buf.find(b"\n", start)
    if end >= 0:
        return end + 1 if limit < 0 else min(end + 1, limit)
    return limit if 0 <= limit <= len(buf) else -1


class StreamState:
    """One stream's state; see the module's docstring."""

    __slots__ = ("conn", "backend", "address", "context", "server_side", "head", "rest", "scanned", "eof",
                 "datagram", "timed_out", "ready", "pending_context", "peer_certificate", "peer_certificate_chain", "uri", "generic")

    def __init__(self, conn: Connection, backend: Backend, address: Address, context: Context, *,
                 server_side: bool = False, ready: bool = True) -> None:
        self.conn: Connection | None = conn                 # the backend connection; None once closed
        self.backend = backend
        self.address = address
        self.context = context
        self.server_side = server_side
        self.head = b""                   # the oldest unread bytes, as they arrived
        self.rest = bytearray()           # unread bytes after head (head is empty whenever rest is not)
        self.scanned = 0                  # bytes of rest known to hold no b"\n"
        self.eof = False                  # the peer's end of stream has been read
        self.datagram = address.transport.datagram  # an empty read is an empty datagram, not the end
        self.timed_out = False
        self.ready = ready                # False while a handshake (connect or STARTTLS) owes its checks
        self.pending_context: ErrorContext = ("Unable to connect to", address)
        self.peer_certificate: Certificate | None = None
        self.peer_certificate_chain: list[Certificate] | None = None
        self.uri: str | None = None if server_side else str(address)  # meta["uri"]: what a client stream connected to
        self.generic = False              # a socket_pair() end: PHP's "generic_socket"

    def live(self) -> Connection:
        """The connection, or ClosedError."""
        conn = self.conn
        if conn is None:
            raise _e.error(_e.CLOSED)
        return conn

    # -- reading: results now, or None when more bytes are needed -------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes a driver received; ``b""`` is the end of the stream."""
        if not data:
            self.eof = True
        elif self.rest:
            self.rest += data
        elif self.head:
            self.rest += self.head
            self.rest += data
            self.head = b""
        else:
            self.head = data

    def buffered(self) -> int:
        return len(self.head) + len(self.rest)

    def read_now(self, size: int) -> bytes | None:
        """Up to ``size`` buffered bytes, ``b""`` at the end of the stream, or
        None when the buffer is empty."""
        head = self.head
        if head:
            if len(head) <= size:
                self.head = b""
                return head
            self.rest += memoryview(head)[size:]
            self.head = b""
            return head[:size]
        rest = self.rest
        if rest:
            out = bytes(rest[:size])
            del rest[:size]
            self.scanned = 0
            return out
        if self.eof or size == 0:
            if self.datagram:
                self.eof = False
            return b""
        return None

    def peek_now(self, size: int) -> bytes | None:
        """Up to ``size`` buffered bytes, left in the buffer; ``b""`` at the
        end of the stream; None when the buffer is empty."""
        head = self.head
        if head:
            return head if len(head) <= size else head[:size]
        if self.rest:
            return bytes(self.rest[:size])
        return b"" if self.eof else None

    def line_now(self, limit: int) -> bytes | None:
        """One buffered line, its b"\\n" included, at most ``limit`` bytes (-1:
        any); at the end of the stream the last bytes without one; None when
        no whole line is buffered yet."""
        if self.head:
            self.rest += self.head
            self.head = b""
        rest = self.rest
        end = line_end(rest, self.scanned, limit)
        if end < 0:
            if not self.eof:
                self.scanned = len(rest)
                return None
            end = len(rest)
        out = bytes(rest[:end])
        del rest[:end]
        self.scanned = 0
        return out

    def all_now(self) -> bytes | None:
        """Everything up to the end of the stream, once it has arrived (until
        then it stays buffered, so a timeout or cancel loses nothing)."""
        if not self.eof:
            if self.head:
                self.rest += self.head
                self.head = b""
            return None
        out = self.head + bytes(self.rest)
        self.head = b""
        self.rest.clear()
        self.scanned = 0
        return out

    # -- TLS --------------------------------------------------------------------------------

    def after_handshake(self) -> None:
        """PHP's checks after a TLS handshake: peer_fingerprint, certificate capture."""
        self.ready = True
        ssl = self.context._ssl
        wants_chain = ssl.get("capture_peer_cert_chain", False)
        if not ("peer_fingerprint" in ssl or ssl.get("capture_peer_cert") or wants_chain):
            return  # the common case, decided without a call into the connection
        conn = self.live()
        if not conn.is_tls:
            return
        from .certificate import fingerprint_matches

        ders = conn.peer_certs(wants_chain)
        if "peer_fingerprint" in ssl:
            if not ders or not fingerprint_matches(ders[0], ssl["peer_fingerprint"]):
                conn.close()
                raise _e.error(_e.TLS_FINGERPRINT, "peer_fingerprint match failure", context=self.pending_context)
        try:
            if ssl.get("capture_peer_cert") and ders:
                self.peer_certificate = self.backend.certificate(ders[0])
            if wants_chain:
                self.peer_certificate_chain = [self.backend.certificate(d) for d in ders]
        except ValueError as exc:
            conn.close()
            raise _e.error(_e.TLS, f"the peer's certificate could not be read: {exc}",
                           context=self.pending_context) from exc

    def note_verify_failure(self, exc: BaseException) -> None:
        """A CertificateVerifyError keeps the certificate that failed (PHP keeps
        capture_peer_cert then too), as its ``peer_certificate``."""
        if not isinstance(exc, _e.CertificateVerifyError) or exc.peer_certificate is not None:
            return
        conn = self.conn
        ders = conn.peer_certs(False) if conn is not None and conn.is_tls else []
        try:
            exc.peer_certificate = self.backend.certificate(ders[0]) if ders else None
        except ValueError:
            exc.peer_certificate = None

    def begin_crypto_change(self, enable: bool, method: int | None, session_from: "StreamState | None") -> None:
        """enable_crypto's checks, then the change started on the connection: a
        STARTTLS handshake or a TLS shutdown, which the driver then drives."""
        conn = self.live()
        if not enable:
            if not conn.is_tls:
                raise _e.error(_e.STATE, "cannot disable crypto: TLS is not enabled")
            conn.stop_tls()
        else:
            if conn.is_tls:
                raise _e.error(_e.TLS_ACTIVE)
            if self.address.transport is not Transport.TCP and not self.address.secure:
                raise _e.error(_e.UNSUPPORTED,
                               f"TLS needs a tcp stream; {self.address.transport.value} streams cannot enable crypto")
            if self.buffered():
                raise _e.error(_e.STARTTLS_BUFFERED, None, 0)
            server = self.server_side if method is None else not (method & 1)
            tls = self.backend.tls_context(self.context, server, None, method)
            session = None
            if session_from is not None:
                if session_from.conn is None or not session_from.conn.is_tls:
                    raise ValueError("session_stream has no TLS session to offer: it is "
                                     + ("closed" if session_from.conn is None else "a plaintext stream"))
                # A resumed session skips certificate checks: only for the same peer.
                if session_from.context.peer_name(session_from.address) != self.context.peer_name(self.address):
                    raise ValueError("session_stream was made for another peer name")
                session = session_from.conn
            conn.start_tls(tls, self.context.peer_name(self.address), self.context.verify_peer_name,
                           self.context.sni_enabled, session)
        self.eof = False  # what follows the change is another stream of bytes
        self.pending_context = "Failed to enable crypto"
        self.ready = False  # until done, any read or write finishes it and runs the checks

    # -- what the stream reports ----------------------------------------------------------------

    def crypto(self) -> CryptoInfo | None:
        """The negotiated TLS parameters, or None on a plaintext stream."""
        conn = self.conn
        if conn is None or not conn.is_tls or conn.state != "established":
            return None
        info = conn.tls_info()
        crypto = CryptoInfo(protocol=info["protocol"], cipher_name=info["cipher_name"], cipher_bits=info["cipher_bits"],
                            cipher_version=info["cipher_version"])
        if info["alpn_protocol"]:
            crypto["alpn_protocol"] = info["alpn_protocol"]
        return crypto

    def tls_info(self) -> TLSInfo | None:
        conn = self.conn
        if conn is None or not conn.is_tls:
            return None
        return conn.tls_info()

    def meta(self, blocking: bool) -> StreamMeta:
        """PHP's stream_get_meta_data."""
        unread = self.buffered()
        meta: StreamMeta = {
            "timed_out": self.timed_out,
            "blocked": blocking,
            "eof": self.eof and not unread,
            "stream_type": "generic_socket" if self.generic else STREAM_TYPES.get(self.address.transport,
                                                                                    "tcp_socket/ssl"),
            "mode": "r+",
            "unread_bytes": unread,
            "seekable": False,
        }
        if self.uri is not None:
            meta["uri"] = self.uri
        crypto = self.crypto()
        if crypto is not None:
            meta["crypto"] = crypto
        return meta

    def pending(self) -> int:
        """Bytes readable without touching the socket (ours plus the connection's)."""
        conn = self.conn
        return 0 if conn is None else self.buffered() + conn.pending()

    def name(self, peer: bool) -> str:
        conn = self.conn
        return conn.name(peer) if conn is not None else ""

    def describe(self) -> str:
        return "closed" if self.conn is None else self.conn.state


class StateViews:
    """What a stream reports, read from its ``_st`` (a StreamState): the same
    properties for the blocking Stream and for AsyncStream."""

    __slots__ = ()
    _st: StreamState

    @property
    def address(self) -> Address:
        return self._st.address

    @property
    def context(self) -> Context:
        return self._st.context

    @property
    def eof(self) -> bool:
        """True once the peer has closed and the buffer is drained (PHP's feof)."""
        return self._st.eof and not self._st.buffered()

    @property
    def closed(self) -> bool:
        return self._st.conn is None

    def fileno(self) -> int:
        return self._st.live().fileno()

    def buffered(self) -> int:
        """Bytes readable without touching the socket (our buffer plus TLS's)."""
        return self._st.pending()

    @property
    def local_name(self) -> str:
        """Local address, PHP's stream_socket_get_name(s, false): "127.0.0.1:5000", "[::1]:5000"."""
        return self._st.name(False)

    @property
    def peer_name(self) -> str:
        """Remote address, PHP's stream_socket_get_name(s, true)."""
        return self._st.name(True)

    @property
    def crypto(self) -> CryptoInfo | None:
        """The negotiated TLS parameters, or None on a plaintext stream."""
        return self._st.crypto()

    @property
    def tls_info(self) -> TLSInfo | None:
        """Everything known of the TLS session (key-exchange group, SNI, reuse) or None."""
        return self._st.tls_info()

    @property
    def peer_certificate(self) -> Certificate | None:
        """The peer's Certificate when the context had capture_peer_cert."""
        return self._st.peer_certificate

    @property
    def peer_certificate_chain(self) -> list[Certificate] | None:
        """The peer's certificates, leaf first, when capture_peer_cert_chain was set."""
        return self._st.peer_certificate_chain
