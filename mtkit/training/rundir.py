"""The run dir: what is in it, whether to resume, and how checkpoints are laid out in it.

`prepare_run` decides between a fresh start and a resume (refusing a changed config), trains or
reuses the tokenizer, and writes the resolved config; `prepare_data` loads the splits;
`Saver` writes last.pt / best.pt / step-N.pt, and `restore` loads a resumed run's state (weights,
optimizer, data position, random streams) into the training objects. The training loop itself is
in train.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mtkit.config import Config, differing_keys, dump_yaml, flatten, from_plain_dict, to_dict
from mtkit.errors import CheckpointError, TrainingError

log = logging.getLogger("mtkit")

# What `--overwrite` clears (only these names: the run dir may hold the user's own files too).
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "train.log", "config.yaml")
RUN_DIRS = ("tokenizer", "cache")


@dataclass
class Progress:
    """The counters a checkpoint carries besides weights and optimizer state."""

    step: int = 0  # optimizer updates done
    best_bleu: float = -1.0
    bad_validations: int = 0  # validations in a row without a better BLEU (early stopping)
    tokens_seen: int = 0  # target tokens (non-pad) trained on
    train_seconds: float = 0.0  # wall time of the training loop over all calls, as of the last save
    time_plan: dict | None = None  # train.max_time turned into updates (budget.make_time_plan)


@dataclass
class Run:
    dir: Path
    tokenizer: Any  # mtkit.tokenizer.Tokenizer
    resume_path: Path | None = None
    resume_state: dict[str, Any] | None = None
    init_path: Path | None = None  # --init-from: the parent checkpoint (fine-tuning)
    init_state: dict[str, Any] | None = None
    lock: Any = None  # the open run_dir/.lock file: held while this process trains (see lock_run_dir)


def prepare_run(cfg: Config, *, overwrite: bool = False, for_training: bool = True,
                init_from: str | Path | None = None, readonly: bool = False) -> Run:
    """Create or reopen the run dir; resume from its newest intact checkpoint if any.

    With `init_from` (and nothing to resume) the new run starts from that checkpoint's weights and
    uses its tokenizer, since the weights only make sense with the vocabulary they were trained on.
    `readonly` (training processes other than rank 0, after rank 0 prepared the dir) writes nothing.
    The returned Run holds the run dir's lock (`Run.lock`, None when readonly); close it when done.
    """
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"run_dir {run_dir}: exists and is not a directory; choose another run_dir")
    lock = None
    if not readonly:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_run_dir(run_dir)
    try:
        run = _open_run(cfg, run_dir, overwrite, for_training, init_from, readonly)
    except BaseException:
        if lock is not None:
            lock.close()
        raise
    run.lock = lock
    return run


def _open_run(cfg: Config, run_dir: Path, overwrite: bool, for_training: bool, init_from, readonly: bool) -> Run:
    from mtkit.checkpoint import find_resume, load_checkpoint
    from mtkit.tokenizer import Tokenizer

    if not readonly:
        if overwrite:
            clear_run(run_dir)
        for tmp in run_dir.glob(".*.tmp"):  # a save that a crash interrupted before its rename
            log.warning("removed an unfinished save %s (left by a crash; the saved files are intact)", tmp.name)
            tmp.unlink()
    found = find_resume(run_dir) if for_training else None
    if found is not None:
        path, state = found
        saved = from_plain_dict(state["config"])
        diffs = differing_keys(saved, cfg)
        if diffs:
            a, b = flatten(to_dict(saved)), flatten(to_dict(cfg))
            shown = "; ".join(f"{k}: saved {a.get(k)!r}, given {b.get(k)!r}" for k in diffs[:8])
            raise TrainingError(
                f"{run_dir} holds a run with a different config ({shown}). Resume with the saved config"
                f" ({run_dir / 'config.yaml'}), choose a new run_dir, or pass --overwrite to start afresh"
            )
        run = Run(run_dir, Tokenizer.from_bytes(state["tokenizer"]), path, state)
        if init_from:
            log.warning("--init-from ignored: resuming %s, which already has a checkpoint", run_dir)
    elif init_from:
        init = load_checkpoint(init_from)
        tok = Tokenizer.from_bytes(init["tokenizer"])
        tok_dir = run_dir / "tokenizer"
        if not readonly:
            tok_dir.mkdir(parents=True, exist_ok=True)
            tok.save(tok_dir)
            (tok_dir / "settings.yaml").unlink(missing_ok=True)  # not trained from this config's data
        run = Run(run_dir, tok, init_path=Path(init_from), init_state=init)
    else:
        run = Run(run_dir, get_tokenizer(cfg, run_dir, readonly=readonly))
    if for_training and not readonly:
        write_atomic(run_dir / "config.yaml", dump_yaml(cfg))
    return run


def lock_run_dir(run_dir: Path):
    """Take run_dir/.lock so that a second `mtkit train` on the same run dir cannot overwrite this
    one's checkpoints. The OS releases the lock when the process ends, even by kill -9."""
    import fcntl

    f = open(run_dir / ".lock", "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise TrainingError(f"{run_dir}: another `mtkit train` is using this run dir ({holder}); wait for it"
                            " to finish, stop it, or choose another run_dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    return f


def clear_run(run_dir: Path) -> None:
    """Remove a previous run's artifacts (named ones only), saying what goes."""
    gone = [p for p in (run_dir / n for n in RUN_FILES + RUN_DIRS) if p.exists()]
    gone += sorted(run_dir.glob("step-*.pt"))
    if gone:
        log.warning("--overwrite: removing %s from %s", ", ".join(p.name for p in gone), run_dir)
    for p in gone:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def tokenizer_settings(cfg: Config) -> dict[str, Any]:
    """What the tokenizer depends on: if any of it changes, the tokenizer is trained again."""
    return {"tokenizer": to_dict(cfg.tokenizer), "train": to_dict(cfg.data.train),
            "src_lang": cfg.data.src_lang, "tgt_lang": cfg.data.tgt_lang}


def get_tokenizer(cfg: Config, run_dir: Path, *, retrain: bool = False, readonly: bool = False):
    """The run dir's tokenizer if it was trained with these settings, else train and save one
    (`readonly`: it must be there already)."""
    import time

    from mtkit.sources import load_pairs
    from mtkit.tokenizer import Tokenizer, train_tokenizer

    tok_dir = run_dir / "tokenizer"
    settings_path = tok_dir / "settings.yaml"
    wanted = tokenizer_settings(cfg)
    existing = Tokenizer.load(tok_dir) if tok_dir.exists() else None
    if existing is not None and not retrain:
        saved = yaml.safe_load(settings_path.read_text(encoding="utf-8")) if settings_path.exists() else None
        if saved == wanted:
            log.info("tokenizer: using %s", tok_dir)
            return existing
        if not readonly:
            log.warning("tokenizer in %s was trained with other settings; training it again", tok_dir)
    if readonly:
        raise TrainingError(f"{tok_dir}: no tokenizer for this config; rank 0 should have trained it (was the"
                            " run dir changed during start-up?)")
    t0 = time.monotonic()
    pairs = load_pairs(cfg.data.train, cfg.data, "train", cache_dir=run_dir / "cache")
    log.info("tokenizer: training %s, vocab %d, %s on %d pairs ...", cfg.tokenizer.model_type,
             cfg.tokenizer.vocab_size, "joint" if cfg.tokenizer.joint else "separate", len(pairs))
    tok = train_tokenizer(cfg.tokenizer, iter_column(pairs, "src"), iter_column(pairs, "tgt"))
    tok_dir.mkdir(parents=True, exist_ok=True)
    tok.save(tok_dir)
    write_atomic(settings_path, yaml.safe_dump(wanted, sort_keys=False))
    log.info("tokenizer: vocab %d/%d saved in %s (%.1fs)", tok.src_vocab_size, tok.tgt_vocab_size,
             tok_dir, time.monotonic() - t0)
    return tok


def iter_column(ds, column: str, chunk: int = 10_000):
    """Stream one text column of an Arrow dataset without materialising it as a list."""
    for start in range(0, len(ds), chunk):
        yield from ds[start:start + chunk][column]


def prepare_data(cfg: Config, run: Run):
    """Encoded, filtered training pairs and encoded dev pairs (None without data.valid)."""
    from mtkit.data import prepare_eval, prepare_train

    cache = run.dir / "cache"
    train_ds, _ = prepare_train(cfg.data, run.tokenizer, cache_dir=cache)  # logs its drop report
    valid_ds = None
    if cfg.data.valid is not None:
        valid_ds = prepare_eval(cfg.data.valid, cfg.data, run.tokenizer, "valid", cache_dir=cache)
        log.info("valid data: %d pairs", len(valid_ds))
    else:
        log.warning("no data.valid: no validation, no best.pt and no early stopping")
    return train_ds, valid_ds


class Saver:
    """Writes last.pt at every save, links step-N.pt to it (and best.pt when BLEU improved)."""

    def __init__(self, run_dir: Path, cfg: Config, tokenizer, keep_last: int):
        self.run_dir, self.cfg, self.tokenizer, self.keep_last = run_dir, cfg, tokenizer, keep_last

    def save(self, kind: str, step: int, state: dict[str, Any]) -> None:
        from mtkit.checkpoint import link_or_copy, prune_step_checkpoints, save_checkpoint

        last = self.run_dir / "last.pt"
        save_checkpoint(last, {"config": to_dict(self.cfg), "tokenizer": self.tokenizer.to_bytes(),
                               "step": step, **state})
        # Hard links cost no disk: replacing last.pt later by rename leaves these pointing at this save.
        if self.keep_last > 0:
            link_or_copy(last, self.run_dir / f"step-{step}.pt")
            prune_step_checkpoints(self.run_dir, self.keep_last)
        if kind == "best":
            link_or_copy(last, self.run_dir / "best.pt")
        log.debug("saved %s at step %d", last, step)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to: renamed onto `path` when the block ends, removed
    if it fails, so `path` is never half-written."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def restore(run: Run, cfg: Config, world, model, optimizer, scaler, sampler) -> Progress:
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
        progress = Progress(**s["progress"])
        saved_subset = s.get("config", {}).get("train", {}).get("valid_max_sentences")
        if saved_subset != cfg.train.valid_max_sentences and progress.best_bleu >= 0:
            # Best BLEU and patience compare scores; on another dev subset they would compare apples and pears.
            log.warning("train.valid_max_sentences changed (%s -> %s): best dev BLEU (%.2f) and patience start"
                        " afresh on the new dev subset", saved_subset, cfg.train.valid_max_sentences, progress.best_bleu)
            progress.best_bleu, progress.bad_validations = -1.0, 0
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


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
