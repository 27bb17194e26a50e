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

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from . import errors as _e
from .address import Address, Transport, ip_literal
from .context import DEFAULT_CONTEXT, Context, check_transport_available
from ._prefetch import END, Prefetch
from .starttls import PROTOCOLS, Dialogue

SESSION_CACHE = 1024  # TLS sessions kept with resume=True (one per target)
QUEUED_AHEAD = 256    # targets the engine holds at least, so it seldom waits for Python
INPUT_POLL = 0.02     # seconds between looks for new input while probes are in flight
INPUT_POLL_MS = 20
TICKET_WAIT_MIN = 0.050  # seconds, plus twice the handshake: as csrc/engine.c


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
    verify_result: int = 0
    session_reused: bool = False
    resolve_ms: float | None = None
    connect_ms: float | None = None
    handshake_ms: float | None = None
    total_ms: float | None = None
    banner: bytes = b""          # the peer's first bytes; with STARTTLS its greeting
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
            "session_reused": self.session_reused, "resolve_ms": self.resolve_ms, "connect_ms": self.connect_ms,
            "handshake_ms": self.handshake_ms, "total_ms": self.total_ms,
            "banner": self.banner.decode("latin-1"), "cert_sha256": self.cert_sha256,
        }


def _failed(index: int, target: str, address: Address | None, exc: _e.StreamSocketError, **times) -> ProbeResult:
    return ProbeResult(index, target, address, False, exc.code, type(exc).__name__, exc.errno or 0, str(exc),
                       verify_result=getattr(exc, "verify_result", 0), **times)


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
        if self.timeout <= 0:
            raise ValueError("timeout must be > 0")
        for name in ("connect_timeout", "handshake_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 (or None for the whole timeout)")
        if not 0 <= self.banner <= 65536:  # each record's banner must fit the engine's arena
            raise ValueError("banner must be between 0 and 65536 bytes")
        if self.starttls is not None and self.starttls not in PROTOCOLS:
            raise ValueError(f"starttls must be one of {', '.join(PROTOCOLS)}, not {self.starttls!r}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError("rate must be > 0 connections per second (or None for no limit)")

    def phase_timeouts(self) -> tuple[float, float]:
        """(connect, handshake) timeouts in seconds, each within the whole timeout."""
        return (min(self.connect_timeout or self.timeout, self.timeout),
                min(self.handshake_timeout or self.timeout, self.timeout))


def _parsed(backend, targets: Iterable[str | Address], options: ProbeOptions):
    """(index, text, Address or the AddressError) for each target, lazily."""
    for index, target in enumerate(targets):
        text = str(target)
        try:
            address = target if isinstance(target, Address) else backend.parse(target.strip())
            check_transport_available(address, backend)
            if address.port is None and not address.transport.local:
                raise _e.address_error(_e.ADDR_PORT_MISSING, text, len(text), 0)
            if options.starttls and address.transport is not Transport.TCP:
                raise _e.error(_e.UNSUPPORTED, f"STARTTLS needs a plain tcp:// target, not {address.transport.value}://")
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
        return _probe_native(backend, targets, context, options)
    if _running_loop() is not None:  # our loop cannot run inside the caller's
        return _in_thread(_probe_asyncio(backend, targets, context, options))
    return _probe_asyncio(backend, targets, context, options)


def _tls_for(backend, context: Context, address: Address, options: ProbeOptions):
    """(TLS context of a tls:// target, TLS context to start after STARTTLS)."""
    if options.starttls:
        return None, context.tls_context(backend, False, None)
    return (context.tls_context(backend, False, address.transport) if address.secure else None), None


# --- native: the C engine ---------------------------------------------------------------


def _probe_native(backend, targets, context: Context, options: ProbeOptions) -> Iterator[ProbeResult]:
    from . import _native
    from .certificate import parse_fingerprint_spec

    pins = context.ssl.get("peer_fingerprint")
    pins_text = ",".join(f"{alg}={digits}" for alg, digits in parse_fingerprint_spec(pins)) if pins else None
    engine = _native.Engine(options, pins_text, SESSION_CACHE if options.resume else 0)
    meta: dict[int, tuple[str, Address]] = {}  # the targets handed to C, not yet reported
    tls_by_transport: dict = {}  # _tls_for depends on the transport alone, and the context is fixed
    high_water = max(2 * options.concurrency, QUEUED_AHEAD)  # targets handed to C ahead of time
    refill_at = options.concurrency + (high_water - options.concurrency) // 2  # half of the queue left
    source = Prefetch(_parsed(backend, targets, options), high_water)
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
                    engine.add(index, address, context, *tls_pair)
                except _e.StreamSocketError as exc:
                    yield _failed(index, text, address, exc)
                    continue
                meta[index] = (text, address)
            if not meta:
                continue
            # While more input may come, return now and then to take it in.
            for record in engine.take(100 if source.exhausted else INPUT_POLL_MS):
                text, address = meta.pop(record[0])
                yield _native_result(record, text, address)
    finally:
        source.close()
        engine.close()


def _ms(value: float) -> float | None:
    return value if value >= 0 else None


def _native_result(record: tuple, text: str, address: Address) -> ProbeResult:
    (index, ok, error, sys_errno, verify_result, message, peer, protocol, cipher, group, alpn, session_reused,
     resolve_ms, connect_ms, handshake_ms, total_ms, banner, certs) = record
    error_name = error_class = None
    if error:
        exc = _e.from_native(error, sys_errno, message)
        error_name, error_class = exc.code, type(exc).__name__
    return ProbeResult(
        index, text, address, ok, error_name, error_class, sys_errno, message, peer, protocol or None,
        cipher or None, group or None, alpn or None, verify_result, session_reused, _ms(resolve_ms),
        _ms(connect_ms), _ms(handshake_ms), total_ms, banner, certs[0] if certs else None, tuple(certs),
    )


# --- pure: the same phases on an asyncio loop ------------------------------------------------


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _in_thread(results: Iterator[ProbeResult]) -> Iterator[ProbeResult]:
    """Runs ``results`` on a thread of its own (for callers inside a running event
    loop, where our loop cannot run) and yields what it yields."""
    source = Prefetch(results, QUEUED_AHEAD)
    try:
        while (items := source.take(QUEUED_AHEAD, wait=INPUT_POLL)) is not END:
            yield from items
        source.check()
    finally:
        source.close()


class _Timeline:
    """One probe's clock: when each phase began, which deadline holds now, and
    the engine's words for a deadline that passed."""

    def __init__(self, loop, options: ProbeOptions) -> None:
        self.loop = loop
        self.start = loop.time()
        connect, handshake = options.phase_timeouts()
        self.total_at = self.start + options.timeout
        self.connect_at = min(self.total_at, self.start + connect)
        self.handshake_timeout = handshake
        self.resolved = self.connected = self.tls_start = self.established = None
        self.phase = "lookup"

    def saw(self, conn) -> None:
        """Notes the moment the connection's state shows it connected."""
        if self.connected is None and conn.state in ("handshaking", "established"):
            self.connected = self.loop.time()
            self.phase = "dialogue"
            if conn.state == "handshaking" or conn.is_tls:  # a fast peer: done in one step
                self.tls_start, self.phase = self.connected, "handshake"

    def deadline(self) -> float:
        if self.connected is None:
            return self.connect_at
        return min(self.total_at, self.connected + self.handshake_timeout)

    async def within(self, awaitable):
        try:
            async with asyncio.timeout_at(self.deadline()):
                return await awaitable
        except TimeoutError as exc:
            if isinstance(exc, _e.StreamSocketError):
                raise
            what = {"lookup": "Name lookup", "connect": "Connection", "dialogue": "STARTTLS dialogue",
                    "handshake": "TLS handshake"}[self.phase]
            raise _e.error(_e.TIMEOUT, f"{what} timed out", 110) from None

    def times(self) -> dict:
        def span(a, b):
            return (b - a) * 1000 if a is not None and b is not None else None
        return {"resolve_ms": span(self.start, self.resolved), "connect_ms": span(self.resolved, self.connected),
                "handshake_ms": span(self.tls_start, self.established),
                "total_ms": (self.loop.time() - self.start) * 1000}


class _AsyncProbe:
    """The pure backend's engine: probes as tasks on one loop, at most
    ``concurrency`` at once, started no faster than ``rate``."""

    def __init__(self, loop, backend, source, context: Context, options: ProbeOptions) -> None:
        self.loop = loop
        self.backend = backend
        self.source = source
        self.context = context
        self.options = options
        self.running: set = set()
        self.held = None  # a target taken from the input, waiting for its start
        self.exhausted = False
        self.tokens, self.tokens_at = 1.0, loop.time()
        self.sessions: dict = {}

    def _token_wait(self) -> float:
        """0 when another probe may start now (and takes the token), else seconds to wait."""
        rate = self.options.rate
        if not rate:
            return 0.0
        now = self.loop.time()
        self.tokens = min(max(1.0, rate / 100), self.tokens + (now - self.tokens_at) * rate)
        self.tokens_at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / rate

    def _next_target(self):
        """The next (index, text, address) from the input, held until it starts;
        None when nothing has arrived yet (or ever will: see self.exhausted)."""
        if self.held is None and not self.exhausted:
            items = self.source.take(1)
            if items is END:
                self.exhausted = True
            elif items:
                self.held = items[0]
        return self.held

    async def next_results(self) -> list[ProbeResult] | None:
        """The next finished probes, or None when every target is done."""
        while True:
            out: list[ProbeResult] = []
            wait = 0.0
            while len(self.running) < self.options.concurrency:
                item = self._next_target()
                if item is None:
                    wait = INPUT_POLL if not self.exhausted else 0.0
                    break
                index, text, address = item
                if isinstance(address, _e.AddressError):
                    self.held = None
                    out.append(_failed(index, text, None, address))
                    continue
                wait = self._token_wait()
                if wait:
                    break
                self.held = None
                self.running.add(self.loop.create_task(self._probe(index, text, address)))
            if out:
                return out
            if not self.running:
                if self.exhausted and self.held is None:
                    return None
                await asyncio.sleep(wait)
                continue
            done, self.running = await asyncio.wait(self.running, timeout=wait or None,
                                                     return_when=asyncio.FIRST_COMPLETED)
            if done:
                return [task.result() for task in done]

    async def cancel(self) -> None:
        for task in self.running:
            task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)

    async def _probe(self, index: int, text: str, a: Address) -> ProbeResult:
        clock = _Timeline(self.loop, self.options)
        stream = None
        try:
            try:
                tls, starttls_tls = _tls_for(self.backend, self.context, a, self.options)
                stream = await self._connect(clock, a, tls)
                greeting = b""
                if starttls_tls is not None:
                    greeting = await self._starttls(clock, stream, a, starttls_tls)
                clock.established = self.loop.time()
            except _e.StreamSocketError as exc:
                return _failed(index, text, a, exc, **clock.times())
            banner = await self._after(clock, stream, tls or starttls_tls, greeting[: self.options.banner])
            s = stream._s
            info = s.tls_info or {}
            ders = s._conn.peer_certs(self.options.capture_chain) if s._conn.is_tls else []
            return ProbeResult(
                index=index, target=text, address=a, ok=True, error=None, error_class=None, errno=0, message="",
                peer=s.peer_name, tls_version=info.get("protocol"), cipher=info.get("cipher_name"),
                group=info.get("group"), alpn=info.get("alpn_protocol"),
                session_reused=bool(info.get("session_reused")), banner=banner,
                cert_der=ders[0] if ders else None, chain=tuple(ders), **clock.times(),
            )
        finally:
            if stream is not None:
                stream.close()

    def _session_key(self, tls, a: Address) -> tuple:
        return (id(tls), a.host, a.port, self.context.peer_name(a))

    async def _drive(self, clock: _Timeline, stream) -> None:
        """Steps the connection (connect, TLS handshake) to done within the deadlines."""
        conn = stream._live()
        while True:
            rc = conn.step(None)
            clock.saw(conn)
            if rc == 0:
                break
            await clock.within(stream._waiter.wait(rc))
        stream._s._after_handshake()  # peer_fingerprint, before any payload goes out

    async def _connect(self, clock: _Timeline, a: Address, tls):
        from . import aio

        impl, ctx = self.backend._impl, self.context
        hosts = [a.host]
        if a.host is not None and ip_literal(a.host) is None:
            hosts = await clock.within(aio._resolve(self.loop, a, None))
        clock.resolved = self.loop.time()
        clock.phase = "connect"
        session = self.sessions.get(self._session_key(tls, a)) if tls is not None and self.options.resume else None
        last: BaseException | None = None
        for host in hosts:
            # A name: connect to each address plainly, then TLS under the name.
            target = a if host == a.host else Address(Transport.TCP, host, a.port)
            conn = impl.open_client(target, ctx, tls if target is a else None)
            conn.offer_session = session
            stream = aio.AsyncStream(conn, self.backend, a, ctx, loop=self.loop)
            stream._s._pending_context = None
            try:
                await self._drive(clock, stream)
                if tls is not None and not conn.is_tls:
                    clock.tls_start, clock.phase = self.loop.time(), "handshake"
                    conn.offer_session = session
                    conn.start_tls(tls, ctx.peer_name(a), ctx.verify_peer_name, ctx.sni_enabled)
                    await self._drive(clock, stream)
            except _e.ConnectError as exc:
                stream.close()
                if clock.connected is not None:
                    raise
                last = exc
                continue
            except BaseException:
                stream.close()
                raise
            self._remember(stream, tls, a)
            return stream
        assert last is not None
        raise last

    async def _starttls(self, clock: _Timeline, stream, a: Address, tls) -> bytes:
        """The dialogue, then TLS; returns the server's greeting."""
        dialogue = Dialogue(self.options.starttls)
        conn, ctx = stream._live(), self.context
        while not dialogue.ready:
            out = dialogue.outgoing()
            if out:
                await clock.within(stream.write(out))
            data = await clock.within(stream.read(4096))
            if not data:
                raise dialogue.eof()
            dialogue.feed(data)
        clock.tls_start, clock.phase = self.loop.time(), "handshake"
        key = self._session_key(tls, a)
        conn.offer_session = self.sessions.get(key) if self.options.resume else None
        conn.start_tls(tls, ctx.peer_name(a), ctx.verify_peer_name, ctx.sni_enabled)
        await self._drive(clock, stream)
        self._remember(stream, tls, a)
        return dialogue.greeting

    def _remember(self, stream, tls, a: Address) -> bool:
        """Keeps the stream's TLS session for its target; True once kept (or nothing to keep)."""
        conn = stream._s._conn
        if not self.options.resume or tls is None or not conn.is_tls:
            return True
        session = conn.resumable_session()
        if session is None:
            return False
        key = self._session_key(tls, a)
        self.sessions.pop(key, None)
        self.sessions[key] = session
        if len(self.sessions) > SESSION_CACHE:
            del self.sessions[next(iter(self.sessions))]  # the oldest
        return True

    async def _after(self, clock: _Timeline, stream, tls, banner: bytes) -> bytes:
        """Payload, banner and session ticket: whatever comes before the deadline, an error or EOF."""
        options = self.options
        a = stream.address
        try:
            async with asyncio.timeout_at(clock.total_at):
                if options.payload:
                    await stream.write(options.payload)
                if not options.starttls or options.payload:
                    while len(banner) < options.banner:
                        data = await stream.read(options.banner - len(banner))
                        if not data:
                            return banner
                        banner += data
            if tls is not None and not self._remember(stream, tls, a):
                # TLS 1.3: the ticket follows the handshake; wait a little longer than a handshake.
                spent = clock.established - (clock.tls_start or clock.established)
                async with asyncio.timeout_at(min(clock.total_at, clock.established + 2 * spent + TICKET_WAIT_MIN)):
                    conn = stream._live()
                    while not self._remember(stream, tls, a):
                        want = conn.read(4096)  # takes in the ticket; data is not wanted any more
                        if want == b"":
                            break
                        if type(want) is not bytes and not self._remember(stream, tls, a):
                            await stream._waiter.wait(want)
        except (_e.StreamSocketError, TimeoutError):
            pass  # the banner is what came
        return banner


def _probe_asyncio(backend, targets, context: Context, options: ProbeOptions) -> Iterator[ProbeResult]:
    loop = asyncio.new_event_loop()
    source = Prefetch(_parsed(backend, targets, options), max(2 * options.concurrency, QUEUED_AHEAD))
    run = _AsyncProbe(loop, backend, source, context, options)
    try:
        while True:
            results = loop.run_until_complete(run.next_results())
            if results is None:
                source.check()  # an input that failed: after every target before the failure
                return
            yield from results
    finally:
        source.close()
        loop.run_until_complete(run.cancel())
        loop.close()
