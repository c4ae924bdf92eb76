"""An exponential moving average of the weights, for validation and for the saved model.

NOTE (differs from paper): the paper averages the last 5 (base) or 20 (big) checkpoints written
10 minutes apart; an EMA is the running form of that average, updated after every optimizer step:

    ema <- decay * ema + (1 - decay) * weights,   decay_t = min(decay, (1 + t) / (10 + t))

The ramp (decay_t, as in TensorFlow's ExponentialMovingAverage with num_updates) keeps the first
updates from being dominated by the random initial weights. train.ema_decay: 0 (the default)
keeps the paper's recipe. With it on, checkpoints hold the averaged weights under "model" (what
translate, evaluate and average read) and the training weights under "train_weights"
(what a resumed run continues from).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """A frozen fp32 copy of `model` whose weights follow the training weights' moving average."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()  # an nn.Module: validation decodes it like any model
        for p in self.model.parameters():
            p.requires_grad_(False)
        # Parameters only: the one buffer, the sinusoidal table, is computed, not learned.
        self._ema = list(self.model.parameters())
        self._src = list(model.parameters())

    def update(self, step: int) -> None:
        """Move the average towards the current training weights; `step` counts applied updates (1..)."""
        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            # One fused pass over all parameters: ema += (1 - decay) * (weights - ema).
            torch._foreach_lerp_(self._ema, self._src, 1.0 - decay)

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)


def make_ema(model: nn.Module, decay: float, resume_state: dict[str, Any] | None) -> EMA | None:
    """The weights' moving average when train.ema_decay > 0 (None when off): resumed from a
    checkpoint that kept one, else started from the current weights."""
    if decay <= 0:
        return None
    ema = EMA(model, decay)
    if resume_state is not None and "train_weights" in resume_state:
        ema.load_state_dict(resume_state["model"])  # saved with an average: "model" is the average
    return ema
