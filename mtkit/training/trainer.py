"""The Trainer: one run's training objects, and the loop over updates, in pieces named for what they do.

JoeyNMT's TrainManager idea without callbacks or a framework. `Trainer.build` makes the model,
optimizer, sampler and validator and restores a resumed run; `run` is the loop: while no stop
reason holds, draw the next group of batches, set the learning rate, step, then after an update
count it, log, and validate and save every train.eval_every updates; `finish` saves the last state
and says why training ended. One optimizer update itself is step.py's; the set-up around the loop
(processes, run dir, data, logs) is train.py's.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from typing import Any

import datasets
import torch

from mtkit.config import Config
from mtkit.configcheck import parse_duration
from mtkit.data.batching import TokenBatchSampler
from mtkit.data.mixing import CorpusMix
from mtkit.data.padding import make_batch
from mtkit.data.pairs import TrainPairs
from mtkit.data.tokenizer import PAD_ID
from mtkit.errors import TrainingError
from mtkit.hardware import resolve_precision
from mtkit.memory import memory_line, note_memory, peak_memory_mb
from mtkit.model.transformer import Transformer
from mtkit.training import distributed, manifest
from mtkit.training.budget import (
    Stop,
    adopt_time_plan,
    budget_used,
    make_time_plan,
    stops_that_hold,
    time_used,
)
from mtkit.training.curves import refresh_run_curves
from mtkit.training.distributed import World
from mtkit.training.ema import EMA, make_ema
from mtkit.training.interrupt import Interrupted, StopFlag
from mtkit.training.rundir import Run, Saver
from mtkit.training.runlog import MetricsWriter, format_seconds, progress_bar
from mtkit.training.sampling import draw_group, epoch_sampler, mix_line, pad_multiple, rows
from mtkit.training.schedule import cooldown_factor, inverse_sqrt_lr
from mtkit.training.state import Progress, restore, rng_state, seed_everything
from mtkit.training.step import Learner, Outcome, make_learner, make_optimizer, make_scaler
from mtkit.training.validate import Validator

log = logging.getLogger("mtkit")


class Trainer:
    """Holds the model (through its Learner), optimizer, scaler, sampler, progress and world of one run."""

    def __init__(self, cfg: Config, run: Run, world: World, device: str, learner: Learner,
                 sampler: TokenBatchSampler, mix: CorpusMix | None, train_ds: datasets.Dataset, progress: Progress,
                 ema: EMA | None,
                 validator: Validator | None, metrics: MetricsWriter, run_manifest: dict | None):
        self.cfg, self.t, self.run_dir, self.world, self.device = cfg, cfg.train, run.dir, world, device
        self.learner, self.sampler, self.mix, self.train_ds, self.progress = learner, sampler, mix, train_ds, progress
        self.ema, self.validator, self.metrics, self.manifest = ema, validator, metrics, run_manifest
        self.served = ema.model if ema is not None else learner.model  # what validation scores and checkpoints hold
        self.saver = Saver(run.dir, cfg, run.tokenizer, self.t.keep_last)
        self.saved_step = progress.step
        self.budget_s = parse_duration(self.t.max_time) if self.t.max_time is not None else math.inf
        self.stop_flag = StopFlag(escalate=not world.distributed)
        self.pad_to = pad_multiple(cfg, device)
        self.bad_steps = 0  # skipped updates in a row (non-finite or out of memory)

    @classmethod
    def build(cls, cfg: Config, run: Run, train: TrainPairs, valid_ds: datasets.Dataset | None,
              world: World, device: str, metrics: MetricsWriter) -> Trainer:
        """Everything a run trains with, resumed from the run dir's checkpoint when it has one."""
        t, tok = cfg.train, run.tokenizer
        seed_everything(cfg.seed)
        sampler, mix = epoch_sampler(cfg, train, world, device)
        # auto -> bf16 where the device multiplies it natively, fp32 elsewhere (hardware.py says why).
        precision, why = resolve_precision(t.precision, device, warn=world.is_main)
        log.info("precision: %s", why)
        run_manifest = None  # what the run trains from and on (manifest.py): in every checkpoint and manifest.json
        if world.is_main:
            run_manifest = manifest.build(cfg, tok, device, precision, world.size)
            if run.resume_state is not None:  # the saved data position only means something on the same data
                manifest.check_same_data(run.resume_state.get("manifest"), run_manifest, run.resume_path)
            manifest.write(run.dir, run_manifest)
        model = Transformer(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size, pad_id=PAD_ID).to(device)
        optimizer, scaler = make_optimizer(model, cfg), make_scaler(device, precision)
        progress = restore(run, cfg, world, model, optimizer, scaler, sampler)
        ema = make_ema(model, t.ema_decay, run.resume_state)  # None when off
        learner = make_learner(model, cfg, device, precision, world, optimizer, scaler)
        log.info("model: %s parameters, device %s, precision %s, %d threads%s",
                 f"{model.num_parameters():,}", device, precision, torch.get_num_threads(),
                 f", {world.size} processes (effective batch {world.size * t.accum_steps} x {t.batch_tokens} tokens)"
                 if world.distributed else "")
        metrics.write("start", step=progress.step, params=model.num_parameters(), device=device, precision=precision,
                      train_pairs=len(train.ds), batches_per_epoch=len(sampler), processes=world.size)
        validator = Validator(valid_ds, tok, cfg, device) if valid_ds is not None and world.is_main else None
        return cls(cfg, run, world, device, learner, sampler, mix, train.ds, progress, ema, validator, metrics,
                   run_manifest)

    def run(self) -> dict[str, Any]:
        """Train until a budget, early stopping or a signal ends the run; returns its summary."""
        self.start_clock()
        with self.stop_flag.installed():
            while (reason := self.stop_reason()) is None:
                self.plan_time()
                group, n_tokens = self.next_group()
                lr = self.set_lr()
                outcome, loss_sum, nll_sum = self.learner.step(group, n_tokens)
                if outcome is not Outcome.APPLIED:
                    self.skip(outcome, group)
                    continue
                self.after_update(loss_sum, nll_sum, n_tokens, lr)
                if self.progress.step % self.t.eval_every == 0:
                    self.validate_and_save()
        return self.finish(reason)

    def start_clock(self) -> None:
        """Time budgets count the training of every call, like steps: a run killed and resumed (with
        the same command) stops and cools down where an uninterrupted one would."""
        self.started = time.monotonic() - self.progress.train_seconds
        self.elapsed_s = self.progress.train_seconds
        self.since = (self.progress.step, self.progress.train_seconds)  # this call's start, for the rate of updates
        plan = self.progress.time_plan
        if plan is not None and plan["budget_s"] != self.budget_s:
            log.info("train.max_time changed to %s: the time plan made at update %d is replanned",
                     self.t.max_time, plan["step"])
            self.progress.time_plan = None
        self.window = {"loss": 0.0, "nll": 0.0, "tokens": 0, "t0": time.monotonic()}
        self.bar = progress_bar(self.t.max_steps, self.progress.step, "step") if self.world.is_main else None
        self.batches = iter(self.sampler)
        self.dropout_on = True  # the model as built; switched off while epoch < train.dropout_after_epochs
        self.learner.model.train()

    def stop_reason(self) -> Stop | None:
        """Why to stop now, agreed by all processes (time and signals may differ between them); None
        to go on. A signal saves last.pt and raises Interrupted."""
        elapsed = time.monotonic() - self.started
        out_of_time = time_used(self.progress.time_plan, self.progress.step, elapsed, self.budget_s) >= 1
        held = stops_that_hold(self.t, self.progress, self.sampler, self.validator is not None, out_of_time)
        mine = [int(reason in held) for reason in Stop] + [self.stop_flag.signum or 0, int(elapsed * 1000)]
        *agreed, signum, elapsed_ms = distributed.agree(self.world, mine, "max")
        self.elapsed_s = elapsed_ms / 1000
        if signum:
            if self.progress.step != self.saved_step:
                self.save("last")
            raise Interrupted(f"stopped by {signal.Signals(signum).name} at step {self.progress.step};"
                              f" saved {self.run_dir / 'last.pt'}. Resume with the same `mtkit train` command",
                              128 + signum)
        return next((reason for reason, held_somewhere in zip(Stop, agreed) if held_somewhere), None)

    def plan_time(self) -> None:
        """Turn train.max_time into updates once its clock reaches the plan point (budget.py)."""
        if self.budget_s < math.inf and self.progress.time_plan is None:
            plan = make_time_plan(self.progress.step, self.elapsed_s, self.budget_s, self.t.cooldown, self.since)
            adopt_time_plan(self.progress, plan, self.t, self.metrics)

    def next_group(self) -> tuple[list[dict[str, torch.Tensor]], int]:
        """One update's batches (train.accum_steps per process) and the target tokens of all of them
        on all processes, by which the loss is normalised."""
        drawn = draw_group(self.batches, self.sampler, self.t.accum_steps)  # [(epoch, batch indices)]
        self.switch_dropout(drawn[0][0])
        if self.mix is not None and len(self.mix.slices) > 1 and self.sampler.state_dict()["position"] == len(drawn):
            self.report_mix(drawn[0][0])  # the epoch's first update
        group = [make_batch(*rows(self.train_ds, ids), pad_to=self.pad_to) for _, ids in drawn]
        local_tokens = sum(int((b["tgt_out"] != PAD_ID).sum()) for b in group)
        (n_tokens,) = distributed.agree(self.world, [local_tokens], "sum")
        return group, n_tokens

    def switch_dropout(self, epoch: int) -> None:
        """NOTE (differs from paper): late dropout, off for the first train.dropout_after_epochs passes."""
        if self.dropout_on != (epoch >= self.t.dropout_after_epochs):
            self.dropout_on = not self.dropout_on
            self.learner.model.set_dropout(self.dropout_on)
            if self.cfg.model.dropout or self.cfg.model.attention_dropout:
                log.info("dropout %s from epoch %d", "on" if self.dropout_on else "off", epoch + 1)

    def report_mix(self, epoch: int) -> None:
        """Several corpora: how many pairs each gives this epoch, in the log and metrics.jsonl."""
        log.info("epoch %d draws %s", epoch + 1, mix_line(self.mix, epoch))
        self.metrics.write("epoch", step=self.progress.step, epoch=epoch, corpus_pairs=self.mix.counts(epoch))

    def set_lr(self) -> float:
        """The paper's schedule for the next update, times the cooldown over the budget's end."""
        step = self.progress.step
        lr = inverse_sqrt_lr(step + 1, self.t.lr, self.t.warmup_steps)
        if self.t.cooldown:
            time_fraction = time_used(self.progress.time_plan, step, self.elapsed_s, self.budget_s)
            lr *= cooldown_factor(budget_used(self.t, step, time_fraction, self.sampler), self.t.cooldown)
        for g in self.learner.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def skip(self, outcome: Outcome, group: list[dict[str, torch.Tensor]]) -> None:
        """A step that made no update: an fp16 overflow is normal (the step count and the schedule do
        not move); NaN/inf or out of memory are skipped up to train.max_bad_steps times in a row."""
        if outcome is Outcome.OVERFLOW:
            log.debug("fp16: gradient overflow after step %d; loss scale now %g", self.progress.step,
                      self.learner.scaler.get_scale())
            return
        self.bad_steps += 1
        if outcome is Outcome.OOM:
            shapes = ", ".join(str(tuple(b["src"].shape)) + "/" + str(tuple(b["tgt_in"].shape)) for b in group)
            log.warning("out of memory on a batch (src/tgt shapes %s); skipped it", shapes)
            if self.bad_steps > self.t.max_bad_steps or self.world.distributed:  # other ranks cannot skip in step
                raise TrainingError(f"out of memory {self.bad_steps} time(s); lower train.batch_tokens "
                                    f"(now {self.t.batch_tokens}) and resume with the same command") from None
            return
        log.warning("non-finite loss or gradient at step %d; skipped the update (%d/%d)",
                    self.progress.step + 1, self.bad_steps, self.t.max_bad_steps)
        if self.bad_steps > self.t.max_bad_steps:
            raise TrainingError(
                f"loss was NaN/inf {self.bad_steps} times; lower train.lr (now {self.t.lr}), raise"
                f" train.warmup_steps (now {self.t.warmup_steps}) or use precision fp32. The saved"
                f" checkpoints in {self.run_dir} are from before the problem")

    def after_update(self, loss_sum: float, nll_sum: float, n_tokens: int, lr: float) -> None:
        """Count the update, move the weights' average, and log."""
        self.bad_steps = 0
        self.progress.step += 1
        if self.ema is not None:
            self.ema.update(self.progress.step)
        self.progress.tokens_seen += n_tokens
        w = self.window
        w["loss"], w["nll"], w["tokens"] = w["loss"] + loss_sum, w["nll"] + nll_sum, w["tokens"] + n_tokens
        if self.bar is not None:
            self.bar.update(1)
            tok_s = w["tokens"] / max(time.monotonic() - w["t0"], 1e-9)
            self.bar.set_postfix(loss=f"{loss_sum / max(n_tokens, 1):.3f}", lr=f"{lr:.1e}", tok_s=f"{tok_s:.0f}",
                                 refresh=False)
        if self.progress.step % self.t.log_every == 0 and self.world.is_main:
            log_train(self.metrics, self.progress, w, lr, self.started, self.sampler)

    def validate_and_save(self) -> None:
        """Validate (rank 0), save last.pt (and best.pt when dev BLEU improved), redraw curves.png."""
        improved = self.validator is not None and self.validator.run_and_track(self.served, self.progress,
                                                                              self.metrics)
        self.save("best" if improved else "last")
        if self.world.is_main:
            refresh_run_curves(self.run_dir)  # curves.png, when matplotlib is installed
        self.learner.model.train()

    def save(self, kind: str) -> None:
        """Write last.pt on rank 0 with every process's random state ("best": best.pt too)."""
        distributed.check_in_sync(self.world, self.learner.model)
        self.progress.train_seconds = round(time.monotonic() - self.started, 3)
        rngs = distributed.gather(self.world, rng_state())  # every rank's, for an exact resume
        if self.world.is_main:
            model, scaler = self.learner.model, self.learner.scaler
            self.saver.save(kind, self.progress.step, {
                "model": self.served.state_dict(),
                **({"train_weights": model.state_dict()} if self.ema is not None else {}),
                "optimizer": self.learner.optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "data": self.sampler.state_dict(), "progress": vars(self.progress).copy(), "rng": rngs[0],
                "manifest": self.manifest,
                **({"rng_ranks": rngs} if self.world.distributed else {}),
            })
        self.saved_step = self.progress.step

    def finish(self, reason: Stop) -> dict[str, Any]:
        """Save the final state (unless this call trained nothing or the last update just saved),
        and say why training ended."""
        if self.progress.step != self.saved_step:
            improved = self.validator is not None and self.validator.run_and_track(self.served, self.progress,
                                                                                  self.metrics)
            self.save("best" if improved else "last")
        if self.world.is_main:
            refresh_run_curves(self.run_dir, force=True)
        elapsed = time.monotonic() - self.started
        memory = peak_memory_mb(self.device)
        why, p = reason.message(self.t), self.progress
        metric = self.cfg.train.best_metric
        best = "" if metric == "bleu" or p.best is None else f", best dev {metric} {p.best:.3f}"
        log.info("done: %s at step %d after %s; best dev BLEU %.2f%s; peak memory %s; checkpoints in %s",
                 why, p.step, format_seconds(elapsed), p.best_bleu, best, memory_line(memory), self.run_dir)
        self.metrics.write("end", step=p.step, reason=why, elapsed_s=round(elapsed, 1), best_bleu=p.best_bleu,
                           best_metric=metric, best=p.best,
                           **{f"peak_{k}_mb": v for k, v in memory.items()})
        return {"step": p.step, "reason": why, "best_bleu": p.best_bleu, "run_dir": str(self.run_dir)}


def log_train(metrics: MetricsWriter, progress: Progress, window: dict, lr: float, started: float,
              sampler: TokenBatchSampler) -> None:
    """One training log line and metrics event for the updates since the last one (`window`)."""
    now = time.monotonic()
    tokens = max(window["tokens"], 1)
    loss, nll = window["loss"] / tokens, window["nll"] / tokens
    tps = window["tokens"] / max(now - window["t0"], 1e-9)
    elapsed = now - started
    epoch = sampler.state_dict()["epoch"]
    log.info("step %d | epoch %d | loss %.3f | nll %.3f | ppl %.2f | lr %.2e | %.0f tok/s | %s",
             progress.step, epoch + 1, loss, nll, math.exp(min(nll, 50)), lr, tps, format_seconds(elapsed))
    metrics.write("train", step=progress.step, epoch=epoch, loss=round(loss, 5), nll=round(nll, 5),
                  ppl=round(math.exp(min(nll, 50)), 3), lr=lr, tokens_per_s=round(tps, 1),
                  elapsed_s=round(elapsed, 2))
    window.update(loss=0.0, nll=0.0, tokens=0, t0=now)
    note_memory()

