"""The training budget: when training stops (steps, epochs, time, patience) and how much is used.

Whichever budget ends first stops the run; the same "first to end" decides the fraction used, which
the learning-rate cooldown (schedule.py) reads. Time is the training time of all `mtkit train`
calls of the run (checkpoints carry it), as steps and epochs are.
"""

from __future__ import annotations

STOP_REASONS = {1: "reached train.max_steps={t.max_steps}", 2: "reached train.max_epochs={t.max_epochs}",
                3: "early stopping: no better dev BLEU in {t.patience} validations",
                4: "reached train.max_time={t.max_time}"}


def stop_code(t, progress, sampler, validator, out_of_time: bool) -> int:
    """Why this process would stop now: a key of STOP_REASONS, or 0 to go on."""
    if t.max_steps is not None and progress.step >= t.max_steps:
        return 1
    if t.max_epochs is not None and epochs_done(sampler) >= t.max_epochs:
        return 2
    if validator is not None and t.patience and progress.bad_validations >= t.patience:
        return 3
    return 4 if out_of_time else 0


def budget_used(t, step: int, elapsed_s: float, budget_s: float, sampler) -> float:
    """Fraction (0..1) of the budget used after `step` updates and `elapsed_s` seconds.

    `t` is the train config; `budget_s` is train.max_time in seconds (inf when unset).
    """
    state = sampler.state_dict()
    used = [elapsed_s / budget_s, (step / t.max_steps) if t.max_steps else 0.0,
            (state["epoch"] + state["position"] / len(sampler)) / t.max_epochs if t.max_epochs else 0.0]
    return min(1.0, max(used))


def epochs_done(sampler) -> int:
    """Complete passes over the training data (an epoch whose last batch was handed out counts)."""
    state = sampler.state_dict()
    return state["epoch"] + (state["position"] >= len(sampler))
