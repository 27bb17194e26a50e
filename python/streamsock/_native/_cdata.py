"""What every native module needs at the FFI's edge: C strings kept alive for
one call, error records raised as exceptions, timeouts in milliseconds, C
structs read with struct at C speed."""

from __future__ import annotations

import math
import struct
from typing import Any, NoReturn

from .. import errors as _e
from .._types import ErrorContext
from ._core import ffi


def text(chars: Any) -> str:
    """A NUL-terminated char[] as text (undecodable bytes replaced)."""
    decoded: str = ffi.string(chars).decode("utf-8", "replace")
    return decoded


def raise_record(err: Any, context: ErrorContext = None) -> NoReturn:
    """Raises the exception for an ss_error_info_t."""
    raise _e.from_native(err.code, err.sys_errno, text(err.message), context=context,
                         verify_result=err.verify_result)


def struct_of(ctype: str, fields: tuple[tuple[str, str], ...]) -> struct.Struct:
    """A C struct as a struct.Struct of ``fields`` ((name, struct code), in
    declaration order), the pads taken from the compiler's layout."""
    fmt, at = "=", 0
    for name, code in fields:
        offset = ffi.offsetof(ctype, name)
        fmt += f"{offset - at}x{code}" if offset > at else code
        at = offset + struct.calcsize("=" + code)
    size = ffi.sizeof(ctype)
    return struct.Struct(fmt + (f"{size - at}x" if size > at else ""))


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
        self.keep: list[Any] = []  # the char[] cdata made for this call

    def __call__(self, value: str | bytes | None) -> Any:
        """A char[] cdata holding ``value`` (NULL for None)."""
        if value is None:
            return ffi.NULL
        data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        cdata = ffi.new("char[]", data)
        self.keep.append(cdata)
        return cdata
