"""Sentence pairs for training: encode with the tokenizer, filter, pad into batches, report.

Pairs come from sources.py as an Arrow table with "src"/"tgt" columns; this module adds token
ids (in several processes), drops unusable training pairs counting each reason, pads rows into
tensors, and writes the `mtkit data check` report. Batch composition is batching.py's job.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mtkit.config import Config, DataConfig, SplitConfig
from mtkit.errors import DataError
from mtkit.sources import load_pairs
from mtkit.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

if TYPE_CHECKING:
    import datasets
    import torch

log = logging.getLogger("mtkit")

SMALL_DATASET = 50_000  # below this, one encoding process beats paying for worker start-up


# ----------------------------------------------------------------------------- encoding and filtering


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
    import datasets

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
    import pyarrow.compute as pc

    def lengths(column) -> np.ndarray:
        return pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)

    # On the backing table, then through the row mapping that select/filter leave (datasets'
    # public path for a mapped dataset copies every row first: ~1 s and 250 MB on Ding).
    src, tgt = lengths(ds.data.column("src_ids")), lengths(ds.data.column("tgt_ids"))
    rows = _table_rows(ds)
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
    report, keep = _drop_counts(src, tgt, max_len, max_len_ratio)
    if report.kept < report.total:
        ds = ds.select(np.flatnonzero(keep))  # an index mapping over the same Arrow data: no copy
    return ds, report


def _drop_counts(src: np.ndarray, tgt: np.ndarray, max_len: int, ratio: float) -> tuple[DropReport, np.ndarray]:
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


def _table_rows(ds: datasets.Dataset) -> np.ndarray | None:
    """The rows of the backing Arrow table that `ds` shows, in order (the mapping select/filter
    leave); None when it shows the table as it is."""
    mapping = getattr(ds, "_indices", None)
    return None if mapping is None else mapping.column(0).to_numpy()


def source_matches(ds: datasets.Dataset, pattern: str, chunk: int = 50_000) -> np.ndarray:
    """(n,) bool: which pairs' source matches the regular expression `pattern` (Python's `re`,
    searched anywhere in the text), read from the Arrow column `chunk` rows at a time (through the
    row mapping, like `token_lengths`), so memory stays flat however large the corpus."""
    search = re.compile(pattern).search
    column = ds.data.column("src")
    rows = _table_rows(ds)
    n = len(ds) if rows is None else len(rows)
    out = np.zeros(n, dtype=bool)
    for start in range(0, n, chunk):
        part = column.slice(start, chunk) if rows is None else column.take(rows[start: start + chunk])
        out[start: start + len(part)] = [search(s) is not None for s in part.to_pylist()]
    return out


def make_batch(src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]] | None = None,
               pad_to: int = 1) -> dict[str, torch.Tensor]:
    """Pad rows of piece ids into int64 tensors (used by training, validation and translation).

    Returns:
        "src": [B, S] ids + EOS, right-padded with PAD;
        with `tgt_ids` also "tgt_in": [B, T] BOS + ids and "tgt_out": [B, T] ids + EOS (padded).
        S and T are rounded up to a multiple of `pad_to` (8 on GPU: tensor-core friendly shapes).
    """
    import torch

    batch = {"src": torch.from_numpy(_pad(src_ids, lead=None, tail=EOS_ID, pad_to=pad_to))}
    if tgt_ids is not None:
        if len(tgt_ids) != len(src_ids):
            raise ValueError(f"make_batch: {len(src_ids)} source rows but {len(tgt_ids)} target rows")
        batch["tgt_in"] = torch.from_numpy(_pad(tgt_ids, lead=BOS_ID, tail=None, pad_to=pad_to))
        batch["tgt_out"] = torch.from_numpy(_pad(tgt_ids, lead=None, tail=EOS_ID, pad_to=pad_to))
    return batch


def _pad(rows: Sequence[Sequence[int]], lead: int | None, tail: int | None, pad_to: int = 1) -> np.ndarray:
    """[B, max_len + 1 rounded up to pad_to] int64: optional `lead` id, the row, optional `tail` id, then PAD."""
    lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = -(-(int(lens.max(initial=0)) + 1) // pad_to) * pad_to
    out = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    offset = 0 if lead is None else 1
    if lens.sum():
        flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
        # Row-major boolean assignment fills each row's first len(row) slots in order.
        out[:, offset:][np.arange(width - offset) < lens[:, None]] = flat
    if lead is not None:
        out[:, 0] = lead
    if tail is not None:
        out[np.arange(len(rows)), lens] = tail
    return out


# ----------------------------------------------------------------------------- `mtkit data check`


def check_report(cfg: Config, tokenizer: Tokenizer | None) -> str:
    """The text of `mtkit data check`: pairs per split, training drops by reason, length
    percentiles per side, and (with a tokenizer) character coverage and unknown-piece rate.

    Without a tokenizer, lengths (and so the max_len filter) are counted in whitespace words.
    """
    data = cfg.data
    run_dir = Path(cfg.run_dir)
    cache = run_dir / "cache" if run_dir.is_dir() else None  # a check does not create the run dir
    unit = "tokens" if tokenizer is not None else "words"
    out = [f"data check: {data.src_lang} -> {data.tgt_lang}, lengths in {unit}"
           + ("" if tokenizer is not None else " (no tokenizer trained yet)")]
    if tokenizer is not None:
        kind = "joint" if tokenizer.joint else "separate"
        out.append(f"tokenizer: {kind}, {tokenizer.src_vocab_size:,} source / {tokenizer.tgt_vocab_size:,} target pieces")
    for name, split in (("train", data.train), ("valid", data.valid), ("test", data.test)):
        if split is None:
            out.append(f"{name}: not configured")
            continue
        ds = load_pairs(split, data, name, cache)
        out.append(f"{name}: {len(ds):,} pairs from {_describe(split)}")
        if tokenizer is not None:
            ds = encode_pairs(ds, tokenizer, data.num_proc)
            src, tgt = token_lengths(ds)
        else:
            src, tgt = _word_lengths(ds, "src"), _word_lengths(ds, "tgt")
        if name == "train":
            report, keep = _drop_counts(src, tgt, data.max_len, data.max_len_ratio)
            out.append(f"  filter (max_len {data.max_len} {unit}, max_len_ratio {data.max_len_ratio}): {report.format()}")
            if max(data.upsample_factors) > 1:  # what training will pick among the kept pairs
                matches = None if data.upsample_pattern is None else source_matches(ds, data.upsample_pattern)[keep]
                rows = upsample_epochs(src[keep], data, matches)
                out.append("  " + upsampling_line(data, report.kept, [len(r) for r in rows], unit))
        for side, lens in (("src", src), ("tgt", tgt)):
            p50, p90, p99 = (int(v) for v in np.percentile(lens, [50, 90, 99], method="higher"))
            out.append(f"  {side} length: p50 {p50}  p90 {p90}  p99 {p99}  max {int(lens.max())}")
        if tokenizer is not None:
            out.append("  " + _coverage_line(ds, tokenizer))
    return "\n".join(out)


def _describe(split: SplitConfig) -> str:
    if split.src:
        return f"{Path(split.src).resolve()} + {Path(split.tgt).resolve()}"
    if split.path:
        return str(Path(split.path).resolve())
    return f"hub {split.hub}" + (f" ({split.hub_config})" if split.hub_config else "") + f" split {split.split}"


def _word_lengths(ds: datasets.Dataset, column: str) -> np.ndarray:
    """Whitespace words per row, in Arrow, 50k rows at a time (the split words are not kept)."""
    import pyarrow.compute as pc

    out = []
    for table in ds.select_columns([column]).with_format("arrow").iter(batch_size=50_000):
        text = pc.utf8_trim_whitespace(table.column(column))
        # Arrow splits "" into [""], so an empty text would count as one word.
        words = pc.list_value_length(pc.utf8_split_whitespace(text)).to_numpy(zero_copy_only=False)
        out.append(np.where(pc.equal(text, "").to_numpy(zero_copy_only=False), 0, words))
    return np.concatenate(out).astype(np.int64)


def _coverage_line(ds: datasets.Dataset, tokenizer: Tokenizer, sample: int = 100_000) -> str:
    """Character coverage (share of character occurrences the vocabulary knows) and the share of
    pieces that are <unk>, per side, on the first `sample` pairs."""
    import pyarrow.compute as pc

    part = ds.select(range(min(sample, len(ds)))).with_format("arrow")
    parts = []
    for side, encode in (("src", tokenizer.encode_src), ("tgt", tokenizer.encode_tgt)):
        counts: Counter[str] = Counter()
        for text in part[side].to_pylist():
            counts.update(text)
        chars = list(counts)
        unknown = {c for c, ids in zip(chars, encode(chars), strict=True) if UNK_ID in ids}
        total = sum(counts.values()) or 1
        covered = 1 - sum(counts[c] for c in unknown) / total
        pieces = pc.list_flatten(part[f"{side}_ids"])
        unk_rate = pc.sum(pc.equal(pieces, UNK_ID)).as_py() or 0
        parts.append(f"{side} coverage {covered:.4%}, unknown pieces {unk_rate / max(len(pieces), 1):.4%}")
    return "; ".join(parts) + f" (first {len(part):,} pairs)"


