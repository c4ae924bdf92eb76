"""Time OpenNMT-py 3.5.1 translation of a piece file, model load excluded; runs in the onmt venv.

usage: bench/.cache/peers/onmt/bin/python bench/peers/drivers/onmt_translate.py --model CKPT --src PIECES
           --pieces OUT --result OUT.json [--beam 5] [--batch-sents 32] [--threads 2] [--limit N]
           [--max-length 250] [--max-length-ratio 1.5]

Builds the translator as `onmt_translate` does (same option parser and checks, InferenceEnginePY),
then translates a list of lines with engine.infer_list (the API behind onmt_translate and
onmt_server): once on the warm-up slice, then timed on all lines. Sentences are length-sorted and
batched by OpenNMT-py (batch_type sents). Length penalty: wu (GNMT) with alpha 1.0, as mtkit's
((5 + len) / 6)^alpha. Length limit per batch: min(max_length, longest source * max_length_ratio
+ 5); mtkit's is 1.5 * source + 10 per sentence. Called by bench/peers/opennmt.py.
"""

from __future__ import annotations

import os

import _util


def extra(ap) -> None:
    ap.add_argument("--max-length", type=int, default=250)
    ap.add_argument("--max-length-ratio", type=float, default=1.5)


def main() -> None:
    args = _util.parse_args(__doc__, extra)
    import torch

    torch.set_num_threads(args.threads)
    from onmt.inference_engine import InferenceEnginePY
    from onmt.opts import translate_opts
    from onmt.utils.misc import set_random_seed
    from onmt.utils.parse import ArgumentParser

    lines = _util.read_lines(args.src, args.limit)
    clock = _util.Clock()
    parser = ArgumentParser(description="onmt_translate")
    translate_opts(parser)
    opt = parser.parse_args([
        "-model", args.model, "-src", args.src, "-output", os.devnull, "-gpu", "-1", "-seed", "1",
        "-beam_size", str(args.beam), "-batch_size", str(args.batch_sents), "-batch_type", "sents",
        "-max_length", str(args.max_length), "-max_length_ratio", str(args.max_length_ratio),
        "-length_penalty", "wu", "-alpha", "1.0", "-n_best", "1",
    ])
    ArgumentParser.validate_translate_opts(opt)
    ArgumentParser._get_all_transform_translate(opt)
    ArgumentParser._validate_transforms_opts(opt)
    ArgumentParser.validate_translate_opts_dynamic(opt)
    set_random_seed(opt.seed, False)
    engine = InferenceEnginePY(opt)
    load_seconds = clock.lap()
    rss_loaded = _util.rss_mb()

    engine.infer_list(lines[: args.warmup_sents])
    clock.lap()
    _, preds = engine.infer_list(lines)
    seconds = clock.lap()
    hyps = [p[0].split() for p in preds]  # n_best lists of space-joined pieces
    _util.write_outputs(args, hyps, seconds=seconds, load_seconds=round(load_seconds, 2),
                        rss_after_load_mb=rss_loaded, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
