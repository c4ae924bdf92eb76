#!/usr/bin/env python3
"""Training throughput of mtkit: target (non-pad) tokens/s per precision, side by side.

Builds the config's model and its real training batches (the run dir's tokenizer and data cache;
both are made when missing), then times full updates (forward, label-smoothed loss, backward,
clipping, Adam) with mtkit's own update step (training/step.py). Settings alternate in rounds (A B A B ...) so
machine noise hits all alike, and every setting of a round trains on the same batches; the figure
is the median over the timed updates after warm-up. The same run measures this CPU's matmul peak
(torch.mm, sized and repeated for a quarter of a second per dtype), and reports the model's FLOPs
per target token and the utilisation of that peak. bf16 is timed only where the CPU computes it
natively: elsewhere it is emulated, many times slower, and reported as "emulated"
(mtkit/hardware.py decides; MTKIT_NATIVE_BF16=0/1 overrides). Prints the settings, a table and
one JSON line.

usage: python bench/train_speed.py [--config configs/ding-de-en.yaml] [--batch-tokens 4096]
                                   [--precisions fp32 bf16 (default: bf16 only where native)] [--steps 10] [--rounds 2] [--threads 2]
                                   [--compile] [--separate-qkv (also time the unfused attention projections)]
                                   [--pad-to 8 (also time each precision with both lengths padded to a multiple of 8)]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def training_batches(config: Path, run_dir: Path | None, batch_tokens: int, overrides=()):
    """The config (with train.batch_tokens set), its run (tokenizer), encoded training pairs and an
    endless iterator over their shuffled token batches, as `mtkit train` makes them (tokenizer and
    data cache are built in the run dir when missing). Shared with bench/train_memory.py."""
    from mtkit.config import load_config
    from mtkit.data.batching import TokenBatchSampler
    from mtkit.data.pairs import prepare_data, token_lengths
    from mtkit.data.run_tokenizer import get_tokenizer
    from mtkit.training.rundir import Run

    cfg = load_config(config, [f"train.batch_tokens={batch_tokens}", *overrides])
    run_dir = run_dir or Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = Run(dir=run_dir, tokenizer=get_tokenizer(cfg, run_dir))
    train, _ = prepare_data(cfg.data, run.tokenizer, run_dir / "cache")
    train_ds = train.ds
    src_lens, tgt_lens = token_lengths(train_ds)
    batches = iter(TokenBatchSampler(src_lens, tgt_lens, batch_tokens, seed=cfg.seed))
    return cfg, run, train_ds, batches


def separate_qkv(self, query, key_value, attend_mask=None, is_causal=False):
    """MultiHeadAttention.forward as it was before Q, K, V were fused: one matmul per role."""
    q = self.split_heads(self.w_q(query))  # (B, H, Tq, d_k)
    k = self.split_heads(self.w_k(key_value))  # (B, H, Tk, d_k)
    v = self.split_heads(self.w_v(key_value))
    return self.attend(q, k, v, attend_mask, is_causal)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("configs/ding-de-en.yaml"))
    p.add_argument("--run-dir", type=Path, default=None, help="tokenizer + data cache (default: the config's)")
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                   help="bf16 is reported as emulated, not timed, where the CPU has no native bf16")
    p.add_argument("--steps", type=int, default=10, help="timed updates per precision per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed updates before each timed block")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also time bf16/fp32 through torch.compile")
    p.add_argument("--separate-qkv", action="store_true",
                   help="also time each precision with Q, K, V projected by three matmuls (before the fusion)")
    p.add_argument("--pad-to", type=int, default=None,
                   help="also time each precision on the same pairs, both lengths padded to a multiple of this"
                        " (train.pad_to_multiple; a batch may then exceed the budget a little)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override KEY=VALUE")
    args = p.parse_args()

    import torch

    from mtkit.data.padding import make_batch
    from mtkit.data.tokenizer import PAD_ID
    from mtkit.hardware import cpu_capability, matmul_flops, native_bf16
    from mtkit.memory import keep_freed_memory, peak_rss_mb
    from mtkit.model.attention import MultiHeadAttention
    from mtkit.model.transformer import Transformer
    from mtkit.training.distributed import World
    from mtkit.training.runlog import setup_logging
    from mtkit.training.sampling import rows
    from mtkit.training.step import make_learner

    setup_logging(-1)
    fused_qkv = MultiHeadAttention.forward
    malloc = "kept for reuse" if keep_freed_memory() else "system"  # as `mtkit train` (MTKIT_MALLOC=system: off)
    torch.set_num_threads(args.threads)
    cfg, run, train_ds, batches = training_batches(args.config, args.run_dir, args.batch_tokens, args.overrides)
    tok = run.tokenizer
    bf16_native, bf16_why = native_bf16("cpu")
    emulated = [] if bf16_native else [p for p in args.precisions if p == "bf16"]
    precisions = [p for p in args.precisions if p not in emulated]
    if not precisions:
        sys.exit(f"error: nothing to time: bf16 is emulated here ({bf16_why}); add --precisions fp32")
    learners = {}  # setting ("fp32", "bf16", "bf16+compile", ...) -> its Learner (model, optimizer, autocast)
    settings = (precisions + ([f"{p}+compile" for p in precisions] if args.compile else [])
                + ([f"{p}+separate-qkv" for p in precisions] if args.separate_qkv else [])
                + ([f"{p}+pad{args.pad_to}" for p in precisions] if args.pad_to else []))
    for setting in settings:
        torch.manual_seed(cfg.seed)
        model = Transformer(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size)
        setting_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=setting.endswith("+compile")))
        learners[setting] = make_learner(model, setting_cfg, "cpu", setting.split("+")[0], World())
    peaks = {"fp32": matmul_flops(torch.float32, 0.25)}  # (FLOP/s, n)
    if bf16_native:
        peaks["bf16"] = matmul_flops(torch.bfloat16, 0.25)

    per_step: dict[str, list[float]] = {s: [] for s in settings}
    tokens: dict[str, list[int]] = {s: [] for s in settings}
    shapes = []
    for _ in range(args.rounds):
        # The same pairs for every setting of a round: the settings differ only in how they compute
        # (and, with +padN, in how far the batch tensors are padded).
        round_rows = [rows(train_ds, next(batches)[1]) for _ in range(args.warmup + args.steps)]
        for setting in settings:
            pad_to = args.pad_to if "+pad" in setting else 1
            round_batches = [make_batch(*r, pad_to=pad_to) for r in round_rows]
            MultiHeadAttention.forward = separate_qkv if setting.endswith("+separate-qkv") else fused_qkv
            for i, batch in enumerate(round_batches):
                n = int((batch["tgt_out"] != PAD_ID).sum())
                t0 = time.perf_counter()
                learners[setting].step([batch], n)
                if i >= args.warmup:
                    per_step[setting].append(time.perf_counter() - t0)
                    tokens[setting].append(n)
                    if pad_to == 1:
                        shapes.append((batch["src"].shape[1], batch["tgt_in"].shape[1]))
    src_len = statistics.mean(s for s, _ in shapes)
    tgt_len = statistics.mean(t for _, t in shapes)
    flops = learners[settings[0]].model.flops_per_target_token(round(src_len), round(tgt_len))
    result = {"config": str(args.config), "batch_tokens": args.batch_tokens, "threads": args.threads, "malloc": malloc,
              "torch": torch.__version__, "cpu_capability": cpu_capability(), "native_bf16": bf16_native,
              "params": learners[settings[0]].model.num_parameters(), "mflop_per_target_token": round(flops / 1e6, 1),
              "matmul_peak_gflops": {"fp32": round(peaks["fp32"][0] / 1e9, 1),
                                     "bf16": round(peaks["bf16"][0] / 1e9, 1) if bf16_native else "emulated"},
              "precisions": {}}
    for setting in settings:
        tok_s = statistics.median(n / s for n, s in zip(tokens[setting], per_step[setting]))
        result["precisions"][setting] = {
            "tokens_per_s": round(tok_s), "real_target_tokens_per_batch": round(statistics.mean(tokens[setting])),
            "seconds_per_update": round(statistics.median(per_step[setting]), 3),
            "utilisation_of_fp32_peak": round(tok_s * flops / peaks["fp32"][0], 3)}
    for precision in emulated:
        result["precisions"][precision] = "emulated"
    base = result["precisions"][settings[0]]["tokens_per_s"]
    result["peak_rss_mb"] = peak_rss_mb()
    print(f"mtkit train speed: {args.config}, {result['params']:,} parameters, batch_tokens {args.batch_tokens},"
          f" {args.threads} threads, {args.rounds} rounds x {args.steps} timed updates, freed memory {malloc},"
          f" torch {torch.__version__}")
    print(f"  CPU {result['cpu_capability']}; bf16: {bf16_why}")
    print("  matmul peak: " + ", ".join(f"{k} {v[0] / 1e9:.0f} GFLOP/s ({v[1]}^3)" for k, v in peaks.items())
          + ("" if bf16_native else ", bf16 emulated (not timed)") + f"; model {flops / 1e6:.1f} MFLOP per target token")
    print(f"  {'setting':<18} {'tok/s':>8} {'x':>6} {'s/update':>9} {'real tok/batch':>15} {'% fp32 peak':>12}")
    for precision, r in result["precisions"].items():
        if r == "emulated":
            print(f"  {precision:<18} {'emulated on this CPU: not timed':>30}")
            continue
        print(f"  {precision:<18} {r['tokens_per_s']:>8} {r['tokens_per_s'] / base:>6.2f} {r['seconds_per_update']:>9}"
              f" {r['real_target_tokens_per_batch']:>15} {100 * r['utilisation_of_fp32_peak']:>11.0f}%")
    print(json.dumps({"bench": "train_speed", **result}))


if __name__ == "__main__":
    main()
