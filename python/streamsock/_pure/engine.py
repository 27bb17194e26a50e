"""The probe engine of the pure backend: the twin of csrc/engine.c, as tasks
on an asyncio loop of its own.

The same surface as the C engine (``add``, ``take``, ``close``) and the same
records, so ``probe()`` drives both alike. Each probe runs the same phases
with the same deadlines and messages: name lookup (``loop.getaddrinfo``),
connect to each address in turn, the STARTTLS dialogue and TLS, the pins,
the payload and the banner, and with ``resume`` a wait for the TLS 1.3
ticket. At most ``concurrency`` run at once, started no faster than ``rate``.

The loop runs inside ``take`` on the caller's thread; a caller that is itself
inside a running event loop (where a second loop cannot run) gets the loop on
a thread of its own, with ``add`` and ``take`` handing over across it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import threading
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Mapping, Sequence, TypeAlias, TypeVar

from .. import errors as _e
from ..address import Address, Transport, ip_literal
from ..certificate import Certificate, fingerprint_matches
from .._resolve import resolve
from ..starttls import Dialogue
from .conn import DONE, WANT_READ, PureConnection, error_code, open_client

if TYPE_CHECKING:
    import ssl

    from .._types import EngineRecord
    from ..context import Context
    from ..probe import ProbeOptions
    from .tls import PureTLS

TICKET_WAIT_MIN = 0.050  # seconds, plus twice the handshake: as csrc/engine.c
# Probes started per loop turn, as csrc/engine.c: the loop polls the sockets
# in flight between turns, so a flood of targets that fail at once cannot
# starve the live handshakes.
STARTS_PER_TURN = 16
# take() returns once the probes under way have finished too, or this long
# after the first result (the C engine's batch time): none is left half-done,
# its clock running, while the caller is away.
BATCH_WAIT = 0.010
_NO_TIME = -1.0          # a phase not reached, as the C records say it

_T = TypeVar("_T")
#: A probe handed to the engine: index, address, TLS context of a tls:// target, TLS context after STARTTLS.
_Queued: TypeAlias = "tuple[int, Address, PureTLS | None, PureTLS | None]"
#: A TLS session's target: the TLS context's id, host, port and the name verified.
_SessionKey: TypeAlias = "tuple[int, str | None, int | None, str | None]"


class _EngineClock:
    """The probes' time: the loop's, less the time it stood still between take()
    calls. Without a thread of its own the loop runs only while the caller waits
    for records; a probe under way while the caller is busy elsewhere must not
    count that time, nor see its deadlines pass for it (its socket's readiness
    and its timer would come due together, and asyncio runs the timer first)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.stood_still = 0.0
        self.stopped_at: float | None = None
        self.timeouts: set[asyncio.Timeout] = set()  # the probes' deadlines being awaited

    def now(self) -> float:
        return self.loop.time() - self.stood_still

    def stop(self) -> None:
        self.stopped_at = self.loop.time()

    def resume(self) -> None:
        """Before the loop runs again (callbacks left from its last run go first):
        the pause is not the probes' time, and their deadlines move on by it."""
        if self.stopped_at is None:
            return
        pause, self.stopped_at = self.loop.time() - self.stopped_at, None
        self.stood_still += pause
        asyncio._set_running_loop(self.loop)  # Timeout.reschedule asks for it; the loop is ours and idle
        try:
            for timeout in self.timeouts:
                when = timeout.when()
                if when is not None and not timeout.expired():  # one already expiring has cancelled its task
                    timeout.reschedule(when + pause)
        finally:
            asyncio._set_running_loop(None)

    @contextlib.asynccontextmanager
    async def timeout_at(self, when: float) -> AsyncIterator[asyncio.Timeout]:
        """asyncio.timeout_at for a moment of this clock, moved on by any pause."""
        async with asyncio.timeout_at(when + self.stood_still) as timeout:
            self.timeouts.add(timeout)
            try:
                yield timeout
            finally:
                self.timeouts.discard(timeout)


class _Timeline:
    """One probe's clock: when each phase began, which deadline holds now, and
    the engine's words for a deadline that passed."""

    def __init__(self, clock: _EngineClock, options: ProbeOptions) -> None:
        self.clock = clock
        self.start = clock.now()
        connect, handshake = options.phase_timeouts()
        self.total_at = self.start + options.timeout
        self.connect_at = min(self.total_at, self.start + connect)
        self.handshake_timeout = handshake
        # When each phase began or ended (the clock's time), once reached.
        self.resolved: float | None = None
        self.connected: float | None = None
        self.tls_start: float | None = None
        self.established: float | None = None
        self.phase = "lookup"
        self.peer: _PeerCertificates | None = None  # once a TLS handshake ended

    def saw(self, conn: PureConnection) -> None:
        """Notes the moment the connection's state shows it connected."""
        if self.connected is None and conn.state in ("handshaking", "established"):
            self.connected = self.clock.now()
            self.phase = "dialogue"
            if conn.state == "handshaking" or conn.is_tls:  # a fast peer: done in one step
                self.tls_start, self.phase = self.connected, "handshake"

    def deadline(self) -> float:
        if self.connected is None:
            return self.connect_at
        return min(self.total_at, self.connected + self.handshake_timeout)

    async def within(self, awaitable: Awaitable[_T]) -> _T:
        try:
            async with self.clock.timeout_at(self.deadline()):
                return await awaitable
        except TimeoutError as exc:
            if isinstance(exc, _e.StreamSocketError):
                raise
            what = {"lookup": "Name lookup", "connect": "Connection", "dialogue": "STARTTLS dialogue",
                    "handshake": "TLS handshake"}[self.phase]
            raise _e.error(_e.TIMEOUT, f"{what} timed out", 110) from None

    def times(self) -> tuple[float, float, float, float]:
        """(resolve, connect, handshake, total) in ms; -1 for a phase not reached."""
        def span(a: float | None, b: float | None) -> float:
            return (b - a) * 1000 if a is not None and b is not None else _NO_TIME
        return (span(self.start, self.resolved), span(self.resolved, self.connected),
                span(self.tls_start, self.established), (self.clock.now() - self.start) * 1000)


async def _ready(loop: asyncio.AbstractEventLoop, conn: PureConnection, want: int) -> None:
    """Waits until the connection's socket is readable (WANT_READ) or writable."""
    fd = conn.fileno()
    if fd < 0:
        raise _e.error(_e.CLOSED)
    future: asyncio.Future[None] = loop.create_future()
    add, remove = (loop.add_reader, loop.remove_reader) if want == WANT_READ else (loop.add_writer, loop.remove_writer)

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    add(fd, wake)
    try:
        await future
    finally:
        remove(fd)


def _record(index: int, exc: _e.StreamSocketError, times: tuple[float, float, float, float],
            peer: _PeerCertificates | None = None) -> EngineRecord:
    """A failed probe's record, laid out as the C engine's (see _native.engine.Engine.take)."""
    certs, (verify_result, reason, name_matched), _ = peer if peer is not None else ([], (None, None, None), b"")
    return (index, False, error_code(exc, _e.SYSTEM), exc.errno or 0, verify_result,
            str(exc), "", "", "", "", "", False, *times, b"", certs, name_matched, reason,
            peer[2] if peer is not None else b"")


#: What a TLS peer sent and how far it would be trusted: its certificates, (verify result,
#: its words, name matched), and the body of its ServerHello.
_PeerCertificates: TypeAlias = "tuple[list[Certificate], tuple[int | None, str | None, bool | None], bytes]"


def _peer_certificates(conn: PureConnection, chain: bool) -> _PeerCertificates:
    """What a TLS connection's peer sent, and how far it would be trusted."""
    certs: list[Certificate] = []
    for der in conn.peer_certs(chain):
        try:
            certs.append(Certificate(der))
        except ValueError:
            break  # one the DER reader rejects ends the chain here, as a full arena does natively
    return certs, conn.trust(), conn.server_hello


class Engine:
    """Probes as tasks, at most ``options.concurrency`` at once."""

    def __init__(self, options: ProbeOptions, context: Context) -> None:
        self.options = options
        self.context = context
        self.pins: str | Mapping[str, str] | None = context.ssl.get("peer_fingerprint")
        self.sessions: dict[_SessionKey, ssl.SSLSession] = {}
        self.queued: collections.deque[_Queued] = collections.deque()
        self.running: set[asyncio.Task[EngineRecord]] = set()
        self.results: list[EngineRecord] = []
        self.cond = threading.Condition()
        self.tokens = 1.0
        self.loop = asyncio.new_event_loop()
        self.clock = _EngineClock(self.loop)
        self.tokens_at = self.loop.time()
        self.pump_later: asyncio.TimerHandle | None = None
        self.pump_next_turn = False  # a _pump is scheduled for the loop's next turn
        self.draining = False  # take() is about to return: no new probe starts
        self.closing = False  # close() cancels what runs: those probes are not reported
        # What a signal handler raised inside a probe, for take() to raise: asyncio keeps
        # a BaseException other than Ctrl-C's and SystemExit in the task that was running.
        self.interrupted: BaseException | None = None
        self.wakeup: asyncio.Future[None] | None = None
        self.thread: threading.Thread | None = None
        if _running_loop() is not None:  # our loop cannot run inside the caller's
            self.thread = threading.Thread(target=self.loop.run_forever, name="streamsock-probe", daemon=True)
            self.thread.start()

    # -- the surface probe() drives ----------------------------------------------------------

    def add(self, index: int, address: Address, tls: PureTLS | None, starttls_tls: PureTLS | None) -> None:
        item = (index, address, tls, starttls_tls)
        if self.thread is None:
            self.queued.append(item)
        else:
            self.loop.call_soon_threadsafe(self._enqueue, item)

    def take(self, timeout_ms: int) -> list[EngineRecord]:
        """Finished probes, waiting up to ``timeout_ms`` for the first."""
        if self.thread is None:
            if not self.results:
                self.clock.resume()
                try:
                    self.loop.run_until_complete(self._until_results(timeout_ms / 1000))
                finally:
                    self.clock.stop()
        else:
            with self.cond:
                if self.cond.wait_for(lambda: self.results or self.interrupted, timeout_ms / 1000):
                    # The rest of the batch, waiting off the GIL: a caller that woke for every
                    # record would take the GIL from the loop's thread each time, and the
                    # probes in flight would wait for it.
                    self.cond.wait_for(lambda: self.interrupted or not self.running, BATCH_WAIT)
        with self.cond:
            interrupted, self.interrupted = self.interrupted, None
            if interrupted is not None:
                try:
                    raise interrupted
                finally:  # no cycle through this frame: what the probe held goes with the exception
                    interrupted = None
            out, self.results = self.results, []
        if self.thread is not None and out:
            self.loop.call_soon_threadsafe(self._pump)  # results taken: room to start more
        return out

    def close(self) -> None:
        if self.loop.is_closed():
            return
        if self.thread is not None:
            asyncio.run_coroutine_threadsafe(self._cancel(), self.loop).result()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
        else:
            cancelling = self.loop.create_task(self._cancel())
            # A take() that Ctrl-C interrupted can leave its run's stop callback
            # queued: it ends the next run early, so run again (once is enough).
            for _ in range(3):
                try:
                    self.loop.run_until_complete(cancelling)
                    break
                except RuntimeError:
                    if cancelling.done():
                        raise
        self.loop.close()

    # -- scheduling, on the loop ---------------------------------------------------------------

    def _enqueue(self, item: _Queued) -> None:
        self.queued.append(item)
        self._pump()

    async def _until_results(self, timeout: float) -> None:
        self.wakeup = self.loop.create_future()
        self._pump()
        try:
            if not self.results:
                await asyncio.wait([self.wakeup], timeout=timeout)
            if self.results and self.running:
                self.draining = True
                await asyncio.wait(list(self.running), timeout=BATCH_WAIT)
        finally:
            self.wakeup = None
            self.draining = False

    def _pump(self) -> None:
        """Starts queued probes while slots are free, the rate allows and (on a
        thread of its own) the caller keeps taking the results."""
        if self.draining:
            return  # take() starts them when it is called again
        if self.pump_later is not None:
            self.pump_later.cancel()
            self.pump_later = None
        backlog = 2 * self.options.concurrency
        started = 0
        while self.queued and len(self.running) < self.options.concurrency and len(self.results) < backlog:
            if started == STARTS_PER_TURN:
                self._pump_next_turn()
                return
            started += 1
            wait = self._token_wait()
            if wait:
                self.pump_later = self.loop.call_later(wait, self._pump)
                return
            item = self.queued.popleft()
            task = self.loop.create_task(self._probe(*item))
            self.running.add(task)
            task.add_done_callback(functools.partial(self._finished, item[0]))

    def _pump_next_turn(self) -> None:
        if not self.pump_next_turn:
            self.pump_next_turn = True
            self.loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self.pump_next_turn = False
        self._pump()

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

    def _finished(self, index: int, task: asyncio.Task[EngineRecord]) -> None:
        self.running.discard(task)
        if self.closing:
            if not task.cancelled():
                task.exception()  # seen: what a probe raised while we close is nobody's now
            return
        if task.cancelled():  # by nothing of ours but close(): still a record, or the caller waits for it forever
            record = self._crashed(index, task, asyncio.CancelledError("the probe was cancelled"))
        elif (exc := task.exception()) is not None and not isinstance(exc, Exception):
            # A signal handler's exception, raised while this probe ran: the caller's, who then
            # stops us. asyncio re-raises Ctrl-C and SystemExit from the loop itself.
            if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                with self.cond:
                    self.interrupted = exc
                    self.cond.notify_all()
                self._wake()
            return
        else:
            record = task.result() if exc is None else self._crashed(index, task, exc)
        with self.cond:
            self.results.append(record)
            if len(self.results) == 1 or not self.running:  # the first of a batch, or the last probe
                self.cond.notify_all()
        self._wake()
        self._pump_next_turn()  # with the other slots freed this turn: one batch of starts

    def _wake(self) -> None:
        """Ends take()'s wait for the first record."""
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    def _crashed(self, index: int, task: asyncio.Task[EngineRecord], exc: BaseException) -> EngineRecord:
        """The record of a probe that raised what no probe should: a failed
        record all the same, so the target is reported and the scan goes on."""
        self.loop.call_exception_handler({"message": "probe failed unexpectedly", "exception": exc, "task": task})
        return _record(index, _e.error(_e.SYSTEM, f"probe failed unexpectedly: {exc!r}"), (_NO_TIME,) * 4)

    async def _cancel(self) -> None:
        self.closing = True
        self.queued.clear()
        if self.pump_later is not None:
            self.pump_later.cancel()
        # Every task of the loop: a wait in take() that an interrupt left behind too.
        others = [task for task in asyncio.all_tasks(self.loop) if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    # -- one probe ---------------------------------------------------------------------------------

    async def _probe(self, index: int, a: Address, tls: PureTLS | None, starttls_tls: PureTLS | None
                     ) -> EngineRecord:
        clock = _Timeline(self.clock, self.options)
        conn: PureConnection | None = None
        try:
            try:
                conn = await self._connect(clock, a, tls)
                greeting = b""
                if starttls_tls is not None:
                    greeting = await self._starttls(clock, conn, a, starttls_tls)
                clock.established = self.clock.now()
            except _e.StreamSocketError as exc:
                return _record(index, exc, clock.times(), clock.peer)
            banner = await self._after(clock, conn, a, tls or starttls_tls, greeting[: self.options.banner])
            info = conn.tls_info()  # a plaintext connection's has empty fields
            certs, (verify_result, reason, name_matched), server_hello = clock.peer or ([], (None, None, None), b"")
            return (index, True, _e.OK, 0, verify_result, "", conn.name(True), info["protocol"],
                    info["cipher_name"], info["group"] or "", info["alpn_protocol"] or "",
                    info["session_reused"], *clock.times(), banner, certs, name_matched, reason,
                    server_hello)
        finally:
            if conn is not None:
                conn.close()

    def _session_key(self, tls: PureTLS, a: Address) -> _SessionKey:
        return (id(tls), a.host, a.port, self.context.peer_name(a))

    async def _drive(self, clock: _Timeline, conn: PureConnection) -> None:
        """Steps the connection (connect, TLS handshake) to done within the
        deadlines, then checks the pins before any payload goes out."""
        try:
            while True:
                rc = conn.step(None)
                clock.saw(conn)
                if rc == DONE:
                    break
                await clock.within(_ready(self.loop, conn, rc))
        finally:
            if conn.is_tls:  # after the handshake, or its failure: what the peer sent
                clock.peer = _peer_certificates(conn, self.options.capture_chain)
        if self.pins and conn.is_tls:
            ders = conn.peer_certs(False)
            if not ders or not fingerprint_matches(ders[0], self.pins):
                raise _e.error(_e.TLS_FINGERPRINT, "peer_fingerprint match failure")

    async def _connect(self, clock: _Timeline, a: Address, tls: PureTLS | None) -> PureConnection:
        ctx = self.context
        hosts: Sequence[str | None] = [a.host]
        if a.host is not None and ip_literal(a.host) is None:
            hosts = await clock.within(resolve(self.loop, a, None))
        clock.resolved = self.clock.now()
        clock.phase = "connect"
        session = self.sessions.get(self._session_key(tls, a)) if tls is not None and self.options.resume else None
        last: BaseException | None = None
        for host in hosts:
            # A name: connect to each address plainly, then TLS under the name.
            target = a if host == a.host else Address(Transport.TCP, host, a.port)
            conn = open_client(target, ctx, tls if target is a else None)
            try:  # from here on, whatever happens, the socket is closed or handed on
                conn.offer_session = session
                conn.capture_hello = True
                await self._drive(clock, conn)
                if tls is not None and not conn.is_tls:
                    clock.tls_start, clock.phase = self.clock.now(), "handshake"
                    conn.offer_session = session
                    conn.start_tls(tls, ctx.peer_name(a), ctx.verify_peer_name, ctx.sni_enabled)
                    await self._drive(clock, conn)
            except _e.ConnectError as exc:
                conn.close()
                if clock.connected is not None:
                    raise
                last = exc
                continue
            except BaseException:
                conn.close()
                raise
            self._remember(conn, tls, a)
            return conn
        assert last is not None
        raise last

    async def _read(self, conn: PureConnection, size: int) -> bytes:
        while not isinstance(data := conn.read(size), bytes):
            await _ready(self.loop, conn, data)
        return data

    async def _write(self, conn: PureConnection, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = conn.write(view)
            if n > 0:
                view = view[n:]
            else:
                await _ready(self.loop, conn, -n)

    async def _starttls(self, clock: _Timeline, conn: PureConnection, a: Address, tls: PureTLS) -> bytes:
        """The dialogue, then TLS; returns the server's greeting."""
        assert self.options.starttls is not None  # a STARTTLS context comes only with it (probe._tls_for)
        dialogue = Dialogue(self.options.starttls)
        ctx = self.context
        while not dialogue.ready:
            out = dialogue.outgoing()
            if out:
                await clock.within(self._write(conn, out))
            data = await clock.within(self._read(conn, 4096))
            if not data:
                raise dialogue.eof()
            dialogue.feed(data)
        clock.tls_start, clock.phase = self.clock.now(), "handshake"
        conn.offer_session = self.sessions.get(self._session_key(tls, a)) if self.options.resume else None
        conn.start_tls(tls, ctx.peer_name(a), ctx.verify_peer_name, ctx.sni_enabled)
        await self._drive(clock, conn)
        self._remember(conn, tls, a)
        return dialogue.greeting

    def _remember(self, conn: PureConnection, tls: PureTLS | None, a: Address) -> bool:
        """Keeps the connection's TLS session for its target; True once kept (or nothing to keep)."""
        if not self.options.resume or tls is None or not conn.is_tls:
            return True
        session = conn.resumable_session()
        if session is None:
            return False
        key = self._session_key(tls, a)
        self.sessions.pop(key, None)
        self.sessions[key] = session
        if len(self.sessions) > self.options.session_cache:
            del self.sessions[next(iter(self.sessions))]  # the oldest
        return True

    async def _after(self, clock: _Timeline, conn: PureConnection, a: Address, tls: PureTLS | None,
                     banner: bytes) -> bytes:
        """Payload, banner and session ticket: whatever comes before the deadline, an error or EOF."""
        options = self.options
        try:
            async with self.clock.timeout_at(clock.total_at):
                if options.payload:
                    await self._write(conn, options.payload)
                if not options.starttls or options.payload:
                    while len(banner) < options.banner:
                        data = await self._read(conn, options.banner - len(banner))
                        if not data:
                            return banner
                        banner += data
            if tls is not None and not self._remember(conn, tls, a):
                # TLS 1.3: the ticket follows the handshake; wait a little longer than a handshake.
                established = clock.established
                assert established is not None  # _probe notes it before _after
                spent = established - (clock.tls_start or established)
                async with self.clock.timeout_at(min(clock.total_at, established + 2 * spent + TICKET_WAIT_MIN)):
                    while not self._remember(conn, tls, a):
                        want = conn.read(4096)  # takes in the ticket; data is not wanted any more
                        if want == b"":
                            break
                        if isinstance(want, bytes):
                            await asyncio.sleep(0)  # a peer that never stops sending must not hold the loop
                        elif not self._remember(conn, tls, a):
                            await _ready(self.loop, conn, want)
        except (_e.StreamSocketError, TimeoutError):
            pass  # the banner is what came
        return banner


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
