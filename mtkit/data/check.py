"""`mtkit data check`: pairs per split, training drops by reason, lengths, tokenizer coverage.

A report to read before a long job: are the data what you think? It reads the splits as training
would (sources.py, pairs.py, upsample.py) and writes nothing.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc

from mtkit.config import Config, DataConfig, SplitConfig
from mtkit.configcheck import corpus_key
from mtkit.data.mixing import corpus_names, epoch_draws
from mtkit.data.pairs import check_tag, drop_counts, encode_pairs, token_lengths
from mtkit.data.sources import load_pairs
from mtkit.data.tokenizer import UNK_ID, Tokenizer
from mtkit.data.upsample import source_matches, upsample_epochs, upsampling_line


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
    several = len(data.train) > 1
    splits = [(corpus_key(data.train, i).removeprefix("data."), f" ({label})" if several else "", c)
              for i, (c, label) in enumerate(zip(data.train, corpus_names(data.train), strict=True))]
    draws = []  # per training corpus: pairs it gives an epoch (before mixing), to report its share
    for name, label, split in [*splits, ("valid", "", data.valid), ("test", "", data.test)]:
        if split is None:
            out.append(f"{name}: not configured")
            continue
        ds = load_pairs(split, data, name, cache)
        out.append(f"{name}{label}: {len(ds):,} pairs from {_describe(split)}"
                   + (f", tag {split.tag}" if split.tag else ""))
        if tokenizer is not None:
            tag = split.tag and check_tag(tokenizer, split.tag, f"data.{name}")
            ds = encode_pairs(ds, tokenizer, data.num_proc, tag)
            src, tgt = token_lengths(ds)
        else:
            src, tgt = _word_lengths(ds, "src"), _word_lengths(ds, "tgt")
        if name.startswith("train"):
            draws.append(_train_lines(out, ds, src, tgt, data, unit))
        for side, lens in (("src", src), ("tgt", tgt)):
            p50, p90, p99 = (int(v) for v in np.percentile(lens, [50, 90, 99], method="higher"))
            out.append(f"  {side} length: p50 {p50}  p90 {p90}  p99 {p99}  max {int(lens.max())}")
        if tokenizer is not None:
            out.append("  " + _coverage_line(ds, tokenizer))
        if name.startswith("train") and len(draws) == len(data.train) > 1:
            out.append(_shares_line(data, draws))
    return "\n".join(out)


def _train_lines(out: list[str], ds: datasets.Dataset, src: np.ndarray, tgt: np.ndarray, data: DataConfig,
                 unit: str) -> int:
    """A training corpus's drops and upsampling; returns its rows per epoch (before mixing)."""
    report, keep = drop_counts(src, tgt, data.max_len, data.max_len_ratio)
    out.append(f"  filter (max_len {data.max_len} {unit}, max_len_ratio {data.max_len_ratio}): {report.format()}")
    if max(data.upsample_factors) <= 1:
        return report.kept
    matches = None if data.upsample_pattern is None else source_matches(ds, data.upsample_pattern)[keep]
    rows = upsample_epochs(src[keep], data, matches)  # what training will pick among the kept pairs
    out.append("  " + upsampling_line(data, report.kept, [len(r) for r in rows], unit))
    return len(rows[0])


def _shares_line(data: DataConfig, rows: list[int]) -> str:
    """Each corpus's share of an epoch (the first epoch, with upsampling)."""
    drawn = epoch_draws(rows, [c.weight for c in data.train])
    total = max(sum(drawn), 1)
    names = corpus_names(data.train)
    return "train mix (weights; pairs per epoch): " + ", ".join(
        f"{name} {c.weight:g}: {n:,} ({n / total:.1%})" for name, c, n in zip(names, data.train, drawn, strict=True))


def _describe(split: SplitConfig) -> str:
    if split.src:
        return f"{Path(split.src).resolve()} + {Path(split.tgt).resolve()}"
    if split.path:
        return str(Path(split.path).resolve())
    return f"hub {split.hub}" + (f" ({split.hub_config})" if split.hub_config else "") + f" split {split.split}"


def _word_lengths(ds: datasets.Dataset, column: str) -> np.ndarray:
    """Whitespace words per row, in Arrow, 50k rows at a time (the split words are not kept)."""
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
