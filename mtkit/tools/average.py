"""`mtkit average`: the element-wise mean of several checkpoints' weights, e.g. a run's last saves.

The paper averages the last 5 (base) or 20 (big) checkpoints; this makes one weights-only
checkpoint of the given ones (or a run dir's newest `--last N`) that translates like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mtkit.errors import CheckpointError, ConfigError
from mtkit.model.checkpoint import load_checkpoint
from mtkit.training.rundir import step_checkpoints


def checkpoints_to_average(paths: list[Path], last: int | None = None) -> list[Path]:
    """`mtkit average`'s inputs: the given checkpoints, or with `last` the newest `last` step-N.pt
    of the one run dir given."""
    if last is None:
        return paths
    if len(paths) != 1 or not paths[0].is_dir():
        raise ConfigError("--last N needs exactly one run dir")
    found = [p for _, p in step_checkpoints(paths[0])][:last]
    if len(found) < last:
        raise ConfigError(f"{paths[0]}: has {len(found)} step-*.pt checkpoints, fewer than --last {last};"
                          " raise train.keep_last for future runs")
    return found


def average_checkpoints(paths: list[Path]) -> dict[str, Any]:
    """The element-wise mean of several checkpoints' weights, as a weights-only checkpoint.

    Refuses checkpoints of different shapes, vocabularies or tokenizers. The result keeps the
    first checkpoint's config and tokenizer and can be translated with like any other.
    """
    if len(paths) < 1:
        raise CheckpointError("average: no checkpoints given")
    first_path = paths[0]
    first = load_checkpoint(first_path)
    total = {k: v.detach().to(torch.float64).clone() for k, v in first["model"].items()}
    for p in paths[1:]:
        other = load_checkpoint(p)
        if other["tokenizer"] != first["tokenizer"]:
            raise CheckpointError(f"average: {p} and {first_path} use different tokenizers/vocabularies")
        if set(other["model"]) != set(total):
            raise CheckpointError(f"average: {p} and {first_path} are different models (parameter names differ)")
        for k, v in other["model"].items():
            if v.shape != total[k].shape:
                raise CheckpointError(
                    f"average: {p} and {first_path} differ in shape at {k}: {tuple(v.shape)} vs {tuple(total[k].shape)}"
                )
            total[k] += v.to(torch.float64)
    model = {k: (v / len(paths)).to(first["model"][k].dtype) for k, v in total.items()}
    return {
        "config": first["config"],
        "tokenizer": first["tokenizer"],
        "model": model,
        "step": first.get("step", 0),
        "averaged_from": [str(p) for p in paths],
    }
