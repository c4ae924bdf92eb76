"""The learning-rate schedule of the paper (section 5.3): linear warmup, then inverse square root.

lrate = lr * min(step / warmup_steps, sqrt(warmup_steps / step)), so the peak `lr` is reached
exactly at `warmup_steps`. The paper writes the peak as d_model^-0.5 * warmup_steps^-0.5; we
name the peak directly, which is easier to tune (NOTE (differs from paper): same shape,
different parametrisation). It holds no state: the step alone decides the rate, so resume is exact.
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
