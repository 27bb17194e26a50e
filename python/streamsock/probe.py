"""probe(): connect to many targets at once and report each one as it finishes.

With the native backend one C engine (csrc/engine.c) drives every connection
on epoll: connect, TLS handshake for ssl://, tls:// and tlsv1.x:// targets,
an optional payload and a bounded banner read, each with its deadlines.
Python hands targets over in bounded chunks and receives one record per
finished target, so a file of millions of lines needs memory for the
connections in flight only. The pure backend runs the same probe on a thread
pool of blocking streams (one thread per connection in flight).
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from . import errors as _e
from .address import Address
from .context import DEFAULT_CONTEXT, Context, check_transport_available


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What happened to one target. Times are milliseconds from the probe's
    start (None for a phase not reached)."""

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
    verify_result: int = 0
    connect_ms: float | None = None
    handshake_ms: float | None = None
    total_ms: float | None = None
    banner: bytes = b""
    cert_der: bytes | None = None
    chain: tuple[bytes, ...] = field(default_factory=tuple)

    @property
    def cert_sha256(self) -> str | None:
        return hashlib.sha256(self.cert_der).hexdigest() if self.cert_der else None

    def to_dict(self) -> dict:
        return {
            "index": self.index, "target": self.target, "address": str(self.address) if self.address else None,
            "ok": self.ok, "error": self.error, "error_class": self.error_class, "errno": self.errno,
            "message": self.message, "peer": self.peer, "tls_version": self.tls_version, "cipher": self.cipher,
            "group": self.group, "alpn": self.alpn, "verify_result": self.verify_result,
            "connect_ms": self.connect_ms, "handshake_ms": self.handshake_ms, "total_ms": self.total_ms,
            "banner": self.banner.decode("latin-1"), "cert_sha256": self.cert_sha256,
        }


def _failed(index: int, target: str, address: Address | None, exc: _e.StreamSocketError) -> ProbeResult:
    return ProbeResult(index, target, address, False, exc.code, type(exc).__name__, exc.errno or 0, str(exc))


@dataclass
class ProbeOptions:
    concurrency: int = 100
    timeout: float = 5.0                 # the whole probe of one target
    connect_timeout: float | None = None  # default: timeout
    handshake_timeout: float | None = None
    payload: bytes = b""
    banner: int = 0                      # bytes of banner to keep
    capture_chain: bool = False

    def __post_init__(self) -> None:
        if type(self.concurrency) is not int or self.concurrency < 1:
            raise ValueError("concurrency must be an int >= 1")
        if self.timeout <= 0:
            raise ValueError("timeout must be > 0")
        if not 0 <= self.banner <= 65536:  # each record's banner must fit the engine's arena
            raise ValueError("banner must be between 0 and 65536 bytes")


def _parsed(backend, targets: Iterable[str | Address], context: Context):
    """(index, text, Address or the AddressError) for each target, lazily."""
    for index, target in enumerate(targets):
        text = str(target)
        try:
            address = target if isinstance(target, Address) else backend.parse(target.strip())
            check_transport_available(address, backend)
            if address.port is None and not address.transport.local:
                raise _e.address_error(_e.ADDR_PORT_MISSING, text, len(text), 0)
        except _e.AddressError as exc:
            yield index, text, exc
            continue
        yield index, text, address


def probe(backend, targets: Iterable[str | Address], context: Context | None = None,
          options: ProbeOptions | None = None) -> Iterator[ProbeResult]:
    """Probe every target; yields a ProbeResult per target as it finishes (in
    finishing order; ``index`` says which input it was)."""
    context = context if context is not None else DEFAULT_CONTEXT
    options = options or ProbeOptions()
    if backend.name == "native":
        yield from _probe_native(backend, targets, context, options)
    else:
        yield from _probe_threads(backend, targets, context, options)


# --- native: the C engine ---------------------------------------------------------------


def _probe_native(backend, targets, context: Context, options: ProbeOptions) -> Iterator[ProbeResult]:
    from . import _native

    engine = _native.Engine(options)
    meta: dict[int, tuple[str, Address]] = {}
    source = _parsed(backend, targets, context)
    exhausted = False
    high_water = options.concurrency * 2  # targets handed to C ahead of time
    try:
        while True:
            while not exhausted and engine.pending() < high_water:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                index, text, address = item
                if isinstance(address, _e.AddressError):
                    yield _failed(index, text, None, address)
                    continue
                try:
                    tls = context.tls_context(backend, False, address.transport) if address.secure else None
                    engine.add(index, address, context, tls)
                except _e.StreamSocketError as exc:
                    yield _failed(index, text, address, exc)
                    continue
                meta[index] = (text, address)
            if exhausted and engine.pending() == 0:
                return
            for record in engine.run(100):
                text, address = meta.pop(record["id"])
                yield _native_result(record, text, address)
    finally:
        engine.close()


def _native_result(r: dict, text: str, address: Address) -> ProbeResult:
    error_name = None
    error_class = None
    if r["error"]:
        exc = _e.from_native(r["error"], r["sys_errno"], r["message"])
        error_name, error_class = exc.code, type(exc).__name__
    certs = r["certs"]
    return ProbeResult(
        index=r["id"], target=text, address=address, ok=r["ok"], error=error_name, error_class=error_class,
        errno=r["sys_errno"], message=r["message"], peer=r["peer"], tls_version=r["protocol"] or None,
        cipher=r["cipher"] or None, group=r["group"] or None, alpn=r["alpn"] or None,
        verify_result=r["verify_result"],
        connect_ms=r["connect_ms"] if r["connect_ms"] >= 0 else None,
        handshake_ms=r["handshake_ms"] if r["handshake_ms"] >= 0 else None,
        total_ms=r["total_ms"], banner=r["banner"], cert_der=certs[0] if certs else None, chain=tuple(certs),
    )


# --- pure: blocking streams on a thread pool -----------------------------------------------


def _probe_one(backend, index: int, text: str, address: Address, context: Context,
               options: ProbeOptions) -> ProbeResult:
    start = time.monotonic()
    deadline = start + options.timeout
    connect_timeout = min(options.connect_timeout or options.timeout, options.timeout)
    try:
        stream = backend.client(address, timeout=connect_timeout, context=context)
    except _e.StreamSocketError as exc:
        return _failed(index, text, address, exc)
    connected = (time.monotonic() - start) * 1000
    with stream:
        banner = b""
        try:
            stream.set_timeout(max(0.001, deadline - time.monotonic()))
            if options.payload:
                stream.write(options.payload)
            while len(banner) < options.banner:
                stream.set_timeout(max(0.001, deadline - time.monotonic()))
                data = stream.read(options.banner - len(banner))
                if not data:
                    break
                banner += data
        except _e.StreamSocketError:
            pass  # the banner is what came before the deadline or the error
        info = stream.tls_info or {}
        ders = stream._conn.peer_certs(options.capture_chain) if stream.crypto else []
        return ProbeResult(
            index=index, target=text, address=address, ok=True, error=None, error_class=None, errno=0,
            message="", peer=stream.peer_name, tls_version=info.get("protocol"), cipher=info.get("cipher_name"),
            group=info.get("group"), alpn=info.get("alpn_protocol"), connect_ms=connected,
            handshake_ms=None, total_ms=(time.monotonic() - start) * 1000, banner=banner,
            cert_der=ders[0] if ders else None, chain=tuple(ders),
        )


def _probe_threads(backend, targets, context: Context, options: ProbeOptions) -> Iterator[ProbeResult]:
    source = _parsed(backend, targets, context)
    with ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="streamsock-probe") as pool:
        running = set()
        for index, text, address in source:
            if isinstance(address, _e.AddressError):
                yield _failed(index, text, None, address)
                continue
            running.add(pool.submit(_probe_one, backend, index, text, address, context, options))
            if len(running) >= options.concurrency:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()

