"""`streamsock probe --resume FILE`: a run killed halfway goes on where it stopped,
and every target is in the final file exactly once."""

from __future__ import annotations

import collections
import csv
import json
import signal
import subprocess
import sys

import pytest

from peers import SilentServer, _wait_until, refused_port
from streamsock.resume import RecordedTargets, ResumeError

CLI = [sys.executable, "-m", "streamsock"]
DEADLINE = 30.0


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, timeout=DEADLINE)


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for_records(path, count: int, proc: subprocess.Popen) -> None:
    """Until ``path`` holds ``count`` whole records (the run is past that point)."""
    def written() -> bool:
        return path.exists() and path.read_bytes().count(b"\n") >= count

    assert _wait_until(lambda: written() or proc.poll() is not None, DEADLINE), "the probe wrote too few records"
    assert written(), "the probe ended before it was killed"


def test_a_run_killed_halfway_and_resumed_records_every_target_once(backend, tmp_path):
    """SIGKILL while hundreds of probes are in flight (some in a handshake that never ends),
    with half the input not read yet; --resume probes what was not recorded and appends it."""
    with SilentServer() as silent:
        refused = refused_port()
        targets = [f"tls://127.0.0.1:{silent.port}" if i % 40 == 0 else f"127.0.{i >> 8}.{i & 255}:{refused}"
                   for i in range(4000)]
        (tmp_path / "targets").write_text("".join(t + "\n" for t in targets))
        out = tmp_path / "out.jsonl"
        with subprocess.Popen([*CLI, "probe", "--backend", backend.name, "-f", "-", "-o", str(out), "-c", "200",
                               "--timeout", "30"], stdin=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
            try:
                proc.stdin.write("".join(t + "\n" for t in targets[:2000]).encode())
                proc.stdin.flush()
                wait_for_records(out, 1000, proc)
                proc.send_signal(signal.SIGKILL)
                proc.wait(DEADLINE)
            finally:
                if proc.poll() is None:
                    proc.kill()
        before = records(out)
        assert 1000 <= len(before) < 2000  # the silent targets were in flight, the rest unread
        resumed = run_cli("probe", "--backend", backend.name, "-f", str(tmp_path / "targets"), "--resume", str(out),
                          "--timeout", "0.5", "-c", "500")
    assert resumed.returncode == 1, resumed.stderr.decode()  # some failed, as they should
    after = records(out)
    assert after[:len(before)] == before  # appended, nothing rewritten
    counts = collections.Counter(r["index"] for r in after)
    assert sorted(counts) == list(range(4000)) and set(counts.values()) == {1}
    assert all(r["target"] == targets[r["index"]] for r in after)
    assert f"done: {4000 - len(before):,} targets".encode() in resumed.stderr


def test_a_record_cut_short_is_dropped_and_probed_again(backend, tmp_path):
    refused = refused_port()
    targets = [f"127.0.0.{i}:{refused}" for i in range(1, 21)]
    out = tmp_path / "out.jsonl"
    first = run_cli("probe", "--backend", backend.name, *targets[:10], "--json", "-o", str(out))
    assert first.returncode == 1
    with open(out, "a") as f:
        f.write('{"timestamp": "2026-01-01T00:00:00.000Z", "index": 10, "tar')  # a kill in the middle of a write
    assert 10 not in RecordedTargets.read(out)
    resumed = run_cli("probe", "--backend", backend.name, *targets, "--resume", str(out))
    assert resumed.returncode == 1, resumed.stderr.decode()
    assert sorted(r["index"] for r in records(out)) == list(range(20))


def test_a_csv_output_is_resumed_as_csv(backend, tmp_path):
    refused = refused_port()
    targets = [f"127.0.0.{i}:{refused}" for i in range(1, 31)]
    out = tmp_path / "out.csv"
    run_cli("probe", "--backend", backend.name, "--shard", "0/2", *targets, "--format", "csv", "-o", str(out))
    resumed = run_cli("probe", "--backend", backend.name, *targets, "--resume", str(out))
    assert resumed.returncode == 1, resumed.stderr.decode()
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(row["index"]) for row in rows) == list(range(30))  # one header, then every target once
    assert all(row["target"] == targets[int(row["index"])] for row in rows)


def test_resuming_into_another_file_leaves_the_first_as_it_is(backend, tmp_path):
    refused = refused_port()
    targets = [f"127.0.0.{i}:{refused}" for i in range(1, 11)]
    first, rest = tmp_path / "first.jsonl", tmp_path / "rest.jsonl"
    run_cli("probe", "--backend", backend.name, *targets[:4], "-o", str(first))
    kept = first.read_bytes()
    run_cli("probe", "--backend", backend.name, *targets, "--resume", str(first), "-o", str(rest))
    assert first.read_bytes() == kept
    assert sorted(r["index"] for r in records(rest)) == list(range(4, 10))


def test_shards_resume_each_from_their_own_file(backend, tmp_path):
    refused = refused_port()
    targets = [f"127.0.1.{i}:{refused}" for i in range(1, 101)]
    (tmp_path / "targets").write_text("\n".join(targets) + "\n")
    for shard in ("0/2", "1/2"):
        out = tmp_path / f"shard{shard[0]}.jsonl"
        run_cli("probe", "--backend", backend.name, "--shard", shard, "-f", str(tmp_path / "targets"), "-o", str(out))
        lines = out.read_text().splitlines(keepends=True)
        out.write_text("".join(lines[:len(lines) // 2]))  # the run's second half lost
        run_cli("probe", "--backend", backend.name, "--shard", shard, "-f", str(tmp_path / "targets"),
                "--resume", str(out))
    indexes = [r["index"] for shard in "01" for r in records(tmp_path / f"shard{shard}.jsonl")]
    assert sorted(indexes) == list(range(100))


def test_resuming_with_another_input_is_refused(backend, tmp_path):
    out = tmp_path / "out.jsonl"
    run_cli("probe", "--backend", backend.name, f"127.0.0.1:{refused_port()}", "-o", str(out))
    result = run_cli("probe", "--backend", backend.name, "127.0.0.2:1", "--resume", str(out))
    assert result.returncode == 2
    assert b"record target 0 as '127.0.0.1:" in result.stderr and b"the input has '127.0.0.2:1'" in result.stderr


@pytest.mark.parametrize("content, message", [
    (b"127.0.0.1:1  ConnectError  refused\n", b"neither JSON lines nor CSV with index and target columns"),
    (b'{"index": 0, "target": "a"}\n{"oops": 1}\n', b"line 2: not a probe record (no 'index' field)"),
    (b"index,target\nx,a\n", b"line 2: not a probe record"),
])
def test_a_file_that_is_not_a_probe_output_is_a_usage_error(tmp_path, content, message):
    path = tmp_path / "out"
    path.write_bytes(content)
    result = run_cli("probe", "127.0.0.1:1", "--resume", str(path))
    assert result.returncode == 2 and message in result.stderr, result.stderr.decode()
    assert path.read_bytes() == content
    missing = run_cli("probe", "127.0.0.1:1", "--resume", str(tmp_path / "none"))
    assert missing.returncode == 2 and b"cannot resume from" in missing.stderr


def test_recorded_targets_keep_positions_as_bits(tmp_path):
    recorded = RecordedTargets()
    for position in (0, 7, 8, 1_000_003, 7):
        recorded.add(position, f"t{position}")
    assert len(recorded) == 4
    assert [p in recorded for p in (0, 1, 7, 8, 9, 1_000_003, 1_000_004, -1, "0")] == \
        [True, False, True, True, False, True, False, False, False]
    recorded.confirm(7, " t7 ")
    with pytest.raises(ResumeError, match="record target 8 as 't8', the input has 'x'"):
        recorded.confirm(8, "x")
    assert RecordedTargets.read(tmp_path / "none", missing_ok=True).format is None
