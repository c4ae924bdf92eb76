"""The run dir: a fresh start or a resume, its lock, and the checkpoint files kept in it.

`prepare_run` decides between a fresh start and a resume (refusing a changed config), gets the
tokenizer (data/run_tokenizer.py) and writes the resolved config; `Saver` writes last.pt and links
step-N.pt and best.pt to it; `find_resume` finds the newest intact checkpoint. What a resumed run
restores from it is state.py's job; the checkpoint file format is model/checkpoint.py's.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import IO, Any

from mtkit import files
from mtkit.config import Config, differing_keys, dump_yaml, flatten, from_plain_dict, to_dict
from mtkit.data.run_tokenizer import get_tokenizer, save_tokenizer
from mtkit.data.tokenizer import Tokenizer
from mtkit.errors import CheckpointError, ConfigError, TrainingError
from mtkit.model.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger("mtkit")

# What `--overwrite` clears (only these names: the run dir may hold the user's own files too).
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "train.log", "config.yaml")
RUN_DIRS = ("tokenizer", "cache")
STEP_FILE = re.compile(r"step-(\d+)\.pt$")


@dataclass
class Run:
    dir: Path
    tokenizer: Any  # mtkit.data.tokenizer.Tokenizer
    resume_path: Path | None = None
    resume_state: dict[str, Any] | None = None
    init_path: Path | None = None  # --init-from: the parent checkpoint (fine-tuning)
    init_state: dict[str, Any] | None = None
    lock: IO[str] | None = None  # the open run_dir/.lock file: held while this process trains (see lock_run_dir)


def prepare_run(cfg: Config, *, overwrite: bool = False, for_training: bool = True,
                init_from: str | Path | None = None, init_state: dict[str, Any] | None = None,
                readonly: bool = False) -> Run:
    """Create or reopen the run dir; resume from its newest intact checkpoint if any.

    With `init_from` (and nothing to resume) the new run starts from that checkpoint's weights and
    uses its tokenizer, since the weights only make sense with the vocabulary they were trained on;
    `init_state` is that checkpoint already loaded (config_for_init's), so it is not read twice.
    `readonly` (training processes other than rank 0, after rank 0 prepared the dir) writes nothing.
    The returned Run holds the run dir's lock (`Run.lock`, None when readonly); close it when done.
    """
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"run_dir {run_dir}: exists and is not a directory; choose another run_dir")
    lock = None
    if not readonly:
        files.writable_dir(run_dir, "run_dir")
        lock = lock_run_dir(run_dir)
    try:
        run = _open_run(cfg, run_dir, overwrite, for_training, init_from, init_state, readonly)
    except BaseException:
        if lock is not None:
            lock.close()
        raise
    run.lock = lock
    return run


def _open_run(cfg: Config, run_dir: Path, overwrite: bool, for_training: bool, init_from: str | Path | None,
              init_state: dict[str, Any] | None, readonly: bool) -> Run:
    if not readonly:
        if overwrite:
            clear_run(run_dir)
        for tmp in run_dir.glob(f".*{files.TMP_SUFFIX}"):  # named by a save that a crash interrupted
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
        init = init_state if init_state is not None else load_checkpoint(init_from)
        tok = Tokenizer.from_bytes(init["tokenizer"])
        if not readonly:
            save_tokenizer(tok, run_dir / "tokenizer", settings=None)  # not trained from this config's data
        run = Run(run_dir, tok, init_path=Path(init_from), init_state=init)
    else:
        run = Run(run_dir, get_tokenizer(cfg, run_dir, readonly=readonly))
    if for_training and not readonly:
        files.write_text(run_dir / "config.yaml", dump_yaml(cfg))
    return run


# Model keys a fine-tuning run may set for itself; every other one is the parent's architecture.
TRAINING_ONLY_MODEL_KEYS = ("dropout", "attention_dropout")


def config_for_init(cfg: Config, init_from: str | Path, state: dict[str, Any]) -> Config:
    """`cfg` with the parent checkpoint's `model` section (--init-from; `state` is that checkpoint,
    loaded): the model comes from the checkpoint, and so do keys the weights do not show
    (activation, positions, scale_embeddings).

    A key this config leaves at its default takes the checkpoint's value (logged); one it sets to
    another value than the checkpoint's is an error naming the keys. Dropout is the config's own.
    The tokenizer comes from the checkpoint too: a tokenizer.vocab_size or tokenizer.joint that
    contradicts it is the same error.
    """
    parent, tok = from_plain_dict(state["config"]).model, Tokenizer.from_bytes(state["tokenizer"])
    default, mine = type(parent)(), cfg.model
    differ = [f.name for f in fields(parent) if f.name not in TRAINING_ONLY_MODEL_KEYS
              and getattr(mine, f.name) != getattr(parent, f.name)]
    shown = [f"model.{k}: {getattr(mine, k)!r} here, {getattr(parent, k)!r} in the checkpoint"
             for k in differ if getattr(mine, k) != getattr(default, k)]
    t, t_default = cfg.tokenizer, type(cfg.tokenizer)()
    for key, theirs in (("vocab_size", tok.tgt_vocab_size), ("joint", tok.joint)):
        if getattr(t, key) not in (getattr(t_default, key), theirs):
            shown.append(f"tokenizer.{key}: {getattr(t, key)!r} here, {theirs!r} in the checkpoint")
    if shown:
        raise ConfigError(f"--init-from {init_from}: the model and its tokenizer come from the checkpoint, but the"
                          f" config says otherwise ({'; '.join(shown)}); remove those keys from the config")
    if differ:
        log.info("--init-from: model %s from %s", ", ".join(f"{k}={getattr(parent, k)!r}" for k in differ), init_from)
    kept = {k: getattr(mine, k) for k in TRAINING_ONLY_MODEL_KEYS}
    return replace(cfg, model=replace(parent, **kept))


def lock_run_dir(run_dir: Path) -> IO[str]:
    """Take run_dir/.lock so that a second `mtkit train` on the same run dir cannot overwrite this
    one's checkpoints. The OS releases the lock when the process ends, even by kill -9."""
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


class Saver:
    """Writes last.pt at every save, links step-N.pt to it (and best.pt when BLEU improved)."""

    def __init__(self, run_dir: Path, cfg: Config, tokenizer: Tokenizer, keep_last: int):
        self.run_dir, self.cfg, self.tokenizer, self.keep_last = run_dir, cfg, tokenizer, keep_last

    def save(self, kind: str, step: int, state: dict[str, Any]) -> None:
        last = self.run_dir / "last.pt"
        save_checkpoint(last, {"config": to_dict(self.cfg), "tokenizer": self.tokenizer.to_bytes(),
                               "step": step, **state})
        # Hard links cost no disk: replacing last.pt later by rename leaves these pointing at this save.
        if self.keep_last > 0:
            files.link(last, self.run_dir / f"step-{step}.pt")
            prune_step_checkpoints(self.run_dir, self.keep_last)
        if kind == "best":
            files.link(last, self.run_dir / "best.pt")
        log.debug("saved %s at step %d", last, step)


def find_resume(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest intact checkpoint to resume from: last.pt, else the newest readable step-N.pt.

    A damaged candidate is skipped with a warning that names it. Returns None when the run dir
    has no checkpoint at all.
    """
    candidates = [run_dir / "last.pt"] + [p for _, p in step_checkpoints(run_dir)]
    candidates = [p for p in candidates if p.exists()]
    # last.pt is written at every save, so it is never older than a step file; the step files
    # are newest first, so the first readable candidate is the newest intact checkpoint.
    for i, p in enumerate(candidates):
        try:
            state = load_checkpoint(p)
        except CheckpointError as e:
            log.warning("skipping damaged checkpoint: %s", e)
            continue
        if i:
            log.warning("resuming from %s instead, the newest readable checkpoint (step %s)", p.name, state.get("step"))
        return p, state
    if candidates:
        raise CheckpointError(
            f"{run_dir}: no readable checkpoint ({', '.join(p.name for p in candidates)} are damaged);"
            " move them away to start afresh, or pass --overwrite"
        )
    return None


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """`step-N.pt` files in a run dir, newest (highest N) first."""
    found = []
    for p in run_dir.glob("step-*.pt"):
        m = STEP_FILE.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def prune_step_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step-N.pt files."""
    for _, p in step_checkpoints(run_dir)[keep_last:]:
        p.unlink(missing_ok=True)
