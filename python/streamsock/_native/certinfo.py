"""Certificates as the C core describes them (csrc/certinfo.c): ss_cert_info_t
blocks, read in place into Certificate values."""

from __future__ import annotations

import datetime
import struct
from typing import Any

from ..certificate import Certificate, Summary, ip_text
from ._cdata import struct_of
from ._core import ffi, lib


_HEADER = struct_of("ss_cert_info_t", (
    ("block_len", "I"), ("der_off", "I"), ("der_len", "I"), ("subject_off", "I"), ("subject_len", "I"),
    ("issuer_off", "I"), ("issuer_len", "I"), ("common_name_off", "I"), ("common_name_len", "I"),
    ("san_off", "I"), ("san_len", "I"), ("serial_off", "I"), ("serial_len", "I"), ("version", "i"),
    ("not_before", "q"), ("not_after", "q"), ("key_bits", "i"), ("self_signed", "i"),
    ("key_type", "32s"), ("signature_algorithm", "64s"), ("sha256", "32s"), ("sha1", "20s"),
    ("spki_sha256", "32s")))
_LENGTHS = struct.Struct("=III")  # block_len, der_off, der_len: the header's start
_SAN_KINDS = {1: "DNS", 2: "IP Address", 3: "email", 4: "URI"}
_UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)
_DESCRIBE_ROOM = 1 << 16  # beyond the DER: names, SANs and the header


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _san(raw: bytes) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    at = 0
    while at + 3 <= len(raw):
        kind, size = raw[at], raw[at + 1] | raw[at + 2] << 8
        value = bytes(raw[at + 3 : at + 3 + size])
        at += 3 + size
        name = _SAN_KINDS.get(kind)
        if name == "IP Address":
            out.append((name, ip_text(value)))
        elif name is not None:
            out.append((name, value.decode("latin-1")))
    return tuple(out)


def read_block(buffer: Any, at: int) -> tuple[Certificate, int]:
    """The Certificate described at buffer[at:] (an ffi.buffer: its slices are bytes),
    and where the next block starts. Its summary is decoded from a copy of the
    block when first asked for."""
    block_len, der_off, der_len = _LENGTHS.unpack_from(buffer, at)
    block = buffer[at : at + block_len]
    return Certificate._from_summary(block[der_off : der_off + der_len], lambda: _summary(block)), at + block_len


def _summary(block: bytes) -> Summary:
    (_, _, _, subject_off, subject_len, issuer_off, issuer_len, cn_off, cn_len, san_off, san_len,
     serial_off, serial_len, version, not_before, not_after, key_bits, self_signed, key_type, signature_algorithm,
     sha256, sha1, spki_sha256) = _HEADER.unpack_from(block, 0)
    return Summary(
        block[subject_off : subject_off + subject_len].decode("utf-8", "replace"),
        block[issuer_off : issuer_off + issuer_len].decode("utf-8", "replace"),
        block[cn_off : cn_off + cn_len].decode("utf-8", "replace") if cn_len else None,
        _san(block[san_off : san_off + san_len]),
        int(block[serial_off : serial_off + serial_len], 16),
        _EPOCH + datetime.timedelta(seconds=not_before),
        _EPOCH + datetime.timedelta(seconds=not_after),
        version, _text(key_type), key_bits, _text(signature_algorithm), self_signed != 0,
        sha256.hex(), sha1.hex(), spki_sha256.hex(),
    )


def read_blocks(buffer: Any, at: int, size: int) -> list[Certificate]:
    """Every block in buffer[at : at + size], in order."""
    certs, stop = [], at + size
    while at < stop:
        cert, at = read_block(buffer, at)
        certs.append(cert)
    return certs


def describe(der: bytes) -> Certificate:
    """A DER certificate described by OpenSSL (ValueError when it cannot parse it)."""
    out = ffi.new("unsigned char[]", len(der) + _DESCRIBE_ROOM)
    n = lib.ss_cert_describe_der(der, len(der), out, len(out))
    if n < 0:
        raise ValueError("malformed certificate: OpenSSL cannot parse it")
    return read_block(ffi.buffer(out, n), 0)[0]


_REASONS: dict[int, str] = {}


def verify_reason(code: int) -> str:
    """OpenSSL's words for an X509_V_ERR_* code."""
    reason = _REASONS.get(code)
    if reason is None:
        reason = _REASONS[code] = ffi.string(lib.ss_verify_reason(code)).decode("utf-8", "replace")
    return reason
