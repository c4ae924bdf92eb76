"""What a run carries between calls besides weights and optimizer: its counters (Progress) and its
random streams, and how a resumed (or --init-from) run puts them back into the training objects.

A run killed and resumed continues exactly: the same data position, the same dropout masks, the
same counters as one that never stopped.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Optional

import torch

from mtkit.config import Config, TrainConfig
from mtkit.data.batching import TokenBatchSampler
from mtkit.errors import CheckpointError, TrainingError
from mtkit.training.distributed import World
from mtkit.training.rundir import Run

log = logging.getLogger("mtkit")


@dataclass
class Progress:
    """The counters a checkpoint carries besides weights and optimizer state."""

    step: int = 0  # optimizer updates done
    best_bleu: float = -1.0  # the best dev BLEU so far (reported whatever train.best_metric is)
    best: Optional[float] = None  # the best dev value of train.best_metric so far (None: no validation yet)
    bad_validations: int = 0  # validations in a row without a better best_metric (early stopping)
    tokens_seen: int = 0  # target tokens (non-pad) trained on
    train_seconds: float = 0.0  # wall time of the training loop over all calls, as of the last save
    time_plan: dict | None = None  # train.max_time turned into updates (budget.make_time_plan)


# What a best score and patience compare: change one, and old and new scores are apples and pears.
SCORING_KEYS = ("best_metric", "valid_max_sentences", "valid_tokenize", "valid_chrf_word_order")


def restart_best_if_scored_otherwise(progress: Progress, saved: dict[str, Any], train: TrainConfig) -> Progress:
    """A resumed run's Progress, with its best score and patience restarted (and a warning) where
    `train` scores the dev set otherwise than the `saved` train section did."""
    defaults = TrainConfig()
    saved = {key: saved.get(key, getattr(defaults, key)) for key in SCORING_KEYS}  # older runs lack some keys
    if progress.best is None and progress.best_bleu >= 0 and saved["best_metric"] == "bleu":
        progress.best = progress.best_bleu  # saved before best_metric existed
    changed = [f"train.{key} changed ({saved[key]} -> {getattr(train, key)})" for key in SCORING_KEYS
               if saved[key] != getattr(train, key)]
    if changed and progress.best is not None:
        log.warning("%s: the best dev %s (%.2f) and patience start afresh", "; ".join(changed),
                    saved["best_metric"], progress.best)
        progress.best, progress.best_bleu, progress.bad_validations = None, -1.0, 0
    return progress


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
        progress = restart_best_if_scored_otherwise(Progress(**s["progress"]), s.get("config", {}).get("train", {}),
                                                    cfg.train)
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
