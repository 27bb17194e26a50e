"""The probe engine (csrc/engine.c on its thread, csrc/engine_thread.c) from Python."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import errors as _e
from .._types import EngineRecord
from ..address import Address
from ._cdata import raise_record, struct_of, timeout_ms
from .certinfo import read_blocks, verify_reason
from .conn import cached_options
from ._core import ffi, lib

if TYPE_CHECKING:
    from ..context import Context
    from ..probe import ProbeOptions


_RECORD = struct_of("ss_probe_result_t", (
    ("id", "Q"), ("ok", "i"), ("error", "i"), ("sys_errno", "i"), ("verify_result", "i"), ("state", "i"),
    ("session_reused", "i"), ("message", "256s"), ("protocol", "16s"), ("cipher", "64s"), ("group", "64s"),
    ("alpn", "64s"), ("peer", "64s"), ("resolve_ms", "d"), ("connect_ms", "d"), ("handshake_ms", "d"),
    ("total_ms", "d"), ("banner_off", "I"), ("banner_len", "I"), ("certs_off", "I"), ("certs_len", "I"),
    ("name_matched", "i"), ("server_hello_off", "I"), ("server_hello_len", "I")))
_ARENA_VIEW = 2 << 20  # a view over a batch's arena (BATCH_ARENA in csrc/engine_thread.c); only
                       # the ranges the records name are read


def _field(raw: bytes) -> str:
    """A NUL-terminated char[] field as text ("" when empty)."""
    if not raw[0]:
        return ""
    end = raw.find(0)
    return (raw[:end] if end >= 0 else raw).decode("utf-8", "replace")


_NAMES: dict[bytes, str] = {}  # protocol, cipher and group fields seen: a handful of values


def _name(raw: bytes) -> str:
    """_field, remembered ("" is not, so empty fields are decoded each time: cheap)."""
    if len(_NAMES) > 1024:
        _NAMES.clear()
    text = _NAMES[raw] = _field(raw)
    return text


class Engine:
    """An engine on its own C thread (ss_engine_thread_t): probes added as client
    conns, finished ones taken back in batches while the thread keeps driving."""

    def __init__(self, options: ProbeOptions, context: Context) -> None:
        from ..certificate import parse_fingerprint_spec
        from ..starttls import PROTOCOLS

        spec = context.ssl.get("peer_fingerprint")
        peer_fingerprint = ",".join(f"{alg}={digits}" for alg, digits in parse_fingerprint_spec(spec)) if spec else None
        self._context = context
        o = ffi.new("ss_engine_options_t *")
        connect, handshake = options.phase_timeouts()
        o.concurrency = options.concurrency
        o.total_timeout_ms = timeout_ms(options.timeout)
        o.connect_timeout_ms = timeout_ms(connect)
        o.handshake_timeout_ms = timeout_ms(handshake)
        payload = ffi.from_buffer(options.payload) if options.payload else ffi.NULL
        o.payload = ffi.cast("const char *", payload)
        o.payload_len = len(options.payload)
        o.banner_max = options.banner
        o.capture_chain = options.capture_chain
        o.starttls = PROTOCOLS.index(options.starttls) + 1 if options.starttls else lib.SS_STARTTLS_NONE
        o.rate = options.rate or 0.0
        o.session_cache = options.session_cache
        pins = ffi.new("char[]", peer_fingerprint.encode()) if peer_fingerprint else ffi.NULL
        o.peer_fingerprint = pins
        err = ffi.new("ss_error_info_t *")
        handle = lib.ss_engine_thread_new(o, err)  # copies the payload and the pins
        if handle == ffi.NULL:
            raise_record(err)
        self._h = ffi.gc(handle, lib.ss_engine_thread_free)
        self._records = ffi.new("ss_probe_result_t **")
        self._arena = ffi.new("unsigned char **")
        self._err = ffi.new("ss_error_info_t *")  # one record for every add: adds come from one thread

    def add(self, index: int, address: Address, tls: Any, starttls_tls: Any) -> None:
        """Queues a probe of ``address``; ``tls`` for a TLS target, ``starttls_tls``
        for TLS after the options' STARTTLS dialogue."""
        entry = cached_options(address, self._context, tls)
        conn = lib.ss_conn_client(entry[0], self._err)
        if conn == ffi.NULL:
            raise_record(self._err)
        starttls = starttls_tls if starttls_tls is not None else ffi.NULL
        rc = lib.ss_engine_thread_add(self._h, index, conn, starttls)
        if rc == lib.SS_ERR_NOMEM:
            raise MemoryError("streamsock engine: out of memory")
        if rc < 0:  # the engine's thread stopped on an error
            raise _e.error(rc)

    def take(self, timeout_ms: int) -> list[EngineRecord]:
        """Finished probes (waiting up to timeout_ms for the first) as tuples: (id, ok,
        error, sys_errno, verify_result, message, peer, protocol, cipher, group, alpn,
        session_reused, resolve_ms, connect_ms, handshake_ms, total_ms, banner, certs,
        name_matched, verify_reason, server_hello); texts "" and times -1 when absent, certs as Certificates;
        verify_result, name_matched and verify_reason None when no certificate was received."""
        n: int = lib.ss_engine_thread_take(self._h, timeout_ms, self._records, self._arena)
        if n < 0:
            raise _e.error(n)
        if n == 0:
            return []
        # Decoded by struct at C speed, straight from the batch (valid until the next take).
        rows = _RECORD.iter_unpack(ffi.buffer(self._records[0], n * _RECORD.size))
        arena = ffi.buffer(self._arena[0], _ARENA_VIEW)
        names = _NAMES
        out: list[EngineRecord] = []
        for (index, ok, error, sys_errno, verify_result, _state, session_reused, message, protocol, cipher, group,
             alpn, peer, resolve_ms, connect_ms, handshake_ms, total_ms, banner_off, banner_len, certs_off,
             certs_len, name_matched, server_hello_off, server_hello_len) in rows:
            known = verify_result >= 0
            out.append((
                index, ok != 0, error, sys_errno, verify_result if known else None, _field(message), _field(peer),
                names.get(protocol) or _name(protocol), names.get(cipher) or _name(cipher),
                names.get(group) or _name(group), _field(alpn), session_reused != 0, resolve_ms, connect_ms,
                handshake_ms, total_ms, arena[banner_off : banner_off + banner_len],
                read_blocks(arena, certs_off, certs_len) if certs_len else [],
                None if name_matched < 0 else name_matched != 0, verify_reason(verify_result) if known else None,
                arena[server_hello_off : server_hello_off + server_hello_len],
            ))
        return out

    def close(self) -> None:
        ffi.release(self._h)
