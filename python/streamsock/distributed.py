"""One probe over many cores and machines: its shards as tasks on a Dask cluster.

Each task is one shard (``probe(..., shard=(i, n))``) run by one worker
process with an engine of its own; it appends its records, as ``streamsock
probe --json`` writes them, to a file of its own in the output directory,
each record in one write. A task that runs again, because it failed or its
worker died, first takes the file's lock (so an earlier try still running
somewhere ends first), then skips the targets the file records, exactly as
``streamsock probe --resume`` does: no target is recorded twice. The same
holds for the whole call: run it again and it goes on where it stopped.

Needs ``pip install 'streamsock[dask]'`` (dask's ``distributed``) on the
client and on every worker. The inputs and the output directory must be
reachable by the same path on every worker (on one machine they are; on a
cluster, a shared filesystem).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import itertools
import os
import resource
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypedDict

from .context import Context

# distributed leaves Client(), LocalCluster(), as_completed(), Client.nthreads and
# Client.cancel unannotated: their calls below are marked type: ignore[no-untyped-call].
if TYPE_CHECKING:
    import argparse

    import distributed
    from distributed.deploy.cluster import Cluster

    from ._backend import Backend
    from .address import Address

LOCAL = "local"  # the cluster: a LocalCluster on this machine, a worker process per core
# A Dask worker wakes 50 times a second to check its event loop, samples its task's
# stack every 10 ms, polls psutil twice a second and its memory ten times: 3-5 % of
# a core doing nothing, which a probe pays for every handshake. Workers started
# here do less of it; for workers started by hand, the same as environment
# variables (README).
QUIET_WORKERS = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "1s",
}


@dataclass
class ShardReport:
    """What one shard's task did: targets probed now (``done``), of them
    ``failed`` and ``handshakes``; ``skipped`` were recorded by an earlier try."""

    shard: int
    shards: int
    path: str
    done: int = 0
    failed: int = 0
    handshakes: int = 0
    skipped: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: float = 0.0
    cpu_seconds: float = 0.0   # the worker process's user + system time during the task
    worker_pid: int = 0


class ShardSpec(TypedDict):
    """What every shard's task is given (a plain dict, pickled to the workers)."""

    targets: list[str]
    files: list[str]                 # absolute paths
    seed: int
    backend: str | None              # None: the worker's default
    scheme: str | None
    port: int | None
    options: dict[str, Any]          # probe()'s keyword arguments
    output_dir: str                  # absolute path
    ja4plus: bool
    context: tuple[dict[str, Any], dict[str, Any]] | None  # a Context's ssl and socket options


def shard_path(output_dir: str | os.PathLike[str], shard: int, shards: int) -> str:
    return os.path.join(os.fspath(output_dir), f"shard-{shard:04d}-of-{shards:04d}.jsonl")


def probe(targets: Sequence[str] = (), output_dir: str | os.PathLike[str] = "", *,
          files: Sequence[str | os.PathLike[str]] = (), shards: int | None = None,
          cluster: str | distributed.Client | Cluster = LOCAL, seed: int = 0, context: Context | None = None,
          backend: str | None = None, scheme: str | None = None, port: int | None = None, retries: int = 2,
          on_report: Callable[[ShardReport], object] | None = None, ja4plus: bool = False,
          **options: Any) -> list[ShardReport]:
    """Probe ``targets`` then the lines of ``files`` (read on the workers,
    one target a line, blank lines and # comments skipped) as ``shards``
    tasks on ``cluster``: "local" (a worker process per core on this
    machine), a scheduler's address ("tcp://host:8786"), a
    ``distributed.Client`` or a Dask cluster (:func:`local_cluster`).
    ``shards`` defaults to the cluster's worker threads. Shard i appends
    its records to ``output_dir/shard-i-of-n.jsonl``; ``index`` is the
    position in the whole input. ``options`` are :func:`streamsock.probe`'s
    (``concurrency``, ``timeout``, ...), for each shard, except ``rate``,
    which is for the whole probe and is split between the shards. ``scheme``
    and ``port`` complete targets written without them, as the command
    line's ``--scheme``/``--port``. A failed task is tried ``retries`` more
    times; ``on_report(report)`` is called as each shard ends. ``ja4plus``
    adds JA4S and JA4X to the records (FoxIO License 1.1, see
    :mod:`streamsock.ja4plus`). Returns a :class:`ShardReport` per shard."""
    from .shard import checked_seed

    checked_seed(seed)
    if not output_dir:
        raise ValueError("output_dir: the directory the shards' records go to")
    if shards is not None and (type(shards) is not int or shards < 1):
        raise ValueError(f"shards must be an int >= 1, not {shards!r}")
    options = dict(options)
    for name in ("shard", "skip"):
        if name in options:
            raise ValueError(f"{name} is chosen for each task: leave it out")
    output_dir = os.path.abspath(os.fspath(output_dir))
    os.makedirs(output_dir, exist_ok=True)
    spec: ShardSpec = {
        "targets": list(targets), "files": [os.path.abspath(os.fspath(f)) for f in files], "seed": seed,
        "backend": backend, "scheme": scheme, "port": port, "options": options, "output_dir": output_dir,
        "ja4plus": ja4plus,
        "context": (dict(context._ssl), dict(context._socket)) if context is not None else None,
    }
    with _client(cluster) as client:
        if shards is None:
            shards = max(1, sum(client.nthreads().values()))  # type: ignore[no-untyped-call]
        if options.get("rate") is not None:
            spec["options"]["rate"] = options["rate"] / shards
        return _run(client, spec, shards, retries, on_report)


@contextlib.contextmanager
def _client(cluster: str | distributed.Client | Cluster) -> Iterator[distributed.Client]:
    """A distributed.Client for ``cluster``; one this call started is closed again."""
    try:
        import distributed
    except ImportError:
        raise ImportError("streamsock.distributed needs dask's distributed: pip install 'streamsock[dask]'") from None
    if isinstance(cluster, distributed.Client):
        yield cluster
        return
    if cluster == LOCAL:
        with local_cluster() as local, distributed.Client(local) as client:  # type: ignore[no-untyped-call]
            yield client
        return
    with distributed.Client(cluster) as client:  # type: ignore[no-untyped-call]
        yield client


def local_cluster(workers: int | None = None) -> distributed.LocalCluster:
    """A Dask LocalCluster for probing: ``workers`` processes (default: one per
    core), each running one task at a time, so one engine per core."""
    import dask
    import distributed

    with dask.config.set(QUIET_WORKERS):  # handed on to the worker processes as they start
        return distributed.LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True, dashboard_address=None)


def _run(client: distributed.Client, spec: ShardSpec, shards: int, retries: int,
         on_report: Callable[[ShardReport], object] | None) -> list[ShardReport]:
    import distributed

    run_id = uuid.uuid4().hex[:12]
    futures = [client.submit(probe_shard, spec, index, shards, key=f"streamsock-probe-{run_id}-{index}",
                             retries=retries, pure=False) for index in range(shards)]
    reports: list[ShardReport] = []
    try:
        for future in distributed.as_completed(futures):  # type: ignore[no-untyped-call]
            report: ShardReport = future.result()
            reports.append(report)
            if on_report is not None:
                on_report(report)
    finally:
        # When interrupted: nothing left running for a caller that has gone.
        client.cancel(futures)  # type: ignore[no-untyped-call]
    return sorted(reports, key=lambda r: r.shard)


def probe_shard(spec: ShardSpec, index: int, shards: int) -> ShardReport:
    """Shard ``index`` of ``shards`` of the probe ``spec`` describes, in this
    process: its records appended to its file, once each, however often it runs."""
    from . import _backend
    from .cli.probe import _json_line
    from .resume import RecordedTargets

    started, cpu_before = time.monotonic(), _cpu_seconds()
    path = shard_path(spec["output_dir"], index, shards)
    report = ShardReport(index, shards, path, worker_pid=os.getpid())
    backend = _backend.get(spec["backend"]) if spec["backend"] else _backend.select()
    context = Context(ssl=spec["context"][0], socket=spec["context"][1]) if spec["context"] else None
    options = dict(spec["options"])
    with_chain = bool(options.get("capture_chain"))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # an earlier try of this shard, still running elsewhere, ends first
        recorded = RecordedTargets.read(path)
        os.ftruncate(fd, recorded.whole_size)  # a record cut short by a kill
        report.skipped = len(recorded)
        results = backend.probe(_targets(spec, backend), context=context, shard=(index, shards), seed=spec["seed"],
                                skip=recorded if len(recorded) else None, **options)
        with contextlib.closing(results):
            for result in results:
                _write_all(fd, _json_line(result, with_chain, spec["ja4plus"]).encode("utf-8", "surrogateescape"))
                report.done += 1
                if result.ok:
                    report.outcomes["ok"] += 1
                    report.handshakes += result.tls_version is not None
                else:
                    report.failed += 1
                    report.outcomes[result.error_class or result.error or "error"] += 1
    finally:
        os.close(fd)
    report.seconds = time.monotonic() - started
    report.cpu_seconds = _cpu_seconds() - cpu_before
    return report


def _targets(spec: ShardSpec, backend: Backend) -> Iterator[str | Address]:
    from .cli.main import read_lines

    lines = (read_lines(open(path, encoding="utf-8", errors="surrogateescape"), comments=True)
             for path in spec["files"])
    texts = itertools.chain(spec["targets"], itertools.chain.from_iterable(lines))
    if spec["scheme"] or spec["port"]:
        from .cli.probe import _defaults_applier

        return map(_defaults_applier(backend, spec["scheme"], spec["port"]), texts)
    return texts


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def read_records(output_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records of every shard file in ``output_dir``, shard by shard
    (whole lines only: a record being written is left for later)."""
    import json

    for name in sorted(os.listdir(output_dir)):
        if name.startswith("shard-") and name.endswith(".jsonl"):
            with open(os.path.join(output_dir, name), "rb") as f:
                for line in f:
                    if line.endswith(b"\n"):
                        yield json.loads(line)


# --- streamsock probe --cluster ---------------------------------------------------------


def run_cli(args: argparse.Namespace) -> int:
    """``streamsock probe --cluster ADDR [--shards N] -o DIR``: a line per shard as
    it ends, then a summary, on stderr; the records in DIR."""
    from .cli.main import UsageError, tls_client_context

    for given, option in ((args.shard, "--shard"), (args.resume, "--resume")):
        if given is not None:
            raise UsageError(f"{option} goes without --cluster: the cluster shards, and running the same "
                             "command again resumes every shard from its file")
    if args.format == "csv":
        raise UsageError("--cluster writes JSON lines (--format jsonl)")
    if not args.output:
        raise UsageError("--cluster needs -o DIR: the directory for the shards' records (a file per shard)")
    if os.path.isfile(args.output):
        raise UsageError(f"-o {args.output}: with --cluster, a directory (a file per shard), not a file")
    files: list[str] = []
    for f in args.file or ():
        if not isinstance(f.name, str) or f is sys.stdin or f.name == "<stdin>":
            raise UsageError("--cluster reads its targets from files (-f FILE) and arguments, not from stdin")
        files.append(f.name)
        f.close()
    if not args.addresses and not files:
        raise UsageError("give targets as arguments or with -f FILE")
    options = dict(concurrency=args.concurrency, timeout=args.timeout, connect_timeout=args.connect_timeout,
                   handshake_timeout=args.handshake_timeout, payload=args.payload, banner=args.banner,
                   capture_chain=args.chain, starttls=args.starttls, rate=args.rate, resume=args.resume_sessions)
    totals = ShardReport(-1, 0, args.output)
    started = time.monotonic()

    def report(shard: ShardReport) -> None:
        _add(totals, shard)
        print(f"streamsock probe: shard {shard.shard}/{shard.shards} done: {shard.done:,} targets "
              f"({shard.failed:,} failed, {shard.skipped:,} recorded before) in {shard.seconds:.2f} s "
              f"-> {shard.path}", file=sys.stderr, flush=True)

    try:
        probe(args.addresses, args.output, files=files, shards=args.shards, cluster=args.cluster, seed=args.seed,
              context=tls_client_context(args), backend=args.backend, scheme=args.scheme, port=args.port,
              on_report=report, ja4plus=args.ja4plus, **options)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    elapsed = max(time.monotonic() - started, 1e-9)
    outcomes = ", ".join(f"{name} {n:,}" for name, n in totals.outcomes.most_common())
    print(f"streamsock probe: done: {totals.done:,} targets in {elapsed:.2f} s ({totals.done / elapsed:,.1f}/s), "
          f"{totals.handshakes:,} TLS handshakes; {outcomes or 'nothing new'}", file=sys.stderr, flush=True)
    return 0 if totals.failed == 0 else 1


def _add(totals: ShardReport, shard: ShardReport) -> None:
    totals.done += shard.done
    totals.failed += shard.failed
    totals.handshakes += shard.handshakes
    totals.skipped += shard.skipped
    totals.outcomes.update(shard.outcomes)
