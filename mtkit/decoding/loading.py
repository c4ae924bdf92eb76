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
from mtkit.decoding.ensemble import Ensemble, same_tokenizer
from mtkit.decoding.precision import cast_for_decoding
from mtkit.decoding.settings import check_prefix, decode_overrides, decode_settings
from mtkit.errors import ConfigError
from mtkit.hardware import resolve_device
from mtkit.memory import keep_freed_memory
from mtkit.model.loading import load_model

log = logging.getLogger("mtkit")


def load_for_decoding(model_path: str | Path | list, device: str = "auto", overrides: list[str] | tuple[str, ...] = (),
                      beam: int | None = None, greedy: bool = False, nbest: int | None = None,
                      batch_tokens: int | None = None, engine: str = "torch",
                      weights: list[float] | None = None) -> tuple[Any, Tokenizer, DecodeConfig, str]:
    """What `mtkit translate` and `mtkit evaluate` decode with: (model, tokenizer, decode settings,
    device). The checkpoint's decode.* settings, then `--set decode.*=...` overrides, then the flags;
    the weights cast for decode.precision (auto resolved, so the settings name what runs).
    Several checkpoints (a list) decode as an ensemble (ensemble.py; `weights` one per model), with
    the first one's decode settings. engine "ctranslate2": the model is an exported directory (or a
    checkpoint, exported on the fly) and CTranslate2 searches (ct2.py). On a CPU where CTranslate2
    int8 is clearly faster than the native path, a log line says so, with the commands (engine_speed.py)."""
    flags = dict(beam=beam, greedy=greedy, nbest=nbest, batch_tokens=batch_tokens)
    paths = list(model_path) if isinstance(model_path, (list, tuple)) else [model_path]
    if weights is not None and len(weights) != len(paths):
        raise ConfigError(f"--weights: give one weight per model ({len(paths)} models, {len(weights)} weights)")
    if engine == "ctranslate2":
        if len(paths) > 1:
            raise ConfigError("an ensemble decodes with mtkit's own engine; drop --engine ctranslate2")
        return ct2.load_engine(paths[0], device, overrides, **flags)
    if engine != "torch":
        raise ConfigError(f"--engine: expected torch or ctranslate2 (got {engine!r})")
    for path in paths:
        if ct2.is_ct2_dir(path):
            raise ConfigError(f"{path}: is a CTranslate2 export; translate it with --engine ctranslate2")
    keep_freed_memory()
    device = resolve_device(device)
    if device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # TF32 matmuls, as training (and its validation) ran
    loaded = [load_model(path, device) for path in paths]
    same_tokenizer([str(p) for p in paths], [tok for _, tok, _ in loaded])
    _, tok, cfg = loaded[0]
    decode = decode_settings(decode_overrides(cfg, overrides).decode, **flags)
    check_prefix(tok, decode, cfg)
    models = [cast_for_decoding(model, decode.precision, device) for model, _, _ in loaded]  # (model, precision)
    model = models[0][0] if len(models) == 1 else Ensemble([m for m, _ in models], weights)
    if device == "cpu" and (line := engine_speed.hint(paths[0], engine_speed.ct2_int8_speedup())):
        log.info("%s", line)
    return model, tok, replace(decode, precision=models[0][1]), device
