"""Going on with a probe that stopped: the targets its output file records.

probe()'s records go out whole, one write each, so a run that is killed
leaves whole records, and at most a last line cut short by the kill. Reading
that file back gives the input positions already probed (``index``), which
the next run skips (``probe(..., skip=recorded)``); it appends the rest.

The positions are kept as a bitmap, one bit per position, so a file of a
hundred million records needs 12.5 MB. To catch a run resumed with another
input, the text of the first records is kept too and compared with the
input's text at their positions.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
from typing import IO, Iterator

SAMPLE = 4096   # records whose target text is checked against the input
# The two fields as ProbeResult.to_dict() and json.dumps() write them, side by side.
_INDEX_AND_TARGET = re.compile(r'"index": (\d+), "target": ("(?:[^"\\]|\\.)*")')


class ResumeError(ValueError):
    """A file to resume from that is not a probe's --json or CSV output, or that
    was written for another input."""


class RecordedTargets:
    """The input positions a probe's output file records: ``position in recorded``."""

    __slots__ = ("_bits", "_count", "_sample", "path", "format", "whole_size")

    def __init__(self, path: str | None = None) -> None:
        self._bits = bytearray()
        self._count = 0
        self._sample: dict[int, str] = {}
        self.path = path
        self.format: str | None = None  # "jsonl" or "csv"; None for an empty file
        self.whole_size = 0             # bytes up to the end of the last whole record

    @classmethod
    def read(cls, path: str | os.PathLike[str], missing_ok: bool = False) -> RecordedTargets:
        """The records of ``path``, a probe's JSON-lines or CSV output. A last
        line without its line end (cut short by a kill) does not count."""
        recorded = cls(os.fspath(path))
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            if missing_ok:
                return recorded
            raise
        with f:
            lines = recorded._whole_lines(f)
            for first in lines:
                if first.strip():
                    break
            else:
                return recorded
            lines = itertools.chain((first,), lines)
            if first.lstrip().startswith("{"):
                recorded.format = "jsonl"
                recorded._read_jsonl(lines)
            else:
                recorded.format = "csv"
                recorded._read_csv(lines)
        return recorded

    def _whole_lines(self, f: IO[bytes]) -> Iterator[str]:
        """The lines of ``f`` that end with a line end, one at a time; ``whole_size`` counts them."""
        for raw in f:
            if not raw.endswith(b"\n"):
                return  # cut short by a kill
            self.whole_size += len(raw)
            yield raw.decode("utf-8", "surrogateescape")

    def _read_jsonl(self, lines: Iterator[str]) -> None:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                quick = _INDEX_AND_TARGET.search(line)  # json.loads of a whole record costs ten times as much
                if quick is not None:
                    # The text only for the records kept to compare with the input.
                    self.add(int(quick[1]), json.loads(quick[2]) if len(self._sample) < SAMPLE else "")
                    continue
                record = json.loads(line)
                self.add(record["index"], record["target"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ResumeError(f"{self.path}, line {number}: not a probe record ({_why(exc)})") from None

    def _read_csv(self, lines: Iterator[str]) -> None:
        reader = csv.reader(lines)
        header = next(reader)
        if "index" not in header or "target" not in header:
            raise ResumeError(f"{self.path}: neither JSON lines nor CSV with index and target columns "
                              "(resume from the output of --json, -o or --format csv)")
        at_index, at_target = header.index("index"), header.index("target")
        for row in reader:
            try:
                self.add(int(row[at_index]), row[at_target])
            except (ValueError, IndexError) as exc:
                raise ResumeError(f"{self.path}, line {reader.line_num}: not a probe record ({_why(exc)})") from None

    def add(self, position: int, text: str) -> None:
        if type(position) is not int or position < 0:
            raise ValueError(f"index must be an int >= 0, not {position!r}")
        byte, bit = divmod(position, 8)
        if byte >= len(self._bits):
            self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits))))  # doubles: amortised O(1)
        if not self._bits[byte] >> bit & 1:
            self._bits[byte] |= 1 << bit
            self._count += 1
            if len(self._sample) < SAMPLE:
                self._sample[position] = text

    def __contains__(self, position: object) -> bool:
        if type(position) is not int or position < 0:
            return False
        byte = position >> 3
        return byte < len(self._bits) and bool(self._bits[byte] >> (position & 7) & 1)

    def __len__(self) -> int:
        return self._count

    def confirm(self, position: int, text: str) -> None:
        """Raise ResumeError when the record of ``position`` was for another target than ``text``."""
        expected = self._sample.get(position)
        if expected is not None and expected.strip() != text.strip():
            raise ResumeError(f"{self.path or 'the records'} record target {position} as {expected!r}, the input has "
                              f"{text!r} there: resume with the input of the run that wrote them")

    def __repr__(self) -> str:
        return f"<RecordedTargets {self._count} from {self.path!r}>"


def drop_cut_record(path: str | os.PathLike[str], recorded: RecordedTargets) -> None:
    """Cut ``path`` back to its last whole record, so what is appended starts on a line of its own."""
    if recorded.whole_size < os.path.getsize(path):
        os.truncate(path, recorded.whole_size)


def _why(exc: Exception) -> str:
    return f"no {exc.args[0]!r} field" if isinstance(exc, KeyError) else str(exc)
