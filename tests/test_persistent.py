"""Persistent client streams (pfsockopen, CLIENT_PERSISTENT) on both backends:
reuse, the context as part of the key, a liveness check that loses nothing,
a dead peer, close(), and fork."""

from __future__ import annotations

import os
import socket
import threading

import pytest

import streamsock as ss


class Peer:
    """A stdlib listener on a thread that counts its connections and keeps them."""

    def __init__(self, tls_context=None):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.tls_context = tls_context
        self.conns: list = []
        self.arrived = threading.Semaphore(0)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            conn.settimeout(10)
            if self.tls_context is not None:
                conn = self.tls_context.wrap_socket(conn, server_side=True)
            self.conns.append(conn)
            self.arrived.release()

    def connection(self, index: int):
        assert self.arrived.acquire(timeout=10)
        return self.conns[index]

    def close(self):
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone does not)
        self.listener.close()
        self.thread.join(10)
        for conn in self.conns:
            conn.close()


@pytest.fixture
def peer():
    p = Peer()
    yield p
    p.close()


@pytest.fixture
def tls_peer(pki):
    p = Peer(pki.server_context())
    yield p
    p.close()


def test_the_live_stream_is_handed_out_again(backend, peer):
    first = backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5, flags=ss.CLIENT_PERSISTENT)
    try:
        peer.connection(0)
        assert backend.pfsockopen("127.0.0.1", peer.port, timeout=5) is first  # one registry for both
        assert backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5, flags=ss.CLIENT_PERSISTENT) is first
        with backend.client(f"tcp://127.0.0.1:{peer.port}", timeout=5) as plain:  # not persistent: its own
            assert plain is not first
            # the reuses made no connection: the next one the peer saw is this one
            assert peer.connection(1).getpeername()[1] == int(plain.local_name.rsplit(":", 1)[1])
    finally:
        first.close()


def test_the_context_options_are_part_of_the_key(backend, peer):
    address = f"tcp://127.0.0.1:{peer.port}"
    a = backend.client(address, timeout=5, context=ss.Context(socket={"tcp_nodelay": False}),
                       flags=ss.CLIENT_PERSISTENT)
    b = backend.client(address, timeout=5, context=ss.Context(socket={"tcp_nodelay": False}),
                       flags=ss.CLIENT_PERSISTENT)  # another Context, the same options
    c = backend.client(address, timeout=5, context=ss.Context(socket={"tcp_nodelay": True}),
                       flags=ss.CLIENT_PERSISTENT)
    try:
        assert a is b and c is not a
        peer.connection(0), peer.connection(1)
    finally:
        a.close()
        c.close()


def test_the_liveness_check_loses_no_data(backend, peer):
    first = backend.pfsockopen("127.0.0.1", peer.port, timeout=5)
    try:
        conn = peer.connection(0)
        first.write(b"ping\n")
        assert conn.recv(100) == b"ping\n"
        conn.sendall(b"waiting 1\nwaiting 2\n")
        assert ss.select([first], [], [], 5)[0] == [first]
        again = backend.pfsockopen("127.0.0.1", peer.port, timeout=5)  # the check reads what is there...
        assert again is first
        assert again.readline() == b"waiting 1\n"  # ... and keeps it for the reader
        assert again.readline() == b"waiting 2\n"
    finally:
        first.close()


def test_tls_liveness_check_keeps_the_plaintext(backend, pki, tls_peer):
    ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
    first = backend.client(f"tls://127.0.0.1:{tls_peer.port}", timeout=5, context=ctx, flags=ss.CLIENT_PERSISTENT)
    try:
        conn = tls_peer.connection(0)
        conn.sendall(b"first\n")
        assert first.readline() == b"first\n"  # the session tickets before it are read too
        conn.sendall(b"over tls\n")
        assert ss.select([first], [], [], 5)[0] == [first]
        again = backend.client(f"tls://127.0.0.1:{tls_peer.port}", timeout=5, context=ctx,
                               flags=ss.CLIENT_PERSISTENT)
        assert again is first and again.meta["unread_bytes"] == 9
        assert again.readline() == b"over tls\n"
    finally:
        first.close()


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_dead_peer_means_a_new_connection(backend, peer, how):
    first = backend.pfsockopen("127.0.0.1", peer.port, timeout=5)
    try:
        conn = peer.connection(0)
        if how == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        conn.close()
        assert ss.select([first], [], [], 5)[0] == [first]
        second = backend.pfsockopen("127.0.0.1", peer.port, timeout=5)
        assert second is not first and first.closed
        peer.connection(1).sendall(b"new\n")
        assert second.readline() == b"new\n"
        assert backend.pfsockopen("127.0.0.1", peer.port, timeout=5) is second
    finally:
        second.close()


def test_close_ends_a_persistent_stream_and_the_next_call_connects(backend, peer):
    first = backend.pfsockopen("127.0.0.1", peer.port, timeout=5)
    first.close()
    second = backend.pfsockopen("127.0.0.1", peer.port, timeout=5)
    try:
        assert second is not first and not second.closed
        peer.connection(0), peer.connection(1)
    finally:
        second.close()


def test_a_forked_child_gets_its_own_connection(backend, pki, tls_peer):
    ctx = ss.Context(ssl={"cafile": pki.cafile, "peer_name": "localhost"})
    address = f"tls://127.0.0.1:{tls_peer.port}"
    first = backend.client(address, timeout=5, context=ctx, flags=ss.CLIENT_PERSISTENT)
    try:
        parent_side = tls_peer.connection(0)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: a new connection, and the parent's left alone
            status = 1
            try:
                import gc

                child = backend.client(address, timeout=5, context=ctx, flags=ss.CLIENT_PERSISTENT)
                distinct = child is not first
                del first  # the registry's hold on the parent's stream is all that is left
                gc.collect()  # collecting it would send a close_notify down the parent's connection
                child.write(b"from the child\n")
                status = 0 if distinct else 2
            finally:
                os.write(write_end, bytes([status]))
                os._exit(0)
        os.close(write_end)
        assert os.read(read_end, 1) == b"\0"
        os.close(read_end)
        os.waitpid(pid, 0)
        assert tls_peer.connection(1).recv(100) == b"from the child\n"
        first.write(b"parent still here\n")  # the child sent nothing down the parent's connection
        assert parent_side.recv(100) == b"parent still here\n"
        parent_side.sendall(b"ok\n")
        assert first.readline() == b"ok\n"
        assert backend.client(address, timeout=5, context=ctx, flags=ss.CLIENT_PERSISTENT) is first
    finally:
        first.close()
