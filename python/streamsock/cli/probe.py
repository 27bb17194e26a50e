"""`streamsock probe`: many targets at once, a line per target on stdout, a summary on stderr.

Targets stream from the arguments and files through probe() one at a time,
and the statistics are counters and fixed-size histograms, so a list of
millions of targets runs in the memory of the connections in flight.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import csv
import io
import itertools
import json
import math
import os
import sys
import time
from typing import IO, TYPE_CHECKING, Callable, Iterable, Iterator

from .._backend import Backend
from ..address import Address, Transport
from .main import UsageError, backend_for, read_lines, tls_client_context
from .signals import StopOnSignal
from ..errors import AddressError
from ..probe import ProbeResult, certificate_record, ja4x_of
from ..resume import ResumeError

if TYPE_CHECKING:
    from ..resume import RecordedTargets

_REDRAW_INTERVAL = 0.1      # the progress bar is redrawn at most 10 times a second
_PLAIN_INTERVAL = 10.0      # a progress line when stderr is not a terminal


def run(args: argparse.Namespace) -> int:
    if args.cluster:
        from ..distributed import run_cli

        return run_cli(args)
    files = list(args.file or ())
    if not args.addresses and not files:
        if _is_tty(sys.stdin):
            raise UsageError("give targets as arguments, with -f FILE, or on stdin")
        files.append(sys.stdin)
    # stdin as the files are read: an undecodable byte is a target that fails, not the end of the probe
    files = [_stdin_text() if f is sys.stdin else f for f in files]
    backend = backend_for(args)
    context = tls_client_context(args)
    recorded = _resume_from(args)
    total = _count_targets(args.addresses, files) if args.shard is None else None  # a shard's size is unknown
    if total is not None and recorded is not None:
        total -= len(recorded)
    lines: Iterator[str] = itertools.chain(args.addresses, *(read_lines(f, comments=True) for f in files))
    targets: Iterable[str | Address] = lines
    if args.scheme or args.port:
        targets = map(_defaults_applier(backend, args.scheme, args.port), lines)
    try:
        results = backend.probe(
            targets, concurrency=args.concurrency, timeout=args.timeout, context=context,
            connect_timeout=args.connect_timeout, handshake_timeout=args.handshake_timeout, payload=args.payload,
            banner=args.banner, capture_chain=args.chain, starttls=args.starttls, rate=args.rate,
            resume=args.resume_sessions, shard=args.shard, seed=args.seed, skip=recorded,
        )
    except ValueError as exc:  # an option probe() refuses: its rules, not repeated here
        raise UsageError(str(exc)) from None
    stats = Statistics()
    progress = Progress(sys.stderr, total=total, records_elsewhere=args.output is not None)
    # Ctrl-C and SIGTERM end with the summary of what finished.
    with _record_writer(args) as write, StopOnSignal() as stop:
        try:
            for result in results:
                stats.add(result)
                write(result)
                progress.update(stats, time.monotonic())
                stop.check()  # a signal whose stop has not come through yet stops here
        except KeyboardInterrupt:
            in_flight = results.in_flight
            results.close()  # stops the engine; what finished is still summed up
            progress.finish()
            stats.report(sys.stderr, stopped_by=stop.stopped_by, total=total, in_flight=in_flight)
            return stop.exit_status
        except ResumeError as exc:  # --resume FILE written for another input
            raise UsageError(str(exc)) from None
        progress.finish()
        stats.report(sys.stderr)
    return 0 if stats.failed == 0 else 1


def _resume_from(args: argparse.Namespace) -> RecordedTargets | None:
    """The targets --resume FILE records (None without --resume). The records
    go on in FILE, in its format, unless -o names another file; a record the
    kill cut short is dropped from FILE first, so the next starts on a line of its own."""
    if args.resume is None:
        return None
    from ..resume import RecordedTargets, drop_cut_record

    try:
        recorded = RecordedTargets.read(args.resume)
    except OSError as exc:
        raise UsageError(f"cannot resume from {args.resume}: {exc.strerror}") from None
    except ResumeError as exc:
        raise UsageError(str(exc)) from None
    if args.output is None:
        args.output = args.resume
    if args.format is None:
        args.format = recorded.format or "jsonl"
    if os.path.exists(args.output) and os.path.samefile(args.output, args.resume):
        if recorded.format is not None and args.format != recorded.format:
            raise UsageError(f"{args.resume} holds {recorded.format} records: resume it without --format {args.format}")
        drop_cut_record(args.resume, recorded)
    return recorded


def _stdin_text() -> IO[str]:
    return open(sys.stdin.fileno(), "r", encoding="utf-8", errors="surrogateescape", closefd=False)


def _count_targets(addresses: list[str], files: list[IO[str]]) -> int | None:
    """How many targets there are, when every input is an argument or a regular
    file (counted in a first quick pass); None for a pipe or a terminal."""
    total = len(addresses)
    for f in files:
        if not isinstance(f.name, str) or not os.path.isfile(f.name):  # stdin's name is its descriptor
            return None
        again = open(f.name, encoding="utf-8", errors="surrogateescape")
        total += sum(1 for _ in read_lines(again, comments=True))  # the rule the probe reads them by
    return total


def _defaults_applier(backend: Backend, scheme: str | None, port: int | None) -> Callable[[str], str | Address]:
    """A function that gives a target written without a transport ``scheme``
    and one without a port ``port``; anything else passes as it is (a target
    that does not parse is reported by the probe)."""
    transport = Transport(scheme) if scheme else None

    def apply(text: str) -> str | Address:
        stripped = text.strip()
        try:
            address: Address = backend.parse(stripped)
        except AddressError:
            return text
        if address.transport.local:
            return address
        if transport is not None and "://" not in stripped:
            address = Address(transport, address.host, address.port)
        if address.port is None and port is not None:
            address = address.with_port(port)
        return address

    return apply


_CSV_FIELDS = ("timestamp", "index", "target", "host", "ip", "port", "sni", "ok", "error_class", "errno", "message",
               "tls_version", "cipher", "alpn", "session_reused", "connect_ms", "handshake_ms", "total_ms",
               "trusted", "verify_result", "verify_reason", "name_matched", "cert_sha256", "cert_subject",
               "cert_issuer", "cert_san", "cert_not_after", "cert_expired", "cert_self_signed", "cert_key_type",
               "cert_key_bits", "cert_spki_sha256", "ja3s")
_JA4PLUS_FIELDS = ("ja4s", "ja4x")


@contextlib.contextmanager
def _record_writer(args: argparse.Namespace) -> Iterator[Callable[[ProbeResult], object]]:
    """write(result) for the chosen format and destination. A file is opened
    for appending and each record goes out whole in one write, so a run that
    is killed leaves whole records only."""
    fields = _CSV_FIELDS + (_JA4PLUS_FIELDS if args.ja4plus else ())
    kind = args.format or ("jsonl" if args.output else "text")
    out: IO[str] = sys.stdout
    if args.output:
        try:
            out = open(args.output, "a", encoding="utf-8", errors="surrogateescape", newline="")
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror}") from None
    # Each result reaches a pipe's reader at once, even while the probe waits for
    # more input (`tail -f targets | streamsock probe -f -`); a flush costs less than
    # the encoding of the line.
    if isinstance(out, io.TextIOWrapper):  # stdout replaced by another kind of stream has no reconfigure
        out.reconfigure(line_buffering=True)
    try:
        if kind == "csv":
            if out is sys.stdout or out.tell() == 0:  # a file appended to has its header
                out.write(",".join(fields) + "\r\n")
            yield lambda result: out.write(_csv_line(result, fields, args.ja4plus))
        elif kind == "jsonl":
            yield lambda result: out.write(_json_line(result, args.chain, args.ja4plus))
        else:
            yield lambda result: out.write(_human_line(result, args.chain))
    finally:
        if out is not sys.stdout:
            out.close()


def _csv_line(result: ProbeResult, fields: tuple[str, ...], ja4plus: bool) -> str:
    record = result.to_dict(ja4plus)
    for name, value in (record.pop("cert") or {}).items():  # flat: one column a field
        record["cert_" + name] = " ".join(value) if isinstance(value, list) else value
    line = io.StringIO()
    csv.writer(line).writerow(["" if record.get(name) is None else record[name] for name in fields])
    return line.getvalue()


def _json_line(result: ProbeResult, with_chain: bool, ja4plus: bool) -> str:
    record = result.to_dict(ja4plus)
    if with_chain:
        record["chain"] = [{**certificate_record(cert, result.finished_at),
                            **({"ja4x": ja4x_of(cert)} if ja4plus else {}),
                            "der": base64.b64encode(cert.der).decode("ascii")} for cert in result.chain]
    return json.dumps(record) + "\n"


def _human_line(result: ProbeResult, with_chain: bool) -> str:
    if result.ok:
        parts = [result.target, "ok"]
        if result.tls_version:
            parts += [result.tls_version, result.cipher or "-"]
            if result.session_reused:
                parts.append("resumed")
        if with_chain:
            parts.append(f"chain of {len(result.chain)}")
    else:
        parts = [result.target, result.error_class or result.error or "error", result.message]
    if result.total_ms is not None:
        parts.append(f"{result.total_ms:.1f} ms")
    return "  ".join(parts) + "\n"


class LatencyHistogram:
    """Percentiles of any number of latencies in constant memory: log-spaced
    buckets 1% wide, so a percentile is within 0.5% of the exact value."""

    _LOG_WIDTH = math.log(1.01)
    _FLOOR_MS = 0.001

    def __init__(self) -> None:
        self._buckets: collections.Counter[int] = collections.Counter()
        self.count = 0
        self.max = 0.0

    def add(self, ms: float) -> None:
        self._buckets[math.floor(math.log(max(ms, self._FLOOR_MS)) / self._LOG_WIDTH)] += 1
        self.count += 1
        self.max = max(self.max, ms)

    def percentile(self, p: float) -> float | None:
        if not self.count:
            return None
        rank = max(1, math.ceil(p / 100 * self.count))
        seen = 0
        for bucket in sorted(self._buckets):
            seen += self._buckets[bucket]
            if seen >= rank:
                return min(math.exp((bucket + 0.5) * self._LOG_WIDTH), self.max)  # the bucket's middle
        return self.max


class Statistics:
    """Outcome counts and latency percentiles of the finished targets."""

    PERCENTILES = (50, 90, 99)

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.done = 0
        self.failed = 0
        self.handshakes = 0
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.total_ms = LatencyHistogram()
        self.handshake_ms = LatencyHistogram()

    def add(self, result: ProbeResult) -> None:
        self.done += 1
        if not result.ok:
            self.failed += 1
            self.outcomes[result.error_class or result.error or "error"] += 1
            return
        self.outcomes["ok"] += 1
        if result.tls_version:
            self.handshakes += 1
        # Latencies of the targets that answered: a timeout's latency is the timeout.
        if result.total_ms is not None:
            self.total_ms.add(result.total_ms)
        if result.handshake_ms is not None:
            self.handshake_ms.add(result.handshake_ms)

    def report(self, out: IO[str], stopped_by: str | None = None, total: int | None = None,
               in_flight: int = 0) -> None:
        """The summary table; ``stopped_by`` names what ended the probe early,
        and then the targets cut short in flight, and of a known ``total`` those
        not started, are counted too."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        state = f"stopped by {stopped_by} after" if stopped_by else "done:"
        lines = [
            f"streamsock probe: {state} {self.done:,} targets in {elapsed:.2f} s ({self.done / elapsed:,.1f}/s), "
            f"{self.handshakes:,} TLS handshakes ({self.handshakes / elapsed:,.1f}/s)",
            "",
            f"  {'outcome':<28}{'count':>10}",
        ]
        ordered = [("ok", self.outcomes.get("ok", 0))] + sorted(
            ((name, n) for name, n in self.outcomes.items() if name != "ok"), key=lambda item: (-item[1], item[0]))
        if stopped_by:
            ordered.append(("stopped in flight", in_flight))
            if total is not None:
                ordered.append(("not started", max(total - self.done - in_flight, 0)))
        lines += [f"  {name:<28}{n:>10,}" for name, n in ordered]
        lines += ["", f"  {'latency of ok targets (ms)':<28}" + "".join(
            f"{'p' + str(p):>10}" for p in self.PERCENTILES) + f"{'max':>10}"]
        for label, histogram in (("total", self.total_ms), ("handshake", self.handshake_ms)):
            cells = [histogram.percentile(p) for p in self.PERCENTILES] + [histogram.max if histogram.count else None]
            lines.append(f"  {label:<28}" + "".join(f"{c:>10.1f}" if c is not None else f"{'-':>10}" for c in cells))
        out.write("\n".join(lines) + "\n")
        out.flush()


class Progress:
    """Done count (of the total, with an ETA, when the input is counted), rate
    and failures on stderr: a bar redrawn in place (at most 10 times a second)
    on a terminal, an occasional plain line otherwise. When the records go to
    the same terminal, they are the progress and no bar is drawn."""

    def __init__(self, out: IO[str], total: int | None, records_elsewhere: bool = False) -> None:
        self.out = out
        self.total = total
        self.bar = _is_tty(out) and (records_elsewhere or not _is_tty(sys.stdout))
        self.interval = _REDRAW_INTERVAL if self.bar else _PLAIN_INTERVAL
        self.last = time.monotonic()
        self.drawn = False

    def update(self, stats: Statistics, now: float) -> None:
        if now - self.last < self.interval:
            return
        self.last = now
        elapsed = max(now - stats.started, 1e-9)
        rate = stats.done / elapsed
        of_total = eta = ""
        if self.total is not None:
            of_total = f"/{self.total:,}"
            if rate > 0:
                eta = f"  ETA {_duration((self.total - stats.done) / rate)}"
        text = f"{stats.done:,}{of_total} done  {rate:,.0f}/s  {stats.failed:,} failed{eta}"
        if self.bar:
            self.out.write(f"\r{text}\x1b[K")
            self.drawn = True
        else:
            self.out.write(f"streamsock probe: {text}\n")
        self.out.flush()

    def finish(self) -> None:
        if self.drawn:  # the summary starts on a clean line
            self.out.write("\r\x1b[K")
            self.out.flush()
            self.drawn = False


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _is_tty(stream: IO[str] | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except ValueError:  # closed
        return False
