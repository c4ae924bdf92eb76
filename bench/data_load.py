#!/usr/bin/env python3
"""Benchmark the data path: load + encode a corpus pair through mtkit.data.pairs, then batch it.

The tokenizer is trained first if bench/.cache has none for this corpus and vocabulary size (in a
child process, excluded from the timing; its time is printed). Load+encode always starts from an
empty datasets cache. Prints a table and one JSON line.

usage: python bench/data_load.py --src data/ding-de-en/train.de --tgt data/ding-de-en/train.en
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

CACHE = Path(__file__).resolve().parent / ".cache"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", required=True, type=Path, help="source side, one sentence per line")
    p.add_argument("--tgt", required=True, type=Path, help="target side, line-aligned")
    p.add_argument("--vocab-size", type=int, default=8000, help="joint unigram vocabulary (default 8000)")
    p.add_argument("--num-proc", type=int, default=None, help="encoding processes (default: mtkit's choice)")
    p.add_argument("--batch-tokens", type=int, default=4096, help="budget for the non-pad ratio (default 4096)")
    p.add_argument("--train-tokenizer-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    from mtkit.config import DataConfig, SplitConfig, TokenizerConfig

    split = SplitConfig(src=str(args.src), tgt=str(args.tgt))
    data = DataConfig(train=split, num_proc=args.num_proc)
    if args.train_tokenizer_only is not None:  # the child process
        train_tokenizer_into(args.train_tokenizer_only, data, TokenizerConfig(vocab_size=args.vocab_size))
        return

    tok_dir, tok_seconds = ensure_tokenizer(args)
    from mtkit.data.batching import TokenBatchSampler, padding_stats
    from mtkit.data.pairs import encode_pairs, filter_train, token_lengths
    from mtkit.data.sources import load_pairs
    from mtkit.data.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(tok_dir)
    t_import = time.perf_counter()
    import datasets  # noqa: F401 - a fixed start-up cost (~1 s), reported apart from the per-pair work

    import_s = time.perf_counter() - t_import
    with tempfile.TemporaryDirectory(prefix="mtkit-bench-") as cache:
        t0 = time.perf_counter()
        ds = load_pairs(split, data, "train", Path(cache))
        t1 = time.perf_counter()
        encoded = encode_pairs(ds, tokenizer, args.num_proc)
        t2 = time.perf_counter()
        reloaded = encode_pairs(load_pairs(split, data, "train", Path(cache)), tokenizer, args.num_proc)
        t3 = time.perf_counter()
        assert len(reloaded) == len(encoded)
        kept, report = filter_train(encoded, data.max_len, data.max_len_ratio)
        src_lens, tgt_lens = token_lengths(kept)
        t4 = time.perf_counter()
        sampler = TokenBatchSampler(src_lens, tgt_lens, args.batch_tokens, seed=1)
        batches = sampler.epoch_batches(0)
        t5 = time.perf_counter()
        ratio = padding_stats(batches, src_lens, tgt_lens)

    n = len(ds)
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = {
        "pairs": n,
        "vocab_size": tokenizer.src_vocab_size,
        "num_proc": args.num_proc,
        "cpus": os.cpu_count(),
        "import_datasets_s": round(import_s, 3),
        "load_s": round(t1 - t0, 3),
        "encode_s": round(t2 - t1, 3),
        "load_encode_pairs_per_s": round(n / (t2 - t0)),
        "cached_reload_s": round(t3 - t2, 3),
        "filter_s": round(t4 - t3, 3),
        "kept": report.kept,
        "epoch_batches_s": round(t5 - t4, 3),
        "batches": len(batches),
        "batch_tokens": args.batch_tokens,
        "non_pad_ratio": round(ratio, 4),
        "peak_rss_mb": round(self_kb / 1024),
        "peak_rss_children_mb": round(child_kb / 1024),
        "tokenizer_train_s": None if tok_seconds is None else round(tok_seconds, 1),
    }
    notes = {
        "num_proc": "None = min(4, cores), 1 below 50k pairs",
        "peak_rss_children_mb": "largest child: encode workers" + (", tokenizer training" if tok_seconds else ""),
        "tokenizer_train_s": "cached from an earlier run" if tok_seconds is None else "joint unigram, child process",
    }
    print(f"mtkit data benchmark: {args.src} + {args.tgt}")
    for key, value in result.items():
        print(f"  {key:<26} {value!s:>12}  {notes.get(key, '')}")
    print(json.dumps({"bench": "data_load", **result}))


def ensure_tokenizer(args) -> tuple[Path, float | None]:
    """bench/.cache/tokenizer-<corpus+size hash>; trained in a child process when missing."""
    key = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in (args.src, args.tgt))
    tok_dir = CACHE / f"tokenizer-{hashlib.sha256(f'{key}|{args.vocab_size}'.encode()).hexdigest()[:16]}"
    if (tok_dir / "spm.model").is_file():
        return tok_dir, None
    start = time.perf_counter()
    command = [sys.executable, __file__, "--src", str(args.src), "--tgt", str(args.tgt),
               "--vocab-size", str(args.vocab_size), "--train-tokenizer-only", str(tok_dir)]
    subprocess.run(command, check=True)
    return tok_dir, time.perf_counter() - start


def train_tokenizer_into(tok_dir: Path, data, cfg) -> None:
    from mtkit.data.sources import load_pairs
    from mtkit.data.tokenizer_training import train_tokenizer

    class Texts:
        """One column, read 10k rows at a time (re-iterable, so a retry can read it again)."""

        def __init__(self, ds, column: str) -> None:
            self.ds, self.column = ds, column

        def __iter__(self):
            for start in range(0, len(self.ds), 10_000):
                yield from self.ds[start : start + 10_000][self.column]

    with tempfile.TemporaryDirectory(prefix="mtkit-bench-") as cache:
        ds = load_pairs(data.train, data, "train", Path(cache))
        start = time.perf_counter()
        train_tokenizer(cfg, Texts(ds, "src"), Texts(ds, "tgt")).save(tok_dir)
        print(f"tokenizer: trained in {time.perf_counter() - start:.1f} s (joint {cfg.model_type},"
              f" vocab {cfg.vocab_size}, {len(ds):,} pairs)", file=sys.stderr)


if __name__ == "__main__":
    main()
