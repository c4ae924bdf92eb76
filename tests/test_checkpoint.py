"""Checkpoints: atomic writes, refusal of foreign/broken/hostile files, resume fallback, averaging."""

import errno
import logging
import pickle

import pytest
import torch

from mtkit import files
from mtkit.errors import CheckpointError
from mtkit.model import checkpoint as ck
from mtkit.tools.average import average_checkpoints
from mtkit.training.rundir import find_resume

STATE = {"config": {"x": 1}, "model": {"w": torch.ones(3)}, "tokenizer": {"src": b"spm"}, "step": 7}


def test_save_then_load_round_trip(tmp_path):
    p = tmp_path / "a.pt"
    ck.save_checkpoint(p, STATE)
    s = ck.load_checkpoint(p)
    assert s["step"] == 7 and s["format_version"] == ck.FORMAT_VERSION and torch.equal(s["model"]["w"], torch.ones(3))
    assert s["tokenizer"] == {"src": b"spm"}
    assert list(tmp_path.iterdir()) == [p]  # no temporary file left


def test_crash_between_write_and_rename_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "last.pt"
    ck.save_checkpoint(p, STATE)

    def crash(tmp, final):
        raise KeyboardInterrupt  # stands for a kill at this exact moment

    monkeypatch.setattr(files, "_before_place", crash)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(p, {**STATE, "step": 8})
    assert ck.load_checkpoint(p)["step"] == 7
    assert [x.name for x in tmp_path.iterdir()] == ["last.pt"]


def test_disk_full_says_so_and_keeps_previous(tmp_path, monkeypatch):
    p = tmp_path / "last.pt"
    ck.save_checkpoint(p, STATE)

    def full(tmp, final):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_before_place", full)
    with pytest.raises(CheckpointError, match="disk full"):
        ck.save_checkpoint(p, {**STATE, "step": 8})
    assert ck.load_checkpoint(p)["step"] == 7
    assert [x.name for x in tmp_path.iterdir()] == ["last.pt"]


def test_foreign_truncated_and_newer_files_are_refused(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        ck.load_checkpoint(text)
    good = tmp_path / "good.pt"
    ck.save_checkpoint(good, STATE)
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        ck.load_checkpoint(cut)
    zero = tmp_path / "zero.pt"
    zero.write_bytes(b"\0" * 1000)
    with pytest.raises(CheckpointError):
        ck.load_checkpoint(zero)
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(2)}, plain)
    with pytest.raises(CheckpointError, match="not an mtkit checkpoint"):
        ck.load_checkpoint(plain)
    newer = tmp_path / "newer.pt"
    torch.save({**STATE, "format": ck.FORMAT, "format_version": ck.FORMAT_VERSION + 1}, newer)
    with pytest.raises(CheckpointError, match="newer"):
        ck.load_checkpoint(newer)
    with pytest.raises(CheckpointError, match="not found"):
        ck.load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="directory"):
        ck.load_checkpoint(tmp_path)


class Payload:
    """Unpickling this would create a file: the load must refuse before that happens."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_pickle_carrying_code_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pt"
    torch.save({"format": ck.FORMAT, "format_version": 1, "config": {}, "model": {}, "tokenizer": {},
                "x": Payload(target)}, evil)
    assert not target.exists()
    with pytest.raises(CheckpointError, match="refused"):
        ck.load_checkpoint(evil)
    assert not target.exists()
    raw = tmp_path / "raw.pkl"  # a bare pickle, not even a torch zip
    raw.write_bytes(pickle.dumps(Payload(target)))
    with pytest.raises(CheckpointError):
        ck.load_checkpoint(raw)
    assert not target.exists()


def test_find_resume_falls_back_past_a_damaged_last(tmp_path, caplog):
    ck.save_checkpoint(tmp_path / "step-10.pt", {**STATE, "step": 10})
    ck.save_checkpoint(tmp_path / "step-20.pt", {**STATE, "step": 20})
    ck.save_checkpoint(tmp_path / "last.pt", {**STATE, "step": 30})
    assert find_resume(tmp_path)[1]["step"] == 30
    (tmp_path / "last.pt").write_bytes(b"\0" * 100)
    with caplog.at_level(logging.WARNING, logger="mtkit"):
        path, state = find_resume(tmp_path)
    assert path.name == "step-20.pt" and state["step"] == 20
    assert "last.pt" in caplog.text
    data = (tmp_path / "step-20.pt").read_bytes()
    (tmp_path / "step-20.pt").write_bytes(data[:100])
    assert find_resume(tmp_path)[1]["step"] == 10
    (tmp_path / "empty").mkdir()
    assert find_resume(tmp_path / "empty") is None


def test_average_means_weights_and_refuses_mismatch(tmp_path):
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    ck.save_checkpoint(a, {**STATE, "model": {"w": torch.tensor([1.0, 2.0])}})
    ck.save_checkpoint(b, {**STATE, "model": {"w": torch.tensor([3.0, 6.0])}})
    avg = average_checkpoints([a, b])
    assert torch.equal(avg["model"]["w"], torch.tensor([2.0, 4.0]))
    ck.save_checkpoint(tmp_path / "avg.pt", avg)
    assert ck.load_checkpoint(tmp_path / "avg.pt")["tokenizer"] == STATE["tokenizer"]
    ck.save_checkpoint(c, {**STATE, "model": {"w": torch.ones(3)}})
    with pytest.raises(CheckpointError, match="differ in shape"):
        average_checkpoints([a, c])
    ck.save_checkpoint(c, {**STATE, "tokenizer": {"src": b"other"}, "model": {"w": torch.ones(2)}})
    with pytest.raises(CheckpointError, match="different tokenizers"):
        average_checkpoints([a, c])


def test_resolve_model_path(tmp_path):
    with pytest.raises(CheckpointError, match="no best.pt or last.pt"):
        ck.resolve_model_path(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"x")
    assert ck.resolve_model_path(tmp_path).name == "last.pt"
    (tmp_path / "best.pt").write_bytes(b"x")
    assert ck.resolve_model_path(tmp_path).name == "best.pt"
    with pytest.raises(CheckpointError, match="model not found"):
        ck.resolve_model_path(tmp_path / "nope.pt")
