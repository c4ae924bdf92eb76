"""The learning-rate schedule of the paper (section 5.3): linear warmup, then inverse square root.

lrate = lr * min(step / warmup_steps, sqrt(warmup_steps / step)), so the peak `lr` is reached
exactly at `warmup_steps`. The paper writes the peak as d_model^-0.5 * warmup_steps^-0.5; we
name the peak directly, which is easier to tune (NOTE (differs from paper): same shape,
different parametrisation). It holds no state: the step alone decides the rate, so resume is exact.

`cooldown` takes the rate linearly to zero over the last part of the training budget (NOTE
(differs from paper): the paper trains with inverse-sqrt to the end). A budgeted run then ends on
a settled model instead of one still taking large steps; see docs/results.md for what it gave.
"""

from __future__ import annotations

import math


def inverse_sqrt_lr(step: int, lr: float, warmup_steps: int) -> float:
    """Learning rate for update number `step` (1-based).

    With `warmup_steps == 0` there is no warmup and the rate decays as lr / sqrt(step).
    """
    step = max(step, 1)
    if warmup_steps <= 0:
        return lr / math.sqrt(step)
    return lr * min(step / warmup_steps, math.sqrt(warmup_steps / step))


def cooldown_factor(done: float, cooldown: float) -> float:
    """Multiplier on the rate once a fraction `done` (0..1) of the budget is used.

    1 until the last `cooldown` fraction of the budget, then falls linearly to 0 at its end;
    `cooldown == 0` is the paper's schedule (always 1).
    """
    if cooldown <= 0 or done <= 1 - cooldown:
        return 1.0
    return max(0.0, (1.0 - done) / cooldown)
