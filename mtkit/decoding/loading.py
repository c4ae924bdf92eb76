"""What `mtkit translate` and `mtkit evaluate` decode with: the model (or a CTranslate2 engine), its
tokenizer, the decode settings and the device, from a checkpoint, a run dir or an export.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mtkit.config import DecodeConfig
from mtkit.data.tokenizer import Tokenizer
from mtkit.decoding import ct2, engine_speed
from mtkit.decoding.precision import cast_for_decoding
from mtkit.decoding.settings import decode_overrides, decode_settings
from mtkit.errors import ConfigError
from mtkit.hardware import resolve_device
from mtkit.memory import keep_freed_memory
from mtkit.model.loading import load_model

log = logging.getLogger("mtkit")


def load_for_decoding(model_path: str | Path, device: str = "auto", overrides: list[str] | tuple[str, ...] = (),
                      beam: int | None = None, greedy: bool = False, nbest: int | None = None,
                      batch_tokens: int | None = None, engine: str = "torch") -> tuple[Any, Tokenizer, DecodeConfig, str]:
    """What `mtkit translate` and `mtkit evaluate` decode with: (model, tokenizer, decode settings,
    device). The checkpoint's decode.* settings, then `--set decode.*=...` overrides, then the flags;
    the weights cast for decode.precision (auto resolved, so the settings name what runs).
    engine "ctranslate2": the model is an exported directory (or a checkpoint, exported on the fly)
    and CTranslate2 searches (ct2.py). On a CPU where CTranslate2 int8 is clearly faster than the
    native path, a log line says so, with the commands (engine_speed.py)."""
    flags = dict(beam=beam, greedy=greedy, nbest=nbest, batch_tokens=batch_tokens)
    if engine == "ctranslate2":
        return ct2.load_engine(model_path, device, overrides, **flags)
    if engine != "torch":
        raise ConfigError(f"--engine: expected torch or ctranslate2 (got {engine!r})")
    if ct2.is_ct2_dir(model_path):
        raise ConfigError(f"{model_path}: is a CTranslate2 export; translate it with --engine ctranslate2")
    keep_freed_memory()
    device = resolve_device(device)
    if device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # TF32 matmuls, as training (and its validation) ran
    model, tok, cfg = load_model(model_path, device)
    decode = decode_settings(decode_overrides(cfg, overrides).decode, **flags)
    model, precision = cast_for_decoding(model, decode.precision, device)
    if device == "cpu" and (line := engine_speed.hint(model_path, engine_speed.ct2_int8_speedup())):
        log.info("%s", line)
    return model, tok, replace(decode, precision=precision), device
