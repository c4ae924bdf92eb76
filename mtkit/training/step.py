"""One optimizer update: forward and backward over an accumulation group, clipping, Adam.

`Learner` holds the model and what updates it (optimizer, fp16 loss scaler, autocast, and the
forward to run: the model, or its DDP / compiled wrapper); `Learner.step` makes one update and
says how it went (`Outcome`). What to do about a skipped update is the Trainer's decision.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from mtkit.config import Config, TrainConfig
from mtkit.training.distributed import World, no_buffer_sync, sum_tensor
from mtkit.training.loss import output_losses, token_losses


class Outcome(enum.Enum):
    """How an update went."""

    APPLIED = "applied"  # the optimizer stepped
    OVERFLOW = "overflow"  # fp16: the gradient overflowed, the scaler lowered its scale; not an update
    NONFINITE = "nonfinite"  # a NaN/inf loss or gradient: skipped on every process, the weights untouched
    OOM = "oom"  # out of memory on a batch: skipped


@dataclass
class Learner:
    """The model and what updates it.

    Attributes:
        model: owns the parameters (what checkpoints hold).
        net: what the forward runs: the model, or its DistributedDataParallel and/or compiled wrapper.
        autocast: the mixed-precision context of the forward (a null context in fp32).
    """

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: contextlib.AbstractContextManager
    world: World
    cfg: TrainConfig
    device: str

    def step(self, group: Sequence[dict[str, Tensor]], n_tokens: int) -> tuple[Outcome, float, float]:
        """Forward/backward over an accumulation group (batches from padding.make_batch) and one
        optimizer update. Returns the outcome and the smoothed loss and NLL summed over the group
        on all processes (NaN when not computed: out of memory)."""
        try:
            return self._update(group, n_tokens)
        except torch.OutOfMemoryError:
            self.optimizer.zero_grad(set_to_none=True)
            return Outcome.OOM, math.nan, math.nan

    def _update(self, group: Sequence[dict[str, Tensor]], n_tokens: int) -> tuple[Outcome, float, float]:
        sums = self._backward(group, n_tokens)
        self.scaler.unscale_(self.optimizer)
        # NOTE (differs from paper): gradient clipping (train.clip_norm; 0 = off, as in the paper). The
        # norm is computed either way: a non-finite one marks the update to skip.
        clip = self.cfg.clip_norm if self.cfg.clip_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        loss_value, nll_value = sum_tensor(self.world, sums).tolist()  # the one host sync per update
        if not (math.isfinite(loss_value) and math.isfinite(float(grad_norm))):
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.update()  # fp16: lets the scaler lower its scale after an overflow
                if math.isfinite(loss_value):
                    return Outcome.OVERFLOW, loss_value, nll_value  # an overflow in the gradient only: normal
            return Outcome.NONFINITE, loss_value, nll_value
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return Outcome.APPLIED, loss_value, nll_value

    def _backward(self, group: Sequence[dict[str, Tensor]], n_tokens: int) -> Tensor:
        """Accumulate the group's gradients; (2,) sums of the smoothed loss and the NLL."""
        on_gpu = self.device.startswith("cuda")
        sums = torch.zeros(2, device=self.device)  # smoothed loss, NLL
        for i, batch in enumerate(group):
            src, tgt_in, tgt_out = ((batch[k].pin_memory() if on_gpu else batch[k]).to(self.device, non_blocking=True)
                                    for k in ("src", "tgt_in", "tgt_out"))
            # DDP: average gradients over processes once per update, after the last micro-batch.
            last = i == len(group) - 1
            with self.net.no_sync() if self.world.distributed and not last else contextlib.nullcontext():
                loss, nll = self._losses(src, tgt_in, tgt_out)
                # Normalised per target token of the whole group on all processes; DDP averages
                # over processes, hence the factor world.size.
                self.scaler.scale(loss * (self.world.size / n_tokens)).backward()
            sums += torch.stack([loss.detach(), nll])
        return sums

    def _losses(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> tuple[Tensor, Tensor]:
        """The batch's smoothed loss and NLL sums, the output layer and loss computed in chunks of
        train.loss_chunk_tokens target tokens (loss.py). fp16 takes the whole logits at once: its
        gradients must be computed from the scaled loss, or the small ones underflow."""
        eps, over = self.cfg.label_smoothing, self.cfg.label_smoothing_over
        if self.cfg.loss_chunk_tokens == 0 or self.scaler.is_enabled():
            with self.autocast:
                logits = self.net(src, tgt_in)  # (B, T, V)
            return token_losses(logits, tgt_out, eps, over)
        with self.autocast:
            hidden = self.net(src, tgt_in, features=True)  # (B, T, D)
            return output_losses(hidden, self.model.output, tgt_out, eps, over, self.cfg.loss_chunk_tokens)


def make_learner(model: nn.Module, cfg: Config, device: str, precision: str, world: World,
                 optimizer: torch.optim.Optimizer | None = None, scaler: torch.amp.GradScaler | None = None) -> Learner:
    """A Learner for `model` on `device` in `precision` ("fp32", "bf16" or "fp16"): the optimizer and
    scaler given (a run restores their state first) or new ones, the forward wrapped for DDP and/or
    torch.compile (train.compile)."""
    optimizer = optimizer if optimizer is not None else make_optimizer(model, cfg)
    scaler = scaler if scaler is not None else make_scaler(device, precision)
    return Learner(model=model, net=training_forward(model, world, device, cfg.train.compile), optimizer=optimizer,
                   scaler=scaler, autocast=make_autocast(device, precision), world=world, cfg=cfg.train,
                   device=device)


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """Adam with the paper's betas and epsilon (section 5.3); AdamW when weight_decay > 0."""
    t = cfg.train
    # fused: one kernel per parameter instead of ~10 element-wise passes (Ding model on 2 CPU
    # cores: 4.3 against 12.0 ms per update). The model must already be on its device.
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    if t.weight_decay > 0:
        # NOTE (differs from paper): decoupled weight decay is an option, off by default.
        return torch.optim.AdamW(model.parameters(), lr=t.lr, betas=t.adam_betas, eps=t.adam_eps,
                                 weight_decay=t.weight_decay, fused=fused)
    return torch.optim.Adam(model.parameters(), lr=t.lr, betas=t.adam_betas, eps=t.adam_eps, fused=fused)


def make_scaler(device: str, precision: str) -> torch.amp.GradScaler:
    """fp16's loss scaler (a no-op in other precisions)."""
    return torch.amp.GradScaler(device.split(":")[0], enabled=precision == "fp16")


def make_autocast(device: str, precision: str) -> Any:
    """The forward's mixed-precision context: bf16 / fp16 autocast, or none in fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def training_forward(model: nn.Module, world: World, device: str, compile_model: bool) -> nn.Module:
    """What the training forward runs: the model, wrapped for DDP and/or torch.compile."""
    net = model
    if world.distributed:
        # No buffer sync: the only buffer is the sinusoidal table, computed alike everywhere (and
        # extended lazily per process, so sizes may differ); the weights start equal (same seed).
        net = DistributedDataParallel(model, device_ids=[torch.device(device).index] if device.startswith("cuda")
                                      else None, **no_buffer_sync())
    if compile_model:
        net = torch.compile(net, dynamic=True)  # shapes vary per batch: compile once for all of them
    return net
