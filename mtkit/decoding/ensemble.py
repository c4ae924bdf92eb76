"""Ensembles: several models decoding as one (`mtkit translate A.pt B.pt ...`, `mtkit evaluate`).

At every step each model scores the next piece with its own decoder and KV cache, and the
ensemble's log-probability is the weighted average of theirs (weights summing to 1), as Marian
and OpenNMT-py combine them; search's log-softmax then renormalises it, which leaves an average
of normalised distributions unchanged but for rounding (so a model ensembled with itself
translates as it does alone). The models must share one tokenizer: the same pieces mean the same
ids in all of them. `Ensemble` offers what search, sampling and forced decoding ask of a model
(encode, start_cache, decode_step, eval/train), so every decoding path takes it.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from mtkit.decoding.search_state import select_rows
from mtkit.errors import ConfigError


class Ensemble:
    """Models decoding together; `weights` (one per model, positive) are normalised to sum 1."""

    def __init__(self, models: list[Any], weights: list[float] | None = None):
        weights = weights or [1.0] * len(models)
        if len(weights) != len(models) or min(weights) <= 0:
            raise ConfigError(f"--weights: give one positive weight per model ({len(models)} models, got"
                              f" {', '.join(map(str, weights))})")
        self.models = models
        self.weights = [w / sum(weights) for w in weights]

    @property
    def training(self) -> bool:
        return any(getattr(m, "training", False) for m in self.models)

    def eval(self) -> Ensemble:
        for m in self.models:
            m.eval()
        return self

    def train(self, mode: bool = True) -> Ensemble:
        for m in self.models:
            m.train(mode)
        return self

    def encode(self, src: Tensor) -> tuple[list[Tensor], Tensor]:
        """src (B, S) -> each model's memory (B, S, D_m) and the shared padding mask (B, S)."""
        encoded = [m.encode(src) for m in self.models]
        return [memory for memory, _ in encoded], encoded[0][1]

    def start_cache(self, memories: list[Tensor], src_pad_mask: Tensor) -> EnsembleCache:
        return EnsembleCache([m.start_cache(mem, src_pad_mask) for m, mem in zip(self.models, memories)])

    def decode_step(self, tokens: Tensor, cache: EnsembleCache) -> Tensor:
        """tokens (B,) -> (B, V) the weighted average of the models' log-probabilities."""
        out = None
        for model, step_cache, w in zip(self.models, cache.caches, self.weights):
            lprobs = F.log_softmax(model.decode_step(tokens, step_cache).float(), dim=-1).mul_(w)  # (B, V)
            out = lprobs if out is None else out.add_(lprobs)
        return out


class EnsembleCache:
    """Each model's own decoder cache, reordered together."""

    def __init__(self, caches: list[Any]):
        self.caches = caches

    def select(self, rows: Tensor, sentences: Tensor | None = None) -> None:
        self.caches = [select_rows(c, rows, sentences) for c in self.caches]


def same_tokenizer(paths: list[str], tokenizers: list[Any]) -> None:
    """Refuse models whose tokenizers differ: their ids would mean different pieces."""
    first = tokenizers[0].to_bytes()
    for path, tok in zip(paths[1:], tokenizers[1:]):
        if tok.to_bytes() != first:
            raise ConfigError(f"{paths[0]} and {path} have different tokenizers; an ensemble needs models"
                              " trained with one tokenizer (the same run's checkpoints, or --init-from runs)")


def parse_weights(text: str | None) -> list[float] | None:
    """--weights "0.6,0.4" -> [0.6, 0.4]; None when not given."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--weights {text!r}: give numbers separated by commas, e.g. 0.6,0.4") from None

