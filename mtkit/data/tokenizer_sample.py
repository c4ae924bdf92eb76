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
    nbytes = sum(int(pc.sum(pc.binary_length(_column(t, c))).as_py() or 0) for c in columns for t in tables)
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
        col = _column(table, column)
        rows = None if picks is None else picks[np.searchsorted(picks, start): np.searchsorted(picks, start + size)] - start
        start += size
        for at in range(0, size if rows is None else len(rows), READ_ROWS):
            part = col.slice(at, READ_ROWS) if rows is None else col.take(pa.array(rows[at: at + READ_ROWS]))
            yield from (s for s in part.to_pylist() if s)


def _column(table: datasets.Dataset, column: str) -> pa.ChunkedArray:
    """A text column as the Dataset shows it (through its row mapping, if select left one)."""
    col = table.data.column(column)
    rows = table_rows(table)
    return col if rows is None else col.take(pa.array(rows))
