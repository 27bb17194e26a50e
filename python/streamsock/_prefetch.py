"""An iterator pulled on a thread of its own into a bounded buffer: probe()'s
input.

The targets may come from anything: a list, a file of millions of lines, or a
pipe that delivers a line now and then (``tail -f targets | streamsock probe
-f -``). Pulled in the probing loop itself, a slow input would stop every
connection already started from being driven and reported while the loop
waits for the next line. Pulled here, the loop takes what has arrived without
ever blocking, so the engine's queue stays deep when the input is fast and
results keep coming when it is slow. The buffer is bounded, so memory still
follows the connections in flight, not the input.
"""

from __future__ import annotations

import collections
import enum
import threading
from typing import Generic, Iterator, Literal, TypeVar

T = TypeVar("T")


class _End(enum.Enum):
    END = "the input is exhausted"


END = _End.END  # take(): the input is exhausted
CLOSE_WAIT = 0.2  # seconds close() waits for the reader to stop


class Prefetch(Generic[T]):
    """``items`` pulled on a daemon thread into a buffer of at most ``size``."""

    def __init__(self, items: Iterator[T], size: int) -> None:
        self._items = items
        self._size = size
        self._buffer: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._done = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._pull, name="streamsock-probe-input", daemon=True)
        self._thread.start()

    def _pull(self) -> None:
        try:
            for item in self._items:
                with self._cond:
                    while len(self._buffer) >= self._size and not self._stopped:
                        self._cond.wait()
                    if self._stopped:
                        return
                    self._buffer.append(item)
                    self._cond.notify_all()
        except BaseException as exc:  # raised again by check(), after the items before it
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def take(self, most: int, wait: float = 0.0) -> list[T] | Literal[_End.END]:
        """Up to ``most`` items (waiting at most ``wait`` seconds for the first),
        ``[]`` when none has arrived, or END once everything has been taken."""
        with self._cond:
            if not self._buffer and not self._done and wait > 0:
                self._cond.wait_for(lambda: self._buffer or self._done, wait)
            if self._buffer:
                n = min(most, len(self._buffer))
                out = [self._buffer.popleft() for _ in range(n)]
                if len(self._buffer) <= self._size // 2:
                    self._cond.notify_all()  # the reader refills in bursts: fewer thread switches
                return out
            return END if self._done else []

    def check(self) -> None:
        """Raises what the input raised, if it did (call after END)."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    @property
    def exhausted(self) -> bool:
        """Everything has been read and taken."""
        return self._done and not self._buffer

    def close(self) -> None:
        """Stops the reader at its next item (one blocked inside the input,
        such as a read from a terminal, ends with the input or the process)."""
        with self._cond:
            self._stopped = True
            self._buffer.clear()
            self._cond.notify_all()
        self._thread.join(CLOSE_WAIT)
