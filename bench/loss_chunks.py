#!/usr/bin/env python3
"""Memory and time of a training update with the output layer and loss in chunks (train.loss_chunk_tokens).

For each vocabulary size and chunk size, one process builds the config's model (default: configs/base.yaml)
with that many pieces, makes --batches random batches of --batch-tokens padded target tokens
(sentence lengths 5-40, as Ding's and WMT's are mostly short), and runs updates through mtkit's
own update step (training/step.py) in fp32. A thread samples the process's anonymous memory
(RssAnon) every 2 ms. Each setting runs --rounds times, the settings taking turns, so a busy machine
slows them alike. Prints a table (median ms per update over all rounds, peak anonymous memory, and
the loss after the last update, which must agree between chunk sizes) and one JSON line.

usage: python bench/loss_chunks.py [--vocab 8000 16000] [--chunks 0 512 1024 2048] [--batch-tokens 4096]
                                   [--updates 20] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def anon_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) // 1024
    return 0


def one(config: Path, vocab: int, chunk: int, batch_tokens: int, updates: int, batches: int, threads: int) -> dict:
    """One setting in this process: ms per update (after 3 warm-up updates) and peak RssAnon."""
    import torch

    from mtkit.config import load_config
    from mtkit.data.padding import make_batch
    from mtkit.model.transformer import Transformer
    from mtkit.training.distributed import World
    from mtkit.training.step import make_learner

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(config, [f"train.batch_tokens={batch_tokens}", f"train.loss_chunk_tokens={chunk}",
                               "train.precision=fp32"])
    model = Transformer(cfg.model, vocab, vocab)
    learner = make_learner(model, cfg, "cpu", "fp32", World())
    gen = torch.Generator().manual_seed(1)
    group_batches = []
    for _ in range(batches):
        n = int(torch.randint(5, 41, (1,), generator=gen))  # this batch's longest sentence
        rows = batch_tokens // n
        lengths = torch.randint(max(1, n // 2), n + 1, (rows,), generator=gen).tolist()
        seqs = [torch.randint(4, vocab, (length,), generator=gen).tolist() for length in lengths]
        group_batches.append(make_batch(seqs, seqs))
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], anon_mb())
            time.sleep(0.002)

    base = anon_mb()
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    times, loss = [], 0.0
    for i in range(updates + 3):
        batch = group_batches[i % batches]
        tokens = int((batch["tgt_out"] != 0).sum())
        t0 = time.perf_counter()
        _, loss, _ = learner.step([batch], tokens)
        if i >= 3:
            times.append(1000 * (time.perf_counter() - t0))
    stop.set()
    watcher.join()
    return {"vocab": vocab, "chunk": chunk, "ms": times, "peak_anon_mb": peak[0], "before_mb": base,
            "last_loss_per_token": loss / tokens}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs/base.yaml")
    p.add_argument("--vocab", type=int, nargs="+", default=[8000, 16000])
    p.add_argument("--chunks", type=int, nargs="+", default=[0, 512, 1024, 2048])
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--updates", type=int, default=20)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.config, a.one[0], a.one[1], a.batch_tokens, a.updates, a.batches, a.threads)))
        return
    print(f"settings: config {a.config}, batch_tokens {a.batch_tokens}, {a.updates} updates after 3 warm-up, "
          f"{a.batches} batches, fp32, {a.threads} threads, {a.rounds} rounds taking turns", flush=True)
    results: dict[tuple[int, int], list[dict]] = {}
    for _ in range(a.rounds):
        for vocab in a.vocab:
            for chunk in a.chunks:
                cmd = [sys.executable, __file__, "--one", str(vocab), str(chunk), "--config", str(a.config),
                       "--batch-tokens", str(a.batch_tokens), "--updates", str(a.updates),
                       "--batches", str(a.batches), "--threads", str(a.threads)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                results.setdefault((vocab, chunk), []).append(json.loads(out.splitlines()[-1]))
    print("| vocab | loss_chunk_tokens | ms per update (median) | peak anonymous MB (max of rounds) | loss/token after |")
    print("|---|---|---|---|---|")
    summary = []
    for (vocab, chunk), runs in results.items():
        ms = statistics.median(t for r in runs for t in r["ms"])
        peak = max(r["peak_anon_mb"] for r in runs)
        row = {"vocab": vocab, "chunk": chunk, "ms_median": round(ms, 1), "peak_anon_mb": peak,
               "loss": round(runs[0]["last_loss_per_token"], 5)}
        summary.append(row)
        print(f"| {vocab} | {chunk} | {ms:.1f} | {peak} | {row['loss']} |")
    print(json.dumps({"settings": vars(a) | {"config": str(a.config)}, "results": summary}))


if __name__ == "__main__":
    main()
