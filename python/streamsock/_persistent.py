"""Persistent client streams (PHP's pfsockopen and STREAM_CLIENT_PERSISTENT):
one live connection per (address, context options) in a process, handed out
again while it lives.

A stream is reused only when a check finds it alive, and the check loses
nothing: what a non-blocking read brings goes into the stream's own buffer
(decrypted, on TLS), where the next read finds it; only an end of stream, an
error or a closed stream makes it dead, and then it is closed and replaced.

Fork: a child never hands out its parent's connections (the socket is
shared, and the parent's TLS state with it). Their streams are kept, never
closed, in the child: closing one would send a TLS close_notify down the
parent's connection.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import TYPE_CHECKING, Callable

from .address import Address
from .context import Context

if TYPE_CHECKING:
    from .stream import Stream


def key_of(address: Address, context: Context) -> str:
    """The same address and the same context options (not the same Context
    object: a copy with equal options shares the connection). A digest, so the
    registry keeps no passphrase."""
    text = repr((str(address), sorted(context._ssl.items(), key=repr), sorted(context._socket.items(), key=repr)))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def alive(stream: Stream) -> bool:
    """Whether a persistent stream can be handed out again, without losing a byte."""
    st = stream._st
    if st.conn is None:
        return False
    if not stream._lock.acquire(blocking=False):
        return True  # in use by another thread: alive, and theirs to finish with
    try:
        if st.conn is None or st.eof:
            return False
        if not st.ready or st.datagram:
            return True  # a connect still to finish; a datagram socket has no end to detect
        data = st.conn.read(65536)  # never waits
        if isinstance(data, bytes):
            st.feed(data)  # kept for the next read; b"" is the peer's end
        return not st.eof
    except Exception:  # a reset, a failed TLS record: dead, whatever it was
        return False
    finally:
        stream._lock.release()


class PersistentStreams:
    """A backend's registry of persistent client streams."""

    def __init__(self) -> None:
        self._streams: dict[str, tuple[int, Stream]] = {}
        self._inherited: list[Stream] = []  # a forked child's copies of its parent's: never closed here
        self._lock = threading.Lock()

    def get(self, key: str, connect: Callable[[], Stream]) -> Stream:
        """The live stream under ``key``, or a new one from ``connect()``."""
        with self._lock:
            entry = self._streams.get(key)
        if entry is not None:
            pid, stream = entry
            if pid != os.getpid():
                with self._lock:
                    self._inherited.append(stream)
                    if self._streams.get(key) is entry:
                        del self._streams[key]
            elif alive(stream):
                return stream
            else:
                with self._lock:
                    if self._streams.get(key) is entry:
                        del self._streams[key]
                stream.close()
        stream = connect()
        stream._persistent_key = key
        with self._lock:
            self._streams[key] = (os.getpid(), stream)
        return stream

    def forget(self, stream: Stream) -> None:
        """A persistent stream closed by its user: the next request connects anew."""
        key = getattr(stream, "_persistent_key", None)
        if key is None:
            return
        with self._lock:
            entry = self._streams.get(key)
            if entry is not None and entry[1] is stream:
                del self._streams[key]
