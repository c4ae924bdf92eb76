"""Faults during training: nothing saved is lost, and the run continues or says what to do.

Each fault is injected on purpose: a SIGKILL between a checkpoint's temporary file and its
rename, a truncated or zeroed last.pt, a full disk during a save, out-of-memory on a batch.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtkit import files
from mtkit.errors import CheckpointError, TrainingError
from mtkit.model.checkpoint import load_checkpoint
from mtkit.training.train import train
from tests.tinyrun import same_weights, tiny_config, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["train.max_steps=20", "train.eval_every=5", "train.keep_last=4"]

# Runs `mtkit` with a SIGKILL injected between writing last.pt's new content and renaming it into
# place, at the CRASH_AT_SAVE-th save: the moment a real crash would do the most harm.
CRASH_DRIVER = """
import os, signal, sys
from mtkit import files
saves = {"n": 0}
def crash(tmp, final):
    if final.name == "last.pt":
        saves["n"] += 1
        if saves["n"] == int(os.environ["CRASH_AT_SAVE"]):
            os.kill(os.getpid(), signal.SIGKILL)
files._before_place = crash
from mtkit.cli import main
sys.argv = ["mtkit", *sys.argv[1:]]
main()
"""


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must end equal to."""
    root = tmp_path_factory.mktemp("straight")
    train(tiny_config(root, "run", STEPS))
    return root / "run" / "last.pt"


@pytest.mark.slow
def test_kill_9_between_checkpoint_write_and_rename_then_resume_equals_uninterrupted(tmp_path, straight):
    config = tmp_path / "c.yaml"
    config.write_text("seed: 1\n")
    args = ["train", str(config), *[f"--set={o}" for o in tiny_overrides(tmp_path, "run", STEPS)]]
    r = subprocess.run([sys.executable, "-c", CRASH_DRIVER, *args], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "CRASH_AT_SAVE": "3"}, timeout=300)
    assert r.returncode == -9, r.stderr
    run = tmp_path / "run"
    assert load_checkpoint(run / "last.pt")["step"] == 10  # the save before the crash, intact
    assert not list(run.glob(".*.tmp"))  # the half-done save had no name yet: nothing is left behind
    r = subprocess.run([sys.executable, "-m", "mtkit", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stderr and "at step 10" in r.stderr
    assert not list(run.glob(".*.tmp"))
    assert same_weights(run / "last.pt", straight)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "zeroed"])
def test_damaged_last_pt_falls_back_to_newest_readable_checkpoint(tmp_path, straight, damage, caplog):
    cfg = tiny_config(tmp_path, "run", ["train.max_steps=15", *STEPS[1:]])
    train(cfg)
    last = tmp_path / "run" / "last.pt"
    size = last.stat().st_size
    with open(last, "r+b") as f:  # in place: step-15.pt, a hard link to the same file, is damaged too
        if damage == "truncated":
            f.truncate(size // 3)
        else:
            f.write(b"\0" * size)
    with caplog.at_level(logging.WARNING, logger="mtkit"):
        summary = train(tiny_config(tmp_path, "run", STEPS))
    assert summary["step"] == 20
    assert "last.pt" in caplog.text and "step-10.pt" in caplog.text  # names the bad file and the fallback
    assert same_weights(last, straight)


@pytest.mark.slow
def test_disk_full_during_a_save_keeps_the_previous_checkpoint_and_says_so(tmp_path, straight, monkeypatch):
    saves = {"n": 0}

    def full_on_second_save(tmp, final):
        if final.name == "last.pt":
            saves["n"] += 1
            if saves["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_before_place", full_on_second_save)
    with pytest.raises(CheckpointError, match="disk full.*previous last.pt is intact.*run the same command"):
        train(tiny_config(tmp_path, "run", STEPS))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 5
    monkeypatch.setattr(files, "_before_place", lambda tmp, final: None)  # space freed
    train(tiny_config(tmp_path, "run", STEPS))
    assert same_weights(tmp_path / "run" / "last.pt", straight)


@pytest.mark.slow
def test_out_of_memory_batch_is_skipped_and_repeated_oom_stops_with_advice(tmp_path, monkeypatch, caplog):
    from mtkit.model import transformer as model_mod

    real_forward = model_mod.Transformer.forward
    calls = {"n": 0}

    def oom_on_third_batch(self, src, tgt_in, features=False):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 3:
                raise torch.OutOfMemoryError("out of memory (injected)")
        return real_forward(self, src, tgt_in, features)

    monkeypatch.setattr(model_mod.Transformer, "forward", oom_on_third_batch)
    with caplog.at_level(logging.WARNING, logger="mtkit"):
        summary = train(tiny_config(tmp_path, "run", ["train.max_steps=10"]))
    assert summary["step"] == 10  # the bad batch was skipped, training went on
    assert "out of memory on a batch (src/tgt shapes (" in caplog.text

    def always_oom(self, src, tgt_in, features=False):
        if self.training:
            raise torch.OutOfMemoryError("out of memory (injected)")
        return real_forward(self, src, tgt_in, features)

    monkeypatch.setattr(model_mod.Transformer, "forward", always_oom)
    with pytest.raises(TrainingError, match="lower train.batch_tokens"):
        train(tiny_config(tmp_path, "run2", ["train.max_bad_steps=2"]))
    assert not (tmp_path / "run2" / "last.pt").exists()  # nothing trained, nothing saved


@pytest.mark.slow
def test_a_second_train_on_a_run_dir_in_use_is_refused(tmp_path):
    from mtkit.training.rundir import lock_run_dir

    run = tmp_path / "run"
    run.mkdir()
    other = lock_run_dir(run)  # as another `mtkit train` would hold it (flock: per open file)
    try:
        with pytest.raises(TrainingError, match="another `mtkit train` is using this run dir .pid "):
            train(tiny_config(tmp_path, "run", ["train.max_steps=2"]))
        assert not (run / "last.pt").exists()
    finally:
        other.close()
    assert train(tiny_config(tmp_path, "run", ["train.max_steps=2"]))["step"] == 2  # free again
