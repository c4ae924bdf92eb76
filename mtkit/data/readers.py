"""Row readers for corpus files: plain text lines (also .gz), TSV/CSV, JSON Lines, streamed records.

Each yields (source, target) string pairs and checks as it goes: UTF-8, NUL bytes, field counts,
JSON syntax and keys, each error naming the file and line. sources.py turns the rows into tables.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mtkit.errors import DataError, MtkitError

READ_CHUNK = 16 << 20  # bytes read at a time: memory stays flat however big the file is


def check_readable(path: Path, key: str, folder_ok: bool = False) -> None:
    """`path` exists and can be opened (a folder too where `folder_ok`), else one DataError naming
    `key` and the absolute path: the check scan_text starts with, and train's check before any work."""
    where = f"{key}: {path.resolve()}"
    if not path.exists():
        raise DataError(f"{where}: file not found")
    if path.is_dir():
        if not folder_ok:
            raise DataError(f"{where}: is a directory; give a file with one sentence per line")
        if not os.access(path, os.R_OK | os.X_OK):
            raise DataError(f"{where}: cannot read this folder (permission denied)")
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise DataError(f"{where}: cannot read ({e.strerror})") from None


def scan_text(path: Path, key: str) -> int:
    """Check a text file completely (UTF-8, no NUL bytes) and return its number of lines.

    Fast: whole chunks are decoded at once; only a failing chunk is searched for the line.
    """
    where = f"{key}: {path.resolve()}"
    check_readable(path, key)
    lines = 0
    for first, chunk in line_chunks(path, where):
        nul = chunk.find(b"\0")
        if nul >= 0:
            line = first + chunk.count(b"\n", 0, nul)
            raise DataError(f"{where}: line {line}: NUL byte, this looks like a binary file, not text")
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError as e:
            line = first + chunk.count(b"\n", 0, e.start)
            column = e.start - (chunk.rfind(b"\n", 0, e.start) + 1) + 1
            raise DataError(
                f"{where}: line {line}, byte {column}: not valid UTF-8 (0x{chunk[e.start]:02x});"
                " convert the file, e.g. iconv -f latin1 -t utf-8"
            ) from None
        lines += chunk.count(b"\n") + (not chunk.endswith(b"\n"))
    return lines


def line_chunks(path: Path, where: str) -> Iterator[tuple[int, bytes]]:
    """(number of the first line, bytes of whole lines) for `path`, gzip-decompressed if .gz."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            first, pending = 1, []
            while block := f.read(READ_CHUNK):
                cut = block.rfind(b"\n") + 1
                if cut == 0:  # no line end yet (a very long line): keep collecting
                    pending.append(block)
                    continue
                chunk = b"".join([*pending, block[:cut]])
                pending = [block[cut:]]
                yield first, chunk
                first += chunk.count(b"\n")
            tail = b"".join(pending)
            if tail:
                yield first, tail
    except (OSError, EOFError, zlib.error) as e:  # includes gzip.BadGzipFile and truncated files
        raise DataError(f"{where}: cannot read ({short_error(e)})") from e


def text_lines(path: Path) -> Iterator[str]:
    """Decoded lines without their line end ("\\n" or "\\r\\n"); the file was checked by scan_text."""
    for _, chunk in line_chunks(path, str(path)):
        lines = chunk.decode("utf-8").split("\n")
        if chunk.endswith(b"\n"):
            lines.pop()
        for line in lines:
            yield line[:-1] if line.endswith("\r") else line


def pair_rows(src: Path, tgt: Path, key: str) -> Iterator[tuple[str, str]]:
    try:
        yield from zip(text_lines(src), text_lines(tgt), strict=True)
    except ValueError:  # the line counts were equal when checked
        raise DataError(f"{key}: {src.resolve()} or {tgt.resolve()} changed while being read; try again") from None


def table_header(path: Path, suffix: str) -> list[str]:
    first = next(text_lines(path), "")
    header = first.split("\t") if suffix == ".tsv" else next(csv.reader([first]), [])
    return [h.strip() for h in header]


def table_rows(path: Path, where: str, src_field: str, tgt_field: str) -> Iterator[tuple[str, str]]:
    """TSV: raw tab-separated fields (quotes are text, as in MT corpora); CSV: standard quoting."""
    with contextlib.ExitStack() as stack:
        if format_suffix(path) == ".tsv":
            rows: Iterator[tuple[int, list[str]]] = enumerate((t.split("\t") for t in text_lines(path)), 1)
        else:
            binary = stack.enter_context(gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb"))
            stream = stack.enter_context(io.TextIOWrapper(binary, encoding="utf-8", newline=""))
            csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # a 1 MB line is data, not an error
            reader = csv.reader(stream)
            rows = ((reader.line_num, row) for row in reader)  # physical line: quoted fields span lines
        header: list[str] = []
        line = 0
        try:
            for line, row in rows:
                if not header:
                    header = [h.strip() for h in row]
                    i, j = header.index(src_field), header.index(tgt_field)  # checked by the caller
                    continue
                if row == [] or row == [""]:
                    continue  # a blank line, e.g. at the end of the file
                if len(row) != len(header):
                    raise DataError(
                        f"{where}: line {line}: {len(row)} fields, the header has {len(header)};"
                        " check for stray tab/comma characters or broken quoting"
                    )
                yield row[i], row[j]
        except csv.Error as e:
            raise DataError(f"{where}: line {line + 1}: {e}") from None


def jsonl_rows(path: Path, where: str, src_field: str, tgt_field: str) -> Iterator[tuple[str, str]]:
    """JSON Lines: {"de": ..., "en": ...} or {"translation": {"de": ..., "en": ...}} per line."""
    for line, text in enumerate(text_lines(path), 1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            msg = getattr(e, "msg", "nested too deeply")
            raise DataError(
                f"{where}: line {line}: not valid JSON ({msg}); each line must be one object like"
                f' {{"{src_field}": "...", "{tgt_field}": "..."}}'
            ) from None
        yield pair_from_record(record, src_field, tgt_field, f"{where}: line {line}")


def stream_rows(stream, where: str, src_field: str, tgt_field: str) -> Iterator[tuple[str, str]]:
    n = 0
    try:
        for n, record in enumerate(stream, 1):
            yield pair_from_record(record, src_field, tgt_field, f"{where}: example {n}")
    except MtkitError:
        raise
    except Exception as e:  # noqa: BLE001 - a dropped connection or a bad shard, mid-stream
        raise DataError(f"{where}: streaming stopped after {n} examples ({short_error(e)})") from e


def pair_from_record(record: Any, src_field: str, tgt_field: str, where: str) -> tuple[str, str]:
    if isinstance(record, dict) and isinstance(record.get("translation"), dict) and src_field not in record:
        record = record["translation"]
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with keys {src_field!r} and {tgt_field!r}")
    for field in (src_field, tgt_field):
        if field not in record:
            keys = ", ".join(map(repr, record)) or "none"
            raise DataError(
                f"{where}: no key {field!r} (it has {keys}); set data.src_lang/tgt_lang or src_field/tgt_field"
            )
        if not isinstance(record[field], str):
            raise DataError(f"{where}: {field!r} is {type(record[field]).__name__}, expected text")
    return record[src_field], record[tgt_field]


def format_suffix(path: Path) -> str:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1:
        return suffixes[-2].lower()
    return path.suffix.lower()


def short_error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]
