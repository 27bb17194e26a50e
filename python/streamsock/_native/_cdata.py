"""What every native module needs at the FFI's edge: C strings kept alive for
one call, error records raised as exceptions, timeouts in milliseconds."""

from __future__ import annotations

import math

from .. import errors as _e
from ._core import ffi


def text(chars) -> str:
    """A NUL-terminated char[] as text (undecodable bytes replaced)."""
    return ffi.string(chars).decode("utf-8", "replace")


def raise_record(err, context: str | tuple | None = None):
    """Raises the exception for an ss_error_info_t."""
    raise _e.from_native(err.code, err.sys_errno, text(err.message), context=context,
                         verify_result=err.verify_result)


def timeout_ms(timeout: float | None) -> int:
    """Seconds as the C core's int32 milliseconds: -1 for no limit (None, a
    negative value or infinity), rounded up so a short wait never becomes 0."""
    if timeout is None or timeout < 0 or math.isinf(timeout):
        return -1
    return min(math.ceil(timeout * 1000), 0x7FFFFFFF)


class Strings:
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
