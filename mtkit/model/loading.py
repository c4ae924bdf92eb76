"""A checkpoint back into a model: the Transformer its config describes, with its weights, its
tokenizer and the config itself, ready to decode (eval mode) or inspect.

Used by translation, evaluation, export and inspection alike; training resumes through
training/rundir.py instead (it needs the optimizer and data position too).
"""

from __future__ import annotations

import logging
from pathlib import Path

from mtkit.config import Config, from_plain_dict
from mtkit.data.tokenizer import PAD_ID, Tokenizer
from mtkit.errors import CheckpointError
from mtkit.model.checkpoint import load_checkpoint, resolve_model_path
from mtkit.model.transformer import Transformer

log = logging.getLogger("mtkit")


def load_model(model_path: str | Path, device: str = "cpu") -> tuple[Transformer, Tokenizer, Config]:
    """(model in eval mode, tokenizer, config) from a checkpoint file or run dir."""
    path = resolve_model_path(model_path)
    state = load_checkpoint(path)
    cfg = from_plain_dict(state["config"])
    tok = Tokenizer.from_bytes(state["tokenizer"])
    model = Transformer(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size, pad_id=PAD_ID)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes: {str(e)[:200]}") from None
    model.to(device).eval()
    log.info("loaded %s (step %s)", path, state.get("step", "?"))
    return model, tok, cfg
