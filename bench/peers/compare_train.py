"""Training throughput of mtkit, OpenNMT-py and JoeyNMT side by side, in rounds (A B C A B C).

usage: python bench/peers/compare_train.py --spm runs/ding-de-en/tokenizer/spm.model
           [--rounds 2] [--steps 60] [--joey-steps 40] [--report-every 10] [--threads 2]
           [--precisions fp32 bf16] [--only mtkit onmt joey]

Every toolkit trains from scratch on the same pieces (bench/peers/prepare.py; mtkit reads the
text through the same SentencePiece model), with the same model shape (d_model 256, 4 heads, FFN
1024, 3+3 layers, tied 8k joint vocabulary, dropout 0.1, label smoothing 0.1), 4096-token batches,
warmup 4000 / peak 7e-4 (the schedule does not change the speed) and 2 threads, through its own
training CLI. The figure is each toolkit's own log of non-padding target tokens (pieces + EOS) per
second of wall time of each report interval, data loading included (mtkit: metrics.jsonl
`tokens_per_s`; OpenNMT-py: the target half of "X/Y tok/s"; JoeyNMT: "Tokens per Sec"), the median
over the intervals after the first `--skip` of every round. The same run measures this CPU's
fp32 matmul peak (torch.mm sized for a quarter of a second, as train_speed.py) and reports the
utilisation of that peak at the model's FLOPs per target token (mtkit's
Transformer.flops_per_target_token at the data's mean lengths: the same model, so the same FLOPs,
for all three), and each run's peak RSS (the largest over the
rounds). Prints settings, a table and one JSON line.

mtkit runs `mtkit train configs/ding-de-en.yaml` with the shape and batch above set by --set (the
config's own dropout 0 and upsampling are set back to 0.1 and off here, to match the peers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import common

ROOT = common.ROOT
RUNS = common.PEERS / "runs" / "speed"
MTKIT_SET = ["model.dropout=0.1", "data.upsample_factor=1", "train.batch_tokens=4096",
             "train.warmup_steps=4000", "train.lr=0.0007", "train.eval_every=1000000", "train.max_time=null"]


def matmul_peak_gflops(threads: int) -> float:
    """This CPU's fp32 matmul peak, measured as bench/train_speed.py measures it (mtkit.hardware)."""
    import torch

    from mtkit.hardware import matmul_flops

    torch.set_num_threads(threads)
    return matmul_flops(torch.float32, 0.25)[0] / 1e9


def mflop_per_token(spm: Path, data: Path) -> tuple[float, float, float]:
    """The model's MFLOP per target token at the training data's mean (src, tgt) lengths, EOS included."""
    from mtkit.config import load_config
    from mtkit.model.transformer import Transformer

    def mean_len(path: Path) -> float:
        lens = [line.count(" ") + 2 for line in path.read_text(encoding="utf-8").split("\n")[:-1]]  # pieces + EOS
        return sum(lens) / len(lens)

    S, T = mean_len(data / "train.de"), mean_len(data / "train.en")
    cfg = load_config(ROOT / "configs/ding-de-en.yaml", [])
    import sentencepiece as sp

    V = sp.SentencePieceProcessor(model_file=str(spm)).get_piece_size()
    model = Transformer(cfg.model, V, V)
    return model.flops_per_target_token(round(S), round(T)) / 1e6, S, T


def run_mtkit(precision: str, out: Path, args) -> tuple[list[float], int]:
    """tok/s of the report intervals after the first `args.skip`, and the run's peak RSS (MB)."""
    out.mkdir(parents=True)
    (out / "tokenizer").mkdir()
    for f in args.spm.parent.iterdir():  # the same SentencePiece model as the peers' pieces
        shutil.copy(f, out / "tokenizer" / f.name)
    sets = [*MTKIT_SET, f"run_dir={out}", f"train.max_steps={args.steps}", f"train.log_every={args.report_every}",
            f"train.precision={precision}", f"train.threads={args.threads}"]
    cmd = [str(ROOT / ".venv/bin/mtkit"), "-q", "train", "configs/ding-de-en.yaml"] + [a for s in sets for a in ("--set", s)]
    rc, _ = common.run_logged(cmd, out / "console.log", common.child_env(args.threads))
    if rc != 0:
        sys.exit(f"error: mtkit failed (exit code {rc}); see {out / 'console.log'}")
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rss = [e["peak_rss_mb"] for e in events if e["event"] == "end"]
    return [e["tokens_per_s"] for e in events if e["event"] == "train"][args.skip:], rss[-1]


def run_peer(script: str, out: Path, steps: int, report_every: int, args) -> tuple[list[float], int]:
    """The peer's tok/s of the report intervals after the first `args.skip` (its own summary, from
    its own log), and its peak RSS (MB)."""
    summary = common.last_json(common.run_captured(
        [sys.executable, str(Path(__file__).parent / script), "train", "--out", str(out), "--steps", str(steps),
         "--warmup", "4000", "--lr", "7e-4", "--valid-steps", "0", "--report-every", str(report_every),
         "--threads", str(args.threads), "--skip", str(args.skip)]))
    return summary["tgt_tok_s"], summary["peak_rss_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spm", required=True, type=Path, help="the SentencePiece model prepare.py used")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60, help="updates per run (mtkit, OpenNMT-py)")
    ap.add_argument("--joey-steps", type=int, default=40, help="updates per JoeyNMT run (its batches are small)")
    ap.add_argument("--report-every", type=int, default=10)
    ap.add_argument("--skip", type=int, default=2, help="report intervals per run left out as warm-up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--only", nargs="+", default=["mtkit", "onmt", "joey"], choices=["mtkit", "onmt", "joey"])
    args = ap.parse_args()
    if not (common.DATA / "train.de").exists():
        sys.exit("error: no piece files; run bench/peers/prepare.py --spm SPM first")

    settings = ([f"mtkit {p}" for p in args.precisions] if "mtkit" in args.only else []) + \
        (["OpenNMT-py 3.5.1"] if "onmt" in args.only else []) + (["JoeyNMT 2.3.0"] if "joey" in args.only else [])
    shutil.rmtree(RUNS, ignore_errors=True)
    values: dict[str, list[float]] = {s: [] for s in settings}
    rss: dict[str, list[int]] = {s: [] for s in settings}
    peaks = [matmul_peak_gflops(args.threads)]
    for r in range(args.rounds):
        for s in settings:
            out = RUNS / f"{s.split()[0].lower()}-{s.split()[-1]}-{r}"
            if s.startswith("mtkit"):
                used, peak_rss = run_mtkit(s.split()[1], out, args)
            elif s.startswith("OpenNMT"):
                used, peak_rss = run_peer("opennmt.py", out, args.steps, args.report_every, args)
            else:
                used, peak_rss = run_peer("joey.py", out, args.joey_steps, max(1, args.report_every // 2), args)
            print(f"  round {r + 1} {s}: " + ", ".join(f"{v:.0f}" for v in used) + " target tok/s", flush=True)
            values[s].extend(used)
            rss[s].append(peak_rss)
        peaks.append(matmul_peak_gflops(args.threads))
    peak = statistics.median(peaks)
    mflop, S, T = mflop_per_token(args.spm, common.DATA)
    import torch

    res = {"bench": "compare_train_speed", "rounds": args.rounds, "threads": args.threads, "batch_tokens": 4096,
           "torch_mtkit": torch.__version__, "matmul_peak_gflops": round(peak, 1),
           "mflop_per_target_token": round(mflop, 1), "mean_src_tgt_len": [round(S, 2), round(T, 2)], "toolkits": {}}
    base = statistics.median(values["OpenNMT-py 3.5.1"]) if "OpenNMT-py 3.5.1" in values else None
    print(f"training throughput, {args.rounds} rounds, {args.threads} threads, 4096-token batches; fp32 matmul peak"
          f" {peak:.0f} GFLOP/s (median of {len(peaks)}); model {mflop:.1f} MFLOP per target token"
          f" (mean lengths {S:.1f} / {T:.1f} with EOS)")
    print(f"  {'toolkit':<18} {'tgt tok/s':>10} {'x OpenNMT-py':>13} {'% fp32 peak':>12} {'intervals':>10} {'peak RSS':>9}")
    for s, v in values.items():
        med = statistics.median(v)
        util = med * mflop * 1e6 / (peak * 1e9)
        res["toolkits"][s] = {"median_tgt_tok_s": round(med), "intervals": len(v), "utilisation_of_fp32_peak": round(util, 3),
                              "x_opennmt": round(med / base, 2) if base else None, "peak_rss_mb": max(rss[s])}
        print(f"  {s:<18} {med:>10.0f} {med / base if base else float('nan'):>13.2f} {100 * util:>11.0f}% {len(v):>10}"
              f" {max(rss[s]):>6} MB")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
