"""`mtkit train`: set up the processes, the run dir, the data and the logs, then let the Trainer train.

`train(cfg)` joins the other training processes (torchrun), prepares the run dir (fresh or resumed,
tokenizer, config), loads and encodes the data, opens train.log and metrics.jsonl, and hands over to
trainer.py; whatever it set up is undone in reverse order however training ends. The loop itself is
the Trainer's, one update step.py's, validation validate.py's, the run dir rundir.py's.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any

import torch

from mtkit.config import Config
from mtkit.data.pairs import prepare_data
from mtkit.data.sources import check_data_files
from mtkit.decoding.scoring import validation_scoring
from mtkit.hardware import resolve_device
from mtkit.memory import keep_freed_memory, memory_line, note_memory, release_freed_memory, sampled_memory
from mtkit.model.checkpoint import load_checkpoint
from mtkit.training import distributed
from mtkit.training.rundir import config_for_init, prepare_run
from mtkit.training.runlog import (
    MetricsWriter,
    add_log_file,
    close_progress_bar,
    drop_metrics_after,
    setup_logging,
)
from mtkit.training.trainer import Trainer

log = logging.getLogger("mtkit")


def train(cfg: Config, *, overwrite: bool = False, init_from: str | None = None) -> dict[str, Any]:
    """Train (or resume) the run described by `cfg`; returns a summary of the run.

    Under torchrun every process calls this; see distributed.py. Rank 0 prepares the run dir
    (clears it on --overwrite, trains the tokenizer, caches the encoded data) while the others
    wait, then they open it read-only. Only rank 0 writes logs, metrics and checkpoints.
    """
    keep_freed_memory()
    t = cfg.train
    # What can fail in a second fails now, not after tokenizer training and data preparation: every
    # data file, the run dir, and a dev BLEU tokenizer that cannot run.
    check_data_files(cfg.data)
    if cfg.data.valid is not None:
        validation_scoring(cfg).check("train.valid_tokenize")
    world = distributed.world_from_env()
    if not world.is_main:
        setup_logging(-1)  # warnings and errors only; rank 0 tells the story
    device = distributed.join(world, resolve_device(t.device))
    with ExitStack() as cleanup:  # undone in reverse order, however training ends
        cleanup.callback(distributed.leave, world)
        if t.threads or (world.distributed and not device.startswith("cuda")):
            torch.set_num_threads(t.threads or distributed.cpu_threads(world))
        if device.startswith("cuda"):
            torch.set_float32_matmul_precision("high")  # fp32 matmuls on TF32 tensor cores (Ampere+)
        if not world.is_main:
            distributed.barrier(world)
        parent = None
        if init_from is not None:  # the model section comes from the parent (on rank 0 first, like prepare_run)
            parent = load_checkpoint(init_from)
            cfg = config_for_init(cfg, init_from, parent)
        with sampled_memory():  # tokenizer training and data preparation peak between log lines
            run = prepare_run(cfg, overwrite=overwrite, init_from=init_from, init_state=parent,
                              readonly=not world.is_main)
            parent = None  # the Run keeps it where the run starts from it; a resume does not need it
            if run.lock is not None:
                cleanup.callback(run.lock.close)  # lets the next `mtkit train` on this run dir start
            train, valid_ds = prepare_data(cfg.data, run.tokenizer, run.dir / "cache")
        release_freed_memory()  # what encoding and filtering freed; training allocates afresh
        log.info("data ready: memory %s", memory_line(note_memory()))
        if world.is_main:
            distributed.barrier(world)
            file_log = add_log_file(run.dir / "train.log")
            cleanup.callback(file_log.close)
            cleanup.callback(log.removeHandler, file_log)
        if world.is_main and run.resume_state is not None:
            resumed_at = run.resume_state.get("progress", {}).get("step", 0)
            if dropped := drop_metrics_after(run.dir / "metrics.jsonl", resumed_at):
                log.info("metrics.jsonl: dropped %d event(s) after step %d, which this run replays", dropped, resumed_at)
        metrics = MetricsWriter(run.dir / "metrics.jsonl" if world.is_main else None)
        cleanup.callback(metrics.close)
        cleanup.callback(close_progress_bar)
        return Trainer.build(cfg, run, train, valid_ds, world, device, metrics).run()
