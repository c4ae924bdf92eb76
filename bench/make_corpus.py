#!/usr/bin/env python3
"""Write a synthetic parallel corpus of any size, for load and memory benchmarks.

Each side is a sentence of words drawn from a Zipf-distributed vocabulary of made-up words
(lengths log-normal, median 12 words, as in news text); the target is a noisy word-for-word
"translation" of the source, so a tokenizer sees realistic sharing. Deterministic per --seed.

usage: python bench/make_corpus.py --pairs 2000000 --out /tmp/syn    (writes /tmp/syn.de, /tmp/syn.en)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def words(rng: np.random.Generator, n: int, letters: str) -> np.ndarray:
    lengths = rng.integers(2, 11, n)
    pool = np.array(list(letters))
    return np.array(["".join(rng.choice(pool, k)) for k in lengths])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="prefix: writes PREFIX.de and PREFIX.en")
    p.add_argument("--vocab", type=int, default=50_000, help="distinct words per side")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    src_words = words(rng, args.vocab, "abcdefghijklmnopqrstuvwxyzäöüß")
    tgt_words = words(rng, args.vocab, "abcdefghijklmnopqrstuvwxyz")
    t0 = time.perf_counter()
    chunk = 100_000
    with open(f"{args.out}.de", "w", encoding="utf-8") as fs, open(f"{args.out}.en", "w", encoding="utf-8") as ft:
        for start in range(0, args.pairs, chunk):
            n = min(chunk, args.pairs - start)
            lengths = np.clip(rng.lognormal(np.log(12), 0.6, n), 1, 100).astype(int)
            ids = np.minimum(rng.zipf(1.3, lengths.sum()) - 1, args.vocab - 1)
            flip = rng.random(len(ids)) < 0.1  # 10% of target words differ from the word-for-word one
            tgt_ids = np.where(flip, rng.integers(0, args.vocab, len(ids)), ids)
            bounds = np.cumsum(lengths)[:-1]
            for s, t in zip(np.split(src_words[ids], bounds), np.split(tgt_words[tgt_ids], bounds)):
                fs.write(" ".join(s) + "\n")
                ft.write(" ".join(t) + "\n")
    print(f"wrote {args.pairs:,} pairs to {args.out}.de / .en in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
