"""streamsock.distributed and `streamsock probe --cluster`: shards as tasks on a real
Dask cluster (a scheduler and two single-threaded worker processes on loopback, or
a LocalCluster), every target exactly once, even when a worker is killed mid-task."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys

import distributed
import pytest

import streamsock.distributed as ssd
from peers import _wait_until, refused_port
from streamsock.shard import shard_of

CLI = [sys.executable, "-m", "streamsock"]
DEADLINE = 90.0  # a cluster's start, its tasks and its end


def wait_until(condition, what: str, deadline: float = 30.0, process: subprocess.Popen | None = None) -> None:
    """Until ``condition()`` holds; ``process``, if given, must not end first."""
    def ended() -> bool:
        return process is not None and process.poll() is not None

    assert _wait_until(lambda: condition() or ended(), deadline, 0.02), f"no {what} within {deadline} s"
    assert condition(), f"{what}: the process ended first"


@contextlib.contextmanager
def dask_cluster(tmp_path, workers: int = 2):
    """A scheduler on loopback and ``workers`` worker processes of one thread each
    (no nanny: a worker killed stays dead). Yields (scheduler address, worker processes)."""
    scheduler_file = tmp_path / "scheduler.json"
    log = open(tmp_path / "cluster.log", "wb")
    processes = []
    try:
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(scheduler_file)], stdout=log, stderr=log))
        wait_until(lambda: scheduler_file.exists() and "address" in scheduler_file.read_text(), "scheduler",
                   process=processes[0])
        address = json.loads(scheduler_file.read_text())["address"]
        for _ in range(workers):
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file),
                 "--nthreads", "1", "--no-nanny", "--no-dashboard", "--death-timeout", "60"], stdout=log, stderr=log))
        with distributed.Client(address, timeout=30) as client:  # every worker there before the first task
            client.wait_for_workers(workers, timeout=60)
        yield address, processes[1:]
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
        for process in reversed(processes):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def loopback_targets(count: int) -> list[str]:
    port = refused_port()
    return [f"127.1.{i >> 8 & 255}.{i & 255}:{port}" for i in range(1, count + 1)]


def recorded_indexes(output_dir) -> collections.Counter:
    return collections.Counter(record["index"] for record in ssd.read_records(output_dir))


def test_shards_as_tasks_on_two_workers_report_every_target_once(backend, tmp_path):
    targets = loopback_targets(6000)
    (tmp_path / "targets").write_text("".join(t + "\n" for t in targets[2000:]))
    with dask_cluster(tmp_path) as (address, workers):
        reports = ssd.probe(targets[:2000], tmp_path / "out", files=[tmp_path / "targets"], shards=4, cluster=address,
                            backend=backend.name, seed=5, concurrency=200, timeout=5)
    assert [r.shard for r in reports] == [0, 1, 2, 3]
    assert {r.worker_pid for r in reports} == {w.pid for w in workers}  # both workers took shards
    assert sum(r.done for r in reports) == 6000 and all(r.skipped == 0 for r in reports)
    records = list(ssd.read_records(tmp_path / "out"))
    assert sorted(r["index"] for r in records) == list(range(6000))
    assert all(r["target"] == targets[r["index"]] and r["error_class"] == "ConnectError" for r in records)
    assert sorted(os.listdir(tmp_path / "out")) == [f"shard-000{i}-of-0004.jsonl" for i in range(4)]


def test_a_worker_killed_mid_task_is_retried_without_duplicates(backend, tmp_path):
    """Both workers are probing their shard (rate-limited, so it lasts) when one is killed
    with SIGKILL; the scheduler gives its task to the other, which goes on from the
    shard's file. Every target is recorded exactly once."""
    targets = loopback_targets(2000)
    (tmp_path / "targets").write_text("".join(t + "\n" for t in targets))
    out = tmp_path / "out"
    with dask_cluster(tmp_path) as (address, workers):
        with subprocess.Popen([*CLI, "probe", "--cluster", address, "--shards", "2", "--backend", backend.name,
                               "-f", str(tmp_path / "targets"), "-o", str(out), "--rate", "400"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            try:
                files = [ssd.shard_path(out, i, 2) for i in range(2)]
                sizes = [sum(shard_of(t, 2) == i for t in targets) for i in range(2)]

                def both_shards_running() -> bool:  # so each is on a worker of its own, half done
                    lines = [open(f, "rb").read().count(b"\n") if os.path.exists(f) else 0 for f in files]
                    return all(100 <= n < size for n, size in zip(lines, sizes))

                wait_until(both_shards_running, "records from both shards", process=proc)
                os.kill(workers[0].pid, signal.SIGKILL)
                workers[0].wait(10)
                _, stderr = proc.communicate(timeout=DEADLINE)
            finally:
                if proc.poll() is None:
                    proc.kill()
    assert proc.returncode == 1, stderr.decode()  # every target failed (closed ports), none twice
    counts = recorded_indexes(out)
    assert sorted(counts) == list(range(2000)) and set(counts.values()) == {1}
    recorded_before = [int(n.replace(b",", b"")) for n in re.findall(rb"failed, ([\d,]+) recorded before", stderr)]
    assert len(recorded_before) == 2 and max(recorded_before) >= 100 and min(recorded_before) == 0, stderr.decode()
    done = int(re.search(rb"probe: done: ([\d,]+) targets", stderr)[1].replace(b",", b""))
    assert done + max(recorded_before) == 2000  # the killed try's records counted once, by the retry's skip


def test_the_command_line_on_a_local_cluster_and_run_again(backend, tmp_path):
    """--cluster local: a worker per core; the same command again finds everything recorded."""
    targets = loopback_targets(3000)
    (tmp_path / "targets").write_text("".join(t + "\n" for t in targets))
    command = [*CLI, "probe", "--cluster", "local", "--shards", "3", "--backend", backend.name,
               "-f", str(tmp_path / "targets"), "-o", str(tmp_path / "out")]
    first = subprocess.run(command, capture_output=True, timeout=DEADLINE)
    assert first.returncode == 1 and b"done: 3,000 targets" in first.stderr, first.stderr.decode()
    assert len(re.findall(rb"shard \d/3 done", first.stderr)) == 3
    again = subprocess.run(command, capture_output=True, timeout=DEADLINE)
    assert again.returncode == 0 and b"done: 0 targets" in again.stderr, again.stderr.decode()
    counts = recorded_indexes(tmp_path / "out")
    assert sorted(counts) == list(range(3000)) and set(counts.values()) == {1}


@pytest.mark.parametrize("arguments, message", [
    (["--shard", "0/2", "-o", "d"], b"--shard goes without --cluster"),
    (["--resume", "f", "-o", "d"], b"--resume goes without --cluster"),
    (["--format", "csv", "-o", "d"], b"--cluster writes JSON lines"),
    ([], b"--cluster needs -o DIR"),
    (["-o", "d", "-f", "-"], b"not from stdin"),
])
def test_command_line_cluster_usage_errors(tmp_path, arguments, message):
    result = subprocess.run([*CLI, "probe", "--cluster", "local", "127.0.0.1:1", *arguments], capture_output=True,
                            timeout=DEADLINE, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and message in result.stderr, result.stderr.decode()


def test_api_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="shards must be an int >= 1"):
        ssd.probe(["127.0.0.1:1"], tmp_path, shards=0)
    with pytest.raises(ValueError, match="shard is chosen for each task"):
        ssd.probe(["127.0.0.1:1"], tmp_path, shard=(0, 2))
    with pytest.raises(ValueError, match="output_dir"):
        ssd.probe(["127.0.0.1:1"])
