"""udp://, unix:// and udg:// (filesystem and abstract names) on both backends."""

from __future__ import annotations

import os
import uuid

import pytest

import streamsock as ss
from peers import short_tempdir


def test_udp_client_round_trip(backend, udp_echo):
    with backend.client(f"udp://{udp_echo.address}", timeout=5) as s:
        assert s.meta["stream_type"] == "udp_socket"
        s.write(b"datagram one")
        assert s.read(100) == b"datagram one"
        s.write(b"two")
        assert s.read(100) == b"two"


def test_udp6_client_round_trip(backend, udp6_echo):
    with backend.client(f"udp://[::1]:{udp6_echo.port}", timeout=5) as s:
        s.write(b"six")
        assert s.read(100) == b"six"


def test_unix_stream_client(backend, unix_echo):
    with backend.client(f"unix://{unix_echo.path}", timeout=5) as s:
        assert s.meta["stream_type"] == "unix_socket"
        s.write(b"over a unix socket\n")
        assert s.readline() == b"over a unix socket\n"
        assert s.peer_name == unix_echo.path


def test_unix_abstract_client(backend, unix_echo_abstract):
    with backend.client(f"unix://{unix_echo_abstract.sockaddr}", timeout=5) as s:
        s.write(b"abstract\n")
        assert s.readline() == b"abstract\n"


def test_udg_client_gets_replies(backend, udg_echo):
    with backend.client(f"udg://{udg_echo.path}", timeout=5) as s:
        assert s.meta["stream_type"] == "udg_socket"
        s.write(b"unix datagram")
        assert s.read(100) == b"unix datagram"


def test_udg_abstract_client(backend, udg_echo_abstract):
    with backend.client(f"udg://{udg_echo_abstract.sockaddr}", timeout=5) as s:
        s.write(b"abstract datagram")
        assert s.read(100) == b"abstract datagram"


def test_unix_refused_and_missing(backend):
    with short_tempdir() as directory:
        path = os.path.join(directory, "nobody.sock")
        with pytest.raises(ss.ConnectError) as info:
            backend.client(f"unix://{path}", timeout=1)
        assert info.value.errno == 2  # ENOENT


def test_unix_server_and_client_remove_the_socket_file(backend):
    with short_tempdir() as directory:
        path = os.path.join(directory, "srv.sock")
        srv = backend.server(f"unix://{path}")
        with srv, backend.client(f"unix://{path}", timeout=5) as c:
            conn, _ = srv.accept(timeout=5)
            with conn:
                c.write(b"to server\n")
                assert conn.readline() == b"to server\n"
                conn.write(b"to client\n")
                assert c.readline() == b"to client\n"
        assert not os.path.exists(path)


def test_unix_abstract_server(backend):
    name = f"\0streamsock-test-{uuid.uuid4().hex}"
    with backend.server(f"unix://{name}") as srv, backend.client(f"unix://{name}", timeout=5) as c:
        conn, _ = srv.accept(timeout=5)
        with conn:
            c.write(b"abstract server\n")
            assert conn.readline() == b"abstract server\n"


def test_udg_server_recvfrom_and_sendto(backend):
    with short_tempdir() as directory:
        server_path = os.path.join(directory, "srv.dgram")
        with backend.server(f"udg://{server_path}", flags=ss.SERVER_BIND) as srv:
            with backend.client(f"udg://{server_path}", timeout=5) as c:
                c.write(b"hello udg")
                data, peer = srv.recvfrom(100, timeout=5)
                assert data == b"hello udg"
                assert peer.startswith("\0")  # the client's autobound abstract name
                srv.sendto(b"reply", peer)
                assert c.read(100) == b"reply"


def test_udp_server_recvfrom_size_zero_is_a_value_error_and_loses_nothing(backend):
    with backend.server("udp://127.0.0.1:0", flags=ss.SERVER_BIND) as srv:
        with backend.client(f"udp://{srv.local_name}", timeout=5) as c:
            c.write(b"kept")
            with pytest.raises(ValueError, match="size must be an int greater than 0, not 0"):
                srv.recvfrom(0, timeout=5)
            data, peer = srv.recvfrom(100, timeout=5)
            assert data == b"kept"
            with pytest.raises(ss.AddressError, match='"127.0.0.1": missing port'):
                srv.sendto(b"nowhere", peer.rsplit(":", 1)[0])  # the peer without its port
            srv.sendto(b"back", peer)
            assert c.read(100) == b"back"


def test_fsockopen_of_a_unix_path_takes_port_zero(backend):
    with short_tempdir() as directory:
        path = os.path.join(directory, "s")
        with backend.server(f"unix://{path}") as srv, backend.fsockopen(f"unix://{path}", 0, timeout=5) as c:
            conn, _ = srv.accept(timeout=5)
            with conn:
                c.write(b"port zero\n")
                assert conn.readline() == b"port zero\n"
        with pytest.raises(ss.AddressError, match="take no port"):
            backend.fsockopen(f"unix://{path}", 80)


def test_udg_client_bindto_path(backend, udg_echo):
    with short_tempdir() as directory:
        mine = os.path.join(directory, "client.dgram")
        ctx = ss.Context(socket={"bindto": mine})
        with backend.client(f"udg://{udg_echo.path}", timeout=5, context=ctx) as s:
            assert s.local_name == mine
            s.write(b"bound")
            assert s.read(100) == b"bound"
