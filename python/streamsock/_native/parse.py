"""The address parser (csrc/url.c) from Python.

Parsing crosses the FFI once per address (``parse``) or once per batch
(``parse_many``/``parse_batch``); the C side writes offsets into the caller's
buffer and Python slices the original ``str``, so ASCII input (nearly all real
input) is never decoded back from bytes.
"""

from __future__ import annotations

import threading
from array import array
from itertools import accumulate
from typing import Any, Iterable, Sequence

from .. import errors as _e
from ..address import TRANSPORT_BY_CODE, Address, AddressBatch, Transport, check_errors_arg
from ._core import ffi, lib

_new = tuple.__new__
_FIELDS = 8  # int32 fields in ss_address_t
_BATCH = 1 << 16  # addresses per C call: bounds the scratch memory of a huge batch
_local = threading.local()
_parse_one = lib.ss_parse_address
_UNIX = lib.SS_TRANSPORT_UNIX
_UDG = lib.SS_TRANSPORT_UDG
_MAX_BYTES = 0xFFFFFFFF


def available_transports() -> tuple[str, ...]:
    return _AVAILABLE


def _code_of(transport: Transport) -> int:
    return TRANSPORT_BY_CODE.index(Transport(transport))


_AVAILABLE = tuple(t.value for t in Transport if lib.ss_transport_available(_code_of(t)) == 1)


def _scratch() -> tuple[Any, memoryview]:
    """This thread's output record and a flat int view of it (calls run without the GIL)."""
    try:
        scratch: tuple[Any, memoryview] = _local.scratch
        return scratch
    except AttributeError:
        out = ffi.new("ss_address_t *")
        _local.scratch = scratch = (out, memoryview(ffi.buffer(out)).cast("i"))
        return scratch


def _char_offset(encoded: bytes, offset: int) -> int:
    return len(encoded[:offset].decode("utf-8", "surrogatepass"))


def _build(text: str, encoded: bytes | None, f: Sequence[int]) -> Address:
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

    def _item(self, index: int) -> Address | _e.AddressError:
        chunk, i = divmod(index, _BATCH)
        text = self._texts[index]
        records = self._chunks[chunk][1]
        try:
            return _build(text, _utf8_unless_ascii(text), records[i * _FIELDS : (i + 1) * _FIELDS])
        except _e.AddressError as exc:
            return exc

    def addresses(self, errors: str = "raise") -> list[Address | _e.AddressError]:
        check_errors_arg(errors)
        result: list[Address | _e.AddressError] = []
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
    out: list[Address] = []
    append = out.append
    for text, (_err, transport, port, _flags, off, length, _eo, _el) in zip(
        texts, zip(it, it, it, it, it, it, it, it)
    ):
        if transport == _UNIX or transport == _UDG:
            append(_new(Address, (by_code[transport], None, None, text[off:])))
        else:
            append(_new(Address, (by_code[transport], text[off : off + length], None if port < 0 else port, None)))
    return out


def _build_chunk(texts: list[str], records: memoryview, errors: str, result: list[Address | _e.AddressError]) -> None:
    flat = records.tolist()
    for i, text in enumerate(texts):
        try:
            result.append(_build(text, _utf8_unless_ascii(text), flat[i * _FIELDS : (i + 1) * _FIELDS]))
        except _e.AddressError as exc:
            if errors == "raise":
                exc.index = len(result)
                raise
            result.append(exc)


def parse_many(texts: Iterable[str], errors: str = "raise") -> list[Address | _e.AddressError]:
    check_errors_arg(errors)
    return parse_batch(texts).addresses(errors)


def parse_batch(texts: Iterable[str]) -> NativeAddressBatch:
    return NativeAddressBatch(texts if type(texts) is list else list(texts))
