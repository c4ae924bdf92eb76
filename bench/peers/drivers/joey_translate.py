"""Time JoeyNMT 2.3.0 translation of a piece file, model load excluded; runs in the joeynmt venv.

usage: bench/.cache/peers/joeynmt/bin/python bench/peers/drivers/joey_translate.py --model CKPT --src PIECES
           --pieces OUT --result OUT.json [--beam 5] [--batch-sents 32] [--threads 2] [--limit N]
           [--max-output-length -1]

Does what `python -m joeynmt translate CONFIG < input` does (joeynmt.prediction.translate), with
the model loaded once: the run's config.yaml (next to the checkpoint) with the `testing` section
set to this beam, batches of BATCH sentences (JoeyNMT keeps the input order: no length sorting),
beam_alpha 1.0 (GNMT length penalty, as mtkit) and min_output_length 0; then prepare() builds the
model and a StreamDataset, and predict() translates: once on the warm-up slice, then timed on all
lines. Output pieces are JoeyNMT's token lists cut at EOS, special tokens removed. Called by
bench/peers/joey.py.
"""

from __future__ import annotations

from pathlib import Path

import _util


def extra(ap) -> None:
    ap.add_argument("--max-output-length", type=int, default=-1, help="-1: 1.5 x the batch's longest source")


def main() -> None:
    args = _util.parse_args(__doc__, extra)
    import torch

    torch.set_num_threads(args.threads)
    from joeynmt.config import load_config, parse_global_args
    from joeynmt.prediction import predict, prepare

    lines = _util.read_lines(args.src, args.limit)
    clock = _util.Clock()
    ckpt = Path(args.model)
    cfg = load_config(ckpt.parent / "config.yaml")
    cfg["use_cuda"] = False
    cfg["testing"].update(load_model=str(ckpt), beam_size=args.beam, beam_alpha=1.0, n_best=1,
                          batch_size=args.batch_sents, batch_type="sentence",
                          max_output_length=args.max_output_length, min_output_length=0, return_prob="none")
    gargs = parse_global_args(cfg, rank=0, mode="translate")
    model, _, _, data = prepare(gargs, rank=0, mode="translate")
    load_seconds = clock.lap()
    rss_loaded = _util.rss_mb()

    def run(batch: list[str]) -> list[list[str]]:
        data.reset_cache()
        for line in batch:
            data.set_item(line)
        _, _, _, tokens, _, _ = predict(model=model, data=data, compute_loss=False, device=gargs.device, rank=0,
                                        n_gpu=gargs.n_gpu, normalization="none", num_workers=gargs.num_workers,
                                        args=gargs.test, autocast=gargs.autocast)
        specials = set(model.trg_vocab.specials) - {model.trg_vocab.specials[model.trg_vocab.unk_index]}
        return [[t for t in seq if t not in specials] for seq in tokens]

    run(lines[: args.warmup_sents])
    clock.lap()
    hyps = run(lines)
    seconds = clock.lap()
    _util.write_outputs(args, hyps, seconds=seconds, load_seconds=round(load_seconds, 2),
                        rss_after_load_mb=rss_loaded, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
