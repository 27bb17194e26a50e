"""tcp:// streams on both backends: connect, read, write, timeouts, errors, names, select."""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import time

import pytest

import streamsock as ss
from peers import LOOPBACK6, requires_ipv6


class EchoServer:
    """A plain tcp echo peer on a thread (stdlib sockets), optionally sending a greeting."""

    def __init__(self, host="127.0.0.1", greeting=b"", close_after=None):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1]
        self.host = host
        self.greeting = greeting
        self.close_after = close_after
        self.received = bytearray()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join(10)
        self.sock.close()

    @property
    def address(self):
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            if self.greeting:
                conn.sendall(self.greeting)
            if self.close_after is not None:
                conn.sendall(self.close_after)
                return
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                self.received += data
                conn.sendall(data)


def test_round_trip_readline_and_eof(backend):
    with EchoServer(close_after=b"line one\nline two\npartial") as peer:
        with backend.client(f"tcp://{peer.address}", timeout=5) as s:
            assert s.readline() == b"line one\n"
            assert list(s) == [b"line two\n", b"partial"]
            assert s.read() == b"" and s.eof and s.meta["eof"]


def test_large_payload_round_trips_through_partial_writes(backend):
    payload = bytes(range(256)) * 4096  # 1 MiB
    chunk = 65536
    with EchoServer() as peer:
        with backend.client(peer.address, timeout=5) as s:
            written, got = 0, bytearray()
            while written < len(payload):
                written += s.write(payload[written : written + chunk])
                got += s.read(chunk)
            while len(got) < len(payload):
                got += s.read(chunk)
            assert bytes(got) == payload
            assert bytes(peer.received) == payload


def test_read_size_limits_and_buffering(backend):
    with EchoServer(close_after=b"0123456789") as peer:
        with backend.client(peer.address, timeout=5) as s:
            assert s.read(3) == b"012"
            assert s.meta["unread_bytes"] == 7
            assert s.readline(limit=4) == b"3456"
            assert s.read(100) == b"789"
            assert s.read(100) == b""


def test_refused_is_connect_error_111(backend, refused_tcp_port):
    with pytest.raises(ss.ConnectError) as info:
        backend.client(f"tcp://127.0.0.1:{refused_tcp_port}", timeout=5)
    assert info.value.errno == 111
    assert "Connection refused" in str(info.value)
    assert f"tcp://127.0.0.1:{refused_tcp_port}" in str(info.value)


def test_connect_timeout_is_errno_110_within_deadline(backend, full_backlog):
    start = time.monotonic()
    with pytest.raises(ss.TimeoutError) as info:
        backend.client(f"tcp://{full_backlog.address}", timeout=0.5)
    elapsed = time.monotonic() - start
    assert info.value.errno == 110
    assert isinstance(info.value, TimeoutError)
    assert 0.4 < elapsed < 3


def test_dns_failure(backend):
    with pytest.raises(ss.ConnectError) as info:
        backend.client("tcp://nonexistent.invalid:80", timeout=5)
    assert info.value.errno == 0
    assert "getaddrinfo for nonexistent.invalid failed" in str(info.value)


def test_missing_port_is_an_address_error(backend):
    with pytest.raises(ss.AddressError) as info:
        backend.client("tcp://127.0.0.1", timeout=1)
    assert info.value.code == "SS_ERR_ADDR_PORT_MISSING"


def test_read_timeout_sets_timed_out_and_loses_nothing(backend):
    with EchoServer() as peer:
        with backend.client(peer.address, timeout=5) as s:
            s.set_timeout(0.2)
            start = time.monotonic()
            with pytest.raises(ss.TimeoutError) as info:
                s.read(10)
            assert info.value.errno == 110
            assert 0.15 < time.monotonic() - start < 2
            assert s.meta["timed_out"] is True
            s.write(b"after\n")
            assert s.readline() == b"after\n"
            assert s.meta["timed_out"] is False


def test_non_blocking_nowait_reads_return_none_until_data(backend):
    with EchoServer() as peer:
        with backend.client(peer.address, timeout=5) as s:
            s.set_blocking(False)
            assert s.read_nowait(10) is None
            assert s.readline_nowait() is None
            assert s.meta["blocked"] is False
            s.write(b"ping\n")
            ready, _, _ = ss.select([s], [], [], 5)
            assert ready == [s]
            deadline = time.monotonic() + 5
            line = None
            while line is None and time.monotonic() < deadline:
                line = s.readline_nowait()
            assert line == b"ping\n"


def test_non_blocking_read_without_data_raises_would_block_and_loses_nothing(backend):
    """read() and readline() return bytes, always: a non-blocking stream with
    nothing there raises what a non-blocking socket raises (BlockingIOError)."""
    with EchoServer() as peer:
        with backend.client(peer.address, timeout=5) as s:
            s.set_blocking(False)
            for call in (lambda: s.read(10), s.readline, lambda: s.recvfrom(10)):
                with pytest.raises(ss.WouldBlockError) as info:
                    call()
                assert isinstance(info.value, BlockingIOError) and isinstance(info.value, ss.StreamSocketError)
                assert info.value.errno == errno.EAGAIN and "_nowait returns None" in str(info.value)
    a, b = backend.socket_pair()  # a unix pair: a write is in the peer's queue when it returns
    with a, b:
        b.set_blocking(False)
        a.write(b"one\ntwo")
        assert b.readline() == b"one\n"
        with pytest.raises(ss.WouldBlockError):
            b.readline()  # "two" has no line end yet
        assert b.read(10) == b"two"  # kept through the raise


def test_nowait_reads_never_wait_on_a_blocking_stream(backend):
    with EchoServer() as peer:
        with backend.client(peer.address, timeout=5) as s:
            assert s.blocking
            assert s.read_nowait() is None and s.readline_nowait() is None
            s.write(b"three\n")
            assert ss.select([s], [], [], 5)[0] == [s]
            assert s.readline() == b"three\n"  # blocking mode is unchanged by the nowait calls


def test_names_and_meta(backend):
    with EchoServer() as peer:
        with backend.client(peer.address, timeout=5) as s:
            assert s.peer_name == peer.address
            host, port = s.local_name.rsplit(":", 1)
            assert host == "127.0.0.1" and int(port) > 0
            meta = s.meta
            assert meta["stream_type"] == "tcp_socket/ssl" and meta["mode"] == "r+" and not meta["seekable"]
            assert "crypto" not in meta and s.crypto is None


@requires_ipv6
def test_ipv6_loopback_names_are_bracketed(backend):
    with EchoServer(host=LOOPBACK6) as peer:
        with backend.client(f"tcp://[::1]:{peer.port}", timeout=5) as s:
            assert s.peer_name == f"[::1]:{peer.port}"
            assert s.local_name.startswith("[::1]:")
            s.write(b"v6\n")
            assert s.readline() == b"v6\n"


def test_fsockopen_joins_host_and_port(backend):
    with EchoServer() as peer:
        with backend.fsockopen("127.0.0.1", peer.port, timeout=5) as s:
            s.write(b"x\n")
            assert s.readline() == b"x\n"
    with pytest.raises(ss.AddressError, match="port given twice"):
        backend.fsockopen("127.0.0.1:80", 81)


def test_fsockopen_timeout_minus_one_is_no_limit_and_other_negatives_are_refused(backend):
    with EchoServer() as peer:
        with backend.fsockopen("127.0.0.1", peer.port, timeout=-1) as s:
            s.write(b"y\n")
            assert s.readline() == b"y\n"
    for timeout in (-2, -0.5, float("-inf")):
        with pytest.raises(ValueError, match="timeout must be at least 0, -1 \\(no limit\\) or None"):
            backend.fsockopen("127.0.0.1", 9, timeout=timeout)


def test_async_connect_finishes_on_first_io(backend):
    with EchoServer() as peer:
        s = backend.client(peer.address, timeout=5, flags=ss.CLIENT_ASYNC_CONNECT)
        with s:
            _, writable, _ = ss.select([], [s], [], 5)
            assert writable == [s]
            s.write(b"async\n")
            assert s.readline() == b"async\n"


def test_async_connect_reports_refusal_on_use(backend, refused_tcp_port):
    s = backend.client(f"127.0.0.1:{refused_tcp_port}", flags=ss.CLIENT_ASYNC_CONNECT)
    with s, pytest.raises(ss.ConnectError) as info:
        s.write(b"x")
    assert info.value.errno == 111


def test_shutdown_write_side_sends_eof(backend):
    with EchoServer() as peer:
        with backend.client(peer.address, timeout=5) as s:
            s.write(b"last words")
            s.shutdown(ss.SHUT_WR)
            assert s.read(-1) == b"last words"


def test_shutdown_with_an_invalid_how_is_a_value_error(backend):
    with EchoServer() as peer:
        with backend.client(peer.address, timeout=5) as s:
            with pytest.raises(ValueError, match="must be one of SHUT_RD, SHUT_WR, or SHUT_RDWR, not 3"):
                s.shutdown(3)
            s.write(b"still open\n")
            assert s.readline() == b"still open\n"


def test_select_with_a_negative_timeout_is_a_value_error(backend):
    with EchoServer() as peer:
        with backend.client(peer.address, timeout=5) as s:
            with pytest.raises(ValueError, match="timeout must be at least 0"):
                ss.select([s], [], [], -1)
            s.write(b"x")
            assert ss.select([s], [], [], float("inf"))[0] == [s]  # infinity: no limit


def test_closed_stream_raises_and_close_is_idempotent(backend):
    with EchoServer() as peer:
        s = backend.client(peer.address, timeout=5)
        s.close()
        s.close()
        assert s.closed
        with pytest.raises(ss.StreamSocketError, match="closed"):
            s.read(1)


def test_concurrent_use_of_one_stream_is_refused(backend):
    with EchoServer() as peer:
        with backend.client(peer.address, timeout=5) as s:
            s.set_timeout(1)
            errors = []

            def blocked_reader():
                try:
                    s.read(1)
                except ss.StreamSocketError as exc:
                    errors.append(exc)

            t = threading.Thread(target=blocked_reader)
            t.start()
            time.sleep(0.2)
            with pytest.raises(ss.StreamSocketError) as info:
                s.write(b"x")
            assert info.value.code == "SS_ERR_BUSY"
            t.join(5)


def test_select_counts_buffered_data_as_readable(backend):
    with EchoServer(close_after=b"a\nb\n") as peer:
        with backend.client(peer.address, timeout=5) as s:
            assert s.readline() == b"a\n"  # b"b\n" is now in our buffer
            start = time.monotonic()
            readable, _, _ = ss.select([s], [], [], 5)
            assert readable == [s] and time.monotonic() - start < 1


def test_bindto_sets_the_local_address(backend):
    with EchoServer() as peer:
        ctx = ss.Context(socket={"bindto": "127.0.0.2:0", "tcp_nodelay": True})
        with backend.client(peer.address, timeout=5, context=ctx) as s:
            assert s.local_name.startswith("127.0.0.2:")


def test_bindto_the_other_familys_wildcard_binds_any_address_and_a_specific_one_is_refused(backend):
    with EchoServer() as peer:  # an IPv4 target
        ctx = ss.Context(socket={"bindto": "[::]:0"})
        with backend.client(peer.address, timeout=5, context=ctx) as s:  # as PHP since bug 74764
            s.write(b"wildcard\n")
            assert s.readline() == b"wildcard\n"
        specific = ss.Context(socket={"bindto": "[::1]:0"})
        with pytest.raises(ss.ConnectError) as info:
            backend.client(peer.address, timeout=5, context=specific)
        assert info.value.errno == errno.EAFNOSUPPORT
        assert str(info.value).endswith("(bindto ::1 is an IPv6 address and the target is IPv4)")


# --- timeouts at the edges: one rule on both backends, checked where given ---------------------


def test_infinity_means_no_limit_and_nan_is_refused_where_given(backend):
    inf, nan = float("inf"), float("nan")
    with backend.server("tcp://127.0.0.1:0") as srv:
        with pytest.raises(ValueError, match="NaN"):
            srv.accept(timeout=nan)
        with pytest.raises(ValueError, match="NaN"):
            backend.client(f"tcp://{srv.local_name}", timeout=nan)
        with backend.client(f"tcp://{srv.local_name}", timeout=inf) as s:
            conn, _ = srv.accept(timeout=inf)
            with conn:
                s.set_timeout(inf)
                assert s.timeout is None
                with pytest.raises(ValueError, match="NaN"):
                    s.set_timeout(nan)
                assert s.timeout is None  # unchanged by the refused value
                conn.write(b"x")
                assert ss.select([s], [], [], inf)[0] == [s]  # no limit, and it returns as soon as data is there
                assert s.read(1) == b"x"
                with pytest.raises(ValueError, match="NaN"):
                    ss.select([s], [], [], nan)
        with pytest.raises(TypeError, match="number of seconds"):
            srv.accept(timeout="5")


def test_probe_refuses_nan_and_takes_infinity(backend):
    with pytest.raises(ValueError, match="NaN"):
        list(backend.probe(["tcp://127.0.0.1:1"], timeout=float("nan")))
    with pytest.raises(ValueError, match="NaN"):
        list(backend.probe(["tcp://127.0.0.1:1"], connect_timeout=float("nan")))
    with backend.server("tcp://127.0.0.1:0") as srv:
        [result] = backend.probe([f"tcp://{srv.local_name}"], timeout=float("inf"))
    assert result.ok


def test_integers_out_of_range_are_refused_by_the_context():
    with pytest.raises(TypeError, match="verify_depth"):
        ss.Context(ssl={"verify_depth": 2**40})
    with pytest.raises(TypeError, match="backlog"):
        ss.Context(socket={"backlog": 2**40})
    assert ss.Context(socket={"backlog": 2**31 - 1}).socket["backlog"] == 2**31 - 1


def _option(fd: int, level: int, name: int, size: int = 0):
    with socket.socket(fileno=os.dup(fd)) as view:
        return view.getsockopt(level, name, size) if size else view.getsockopt(level, name)


def test_php_socket_options_reach_the_socket(backend):
    """so_keepalive, tcp_keepidle/intvl/cnt, so_linger, so_rcvbuf/so_sndbuf and
    so_reuseaddr, read back from the kernel, on a client and on a server."""
    options = {"so_keepalive": True, "tcp_keepidle": 30, "tcp_keepintvl": 7, "tcp_keepcnt": 3, "so_linger": 2,
               "so_rcvbuf": 65536, "so_sndbuf": 32768, "so_reuseaddr": True}
    ctx = ss.Context(socket=options)
    with EchoServer() as peer, backend.client(peer.address, timeout=5, context=ctx) as s:
        fd = s.fileno()
        assert _option(fd, socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert [_option(fd, socket.IPPROTO_TCP, name) for name in
                (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)] == [30, 7, 3]
        assert struct.unpack("ii", _option(fd, socket.SOL_SOCKET, socket.SO_LINGER, 8)) == (1, 2)
        assert _option(fd, socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * 65536  # Linux doubles what it is given
        assert _option(fd, socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 32768
        assert _option(fd, socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        s.write(b"options\n")
        assert s.readline() == b"options\n"
    no_reuse = ss.Context(socket={"so_reuseaddr": False})
    with backend.server("tcp://127.0.0.1:0", context=no_reuse) as srv, backend.server("tcp://127.0.0.1:0") as default:
        assert _option(srv.fileno(), socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        assert _option(default.fileno(), socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1  # a server's default
    with pytest.raises(TypeError, match="tcp_keepcnt"):
        ss.Context(socket={"tcp_keepcnt": 0})
    with pytest.raises(ValueError, match="unknown socket context option 'so_keepalivee'"):
        ss.Context(socket={"so_keepalivee": True})
