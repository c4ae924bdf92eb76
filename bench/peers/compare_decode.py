"""Decoding speed of mtkit, OpenNMT-py, CTranslate2 (float32, int8) and JoeyNMT side by side.

usage: python bench/peers/compare_decode.py --spm SPM --mtkit MTKIT_CKPT --onmt ONMT_CKPT
           [--joey JOEY_CKPT] [--beams 5 1] [--batch-sents 32] [--threads 2]
           [--joey-limit 100] [--src data/ding-de-en/test.de --ref data/ding-de-en/test.en]

Each toolkit translates the Ding test set (1,000 sentences) with its own trained model, in
batches of 32 length-sorted sentences (mtkit also with its own 4096-token batches, and in fp32
and bf16: decode.precision), greedy and beam 5, 2 threads, model load excluded and an untimed warm-up first; one process per setting, so
each peak RSS is that setting's own. CTranslate2 runs the OpenNMT-py model converted with
ct2-opennmt-py-converter (float32 and int8; converted here when missing). JoeyNMT has no
incremental decoding cache and is slow: it translates only the first --joey-limit sentences,
and its sentences/s is per sentence of that subset. Speed is target tokens/s (output pieces + 1
EOS per sentence, the same count for all); the BLEU column tells whether the models produce
comparable output (different models: not a quality comparison; bench/peers/README.md has that).
Prints every command, a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import common

ROOT = common.ROOT
OUT = common.PEERS / "runs" / "decode"


def run(cmd: list[str]) -> dict:
    """Run a benchmark command (mtkit's venv), show its report and return the JSON line it ends with."""
    return common.last_json(common.run_captured(cmd, echo=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spm", required=True, type=Path)
    ap.add_argument("--mtkit", required=True, type=Path, help="mtkit checkpoint")
    ap.add_argument("--onmt", type=Path, help="OpenNMT-py checkpoint (also converted for CTranslate2)")
    ap.add_argument("--joey", type=Path, help="JoeyNMT checkpoint")
    ap.add_argument("--beams", type=int, nargs="+", default=[5, 1])
    ap.add_argument("--batch-sents", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--joey-limit", type=int, default=100)
    ap.add_argument("--mtkit-precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                    help="decode.precision settings to time mtkit with")
    ap.add_argument("--src", type=Path, default=ROOT / "data/ding-de-en/test.de", help="raw source text (mtkit)")
    ap.add_argument("--ref", type=Path, default=ROOT / "data/ding-de-en/test.en")
    args = ap.parse_args()
    py, here = sys.executable, Path(__file__).resolve().parent
    OUT.mkdir(parents=True, exist_ok=True)
    pieces = common.DATA / "test.de"
    if args.onmt:
        for q in ("float32", "int8"):
            if not (OUT / f"ct2-{q}" / "model.bin").exists():
                run([py, str(here / "ct2.py"), "convert", "--model", str(args.onmt), "--out", str(OUT / f"ct2-{q}"),
                     "--unsafe-deserialization"] + (["--quantization", "int8"] if q == "int8" else []))
    rows = []
    for beam in args.beams:
        common_args = ["--beam", str(beam), "--batch-sents", str(args.batch_sents), "--threads", str(args.threads),
                       "--spm", str(args.spm), "--ref", str(args.ref), "--src", str(pieces)]
        for precision in args.mtkit_precisions:
            for batching in ([f"{args.batch_sents} sentences", "4096 tokens"]):
                flag = ["--batch-sents", str(args.batch_sents)] if "sentences" in batching else ["--batch-tokens", "4096"]
                r = run([py, str(ROOT / "bench/decode_speed.py"), str(args.mtkit), "--src", str(args.src), "--ref",
                         str(args.ref), "--beams", str(beam), "--threads", str(args.threads), "--precision", precision,
                         *flag])
                rows.append({"toolkit": f"mtkit {precision}", "batch": batching, "sentences": r["sentences"],
                             **r["results"][0], "peak_rss_mb": r["peak_rss_mb"]})
        peers = []
        if args.onmt:
            peers += [("OpenNMT-py 3.5.1", [py, str(here / "opennmt.py"), "translate", "--model", str(args.onmt)]),
                      ("CTranslate2 float32", [py, str(here / "ct2.py"), "translate", "--model", str(OUT / "ct2-float32")]),
                      ("CTranslate2 int8", [py, str(here / "ct2.py"), "translate", "--model", str(OUT / "ct2-int8")])]
        if args.joey:
            peers += [("JoeyNMT 2.3.0", [py, str(here / "joey.py"), "translate", "--model", str(args.joey),
                                         "--limit", str(args.joey_limit)])]
        for name, cmd in peers:
            out = OUT / f"{name.split()[0].lower()}-{name.split()[-1]}.b{beam}.en"
            r = run(cmd + common_args + ["--out", str(out)])
            rows.append({"toolkit": name, "batch": f"{args.batch_sents} sentences", "sentences": r["sentences"],
                         **r["results"][0]})
    print(f"decoding the Ding test set, {args.threads} threads, model load excluded")
    print(f"  {'toolkit':<20} {'batch':<13} {'beam':>4} {'sents':>5} {'seconds':>8} {'sent/s':>7} {'tok/s':>8}"
          f" {'peak RSS':>9} {'BLEU':>6}")
    for r in rows:
        print(f"  {r['toolkit']:<20} {r['batch']:<13} {r['beam']:>4} {r['sentences']:>5} {r['seconds']:>8.2f}"
              f" {r['sentences_per_s']:>7.1f} {r['tgt_tokens_per_s']:>8.0f} {r['peak_rss_mb']:>6} MB {r.get('bleu', 0):>6.2f}")
    print(json.dumps({"bench": "compare_decode_speed", "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
