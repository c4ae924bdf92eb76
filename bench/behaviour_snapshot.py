#!/usr/bin/env python3
"""A behaviour snapshot of one mtkit checkout, to prove that a refactor changed nothing.

`snapshot` trains a fixed tiny reverse-task model through the CLI (fp32, dropout on, a step
budget), once straight through and once stopped half-way and resumed, and a third run with the
options that change the loop (EMA, accumulation, upsampling, late dropout, cooldown, smoothing
over the vocabulary), then translates the test set with each checkpoint (greedy and beam 4) and
with an older checkpoint when one is given. It writes the final weights and every metrics.jsonl line (times left out) into OUT.
`compare A B` says whether two snapshots hold torch.equal weights and identical metrics lines
and translations. Only the CLI and the checkpoint files are used, so any mtkit version runs it.

usage: python bench/behaviour_snapshot.py snapshot OUT [--code DIR] [--old-checkpoint PT]
       python bench/behaviour_snapshot.py compare A B
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# Fields that hold times or speeds: they differ between any two runs.
TIMING = {"time", "elapsed_s", "tokens_per_s", "seconds", "peak_rss_mb", "peak_gpu_mb", "updates_per_s"}
SETTINGS = [
    "tokenizer.vocab_size=64", "model.d_model=64", "model.heads=4", "model.d_ff=128",
    "model.encoder_layers=2", "model.decoder_layers=2", "model.dropout=0.1",
    "train.batch_tokens=1024", "train.lr=0.003", "train.warmup_steps=20", "train.max_steps=120",
    "train.eval_every=40", "train.log_every=5", "train.patience=0", "train.max_time=null",
    "train.device=cpu", "train.threads=1", "train.precision=fp32", "decode.precision=fp32",
    "data.num_proc=1",
]


def mtkit(code: Path, *args: str) -> str:
    """Run `python -m mtkit ARGS` with the package of checkout `code`; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(code), "MTKIT_DEBUG": "1"}
    done = subprocess.run([sys.executable, "-m", "mtkit", *args], cwd=code, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"mtkit {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def snapshot(out: Path, code: Path, old_checkpoint: Path | None) -> None:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    mtkit(code, "data", "synthetic", "--task", "reverse", "--out", str(data), "--train", "2000", "--seed", "7")
    split = [f"data.{s}.{side}={data}/{f}.{side}" for s, f in (("train", "train"), ("valid", "dev"))
             for side in ("src", "tgt")]
    config = code / "configs" / "tiny-reverse.yaml"
    variants = ["train.ema_decay=0.99", "train.accum_steps=2", "data.upsample_pattern=^b", "data.upsample_factor=2",
                "train.dropout_after_epochs=1", "train.cooldown=0.3", "train.label_smoothing_over=vocab"]
    for name, stops, extra in (("straight", [120], []), ("resumed", [50, 120], []), ("variants", [30, 60], variants)):
        for steps in stops:
            sets = [*SETTINGS, *split, *extra, f"run_dir={out / name}", f"train.max_steps={steps}"]
            mtkit(code, "train", str(config), *(f"--set={s}" for s in sets))
    result: dict = {}
    models = {name: out / name / "last.pt" for name in ("straight", "resumed", "variants")}
    if old_checkpoint is not None:
        models["old"] = old_checkpoint
    for name, path in models.items():
        state = torch.load(path, map_location="cpu", weights_only=True)
        torch.save(state["model"], out / f"{name}.weights.pt")
        for how in (["--greedy"], ["--beam", "4"]):
            text = mtkit(code, "translate", str(path), "-i", str(data / "test.src"), *how)
            result[f"{name} translate {' '.join(how)}"] = text.splitlines()
        metrics = out / name / "metrics.jsonl"
        if metrics.exists():
            result[f"{name} metrics"] = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
                                         for line in metrics.read_text(encoding="utf-8").splitlines()]
    (out / "snapshot.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"snapshot of {code} written to {out}", file=sys.stderr)


def compare(a: Path, b: Path) -> int:
    import torch

    same = True
    for weights in sorted(p.name for p in a.glob("*.weights.pt")):
        x = torch.load(a / weights, weights_only=True)
        y = torch.load(b / weights, weights_only=True)
        equal = x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        print(f"{weights}: {'torch.equal' if equal else 'DIFFERENT'} ({len(x)} tensors)")
        same &= equal
    sa = json.loads((a / "snapshot.json").read_text(encoding="utf-8"))
    sb = json.loads((b / "snapshot.json").read_text(encoding="utf-8"))
    for key in sorted(sa.keys() | sb.keys()):
        equal = sa.get(key) == sb.get(key)
        print(f"{key}: {'identical' if equal else 'DIFFERENT'} ({len(sa.get(key) or [])} lines)")
        same &= equal
    print("SAME" if same else "DIFFERENT")
    return 0 if same else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("snapshot")
    s.add_argument("out", type=Path)
    s.add_argument("--code", type=Path, default=Path(__file__).resolve().parent.parent)
    s.add_argument("--old-checkpoint", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.command == "snapshot":
        snapshot(args.out.resolve(), args.code.resolve(), args.old_checkpoint)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
