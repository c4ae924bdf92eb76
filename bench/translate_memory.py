#!/usr/bin/env python3
"""Peak memory of `mtkit translate` as the input file grows: it must stay flat.

Writes input files of each --lines count (the same block of lines repeated, so every output can
be checked against the first block's), runs `mtkit translate` on each in a child process and
reports the child's peak RSS, seconds and lines/s. Without --model a tiny model is trained first
on the synthetic reverse task (a few seconds). Prints a table and one JSON line; exits 1 if an
output has the wrong number of lines or differs from the repeated block.

usage: python bench/translate_memory.py [--lines 10000 50000 200000] [--model CKPT] [--greedy]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BLOCK = 1000  # distinct lines, repeated to the wanted length


def tiny_model(root: Path) -> Path:
    from mtkit.config import load_config
    from mtkit.data.synthetic import write_task
    from mtkit.training.train import train

    data = root / "data"
    write_task(data, task="reverse", train=400, dev=BLOCK, test=10, seed=3)
    cfg = load_config(None, [
        f"run_dir={root / 'run'}", f"data.train.src={data / 'train.src'}", f"data.train.tgt={data / 'train.tgt'}",
        "data.src_lang=src", "data.tgt_lang=tgt", "tokenizer.vocab_size=48", "model.d_model=32", "model.heads=2",
        "model.d_ff=64", "model.encoder_layers=1", "model.decoder_layers=1", "train.max_steps=30",
        "train.warmup_steps=10", "train.lr=0.003", "train.batch_tokens=512", "train.threads=1", "data.num_proc=1",
        "decode.max_len_a=1.0", "decode.max_len_b=5"])
    train(cfg)
    return root / "run" / "last.pt"


def peak_rss_of(command: list[str]) -> tuple[int, float, int]:
    """(exit code, seconds, peak RSS in MB) of a child process; each call measures a fresh child."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); r = subprocess.run(sys.argv[1:]);"
             " print(r.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True)
    code, seconds, kb = out.stdout.split()
    return int(code), float(seconds), int(kb) // 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: train a tiny one)")
    p.add_argument("--source", type=Path, default=None, help="lines to repeat (default: the tiny task's dev set)")
    p.add_argument("--greedy", action="store_true", help="greedy search instead of the checkpoint's beam")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="decode.precision")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="mtkit-bench-") as tmp:
        root = Path(tmp)
        model = args.model or tiny_model(root)
        source = args.source or root / "data" / "dev.src"
        block = source.read_text(encoding="utf-8").splitlines(keepends=True)[:BLOCK]
        flags = (["--greedy"] if args.greedy else []) + ["--set", f"decode.precision={args.precision}"]
        rows, ok, first = [], True, None
        for n in args.lines:
            inp, out = root / f"in{n}.txt", root / f"out{n}.txt"
            with open(inp, "w", encoding="utf-8") as f:
                for i in range(n):
                    f.write(block[i % len(block)])
            code, seconds, rss = peak_rss_of([sys.executable, "-m", "mtkit", "-q", "translate", str(model), "-i",
                                              str(inp), "-o", str(out), "--device", "cpu", *flags])
            lines = out.read_text(encoding="utf-8").splitlines() if code == 0 else []
            first = first or lines[: len(block)]
            correct = code == 0 and len(lines) == n and all(lines[i] == first[i % len(first)] for i in range(n))
            ok &= correct
            rows.append({"lines": n, "exit_code": code, "seconds": round(seconds, 1),
                         "lines_per_s": round(n / seconds), "peak_rss_mb": rss, "output_correct": correct})
    print(f"mtkit translate memory: {model if args.model else 'tiny reverse model'}; {'greedy' if args.greedy else 'beam'}; decode.precision {args.precision}")
    print(f"  {'lines':>8} {'seconds':>8} {'lines/s':>8} {'peak RSS MB':>12} {'output ok':>10}")
    for r in rows:
        print(f"  {r['lines']:>8} {r['seconds']:>8} {r['lines_per_s']:>8} {r['peak_rss_mb']:>12} {r['output_correct']!s:>10}")
    print(json.dumps({"bench": "translate_memory", "rows": rows,
                      "rss_growth_mb": rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
