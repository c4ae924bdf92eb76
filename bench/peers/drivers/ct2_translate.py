"""Time CTranslate2 translation of a piece file, model load excluded; runs in the onmt venv.

usage: bench/.cache/peers/onmt/bin/python bench/peers/drivers/ct2_translate.py --model CT2_DIR --src PIECES
           --pieces OUT --result OUT.json [--beam 5] [--batch-sents 32] [--threads 2] [--limit N]
           [--max-length 256] [--min-length 0] [--length-penalty 1.0] [--compute-type default]

Loads ctranslate2.Translator(CT2_DIR, device="cpu", inter_threads=1, intra_threads=THREADS) and
times one translate_batch call over all sentences (max_batch_size BATCH, batch_type "examples":
CTranslate2 sorts the inputs by length and splits them into batches of BATCH sentences), after an
untimed warm-up call. compute_type "default" keeps the type the model was converted to (float32,
or int8 with --quantization int8). Called by bench/peers/ct2.py.
"""

from __future__ import annotations

import _util


def extra(ap) -> None:
    ap.add_argument("--max-length", type=int, default=256, help="max_decoding_length (CTranslate2's default 256)")
    ap.add_argument("--length-penalty", type=float, default=1.0, help="score / length^p (CTranslate2's default 1)")
    ap.add_argument("--min-length", type=int, default=0,
                    help="min_decoding_length; CTranslate2's default 1 forbids empty output, mtkit and OpenNMT-py allow it")
    ap.add_argument("--compute-type", default="default")


def main() -> None:
    args = _util.parse_args(__doc__, extra)
    import ctranslate2

    lines = _util.read_lines(args.src, args.limit)
    source = [line.split() for line in lines]
    clock = _util.Clock()
    translator = ctranslate2.Translator(args.model, device="cpu", inter_threads=1, intra_threads=args.threads,
                                        compute_type=args.compute_type)
    load_seconds = clock.lap()
    rss_loaded = _util.rss_mb()
    options = dict(max_batch_size=args.batch_sents, batch_type="examples", beam_size=args.beam,
                   length_penalty=args.length_penalty, max_decoding_length=args.max_length, min_decoding_length=args.min_length, num_hypotheses=1)
    translator.translate_batch(source[: args.warmup_sents], **options)
    clock.lap()
    results = translator.translate_batch(source, **options)
    seconds = clock.lap()
    hyps = [r.hypotheses[0] for r in results]
    _util.write_outputs(args, hyps, seconds=seconds, load_seconds=round(load_seconds, 2), rss_after_load_mb=rss_loaded,
                        max_length=args.max_length, min_length=args.min_length, compute_type=translator.compute_type,
                        ctranslate2=ctranslate2.__version__)


if __name__ == "__main__":
    main()
