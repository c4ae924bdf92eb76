"""The weights' moving average (train.ema_decay): its update, what checkpoints hold, exact resume."""

import json

import pytest
import torch

from mtkit.model.checkpoint import load_checkpoint
from mtkit.model.loading import load_model
from mtkit.training.ema import EMA
from mtkit.training.train import train
from tests.tinyrun import tiny_config

EMA_ON = ["train.ema_decay=0.9"]


def test_update_is_the_moving_average_with_its_ramp():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    start = [p.detach().clone() for p in model.parameters()]
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(step=1)  # ramp: min(0.5, 2 / 11) = 2/11 of the old average stays
    for a, s, w in zip(ema.model.parameters(), start, model.parameters(), strict=True):
        torch.testing.assert_close(a, 2 / 11 * s + 9 / 11 * w)
    before = [a.clone() for a in ema.model.parameters()]
    ema.update(step=100)  # ramp over: the configured decay
    for a, b, w in zip(ema.model.parameters(), before, model.parameters(), strict=True):
        torch.testing.assert_close(a, 0.5 * b + 0.5 * w)
        assert not a.requires_grad
    assert all(w.requires_grad for w in model.parameters())  # the training weights are untouched


@pytest.mark.slow
def test_checkpoints_serve_the_average_and_validation_scores_it(tmp_path):
    train(tiny_config(tmp_path, extra=EMA_ON))
    state = load_checkpoint(tmp_path / "run/last.pt")
    average, weights = state["model"], state["train_weights"]
    assert average.keys() == weights.keys()
    assert any(not torch.equal(average[k], weights[k]) for k in average)
    # What translate/evaluate load is the average.
    model, _, _ = load_model(tmp_path / "run/last.pt")
    assert all(torch.equal(v, average[k]) for k, v in model.state_dict().items())
    # The logged dev loss is the average's, not the training weights'.
    from mtkit.data.pairs import prepare_data
    from mtkit.training.rundir import prepare_run
    from mtkit.training.validate import Validator

    cfg = tiny_config(tmp_path, extra=EMA_ON)
    run = prepare_run(cfg, for_training=False)
    _, valid = prepare_data(cfg.data, run.tokenizer, run.dir / "cache")
    result = Validator(valid, run.tokenizer, cfg, "cpu").run(model)
    logged = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").open()]
    last_valid = [e for e in logged if e["event"] == "valid"][-1]
    assert abs(result["valid_loss"] - last_valid["valid_loss"]) < 1e-6
    assert result["bleu"] == last_valid["bleu"]


@pytest.mark.slow
def test_resume_with_ema_equals_uninterrupted(tmp_path):
    """Both the training weights and the average end bit-identical to a run that never stopped."""
    train(tiny_config(tmp_path, "straight", EMA_ON))
    train(tiny_config(tmp_path, "stopped", [*EMA_ON, "train.max_steps=10"]))
    assert train(tiny_config(tmp_path, "stopped", EMA_ON))["step"] == 20
    a, b = load_checkpoint(tmp_path / "straight/last.pt"), load_checkpoint(tmp_path / "stopped/last.pt")
    for key in ("model", "train_weights"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)


@pytest.mark.slow
def test_off_by_default_keeps_one_set_of_weights(tmp_path):
    train(tiny_config(tmp_path, extra=["train.max_steps=10"]))
    assert "train_weights" not in load_checkpoint(tmp_path / "run/last.pt")
