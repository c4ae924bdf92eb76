#!/usr/bin/env python3
"""Why are translations short? Model error or search error, and where the model wants to stop.

For a checkpoint and a dev set (source + reference) it reports:
  - output/reference length ratio (sacreBLEU's, 13a tokens) of greedy and of beam search at
    several length-penalty alphas, with BLEU, chrF and the brevity penalty;
  - search or model: the share of sentences whose beam output (alpha 0, pure log-probability) is
    shorter than the reference AND scores higher under the model than the reference does. Those
    short outputs are what the model prefers: a better search would not lengthen them;
  - premature EOS under teacher forcing on the references: the share of reference positions before
    the last where EOS is the model's top choice, the mean probability of EOS there, and the mean
    probability of EOS where the reference really ends.
All in fp32 on the CPU. Prints settings, a table and one JSON line.

usage: python bench/length_diagnosis.py MODEL --src dev.de --ref dev.en [--alphas 0 1 1.5 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def reference_scores(model, src_ids: list[list[int]], ref_ids: list[list[int]], batch: int = 64):
    """Per sentence: log P(reference + EOS | source) (pieces, without BOS/EOS); and over all positions
    before the last: how often EOS is the top choice and its mean probability, and the mean
    probability of EOS where the reference ends."""
    import torch

    from mtkit.data.padding import make_batch
    from mtkit.data.tokenizer import EOS_ID, PAD_ID

    scores, early_top, early_p, end_p, early_n = [], 0, 0.0, 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(src_ids), batch):
            b = make_batch(src_ids[i:i + batch], ref_ids[i:i + batch])
            logp = model(b["src"], b["tgt_in"]).float().log_softmax(-1)  # (B, T, V)
            out = b["tgt_out"]  # (B, T) ids + EOS, padded
            real = out != PAD_ID
            gold = logp.gather(-1, out.clamp(min=0)[..., None])[..., 0] * real  # (B, T)
            scores += gold.sum(1).tolist()
            is_end = out == EOS_ID  # (B, T) the reference's own end
            before = real & ~is_end
            p_eos = logp[..., EOS_ID].exp()  # (B, T)
            early_top += int((logp.argmax(-1).eq(EOS_ID) & before).sum())
            early_p += float((p_eos * before).sum())
            early_n += int(before.sum())
            end_p += float((p_eos * is_end).sum())
    n, early_n = len(src_ids), max(early_n, 1)  # (all-empty texts have no position before the end)
    return scores, {"premature_eos_top_share": early_top / early_n, "mean_p_eos_before_end": early_p / early_n,
                    "mean_p_eos_at_end": end_p / n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    p.add_argument("--src", type=Path, required=True)
    p.add_argument("--ref", type=Path, required=True)
    p.add_argument("--alphas", type=float, nargs="+", default=[0.0, 1.0, 1.5, 2.0])
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import sacrebleu
    import torch

    from mtkit.decoding.translate import translate_lines
    from mtkit.model.loading import load_model
    from mtkit.training.runlog import setup_logging

    setup_logging(-1)
    torch.set_num_threads(args.threads)
    model, tok, cfg = load_model(args.model)
    srcs = args.src.read_text(encoding="utf-8").splitlines()
    refs = args.ref.read_text(encoding="utf-8").splitlines()
    decode = replace(cfg.decode, precision="fp32", nbest=1)
    rows, outputs = {}, {}
    bleu_metric, chrf_metric = sacrebleu.BLEU(), sacrebleu.CHRF()
    for name, settings in [("greedy", replace(decode, beam_size=1, length_penalty=0.0))] + [
            (f"beam{args.beam} alpha {a:g}", replace(decode, beam_size=args.beam, length_penalty=a)) for a in args.alphas]:
        hyps = [ts[0] for ts in translate_lines(model, tok, srcs, settings)]
        texts = [h.text for h in hyps]
        bleu = bleu_metric.corpus_score(texts, [refs])
        chrf = chrf_metric.corpus_score(texts, [refs])
        outputs[name] = texts
        rows[name] = {"bleu": round(bleu.score, 2), "chrf": round(chrf.score, 2), "bp": round(bleu.bp, 3),
                      "ratio": round(bleu.sys_len / bleu.ref_len, 3)}
    src_ids = tok.encode_src(srcs)
    ref_scores, eos = reference_scores(model, src_ids, tok.encode_tgt(refs))
    zero = f"beam{args.beam} alpha 0"
    hyp_scores = reference_scores(model, src_ids, tok.encode_tgt(outputs[zero]))[0] if zero in outputs else None
    prefers_short = None
    if hyp_scores is not None:
        short = [i for i, (h, r) in enumerate(zip(outputs[zero], refs, strict=True)) if len(h.split()) < len(r.split())]
        prefers_short = sum(hyp_scores[i] > ref_scores[i] for i in short) / len(srcs)
    sig = bleu_metric.get_signature()
    print(f"length diagnosis: {args.model} on {args.src} ({len(srcs)} sentences), fp32, {args.threads} threads;"
          f" BLEU {sig}")
    print(f"  {'search':<18} {'BLEU':>6} {'chrF':>6} {'BP':>6} {'hyp/ref':>8}")
    for name, r in rows.items():
        print(f"  {name:<18} {r['bleu']:>6} {r['chrf']:>6} {r['bp']:>6} {r['ratio']:>8}")
    if prefers_short is not None:
        print(f"  model error: {100 * prefers_short:.1f}% of sentences have a {zero} output shorter than the"
              " reference that the model scores above the reference")
    print(f"  teacher-forced on the references: EOS is the top choice at {100 * eos['premature_eos_top_share']:.1f}%"
          f" of positions before the end (mean p(EOS) {eos['mean_p_eos_before_end']:.3f}); mean p(EOS) at the"
          f" end {eos['mean_p_eos_at_end']:.3f}")
    print(json.dumps({"bench": "length_diagnosis", "model": str(args.model), "n": len(srcs), "signature": str(sig),
                      "search": rows, "short_preferred_by_model": prefers_short, **eos}))


if __name__ == "__main__":
    main()
