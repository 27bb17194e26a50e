"""probe() keeps going while a host-name lookup hangs.

A DNS server that never answers needs a resolver we control, so the probe
runs in its own network and mount namespace (``unshare``, root only): a
loopback-only network, /etc/resolv.conf bound to one naming a stub DNS server
on 127.0.0.1:53 that answers ``fast.test`` and never answers ``slow.test``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import BACKENDS

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"),
    reason="needs root, unshare and ip for a private network namespace",
)

NAMESPACE_SCRIPT = textwrap.dedent('''
    import json, os, socket, struct, subprocess, sys, tempfile, threading, time
    import streamsock as ss

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    conf = os.path.join(tempfile.mkdtemp(), "resolv.conf")
    with open(conf, "w") as f:
        f.write("nameserver 127.0.0.1\\noptions timeout:5 attempts:1\\n")
    subprocess.run(["mount", "--bind", conf, "/etc/resolv.conf"], check=True)

    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind(("127.0.0.1", 53))
    dns.settimeout(0.2)
    stop = threading.Event()

    def answer(query):
        at, labels = 12, []
        while query[at]:
            labels.append(query[at + 1:at + 1 + query[at]].decode())
            at += 1 + query[at]
        qtype = struct.unpack("!H", query[at + 1:at + 3])[0]
        question = query[12:at + 5]
        name = ".".join(labels)
        if name != "fast.test":
            return None  # slow.test: never answered
        records = b""
        if qtype == 1:  # A: 127.0.0.1
            records = b"\\xc0\\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([127, 0, 0, 1])
        header = query[:2] + struct.pack("!HHHHH", 0x8180, 1, 1 if records else 0, 0, 0)
        return header + question + records

    def serve_dns():
        while not stop.is_set():
            try:
                query, peer = dns.recvfrom(512)
            except socket.timeout:
                continue
            reply = answer(query)
            if reply:
                dns.sendto(reply, peer)

    threading.Thread(target=serve_dns, daemon=True).start()
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)  # the kernel completes connects
    port = listener.getsockname()[1]
    targets = [f"tcp://slow.test:{port}"] + [f"tcp://127.0.0.1:{port}"] * 20 + [f"tcp://fast.test:{port}"]
    start = time.monotonic()
    out = []
    for r in ss.get_backend(sys.argv[1]).probe(targets, concurrency=30, timeout=5, connect_timeout=1.5):
        out.append({"index": r.index, "ok": r.ok, "error": r.error, "message": r.message,
                    "at": time.monotonic() - start})
    stop.set()
    print(json.dumps(out))
''')


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_a_hanging_lookup_holds_up_nothing_else(backend_name):
    proc = subprocess.run(["unshare", "--net", "--mount", sys.executable, "-c", NAMESPACE_SCRIPT, backend_name],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    results = {r["index"]: r for r in json.loads(proc.stdout)}
    slow, fast = results[0], results[21]
    numeric = [results[i] for i in range(1, 21)]
    assert (slow["ok"], slow["error"], slow["message"]) == (False, "SS_ERR_TIMEOUT", "Name lookup timed out")
    assert 1.4 <= slow["at"] < 3.0  # the connect deadline, not the resolver's 5 s
    assert all(r["ok"] for r in numeric) and fast["ok"], [r["message"] for r in numeric + [fast] if not r["ok"]]
    assert max(r["at"] for r in numeric + [fast]) < 1.0  # finished while slow.test was still being looked up
