"""A server's accepting and handshaking on the C core's acceptor (csrc/acceptor.c)."""

from __future__ import annotations

from .._types import ErrorRecord
from ._cdata import raise_record, text, timeout_ms
from ._core import ffi, lib
from .conn import NativeConnection

_BATCH = 64  # connections handed over per run at most
_INTERRUPTED = lib.SS_IO_INTERRUPTED


class Acceptor:
    """The handshakes of one listener's connections, none waiting on another
    (see ``_backend.Acceptor``)."""

    def __init__(self, listener: NativeConnection, handshake_timeout: float | None, max_handshakes: int = 0) -> None:
        options = ffi.new("ss_acceptor_options_t *")
        options.handshake_timeout_ms = timeout_ms(handshake_timeout)
        options.max_handshakes = max_handshakes
        err = ffi.new("ss_error_info_t *")
        handle = lib.ss_acceptor_new(listener._h, options, err)
        if handle == ffi.NULL:
            raise_record(err)
        self._listener = listener  # borrowed by the C acceptor: kept alive as long as it is
        self._h = ffi.gc(handle, lib.ss_acceptor_free)
        self._out = ffi.new("ss_conn_t *[]", _BATCH)
        self._accept_errors = ffi.new("uint64_t *")
        self._last_handshake = ffi.new("ss_error_info_t *")
        self._last_accept = ffi.new("ss_error_info_t *")
        self._last_epoch = ffi.new("ss_error_info_t *")

    def fileno(self) -> int:
        fd: int = lib.ss_acceptor_fd(self._h)
        return fd

    def run(self, timeout: float | None) -> list[NativeConnection]:
        """Established connections, waiting up to ``timeout`` seconds (None: no
        limit) for the first; [] when the time ran out, a signal came or wake()
        was called."""
        n: int = lib.ss_acceptor_run(self._h, timeout_ms(timeout), self._out, _BATCH)
        if n > 0:
            out = self._out
            return [NativeConnection(out[i]) for i in range(n)]
        if n == 0 or n == _INTERRUPTED:
            return []
        lib.ss_acceptor_stats(self._h, self._accept_errors, self._last_handshake, self._last_accept)
        raise_record(self._last_accept)

    def next_timer(self) -> float | None:
        """Seconds until a run is due without any event, or None."""
        ms: int = lib.ss_acceptor_next_timer(self._h)
        return None if ms < 0 else ms / 1000

    def counts(self) -> tuple[int, int]:
        """(failed handshakes, accept errors) so far: cheap, for every run."""
        return lib.ss_acceptor_stats(self._h, self._accept_errors, ffi.NULL, ffi.NULL), self._accept_errors[0]

    def stats(self) -> tuple[int, int, ErrorRecord | None, ErrorRecord | None]:
        """(failed handshakes, accept errors, the last of each as (code, errno, message) or None)."""
        failures = lib.ss_acceptor_stats(self._h, self._accept_errors, self._last_handshake, self._last_accept)
        last_handshake, last_accept = self._last_handshake, self._last_accept
        return (failures, self._accept_errors[0],
                (last_handshake.code, last_handshake.sys_errno, text(last_handshake.message)) if failures else None,
                (last_accept.code, last_accept.sys_errno, text(last_accept.message)) if self._accept_errors[0] else None)

    def begin(self) -> None:
        """A new epoch: the failures of handshakes accepted from now on are
        reported by epoch_failure() and end a run; earlier ones are counted."""
        lib.ss_acceptor_begin(self._h)

    def epoch_failure(self) -> ErrorRecord | None:
        """The last failed handshake of the current epoch as (code, errno, message), or None."""
        last = self._last_epoch
        if not lib.ss_acceptor_epoch_failures(self._h, last):
            return None
        return last.code, last.sys_errno, text(last.message)

    def wake(self) -> None:
        lib.ss_acceptor_wake(self._h)

    def close(self) -> None:
        ffi.release(self._h)
