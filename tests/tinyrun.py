"""A tiny training run on synthetic data, shared by the train/translate/checkpoint/CLI tests."""

from __future__ import annotations

from pathlib import Path

from mtkit.config import Config, load_config
from mtkit.data.synthetic import write_task
from mtkit.model.checkpoint import load_checkpoint

TINY = [
    "tokenizer.vocab_size=48",
    "model.d_model=32", "model.heads=2", "model.d_ff=64",
    "model.encoder_layers=1", "model.decoder_layers=1",
    "train.batch_tokens=512", "train.lr=0.003", "train.warmup_steps=10",
    "train.log_every=5", "train.eval_every=10", "train.max_steps=20", "train.device=cpu",
    "train.threads=1", "train.valid_max_sentences=20",
    # fp32 pinned: the same numbers on every CPU (precision auto is tested in test_hardware.py)
    "train.precision=fp32", "decode.precision=fp32",
    "decode.beam_size=2", "decode.max_len_b=5", "decode.max_len_a=1.0",
    "data.src_lang=src", "data.tgt_lang=tgt", "data.max_len=32", "data.num_proc=1",
]


def make_data(root: Path, task: str = "reverse", train: int = 400) -> Path:
    data = root / "data"
    if not (data / "train.src").exists():
        write_task(data, task=task, train=train, dev=30, test=30, seed=3)
    return data


def tiny_overrides(root: Path, run: str = "run", extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    data = make_data(root)
    return [
        f"run_dir={root / run}",
        f"data.train.src={data / 'train.src'}", f"data.train.tgt={data / 'train.tgt'}",
        f"data.valid.src={data / 'dev.src'}", f"data.valid.tgt={data / 'dev.tgt'}",
        *TINY, *extra,
    ]


def tiny_config(root: Path, run: str = "run", extra: list[str] | tuple[str, ...] = ()) -> Config:
    return load_config(None, tiny_overrides(root, run, extra))


def checkpoint_weights(path: Path) -> dict:
    """The model weights a checkpoint holds (name -> tensor)."""
    return load_checkpoint(path)["model"]


def same_weights(a: Path, b: Path) -> bool:
    """Whether two checkpoints hold bit-identical weights under the same names."""
    import torch

    x, y = checkpoint_weights(a), checkpoint_weights(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
