"""Decoding speed of an mtkit checkpoint: sentences/s and target tokens/s, greedy and beam.

usage: python bench/decode_speed.py MODEL --src data/ding-de-en/test.de [--beams 1 5] [--threads 2]
                                    [--batch-tokens 4096 | --batch-sents 32] [--ref data/ding-de-en/test.en]
                                    [--precision fp32|bf16|int8|auto] [--engine torch|ctranslate2]
                                    [--workers N]

--engine ctranslate2 times `mtkit translate --engine ctranslate2`: MODEL is an `mtkit export`
directory (or a checkpoint, exported to float32 on the fly); --precision fp32/bf16 are its
compute types float32/bfloat16, auto keeps the exported type (e.g. int8).

Batches: mtkit's own (--batch-tokens: length-sorted, at most N padded source tokens x beam size each), or
--batch-sents N as OpenNMT-py and CTranslate2 batch: the sentences sorted by length and cut into
batches of N sentences.

--workers: batches decoded at once (decode.workers; default auto: one per thread, at most 4), the
threads shared out among them; 1 is one batch at a time on all threads. Both engines take it
(CTranslate2 as inter_threads x intra_threads).

Model loading is excluded from the timing; each setting is run once to warm up, then timed.
Prints the settings and a table, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--src", required=True, type=Path)
    ap.add_argument("--ref", type=Path, help="also report BLEU against this reference")
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--batch-sents", type=int, default=None, help="batches of N length-sorted sentences instead")
    ap.add_argument("--limit", type=int, default=None, help="only the first N lines")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8"], default="fp32", help="decode.precision")
    ap.add_argument("--engine", choices=["torch", "ctranslate2"], default="torch")
    ap.add_argument("--workers", type=int, default=None, help="decode.workers (default: auto)")
    args = ap.parse_args()

    import torch

    from mtkit.decoding.precision import cast_for_decoding
    from mtkit.decoding.scoring import score
    from mtkit.decoding.textio import read_text_lines
    from mtkit.decoding.translate import translate_lines
    from mtkit.decoding.workers import map_batches, workers_for
    from mtkit.memory import keep_freed_memory, peak_rss_mb
    from mtkit.model.loading import load_model

    malloc = "kept for reuse" if keep_freed_memory() else "system"  # as `mtkit translate` (MTKIT_MALLOC=system: off)
    torch.set_num_threads(args.threads)
    if args.engine == "ctranslate2":
        from mtkit.decoding.ct2 import load_engine

        sets = [f"decode.precision={args.precision}"] + ([f"decode.workers={args.workers}"] if args.workers else [])
        model, tok, base_decode, _ = load_engine(args.model, "cpu", sets)
        what = f"CTranslate2 compute type {model.translator.compute_type}"
    else:
        model, tok, cfg = load_model(args.model, "cpu")
        params = model.num_parameters()  # before casting: fused copies and int8 buffers are not parameters
        model, args.precision = cast_for_decoding(model, args.precision)  # as `mtkit translate --set decode.precision=...`
        base_decode, what = replace(cfg.decode, workers=args.workers), f"{params:,} parameters, {args.precision}"
    lines = read_text_lines(args.src, "source")[: args.limit]
    refs = read_text_lines(args.ref, "references")[: args.limit] if args.ref else None
    rss_loaded = peak_rss_mb()
    batching = f"{args.batch_sents} sentences" if args.batch_sents else f"{args.batch_tokens} tokens"
    workers = workers_for(model, base_decode.workers, "cpu")
    print(f"model {args.model}: {what}; {len(lines)} sentences from {args.src};"
          f" threads {args.threads}; batches: {batching}, {workers} at once; freed memory {malloc};"
          f" torch {torch.__version__}")
    rows = []
    if args.batch_sents:  # length-sorted chunks of N sentences, each translated as one batch
        lengths = [len(ids) for ids in tok.encode_src(lines)]
        order = sorted(range(len(lines)), key=lengths.__getitem__)
        chunks = [order[i: i + args.batch_sents] for i in range(0, len(order), args.batch_sents)]
    else:
        chunks = [list(range(len(lines)))]
    batch_tokens = 10**9 if args.batch_sents else args.batch_tokens
    for beam in args.beams:
        decode = replace(base_decode, beam_size=beam, nbest=1, batch_tokens=batch_tokens)
        translate_lines(model, tok, lines[:64], decode)  # warm-up
        out = [None] * len(lines)
        # --batch-sents: each chunk is one batch, so the chunks are what run side by side.
        one = replace(decode, workers=1) if args.batch_sents else decode

        def run(chunk: list[int], one=one) -> list:
            return translate_lines(model, tok, [lines[i] for i in chunk], one)

        t0 = time.perf_counter()
        for chunk, found in zip(chunks, map_batches(run, chunks, workers if args.batch_sents else 1)):
            for i, ts in zip(chunk, found):
                out[i] = ts
        seconds = time.perf_counter() - t0
        hyps = [ts[0].text for ts in out]
        tgt_tokens = sum(len(ids) + 1 for ids in tok.encode_tgt(hyps))  # + EOS, as generated
        row = {"beam": beam, "seconds": round(seconds, 2), "sentences_per_s": round(len(lines) / seconds, 1),
               "tgt_tokens_per_s": round(tgt_tokens / seconds, 1), "tgt_tokens": tgt_tokens}
        if refs is not None:
            row["bleu"] = round(score(hyps, refs, metrics=("bleu",))["bleu"], 2)
        rows.append(row)
    peak = peak_rss_mb()
    print(f"{'beam':>4} {'seconds':>8} {'sent/s':>8} {'tok/s':>9}" + (f" {'BLEU':>6}" if refs else ""))
    for r in rows:
        print(f"{r['beam']:>4} {r['seconds']:>8.2f} {r['sentences_per_s']:>8.1f} {r['tgt_tokens_per_s']:>9.1f}"
              + (f" {r['bleu']:>6.2f}" if refs else ""))
    print(f"peak RSS {peak:.0f} MB (after loading the model: {rss_loaded:.0f} MB)")
    print(json.dumps({"model": args.model, "engine": args.engine, "sentences": len(lines), "threads": args.threads,
                      "batching": batching, "workers": workers, "precision": args.precision, "what": what, "results": rows, "peak_rss_mb": round(peak)}))


if __name__ == "__main__":
    main()
