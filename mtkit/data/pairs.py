"""Sentence pairs for training and evaluation: encode with the tokenizer, filter, count what is dropped.

Pairs come from sources.py as an Arrow table with "src"/"tgt" columns; this module adds token
ids (in several processes; a corpus's tag first), drops unusable training pairs counting each
reason, lays several training corpora one after another in one table, and picks the dev pairs
validation scores. Which pairs an epoch draws is upsample.py's and mixing.py's job, batch
composition batching.py's, tensors padding.py's.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.table import InMemoryTable

from mtkit.config import DataConfig, SplitConfig
from mtkit.configcheck import corpus_key
from mtkit.data.mixing import CorpusSlice, corpus_names
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


def encode_pairs(ds: datasets.Dataset, tokenizer: Tokenizer, num_proc: int | None,
                 tag: str | None = None) -> datasets.Dataset:
    """Add "src_ids" and "tgt_ids" (lists of int32 piece ids, no BOS/EOS) to every pair.

    Args:
        ds: pairs from `load_pairs`.
        tokenizer: the run's tokenizer.
        num_proc: encoding processes; None = min(4, CPU cores), or 1 below 50k pairs where
            starting workers costs more than it saves.
        tag: a corpus's tag, put first in every source as one piece ("src" keeps the text as read).
    """
    if num_proc is None:
        num_proc = 1 if len(ds) < SMALL_DATASET else min(4, os.cpu_count() or 1)
    num_proc = max(1, min(num_proc, len(ds)))
    ids = datasets.List(datasets.Value("int32"))
    features = datasets.Features({**ds.features, "src_ids": ids, "tgt_ids": ids})
    # datasets caches the result under a fingerprint of (ds, _Encode(tokenizer)): the tokenizer
    # pickles as its model bytes, so another vocabulary never reuses a stale encoding.
    return ds.map(
        _Encode(tokenizer, tag), batched=True, batch_size=2000, num_proc=num_proc if num_proc > 1 else None,
        features=features, desc="encoding",
    )


class _Encode:
    """The `map` function; a class (not a closure) so it pickles for worker processes."""

    def __init__(self, tokenizer: Tokenizer, tag: str | None) -> None:
        self.tokenizer, self.tag = tokenizer, tag

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        return {"src_ids": self.tokenizer.encode_src(batch["src"], self.tag),
                "tgt_ids": self.tokenizer.encode_tgt(batch["tgt"])}


def token_lengths(ds: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Lengths of "src_ids" and "tgt_ids" (without BOS/EOS) as int32 arrays, computed in Arrow.

    Use this rather than `[len(x) for x in ds["src_ids"]]`: milliseconds instead of seconds.
    """
    def lengths(column) -> np.ndarray:
        return pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)

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
        ds = select_rows(ds, np.flatnonzero(keep))  # an index mapping over the same Arrow data: no copy
    return ds, report


def drop_counts(src: np.ndarray, tgt: np.ndarray, max_len: int, ratio: float) -> tuple[DropReport, np.ndarray]:
    empty = (src == 0) | (tgt == 0)
    too_long = ~empty & ((src > max_len) | (tgt > max_len))
    bad_ratio = ~empty & ~too_long & (np.maximum(src, tgt) > ratio * np.minimum(src, tgt))
    keep = ~(empty | too_long | bad_ratio)
    counts = [int(m.sum()) for m in (empty, too_long, bad_ratio, keep)]
    return DropReport(len(src), *counts), keep


@dataclass
class TrainPairs:
    """The training table: every corpus's kept pairs, one corpus after another, and where each lies."""

    ds: datasets.Dataset
    corpora: list[CorpusSlice]
    reports: list[DropReport]


def prepare_train(data: DataConfig, tokenizer: Tokenizer, cache_dir: Path | None) -> TrainPairs:
    """Load, encode (each corpus's tag first) and filter every training corpus.

    Raises:
        DataError: if a tag is not a piece of the tokenizer, or a corpus is empty after filtering.
    """
    parts, slices, reports = [], [], []
    for i, (corpus, name) in enumerate(zip(data.train, corpus_names(data.train), strict=True)):
        key = corpus_key(data.train, i)
        tag = corpus.tag and check_tag(tokenizer, corpus.tag, key)
        ds = load_pairs(corpus, data, key.removeprefix("data."), cache_dir)
        ds, report = filter_train(encode_pairs(ds, tokenizer, data.num_proc, tag), data.max_len, data.max_len_ratio)
        log.info("%s%s: %s", key, f" ({name})" if len(data.train) > 1 else "", report.format())
        if report.kept == 0:
            raise DataError(
                f"{key}: empty after filtering: {report.format()}; raise data.max_len (now {data.max_len})"
                f" or data.max_len_ratio (now {data.max_len_ratio}), or check that the files hold text"
            )
        slices.append(CorpusSlice(name, corpus.weight, sum(s.kept for s in slices), report.kept))
        parts.append(ds)
        reports.append(report)
    ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets([_as_plain_strings(p) for p in parts])
    return TrainPairs(ds, slices, reports)


def _as_plain_strings(ds: datasets.Dataset) -> datasets.Dataset:
    """The pairs with "string" text columns: Parquet and saved datasets may hold "large_string",
    and corpora of both kinds can only be put in one table with the same types (a rare copy)."""
    features = datasets.Features({**ds.features, "src": datasets.Value("string"), "tgt": datasets.Value("string")})
    return ds if ds.features == features else ds.cast(features)


def check_tag(tokenizer: Tokenizer, tag: str, key: str) -> str:
    """`tag` if the tokenizer has it as one piece, else a DataError naming the corpus's key."""
    try:
        tokenizer.tag_id(tag)
    except DataError as e:
        raise DataError(f"{key}.tag: {e}; a tokenizer from --init-from or trained before the tag was added"
                        " lacks it (start a new run dir, or drop the tag)") from None
    return tag


def prepare_eval(
    split: SplitConfig, data: DataConfig, tokenizer: Tokenizer, name: str, cache_dir: Path | None
) -> datasets.Dataset:
    """Load and encode dev/test pairs (with the split's tag), unfiltered: BLEU is computed on every line."""
    tag = split.tag and check_tag(tokenizer, split.tag, f"data.{name}")
    return encode_pairs(load_pairs(split, data, name, cache_dir), tokenizer, data.num_proc, tag)


def prepare_data(data: DataConfig, tokenizer: Tokenizer, cache_dir: Path | None
                 ) -> tuple[TrainPairs, datasets.Dataset | None]:
    """Encoded, filtered training pairs and encoded dev pairs (None without data.valid)."""
    train = prepare_train(data, tokenizer, cache_dir)  # logs its drop reports
    valid_ds = None
    if data.valid is not None:
        valid_ds = prepare_eval(data.valid, data, tokenizer, "valid", cache_dir)
        log.info("valid data: %d pairs", len(valid_ds))
    else:
        log.warning("no data.valid: no validation, no best.pt and no early stopping")
    return train, valid_ds


def dev_subset(valid_ds: datasets.Dataset, max_sentences: int | None) -> datasets.Dataset:
    """The dev pairs validation scores: the first train.valid_max_sentences (all when None);
    `mtkit evaluate --valid` takes the same ones."""
    if max_sentences is not None and max_sentences < len(valid_ds):
        return valid_ds.select(range(max_sentences))
    return valid_ds


def select_rows(ds: datasets.Dataset, rows: np.ndarray) -> datasets.Dataset:
    """ds.select(rows) for an int array of row positions, as an index mapping over the same Arrow
    data, without datasets' detour through a Python list of the positions (at 20M pairs select
    held 0.8 GB of int objects: the main process's peak in data preparation)."""
    backing = table_rows(ds)
    in_table = rows if backing is None else backing[rows]  # the backing table's rows
    indices = InMemoryTable(pa.table({"indices": pa.array(in_table, type=pa.uint64())}))
    digest = hashlib.blake2b(np.ascontiguousarray(in_table).data, digest_size=8).hexdigest()
    picked = datasets.Dataset(ds.data, info=ds.info.copy(), split=ds.split, indices_table=indices,
                              fingerprint=f"{ds._fingerprint}-rows-{digest}")
    if len(picked) != len(rows) or ds.format["type"] is not None:  # internals changed, or a format to keep
        return ds.select(rows)  # positions in `ds`, as given
    return picked


def table_rows(ds: datasets.Dataset) -> np.ndarray | None:
    """The rows of the backing Arrow table that `ds` shows, in order (the mapping select/filter
    leave); None when it shows the table as it is."""
    mapping = getattr(ds, "_indices", None)
    return None if mapping is None else mapping.column(0).to_numpy()

