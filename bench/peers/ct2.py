"""CTranslate2 (the OpenNMT-py model converted): convert, then time translation.

usage (mtkit's venv; CTranslate2 runs from bench/.cache/peers/onmt, see install.sh):
  python bench/peers/ct2.py convert --model DIR/model_step_N.pt --out CT2_DIR --unsafe-deserialization
                                   [--quantization int8]
  python bench/peers/ct2.py translate --model CT2_DIR --spm SPM [--src PIECES] [--ref data/ding-de-en/test.en]
                                     [--beam 5] [--batch-sents 32] [--threads 2] --out HYP

convert runs `ct2-opennmt-py-converter --model_path CKPT --output_dir CT2_DIR [--quantization Q]
--force` (float32 without --quantization). OpenNMT-py 3.5.1 checkpoints pickle their options
(an argparse.Namespace), which the converter's default weights-only torch.load refuses, so
--unsafe-deserialization (passed on as --unsafe_deserialization) is needed: give it only for
checkpoints you trained yourself, e.g. with opennmt.py train. translate runs drivers/ct2_translate.py in the onmt
venv: Translator(CT2_DIR, device="cpu", inter_threads=1, intra_threads=THREADS), one timed
translate_batch over all sentences (max_batch_size BATCH, batch_type "examples") after an untimed
warm-up, then the same report as the other peers (sentences/s, target tokens/s = output pieces +
1 EOS per sentence, peak RSS of the child process, BLEU/chrF of the detokenized output).

Not the same as mtkit/OpenNMT-py: CTranslate2's length penalty is score / length^p (p = 1 here,
its default), not GNMT's ((5 + len) / 6)^alpha, and its length limit is a fixed
max_decoding_length (default 256) instead of a multiple of the source length; the report counts
the hypotheses that reached that limit. min_decoding_length is set to 0 (CTranslate2's default 1
forbids an empty translation, which mtkit and OpenNMT-py allow).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import common


def convert(args) -> None:
    cmd = [common.venv_bin("onmt", "ct2-opennmt-py-converter"), "--model_path", str(args.model),
           "--output_dir", str(args.out), "--force"]
    if args.quantization:
        cmd += ["--quantization", args.quantization]
    if args.unsafe_deserialization:
        cmd.append("--unsafe_deserialization")
    rc, wall = common.run_logged(cmd, None, common.child_env(args.threads))
    if rc != 0:
        sys.exit(f"error: conversion failed (exit code {rc})" + ("" if args.unsafe_deserialization else
                 "; an OpenNMT-py 3.5.1 checkpoint needs --unsafe-deserialization (only for checkpoints you trust)"))
    size = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    config = json.loads((args.out / "config.json").read_text()) if (args.out / "config.json").exists() else {}
    print(f"CTranslate2 model {args.out}: {size / 2**20:.1f} MiB, quantization {args.quantization or 'float32 (none)'},"
          f" {wall:.1f} s; files {sorted(p.name for p in args.out.iterdir())}")
    print(json.dumps({"bench": "peer_ct2_convert", "model": str(args.model), "out": str(args.out),
                      "quantization": args.quantization or "float32", "bytes": size, "seconds": round(wall, 1),
                      "config": config}))


def translate(args) -> None:
    result = args.out.with_name(args.out.name + ".result.json")
    cmd = [common.venv_bin("onmt", "python"), str(common.DRIVERS / "ct2_translate.py"), "--model", str(args.model),
           *common.driver_translate_args(args, result), "--max-length", str(args.max_length),
           "--length-penalty", str(args.length_penalty), "--min-length", str(args.min_length)]
    res = common.run_driver(cmd, common.child_env(args.threads), result)
    settings = {"model": str(args.model), "compute_type": res.get("compute_type"), "beam": args.beam,
                "batch": f"{args.batch_sents} sentences (batch_type examples)",
                "threads": f"intra {args.threads}, inter 1", "max_decoding_length": args.max_length,
                "min_decoding_length": args.min_length,
                "length_penalty": f"score / length^{args.length_penalty:g}",
                "version": res.get("ctranslate2")}
    common.report_translation("CTranslate2", settings, res, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="OpenNMT-py checkpoint -> CTranslate2 model directory")
    c.add_argument("--model", required=True, type=Path, help="OpenNMT-py checkpoint (model_step_N.pt)")
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--quantization", default=None, help="e.g. int8 (default: none, float32)")
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--unsafe-deserialization", action="store_true",
                   help="pass --unsafe_deserialization to the converter (only for your own checkpoints)")
    t = sub.add_parser("translate", help="time translating a piece file (model load excluded)")
    common.add_translate_args(t, "a CTranslate2 model directory (ct2.py convert)")
    t.add_argument("--max-length", type=int, default=256, help="max_decoding_length (CTranslate2's default 256)")
    t.add_argument("--length-penalty", type=float, default=1.0)
    t.add_argument("--min-length", type=int, default=0,
                   help="min_decoding_length (CTranslate2's default 1 forbids an empty output; mtkit and OpenNMT-py allow it)")
    args = ap.parse_args()
    convert(args) if args.cmd == "convert" else translate(args)


if __name__ == "__main__":
    main()
