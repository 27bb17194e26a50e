"""The native backend: the only module that touches the cffi ``ffi``/``lib`` of ``streamsock._core``.

Parsing crosses the FFI once per address (``parse``) or once per batch
(``parse_many``/``parse_batch``); the C side writes offsets into the caller's
buffer and Python slices the original ``str``, so ASCII input (nearly all real
input) is never decoded back from bytes.

Connections: NativeConnection wraps one ``ss_conn_t`` (owned with ``ffi.gc``,
freed with it) behind the interface stream.py drives; ``run`` is the C
blocking driver, one call for connect plus handshake. TLS contexts are
``ss_tls_ctx_t`` handles compiled once per Context and shared.
"""

from __future__ import annotations

import struct
import threading
from array import array
from itertools import accumulate
from typing import Iterable

from . import errors as _e
from ._core import ffi, lib
from .address import TRANSPORT_BY_CODE, Address, AddressBatch, Transport, check_errors_arg

NAME = "native"

_new = tuple.__new__
_FIELDS = 8  # int32 fields in ss_address_t
_BATCH = 1 << 16  # addresses per C call: bounds the scratch memory of a huge batch
_local = threading.local()
_parse_one = lib.ss_parse_address
_UNIX = lib.SS_TRANSPORT_UNIX
_UDG = lib.SS_TRANSPORT_UDG
_MAX_BYTES = 0xFFFFFFFF


def openssl_version() -> str:
    return ffi.string(lib.ss_openssl_version()).decode()


def available_transports() -> tuple[str, ...]:
    return _AVAILABLE


def error_table() -> dict[int, tuple[str, str]]:
    """The C error table, as errors.ERROR_CODES lays out the Python one."""
    table = {}
    for name in dir(lib):
        if name == "SS_OK" or name.startswith("SS_ERR_"):
            code = getattr(lib, name)
            table[code] = (
                ffi.string(lib.ss_error_name(code)).decode(),
                ffi.string(lib.ss_error_message(code)).decode(),
            )
    return table


def _code_of(transport: Transport) -> int:
    return TRANSPORT_BY_CODE.index(Transport(transport))


_AVAILABLE = tuple(t.value for t in Transport if lib.ss_transport_available(_code_of(t)) == 1)


def _scratch():
    """This thread's output record and a flat int view of it (calls run without the GIL)."""
    try:
        return _local.scratch
    except AttributeError:
        out = ffi.new("ss_address_t *")
        _local.scratch = scratch = (out, memoryview(ffi.buffer(out)).cast("i"))
        return scratch


def _char_offset(encoded: bytes, offset: int) -> int:
    return len(encoded[:offset].decode("utf-8", "surrogatepass"))


def _build(text: str, encoded: bytes | None, f) -> Address:
    """Address (or raise) from one record's fields ``f``, a flat int sequence.
    ``encoded`` is the text's UTF-8, or None when the text is ASCII and byte
    offsets are character offsets."""
    err, transport, port, off, length = f[0], f[1], f[2], f[4], f[5]
    if err:
        off, length = f[6], f[7]
        if encoded is not None:
            end = _char_offset(encoded, off + length)
            off = _char_offset(encoded, off)
            length = end - off
        raise _e.address_error(err, text, off, length, _AVAILABLE)
    if encoded is None:
        part = text[off : off + length]
    else:
        part = encoded[off : off + length].decode("utf-8", "surrogatepass")
    t = TRANSPORT_BY_CODE[transport]
    if transport == _UNIX or transport == _UDG:
        return _new(Address, (t, None, None, part))
    return _new(Address, (t, part, None if port < 0 else port, None))


def parse(text: str) -> Address:
    if type(text) is not str:
        raise TypeError(f"address must be str, not {type(text).__name__}")
    out, fields = _scratch()
    if not text.isascii():
        encoded = text.encode("utf-8", "surrogatepass")
        if len(encoded) > _MAX_BYTES:
            raise _e.address_error(_e.ADDR_TOO_LONG, text, 0, 0)
        _parse_one(encoded, len(encoded), out)
        return _build(text, encoded, fields)
    if _parse_one(text.encode("ascii"), len(text), out) == 0:
        # The hot path, _build inlined: ASCII and valid.
        off = fields[4]
        transport = fields[1]
        if transport == _UNIX or transport == _UDG:
            return _new(Address, (TRANSPORT_BY_CODE[transport], None, None, text[off:]))
        port = fields[2]
        return _new(
            Address,
            (TRANSPORT_BY_CODE[transport], text[off : off + fields[5]], None if port < 0 else port, None),
        )
    return _build(text, None, fields)


class NativeAddressBatch(AddressBatch):
    """Addresses parsed in C and kept as C records until an item is asked for."""

    __slots__ = ("_texts", "_chunks", "_failed")

    def __init__(self, texts: list[str]) -> None:
        self._texts = texts
        # One (all ASCII, records, failed count) per C call of up to _BATCH addresses.
        self._chunks = [_parse_chunk(texts[start : start + _BATCH]) for start in range(0, len(texts), _BATCH)]
        self._failed = sum(chunk[2] for chunk in self._chunks)

    def __len__(self) -> int:
        return len(self._texts)

    @property
    def failed(self) -> int:
        return self._failed

    def _item(self, index: int):
        chunk, i = divmod(index, _BATCH)
        text = self._texts[index]
        records = self._chunks[chunk][1]
        try:
            return _build(text, _utf8_unless_ascii(text), records[i * _FIELDS : (i + 1) * _FIELDS])
        except _e.AddressError as exc:
            return exc

    def addresses(self, errors: str = "raise") -> list:
        check_errors_arg(errors)
        result: list = []
        for chunk_index, (all_ascii, records, failed) in enumerate(self._chunks):
            start = chunk_index * _BATCH
            texts = self._texts[start : start + _BATCH]
            if all_ascii and not failed:
                result.extend(_build_ascii_chunk(texts, records))
            else:
                _build_chunk(texts, records, errors, result)
        return result


def _utf8_unless_ascii(text: str) -> bytes | None:
    return None if text.isascii() else text.encode("utf-8", "surrogatepass")


def _parse_chunk(texts: list[str]) -> tuple[bool, memoryview, int]:
    """One C call for a chunk: (all texts ASCII, the flat int32 records, how many failed)."""
    joined = "".join(texts)  # also the type check: join() refuses anything but str
    all_ascii = joined.isascii()
    if all_ascii:
        buf = joined.encode("ascii")
        ends = array("I", accumulate(map(len, texts)))
    else:
        encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
        buf = b"".join(encoded)
        if len(buf) > _MAX_BYTES:
            raise _e.address_error(_e.ADDR_TOO_LONG, joined, 0, 0)
        ends = array("I", accumulate(map(len, encoded)))
    n = len(texts)
    out = ffi.new("ss_address_t[]", max(n, 1))
    failed = lib.ss_parse_addresses(buf, ffi.from_buffer("uint32_t[]", ends), n, out)
    return all_ascii, memoryview(ffi.buffer(out)).cast("i"), failed


def _build_ascii_chunk(texts: list[str], records: memoryview) -> list[Address]:
    """The fast path of a batch: every text ASCII and valid."""
    it = iter(records.tolist())
    by_code = TRANSPORT_BY_CODE
    out = []
    append = out.append
    for text, (_err, transport, port, _flags, off, length, _eo, _el) in zip(
        texts, zip(it, it, it, it, it, it, it, it)
    ):
        if transport == _UNIX or transport == _UDG:
            append(_new(Address, (by_code[transport], None, None, text[off:])))
        else:
            append(_new(Address, (by_code[transport], text[off : off + length], None if port < 0 else port, None)))
    return out


def _build_chunk(texts: list[str], records: memoryview, errors: str, result: list) -> None:
    flat = records.tolist()
    for i, text in enumerate(texts):
        try:
            result.append(_build(text, _utf8_unless_ascii(text), flat[i * _FIELDS : (i + 1) * _FIELDS]))
        except _e.AddressError as exc:
            if errors == "raise":
                exc.index = len(result)
                raise
            result.append(exc)


def parse_many(texts: Iterable[str], errors: str = "raise") -> list:
    check_errors_arg(errors)
    return parse_batch(texts).addresses(errors)


def parse_batch(texts: Iterable[str]) -> NativeAddressBatch:
    return NativeAddressBatch(texts if type(texts) is list else list(texts))


# --- connections ------------------------------------------------------------------

_IO_WANT = {lib.SS_IO_WANT_READ: lib.SS_WANT_READ, lib.SS_IO_WANT_WRITE: lib.SS_WANT_WRITE}
_READ_CHUNK = 65536
_STATE_NAMES = {
    getattr(lib, name): name.removeprefix("SS_STATE_").lower() for name in dir(lib) if name.startswith("SS_STATE_")
}


def _text(chars) -> str:
    return ffi.string(chars).decode("utf-8", "replace")


def _raise_record(err, context: str | None = None):
    raise _e.from_native(err.code, err.sys_errno, _text(err.message), context=context, verify_result=err.verify_result)


def _timeout_ms(timeout: float | None) -> int:
    if timeout is None or timeout < 0:
        return -1
    return min(int(timeout * 1000), 0x7FFFFFFF)


class _Strings:
    """Keeps the C strings of one call alive until the call returns."""

    __slots__ = ("keep",)

    def __init__(self) -> None:
        self.keep: list = []

    def __call__(self, value: str | bytes | None):
        if value is None:
            return ffi.NULL
        data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        cdata = ffi.new("char[]", data)
        self.keep.append(cdata)
        return cdata


def compile_tls(settings) -> object:
    """An ss_tls_ctx_t for TLSSettings, owned by Python (freed with its last conn)."""
    s = _Strings()
    o = ffi.new("ss_tls_options_t *")
    o.server = settings.server
    o.verify_peer = settings.verify_peer
    o.allow_self_signed = settings.allow_self_signed
    o.verify_depth = settings.verify_depth
    o.min_version = settings.min_version
    o.max_version = settings.max_version
    o.security_level = settings.security_level
    o.disable_compression = settings.disable_compression
    o.honor_cipher_order = settings.honor_cipher_order
    o.cafile = s(settings.cafile)
    o.capath = s(settings.capath)
    o.local_cert = s(settings.local_cert)
    o.local_pk = s(settings.local_pk)
    o.passphrase = s(settings.passphrase)
    o.ciphers = s(settings.ciphers)
    alpn = s(settings.alpn) if settings.alpn else ffi.NULL
    o.alpn = ffi.cast("const unsigned char *", alpn)
    o.alpn_len = len(settings.alpn)
    if settings.sni_certs:
        names = [s(name) for name, _, _ in settings.sni_certs]
        certs = [s(cert) for _, cert, _ in settings.sni_certs]
        keys = [s(key) for _, _, key in settings.sni_certs]
        arrays = [ffi.new("const char *[]", items) for items in (names, certs, keys)]
        s.keep.extend(arrays)
        o.sni_count = len(names)
        o.sni_names, o.sni_certs, o.sni_keys = arrays
    err = ffi.new("ss_error_info_t *")
    handle = lib.ss_tls_ctx_new(o, err)
    if handle == ffi.NULL:
        _raise_record(err)
    return ffi.gc(handle, lib.ss_tls_ctx_free)


def _conn_options(address: Address, context, tls, s: _Strings):
    o = ffi.new("ss_conn_options_t *")
    o.transport = TRANSPORT_BY_CODE.index(address.transport)
    o.port = -1 if address.port is None else address.port
    if address.path is not None:
        path = address.path.encode("utf-8", "surrogateescape")
        o.path = s(path)
        o.path_len = len(path)
    else:
        o.host = s(address.host)
    o.tls = tls if tls is not None else ffi.NULL
    peer_name = context.peer_name(address)
    o.peer_name = s(peer_name)
    o.verify_peer_name = context.verify_peer_name
    o.sni_enabled = context.sni_enabled
    bind_host, bind_port = context.bindto(address.transport.local)
    o.bind_host = s(bind_host)
    o.bind_port = bind_port
    so = context.socket
    o.backlog = so.get("backlog", 32)
    o.tcp_nodelay = so.get("tcp_nodelay", False)
    o.so_reuseport = so.get("so_reuseport", False)
    o.so_broadcast = so.get("so_broadcast", False)
    o.ipv6_v6only = int(so["ipv6_v6only"]) if "ipv6_v6only" in so else -1
    return o


class NativeConnection:
    """One C connection handle (``ss_conn_t``) behind the backend connection interface."""

    __slots__ = ("_h", "_buf", "__weakref__")

    def __init__(self, handle) -> None:
        self._h = ffi.gc(handle, lib.ss_conn_free)
        self._buf = None

    def _raise(self, context: str | None = None):
        err = ffi.new("ss_error_info_t *")
        lib.ss_conn_error(self._h, err)
        _raise_record(err, context)

    def fileno(self) -> int:
        return lib.ss_conn_fd(self._h)

    @property
    def state(self) -> str:
        return _STATE_NAMES.get(lib.ss_conn_state(self._h), "unknown")

    @property
    def is_tls(self) -> bool:
        return bool(lib.ss_conn_is_tls(self._h))

    def step(self, context: str | None = None) -> int:
        rc = lib.ss_conn_step(self._h)
        if rc < 0:
            self._raise(context)
        return rc

    def run(self, timeout: float | None, context: str | None = None) -> None:
        if lib.ss_conn_run(self._h, _timeout_ms(timeout)) < 0:
            self._raise(context)

    def wait(self, want: int, timeout: float | None) -> bool:
        rc = lib.ss_conn_wait(self._h, want, _timeout_ms(timeout))
        if rc < 0:
            self._raise()
        return rc == 1

    def read(self, size: int):
        """bytes (b"" at end of stream), or WANT_READ / WANT_WRITE."""
        buf = self._buf
        if buf is None or size > _READ_CHUNK:
            buf = ffi.new("char[]", max(size, _READ_CHUNK))
            if self._buf is None:
                self._buf = buf
        n = lib.ss_conn_read(self._h, buf, size)
        if n > 0:
            return ffi.buffer(buf, n)[:]
        if n == 0:
            return b""
        if n in _IO_WANT:
            return _IO_WANT[n]
        self._raise()

    def write(self, data) -> int:
        """Bytes written (> 0), or -WANT_READ / -WANT_WRITE when nothing could be."""
        n = lib.ss_conn_write(self._h, ffi.from_buffer(data), len(data))
        if n > 0 or n == 0:
            return n
        if n in _IO_WANT:
            return -_IO_WANT[n]
        self._raise()

    def recvfrom(self, size: int):
        buf = ffi.new("char[]", max(size, 1))
        peer = ffi.new("char[]", 128)
        peer_len = ffi.new("uint32_t *")
        n = lib.ss_conn_recvfrom(self._h, buf, size, peer, 128, peer_len)
        if n >= 0:
            return ffi.buffer(buf, n)[:], ffi.buffer(peer, peer_len[0])[:].decode("utf-8", "surrogateescape")
        if n in _IO_WANT:
            return _IO_WANT[n]
        self._raise()

    def sendto(self, data, address: Address) -> int:
        s = _Strings()
        if address.path is not None:
            path = address.path.encode("utf-8", "surrogateescape")
            n = lib.ss_conn_sendto(self._h, ffi.from_buffer(data), len(data), ffi.NULL, 0, s(path), len(path))
        else:
            n = lib.ss_conn_sendto(
                self._h, ffi.from_buffer(data), len(data), s(address.host), address.port or 0, ffi.NULL, 0
            )
        if n >= 0:
            return n
        if n in _IO_WANT:
            return -_IO_WANT[n]
        self._raise()

    def start_tls(self, tls, peer_name: str | None, verify_peer_name: bool, sni_enabled: bool,
                  session_from: "NativeConnection | None" = None) -> None:
        s = _Strings()
        session = session_from._h if session_from is not None else ffi.NULL
        if lib.ss_conn_start_tls(self._h, tls, s(peer_name), verify_peer_name, sni_enabled, session) < 0:
            self._raise()

    def stop_tls(self) -> None:
        if lib.ss_conn_stop_tls(self._h) < 0:
            self._raise()

    def shutdown(self, how: int) -> None:
        if lib.ss_conn_shutdown(self._h, how) < 0:
            self._raise()

    def close(self) -> None:
        lib.ss_conn_close(self._h)

    def pending(self) -> int:
        return lib.ss_conn_pending(self._h)

    def name(self, peer: bool) -> str:
        out = ffi.new("char[]", 256)
        n = lib.ss_conn_name(self._h, peer, out, 256)
        if n < 0:
            return ""
        return ffi.buffer(out, n)[:].decode("utf-8", "surrogateescape")

    def tls_info(self) -> dict:
        info = ffi.new("ss_tls_info_t *")
        lib.ss_conn_tls_info(self._h, info)
        return {
            "protocol": _text(info.protocol),
            "cipher_name": _text(info.cipher_name),
            "cipher_bits": info.cipher_bits,
            "cipher_version": _text(info.cipher_version),
            "alpn_protocol": _text(info.alpn) or None,
            "group": _text(info.group) or None,
            "server_name": _text(info.server_name) or None,
            "session_reused": bool(info.session_reused),
        }

    def peer_certs(self, chain: bool) -> list[bytes]:
        """DER of the peer's leaf (and, with chain, the rest it sent)."""
        out = []
        for index in range(64 if chain else 1):
            size = lib.ss_conn_peer_cert(self._h, index, ffi.NULL, 0)
            if size <= 0:
                break
            buf = ffi.new("unsigned char[]", size)
            lib.ss_conn_peer_cert(self._h, index, buf, size)
            out.append(ffi.buffer(buf, size)[:])
        return out


def _cached_options(address: Address, context, tls):
    """(ss_conn_options_t, the strings it points to, tls) for (address, tls),
    built once per Context: the C side copies what it keeps, so one struct
    serves every connection. Callers hold the whole entry during their call,
    so a cache clear on another thread cannot free the strings under it."""
    cache = context.backend_cache
    key = (NAME, address, id(tls))
    entry = cache.get(key)
    if entry is None or entry[2] is not tls:
        s = _Strings()
        entry = (_conn_options(address, context, tls, s), s, tls)
        if len(cache) > 256:  # many distinct targets: keep the cache small
            cache.clear()
        cache[key] = entry
    return entry


def open_client(address: Address, context, tls) -> NativeConnection:
    err = ffi.new("ss_error_info_t *")
    entry = _cached_options(address, context, tls)
    handle = lib.ss_conn_client(entry[0], err)
    if handle == ffi.NULL:
        _raise_record(err)
    return NativeConnection(handle)


def open_server(address: Address, context, tls) -> NativeConnection:
    s = _Strings()
    err = ffi.new("ss_error_info_t *")
    handle = lib.ss_conn_server(_conn_options(address, context, tls, s), err)
    if handle == ffi.NULL:
        _raise_record(err, f"Unable to bind to {address}")
    return NativeConnection(handle)


def accept(listener: NativeConnection) -> NativeConnection | None:
    err = ffi.new("ss_error_info_t *")
    handle = lib.ss_conn_accept(listener._h, err)
    if handle == ffi.NULL:
        if err.code:
            _raise_record(err)
        return None
    return NativeConnection(handle)


# --- the engine ---------------------------------------------------------------------------

def _record_struct() -> struct.Struct:
    """ss_probe_result_t as a struct format, pads taken from the compiler's layout."""
    fields = (("id", "Q"), ("ok", "i"), ("error", "i"), ("sys_errno", "i"), ("verify_result", "i"), ("state", "i"),
              ("session_reused", "i"), ("message", "256s"), ("protocol", "16s"), ("cipher", "64s"), ("group", "64s"),
              ("alpn", "64s"), ("peer", "64s"), ("resolve_ms", "d"), ("connect_ms", "d"), ("handshake_ms", "d"),
              ("total_ms", "d"), ("banner_off", "I"), ("banner_len", "I"), ("certs_off", "I"), ("certs_len", "I"))
    fmt, at = "=", 0
    for name, code in fields:
        offset = ffi.offsetof("ss_probe_result_t", name)
        fmt += f"{offset - at}x{code}" if offset > at else code
        at = offset + struct.calcsize("=" + code)
    size = ffi.sizeof("ss_probe_result_t")
    return struct.Struct(fmt + (f"{size - at}x" if size > at else ""))


_RECORD = _record_struct()
_CERT_LENGTH = struct.Struct("<I")  # before each certificate in the arena
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

    def __init__(self, options, peer_fingerprint: str | None, session_cache: int) -> None:
        from .starttls import PROTOCOLS

        o = ffi.new("ss_engine_options_t *")
        connect, handshake = options.phase_timeouts()
        o.concurrency = options.concurrency
        o.total_timeout_ms = _timeout_ms(options.timeout)
        o.connect_timeout_ms = _timeout_ms(connect)
        o.handshake_timeout_ms = _timeout_ms(handshake)
        payload = ffi.from_buffer(options.payload) if options.payload else ffi.NULL
        o.payload = ffi.cast("const char *", payload)
        o.payload_len = len(options.payload)
        o.banner_max = options.banner
        o.capture_chain = options.capture_chain
        o.starttls = PROTOCOLS.index(options.starttls) + 1 if options.starttls else lib.SS_STARTTLS_NONE
        o.rate = options.rate or 0.0
        o.session_cache = session_cache
        pins = ffi.new("char[]", peer_fingerprint.encode()) if peer_fingerprint else ffi.NULL
        o.peer_fingerprint = pins
        err = ffi.new("ss_error_info_t *")
        handle = lib.ss_engine_thread_new(o, err)  # copies the payload and the pins
        if handle == ffi.NULL:
            _raise_record(err)
        self._h = ffi.gc(handle, lib.ss_engine_thread_free)
        self._records = ffi.new("ss_probe_result_t **")
        self._arena = ffi.new("unsigned char **")
        self._err = ffi.new("ss_error_info_t *")  # one record for every add: adds come from one thread

    def add(self, index: int, address: Address, context, tls, starttls_tls) -> None:
        entry = _cached_options(address, context, tls)
        conn = lib.ss_conn_client(entry[0], self._err)
        if conn == ffi.NULL:
            _raise_record(self._err)
        starttls = starttls_tls if starttls_tls is not None else ffi.NULL
        rc = lib.ss_engine_thread_add(self._h, index, conn, starttls)
        if rc == lib.SS_ERR_NOMEM:
            raise MemoryError("streamsock engine: out of memory")
        if rc < 0:  # the engine's thread stopped on an error
            raise _e.error(rc)

    def take(self, timeout_ms: int) -> list[tuple]:
        """Finished probes (waiting up to timeout_ms for the first) as tuples: (id, ok,
        error, sys_errno, verify_result, message, peer, protocol, cipher, group, alpn,
        session_reused, resolve_ms, connect_ms, handshake_ms, total_ms, banner, certs);
        texts "" and times -1 when absent."""
        n = lib.ss_engine_thread_take(self._h, timeout_ms, self._records, self._arena)
        if n < 0:
            raise _e.error(n)
        if n == 0:
            return []
        # Decoded by struct at C speed, straight from the batch (valid until the next take).
        rows = _RECORD.iter_unpack(ffi.buffer(self._records[0], n * _RECORD.size))
        arena = ffi.buffer(self._arena[0], _ARENA_VIEW)
        names = _NAMES
        out = []
        for (index, ok, error, sys_errno, verify_result, _state, session_reused, message, protocol, cipher, group,
             alpn, peer, resolve_ms, connect_ms, handshake_ms, total_ms, banner_off, banner_len, certs_off,
             certs_len) in rows:
            certs = []
            at, stop = certs_off, certs_off + certs_len
            while at + 4 <= stop:
                (size,) = _CERT_LENGTH.unpack_from(arena, at)
                certs.append(arena[at + 4 : at + 4 + size])
                at += 4 + size
            out.append((
                index, ok != 0, error, sys_errno, verify_result, _field(message), _field(peer),
                names.get(protocol) or _name(protocol), names.get(cipher) or _name(cipher),
                names.get(group) or _name(group), _field(alpn), session_reused != 0, resolve_ms, connect_ms,
                handshake_ms, total_ms, arena[banner_off : banner_off + banner_len], certs,
            ))
        return out

    def close(self) -> None:
        ffi.release(self._h)


def self_signed(name: str, days: int) -> tuple[str, str]:
    """(certificate PEM, key PEM): a fresh self-signed certificate for name, 127.0.0.1 and ::1."""
    cert = ffi.new("char[]", 8192)
    key = ffi.new("char[]", 8192)
    err = ffi.new("ss_error_info_t *")
    if lib.ss_self_signed_pem(name.encode(), days, cert, 8192, key, 8192, err) < 0:
        _raise_record(err)
    return ffi.string(cert).decode(), ffi.string(key).decode()
