"""Sentence pairs for training and evaluation: encode with the tokenizer, filter, count what is dropped.

Pairs come from sources.py as an Arrow table with "src"/"tgt" columns; this module adds token
ids (in several processes), drops unusable training pairs counting each reason, and picks the dev
pairs validation scores. Which pairs an epoch repeats is upsample.py's job, batch composition
batching.py's, tensors padding.py's.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc

from mtkit.config import DataConfig, SplitConfig
from mtkit.data.sources import load_pairs
from mtkit.data.tokenizer import Tokenizer
from mtkit.errors import DataError

log = logging.getLogger("mtkit")

SMALL_DATASET = 50_000  # below this, one encoding process beats paying for worker start-up


@dataclass
class DropReport:
    """Training pairs dropped by `filter_train`, by reason (the first matching reason counts)."""

    total: int
    empty: int
    too_long: int
    bad_ratio: int
    kept: int

    def format(self) -> str:
        """One log line."""
        return (
            f"{self.total:,} pairs, kept {self.kept:,}; dropped {self.empty:,} with an empty side,"
            f" {self.too_long:,} too long, {self.bad_ratio:,} with a bad length ratio"
        )


def encode_pairs(ds: datasets.Dataset, tokenizer: Tokenizer, num_proc: int | None) -> datasets.Dataset:
    """Add "src_ids" and "tgt_ids" (lists of int32 piece ids, no BOS/EOS) to every pair.

    Args:
        ds: pairs from `load_pairs`.
        tokenizer: the run's tokenizer.
        num_proc: encoding processes; None = min(4, CPU cores), or 1 below 50k pairs where
            starting workers costs more than it saves.
    """
    if num_proc is None:
        num_proc = 1 if len(ds) < SMALL_DATASET else min(4, os.cpu_count() or 1)
    num_proc = max(1, min(num_proc, len(ds)))
    ids = datasets.List(datasets.Value("int32"))
    features = datasets.Features({**ds.features, "src_ids": ids, "tgt_ids": ids})
    # datasets caches the result under a fingerprint of (ds, _Encode(tokenizer)): the tokenizer
    # pickles as its model bytes, so another vocabulary never reuses a stale encoding.
    return ds.map(
        _Encode(tokenizer), batched=True, batch_size=2000, num_proc=num_proc if num_proc > 1 else None,
        features=features, desc="encoding",
    )


class _Encode:
    """The `map` function; a class (not a closure) so it pickles for worker processes."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        return {"src_ids": self.tokenizer.encode_src(batch["src"]), "tgt_ids": self.tokenizer.encode_tgt(batch["tgt"])}


def token_lengths(ds: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Lengths of "src_ids" and "tgt_ids" (without BOS/EOS) as int64 arrays, computed in Arrow.

    Use this rather than `[len(x) for x in ds["src_ids"]]`: milliseconds instead of seconds.
    """
    def lengths(column) -> np.ndarray:
        return pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)

    # On the backing table, then through the row mapping that select/filter leave (datasets'
    # public path for a mapped dataset copies every row first: ~1 s and 250 MB on Ding).
    src, tgt = lengths(ds.data.column("src_ids")), lengths(ds.data.column("tgt_ids"))
    rows = table_rows(ds)
    if rows is not None:
        src, tgt = src[rows], tgt[rows]
    if len(src) != len(ds):  # datasets changed its internals: take the slow public path
        table = ds.with_format("arrow", columns=["src_ids", "tgt_ids"])[:]
        src, tgt = lengths(table.column("src_ids")), lengths(table.column("tgt_ids"))
    return src, tgt


def filter_train(ds: datasets.Dataset, max_len: int, max_len_ratio: float) -> tuple[datasets.Dataset, DropReport]:
    """Drop training pairs with an empty side, a side over `max_len` tokens, or a length ratio
    (longer / shorter, in tokens) over `max_len_ratio`; counted in that order of reasons."""
    src, tgt = token_lengths(ds)
    report, keep = drop_counts(src, tgt, max_len, max_len_ratio)
    if report.kept < report.total:
        ds = ds.select(np.flatnonzero(keep))  # an index mapping over the same Arrow data: no copy
    return ds, report


def drop_counts(src: np.ndarray, tgt: np.ndarray, max_len: int, ratio: float) -> tuple[DropReport, np.ndarray]:
    empty = (src == 0) | (tgt == 0)
    too_long = ~empty & ((src > max_len) | (tgt > max_len))
    bad_ratio = ~empty & ~too_long & (np.maximum(src, tgt) > ratio * np.minimum(src, tgt))
    keep = ~(empty | too_long | bad_ratio)
    counts = [int(m.sum()) for m in (empty, too_long, bad_ratio, keep)]
    return DropReport(len(src), *counts), keep


def prepare_train(data: DataConfig, tokenizer: Tokenizer, cache_dir: Path | None) -> tuple[datasets.Dataset, DropReport]:
    """Load, encode and filter the training pairs.

    Raises:
        DataError: if nothing is left after filtering.
    """
    ds = encode_pairs(load_pairs(data.train, data, "train", cache_dir), tokenizer, data.num_proc)
    ds, report = filter_train(ds, data.max_len, data.max_len_ratio)
    log.info("data.train: %s", report.format())
    if report.kept == 0:
        raise DataError(
            f"data.train: empty after filtering: {report.format()}; raise data.max_len (now {data.max_len})"
            f" or data.max_len_ratio (now {data.max_len_ratio}), or check that the files hold text"
        )
    return ds, report


def prepare_eval(
    split: SplitConfig, data: DataConfig, tokenizer: Tokenizer, name: str, cache_dir: Path | None
) -> datasets.Dataset:
    """Load and encode dev/test pairs, unfiltered: BLEU is computed on every line."""
    return encode_pairs(load_pairs(split, data, name, cache_dir), tokenizer, data.num_proc)


def prepare_data(data: DataConfig, tokenizer: Tokenizer, cache_dir: Path | None
                 ) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Encoded, filtered training pairs and encoded dev pairs (None without data.valid)."""
    train_ds, _ = prepare_train(data, tokenizer, cache_dir)  # logs its drop report
    valid_ds = None
    if data.valid is not None:
        valid_ds = prepare_eval(data.valid, data, tokenizer, "valid", cache_dir)
        log.info("valid data: %d pairs", len(valid_ds))
    else:
        log.warning("no data.valid: no validation, no best.pt and no early stopping")
    return train_ds, valid_ds


def dev_subset(valid_ds: datasets.Dataset, max_sentences: int | None) -> datasets.Dataset:
    """The dev pairs validation scores: the first train.valid_max_sentences (all when None);
    `mtkit evaluate --valid` takes the same ones."""
    if max_sentences is not None and max_sentences < len(valid_ds):
        return valid_ds.select(range(max_sentences))
    return valid_ds


def table_rows(ds: datasets.Dataset) -> np.ndarray | None:
    """The rows of the backing Arrow table that `ds` shows, in order (the mapping select/filter
    leave); None when it shows the table as it is."""
    mapping = getattr(ds, "_indices", None)
    return None if mapping is None else mapping.column(0).to_numpy()

