"""Training: schedule, artifacts, exact resume, refusals, NaN and signal handling."""

import json
import math
import os
import signal

import pytest
import torch

from mtkit.config import load_config
from mtkit.data.tokenizer import PAD_ID
from mtkit.errors import ConfigError, TrainingError
from mtkit.model.checkpoint import load_checkpoint
from mtkit.training.budget import budget_used, make_time_plan, time_used
from mtkit.training.interrupt import Interrupted
from mtkit.training.schedule import cooldown_factor, inverse_sqrt_lr
from mtkit.training.train import train
from tests.tinyrun import checkpoint_weights, tiny_config, tiny_overrides


def test_inverse_sqrt_schedule_shape():
    lr, w = 1e-3, 100
    assert inverse_sqrt_lr(1, lr, w) == pytest.approx(lr / 100)
    assert inverse_sqrt_lr(50, lr, w) == pytest.approx(lr / 2)  # linear warmup
    assert inverse_sqrt_lr(100, lr, w) == pytest.approx(lr)  # peak at warmup_steps
    assert inverse_sqrt_lr(400, lr, w) == pytest.approx(lr / 2)  # lr * sqrt(100 / 400)
    rates = [inverse_sqrt_lr(s, lr, w) for s in range(1, 1000)]
    assert max(rates) == pytest.approx(lr) and rates.index(max(rates)) == 99
    assert all(a < b for a, b in zip(rates[:99], rates[1:100]))  # rising during warmup
    assert all(a >= b for a, b in zip(rates[99:], rates[100:]))  # then never rising
    assert inverse_sqrt_lr(4, lr, 0) == pytest.approx(lr / 2)  # no warmup: lr / sqrt(step)


def test_cooldown_takes_the_rate_linearly_to_zero_over_the_last_part():
    assert [cooldown_factor(d, 0.0) for d in (0.0, 0.9, 1.0)] == [1.0, 1.0, 1.0]  # off: the paper
    assert [cooldown_factor(d, 0.25) for d in (0.0, 0.5, 0.75, 0.875, 1.0)] == [1.0, 1.0, 1.0, 0.5, 0.0]
    assert cooldown_factor(0.5, 1.0) == 0.5  # the whole budget


class Sampler:
    def __init__(self, epoch: int, position: int, batches: int):
        self.state, self.batches = {"epoch": epoch, "position": position}, batches

    def state_dict(self):
        return self.state

    def __len__(self):
        return self.batches


def test_budget_used_is_that_of_the_budget_that_ends_first():
    t = load_config(None, ["data.train.src=a", "data.train.tgt=b", "train.max_steps=100"]).train
    assert budget_used(t, 10, 0.5, Sampler(0, 10, 50)) == 0.5  # time: half of train.max_time
    assert budget_used(t, 80, 0.0, Sampler(1, 30, 50)) == 0.8  # steps: 80 of 100
    t = load_config(None, ["data.train.src=a", "data.train.tgt=b", "train.max_steps=null",
                           "train.max_epochs=4"]).train
    assert budget_used(t, 80, 0.0, Sampler(1, 30, 50)) == pytest.approx(1.6 / 4)  # epochs
    assert budget_used(t, 999, 1.65, Sampler(9, 0, 50)) == 1.0  # never past the end


def test_time_budget_becomes_a_plan_in_updates_where_the_cooldown_begins():
    # cooldown 0.2 over 100 s: no plan before 80 s; at 80 s and update 400, having made 300
    # updates in the 60 s since this call began (5/s), the last 20 s allow 100 more: end at 500.
    assert make_time_plan(390, 79.9, 100.0, 0.2, since=(100, 20.0)) is None
    plan = make_time_plan(400, 80.0, 100.0, 0.2, since=(100, 20.0))
    assert plan == {"step": 400, "fraction": 0.8, "end_step": 500, "budget_s": 100.0, "updates_per_s": 5.0}
    # From the plan on the clock no longer counts: the fraction grows with updates, 1 at update 500.
    assert [time_used(plan, s, 999.0, 100.0) for s in (400, 450, 500)] == pytest.approx([0.8, 0.9, 1.0])
    assert time_used(None, 7, 30.0, 60.0) == 0.5 and time_used(None, 7, 30.0, math.inf) == 0.0
    # Fewer than 10 updates in this call (just resumed): the whole run's rate, 400 in 80 s.
    assert make_time_plan(400, 80.0, 100.0, 0.2, since=(395, 79.0))["end_step"] == 500
    # No cooldown: planned at 90% of the time.
    assert make_time_plan(400, 89.0, 100.0, 0.0, since=(0, 0.0)) is None
    assert make_time_plan(400, 90.0, 100.0, 0.0, since=(0, 0.0))["end_step"] == 444


@pytest.mark.slow
def test_cooldown_in_training_and_exact_resume_inside_it(tmp_path, monkeypatch):
    """With cooldown 0.5 of 20 steps, the logged rate is inverse-sqrt times the linear fall from
    step 11; a run interrupted at step 15 and resumed ends with the weights of one that never stopped."""
    extra = ["train.cooldown=0.5", "train.log_every=1"]
    train(tiny_config(tmp_path, "straight", extra))
    events = [json.loads(x) for x in (tmp_path / "straight/metrics.jsonl").read_text().splitlines()]
    rates = {e["step"]: e["lr"] for e in events if e["event"] == "train"}
    assert sorted(rates) == list(range(1, 21))
    for step, lr in rates.items():
        expected = inverse_sqrt_lr(step, 0.003, 10) * min(1.0, (1 - (step - 1) / 20) / 0.5)
        assert lr == pytest.approx(expected), step
    assert rates[20] == pytest.approx(inverse_sqrt_lr(20, 0.003, 10) / 10)  # the last update: 1/10 of it

    sigint_at(monkeypatch, 15)
    with pytest.raises(Interrupted):
        train(tiny_config(tmp_path, "stopped", extra))
    monkeypatch.undo()
    assert train(tiny_config(tmp_path, "stopped", extra))["step"] == 20
    a, b = checkpoint_weights(tmp_path / "straight/last.pt"), checkpoint_weights(tmp_path / "stopped/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_optimizer_is_fused_adam_with_the_papers_settings(tmp_path, weight_decay):
    from mtkit.model.transformer import Transformer
    from mtkit.training.step import make_optimizer

    cfg = tiny_config(tmp_path, extra=[f"train.weight_decay={weight_decay}"])
    model = Transformer(cfg.model, 48, 48)
    optimizer = make_optimizer(model, cfg)
    assert type(optimizer) is (torch.optim.AdamW if weight_decay else torch.optim.Adam)
    assert optimizer.defaults["fused"] is True
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-9


@pytest.mark.slow
def test_training_writes_every_artifact(tmp_path):
    cfg = tiny_config(tmp_path)
    summary = train(cfg)
    run = tmp_path / "run"
    assert summary["step"] == 20
    for name in ("last.pt", "best.pt", "config.yaml", "train.log", "metrics.jsonl", "tokenizer/spm.model"):
        assert (run / name).exists(), name
    assert sorted(p.name for p in run.glob("step-*.pt")) == ["step-10.pt", "step-20.pt"]
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trains = [e for e in events if e["event"] == "train"]
    valids = [e for e in events if e["event"] == "valid"]
    assert [e["step"] for e in trains] == [5, 10, 15, 20]
    for e in trains:
        assert {"step", "loss", "lr", "tokens_per_s", "elapsed_s"} <= set(e)
        assert e["tokens_per_s"] > 0 and math.isfinite(e["loss"])
    assert [e["step"] for e in valids] == [10, 20]
    for e in valids:
        assert {"step", "valid_loss", "bleu", "chrf"} <= set(e)
    state = load_checkpoint(run / "last.pt")
    assert state["step"] == 20 and state["config"]["model"]["d_model"] == 32
    assert set(state["tokenizer"]) == {"src"}  # joint vocabulary: one model
    assert "optimizer" in state and "rng" in state and "data" in state


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
    """A run stopped at step 10 and resumed ends with exactly the weights of one that never stopped."""
    train(tiny_config(tmp_path, "straight"))
    train(tiny_config(tmp_path, "stopped", ["train.max_steps=10"]))
    summary = train(tiny_config(tmp_path, "stopped"))  # max_steps 20: resumes at 10
    assert summary["step"] == 20
    a, b = checkpoint_weights(tmp_path / "straight/last.pt"), checkpoint_weights(tmp_path / "stopped/last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = (tmp_path / "stopped/train.log").read_text()
    assert "resumed from" in log


@pytest.mark.slow
def test_finished_run_does_nothing_more(tmp_path):
    train(tiny_config(tmp_path))
    before = checkpoint_weights(tmp_path / "run/last.pt")
    assert train(tiny_config(tmp_path))["step"] == 20
    after = checkpoint_weights(tmp_path / "run/last.pt")
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_changed_config_is_refused_unless_overwrite(tmp_path):
    train(tiny_config(tmp_path, extra=["train.max_steps=10"]))
    with pytest.raises(TrainingError) as e:
        train(tiny_config(tmp_path, extra=["model.d_ff=128"]))
    assert "model.d_ff: saved 64, given 128" in str(e.value) and "--overwrite" in str(e.value)
    summary = train(tiny_config(tmp_path, extra=["model.d_ff=128", "train.max_steps=10"]), overwrite=True)
    assert summary["step"] == 10
    assert load_checkpoint(tmp_path / "run/last.pt")["config"]["model"]["d_ff"] == 128


@pytest.mark.slow
def test_moved_run_dir_resumes_where_it_now_is(tmp_path):
    import shutil

    train(tiny_config(tmp_path, "old", ["train.max_steps=10"]))
    shutil.move(tmp_path / "old", tmp_path / "new")
    summary = train(tiny_config(tmp_path, "new"))
    assert summary["step"] == 20 and "resumed from" in (tmp_path / "new/train.log").read_text()
    assert not (tmp_path / "old").exists()


@pytest.mark.slow
def test_init_from_fine_tunes(tmp_path):
    train(tiny_config(tmp_path, "parent", ["train.max_steps=10"]))
    parent = load_checkpoint(tmp_path / "parent/last.pt")
    # Fine-tuning keeps the parent's tokenizer: a config that asks for another vocabulary is one error line.
    cfg = tiny_config(tmp_path, "child", ["train.max_steps=1", "train.eval_every=100", "train.lr=1e-9",
                                          "tokenizer.vocab_size=40"])
    with pytest.raises(ConfigError, match=r"tokenizer.vocab_size: 40 here, \d+ in the checkpoint\); remove"):
        train(cfg, init_from=str(tmp_path / "parent/last.pt"))
    cfg = tiny_config(tmp_path, "child", ["train.max_steps=1", "train.eval_every=100", "train.lr=1e-9"])
    train(cfg, init_from=str(tmp_path / "parent/last.pt"))
    child = load_checkpoint(tmp_path / "child/last.pt")
    assert child["tokenizer"] == parent["tokenizer"]
    # one update at a tiny learning rate: the weights stay (almost) the parent's
    assert all(torch.allclose(parent["model"][k], child["model"][k], atol=1e-5) for k in parent["model"])
    # The model comes from the checkpoint: a config that sets it otherwise is one error naming the keys.
    with pytest.raises(ConfigError, match=r"model.d_ff: 128 here, 64 in the checkpoint\); remove those keys"):
        train(tiny_config(tmp_path, "other", ["model.d_ff=128"]), init_from=str(tmp_path / "parent/last.pt"))


@pytest.mark.slow
def test_nan_loss_is_skipped_then_stops(tmp_path, monkeypatch):
    from mtkit.model import transformer as model_mod

    real_forward = model_mod.Transformer.forward
    calls = {"n": 0}

    def poisoned(self, src, tgt_in, features=False):
        calls["n"] += 1
        out = real_forward(self, src, tgt_in, features)
        return out * float("nan") if calls["n"] > 12 else out

    monkeypatch.setattr(model_mod.Transformer, "forward", poisoned)
    with pytest.raises(TrainingError, match="NaN/inf"):
        train(tiny_config(tmp_path, extra=["train.max_bad_steps=3"]))
    state = load_checkpoint(tmp_path / "run/last.pt")  # the step-10 save, from before the NaNs
    assert state["step"] == 10
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def sigint_at(monkeypatch, step: int) -> None:
    """Make training send itself SIGINT right after it logs update `step` (undo: monkeypatch.undo())."""
    import mtkit.training.trainer as trainer_mod

    real = trainer_mod.log_train

    def log_and_interrupt(metrics, progress, *args):
        real(metrics, progress, *args)
        if progress.step == step:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(trainer_mod, "log_train", log_and_interrupt)


@pytest.mark.slow
def test_sigint_saves_and_resume_works(tmp_path, monkeypatch):
    sigint_at(monkeypatch, 5)
    with pytest.raises(Interrupted) as e:
        train(tiny_config(tmp_path))
    assert e.value.exit_code == 130
    assert load_checkpoint(tmp_path / "run/last.pt")["step"] == 5
    monkeypatch.undo()
    assert train(tiny_config(tmp_path))["step"] == 20


@pytest.mark.slow
def test_max_epochs_budget(tmp_path):
    cfg = tiny_config(tmp_path, extra=["train.max_steps=null", "train.max_epochs=1"])
    summary = train(cfg)
    assert "max_epochs" in summary["reason"]
    events = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    assert summary["step"] == start["batches_per_epoch"]  # exactly one pass, not one batch more


@pytest.mark.slow
def test_upsampled_pairs_count_factor_times_per_epoch(tmp_path):
    one_epoch = ["train.max_steps=null", "train.max_epochs=1"]
    plain = train(tiny_config(tmp_path, "plain", one_epoch))
    up = train(tiny_config(tmp_path, "up", [*one_epoch, "data.upsample_pattern=^gu\\b", "data.upsample_factor=3"]))
    sources = (tmp_path / "data" / "train.src").read_text().splitlines()
    picked = sum(s.split()[0] == "gu" for s in sources)
    assert 0 < picked < len(sources)
    assert (f"upsampling: {picked} of {len(sources)} pairs (a source matching '^gu\\\\b') count 3 times:"
            f" {len(sources) + 2 * picked} rows per epoch") in (tmp_path / "up" / "train.log").read_text()
    assert up["step"] > plain["step"]  # the epoch holds more batches
    train(tiny_config(tmp_path, "none", [*one_epoch, "data.upsample_pattern=^nothing", "data.upsample_factor=3"]))
    assert "WARNING upsampling: 0 of 400 pairs (a source matching '^nothing') count 3 times: 400 rows per epoch:" \
        " nothing to repeat" in (tmp_path / "none" / "train.log").read_text()


@pytest.mark.slow
def test_upsample_schedule_moves_weight_over_the_epochs(tmp_path):
    """data.upsample_schedule [1, 3]: epoch 1 holds every pair once, epoch 2 and later the picked ones 3 times."""
    two_epochs = ["train.max_steps=null", "train.max_epochs=2", "data.upsample_pattern=^gu\\b"]
    plain = train(tiny_config(tmp_path, "plain", ["train.max_steps=null", "train.max_epochs=1"]))
    up = train(tiny_config(tmp_path, "up", [*two_epochs, "data.upsample_factor=3"]))
    sched = train(tiny_config(tmp_path, "sched", [*two_epochs, "data.upsample_schedule=[1, 3]"]))
    sources = (tmp_path / "data" / "train.src").read_text().splitlines()
    picked = sum(s.split()[0] == "gu" for s in sources)
    assert (f"upsampling: {picked} of {len(sources)} pairs (a source matching '^gu\\\\b') count 1 / 3 times in"
            f" epochs 1 / 2+: {len(sources)} / {len(sources) + 2 * picked} rows per epoch") \
        in (tmp_path / "sched" / "train.log").read_text()
    assert sched["step"] == plain["step"] + up["step"] // 2  # one plain epoch, then one upsampled


@pytest.mark.slow
def test_time_budget_counts_the_training_of_every_call(tmp_path):
    """A checkpoint carries the training time; a resumed run whose time is spent stops at once."""
    train(tiny_config(tmp_path, extra=["train.max_steps=10"]))
    spent = load_checkpoint(tmp_path / "run/last.pt")["progress"]["train_seconds"]
    assert spent > 0
    summary = train(tiny_config(tmp_path, extra=[f"train.max_time={spent / 2:.3f}"]))  # max_steps 20 again
    assert summary["step"] == 10 and "max_time" in summary["reason"]
    summary = train(tiny_config(tmp_path, extra=[f"train.max_time={spent + 3600:.3f}"]))
    assert summary["step"] == 20 and "max_steps" in summary["reason"]
    assert load_checkpoint(tmp_path / "run/last.pt")["progress"]["train_seconds"] > spent


@pytest.mark.slow
def test_early_stopping_holds_across_resume(tmp_path):
    cfg = tiny_config(tmp_path, extra=["train.max_steps=60", "train.patience=1", "train.lr=1e-9",
                                       "train.warmup_steps=0"])
    first = train(cfg)
    assert "early stopping" in first["reason"] and first["step"] == 20  # no gain at step 20
    again = train(cfg)
    assert "early stopping" in again["reason"] and again["step"] == 20


@pytest.mark.slow
def test_tiny_reverse_config_learns_the_task(tmp_path):
    """configs/tiny-reverse.yaml reaches >= 95% exact match on held-out sentences within its budget."""
    from mtkit.data.synthetic import write_task
    from mtkit.decoding.translate import translate_lines
    from mtkit.model.loading import load_model

    data = tmp_path / "data"
    write_task(data, task="reverse", train=20_000, dev=200, test=200, seed=1)
    cfg = load_config("configs/tiny-reverse.yaml", [
        f"run_dir={tmp_path / 'run'}",
        f"data.train.src={data / 'train.src'}", f"data.train.tgt={data / 'train.tgt'}",
        f"data.valid.src={data / 'dev.src'}", f"data.valid.tgt={data / 'dev.tgt'}",
    ])
    train(cfg)
    model, tok, saved = load_model(tmp_path / "run", "cpu")
    src = (data / "test.src").read_text().splitlines()
    ref = (data / "test.tgt").read_text().splitlines()
    hyps = [t[0].text for t in translate_lines(model, tok, src, saved.decode)]
    exact = sum(h == r for h, r in zip(hyps, ref)) / len(ref)
    assert exact >= 0.95, f"exact match {exact:.3f}"


def test_tiny_config_is_a_run_of_its_own_on_its_own_data(tmp_path):
    """What the other tests build on: a run dir under tmp_path, data files that exist (400 training
    pairs, 30 dev), fp32 pinned so every CPU computes the same numbers, and each override applied."""
    cfg = tiny_config(tmp_path, "mine", ["train.max_steps=7"])
    assert cfg.run_dir == str(tmp_path / "mine") and cfg.train.max_steps == 7
    assert (cfg.train.precision, cfg.decode.precision) == ("fp32", "fp32")
    files = (cfg.data.train[0].src, cfg.data.train[0].tgt, cfg.data.valid.src, cfg.data.valid.tgt)
    assert [len(open(f, encoding="utf-8").read().splitlines()) for f in files] == [400, 400, 30, 30]
    assert all(o in tiny_overrides(tmp_path) for o in ("model.d_model=32", "train.threads=1"))


@pytest.mark.parametrize("clip_norm", [0.0, 1e-3])
def test_clip_norm_clips_the_global_gradient_norm_before_adam_steps(tmp_path, clip_norm):
    """NOTE (differs from paper): train.clip_norm N scales the gradient to a global norm of at most
    N before the optimizer sees it; 0 leaves it as computed (the paper). The norm is measured at the
    moment Adam steps."""
    from mtkit.data.padding import make_batch
    from mtkit.model.transformer import Transformer
    from mtkit.training.distributed import World
    from mtkit.training.step import Outcome, make_learner

    cfg = tiny_config(tmp_path, extra=[f"train.clip_norm={clip_norm}"])
    torch.manual_seed(0)
    learner = make_learner(Transformer(cfg.model, 48, 48), cfg, "cpu", "fp32", World())
    seen = []
    real_step = learner.optimizer.step

    def step(*args, **kwargs):
        grads = [p.grad for p in learner.model.parameters() if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return real_step(*args, **kwargs)

    learner.optimizer.step = step
    batch = make_batch([[5, 6, 7, 8], [9, 10]], [[11, 12, 13], [14]])
    outcome, loss, _ = learner.step([batch], n_tokens=int((batch["tgt_out"] != PAD_ID).sum()))
    assert outcome is Outcome.APPLIED and math.isfinite(loss)
    if clip_norm:
        assert seen == [pytest.approx(clip_norm, rel=1e-4)]
    else:
        assert seen[0] > 10 * 1e-3  # as computed: far above the other case's limit


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(tmp_path, precision):
    """autocast (and GradScaler for fp16) run on CPU; weights stay fp32 and finite."""
    summary = train(tiny_config(tmp_path, extra=[f"train.precision={precision}", "train.max_steps=10"]))
    assert summary["step"] == 10
    state = load_checkpoint(tmp_path / "run/last.pt")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in state["model"].values())
    assert (state["scaler"] is not None) == (precision == "fp16")


@pytest.mark.slow
def test_late_dropout_trains_the_first_epochs_without_dropout(tmp_path):
    """train.dropout_after_epochs: 1 trains epoch 1 exactly as dropout 0 does (no random masks
    drawn), and uses model.dropout from epoch 2 on; resuming inside epoch 2 keeps it on."""
    late = ["model.dropout=0.3", "train.dropout_after_epochs=1", "train.max_steps=null"]
    train(tiny_config(tmp_path, "late1", [*late, "train.max_epochs=1"]))
    train(tiny_config(tmp_path, "plain1", ["model.dropout=0", "train.max_steps=null", "train.max_epochs=1"]))
    a, b = checkpoint_weights(tmp_path / "late1/last.pt"), checkpoint_weights(tmp_path / "plain1/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = (tmp_path / "late1/train.log").read_text()
    assert "dropout off from epoch 1" in log and "dropout on" not in log

    train(tiny_config(tmp_path, "late2", [*late, "train.max_epochs=2"]))
    train(tiny_config(tmp_path, "plain2", ["model.dropout=0", "train.max_steps=null", "train.max_epochs=2"]))
    a, b = checkpoint_weights(tmp_path / "late2/last.pt"), checkpoint_weights(tmp_path / "plain2/last.pt")
    assert not all(torch.equal(a[k], b[k]) for k in a)  # epoch 2 had dropout
    assert "dropout on from epoch 2" in (tmp_path / "late2/train.log").read_text()
    steps = load_checkpoint(tmp_path / "late2/last.pt")["step"]
    train(tiny_config(tmp_path, "late2r", [*late, "train.max_epochs=2", f"train.max_steps={steps - 2}"]))
    train(tiny_config(tmp_path, "late2r", [*late, "train.max_epochs=2"]))  # resumes in epoch 2
    c = checkpoint_weights(tmp_path / "late2r/last.pt")
    assert all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.slow
def test_averaged_checkpoint_as_last_pt_is_one_clear_error(tmp_path):
    """A checkpoint without training state (what `mtkit average` writes) put in as last.pt."""
    from mtkit.errors import CheckpointError
    from mtkit.model.checkpoint import save_checkpoint
    from mtkit.tools.average import average_checkpoints

    cfg = tiny_config(tmp_path, extra=["train.max_steps=4", "train.eval_every=2", "train.keep_last=2"])
    train(cfg)
    save_checkpoint(tmp_path / "run/last.pt", average_checkpoints([tmp_path / "run/step-2.pt", tmp_path / "run/step-4.pt"]))
    with pytest.raises(CheckpointError, match="holds weights but no training state.*--init-from"):
        train(tiny_config(tmp_path, extra=["train.max_steps=6", "train.eval_every=2"]))


@pytest.mark.slow
def test_changing_the_dev_subset_on_resume_restarts_best_and_patience(tmp_path):
    """train.valid_max_sentences may change on resume, but then best BLEU and patience compare
    scores of different dev subsets: they start afresh, with a warning."""
    train(tiny_config(tmp_path, extra=["train.max_steps=10", "train.eval_every=5", "train.valid_max_sentences=20"]))
    best_before = load_checkpoint(tmp_path / "run/last.pt")["progress"]["best_bleu"]
    train(tiny_config(tmp_path, extra=["train.max_steps=15", "train.eval_every=5", "train.valid_max_sentences=8"]))
    log = (tmp_path / "run/train.log").read_text()
    assert (f"train.valid_max_sentences changed (20 -> 8): the best dev bleu ({best_before:.2f}) and patience"
            " start afresh") in log
    assert "valid step 15:" in log and "*best*" in log.split("valid step 15:")[1].splitlines()[0]


@pytest.mark.slow
def test_resume_refuses_training_files_changed_in_place(tmp_path):
    """The saved data position means nothing on other data: a checkpoint carries the training
    files' hashes (its manifest) and resuming on changed files is one error naming them."""
    from mtkit.errors import DataError

    train(tiny_config(tmp_path, extra=["train.max_steps=4", "train.eval_every=2"]))
    src = tmp_path / "data" / "train.src"
    original = src.read_bytes()
    lines = original.decode().splitlines()
    src.write_text("\n".join(lines[1:] + lines[:1]) + "\n")  # same lines, another order
    with pytest.raises(DataError, match=r"the training data changed since it was saved \(.*train\.src\).*--overwrite"):
        train(tiny_config(tmp_path, extra=["train.max_steps=6", "train.eval_every=2"]))
    src.write_bytes(original)  # restored: resumes
    assert train(tiny_config(tmp_path, extra=["train.max_steps=6", "train.eval_every=2"]))["step"] == 6


@pytest.mark.slow
def test_fp16_overflow_skips_are_not_counted_as_updates(tmp_path, monkeypatch):
    """A loss scale far too high overflows the fp16 gradients for the first batches: the scaler
    lowers it, and those batches are not updates (the step count matches Adam's own count)."""
    import functools

    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(real, init_scale=2.0**40))
    summary = train(tiny_config(tmp_path, extra=["train.precision=fp16", "train.max_steps=5", "train.eval_every=5"]))
    state = load_checkpoint(tmp_path / "run/last.pt")
    assert summary["step"] == state["progress"]["step"] == 5
    adam_steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {5}  # every counted step was an applied update
    assert state["scaler"]["scale"] < 2.0**40  # it did overflow and back off
    drawn = state["data"]["epoch"] * 1000 + state["data"]["position"]
    assert drawn > 5  # the overflowing batches were drawn but did not count


@pytest.mark.slow
def test_accumulation_groups_end_with_their_epoch(tmp_path):
    """accum_steps 4 over an epoch of N batches (N not a multiple of 4): max_epochs 1 makes
    ceil(N / 4) updates and stops on the epoch's last batch, never drawing from epoch 2."""
    summary = train(tiny_config(tmp_path, extra=["train.accum_steps=4", "train.max_steps=null", "train.max_epochs=1",
                                                 "train.eval_every=1000"]))
    start = json.loads((tmp_path / "run/metrics.jsonl").read_text().splitlines()[0])
    n = start["batches_per_epoch"]
    assert n % 4 != 0, "the test needs a partial last group"
    state = load_checkpoint(tmp_path / "run/last.pt")
    assert summary["step"] == -(-n // 4)
    assert (state["data"]["epoch"], state["data"]["position"]) == (0, n)


def test_resume_drops_the_metrics_of_replayed_steps(tmp_path):
    from mtkit.training.runlog import drop_metrics_after, read_metrics

    path = tmp_path / "metrics.jsonl"
    events = [{"event": "start", "step": 0}, *({"event": "train", "step": s} for s in range(1, 14)),
              {"event": "valid", "step": 10}]
    path.write_text("".join(json.dumps(e) + "\n" for e in events) + '{"event": "tra')  # torn by a kill
    assert drop_metrics_after(path, 10) == 4  # steps 11-13 and the torn line
    assert [e["step"] for e in read_metrics(path)] == [0, *range(1, 11), 10]
    assert drop_metrics_after(path, 10) == 0
