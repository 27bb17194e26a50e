"""probe(): connect to many targets at once and report each one as it finishes.

With the native backend one C engine (csrc/engine.c) drives every connection
on epoll: name lookup (on resolver threads), connect, the TLS handshake for
ssl://, tls:// and tlsv1.x:// targets or a STARTTLS dialogue then TLS for
plain ones, an optional payload and a bounded banner read, each with its
deadlines. The input is read on a thread of its own into a bounded buffer
(_prefetch.py); Python hands targets over in chunks and receives one record
per finished target, so a file of millions of lines needs memory for the
connections in flight only. The pure backend runs the same probe, phase for
phase, on an asyncio event loop of its own.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generator, Iterable, Iterator

from . import errors as _e
from ._deadline import checked_seconds
from ._prefetch import END, Prefetch
from .address import Address, Transport, ip_literal, split_host_port
from .certificate import Certificate
from .fingerprint import ServerHello, ja3s, parse_server_hello
from .context import DEFAULT_CONTEXT, Context, check_transport_available
from .shard import Selection
from .starttls import PROTOCOLS
from ._backend import CompiledTLS
from ._types import EngineRecord

if TYPE_CHECKING:
    from ._backend import Backend

SESSION_CACHE = 1024  # TLS sessions kept with resume=True (one per target)
QUEUED_AHEAD = 256    # targets the engine holds at least, so it seldom waits for Python
INPUT_POLL = 0.02     # seconds between looks for new input while probes are in flight
INPUT_POLL_MS = 20


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs twice as much per record
class ProbeResult:
    """What happened to one target.

    ``ok`` means connected, with TLS (and the STARTTLS dialogue) done when the
    target asked for it; the payload and banner never make a probe fail. Times
    are phase durations in milliseconds: ``resolve_ms`` the name lookup,
    ``connect_ms`` TCP, ``handshake_ms`` TLS (the STARTTLS dialogue not
    included), ``total_ms`` the whole probe; None for a phase not reached.
    """

    index: int                   # the target's position in the input
    target: str                  # as given
    address: Address | None      # None when the target did not parse
    ok: bool
    error: str | None            # streamsock error code name, e.g. "SS_ERR_CONNECT"
    error_class: str | None      # the exception a blocking client() would raise
    errno: int
    message: str
    peer: str = ""               # the address connected to
    tls_version: str | None = None
    cipher: str | None = None
    group: str | None = None     # key-exchange group (native backend)
    alpn: str | None = None
    # Trust, evaluated whether or not it was enforced; None when no certificate arrived.
    verify_result: int | None = None  # OpenSSL's X509 verify result: 0 a trusted chain, else X509_V_ERR_*
    verify_reason: str | None = None  # OpenSSL's words for it: "ok", "certificate has expired", ...
    name_matched: bool | None = None  # the leaf names the expected host (None: no name to check)
    session_reused: bool = False
    resolve_ms: float | None = None
    connect_ms: float | None = None
    handshake_ms: float | None = None
    total_ms: float | None = None
    banner: bytes = b""          # the peer's first bytes; with STARTTLS its greeting
    certificate: Certificate | None = None  # the leaf, also when the handshake failed after it arrived
    chain: tuple[Certificate, ...] = ()  # with capture_chain: every certificate sent, leaf first
    sni: str | None = None       # the server name sent in the ClientHello (TLS targets)
    server_hello: bytes = b""    # the body of the first ServerHello received (TLS targets)
    finished_at: float = 0.0     # when the probe ended (seconds since the epoch)

    @property
    def cert_der(self) -> bytes | None:
        return self.certificate.der if self.certificate is not None else None

    @property
    def cert_sha256(self) -> str | None:
        return self.certificate.fingerprint("sha256") if self.certificate is not None else None

    @property
    def ja3s(self) -> str | None:
        """JA3S of the ServerHello (None without one)."""
        hello = self._hello()
        return ja3s(hello) if hello is not None else None

    @property
    def ja4s(self) -> str | None:
        """JA4S of the ServerHello: a JA4+ fingerprint (FoxIO License 1.1, see streamsock.ja4plus)."""
        from .ja4plus import ja4s

        hello = self._hello()
        return ja4s(hello) if hello is not None else None

    @property
    def ja4x(self) -> str | None:
        """JA4X of the leaf certificate: a JA4+ fingerprint (FoxIO License 1.1, see streamsock.ja4plus)."""
        return ja4x_of(self.certificate)

    def _hello(self) -> ServerHello | None:
        return parse_server_hello(self.server_hello) if self.server_hello else None

    @property
    def trusted(self) -> bool | None:
        """A trusted chain that names the host; None when no certificate arrived."""
        if self.verify_result is None:
            return None
        return self.verify_result == 0 and self.name_matched is not False

    @property
    def timestamp(self) -> str:
        """When the probe ended, RFC 3339 in UTC with milliseconds."""
        moment = datetime.datetime.fromtimestamp(self.finished_at, datetime.timezone.utc)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    @property
    def ip(self) -> str | None:
        """The IP address connected to (None when no connection was made, or for unix sockets)."""
        return _split_peer(self.peer)[0]

    def to_dict(self, ja4plus: bool = False) -> dict[str, Any]:
        """The record as JSON-ready values; ``ja4plus`` adds JA4S and JA4X (FoxIO License 1.1)."""
        address = self.address
        port = address.port if address is not None and address.port is not None else _split_peer(self.peer)[1]
        return {
            "timestamp": self.timestamp, "index": self.index, "target": self.target,
            "address": str(address) if address else None, "host": address.host if address else None,
            "ip": self.ip, "port": port, "sni": self.sni,
            "ok": self.ok, "error": self.error, "error_class": self.error_class, "errno": self.errno,
            "message": self.message, "peer": self.peer, "tls_version": self.tls_version, "cipher": self.cipher,
            "group": self.group, "alpn": self.alpn, "trusted": self.trusted, "verify_result": self.verify_result,
            "verify_reason": self.verify_reason, "name_matched": self.name_matched,
            "session_reused": self.session_reused, "resolve_ms": self.resolve_ms, "connect_ms": self.connect_ms,
            "handshake_ms": self.handshake_ms, "total_ms": self.total_ms,
            "banner": self.banner.decode("latin-1"), "cert_sha256": self.cert_sha256,
            "ja3s": self.ja3s,
            "cert": certificate_record(self.certificate, self.finished_at) if self.certificate is not None else None,
        } | ({"ja4s": self.ja4s, "ja4x": self.ja4x} if ja4plus else {})


def ja4x_of(cert: Certificate | None) -> str | None:
    """JA4X of ``cert`` (JA4+, FoxIO License 1.1); None without one, or for one the DER reader cannot walk."""
    from .ja4plus import ja4x

    if cert is None:
        return None
    try:
        return ja4x(cert.der)
    except ValueError:
        return None


def certificate_record(cert: Certificate, at: float) -> dict[str, Any]:
    """A certificate's fields as a record shows them (JSON-ready); ``expired`` as of ``at``."""
    s = cert.summary
    return {
        "subject": s.subject_text, "common_name": s.common_name, "issuer": s.issuer_text,
        "san": [f"{kind}:{value}" for kind, value in s.san], "serial": f"{s.serial_number:x}",
        "not_before": _iso(s.not_before), "not_after": _iso(s.not_after),
        "expired": s.not_after.timestamp() < at, "self_signed": s.self_signed, "version": s.version,
        "key_type": s.public_key_algorithm, "key_bits": s.public_key_bits,
        "signature_algorithm": s.signature_algorithm,
        "sha256": s.sha256, "sha1": s.sha1, "spki_sha256": s.spki_sha256,
    }


def _iso(moment: datetime.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _split_peer(peer: str) -> tuple[str | None, int | None]:
    """("ip", port) of "ip:port" or "[v6]:port"; (None, None) for "" or a unix path."""
    split = split_host_port(peer) if "/" not in peer else None
    return split if split is not None else (None, None)


def _failed(index: int, target: str, address: Address | None, exc: _e.StreamSocketError) -> ProbeResult:
    return ProbeResult(index, target, address, False, exc.code, type(exc).__name__, exc.errno or 0, str(exc),
                       finished_at=time.time())


@dataclass
class ProbeOptions:
    concurrency: int = 100
    timeout: float = 5.0                 # the whole probe of one target
    connect_timeout: float | None = None  # name lookup + TCP connect; default: timeout
    handshake_timeout: float | None = None  # connected to TLS done; default: timeout
    payload: bytes = b""
    banner: int = 0                      # bytes of banner to keep
    capture_chain: bool = False
    starttls: str | None = None          # "smtp", "imap", "pop3" or "ftp": dialogue before TLS
    rate: float | None = None            # new connections per second at most
    resume: bool = False                 # offer repeat targets their last TLS session

    def __post_init__(self) -> None:
        if type(self.concurrency) is not int or not 1 <= self.concurrency <= 1 << 24:
            raise ValueError("concurrency must be an int between 1 and 2**24")
        timeout = checked_seconds(self.timeout)
        if timeout is None or timeout <= 0:
            raise ValueError("timeout must be > 0 seconds (infinity: no limit)")
        for name in ("connect_timeout", "handshake_timeout"):
            value = checked_seconds(getattr(self, name), name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 (or None for the whole timeout)")
        if not 0 <= self.banner <= 65536:  # each record's banner must fit the engine's arena
            raise ValueError("banner must be between 0 and 65536 bytes")
        if self.starttls is not None and self.starttls not in PROTOCOLS:
            raise ValueError(f"starttls must be one of {', '.join(PROTOCOLS)}, not {self.starttls!r}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError("rate must be > 0 connections per second (or None for no limit)")

    @property
    def session_cache(self) -> int:
        """TLS sessions the engine keeps for resumption (0: none)."""
        return SESSION_CACHE if self.resume else 0

    def phase_timeouts(self) -> tuple[float, float]:
        """(connect, handshake) timeouts in seconds, each within the whole timeout."""
        return (min(self.connect_timeout or self.timeout, self.timeout),
                min(self.handshake_timeout or self.timeout, self.timeout))


def _parsed(backend: Backend, targets: Iterable[str | Address], options: ProbeOptions,
            selection: Selection | None = None) -> Iterator[tuple[int, str, Address | _e.AddressError]]:
    """(index, text, Address or the AddressError) for each target ``selection``
    takes (by default every one), lazily; ``index`` counts every target."""
    for index, target in enumerate(targets):
        text = _text_of(target)
        if selection is not None and not selection.wants(index, text):
            continue
        try:
            if isinstance(target, Address):
                address = target
            elif isinstance(target, str):
                address = backend.parse(target.strip())
            else:
                raise _e.AddressError(f"a target is a str or an Address, not {type(target).__name__}",
                                      code="SS_ERR_ADDR_TYPE", address=text, reason="not an address")
            check_transport_available(address, backend)
            if address.port is None and not address.transport.local:
                raise _e.address_error(_e.ADDR_PORT_MISSING, text, len(text), 0)
            if options.starttls and address.transport is not Transport.TCP:
                raise _e.error(_e.UNSUPPORTED, f"STARTTLS needs a plain tcp:// target, not {address.transport.value}://")
        except _e.AddressError as exc:
            yield index, text, exc
            continue
        yield index, text, address


def _text_of(target: object) -> str:
    """The target as its record shows it: whatever it is, never an exception."""
    if isinstance(target, str):
        return target
    try:
        return str(target)
    except Exception:
        return f"<unprintable {type(target).__name__}>"


class ProbeRun(Iterator[ProbeResult]):
    """probe()'s results, one ProbeResult per target as it finishes (in finishing
    order; ``index`` says which input it was), and how many are under way."""

    def __init__(self, backend: Backend, targets: Iterable[str | Address], context: Context, options: ProbeOptions,
                 selection: Selection | None = None) -> None:
        self._handed: dict[int, tuple[str, Address, str | None]] = {}
        self._results = _owned_by_this_process(_probe(backend, targets, context, options, self._handed, selection))

    def __next__(self) -> ProbeResult:
        return next(self._results)

    def close(self) -> None:
        """Stops the probe: connections under way are closed, unread targets left unread."""
        self._results.close()

    @property
    def in_flight(self) -> int:
        """Targets handed to the engine and not reported yet (after close(): those it stopped)."""
        return len(self._handed)


def probe(backend: Backend, targets: Iterable[str | Address], context: Context | None = None,
          options: ProbeOptions | None = None, selection: Selection | None = None) -> ProbeRun:
    """Probe every target (those ``selection`` takes: a shard, less the ones to
    skip); see ProbeRun."""
    return ProbeRun(backend, targets, context if context is not None else DEFAULT_CONTEXT, options or ProbeOptions(),
                    selection)


def _owned_by_this_process(results: Generator[ProbeResult, None, None]) -> Generator[ProbeResult, None, None]:
    """``results`` while the process is the one that started them: a forked
    child that goes on gets a clear error (the engine's thread stayed in the
    parent, and the records in hand are the parent's to report)."""
    owner = os.getpid()
    with contextlib.closing(results):
        for result in results:
            yield result
            if os.getpid() != owner:
                raise _forked(owner)


def _tls_for(backend: Backend, context: Context, address: Address,
             options: ProbeOptions) -> tuple[CompiledTLS, CompiledTLS]:
    """(TLS context of a tls:// target, TLS context to start after STARTTLS)."""
    if options.starttls:
        return None, backend.tls_context(context, False, None)
    return (backend.tls_context(context, False, address.transport) if address.secure else None), None


def _probe(backend: Backend, targets: Iterable[str | Address], context: Context, options: ProbeOptions,
           meta: dict[int, tuple[str, Address, str | None]], selection: Selection | None = None
           ) -> Generator[ProbeResult, None, None]:
    """The probe; ``meta`` holds the targets handed to the engine and not yet reported."""
    engine = backend.engine(options, context)
    tls_by_transport: dict[Transport, tuple[CompiledTLS, CompiledTLS]] = {}  # _tls_for depends on the
    # transport alone, and the context is fixed
    high_water = max(2 * options.concurrency, QUEUED_AHEAD)  # targets handed over ahead of time
    refill_at = options.concurrency + (high_water - options.concurrency) // 2  # half of the queue left
    source = Prefetch(_parsed(backend, targets, options, selection), high_water)
    owner = os.getpid()
    try:
        while True:
            # Hand over what has arrived, in batches: the engine is topped up once half
            # of what it holds queued has started. Wait for input only when nothing is in flight.
            items = source.take(high_water - len(meta), wait=0.0 if meta else INPUT_POLL) \
                if len(meta) <= refill_at else ()
            if items is END and not meta:
                source.check()  # an input that failed: after every target before the failure
                return
            for index, text, address in items if items is not END else ():
                if isinstance(address, _e.AddressError):
                    yield _failed(index, text, None, address)
                    continue
                try:
                    tls_pair = tls_by_transport.get(address.transport)
                    if tls_pair is None:
                        tls_pair = tls_by_transport[address.transport] = _tls_for(backend, context, address, options)
                    engine.add(index, address, *tls_pair)
                except _e.StreamSocketError as exc:
                    yield _failed(index, text, address, exc)
                    continue
                meta[index] = (text, address, _sni_for(context, address, options))
            if not meta:
                continue
            # While more input may come, return now and then to take it in.
            for record in engine.take(100 if source.exhausted else INPUT_POLL_MS):
                text, address, sni = meta.pop(record[0])
                yield _result(record, text, address, sni)
    finally:
        if os.getpid() == owner:
            source.close()
            engine.close()
        # In a forked child the engine's and the reader's threads are the parent's:
        # their locks may be held for good, so their memory is left as it is.


def _forked(owner: int) -> _e.StreamSocketError:
    return _e.error(_e.STATE, f"this probe runs in process {owner}: a forked child cannot go on with it "
                    "(start a new probe() in the child)")


def _ms(value: float) -> float | None:
    return value if value >= 0 else None


def _sni_for(context: Context, address: Address, options: ProbeOptions) -> str | None:
    """The server name the ClientHello carries: none for plaintext, with SNI
    off, or for an IP address (RFC 6066 names hosts only)."""
    if not (address.secure or options.starttls) or not context.sni_enabled:
        return None
    name = context.peer_name(address)
    return name if name and ip_literal(name) is None else None


def _result(record: EngineRecord, text: str, address: Address, sni: str | None) -> ProbeResult:
    (index, ok, error, sys_errno, verify_result, message, peer, protocol, cipher, group, alpn, session_reused,
     resolve_ms, connect_ms, handshake_ms, total_ms, banner, certs, name_matched, verify_reason, server_hello) = record
    error_name = error_class = None
    if error:
        exc = _e.from_native(error, sys_errno, message)
        error_name, error_class = exc.code, type(exc).__name__
    return ProbeResult(
        index, text, address, ok, error_name, error_class, sys_errno, message, peer, protocol or None,
        cipher or None, group or None, alpn or None, verify_result, verify_reason, name_matched, session_reused,
        _ms(resolve_ms), _ms(connect_ms), _ms(handshake_ms), total_ms, banner, certs[0] if certs else None,
        tuple(certs), sni, server_hello, time.time(),
    )
