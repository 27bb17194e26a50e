"""Timeouts and deadlines for blocking calls: the one rule for a timeout a
user gives (checked where it is given, the same on both backends), a timeout
as the moment it ends, and the time left until then, which is what a call
that waits again (after a signal, or for the next chunk) must use."""

from __future__ import annotations

import math
import time


def checked_seconds(value: object, what: str = "timeout") -> float | None:
    """A timeout as given: None, or a number of seconds as a float. NaN (and
    anything but a number) is refused; infinity passes, and means no limit to
    whoever reads it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{what} must be a number of seconds, not NaN")
    return float(value)


def limit_of(value: object, default: float | None, what: str = "timeout") -> float | None:
    """The wait a timeout asks for: None (the argument) means ``default``; a
    negative value or infinity means no limit (None); NaN is a ValueError."""
    seconds = checked_seconds(value, what)
    if seconds is None:
        seconds = default
    return None if seconds is None or seconds < 0 or math.isinf(seconds) else seconds


def deadline_after(timeout: float | None) -> float | None:
    """The monotonic time ``timeout`` seconds from now (None: no limit)."""
    return None if timeout is None else time.monotonic() + timeout


def time_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (never negative), or None for no limit."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())
