"""Deadlines for blocking calls: a timeout in seconds (None: no limit) as the
moment it ends, and the time left until then, which is what a call that
waits again (after a signal, or for the next chunk) must use."""

from __future__ import annotations

import time


def deadline_after(timeout: float | None) -> float | None:
    """The monotonic time ``timeout`` seconds from now (None: no limit)."""
    return None if timeout is None else time.monotonic() + timeout


def time_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (never negative), or None for no limit."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())
