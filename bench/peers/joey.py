"""JoeyNMT 2.3.0 on mtkit's data and model shape: train, training throughput, translate.

usage (mtkit's venv; the toolkit runs from bench/.cache/peers/joeynmt, see install.sh):
  python bench/peers/joey.py train --out DIR (--minutes M | --steps N) --warmup W --lr P
                                  [--batch-tokens 4096] [--threads 2] [--valid-steps 400]
  python bench/peers/joey.py throughput DIR [--skip 2]
  python bench/peers/joey.py translate --model DIR/model/latest.ckpt --spm SPM [--src PIECES]
                                      [--ref data/ding-de-en/test.en] [--beam 5] --out HYP

train writes DIR/config.yaml and runs JoeyNMT's CLI (`python -m joeynmt train DIR/config.yaml
--skip-test`) through drivers/budget.py, stdout and stderr in DIR/train.log. The driver ends
training cleanly when a --minutes budget is spent (JoeyNMT then saves N.ckpt and latest.ckpt),
and sets the learning rate of the first update (below).
JoeyNMT's own files go to DIR/model (checkpoints at each validation, best two kept, and at the end).
The data are the piece files read at word level (split on spaces), with the joint vocab.joey.

Mapping of mtkit's settings onto JoeyNMT options:
  d_model 256, 4 heads, FFN 1024, 3+3 layers  encoder/decoder: type transformer, hidden_size and
                                               embedding_dim 256, num_heads 4, ff_size 1024,
                                               num_layers 3
  pre-norm                                    layer_norm: pre (set in encoder and decoder: the
                                               final LayerNorm defaults to off otherwise)
  tied embeddings (joint vocab)               tied_embeddings (src = trg) and tied_softmax
  label smoothing 0.1, dropout (--dropout)    label_smoothing 0.1; dropout --dropout (sub-layers and
                                               embeddings). JoeyNMT also applies it to the attention
                                               weights (mtkit: attention_dropout 0.0; no option)
  Adam (0.9, 0.98), clip 1.0                  adam_betas; clip_grad_norm 1.0; eps torch's 1e-8
  inverse sqrt, warmup W, peak P              scheduling warmupinversesquareroot, learning_rate P,
                                               learning_rate_warmup W: the peak is given directly
                                               (rate = step * P / W, then P * sqrt(W / step)); the
                                               scheduler's `learning_rate_peak` key is dropped by
                                               JoeyNMT 2.3.0's config parser, so the peak is
                                               `learning_rate`. JoeyNMT sets the rate after each
                                               update, so update 1 would run at P: the driver sets it
                                               to P / W; update k >= 2 runs at (k-1) * P / W, one
                                               update behind mtkit. learning_rate_min 1e-10 (the
                                               default 1e-5 floors the warmup and stops training
                                               when the rate falls below it)
  batches of 4096 tokens                      batch_type token, batch_size 4096: sentences x
                                               (longest side + 1), padding included, NOT
                                               length-bucketed (JoeyNMT samples sentences at random),
                                               so batches hold far fewer real tokens than mtkit's
Throughput: JoeyNMT logs "Tokens per Sec" per logging interval: the non-padding target tokens
(pieces + EOS, batch.ntokens) over the interval's wall time minus validation time.
Validation (every --valid-steps on the first 500 dev lines) decodes greedily and its BLEU is on
pieces joined by spaces (JoeyNMT does not detokenize word-level data); it only picks best.ckpt.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import common

D_MODEL = 256
REPORT = re.compile(r"Epoch\s+(\d+), Step:\s+(\d+), Batch Loss:.*?Tokens per Sec:\s+(\d+), Lr: ([\d.e-]+)")


def config(args) -> dict:
    data = args.data.resolve()
    side = {"level": "word", "lowercase": False, "normalize": False, "voc_file": str(data / "vocab.joey")}
    layers = {"type": "transformer", "num_layers": 3, "num_heads": 4, "hidden_size": D_MODEL, "ff_size": 1024,
              "dropout": args.dropout, "layer_norm": "pre", "activation": "relu",
              "embeddings": {"embedding_dim": D_MODEL, "scale": True, "dropout": args.dropout}}
    valid = args.valid_steps > 0
    return {
        "name": f"mtkit-peer-{args.out.name}",
        "joeynmt_version": "2.3.0",
        "model_dir": str(args.out.resolve() / "model"),
        "use_cuda": False, "fp16": False, "random_seed": args.seed,
        "data": {"train": str(data / args.train_prefix), "dev": str(data / "valid"), "dataset_type": "plain",
                 "src": {"lang": args.src, **side}, "trg": {"lang": args.tgt, **side}},
        "testing": {"n_best": 1, "beam_size": 1, "beam_alpha": 1.0, "batch_size": args.batch_tokens,
                    "batch_type": "token", "max_output_length": -1, "min_output_length": 0,
                    "eval_metrics": ["bleu"], "sacrebleu_cfg": {"tokenize": "13a"}},
        "training": {
            "optimizer": "adam", "adam_betas": [0.9, 0.98], "weight_decay": 0.0, "clip_grad_norm": 1.0,
            "scheduling": "warmupinversesquareroot", "learning_rate": args.lr,
            "learning_rate_warmup": args.warmup, "learning_rate_min": 1.0e-10,
            "loss": "crossentropy", "label_smoothing": 0.1, "normalization": "tokens",
            "batch_size": args.batch_tokens, "batch_type": "token", "batch_multiplier": 1,
            "epochs": 1000000, **({"updates": args.steps} if args.steps else {}),
            "validation_freq": args.valid_steps if valid else args.report_every * 10**8, "logging_freq": args.report_every,
            "early_stopping_metric": "bleu", "keep_best_ckpts": 2, "shuffle": True, "overwrite": False,
            "num_workers": 0, "print_valid_sents": [0, 1, 2],
        },
        "model": {"initializer": "xavier_uniform", "bias_initializer": "zeros", "init_gain": 1.0,
                  "embed_initializer": "xavier_uniform", "embed_init_gain": 1.0,
                  "tied_embeddings": True, "tied_softmax": True, "encoder": layers, "decoder": layers},
    }


def train(args) -> None:
    common.check_train_args(args)
    if args.valid_steps > 0 and args.valid_steps % args.report_every:
        sys.exit("error: JoeyNMT needs --valid-steps to be a multiple of --report-every")
    if (args.out / "model").exists():
        sys.exit(f"error: {args.out / 'model'} exists; remove it or choose another --out")
    cfg = config(args)
    path = common.write_config(args.out, cfg)
    print(f"JoeyNMT 2.3.0 train: {args.out}; budget {args.minutes} min / {args.steps} steps; threads {args.threads};"
          f" batch {args.batch_tokens} tokens; warmupinversesquareroot: learning_rate_warmup {args.warmup},"
          f" learning_rate {args.lr:g} (the peak, given directly); update 1 at {args.lr / args.warmup:.3g}")
    minutes = "inf" if args.minutes is None else str(args.minutes)
    cmd = [common.venv_bin("joeynmt", "python"), str(common.DRIVERS / "budget.py"), "joeynmt", minutes, str(path)]
    rc, wall = common.run_logged(cmd, args.out / "train.log", common.child_env(args.threads))
    latest = args.out / "model" / "latest.ckpt"
    common.finish_training(args, rc, wall, latest.resolve() if latest.exists() else None, throughput, {})


def throughput(run_dir: Path, skip: int, extra: dict | None = None) -> dict:
    text = (run_dir / "train.log").read_text(encoding="utf-8", errors="replace")
    rows, seen = [], set()
    for m in REPORT.finditer(text):  # JoeyNMT logs to the console and to its own file: keep each step once
        if int(m[2]) not in seen:
            seen.add(int(m[2]))
            rows.append({"step": int(m[2]), "tgt_tok_s": float(m[3]), "lr": float(m[4])})
    params = re.search(r"Total params: (\d+)", text)
    return common.throughput_summary(
        "JoeyNMT 2.3.0", "non-padding target tokens (pieces + EOS) per second of each logging interval,"
        " validation time excluded", rows, skip,
        {"run_dir": str(run_dir), "params": int(params[1]) if params else None, **(extra or {})})


def translate(args) -> None:
    result = args.out.with_name(args.out.name + ".result.json")
    cmd = [common.venv_bin("joeynmt", "python"), str(common.DRIVERS / "joey_translate.py"), "--model", str(args.model),
           *common.driver_translate_args(args, result), "--max-output-length", str(args.max_output_length)]
    res = common.run_driver(cmd, common.child_env(args.threads), result)
    limit = ("int(1.5 * longest source in batch, EOS included)" if args.max_output_length < 0
             else args.max_output_length)
    settings = {"model": str(args.model), "beam": args.beam, "batch": f"{args.batch_sents} sentences, input order",
                "threads": args.threads, "length_limit": limit, "length_penalty": "GNMT, beam_alpha 1.0",
                "min_output_length": 0}
    common.report_translation("JoeyNMT 2.3.0", settings, res, args)


def main() -> None:
    def translate_extra(tr):
        tr.add_argument("--max-output-length", type=int, default=-1,
                        help="max output pieces; -1: JoeyNMT's default, 1.5 x the batch's longest source")

    common.toolkit_cli(__doc__, train, throughput, translate, "a JoeyNMT checkpoint (DIR/model/latest.ckpt or N.ckpt)",
                       translate_extra=translate_extra)


if __name__ == "__main__":
    main()
