"""STARTTLS dialogues: what smtp, imap, pop3 and ftp servers want to hear before TLS.

:class:`Dialogue` is the client side of one protocol's plaintext exchange
without any I/O: feed it what the server sent, send what it hands out, and
start TLS once it is ``ready``. :func:`negotiate` drives it on a blocking
:class:`~streamsock.Stream`; ``probe(starttls=...)`` drives it in asyncio, and
csrc/starttls.c is its twin in the C engine: same steps, same checks, same
messages, so both backends report a refusal identically.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import errors as _e

if TYPE_CHECKING:
    from .stream import Stream

PROTOCOLS = ("smtp", "imap", "pop3", "ftp")

# Per protocol: (command sent, expected reply prefix) for each step; the first
# step is the server's greeting (nothing sent).
_STEPS: dict[str, tuple[tuple[bytes, bytes], ...]] = {
    "smtp": ((b"", b"220"), (b"EHLO streamsock\r\n", b"250"), (b"STARTTLS\r\n", b"220")),
    "imap": ((b"", b"* OK"), (b"a001 STARTTLS\r\n", b"a001 OK")),
    "pop3": ((b"", b"+OK"), (b"STLS\r\n", b"+OK")),
    "ftp": ((b"", b"220"), (b"AUTH TLS\r\n", b"234")),
}
MAX_LINE = 2048     # longer reply lines are a protocol error, not a reason to buffer more
MAX_LINES = 100     # lines in one reply (EHLO lists extensions)
_SHOWN = 120        # characters of a reply quoted in an error


def _step_name(command: bytes) -> str:
    return command.decode().split("\r")[0].removeprefix("a001 ") if command else "greeting"


def shown(line: bytes) -> str:
    """A reply line for an error message: printable ASCII, at most _SHOWN characters."""
    return "".join(chr(b) if 0x20 <= b < 0x7F else "?" for b in line[:_SHOWN])


class Dialogue:
    """The client side of one protocol's STARTTLS exchange, as a state machine.

    ``outgoing()`` returns the bytes to send now; ``feed(data)`` takes what the
    server sent and raises :class:`~streamsock.TLSError` when the server refuses
    or breaks the protocol. ``ready`` turns true after the server's go-ahead;
    bytes after it would be taken for TLS records, so they are refused
    (``SS_ERR_STARTTLS_BUFFERED``), as a STARTTLS injection defence.
    """

    def __init__(self, protocol: str) -> None:
        if protocol not in _STEPS:
            raise ValueError(f"starttls must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        self.protocol = protocol
        self.greeting = b""
        self.ready = False
        self._steps = _STEPS[protocol]
        self._step = 0
        self._pending = b""
        self._buffer = b""
        self._lines = 0
        self._reply_code = b""

    def outgoing(self) -> bytes:
        out, self._pending = self._pending, b""
        return out

    def feed(self, data: bytes) -> None:
        if self.ready:
            if data:
                raise _e.error(_e.STARTTLS_BUFFERED)
            return
        self._buffer += data
        while not self.ready:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    raise self._refused(self._buffer, "reply line too long")
                return
            raw, self._buffer = self._buffer[:end + 1], self._buffer[end + 1:]
            if len(raw) > MAX_LINE:
                raise self._refused(raw, "reply line too long")
            if self._step == 0:  # the greeting, as sent
                self.greeting += raw
            self._line(raw.rstrip(b"\r\n"))
        if self._buffer:
            raise _e.error(_e.STARTTLS_BUFFERED)

    def eof(self) -> _e.StreamSocketError:
        """The error for a server that closed the connection mid-dialogue."""
        return _e.error(_e.EOF, f"{self.protocol} STARTTLS failed at {self._where()}: connection closed")

    def _where(self) -> str:
        return _step_name(self._steps[self._step][0])

    def _refused(self, line: bytes, why: str = "") -> _e.StreamSocketError:
        detail = why or f'server answered "{shown(line)}"'
        return _e.error(_e.STARTTLS_REFUSED, f"{self.protocol} STARTTLS failed at {self._where()}: {detail}")

    def _line(self, line: bytes) -> None:
        self._lines += 1
        if self._lines > MAX_LINES:
            raise self._refused(line, "reply too long")
        if not self._reply_done(line):
            return
        expected = self._steps[self._step][1]
        if not line.startswith(expected):
            raise self._refused(line)
        self._step += 1
        self._lines = 0
        self._reply_code = b""
        if self._step == len(self._steps):
            self.ready = True
        else:
            self._pending += self._steps[self._step][0]

    def _reply_done(self, line: bytes) -> bool:
        """Whether line ends the current reply (multi-line replies continue)."""
        if self.protocol in ("smtp", "ftp"):
            # "250-..." continues; "250 ..." (or a bare "250") ends. An ftp
            # reply's middle lines may be anything: only its own code ends it.
            code = line[:3]
            if len(code) < 3 or not code.isdigit():
                return not self._reply_code  # a reply must start with a code: fail now
            if not self._reply_code:
                self._reply_code = code
            return code == self._reply_code and line[3:4] in (b" ", b"")
        if self.protocol == "imap" and self._step > 0:
            return line.startswith(b"a001 ")  # untagged "* ..." lines come first
        return True


def negotiate(stream: Stream, protocol: str) -> bytes:
    """Runs ``protocol``'s STARTTLS dialogue on a connected blocking stream and
    returns the server's greeting; then call ``stream.enable_crypto(True)``."""
    dialogue = Dialogue(protocol)
    while not dialogue.ready:
        out = dialogue.outgoing()
        if out:
            stream.write(out)
        data = stream.read(4096)
        if not data:
            raise dialogue.eof()
        dialogue.feed(data)
    return dialogue.greeting
