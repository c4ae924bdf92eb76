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

from mtkit.config import Config, SplitConfig
from mtkit.data.pairs import drop_counts, encode_pairs, token_lengths
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
            report, keep = drop_counts(src, tgt, data.max_len, data.max_len_ratio)
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
