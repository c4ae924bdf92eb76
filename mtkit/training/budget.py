"""The training budget: when training stops (steps, epochs, time, patience) and how much is used.

Whichever budget ends first stops the run; the same "first to end" decides the fraction used, which
the learning-rate cooldown (schedule.py) reads. Time is the training time of all `mtkit train`
calls of the run (checkpoints carry it), as steps and epochs are.

A time budget is turned into updates once, so that it is deterministic from the moment it matters:
when the clock reaches the point where the cooldown begins (90% of the time without a cooldown),
the rate of updates measured so far fixes the update at which training ends (`make_time_plan`).
From then on the cooldown and the stop count updates, not seconds; the plan is saved in every
checkpoint, so a run killed and resumed ends exactly as an uninterrupted run with the same plan.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

from mtkit.config import TrainConfig
from mtkit.data.batching import TokenBatchSampler

log = logging.getLogger("mtkit")

class Stop(enum.Enum):
    """Why training stops. Several may hold at once; the run reports the first, in this order."""

    MAX_STEPS = "reached train.max_steps={t.max_steps}"
    MAX_EPOCHS = "reached train.max_epochs={t.max_epochs}"
    PATIENCE = "early stopping: no better dev BLEU in {t.patience} validations"
    MAX_TIME = "reached train.max_time={t.max_time}"

    def message(self, t: TrainConfig) -> str:
        return self.value.format(t=t)


def stops_that_hold(t: TrainConfig, progress: Any, sampler: TokenBatchSampler, validating: bool,
                    out_of_time: bool) -> list[Stop]:
    """The reasons this process sees to stop now (none: go on). `validating`: there is a validator,
    so patience applies."""
    held = {Stop.MAX_STEPS: t.max_steps is not None and progress.step >= t.max_steps,
            Stop.MAX_EPOCHS: t.max_epochs is not None and epochs_done(sampler) >= t.max_epochs,
            Stop.PATIENCE: validating and bool(t.patience) and progress.bad_validations >= t.patience,
            Stop.MAX_TIME: out_of_time}
    return [reason for reason in Stop if held[reason]]


def budget_used(t: TrainConfig, step: int, time_fraction: float, sampler: TokenBatchSampler) -> float:
    """Fraction (0..1) of the budget used after `step` updates, `time_fraction` being that of
    train.max_time (`time_used`; 0 when unset). `t` is the train config."""
    state = sampler.state_dict()
    used = [time_fraction, (step / t.max_steps) if t.max_steps else 0.0,
            (state["epoch"] + state["position"] / len(sampler)) / t.max_epochs if t.max_epochs else 0.0]
    return min(1.0, max(used))


def epochs_done(sampler: TokenBatchSampler) -> int:
    """Complete passes over the training data (an epoch whose last batch was handed out counts)."""
    state = sampler.state_dict()
    return state["epoch"] + (state["position"] >= len(sampler))


PLAN_WITHOUT_COOLDOWN = 0.9  # no cooldown: the end is fixed at 90% of train.max_time
PLAN_AT_LEAST = 0.1  # never before 10% of it: the rate of updates needs measuring first
MIN_RATE_UPDATES = 10  # fewer updates in this call: the rate is the whole run's


def plan_point(cooldown: float) -> float:
    """The fraction of train.max_time at which the plan is made: where the cooldown begins."""
    return max(1.0 - cooldown, PLAN_AT_LEAST) if cooldown > 0 else PLAN_WITHOUT_COOLDOWN


def make_time_plan(step: int, elapsed_s: float, budget_s: float, cooldown: float,
                   since: tuple[int, float]) -> dict | None:
    """The plan for the rest of train.max_time once the clock has reached plan_point, else None.

    The update at which training ends is `step` plus the updates the rest of the time allows at
    the rate measured since `since` = (step, elapsed seconds) at this call's first update (the whole
    run's rate when this call has made under MIN_RATE_UPDATES).
    """
    fraction = elapsed_s / budget_s
    if fraction < plan_point(cooldown):
        return None
    step0, elapsed0 = since
    if step - step0 >= MIN_RATE_UPDATES and elapsed_s > elapsed0:
        rate = (step - step0) / (elapsed_s - elapsed0)
    else:
        rate = step / max(elapsed_s, 1e-9)
    end_step = step + max(1, round(rate * max(budget_s - elapsed_s, 0.0)))
    return {"step": step, "fraction": min(fraction, 1.0), "end_step": end_step, "budget_s": budget_s,
            "updates_per_s": round(rate, 4)}


def time_used(plan: dict | None, step: int, elapsed_s: float, budget_s: float) -> float:
    """Fraction of train.max_time used (0 when unset): by the clock until the plan is made, then
    by updates, from the plan's fraction at its step to 1 at its end step."""
    if plan is None:
        return elapsed_s / budget_s
    return plan["fraction"] + (1.0 - plan["fraction"]) * (step - plan["step"]) / (plan["end_step"] - plan["step"])


def adopt_time_plan(progress: Any, plan: dict | None, t: TrainConfig, metrics: Any) -> None:
    """Keep a time plan (make_time_plan) in `progress` when one was made, and say so in the log and
    metrics.jsonl (`metrics`: runlog.MetricsWriter)."""
    if plan is None:
        return
    progress.time_plan = plan
    log.info("train.max_time=%s: %.0f%% used at update %d (%.2f updates/s), so training ends at update %d%s;"
             " planned once, a resumed run keeps it", t.max_time, 100 * plan["fraction"], plan["step"],
             plan["updates_per_s"], plan["end_step"], ", cooling down from here" if t.cooldown else "")
    metrics.write("plan", **plan)
