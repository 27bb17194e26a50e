"""The error table and the exception hierarchy."""

from __future__ import annotations

import builtins
import pickle

import pytest

import streamsock as ss
from conftest import BACKENDS


@pytest.mark.skipif("native" not in BACKENDS, reason="the native backend is not built")
def test_python_table_equals_the_c_table():
    from streamsock import _native

    assert _native.error_table() == ss.errors.ERROR_CODES


def test_codes_are_negative_unique_and_named():
    codes = ss.errors.ERROR_CODES
    assert codes[0][0] == "SS_OK"
    assert all(code < 0 for code in codes if code)
    names = [name for name, _ in codes.values()]
    assert len(set(names)) == len(names)
    for code, (name, _) in codes.items():
        assert getattr(ss.errors, name.removeprefix("SS_ERR_").removeprefix("SS_")) == code


def test_hierarchy_derives_from_the_builtins_users_catch():
    assert issubclass(ss.StreamSocketError, OSError)
    assert issubclass(ss.AddressError, ValueError)
    assert issubclass(ss.UnsupportedTransportError, ss.AddressError)
    assert issubclass(ss.TimeoutError, builtins.TimeoutError)
    assert issubclass(ss.CertificateVerifyError, ss.TLSError)
    assert issubclass(ss.ConnectError, ss.StreamSocketError)


def test_errno_and_errstr_php_style():
    exc = ss.ConnectError(111, "Connection refused", code="SS_ERR_CONNECT")
    assert (exc.errno, exc.errstr, str(exc)) == (111, "Connection refused", "Connection refused")


def test_address_error_pickles_with_its_fields(backend):
    with pytest.raises(ss.AddressError) as info:
        backend.parse("host:99999")
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is ss.AddressError
    assert (copy.code, copy.address, copy.offset, copy.length, str(copy)) == (
        info.value.code, "host:99999", 5, 5, str(info.value),
    )
