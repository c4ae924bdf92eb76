"""data.upsample_*: which training pairs an epoch repeats, and how many times.

Gives weight to the part of a corpus that looks like the text to translate, e.g. Ding's example
sentences among its many one-word dictionary entries: the pairs whose source is long enough or
matches a pattern appear `factor` times per epoch (or a factor per epoch). It hands out row
numbers; batching.py turns them into batches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import datasets
import numpy as np

from mtkit.config import DataConfig
from mtkit.data.pairs import table_rows


def upsample_index(src_lens: np.ndarray, min_len: int | None, factor: int,
                   matches: np.ndarray | None = None) -> np.ndarray:
    """Row numbers of one training epoch: every pair once, and `factor` times in all the pairs
    whose source has at least `min_len` tokens or whose `matches` flag is set (the pairs whose
    source matches data.upsample_pattern: source_matches). Without upsampling: 0..n-1.

    Used to give a small in-domain part of a corpus more weight, e.g. Ding's example sentences
    (the kind of text its dev and test sets hold) among its many one-word dictionary entries.
    """
    everything = np.arange(len(src_lens), dtype=np.int64)
    if factor <= 1 or (min_len is None and matches is None):
        return everything
    chosen = np.zeros(len(src_lens), dtype=bool)
    if min_len is not None:
        chosen |= np.asarray(src_lens) >= min_len
    if matches is not None:
        if len(matches) != len(src_lens):
            raise ValueError(f"upsample_index: {len(matches)} pattern matches for {len(src_lens)} pairs")
        chosen |= matches
    rows = np.flatnonzero(chosen)
    return np.concatenate([everything] + [rows] * (factor - 1))


def upsample_epochs(src_lens: np.ndarray, data: DataConfig, matches: np.ndarray | None = None) -> list[np.ndarray]:
    """The rows of each epoch (upsample_index) for data.upsample_factor, or one per factor of
    data.upsample_schedule (epoch e takes the e-th, the last for all later epochs). `matches`:
    source_matches for data.upsample_pattern (None without one)."""
    return [upsample_index(src_lens, data.upsample_min_len, f, matches) for f in data.upsample_factors]


def upsampling_line(data: DataConfig, pairs: int, rows: Sequence[int], unit: str = "tokens") -> str:
    """One line on what upsample_epochs did: `pairs` pairs in, `rows` rows per epoch out."""
    why = ([f">= {data.upsample_min_len} source {unit}"] if data.upsample_min_len is not None else []) + (
        [f"a source matching {data.upsample_pattern!r}"] if data.upsample_pattern is not None else [])
    factors = data.upsample_factors
    picked = max(((r - pairs) // (f - 1) for f, r in zip(factors, rows) if f > 1), default=0)
    if len(factors) == 1:
        return (f"upsampling: {picked:,} of {pairs:,} pairs ({' or '.join(why)}) count {factors[0]}"
                f" times: {rows[0]:,} rows per epoch")
    epochs = [str(e + 1) for e in range(len(factors) - 1)] + [f"{len(factors)}+"]
    return (f"upsampling: {picked:,} of {pairs:,} pairs ({' or '.join(why)}) count {' / '.join(map(str, factors))}"
            f" times in epochs {' / '.join(epochs)}: {' / '.join(f'{r:,}' for r in rows)} rows per epoch")


def source_matches(ds: datasets.Dataset, pattern: str, chunk: int = 50_000) -> np.ndarray:
    """(n,) bool: which pairs' source matches the regular expression `pattern` (Python's `re`,
    searched anywhere in the text), read from the Arrow column `chunk` rows at a time (through the
    row mapping, like `token_lengths`), so memory stays flat however large the corpus."""
    search = re.compile(pattern).search
    column = ds.data.column("src")
    rows = table_rows(ds)
    n = len(ds) if rows is None else len(rows)
    out = np.zeros(n, dtype=bool)
    for start in range(0, n, chunk):
        part = column.slice(start, chunk) if rows is None else column.take(rows[start: start + chunk])
        out[start: start + len(part)] = [search(s) is not None for s in part.to_pylist()]
    return out
