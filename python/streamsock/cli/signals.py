"""Ctrl-C and SIGTERM for a command that stops cleanly (``streamsock probe``):
the summary of what finished, wherever the signal finds the command.

Python runs a signal's handler in the main thread between any two of its
instructions, and an exception the handler raises starts from there. When the
main thread is running an event loop (the pure backend's probe engine runs its
loop there, inside ``take()``), that can be the middle of a task's step, of a
callback, or of the engine's bookkeeping around its loop. The engine is then
left half-way (a coroutine created and never run, a loop left marked as
running that cannot run again to close, tasks dropped while pending), or the
exception is raised inside a weak reference's callback, which Python cannot
pass on: the signal is lost and the probe runs on. So while an event loop
runs (or run_until_complete is starting or ending its run), the handler
schedules the exception as a callback of that loop, which raises it between
two callbacks, leaving the loop whole; anywhere else it raises at once, as
Python's own Ctrl-C does. The signal is recorded as it comes: what stopped
the command is the signal, whatever became of its exception on the way.
"""

from __future__ import annotations

import asyncio
import signal
from types import FrameType
from typing import Any, Callable, NoReturn

from .main import Terminated

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None  # what signal.signal() returns
_RUN_UNTIL_COMPLETE = asyncio.BaseEventLoop.run_until_complete.__code__


def _loop_in(frame: FrameType | None) -> asyncio.AbstractEventLoop | None:
    """The event loop the main thread, interrupted in ``frame``, is running, or
    is starting or ending a run of (run_until_complete before and after its
    loop runs: a task made, the result taken); None when there is none."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    while frame is not None:
        if frame.f_code is _RUN_UNTIL_COMPLETE:
            loop = frame.f_locals.get("self")
            return loop if isinstance(loop, asyncio.AbstractEventLoop) else None
        frame = frame.f_back
    return None


class StopOnSignal:
    """In its ``with``: Ctrl-C raises KeyboardInterrupt and SIGTERM raises
    Terminated in the main thread, never inside an event loop's work (see the
    module's docstring); ``signum`` is the signal that came. Ctrl-C is left
    alone when it does not raise KeyboardInterrupt already (ignored, as in a
    shell script's background job, or handled otherwise). The handlers in
    place before come back at the end of the ``with``."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the latest signal that came
        self._raised = False            # its exception has been raised
        self._previous: dict[int, _Handler] = {}

    def __enter__(self) -> StopOnSignal:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._arrived)
        self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._arrived)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(signum, handler)
        self._previous.clear()

    @property
    def stopped_by(self) -> str:
        """What stopped the command, as its summary says it: "SIGTERM", else
        "Ctrl-C" (a KeyboardInterrupt that no signal here raised too)."""
        return "SIGTERM" if self.signum == signal.SIGTERM else "Ctrl-C"

    @property
    def exit_status(self) -> int:
        """The shell's status for that signal: 143 for SIGTERM, 130 for Ctrl-C."""
        return 128 + (self.signum if self.signum is not None else signal.SIGINT)

    def check(self) -> None:
        """Raises the stop if a signal came: for the command's own safe points,
        between two of its steps. Its exception may still be waiting on the
        loop, or have been lost (raised where Python could not pass it on)."""
        if self.signum is not None:
            self._raise()

    def _arrived(self, signum: int, frame: FrameType | None) -> None:
        self.signum, self._raised = signum, False
        loop = _loop_in(frame)
        if loop is None or loop.is_closed():  # no event loop at work in this thread: stop here
            self._raise()
        loop.call_soon_threadsafe(self._raise_unless_raised)  # wakes the loop's wait too

    def _raise_unless_raised(self) -> None:
        """The loop's callback: a check() may have raised the stop first."""
        if self.signum is not None and not self._raised:
            self._raise()

    def _raise(self) -> NoReturn:
        self._raised = True
        raise Terminated() if self.signum == signal.SIGTERM else KeyboardInterrupt()
