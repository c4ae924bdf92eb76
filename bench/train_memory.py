#!/usr/bin/env python3
"""Resident memory of training over updates: does it grow, and is it the batches' changing shapes?

Builds the config's model and real training batches (as bench/train_speed.py does), runs bf16
updates through mtkit's own update step (training/step.py) and prints the process's resident size every --every
updates. --fixed repeats the first batch instead, so every update asks for the same block sizes;
--release-every N hands the heap's free pages back (glibc malloc_trim) every N updates;
MTKIT_MALLOC=system in the environment keeps glibc's allocator defaults (mtkit keeps freed memory).
Run each setting in its own process. Prints the settings, the series and one JSON line.

usage: python bench/train_memory.py [--config configs/ding-de-en.yaml] [--batch-tokens 2048]
                                    [--steps 300] [--every 50] [--fixed] [--threads 2]
                                    [--release-every N]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rss_mb() -> int:
    """Current (not peak) resident size, from /proc (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 // 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("configs/ding-de-en.yaml"))
    p.add_argument("--run-dir", type=Path, default=None, help="tokenizer + data cache (default: the config's)")
    p.add_argument("--batch-tokens", type=int, default=2048)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--fixed", action="store_true", help="repeat the first batch (one shape)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--release-every", type=int, default=0, help="malloc_trim every N updates (0 = never)")
    args = p.parse_args()

    from mtkit.memory import keep_freed_memory, peak_rss_mb

    malloc = "kept for reuse" if keep_freed_memory() else "system"
    import torch
    from train_speed import training_batches  # this directory (sys.path[0] when run as a script)

    from mtkit.data.padding import make_batch
    from mtkit.data.tokenizer import PAD_ID
    from mtkit.model.transformer import Transformer
    from mtkit.training.distributed import World
    from mtkit.training.runlog import setup_logging
    from mtkit.training.sampling import rows
    from mtkit.training.step import make_learner

    setup_logging(-1)
    torch.set_num_threads(args.threads)
    cfg, run, train_ds, batches = training_batches(args.config, args.run_dir, args.batch_tokens)
    torch.manual_seed(cfg.seed)
    model = Transformer(cfg.model, run.tokenizer.src_vocab_size, run.tokenizer.tgt_vocab_size)
    learner = make_learner(model, cfg, "cpu", "bf16", World())
    first = make_batch(*rows(train_ds, next(batches)[1]))
    start = rss_mb()
    print(f"mtkit train memory: {args.config}, batch_tokens {args.batch_tokens}, bf16, {args.threads} threads,"
          f" {'one batch repeated' if args.fixed else 'the real batches'}, freed memory {malloc},"
          f" released every {args.release_every or 'never'} updates,"
          f" torch {torch.__version__}; RSS before the first update {start} MB")
    trim = ctypes.CDLL("libc.so.6").malloc_trim if args.release_every else None  # loaded once, not per update
    series, t0, tokens = {}, time.perf_counter(), 0
    for step in range(1, args.steps + 1):
        batch = first if args.fixed else make_batch(*rows(train_ds, next(batches)[1]))
        n = int((batch["tgt_out"] != PAD_ID).sum())
        tokens += n
        learner.step([batch], n)
        if trim is not None and step % args.release_every == 0:
            trim(0)
        if step % args.every == 0:
            series[step] = rss_mb()
            print(f"  update {step:>5}: RSS {series[step]:,} MB")
    seconds = time.perf_counter() - t0
    print(f"  peak RSS {peak_rss_mb():,} MB; {tokens / seconds:,.0f} target tok/s over {seconds:.1f} s")
    print(json.dumps({"bench": "train_memory", "config": str(args.config), "batch_tokens": args.batch_tokens,
                      "fixed": args.fixed, "malloc": malloc, "release_every": args.release_every,
                      "rss_start_mb": start, "rss_mb": series, "peak_rss_mb": peak_rss_mb(),
                      "tokens_per_s": round(tokens / seconds, 1), "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
