"""Quality for the compute: mtkit, OpenNMT-py and JoeyNMT trained for the same wall-clock budget.

usage: python bench/peers/compare_quality.py --spm SPM [--minutes 30] [--warmup 200] [--lr 1.5e-3]
           [--batch-tokens 2048] [--dropout 0] [--data bench/.cache/peers/data-up5] [--beam 5]
           [--mtkit-run runs/ding-de-en] [--only mtkit onmt joey]

Each toolkit trains from scratch for --minutes of wall time (2 threads, this machine alone), one
after the other, with the recipe of configs/ding-de-en.yaml for all: the same schedule (linear
warmup to the peak lr, inverse square root after), 2048-token batches, dropout 0, label smoothing
0.1, the same model shape and SentencePiece pieces, and the long pairs repeated 5 times
(prepare.py --upsample-min-len 10 --upsample-factor 5 --out DATA; mtkit does it itself). Then
each toolkit's final model translates the Ding test set with beam 5 and is scored by the same
sacreBLEU call (BLEU, chrF, signatures printed). mtkit is `mtkit train configs/ding-de-en.yaml
--set train.max_time=Mm` (or an existing finished run given by --mtkit-run) and `mtkit evaluate`.

A run that has already finished (its final checkpoint is there) is reused, not trained again, so
the command can be re-run to rescore; remove bench/.cache/peers/runs/{mtkit,onmt,joey}-30m (for
--minutes 30) to train afresh. Prints every command, a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import common
import opennmt

ROOT = common.ROOT
RUNS = common.PEERS / "runs"


run, last_json = common.run_captured, common.last_json


def mtkit_quality(args) -> dict:
    run_dir = args.mtkit_run or RUNS / f"mtkit-{args.minutes:g}m"
    metrics = run_dir / "metrics.jsonl"

    def ends() -> list[dict]:  # the run's "end" events: it finished
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        return [json.loads(line) for line in lines if '"event": "end"' in line]

    if not ends():
        run([str(ROOT / ".venv/bin/mtkit"), "-q", "train", "configs/ding-de-en.yaml", "--set", f"run_dir={run_dir}",
             "--set", f"train.max_time={args.minutes:g}m"])
    end = ends()[-1]
    out = run([str(ROOT / ".venv/bin/mtkit"), "evaluate", str(run_dir / "last.pt"), "--src", "data/ding-de-en/test.de",
               "--ref", "data/ding-de-en/test.en", "--beam", str(args.beam), "--json",
               "-o", str(run_dir / f"test.last.beam{args.beam}.en")])
    scores = last_json(out)
    return {"toolkit": "mtkit", "run": str(run_dir), "updates": end["step"], "stopped": end["reason"],
            "bleu": round(scores["bleu"], 2), "chrf": round(scores["chrf"], 2), "signatures": scores["signature"]}


def peer_train_args(args, out: Path) -> list[str]:
    return ["train", "--out", str(out), "--minutes", f"{args.minutes:g}", "--warmup", str(args.warmup), "--lr", str(args.lr),
            "--batch-tokens", str(args.batch_tokens), "--dropout", str(args.dropout), "--data", str(args.data)]


def onmt_quality(args) -> dict:
    out = RUNS / f"onmt-{args.minutes:g}m"
    log = out / "train.log"
    if not (log.exists() and re.search(r"budget: .* spent", log.read_text())):  # not finished yet
        run([sys.executable, str(Path(__file__).parent / "opennmt.py"), *peer_train_args(args, out), "--valid-steps", "400"])
    ckpt = opennmt.last_checkpoint(out)
    res = last_json(run([sys.executable, str(Path(__file__).parent / "opennmt.py"), "translate", "--model", str(ckpt),
                         "--spm", str(args.spm), "--ref", "data/ding-de-en/test.en", "--beam", str(args.beam),
                         "--out", str(out / f"test.beam{args.beam}.en")]))
    return {"toolkit": "OpenNMT-py 3.5.1", "run": str(out), "updates": opennmt.checkpoint_step(ckpt), **_scores(res)}


def joey_quality(args) -> dict:
    out = RUNS / f"joey-{args.minutes:g}m"
    latest = out / "model" / "latest.ckpt"
    if not latest.exists():
        # No validation: JoeyNMT's (greedy decoding of the dev set without a cache) would eat its budget.
        run([sys.executable, str(Path(__file__).parent / "joey.py"), *peer_train_args(args, out), "--valid-steps", "0"])
    res = last_json(run([sys.executable, str(Path(__file__).parent / "joey.py"), "translate", "--model", str(latest),
                         "--spm", str(args.spm), "--ref", "data/ding-de-en/test.en", "--beam", str(args.beam),
                         "--out", str(out / f"test.beam{args.beam}.en")]))
    return {"toolkit": "JoeyNMT 2.3.0", "run": str(out), "updates": int(re.sub(r"\D", "", latest.resolve().stem)),
            **_scores(res)}


def _scores(res: dict) -> dict:
    row = res["results"][0]
    return {"bleu": row["bleu"], "chrf": row["chrf"], "signatures": res["signatures"], "decode_seconds": row["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spm", required=True, type=Path)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--data", type=Path, default=common.PEERS / "data-up5", help="prepare.py output with upsampling")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--mtkit-run", type=Path, default=None, help="a finished mtkit run dir to score instead of training")
    ap.add_argument("--only", nargs="+", default=["mtkit", "onmt", "joey"], choices=["mtkit", "onmt", "joey"])
    args = ap.parse_args()
    if not (args.data / "train.de").exists():
        sys.exit(f"error: {args.data} has no piece files; run bench/peers/prepare.py --spm SPM --upsample-min-len 10"
                 f" --upsample-factor 5 --out {args.data}")
    jobs = {"mtkit": mtkit_quality, "onmt": onmt_quality, "joey": joey_quality}
    rows = [jobs[name](args) for name in args.only]
    print(f"quality after {args.minutes:g} minutes of training (2 threads), Ding test set, beam {args.beam}")
    print(f"  {'toolkit':<18} {'updates':>8} {'BLEU':>6} {'chrF':>6}")
    for r in rows:
        print(f"  {r['toolkit']:<18} {r['updates']:>8} {r['bleu']:>6.2f} {r['chrf']:>6.2f}")
    print(f"  BLEU {rows[0]['signatures']['bleu']}\n  chrF {rows[0]['signatures']['chrf']}")
    print(json.dumps({"bench": "compare_quality", "minutes": args.minutes, "warmup": args.warmup, "lr": args.lr,
                      "batch_tokens": args.batch_tokens, "dropout": args.dropout, "beam": args.beam, "rows": rows}))


if __name__ == "__main__":
    main()
