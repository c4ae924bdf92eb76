"""The training loop, written out top to bottom: no Trainer framework, no callbacks.

`train(cfg)` prepares the run dir (resume, tokenizer, data), builds the model and optimizer,
and runs updates until a budget (steps, epochs, time) or early stopping ends it, validating and
saving on the way. Validation lives in validate.py, checkpoint files in checkpoint.py.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from mtkit.config import Config
from mtkit.configcheck import parse_duration
from mtkit.errors import TrainingError
from mtkit.loss import token_losses
from mtkit.runlog import MetricsWriter, add_log_file, close_progress_bar, format_seconds, progress_bar
from mtkit.schedule import inverse_sqrt_lr

log = logging.getLogger("mtkit")


class Interrupted(Exception):
    """Training stopped by SIGINT/SIGTERM after saving last.pt; `exit_code` is 130 or 143."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Progress:
    """The counters a checkpoint carries besides weights and optimizer state."""

    step: int = 0  # optimizer updates done
    best_bleu: float = -1.0
    bad_validations: int = 0  # validations in a row without a better BLEU (early stopping)
    tokens_seen: int = 0  # target tokens (non-pad) trained on


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device: cuda was asked for but no CUDA GPU is visible; use cpu or auto")
    return name


def train(cfg: Config, *, overwrite: bool = False, init_from: str | None = None) -> dict[str, Any]:
    """Train (or resume) the run described by `cfg`; returns a summary of the run."""
    import torch

    from mtkit import runsetup

    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = resolve_device(t.device)
    run = runsetup.prepare_run(cfg, overwrite=overwrite, init_from=init_from)  # run dir, resume, tokenizer
    file_log = add_log_file(run.dir / "train.log")
    metrics = MetricsWriter(run.dir / "metrics.jsonl")
    try:
        return _train(cfg, run, device, metrics, init_from)
    finally:
        close_progress_bar()
        metrics.close()
        log.removeHandler(file_log)
        file_log.close()


def _train(cfg, run, device: str, metrics: MetricsWriter, init_from: str | None) -> dict[str, Any]:
    import torch

    from mtkit import runsetup
    from mtkit.batching import TokenBatchSampler
    from mtkit.data import make_batch, token_lengths
    from mtkit.model import Transformer
    from mtkit.tokenizer import PAD_ID
    from mtkit.validate import Validator

    t = cfg.train
    seed_everything(cfg.seed)
    train_ds, valid_ds = runsetup.prepare_data(cfg, run)
    src_lens, tgt_lens = token_lengths(train_ds)
    sampler = TokenBatchSampler(src_lens, tgt_lens, t.batch_tokens, seed=cfg.seed, shuffle=True)

    tok = run.tokenizer
    model = Transformer(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size, pad_id=PAD_ID).to(device)
    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device, enabled=t.precision == "fp16")
    progress = Progress()
    if run.resume_state is not None:
        s = run.resume_state
        model.load_state_dict(s["model"])
        optimizer.load_state_dict(s["optimizer"])
        if s.get("scaler"):
            scaler.load_state_dict(s["scaler"])
        sampler.load_state_dict(s["data"])
        progress = Progress(**s["progress"])
        restore_rng(s["rng"])
        log.info("resumed from %s at step %d", run.resume_path, progress.step)
    elif run.init_state is not None:
        try:
            model.load_state_dict(run.init_state["model"])
        except RuntimeError as e:
            raise TrainingError(f"--init-from {run.init_path}: its weights do not fit model.* of this config"
                                f" ({str(e).splitlines()[0][:160]}); use the same model settings") from None
        log.info("initialised weights from %s (fine-tuning with its tokenizer)", run.init_path)
    log.info("model: %s parameters, device %s, precision %s, %d threads",
             f"{model.num_parameters():,}", device, t.precision, torch.get_num_threads())
    metrics.write("start", step=progress.step, params=model.num_parameters(), device=device,
                  train_pairs=len(train_ds), batches_per_epoch=len(sampler))

    validator = Validator(valid_ds, tok, cfg, device) if valid_ds is not None else None
    saver = runsetup.Saver(run.dir, cfg, tok, t.keep_last)

    def save(path_kind: str) -> None:
        saver.save(path_kind, progress.step, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "data": sampler.state_dict(), "progress": vars(progress).copy(), "rng": rng_state(),
        })

    budget_s = parse_duration(t.max_time) if t.max_time is not None else math.inf
    autocast = (torch.autocast(device_type=device, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[t.precision])
                if t.precision != "fp32" else nullcontext())
    stop = StopFlag()
    started = time.monotonic()
    window = {"loss": 0.0, "nll": 0.0, "tokens": 0, "t0": time.monotonic()}
    bad_steps = 0
    start_step = progress.step
    bar = progress_bar(t.max_steps, progress.step, "step")  # terminals only; log lines otherwise
    batches = iter(sampler)
    reason = ""
    model.train()
    with stop.installed():
        while True:
            if t.max_steps is not None and progress.step >= t.max_steps:
                reason = f"reached train.max_steps={t.max_steps}"
                break
            if t.max_epochs is not None and epochs_done(sampler) >= t.max_epochs:
                reason = f"reached train.max_epochs={t.max_epochs}"
                break
            if validator is not None and t.patience and progress.bad_validations >= t.patience:
                reason = f"early stopping: no better dev BLEU in {t.patience} validations"
                break
            if time.monotonic() - started >= budget_s:
                reason = f"reached train.max_time={t.max_time}"
                break
            # One update = accum_steps batches; the loss is normalised by the target tokens of all of them.
            group = [make_batch(*rows(train_ds, next(batches)[1])) for _ in range(t.accum_steps)]
            n_tokens = sum(int((b["tgt_out"] != PAD_ID).sum()) for b in group)
            lr = inverse_sqrt_lr(progress.step + 1, t.lr, t.warmup_steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            try:
                loss_sum, nll_sum = train_step(model, optimizer, scaler, group, n_tokens, cfg, device, autocast)
            except torch.OutOfMemoryError:
                optimizer.zero_grad(set_to_none=True)
                bad_steps += 1
                shapes = ", ".join(str(tuple(b["src"].shape)) + "/" + str(tuple(b["tgt_in"].shape)) for b in group)
                log.warning("out of memory on a batch (src/tgt shapes %s); skipped it", shapes)
                if bad_steps > t.max_bad_steps:
                    raise TrainingError(f"out of memory {bad_steps} times; lower train.batch_tokens "
                                        f"(now {t.batch_tokens}) and resume with the same command") from None
                continue
            if loss_sum is None:  # non-finite loss or gradient: the update was skipped
                bad_steps += 1
                log.warning("non-finite loss or gradient at step %d; skipped the update (%d/%d)",
                            progress.step + 1, bad_steps, t.max_bad_steps)
                if bad_steps > t.max_bad_steps:
                    raise TrainingError(
                        f"loss was NaN/inf {bad_steps} times; lower train.lr (now {t.lr}), raise"
                        f" train.warmup_steps (now {t.warmup_steps}) or use precision fp32. The saved"
                        f" checkpoints in {run.dir} are from before the problem")
                continue
            bad_steps = 0
            progress.step += 1
            progress.tokens_seen += n_tokens
            window["loss"] += loss_sum
            window["nll"] += nll_sum
            window["tokens"] += n_tokens
            if bar is not None:
                bar.update(1)
                tok_s = window["tokens"] / max(time.monotonic() - window["t0"], 1e-9)
                bar.set_postfix(loss=f"{loss_sum / max(n_tokens, 1):.3f}", lr=f"{lr:.1e}", tok_s=f"{tok_s:.0f}",
                                refresh=False)
            if progress.step % t.log_every == 0:
                log_train(metrics, progress, window, lr, started, sampler)
            if progress.step % t.eval_every == 0:
                improved = validator is not None and validate_and_track(validator, model, progress, metrics)
                save("best" if improved else "last")
                model.train()
            if stop.signum is not None:
                save("last")
                code = 128 + stop.signum
                raise Interrupted(f"stopped by {signal.Signals(stop.signum).name} at step {progress.step};"
                                  f" saved {run.dir / 'last.pt'}. Resume with the same `mtkit train` command", code)
    # Save the final state unless nothing was trained in this call or the last update just saved.
    if progress.step > start_step and progress.step % t.eval_every != 0:
        improved = validator is not None and validate_and_track(validator, model, progress, metrics)
        save("best" if improved else "last")
    elapsed = time.monotonic() - started
    log.info("done: %s at step %d after %s; best dev BLEU %.2f; checkpoints in %s",
             reason, progress.step, format_seconds(elapsed), progress.best_bleu, run.dir)
    metrics.write("end", step=progress.step, reason=reason, elapsed_s=round(elapsed, 1),
                  best_bleu=progress.best_bleu)
    return {"step": progress.step, "reason": reason, "best_bleu": progress.best_bleu, "run_dir": str(run.dir)}


def train_step(model, optimizer, scaler, group, n_tokens, cfg, device, autocast):
    """Forward/backward over an accumulation group and one optimizer update.

    Returns (smoothed loss sum, NLL sum) as floats, or (None, None) when the loss or the gradient
    was not finite, in which case no update is made (the checkpoint can never hold NaNs).
    """
    import torch


    t = cfg.train
    loss_total = torch.zeros((), device=device)
    nll_total = torch.zeros((), device=device)
    for batch in group:
        src = batch["src"].to(device, non_blocking=True)
        tgt_in = batch["tgt_in"].to(device, non_blocking=True)
        tgt_out = batch["tgt_out"].to(device, non_blocking=True)
        with autocast:
            logits = model(src, tgt_in)  # (B, T, V)
        loss, nll = token_losses(logits, tgt_out, t.label_smoothing)
        scaler.scale(loss / n_tokens).backward()  # normalised per target token of the whole group
        loss_total += loss.detach()
        nll_total += nll
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_norm if t.clip_norm > 0 else math.inf)
    loss_value = float(loss_total)  # the one host sync per update: needed to refuse NaN updates
    if not (math.isfinite(loss_value) and math.isfinite(float(grad_norm))):
        optimizer.zero_grad(set_to_none=True)
        if scaler.is_enabled():
            scaler.update()  # fp16: lets the scaler lower its scale after an overflow
            if math.isfinite(loss_value):
                return loss_value, float(nll_total)  # an fp16 overflow in the gradient only: normal
        return None, None
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_value, float(nll_total)


def validate_and_track(validator, model, progress: Progress, metrics: MetricsWriter) -> bool:
    """Validate, log, and update best score / patience; True when BLEU improved."""
    result = validator.run(model)
    improved = result["bleu"] > progress.best_bleu
    if improved:
        progress.best_bleu = result["bleu"]
        progress.bad_validations = 0
    else:
        progress.bad_validations += 1
    log.info("valid step %d: loss %.3f ppl %.2f BLEU %.2f chrF %.2f%s (%.1fs)", progress.step,
             result["valid_loss"], result["valid_ppl"], result["bleu"], result["chrf"],
             " *best*" if improved else f" (best {progress.best_bleu:.2f})", result["seconds"])
    metrics.write("valid", step=progress.step, valid_loss=result["valid_loss"], valid_nll=result["valid_nll"],
                  valid_ppl=result["valid_ppl"], bleu=result["bleu"], chrf=result["chrf"],
                  best_bleu=progress.best_bleu, seconds=result["seconds"], signature=result["signature"])
    return improved


def log_train(metrics: MetricsWriter, progress: Progress, window: dict, lr: float, started: float, sampler) -> None:
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


def epochs_done(sampler) -> int:
    """Complete passes over the training data (an epoch whose last batch was handed out counts)."""
    state = sampler.state_dict()
    return state["epoch"] + (state["position"] >= len(sampler))


def make_optimizer(model, cfg: Config):
    """Adam with the paper's betas and epsilon (section 5.3); AdamW when weight_decay > 0."""
    import torch

    t = cfg.train
    if t.weight_decay > 0:
        # NOTE (differs from paper): decoupled weight decay is an option, off by default.
        return torch.optim.AdamW(model.parameters(), lr=t.lr, betas=t.adam_betas, eps=t.adam_eps,
                                 weight_decay=t.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=t.lr, betas=t.adam_betas, eps=t.adam_eps)


def rows(ds, indices) -> tuple[list[list[int]], list[list[int]]]:
    """The token ids of the given training pairs."""
    picked = ds[[int(i) for i in indices]]
    return picked["src_ids"], picked["tgt_ids"]


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each update (then it saves and exits)."""

    def __init__(self):
        self.signum: int | None = None

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: finishing this update, then saving last.pt (press again to abort)",
                    signal.Signals(signum).name)

    @contextmanager
    def installed(self):
        """Handle the signals inside the `with` block (main thread only), then restore the old handlers."""
        old = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                old[s] = signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)
