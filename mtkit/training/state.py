"""What a run carries between calls besides weights and optimizer: its counters (Progress) and its
random streams, and how a resumed (or --init-from) run puts them back into the training objects.

A run killed and resumed continues exactly: the same data position, the same dropout masks, the
same counters as one that never stopped.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import torch

from mtkit.config import Config
from mtkit.data.batching import TokenBatchSampler
from mtkit.errors import CheckpointError, TrainingError
from mtkit.training.distributed import World
from mtkit.training.rundir import Run

log = logging.getLogger("mtkit")


@dataclass
class Progress:
    """The counters a checkpoint carries besides weights and optimizer state."""

    step: int = 0  # optimizer updates done
    best_bleu: float = -1.0
    bad_validations: int = 0  # validations in a row without a better BLEU (early stopping)
    tokens_seen: int = 0  # target tokens (non-pad) trained on
    train_seconds: float = 0.0  # wall time of the training loop over all calls, as of the last save
    time_plan: dict | None = None  # train.max_time turned into updates (budget.make_time_plan)


def restore(run: Run, cfg: Config, world: World, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, sampler: TokenBatchSampler) -> Progress:
    """Load a resumed run's state (weights, optimizer, data position, random streams) or an
    --init-from checkpoint's weights; the Progress to continue from."""
    progress = Progress()
    if world.distributed:
        seed_everything(cfg.seed + world.rank)  # same initial weights (seeded before), own dropout masks
    if run.resume_state is not None:
        s = run.resume_state
        if "optimizer" not in s or "progress" not in s:  # e.g. `mtkit average`'s output put in as last.pt
            raise CheckpointError(f"{run.resume_path}: holds weights but no training state (optimizer, data"
                                  " position), as `mtkit average` writes; move it out of the run dir, or train"
                                  " from its weights in a new run dir with --init-from")
        # With train.ema_decay on, "model" holds the average and "train_weights" what training continues from.
        model.load_state_dict(s.get("train_weights", s["model"]))
        optimizer.load_state_dict(s["optimizer"])
        if s.get("scaler") and scaler.is_enabled():  # none, or unused, when resumed in another precision
            scaler.load_state_dict(s["scaler"])
        sampler.load_state_dict(s["data"])
        progress = Progress(**s["progress"])
        saved_subset = s.get("config", {}).get("train", {}).get("valid_max_sentences")
        if saved_subset != cfg.train.valid_max_sentences and progress.best_bleu >= 0:
            # Best BLEU and patience compare scores; on another dev subset they would compare apples and pears.
            log.warning("train.valid_max_sentences changed (%s -> %s): best dev BLEU (%.2f) and patience start"
                        " afresh on the new dev subset", saved_subset, cfg.train.valid_max_sentences, progress.best_bleu)
            progress.best_bleu, progress.bad_validations = -1.0, 0
        per_rank = s.get("rng_ranks") or [s["rng"]]
        if len(per_rank) == world.size:
            restore_rng(per_rank[world.rank])
        else:  # another process count than the saved run: resumes, but not bit-exactly
            seed_everything(cfg.seed + world.rank + progress.step)
            if world.is_main:
                log.warning("resuming a %d-process run on %d: random streams restart (dropout masks differ"
                            " from an uninterrupted run)", len(per_rank), world.size)
        log.info("resumed from %s at step %d", run.resume_path, progress.step)
    elif run.init_state is not None:
        try:
            model.load_state_dict(run.init_state["model"])
        except RuntimeError as e:
            raise TrainingError(f"--init-from {run.init_path}: its weights do not fit model.* of this config"
                                f" ({str(e).splitlines()[0][:160]}); use the same model settings") from None
        log.info("initialised weights from %s (fine-tuning with its tokenizer)", run.init_path)
    return progress


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
