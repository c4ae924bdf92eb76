"""Input lines, read as translation and scoring need them: one line per "\\n", checked, in chunks.

Invalid UTF-8 and NUL bytes are errors that name the line; files are read in chunks so memory
stays flat, and a terminal or a pipe is answered line by line as lines arrive. What is done with
the lines is translate.py's and evaluate.py's business.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from mtkit.errors import DataError

CHUNK_LINES = 20_000  # lines read, translated and written at a time: bounds memory for huge files


def read_chunks(stream: IO[bytes], name: str, chunk_lines: int = CHUNK_LINES, first_no: int = 1
                ) -> Iterator[tuple[int, list[str]]]:
    """Yield (number of the first line, lines) from a binary stream, split on "\\n" only; the
    stream's first line is line `first_no`.

    Splitting on "\\n" alone (not str.splitlines, which also breaks at \\x0b, \\x1c, \\u2028 ...)
    keeps one output line per input line. Invalid UTF-8 and NUL bytes are errors naming the line.
    """
    chunk: list[str] = []
    first = first_no
    for no, raw in enumerate(stream, start=first_no):
        if b"\x00" in raw:
            raise DataError(f"{name}: line {no}: NUL byte; is this a binary file? give UTF-8 text")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{name}: line {no}: invalid UTF-8; convert the input to UTF-8 (e.g. with iconv)") from None
        chunk.append(line.rstrip("\n").rstrip("\r"))
        if len(chunk) >= chunk_lines:
            yield first, chunk
            first, chunk = no + 1, []
    if chunk:
        yield first, chunk


def read_as_available(stream: IO[bytes], name: str, chunk_lines: int = CHUNK_LINES
                      ) -> Iterator[tuple[int, list[str]]]:
    """Like read_chunks, but yields the complete lines that have arrived as soon as there are any
    (at most `chunk_lines`), instead of waiting for a full chunk: for stdin from a terminal or a
    pipe. Reads the file descriptor directly, so no line waits in Python's buffer."""
    fd = stream.fileno()
    pending, first = b"", 1
    while True:
        block = os.read(fd, 1 << 16)  # blocks until something arrives; b"" at end of input
        pending += block
        parts = pending.split(b"\n")
        pending = parts.pop() if block else b""
        if not block and parts == [b""]:
            parts = []
        for start in range(0, len(parts), chunk_lines):
            raw = b"".join(p + b"\n" for p in parts[start: start + chunk_lines])
            yield from read_chunks(io.BytesIO(raw), name, chunk_lines, first_no=first)  # the same checks
            first += len(parts[start: start + chunk_lines])
        if not block:
            return


def arrives_over_time(stream: IO[bytes]) -> bool:
    """True for a terminal or a pipe (not a regular file, and a real file descriptor)."""
    try:
        return not stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, io.UnsupportedOperation):  # e.g. an in-memory stream in tests
        return False


def check_text_file(path: Path, what: str) -> None:
    """One error line, naming `what` ("input", "references", ...), unless `path` is a file to read."""
    if not path.exists():
        raise DataError(f"{what} {path}: file not found (absolute path {path.resolve()})")
    if path.is_dir():
        raise DataError(f"{what} {path}: is a directory; give a text file with one sentence per line")


def read_text_lines(path: Path, what: str) -> list[str]:
    """A UTF-8 text file's lines (without newlines), checked as translation input is (read_chunks)."""
    check_text_file(path, what)
    with open(path, "rb") as f:
        return [line for _, chunk in read_chunks(f, f"{what} {path}") for line in chunk]


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
    return n
