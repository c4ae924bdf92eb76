"""Synthetic parallel corpora for smoke tests and demos: copy and reverse tasks.

The Annotated Transformer's lesson: prove the model learns a task whose answer is known before
feeding it real data. Sentences are random "words" from a small alphabet; the target is the
source copied or reversed. Deterministic for a seed. Real corpora come from ding.py and sources.py.
"""

from __future__ import annotations

import random
from pathlib import Path

from mtkit import files

WORDS = [f"{a}{b}" for a in "bdfgklmnprst" for b in "aeiou"][:40]  # 40 syllable "words"


def make_pairs(task: str, n: int, seed: int, min_len: int = 3, max_len: int = 10) -> list[tuple[str, str]]:
    """`n` (source, target) pairs for `task` "copy" or "reverse"."""
    if task not in ("copy", "reverse"):
        raise ValueError(f"unknown task {task!r}")
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(min_len, max_len))]
        target = words if task == "copy" else words[::-1]
        pairs.append((" ".join(words), " ".join(target)))
    return pairs


def write_task(out_dir: Path, task: str = "reverse", train: int = 20_000, dev: int = 200, test: int = 200,
               seed: int = 1) -> dict[str, int]:
    """Write train/dev/test .src/.tgt files of a synthetic task into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for i, (name, n) in enumerate((("train", train), ("dev", dev), ("test", test))):
        pairs = make_pairs(task, n, seed=seed * 1000 + i)
        files.write_text(out_dir / f"{name}.src", "".join(s + "\n" for s, _ in pairs))
        files.write_text(out_dir / f"{name}.tgt", "".join(t + "\n" for _, t in pairs))
        counts[name] = n
    return counts
