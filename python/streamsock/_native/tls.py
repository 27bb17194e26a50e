"""TLS contexts and certificates from the C core (csrc/tls.c)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._cdata import Strings, raise_record
from ._core import ffi, lib

if TYPE_CHECKING:
    from ..context import TLSSettings


def compile_tls(settings: TLSSettings) -> object:
    """An ss_tls_ctx_t for TLSSettings, owned by Python (freed with its last conn)."""
    s = Strings()
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
    o.no_ticket = settings.no_ticket
    o.groups = s(settings.groups)
    o.dh_param = s(settings.dh_param)
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
        raise_record(err)
    return ffi.gc(handle, lib.ss_tls_ctx_free)


def self_signed(name: str, days: int) -> tuple[str, str]:
    """(certificate PEM, key PEM): a fresh self-signed certificate for name, 127.0.0.1 and ::1."""
    cert = ffi.new("char[]", 8192)
    key = ffi.new("char[]", 8192)
    err = ffi.new("ss_error_info_t *")
    if lib.ss_self_signed_pem(name.encode(), days, cert, 8192, key, 8192, err) < 0:
        raise_record(err)
    return ffi.string(cert).decode(), ffi.string(key).decode()
