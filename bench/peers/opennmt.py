"""OpenNMT-py 3.5.1 on mtkit's data and model shape: train, training throughput, translate.

usage (mtkit's venv; the toolkit runs from bench/.cache/peers/onmt, see install.sh):
  python bench/peers/opennmt.py train --out DIR (--minutes M | --steps N) --warmup W --lr P
                                     [--batch-tokens 4096] [--threads 2] [--valid-steps 400]
  python bench/peers/opennmt.py throughput DIR [--skip 2]
  python bench/peers/opennmt.py translate --model DIR/model_step_N.pt --spm SPM [--src PIECES]
                                         [--ref data/ding-de-en/test.en] [--beam 5] --out HYP

train writes DIR/config.yaml and runs `onmt_train -config DIR/config.yaml` with stdout and stderr
in DIR/train.log; with --minutes the same CLI runs under drivers/budget.py, which stops the
training loop cleanly when the budget is spent and lets OpenNMT-py save its final checkpoint.
Checkpoints: DIR/model_step_N.pt (every --valid-steps updates, last two kept, and at the end).

Mapping of mtkit's settings (configs/ding-de-en.yaml shape) onto OpenNMT-py options:
  d_model 256, 4 heads, FFN 1024, 3+3 layers  hidden_size/word_vec_size 256, heads 4,
                                               transformer_ff 1024, enc_layers/dec_layers 3
  pre-norm                                    always (OpenNMT-py 3.x transformer layers are
                                               pre-norm, with a final LayerNorm; no option)
  tied embeddings (joint vocab)               share_vocab, share_embeddings (src = tgt),
                                               share_decoder_embeddings (output = tgt embedding)
  label smoothing 0.1, dropout (--dropout)    label_smoothing 0.1, dropout [--dropout],
                                               attention_dropout [0.0] (mtkit's default)
  Adam (0.9, 0.98), clip 1.0                  optim adam, adam_beta1/2; max_grad_norm 1.0;
                                               eps is fixed at 1e-8 in OpenNMT-py (mtkit 1e-9)
  inverse sqrt, warmup W, peak P              decay_method noam: lr = learning_rate *
                                               d^-0.5 * min(step^-0.5, step * W^-1.5), whose
                                               peak (step W) is learning_rate * (d*W)^-0.5, so
                                               learning_rate = P * sqrt(d_model * W); update k uses
                                               k*P/W during warmup, exactly as mtkit
  batches of 4096 tokens                      batch_type tokens, batch_size 4096: sentences x
                                               the longest side (tgt counted with BOS and EOS),
                                               padding included, length-bucketed; normalization
                                               tokens. A source repeated within a batch is dropped
                                               (OpenNMT-py dedups training batches)
  data loading                                num_workers 0 (--num-workers): read and batched in the
                                               training process, as mtkit does, instead of OpenNMT-py's
                                               default 2 extra processes competing for the 2 cores
  attention                                   self_attn_type scaled-dot: the default scaled-dot-flash
                                               is refused by ct2-opennmt-py-converter, and on CPU
                                               OpenNMT-py runs the same (unfused) attention for both
Throughput: OpenNMT-py logs "... bsz: S/T/N; X/Y tok/s; ..." per report interval; Y counts the
non-padding target tokens of the loss (pieces + EOS, as mtkit's train_speed.py) over the wall
time of the interval (data loading included; the interval after a validation includes the
validation and the checkpoint save). X is source pieces/s.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import common

D_MODEL = 256
REPORT = re.compile(r"Step\s+(\d+)(?:/\s*\d+)?;.*?bsz:\s*(\d+)/\s*(\d+)/\s*(\d+);\s*(\d+)/\s*(\d+) tok/s;\s*(\d+) sec")


def noam_factor(peak: float, warmup: int, d_model: int = D_MODEL) -> float:
    """OpenNMT-py's learning_rate for a noam schedule that peaks at `peak` at update `warmup`."""
    return peak * math.sqrt(d_model * warmup)


def config(args) -> dict:
    data = args.data.resolve()
    valid = args.valid_steps > 0
    return {
        "data": {"corpus_1": {"path_src": str(data / f"{args.train_prefix}.{args.src}"),
                              "path_tgt": str(data / f"{args.train_prefix}.{args.tgt}")},
                 **({"valid": {"path_src": str(data / f"valid.{args.src}"),
                               "path_tgt": str(data / f"valid.{args.tgt}")}} if valid else {})},
        "save_data": str(args.out.resolve() / "samples"),
        "src_vocab": str(data / "vocab.onmt"), "share_vocab": True, "src_vocab_size": 100000,
        "tgt_vocab_size": 100000, "vocab_size_multiple": 1, "src_words_min_frequency": 0,
        # model
        "encoder_type": "transformer", "decoder_type": "transformer", "enc_layers": 3, "dec_layers": 3,
        "heads": 4, "hidden_size": D_MODEL, "word_vec_size": D_MODEL, "transformer_ff": 1024,
        "position_encoding": True, "max_relative_positions": 0, "layer_norm": "standard",
        "self_attn_type": "scaled-dot",  # CTranslate2 converts only this; on CPU the same code as the default
        "share_embeddings": True, "share_decoder_embeddings": True,
        "dropout": [args.dropout], "attention_dropout": [0.0], "param_init": 0.0, "param_init_glorot": True,
        "model_dtype": "fp32",
        # optimisation
        "optim": "adam", "adam_beta1": 0.9, "adam_beta2": 0.98, "max_grad_norm": 1.0,
        "decay_method": "noam", "warmup_steps": args.warmup, "learning_rate": noam_factor(args.lr, args.warmup),
        "label_smoothing": 0.1, "batch_type": "tokens", "batch_size": args.batch_tokens,
        "valid_batch_size": args.batch_tokens, "normalization": "tokens", "accum_count": [1],
        # run
        "train_steps": args.steps or 10**9, "valid_steps": args.valid_steps if valid else 10**9,
        "save_checkpoint_steps": args.valid_steps if valid else 0, "keep_checkpoint": 2,
        "save_model": str(args.out.resolve() / "model"), "report_every": args.report_every,
        "seed": args.seed, "world_size": 1, "gpu_ranks": [], "num_workers": args.num_workers,
    }


def checkpoint_step(path: Path) -> int:
    """The update number of an OpenNMT-py checkpoint DIR/model_step_N.pt."""
    return int(path.stem.rsplit("_", 1)[1])


def last_checkpoint(run_dir: Path) -> Path | None:
    return max(run_dir.glob("model_step_*.pt"), key=checkpoint_step, default=None)


def train(args) -> None:
    common.check_train_args(args)
    if list(args.out.glob("model_step_*.pt")):
        sys.exit(f"error: {args.out} holds checkpoints already; remove them or choose another --out")
    cfg = config(args)
    path = common.write_config(args.out, cfg)
    print(f"OpenNMT-py 3.5.1 train: {args.out}; budget {args.minutes} min / {args.steps} steps; threads {args.threads};"
          f" batch {args.batch_tokens} tokens; warmup {args.warmup}, peak lr {args.lr:g} -> noam learning_rate"
          f" = P * sqrt(d_model * W) = {args.lr:g} * sqrt({D_MODEL} * {args.warmup}) = {cfg['learning_rate']:.6f}")
    if args.minutes is not None:
        cmd = [common.venv_bin("onmt", "python"), str(common.DRIVERS / "budget.py"), "onmt", str(args.minutes), str(path)]
    else:
        cmd = [common.venv_bin("onmt", "onmt_train"), "-config", str(path)]
    rc, wall = common.run_logged(cmd, args.out / "train.log", common.child_env(args.threads))
    common.finish_training(args, rc, wall, last_checkpoint(args.out), throughput,
                           {"noam_learning_rate": cfg["learning_rate"]})


def throughput(run_dir: Path, skip: int, extra: dict | None = None) -> dict:
    text = (run_dir / "train.log").read_text(encoding="utf-8", errors="replace")
    rows = [{"step": int(m[1]), "src_tok_s": float(m[5]), "tgt_tok_s": float(m[6]), "tgt_tok_per_batch": int(m[3])}
            for m in REPORT.finditer(text)]
    params = re.search(r"number of parameters: (\d+)", text)
    per_batch = [r["tgt_tok_per_batch"] for r in (rows[skip:] if len(rows) > skip else rows)] or [0]
    return common.throughput_summary(
        "OpenNMT-py 3.5.1", "non-padding target tokens (pieces + EOS) per second of each report interval",
        rows, skip, {"run_dir": str(run_dir), "params": int(params[1]) if params else None,
                     "mean_real_tgt_tokens_per_batch": round(sum(per_batch) / len(per_batch)), **(extra or {})})


def translate(args) -> None:
    result = args.out.with_name(args.out.name + ".result.json")
    cmd = [common.venv_bin("onmt", "python"), str(common.DRIVERS / "onmt_translate.py"), "--model", str(args.model),
           *common.driver_translate_args(args, result), "--max-length", str(args.max_length),
           "--max-length-ratio", str(args.max_length_ratio)]
    res = common.run_driver(cmd, common.child_env(args.threads), result)
    settings = {"model": str(args.model), "beam": args.beam, "batch": f"{args.batch_sents} sentences",
                "threads": args.threads, "length_limit": f"min({args.max_length}, longest source in batch * {args.max_length_ratio:g} + 5)",
                "length_penalty": "wu (GNMT), alpha 1.0"}
    common.report_translation("OpenNMT-py 3.5.1", settings, res, args)


def main() -> None:
    def train_extra(tp):
        tp.add_argument("--num-workers", type=int, default=0,
                        help="OpenNMT-py data loader processes (its default 2; 0 = in the training process)")

    def translate_extra(tr):
        tr.add_argument("--max-length", type=int, default=250, help="max output pieces (OpenNMT-py's default 250)")
        tr.add_argument("--max-length-ratio", type=float, default=1.5,
                        help="per batch: at most longest source * R + 5 pieces (OpenNMT-py's default 1.25; mtkit's a 1.5)")

    common.toolkit_cli(__doc__, train, throughput, translate, "an OpenNMT-py checkpoint (DIR/model_step_N.pt)",
                       train_extra, translate_extra)


if __name__ == "__main__":
    main()
