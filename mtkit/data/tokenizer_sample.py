"""The text a tokenizer trains on: all of it while it is small, else a sample bounded in sentences
and in bytes.

SentencePiece keeps the text it trains on in memory, and its unigram trainer needs about 20 bytes
per byte of it (measured: 1.0 GB peak for 500k sentences of ~100 bytes, 2.0 GB for 1M). A cap on
sentences alone (tokenizer.input_sentence_size) lets long sentences run a machine out of memory,
so tokenizer.input_bytes caps the sample's size too. The sample is drawn here, in Arrow, rather
than by SentencePiece: only the sampled sentences become Python strings (at 4.5M pairs, 2M of 9M).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtkit.data.pairs import table_rows

SAMPLE_SEED = 0  # the same sample every time: a tokenizer trained again on the same data is the same
READ_ROWS = 100_000  # sentences turned into Python strings at a time


def sample_size(tables: Sequence[datasets.Dataset], columns: Sequence[str], max_sentences: int,
                max_bytes: int) -> tuple[int, int, int]:
    """(sentences in all, their UTF-8 bytes, how many the sample takes: all while they fit)."""
    total = sum(len(t) for t in tables) * len(columns)
    nbytes = sum(_text_bytes(t, c) for c in columns for t in tables)
    fits = int(max_bytes / max(nbytes / max(total, 1), 1.0))  # sentences of the average length that fit
    return total, nbytes, min(total, max_sentences, fits)


def sample_text(tables: Sequence[datasets.Dataset], columns: Sequence[str], take: int) -> Iterator[str]:
    """`take` sentences of the given columns of every table: all of them in order when `take` covers
    them, else a uniform random sample without replacement (seeded), in table order."""
    parts = [(t, c) for c in columns for t in tables]  # every source sentence, then every target one
    sizes = np.array([len(t) for t, _ in parts], dtype=np.int64)
    total = int(sizes.sum())
    picks = None
    if take < total:
        picks = np.sort(np.random.default_rng(SAMPLE_SEED).choice(total, size=take, replace=False))
    start = 0
    for (table, column), size in zip(parts, sizes, strict=True):
        rows = table_rows(table)  # the backing table's rows the Dataset shows (select leaves a mapping)
        rows = None if rows is None else rows.astype(np.int64)
        if picks is not None:
            mine = picks[np.searchsorted(picks, start): np.searchsorted(picks, start + size)] - start
            rows = mine if rows is None else rows[mine]
        start += size
        yield from (s for s in _strings(table.data.column(column), rows) if s)


def _text_bytes(table: datasets.Dataset, column: str) -> int:
    """UTF-8 bytes of a text column as the Dataset shows it (through its row mapping, if any)."""
    col, rows = table.data.column(column), table_rows(table)
    if rows is None:
        return int(pc.sum(pc.binary_length(col)).as_py() or 0)
    return int(pc.binary_length(col).to_numpy()[rows].sum())


def _strings(col: pa.ChunkedArray, rows: np.ndarray | None) -> Iterator[str]:
    """col[rows] (all of col when None) as Python strings, READ_ROWS at a time, in the order of rows.

    Taken chunk by chunk: ChunkedArray.take concatenates the whole column first, which held 2 GB of
    Arrow memory for a 20M-pair corpus (and overflows a string column's 32-bit offsets beyond 2 GB).
    """
    if rows is None:
        for chunk in col.chunks:
            for at in range(0, len(chunk), READ_ROWS):
                yield from chunk.slice(at, READ_ROWS).to_pylist()
        return
    starts = np.cumsum([0] + [len(c) for c in col.chunks])  # (chunks + 1,) each chunk's first row
    for at in range(0, len(rows), READ_ROWS):
        part = rows[at: at + READ_ROWS]
        chunk_of = np.searchsorted(starts, part, side="right") - 1  # each row's chunk
        order = np.argsort(chunk_of, kind="stable")  # rows grouped by chunk, in their order within it
        bounds = np.searchsorted(chunk_of[order], np.arange(len(starts)))  # each chunk's group in `order`
        values: list[str | None] = [None] * len(part)
        for i in np.flatnonzero(np.diff(bounds)):
            where = order[bounds[i]: bounds[i + 1]]
            taken = col.chunk(int(i)).take(pa.array(part[where] - starts[i])).to_pylist()
            for j, value in zip(where.tolist(), taken, strict=True):
                values[j] = value
        yield from values
