"""Real network peers for the connection tests, all on loopback.

Everything here listens on 127.0.0.1 / ::1, on unix sockets in a short temporary
directory, or on abstract unix names.  Every peer is a context manager: entering
it starts it, leaving it stops its threads (joined with a timeout), closes every
socket it opened and kills/waits any subprocess, so the fd-leak check in
conftest.py stays quiet.  Function-scoped fixtures at the bottom wrap the peers
in ``with``.

Registered as a pytest plugin (``pytest_plugins = ["peers"]``); it can also be
imported directly (``import peers``) for the classes and helpers.

Overview
--------
PKI (session fixture ``pki``)      trustme CA + leaf certificates written to files
PyTLSServer                        stdlib ``ssl`` server: echo / greeting / close modes,
                                   records SNI, ALPN, version, client cert, bytes
OpenSSLServer                      ``openssl s_server`` subprocess (www / rev / sink)
run_s_client()                     ``openssl s_client`` one-shot, for our server side
SMTPStartTLSServer                 SMTP-ish STARTTLS server (+ injection, + STOPTLS downgrade)
SilentServer                       accepts, never sends (handshake timeouts)
FullBacklogListener                listener whose accept queue is full (connect timeouts)
refused_port()                     a port with nothing listening (ECONNREFUSED)
UDPEchoServer / UnixEchoServer / UdgEchoServer   echo peers
RawServer(script)                  runs script(conn) per connection; scripts
                                   close_after_client_hello, send_garbage, reset_mid_handshake,
                                   starttls_script (smtp, imap, pop3, ftp)
"""

from __future__ import annotations

import _socket
import contextlib
import dataclasses
import datetime
import errno
import ipaddress
import os
import re
import select
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import types
import uuid
from typing import Callable, Iterable, NamedTuple, Optional, Sequence, Union

import pytest
import trustme

__all__ = [
    "LOOPBACK4", "LOOPBACK6", "has_ipv6", "requires_ipv6", "format_address", "short_tempdir",
    "CertKey", "PKI", "build_pki",
    "ConnectionRecord", "TLSConnectionRecord", "SMTPConnectionRecord",
    "PyTLSServer", "OpenSSLServer", "SClientResult", "run_s_client",
    "SMTPStartTLSServer", "SilentServer", "FullBacklogListener", "refused_port",
    "UDPEchoServer", "UnixEchoServer", "UdgEchoServer",
    "RawServer", "close_after_client_hello", "send_garbage", "reset_mid_handshake",
    "garbage_script", "GARBAGE", "STARTTLS_DIALOGUES", "starttls_script",
]

LOOPBACK4 = "127.0.0.1"
LOOPBACK6 = "::1"

#: How long a peer waits for its threads when it stops.
JOIN_TIMEOUT = 5.0
#: Default per-operation timeout on server-side connection sockets.
IO_TIMEOUT = 10.0


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------

_ipv6_cache: Optional[bool] = None


def has_ipv6() -> bool:
    """True when a socket can be bound to ::1 on this machine."""
    global _ipv6_cache
    if _ipv6_cache is None:
        ok = False
        if socket.has_ipv6:
            try:
                with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
                    s.bind((LOOPBACK6, 0))
                ok = True
            except OSError:
                ok = False
        _ipv6_cache = ok
    return _ipv6_cache


requires_ipv6 = pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback (::1)")


def _family_for(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def format_address(host: str, port: int) -> str:
    """"127.0.0.1:PORT" or "[::1]:PORT"."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@contextlib.contextmanager
def short_tempdir(prefix: str = "ss-"):
    """A short temporary directory under /tmp (unix socket paths are limited to 107 bytes)."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _tls_version(value) -> Optional[ssl.TLSVersion]:
    """Accept None, an ssl.TLSVersion, or "1.2" / "TLSv1.3" / "tls1_2"-style strings."""
    if value is None or isinstance(value, ssl.TLSVersion):
        return value
    text = str(value).strip().lower().replace("tlsv", "").replace("tls", "").replace("_", ".").strip(". v")
    table = {
        "1": ssl.TLSVersion.TLSv1, "1.0": ssl.TLSVersion.TLSv1, "1.1": ssl.TLSVersion.TLSv1_1,
        "1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3,
    }
    try:
        return table[text]
    except KeyError:
        raise ValueError(f"unknown TLS version {value!r}") from None


def _wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _hard_shutdown(sock) -> None:
    """shutdown(SHUT_RDWR) at the socket level, bypassing SSLSocket's override (which
    would tear down the SSL object under a thread that is still using it)."""
    try:
        _socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError, TypeError):
        pass


class _Peer:
    """Context-manager protocol shared by all peers: __enter__ -> start(), __exit__ -> close();
    and their address: ``address`` ("127.0.0.1:PORT" / "[::1]:PORT"), ``url(scheme)``."""

    scheme = "tcp"  # url()'s default

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    def url(self, scheme: Optional[str] = None) -> str:
        return f"{scheme or self.scheme}://{self.address}"

    def start(self):  # pragma: no cover - overridden
        return self

    def close(self) -> None:  # pragma: no cover - overridden
        pass

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------
# PKI
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CertKey:
    """A certificate (chain) file and its private key file, both PEM."""

    certfile: str
    keyfile: str

    @property
    def cert_pem(self) -> bytes:
        """The leaf certificate (first PEM block of certfile)."""
        text = open(self.certfile, "rb").read()
        end = b"-----END CERTIFICATE-----"
        return text[: text.index(end) + len(end)] + b"\n"

    @property
    def der(self) -> bytes:
        """The leaf certificate as DER (what SSLSocket.getpeercert(True) returns)."""
        return ssl.PEM_cert_to_DER_cert(self.cert_pem.decode("ascii"))

    def __iter__(self):  # allows ``certfile, keyfile = pki.client``
        return iter((self.certfile, self.keyfile))


@dataclasses.dataclass
class PKI:
    """Certificates for the TLS tests.  All files live in ``directory``.

    ca / cafile             the trusted test CA (trustme) and its PEM file
    server_cert             localhost, 127.0.0.1, ::1 - signed by ca
    wrong_host              wrong.example only - signed by ca
    expired                 localhost, 127.0.0.1, ::1 - signed by ca, notAfter in the past
    self_signed             localhost, 127.0.0.1, ::1 - self-signed leaf (CA:FALSE)
    untrusted               localhost, 127.0.0.1, ::1 - signed by other_ca (not in cafile)
    client                  client cert, CN/SAN client.example - signed by ca
    sni_alt                 alt.example - signed by ca (second certificate for SNI tests)
    other_ca / other_cafile the second, untrusted CA
    """

    directory: str
    ca: trustme.CA
    cafile: str
    server_cert: CertKey
    wrong_host: CertKey
    expired: CertKey
    self_signed: CertKey
    untrusted: CertKey
    client: CertKey
    sni_alt: CertKey
    other_ca: trustme.CA
    other_cafile: str

    @property
    def server_certfile(self) -> str:
        return self.server_cert.certfile

    @property
    def server_keyfile(self) -> str:
        return self.server_cert.keyfile

    def client_context(self, cafile: Optional[str] = None, *, cert: Optional[CertKey] = None,
                       alpn: Optional[Sequence[str]] = None) -> ssl.SSLContext:
        """A verifying stdlib client context trusting ``cafile`` (default: the test CA)."""
        ctx = ssl.create_default_context(cafile=cafile or self.cafile)
        if cert is not None:
            ctx.load_cert_chain(cert.certfile, cert.keyfile)
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        return ctx

    def server_context(self, cert: Optional[CertKey] = None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert = cert or self.server_cert
        ctx.load_cert_chain(cert.certfile, cert.keyfile)
        return ctx


SERVER_NAMES = ("localhost", "127.0.0.1", "::1")


def _write_leaf(directory: str, name: str, leaf: trustme.LeafCert) -> CertKey:
    certfile = os.path.join(directory, f"{name}.pem")
    keyfile = os.path.join(directory, f"{name}.key")
    with open(certfile, "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    leaf.private_key_pem.write_to_path(keyfile)
    return CertKey(certfile, keyfile)


def _self_signed_leaf(directory: str, name: str, identities: Iterable[str]) -> CertKey:
    """A self-signed end-entity certificate (trustme only issues from a CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "streamsock tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
    ])
    sans = []
    for ident in identities:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ident)))
        except ValueError:
            sans.append(x509.DNSName(ident))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    certfile = os.path.join(directory, f"{name}.pem")
    keyfile = os.path.join(directory, f"{name}.key")
    with open(certfile, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(keyfile, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return CertKey(certfile, keyfile)


def build_pki(directory: str) -> PKI:
    """Generate every certificate into ``directory`` (must exist)."""
    directory = str(directory)
    ca = trustme.CA()
    cafile = os.path.join(directory, "ca.pem")
    ca.cert_pem.write_to_path(cafile)

    other_ca = trustme.CA()
    other_cafile = os.path.join(directory, "other-ca.pem")
    other_ca.cert_pem.write_to_path(other_cafile)

    now = datetime.datetime.now(datetime.timezone.utc)
    return PKI(
        directory=directory,
        ca=ca,
        cafile=cafile,
        server_cert=_write_leaf(directory, "server", ca.issue_cert(*SERVER_NAMES, common_name="localhost")),
        wrong_host=_write_leaf(directory, "wrong-host", ca.issue_cert("wrong.example", common_name="wrong.example")),
        expired=_write_leaf(directory, "expired", ca.issue_cert(
            *SERVER_NAMES, common_name="localhost",
            not_before=now - datetime.timedelta(days=60), not_after=now - datetime.timedelta(days=1))),
        self_signed=_self_signed_leaf(directory, "self-signed", SERVER_NAMES),
        untrusted=_write_leaf(directory, "untrusted", other_ca.issue_cert(*SERVER_NAMES, common_name="localhost")),
        client=_write_leaf(directory, "client", ca.issue_cert("client.example", common_name="client.example")),
        sni_alt=_write_leaf(directory, "sni-alt", ca.issue_cert("alt.example", common_name="alt.example")),
        other_ca=other_ca,
        other_cafile=other_cafile,
    )


# ---------------------------------------------------------------------------
# threaded stream-server base
# ---------------------------------------------------------------------------

class ConnectionRecord:
    """What a server saw on one accepted connection.

    peer        the client's address as returned by accept()
    received    every byte the server read (application data, after TLS if any)
    sent        every byte the server wrote
    error       the exception that ended the handler, if any
    finished    threading.Event set when the handler is done and the socket closed
    result      return value of a RawServer script
    """

    def __init__(self, sock, peer):
        self._lock = threading.Lock()
        self._sock = sock
        self.peer = peer
        self.received = bytearray()
        self.sent = bytearray()
        self.error: Optional[BaseException] = None
        self.result = None
        self.finished = threading.Event()

    # -- socket ownership: the handler thread owns the socket; stop() may only
    #    shut it down (to wake the handler), under the lock, never close it.
    @property
    def sock(self):
        return self._sock

    def _swap(self, make):
        """Replace the socket by make(old) under the lock (used for wrap_socket)."""
        with self._lock:
            self._sock = make(self._sock)
            return self._sock

    def _abort(self) -> None:
        with self._lock:
            if self._sock is not None:
                _hard_shutdown(self._sock)

    def _close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass

    def _send(self, data: bytes) -> None:
        self._sock.sendall(data)
        self.sent += data

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} peer={self.peer!r} received={bytes(self.received)[:60]!r} "
                f"error={self.error!r} finished={self.finished.is_set()}>")


class TLSConnectionRecord(ConnectionRecord):
    """ConnectionRecord plus what the TLS handshake negotiated.

    sni              server name the client sent (None if none)
    alpn             negotiated ALPN protocol (None if none)
    version          "TLSv1.2" / "TLSv1.3"
    cipher           SSLSocket.cipher() tuple
    client_cert_der  the client's certificate in DER, or None
    handshake_error  exception raised by the server-side handshake, or None
    handshake_done   Event, set once the handshake finished (successfully or not)
    """

    def __init__(self, sock, peer):
        super().__init__(sock, peer)
        self.sni: Optional[str] = None
        self.alpn: Optional[str] = None
        self.version: Optional[str] = None
        self.cipher = None
        self.client_cert_der: Optional[bytes] = None
        self.handshake_error: Optional[BaseException] = None
        self.handshake_done = threading.Event()


class _StreamServer(_Peer):
    """Accept loop in one thread, one handler thread per connection."""

    record_class = ConnectionRecord

    def __init__(self, host: str = LOOPBACK4, port: int = 0, *, family: Optional[int] = None,
                 unix_address: Union[str, bytes, None] = None, backlog: int = 64,
                 io_timeout: float = IO_TIMEOUT):
        self.host = host
        self._requested_port = port
        self.family = socket.AF_UNIX if unix_address is not None else (family or _family_for(host))
        self._unix_address = unix_address
        self.backlog = backlog
        self.io_timeout = io_timeout
        self.connections: list = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: Optional[socket.socket] = None
        self._accept_thread: Optional[threading.Thread] = None
        self._threads: list[threading.Thread] = []
        self._closed = False

    # -- public -------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._sockname[1]

    def wait_for_connections(self, n: int = 1, timeout: float = 5.0, *, finished: bool = True) -> list:
        """Wait until at least n connections were accepted (and, by default, their handlers
        finished); returns the connection records.  Raises AssertionError on timeout."""
        def ready():
            with self._lock:
                conns = list(self.connections)
            return len(conns) >= n and (not finished or all(c.finished.is_set() for c in conns[:n]))
        if not _wait_until(ready, timeout):
            raise AssertionError(f"{type(self).__name__}: expected {n} connection(s), have {self.connections!r}")
        with self._lock:
            return list(self.connections)

    # -- lifecycle ----------------------------------------------------------
    def _bind(self) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            if self.family == socket.AF_UNIX:
                sock.bind(self._unix_address)
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self.family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((self.host, self._requested_port))
            sock.listen(self.backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def start(self):
        self._listener = self._bind()
        self._sockname = self._listener.getsockname()
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"{type(self).__name__}-accept",
                                               daemon=True)
        self._accept_thread.start()
        return self

    def _accept_loop(self) -> None:
        listener = self._listener
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([listener], [], [], 0.05)
            except (OSError, ValueError):
                return
            if not readable:
                continue
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError:
                return
            conn.settimeout(self.io_timeout)
            record = self.record_class(conn, peer)
            with self._lock:
                if self._stop.is_set():
                    conn.close()
                    return
                self.connections.append(record)
                thread = threading.Thread(target=self._run_handler, args=(record,), daemon=True,
                                          name=f"{type(self).__name__}-conn{len(self.connections)}")
                self._threads.append(thread)
            thread.start()

    def _run_handler(self, record: ConnectionRecord) -> None:
        try:
            record.result = self._handle(record)
        except BaseException as exc:  # recorded, tests inspect it
            if record.error is None:
                record.error = exc
        finally:
            record._close()
            record.finished.set()

    def _handle(self, record: ConnectionRecord):  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._accept_thread is not None:
            self._accept_thread.join(JOIN_TIMEOUT)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            records = list(self.connections)
            threads = list(self._threads)
        for record in records:
            record._abort()
        deadline = time.monotonic() + JOIN_TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for record in records:  # only matters if a handler thread is stuck
            record._close()
        self._cleanup()

    def _cleanup(self) -> None:
        pass


def _recv_until_eof(sock, timeout: float) -> bytes:
    """Read and discard until EOF, error or timeout; returns what was read."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (OSError, ValueError):
        pass
    return bytes(data)


# ---------------------------------------------------------------------------
# PyTLSServer
# ---------------------------------------------------------------------------

class PyTLSServer(_StreamServer):
    """A TLS server built on the stdlib ``ssl`` module, one thread per connection.

    PyTLSServer(certfile, keyfile, host="127.0.0.1", port=0, *, family=None,
                alpn=None, request_client_cert=False, require_client_cert=False, cafile=None,
                min_version=None, max_version=None, mode="echo", greeting=GREETING,
                sni_certs=None, handshake_timeout=10, io_timeout=10)

    mode:
      "echo"                   echo application data until the client closes
      "greeting"               send ``greeting`` right after the handshake, then echo
      "close_after_handshake"  close the TCP connection right after the handshake
                               (no close_notify: the client sees an unexpected EOF)
      "shutdown_after_handshake" send close_notify, then close (a clean TLS EOF)

    request_client_cert asks for a client certificate (CERT_OPTIONAL) verified
    against ``cafile``; require_client_cert makes it mandatory (CERT_REQUIRED).
    sni_certs maps a server name to a CertKey / (certfile, keyfile): when the
    client sends that SNI the server switches to that certificate.
    min_version / max_version: ssl.TLSVersion or "1.2" / "1.3".

    ``connections`` is a list of TLSConnectionRecord, one per accepted connection.
    """

    record_class = TLSConnectionRecord
    GREETING = b"HELLO from PyTLSServer\r\n"
    MODES = ("echo", "greeting", "close_after_handshake", "shutdown_after_handshake")

    def __init__(self, certfile: str, keyfile: Optional[str] = None, host: str = LOOPBACK4, port: int = 0, *,
                 family: Optional[int] = None, alpn: Optional[Sequence[str]] = None,
                 request_client_cert: bool = False, require_client_cert: bool = False,
                 cafile: Optional[str] = None, min_version=None, max_version=None,
                 mode: str = "echo", greeting: bytes = GREETING, sni_certs: Optional[dict] = None,
                 handshake_timeout: float = IO_TIMEOUT, io_timeout: float = IO_TIMEOUT):
        super().__init__(host, port, family=family, io_timeout=io_timeout)
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}")
        self.mode = mode
        self.greeting = greeting
        self.handshake_timeout = handshake_timeout
        self.context = self._make_context(certfile, keyfile, alpn, request_client_cert or require_client_cert,
                                          require_client_cert, cafile, min_version, max_version)
        self._sni_contexts = {}
        for name, pair in (sni_certs or {}).items():
            cert, key = tuple(pair)
            self._sni_contexts[name.lower()] = self._make_context(
                cert, key, alpn, request_client_cert or require_client_cert, require_client_cert, cafile,
                min_version, max_version)
        self.context.sni_callback = self._on_sni

    @staticmethod
    def _make_context(certfile, keyfile, alpn, want_cert, need_cert, cafile, min_version, max_version):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        if want_cert:
            if cafile is None:
                raise ValueError("request_client_cert needs cafile")
            ctx.load_verify_locations(cafile)
            ctx.verify_mode = ssl.CERT_REQUIRED if need_cert else ssl.CERT_OPTIONAL
        if min_version is not None:
            ctx.minimum_version = _tls_version(min_version)
        if max_version is not None:
            ctx.maximum_version = _tls_version(max_version)
        return ctx

    def _on_sni(self, sslsock, server_name, ctx):
        record = getattr(sslsock, "_peers_record", None)
        if record is not None:
            record.sni = server_name
        if server_name is not None and server_name.lower() in self._sni_contexts:
            sslsock.context = self._sni_contexts[server_name.lower()]
        return None

    def _handle(self, record: TLSConnectionRecord):
        def wrap(raw):
            tls = self.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            tls._peers_record = record
            return tls
        tls = record._swap(wrap)
        tls.settimeout(self.handshake_timeout)
        try:
            tls.do_handshake()
        except BaseException as exc:
            record.handshake_error = exc
            record.handshake_done.set()
            return None
        record.version = tls.version()
        record.alpn = tls.selected_alpn_protocol()
        record.cipher = tls.cipher()
        record.client_cert_der = tls.getpeercert(binary_form=True)
        record.handshake_done.set()
        tls.settimeout(self.io_timeout)

        if self.mode == "close_after_handshake":
            return None
        if self.mode == "shutdown_after_handshake":
            _tls_close_notify(tls, 1.0)
            return None
        if self.mode == "greeting":
            record._send(self.greeting)
        while True:
            data = tls.recv(65536)
            if not data:
                break
            record.received += data
            record._send(data)
        return None


def _tls_close_notify(tls: ssl.SSLSocket, timeout: float) -> None:
    """Send close_notify and wait (briefly) for the peer's; errors are ignored."""
    try:
        tls.settimeout(timeout)
        tls.unwrap()
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------------------
# openssl s_server / s_client
# ---------------------------------------------------------------------------

_ACCEPT_RE = re.compile(rb"^ACCEPT (\S+):(\d+)\s*$", re.M)


class OpenSSLServer(_Peer):
    """``openssl s_server`` in a subprocess, listening on loopback with an OS-chosen port.

    OpenSSLServer(certfile, keyfile, *, host="127.0.0.1", mode="www", tls_version=None,
                  alpn=None, servername=None, cert2=None, key2=None,
                  verify_cafile=None, require_client_cert=True, verify_depth=1,
                  naccept=None, extra_args=(), ready_timeout=10, line_buffered=True,
                  openssl="openssl")

    mode:
      "www"   answers "GET / HTTP/1.0\\r\\n\\r\\n" with "HTTP/1.0 200 ok" + an HTML status page
              (which lists the client certificate, if any) and closes the connection
      "rev"   echo server that returns each received line reversed ("hello\\n" -> "olleh\\n");
              it never closes on its own
      "sink"  s_server's interactive mode: received application data is written to its
              stdout (see .stdout); ``send(data)`` writes to its stdin, which s_server
              sends to the client.  stdin is kept open (EOF on stdin makes s_server
              drop the connection, even with -ign_eof).
    tls_version "1.2" / "1.3" -> -tls1_2 / -tls1_3.
    servername + cert2/key2   -> -servername/-cert2/-key2: that SNI gets cert2.
    verify_cafile             -> -Verify N (or -verify N if not require_client_cert)
                                 -CAfile FILE -verify_return_error
    naccept                   -> -naccept N (s_server exits after N connections).

    Readiness: s_server (3.0) prints "ACCEPT 127.0.0.1:PORT" on stdout right after
    listen(), with the real port when given port 0; start() waits (bounded) for that
    line.  No probe connection is made because it would count against -naccept.
    """

    scheme = "tls"

    MODES = ("www", "rev", "sink")

    def __init__(self, certfile: str, keyfile: Optional[str] = None, *, host: str = LOOPBACK4,
                 mode: str = "www", tls_version=None, alpn: Union[str, Sequence[str], None] = None,
                 servername: Optional[str] = None, cert2: Optional[str] = None, key2: Optional[str] = None,
                 verify_cafile: Optional[str] = None, require_client_cert: bool = True, verify_depth: int = 1,
                 naccept: Optional[int] = None, extra_args: Sequence[str] = (), ready_timeout: float = 10.0,
                 line_buffered: bool = True, openssl: str = "openssl"):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}")
        if servername is not None and cert2 is None:
            raise ValueError("servername needs cert2 (s_server would look for ./server2.pem)")
        self.host = host
        self.mode = mode
        self.ready_timeout = ready_timeout
        args = [openssl, "s_server", "-accept", format_address(host, 0), "-cert", certfile]
        if keyfile:
            args += ["-key", keyfile]
        if mode == "www":
            args.append("-www")
        elif mode == "rev":
            args.append("-rev")
        if tls_version is not None:
            version = _tls_version(tls_version)
            flag = {ssl.TLSVersion.TLSv1_2: "-tls1_2", ssl.TLSVersion.TLSv1_3: "-tls1_3",
                    ssl.TLSVersion.TLSv1_1: "-tls1_1", ssl.TLSVersion.TLSv1: "-tls1"}[version]
            args.append(flag)
        if alpn:
            args += ["-alpn", alpn if isinstance(alpn, str) else ",".join(alpn)]
        if servername is not None:
            args += ["-servername", servername, "-cert2", cert2]
            if key2:
                args += ["-key2", key2]
        if verify_cafile is not None:
            args += ["-Verify" if require_client_cert else "-verify", str(verify_depth),
                     "-CAfile", verify_cafile, "-verify_return_error"]
        if naccept is not None:
            args += ["-naccept", str(naccept)]
        args += list(extra_args)
        self.args = args
        # s_server's stdout is a stdio stream: block-buffered when it is not a tty, so its
        # per-connection log lines ("Hostname in TLS extension", "ALPN protocols selected",
        # "Switching server context.") would only show up when it exits.  stdbuf -oL makes
        # it line-buffered (stdbuf execs openssl: same pid).
        stdbuf = shutil.which("stdbuf") if line_buffered else None
        self.command = ([stdbuf, "-oL"] if stdbuf else []) + args
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None
        self._out = None
        self._err = None
        self._final_out: Optional[bytes] = None
        self._final_err: Optional[bytes] = None
        self._closed = False

    @property
    def stdout(self) -> bytes:
        """Everything s_server wrote to stdout so far."""
        if self._final_out is not None:
            return self._final_out
        return _read_all(self._out)

    @property
    def stderr(self) -> bytes:
        if self._final_err is not None:
            return self._final_err
        return _read_all(self._err)

    @property
    def returncode(self) -> Optional[int]:
        return None if self.proc is None else self.proc.poll()

    def start(self):
        self._out = tempfile.TemporaryFile()
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            self.command, stdin=subprocess.PIPE if self.mode == "sink" else subprocess.DEVNULL,
            stdout=self._out, stderr=self._err, close_fds=True)
        deadline = time.monotonic() + self.ready_timeout
        while True:
            match = _ACCEPT_RE.search(_read_all(self._out))
            if match:
                self.port = int(match.group(2))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"openssl s_server exited with {self.proc.returncode}: "
                                   f"{self.stderr.decode(errors='replace')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"openssl s_server not ready after {self.ready_timeout}s: "
                                   f"{self.stdout!r} {self.stderr!r}")
            time.sleep(0.005)

    def send(self, data: bytes) -> None:
        """("sink" mode) write to s_server's stdin; it forwards the bytes to the client."""
        assert self.proc is not None and self.proc.stdin is not None, "send() needs mode='sink'"
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def wait_for_output(self, needle: bytes, timeout: float = 5.0, *, stream: str = "any") -> bytes:
        """Wait until ``needle`` appears in "stdout", "stderr" or "any" (stdout + stderr: where
        s_server logs depends on the mode, e.g. -rev logs connection details to stderr,
        -www to stdout); returns that stream's text."""
        get = {"stdout": lambda: self.stdout, "stderr": lambda: self.stderr,
               "any": lambda: self.stdout + self.stderr}[stream]
        if not _wait_until(lambda: needle in get(), timeout):
            raise AssertionError(f"{needle!r} not in s_server {stream}: {get()!r}")
        return get()

    def wait(self, timeout: float = 5.0) -> int:
        """Wait for s_server to exit by itself (e.g. after -naccept)."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            try:
                self.proc.wait(JOIN_TIMEOUT)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
            if self.proc.stdin is not None:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
        if self._out is not None:
            self._final_out = _read_all(self._out)
            self._out.close()
        if self._err is not None:
            self._final_err = _read_all(self._err)
            self._err.close()


def _read_all(f) -> bytes:
    if f is None or f.closed:
        return b""
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(f.fileno(), 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


class SClientResult(NamedTuple):
    returncode: int  # negative (-9) if it had to be killed at the timeout
    stdout: bytes
    stderr: bytes


def run_s_client(host: str, port: int, *args: str, input_bytes: bytes = b"", timeout: float = 10.0,
                 servername: Union[str, bool, None] = None, cafile: Optional[str] = None,
                 verify_return_error: bool = True, verify_hostname: Optional[str] = None,
                 wait_for: Optional[bytes] = None, openssl: str = "openssl") -> SClientResult:
    """Run ``openssl s_client -connect host:port`` once and return (returncode, stdout, stderr).

    servername      -servername NAME; False -> -noservername; None -> s_client's default
                    (OpenSSL 3 sends the -connect host as SNI when it is a name, not an IP)
    cafile          -CAfile FILE
    verify_return_error  abort the handshake on a verification failure (exit code 1)
    verify_hostname -verify_hostname NAME (or -verify_ip for an address): s_client does NOT
                    check the host name unless told to
    input_bytes     written to s_client's stdin (sent to the server after the handshake)
    wait_for        keep stdin open until these bytes appear in stdout (or timeout).
                    s_client hangs up as soon as its stdin hits EOF, which can be before
                    the server's answer arrives; use wait_for (or pass "-ign_eof" and let
                    the server close) to capture a response.
    *args           extra s_client options, e.g. "-tls1_2", "-alpn", "h2", "-cert", f, "-key", k
    """
    cmd = [openssl, "s_client", "-connect", format_address(host, port)]
    if servername is False:
        cmd.append("-noservername")
    elif servername:
        cmd += ["-servername", servername]
    if cafile:
        cmd += ["-CAfile", cafile]
    if verify_return_error:
        cmd.append("-verify_return_error")
    if verify_hostname:
        try:
            ipaddress.ip_address(verify_hostname)
            cmd += ["-verify_ip", verify_hostname]
        except ValueError:
            cmd += ["-verify_hostname", verify_hostname]
    cmd += list(args)
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, close_fds=True)
        try:
            try:
                if input_bytes:
                    proc.stdin.write(input_bytes)
                    proc.stdin.flush()
                if wait_for is not None:
                    _wait_until(lambda: wait_for in _read_all(out) or proc.poll() is not None,
                                max(0.0, deadline - time.monotonic()))
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(JOIN_TIMEOUT)
        finally:
            if proc.poll() is None:  # pragma: no cover
                proc.kill()
                proc.wait(JOIN_TIMEOUT)
        return SClientResult(proc.returncode, _read_all(out), _read_all(err))


# ---------------------------------------------------------------------------
# SMTP STARTTLS
# ---------------------------------------------------------------------------

class SMTPConnectionRecord(ConnectionRecord):
    """What SMTPStartTLSServer saw, per phase (lines without CRLF).

    plain_lines               lines before STARTTLS (STARTTLS itself included)
    pipelined_after_starttls  bytes that arrived together with/after the STARTTLS line before
                              the server answered (discarded, as RFC 3207 requires)
    tls_lines                 lines received over TLS
    pipelined_after_stoptls   TLS bytes buffered behind STOPTLS (discarded)
    plain_after_lines         lines received in plaintext after the STOPTLS downgrade
    starttls / downgraded     bools: reached those phases
    sni / version / alpn / handshake_error / handshake_done  as in TLSConnectionRecord
    """

    def __init__(self, sock, peer):
        super().__init__(sock, peer)
        self.plain_lines: list[bytes] = []
        self.pipelined_after_starttls = b""
        self.tls_lines: list[bytes] = []
        self.pipelined_after_stoptls = b""
        self.plain_after_lines: list[bytes] = []
        self.starttls = False
        self.downgraded = False
        self.sni: Optional[str] = None
        self.version: Optional[str] = None
        self.alpn: Optional[str] = None
        self.handshake_error: Optional[BaseException] = None
        self.handshake_done = threading.Event()
        self.quit = False


class _LineReader:
    def __init__(self, sock, record: ConnectionRecord):
        self.sock = sock
        self.record = record
        self.buf = bytearray()

    def readline(self, limit: int = 65536) -> Optional[bytes]:
        """One line without its line ending, or None at EOF."""
        while b"\n" not in self.buf:
            if len(self.buf) > limit:
                raise ValueError("line too long")
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.record.received += chunk
            self.buf += chunk
        index = self.buf.index(b"\n")
        line = bytes(self.buf[:index])
        del self.buf[: index + 1]
        return line.rstrip(b"\r")

    def take(self) -> bytes:
        data = bytes(self.buf)
        self.buf.clear()
        return data


class SMTPStartTLSServer(_StreamServer):
    """A small SMTP-like server with STARTTLS (and optionally STOPTLS), thread per connection.

    SMTPStartTLSServer(certfile, keyfile, host="127.0.0.1", port=0, *, inject=b"",
                       downgrade=False, min_version=None, max_version=None, alpn=None,
                       io_timeout=10)

    plaintext:  -> "220 localhost ESMTP test"
                EHLO/HELO x -> "250-localhost" "250 STARTTLS";  QUIT -> "221 bye", close
                STARTTLS -> "220 Ready to start TLS" (+ ``inject`` in the same send()),
                            then the TLS handshake (server side)
                anything else -> "250 " + line
    over TLS:   EHLO/HELO -> "250 localhost";  QUIT -> "221 bye", close_notify, close
                STOPTLS   -> with downgrade=True: "220 plaintext again" over TLS, TLS shutdown
                             (SSLSocket.unwrap(): close_notify both ways), then plaintext;
                             without: "502 STOPTLS not supported"
                anything else -> "250 " + line
    after STOPTLS (plaintext): QUIT -> "221 bye", close;  anything else -> "250 plain " + line

    ``inject``: plaintext bytes pipelined right behind "220 Ready to start TLS\\r\\n" in the
    same segment (a STARTTLS command-injection attack): a correct client must notice the
    extra buffered plaintext and refuse to go on.
    """

    record_class = SMTPConnectionRecord
    BANNER = b"220 localhost ESMTP test\r\n"
    EHLO_PLAIN = b"250-localhost\r\n250 STARTTLS\r\n"
    READY = b"220 Ready to start TLS\r\n"
    EHLO_TLS = b"250 localhost\r\n"
    BYE = b"221 bye\r\n"
    PLAIN_AGAIN = b"220 plaintext again\r\n"
    NO_STOPTLS = b"502 STOPTLS not supported\r\n"

    def __init__(self, certfile: str, keyfile: Optional[str] = None, host: str = LOOPBACK4, port: int = 0, *,
                 inject: bytes = b"", downgrade: bool = False, min_version=None, max_version=None,
                 alpn: Optional[Sequence[str]] = None, io_timeout: float = IO_TIMEOUT):
        super().__init__(host, port, io_timeout=io_timeout)
        self.inject = inject
        self.downgrade = downgrade
        self.context = PyTLSServer._make_context(certfile, keyfile, alpn, False, False, None,
                                                 min_version, max_version)
        self.context.sni_callback = self._on_sni

    @staticmethod
    def _on_sni(sslsock, server_name, ctx):
        record = getattr(sslsock, "_peers_record", None)
        if record is not None:
            record.sni = server_name

    @staticmethod
    def _command(line: bytes) -> bytes:
        parts = line.split(None, 1)
        return parts[0].upper() if parts else b""

    def _handle(self, record: SMTPConnectionRecord):
        reader = _LineReader(record.sock, record)
        record._send(self.BANNER)
        # -- plaintext phase
        while True:
            line = reader.readline()
            if line is None:
                return None
            record.plain_lines.append(line)
            cmd = self._command(line)
            if cmd in (b"EHLO", b"HELO"):
                record._send(self.EHLO_PLAIN)
            elif cmd == b"QUIT":
                record.quit = True
                record._send(self.BYE)
                return None
            elif cmd == b"STARTTLS":
                record.pipelined_after_starttls = reader.take()
                record._send(self.READY + self.inject)
                break
            else:
                record._send(b"250 " + line + b"\r\n")

        # -- TLS phase
        record.starttls = True

        def wrap(raw):
            tls = self.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            tls._peers_record = record
            return tls
        tls = record._swap(wrap)
        try:
            tls.do_handshake()
        except BaseException as exc:
            record.handshake_error = exc
            record.handshake_done.set()
            return None
        record.version = tls.version()
        record.alpn = tls.selected_alpn_protocol()
        record.handshake_done.set()
        reader = _LineReader(tls, record)
        while True:
            line = reader.readline()
            if line is None:
                return None
            record.tls_lines.append(line)
            cmd = self._command(line)
            if cmd in (b"EHLO", b"HELO"):
                record._send(self.EHLO_TLS)
            elif cmd == b"QUIT":
                record.quit = True
                record._send(self.BYE)
                _tls_close_notify(tls, 1.0)
                return None
            elif cmd == b"STOPTLS":
                if not self.downgrade:
                    record._send(self.NO_STOPTLS)
                    continue
                record._send(self.PLAIN_AGAIN)
                record.pipelined_after_stoptls = reader.take()
                plain = tls.unwrap()  # close_notify out, waits for the client's close_notify
                record.downgraded = True
                break
            else:
                record._send(b"250 " + line + b"\r\n")

        # -- plaintext again
        plain.settimeout(self.io_timeout)
        reader = _LineReader(plain, record)
        while True:
            line = reader.readline()
            if line is None:
                return None
            record.plain_after_lines.append(line)
            if self._command(line) == b"QUIT":
                record.quit = True
                record._send(self.BYE)
                return None
            record._send(b"250 plain " + line + b"\r\n")


# ---------------------------------------------------------------------------
# silent / raw servers
# ---------------------------------------------------------------------------

class SilentServer(_StreamServer):
    """Accepts TCP connections and never sends (nor reads) anything; holds them until close().

    SilentServer(host="127.0.0.1", port=0).  ``connections`` lists the accepted connections.
    """

    def _handle(self, record: ConnectionRecord):
        self._stop.wait()
        return None


class RawServer(_StreamServer):
    """Runs ``script(conn)`` in its own thread for each accepted connection.

    RawServer(script, host="127.0.0.1", port=0, *, io_timeout=10).  ``conn`` is a plain
    socket with a timeout of io_timeout; the script may close it itself.  Its return
    value is stored in ``record.result``, an exception in ``record.error``.
    """

    def __init__(self, script: Callable[[socket.socket], object], host: str = LOOPBACK4, port: int = 0, *,
                 family: Optional[int] = None, io_timeout: float = IO_TIMEOUT):
        super().__init__(host, port, family=family, io_timeout=io_timeout)
        self.script = script

    def _handle(self, record: ConnectionRecord):
        return self.script(record.sock)


#: non-TLS bytes for send_garbage
GARBAGE = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"


def close_after_client_hello(conn: socket.socket) -> bytes:
    """Read the ClientHello (one recv), then close cleanly (FIN).  Returns the bytes read."""
    data = conn.recv(16384)
    conn.close()
    return data


def garbage_script(payload: bytes = GARBAGE, *, read_first: bool = True) -> Callable[[socket.socket], bytes]:
    """A script that (optionally reads the ClientHello, then) sends ``payload`` and waits
    up to 2 s for the client to hang up."""
    def script(conn: socket.socket) -> bytes:
        data = conn.recv(16384) if read_first else b""
        conn.sendall(payload)
        _recv_until_eof(conn, 2.0)
        return data
    script.__name__ = "send_garbage"
    return script


#: read the ClientHello, answer with non-TLS bytes (GARBAGE)
send_garbage = garbage_script()


def reset_mid_handshake(conn: socket.socket) -> bytes:
    """Read the ClientHello, then close with SO_LINGER {1, 0}: the client gets a RST."""
    data = conn.recv(16384)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    return data


# ---------------------------------------------------------------------------
# connect timeouts and refusals
# ---------------------------------------------------------------------------

class FullBacklogListener(_Peer):
    """A listening TCP socket whose accept queue is full, so new connects get no SYN-ACK.

    FullBacklogListener(host="127.0.0.1", *, probe_timeout=0.25, max_fill=64)

    How (verified on this machine, Linux 6.18, net.ipv4.tcp_syncookies=1,
    somaxconn=4096): listen(0) and never accept().  Linux treats the accept queue
    as full when its length is > backlog, so with backlog 0 exactly ONE connection
    completes (it sits in the accept queue); the SYN of every later connect is
    dropped by tcp_conn_request() ("LISTENOVERFLOWS") - syncookies do not help here,
    they only apply to a full SYN queue - and the client stays in SYN_SENT,
    retransmitting, until its own timeout:
    socket.create_connection((host, port), timeout=1) raises TimeoutError after ~1.0 s.
    (A blocking connect without timeout would take tcp_syn_retries=6 -> ~127 s and then
    fail with ETIMEDOUT 110.)

    Filling: non-blocking connects, each given probe_timeout to complete; the first one
    still in progress after that proves the queue is full (``filled`` = 1 here).  All
    the filler sockets are kept open until close().
    """

    def __init__(self, host: str = LOOPBACK4, *, probe_timeout: float = 0.25, max_fill: int = 64):
        self.host = host
        self.probe_timeout = probe_timeout
        self.max_fill = max_fill
        self.family = _family_for(host)
        self._listener: Optional[socket.socket] = None
        self._fillers: list[socket.socket] = []
        self.filled = 0
        self.port: Optional[int] = None

    def start(self):
        self._listener = socket.socket(self.family, socket.SOCK_STREAM)
        self._listener.bind((self.host, 0))
        self._listener.listen(0)
        self.port = self._listener.getsockname()[1]
        for _ in range(self.max_fill):
            filler = socket.socket(self.family, socket.SOCK_STREAM)
            self._fillers.append(filler)
            filler.setblocking(False)
            rc = filler.connect_ex((self.host, self.port))
            if rc not in (0, errno.EINPROGRESS):
                raise RuntimeError(f"filler connect failed: {os.strerror(rc)}")
            _, writable, _ = select.select([], [filler], [], self.probe_timeout)
            if not writable:
                return self  # this connect is stuck in SYN_SENT: the queue is full
            err = filler.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise RuntimeError(f"filler connect failed: {os.strerror(err)}")
            self.filled += 1
        raise RuntimeError(f"accept queue still not full after {self.max_fill} connections")

    def close(self) -> None:
        for filler in self._fillers:
            filler.close()
        self._fillers.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None


def refused_port(host: str = LOOPBACK4) -> int:
    """A TCP port on ``host`` with nothing listening (connect -> ECONNREFUSED 111).

    Bound to port 0 to get a free port from the kernel, then closed; a later bind by
    someone else in between is possible but practically never happens on loopback.
    """
    with socket.socket(_family_for(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# datagram and unix echo peers
# ---------------------------------------------------------------------------

class _DatagramEcho(_Peer):
    """recvfrom/sendto echo loop in one thread.  ``received`` lists (data, sender address)."""

    def __init__(self, family: int, bind_address):
        self.family = family
        self._bind_address = bind_address
        self.received: list[tuple] = []
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._closed = False

    def start(self):
        self._sock = socket.socket(self.family, socket.SOCK_DGRAM)
        self._sock.bind(self._bind_address)
        self._sockname = self._sock.getsockname()
        self._thread = threading.Thread(target=self._loop, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        sock = self._sock
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([sock], [], [], 0.05)
                if not readable:
                    continue
                data, addr = sock.recvfrom(65536)
            except (OSError, ValueError):
                if self._stop.is_set():
                    return
                continue
            self.received.append((data, addr))
            if addr:  # an unbound unix datagram sender has no address to answer to
                try:
                    sock.sendto(data, addr)
                except OSError:
                    pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT)
        if self._sock is not None:
            self._sock.close()
        self._cleanup()

    def _cleanup(self) -> None:
        pass


class UDPEchoServer(_DatagramEcho):
    """UDP echo on 127.0.0.1 or ::1.  UDPEchoServer(host="127.0.0.1", port=0);
    .host .port .address ("127.0.0.1:PORT" / "[::1]:PORT") .url("udp") .received"""

    scheme = "udp"

    def __init__(self, host: str = LOOPBACK4, port: int = 0):
        super().__init__(_family_for(host), (host, port))
        self.host = host

    @property
    def port(self) -> int:
        return self._sockname[1]



class _UnixAddress:
    """Shared path / abstract-name handling.

    path=None and abstract=None -> a socket file in a fresh short temp dir (removed at close)
    path="..."                  -> that file (unlinked at close)
    abstract="name" / True      -> the abstract name "\\0name" (True: a unique generated name)
    """

    def _init_address(self, path: Optional[str], abstract: Union[str, bool, None], default_name: str):
        if path is not None and abstract:
            raise ValueError("give path or abstract, not both")
        self._tmpdir: Optional[str] = None
        if abstract:
            name = f"streamsock-test-{uuid.uuid4().hex[:12]}" if abstract is True else str(abstract).lstrip("\0")
            self.abstract: Optional[str] = name
            self.path: Optional[str] = None
        else:
            self.abstract = None
            if path is None:
                self._tmpdir = tempfile.mkdtemp(prefix="ss-", dir="/tmp" if os.path.isdir("/tmp") else None)
                path = os.path.join(self._tmpdir, default_name)
            self.path = str(path)

    @property
    def sockaddr(self) -> str:
        """What to pass to socket.connect()/sendto(): the path, or "\\0name"."""
        return self.path if self.path is not None else "\0" + self.abstract

    @property
    def address(self) -> str:
        return self.sockaddr

    def _remove_address(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)


class UnixEchoServer(_UnixAddress, _StreamServer):
    """Unix stream-socket echo.  UnixEchoServer(path=None, *, abstract=None).
    .path / .abstract / .sockaddr; ``connections`` as for the TCP servers."""

    scheme = "unix"

    def __init__(self, path: Optional[str] = None, *, abstract: Union[str, bool, None] = None,
                 io_timeout: float = IO_TIMEOUT):
        self._init_address(path, abstract, "echo.sock")
        _StreamServer.__init__(self, unix_address=self.sockaddr, io_timeout=io_timeout)

    @property
    def port(self):  # no port for unix sockets
        raise AttributeError("unix sockets have no port")

    def _handle(self, record: ConnectionRecord):
        sock = record.sock
        while True:
            data = sock.recv(65536)
            if not data:
                return None
            record.received += data
            record._send(data)

    def _cleanup(self) -> None:
        self._remove_address()


class UdgEchoServer(_UnixAddress, _DatagramEcho):
    """Unix datagram echo.  UdgEchoServer(path=None, *, abstract=None).
    Replies go to the sender's bound address: a client must bind() (a path, an abstract
    name, or autobind with bind("")) to receive them."""

    scheme = "udg"

    def __init__(self, path: Optional[str] = None, *, abstract: Union[str, bool, None] = None):
        self._init_address(path, abstract, "echo.dgram")
        _DatagramEcho.__init__(self, socket.AF_UNIX, self.sockaddr)

    def _cleanup(self) -> None:
        self._remove_address()


# ---------------------------------------------------------------------------
# pytest fixtures
# ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> PKI:
    """All test certificates (see PKI), generated once per session."""
    return build_pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def make_peer():
    """Factory: ``make_peer(PeerClass, *args, **kwargs)`` starts a peer and closes it at teardown."""
    with contextlib.ExitStack() as stack:
        yield lambda cls, *args, **kwargs: stack.enter_context(cls(*args, **kwargs))


@pytest.fixture
def tls_server(pki):
    """PyTLSServer in echo mode on 127.0.0.1 with pki.server_cert."""
    with PyTLSServer(pki.server_certfile, pki.server_keyfile) as server:
        yield server


@pytest.fixture
def openssl_server(pki):
    """OpenSSLServer (-www) on 127.0.0.1 with pki.server_cert."""
    with OpenSSLServer(pki.server_certfile, pki.server_keyfile, mode="www") as server:
        yield server


@pytest.fixture
def smtp_server(pki):
    """SMTPStartTLSServer on 127.0.0.1 with pki.server_cert (no injection, no downgrade)."""
    with SMTPStartTLSServer(pki.server_certfile, pki.server_keyfile) as server:
        yield server


@pytest.fixture
def silent_server():
    with SilentServer() as server:
        yield server


@pytest.fixture
def full_backlog():
    with FullBacklogListener() as listener:
        yield listener


@pytest.fixture
def refused_tcp_port() -> int:
    return refused_port()


@pytest.fixture
def udp_echo():
    with UDPEchoServer(LOOPBACK4) as server:
        yield server


@pytest.fixture
def udp6_echo():
    if not has_ipv6():
        pytest.skip("no IPv6 loopback")
    with UDPEchoServer(LOOPBACK6) as server:
        yield server


@pytest.fixture
def unix_echo():
    with UnixEchoServer() as server:
        yield server


@pytest.fixture
def unix_echo_abstract():
    with UnixEchoServer(abstract=True) as server:
        yield server


@pytest.fixture
def udg_echo():
    with UdgEchoServer() as server:
        yield server


@pytest.fixture
def udg_echo_abstract():
    with UdgEchoServer(abstract=True) as server:
        yield server


# ---------------------------------------------------------------------------
# hostile peers for tests/test_faults.py and tests/test_threads.py
# (appended: scripts for RawServer, a stalling TLS server, hostile-client helpers)
# ---------------------------------------------------------------------------

#: a TLS record header (handshake, TLS 1.2 framing) announcing 1000 bytes of body
TRUNCATED_RECORD = b"\x16\x03\x03\x03\xe8" + b"\x02" * 10


def truncated_record(conn: socket.socket) -> bytes:
    """Read the ClientHello, answer with a record header claiming 1000 bytes followed by
    only 10 of them, then close (FIN).  Returns the ClientHello."""
    data = conn.recv(16384)
    conn.sendall(TRUNCATED_RECORD)
    conn.close()
    return data


def send_then_close(payload: bytes) -> Callable[[socket.socket], None]:
    """A script that sends ``payload`` right after accept and closes (FIN): e.g. a
    plaintext peer hanging up in the middle of a line."""
    def script(conn: socket.socket) -> None:
        conn.sendall(payload)
        conn.close()
    script.__name__ = "send_then_close"
    return script


def _bio_server_handshake(conn: socket.socket, context: ssl.SSLContext):
    """Server-side TLS handshake over MemoryBIOs on ``conn`` (so the script controls the
    exact bytes written afterwards).  Returns (SSLObject, outgoing MemoryBIO), or
    (None, None) when the client hung up during the handshake."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=True)
    while True:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            conn.sendall(outgoing.read())
            data = conn.recv(65536)
            if not data:
                return None, None
            incoming.write(data)
            continue
        conn.sendall(outgoing.read())
        return tls, outgoing


def split_record_script(context: ssl.SSLContext, payload: bytes, split_at: int = 7,
                        pause: float = 0.6) -> Callable[[socket.socket], None]:
    """Handshake, then send ``payload`` as one application-data record in two pieces:
    the first ``split_at`` bytes, a pause of ``pause`` s, then the rest.  Then waits
    (up to 2 s) for the client to hang up."""
    def script(conn: socket.socket) -> None:
        tls, outgoing = _bio_server_handshake(conn, context)
        if tls is None:
            return
        tls.write(payload)
        record = outgoing.read()
        conn.sendall(record[:split_at])
        time.sleep(pause)
        conn.sendall(record[split_at:])
        _recv_until_eof(conn, 2.0)
    script.__name__ = "split_record"
    return script


def truncated_app_record_script(context: ssl.SSLContext, payload: bytes) -> Callable[[socket.socket], None]:
    """Handshake, send ``payload`` in a whole record, then an application-data record
    header claiming 1000 bytes followed by 10 bytes, and close (FIN, no close_notify)."""
    def script(conn: socket.socket) -> None:
        tls, outgoing = _bio_server_handshake(conn, context)
        if tls is None:
            return
        tls.write(payload)
        conn.sendall(outgoing.read() + b"\x17\x03\x03\x03\xe8" + b"\x00" * 10)
        conn.close()
    script.__name__ = "truncated_app_record"
    return script


def flood_script(context: ssl.SSLContext, chunk: int = 65536) -> Callable[[socket.socket], None]:
    """Handshake, then send application data as fast as the client reads it, until the
    client goes away.  TLS runs over MemoryBIOs so the connection socket stays the
    record's own: RawServer.close() can shut it down under a blocked sendall()."""
    def script(conn: socket.socket) -> None:
        tls, outgoing = _bio_server_handshake(conn, context)
        if tls is None:
            return
        block = b"z" * chunk
        try:
            while True:
                tls.write(block)
                conn.sendall(outgoing.read())
        except (OSError, ValueError, ssl.SSLError):
            pass
    script.__name__ = "flood"
    return script


class StallingTLSServer(_StreamServer):
    """Completes the TLS handshake (stdlib ``ssl``), then neither reads nor writes
    anything until close(): read timeouts after the handshake, and writes that fill the
    socket buffers (the peer never reads).

    StallingTLSServer(certfile, keyfile, host="127.0.0.1", port=0).
    ``connections`` are TLSConnectionRecords (handshake_done / handshake_error / version).
    """

    record_class = TLSConnectionRecord

    def __init__(self, certfile: str, keyfile: Optional[str] = None, host: str = LOOPBACK4, port: int = 0, *,
                 io_timeout: float = IO_TIMEOUT):
        super().__init__(host, port, io_timeout=io_timeout)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certfile, keyfile)

    def _handle(self, record: TLSConnectionRecord):
        tls = record._swap(lambda raw: self.context.wrap_socket(raw, server_side=True,
                                                               do_handshake_on_connect=False))
        try:
            tls.do_handshake()
        except BaseException as exc:
            record.handshake_error = exc
            record.handshake_done.set()
            return None
        record.version = tls.version()
        record.handshake_done.set()
        self._stop.wait()
        return None


def client_hello(server_hostname: Optional[str] = None) -> bytes:
    """The bytes of a real TLS ClientHello (stdlib ssl over MemoryBIOs, no verification),
    for hostile clients that send a ClientHello and then misbehave."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def reset_socket(sock: socket.socket) -> None:
    """Close ``sock`` with SO_LINGER {1, 0}: the peer gets a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def slow_drip_handshake(conn: socket.socket, interval: float = 0.1, duration: float = 4.0) -> bytes:
    """Read the ClientHello, then answer with a record header announcing 16 KiB and drip
    its body one byte every ``interval`` s (for at most ``duration`` s): a client whose
    timeout restarts with every byte would wait far past its deadline."""
    data = conn.recv(16384)
    deadline = time.monotonic() + duration
    try:
        conn.sendall(b"\x16\x03\x03\x40\x00")
        while time.monotonic() < deadline:
            conn.sendall(b"\x02")
            time.sleep(interval)
    except OSError:
        pass
    return data


def trickle_record_script(context: ssl.SSLContext, payload: bytes, interval: float = 0.05
                          ) -> Callable[[socket.socket], None]:
    """Handshake, then send ``payload`` as one application-data record, one byte every
    ``interval`` s (until the client hangs up)."""
    def script(conn: socket.socket) -> None:
        tls, outgoing = _bio_server_handshake(conn, context)
        if tls is None:
            return
        tls.write(payload)
        record = outgoing.read()
        try:
            for i in range(len(record)):
                conn.sendall(record[i:i + 1])
                time.sleep(interval)
        except OSError:
            pass
    script.__name__ = "trickle_record"
    return script


# -- STARTTLS dialogues for every protocol probe(starttls=...) speaks --------------------

#: protocol -> (greeting, [(command expected, go-ahead reply, refusal reply)])
STARTTLS_DIALOGUES = {
    "smtp": (b"220 mail.test ESMTP\r\n", [(b"EHLO", b"250-mail.test\r\n250 STARTTLS\r\n", b"500 no\r\n"),
                                          (b"STARTTLS", b"220 go ahead\r\n", b"454 TLS not available\r\n")]),
    "imap": (b"* OK IMAP4rev1 ready\r\n", [(b"a001 STARTTLS", b"* CAPABILITY IMAP4rev1\r\na001 OK begin TLS\r\n",
                                            b"a001 NO not now\r\n")]),
    "pop3": (b"+OK POP3 ready\r\n", [(b"STLS", b"+OK begin TLS\r\n", b"-ERR not now\r\n")]),
    "ftp": (b"220-Welcome\r\n220 FTP ready\r\n", [(b"AUTH TLS", b"234 AUTH TLS ok\r\n", b"502 no\r\n")]),
}


def starttls_script(protocol: str, context: ssl.SSLContext, *, refuse: bool = False,
                    inject: bytes = b"") -> Callable[[socket.socket], list]:
    """A RawServer script: ``protocol``'s server side of STARTTLS (greeting, commands,
    go-ahead, then TLS and an echo until EOF). ``refuse`` answers the last command
    with a refusal; ``inject`` is sent right behind the go-ahead (an injection
    attack). Returns the commands received, checked against what the client must send."""
    greeting, steps = STARTTLS_DIALOGUES[protocol]

    def script(conn: socket.socket) -> list:
        reader = _LineReader(conn, types.SimpleNamespace(received=bytearray()))
        conn.sendall(greeting)
        commands = []
        for i, (expected, go_ahead, refusal) in enumerate(steps):
            line = reader.readline()
            if line is None:
                return commands
            commands.append(line)
            if not line.upper().startswith(expected.upper()):
                conn.sendall(b"500 unexpected\r\n")
                return commands
            last = i == len(steps) - 1
            conn.sendall(refusal if refuse and last else go_ahead + (inject if last else b""))
        if refuse:
            _recv_until_eof(conn, 2.0)
            return commands
        try:
            tls = context.wrap_socket(conn, server_side=True)
            while True:
                data = tls.recv(65536)
                if not data:
                    break
                tls.sendall(data)
        except (OSError, ssl.SSLError):
            pass
        return commands

    script.__name__ = f"starttls_{protocol}"
    return script
