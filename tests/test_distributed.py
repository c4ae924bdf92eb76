"""Distributed training on CPU: gloo, 2 processes, launched by `mtkit train --devices 2` (torch's
launcher API, the engine behind torchrun)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtkit.errors import TrainingError
from mtkit.model.checkpoint import load_checkpoint
from mtkit.training import distributed
from mtkit.training.train import train
from tests.tinyrun import checkpoint_weights, same_weights, tiny_config, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def mtkit_train(root: Path, run: str, extra: list[str], *cli: str) -> subprocess.CompletedProcess:
    config = root / "empty.yaml"
    config.write_text("seed: 1\n")
    sets = [f"--set={o}" for o in tiny_overrides(root, run, extra)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MTKIT_DEBUG")}
    return subprocess.run([sys.executable, "-m", "mtkit", "-q", "train", str(config), *sets, *cli],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_equal_one_process_with_two_accumulation_steps(tmp_path):
    # Dropout off, so the only randomness is the data order, which both runs share: process k takes
    # batches k, k+2, ... of the epoch; one process with accum_steps=2 takes them in pairs. 4
    # updates stay inside the first epoch (9 batches; the odd one out is skipped by 2 processes).
    steps = ["train.max_steps=4", "model.dropout=0", "train.eval_every=1"]  # a save (and sync check) per step
    r = mtkit_train(tmp_path, "two", steps, "--devices", "2")
    assert r.returncode == 0, r.stderr
    assert "error" not in r.stderr
    train(tiny_config(tmp_path, "one", [*steps, "train.accum_steps=2"]))
    a, b = checkpoint_weights(tmp_path / "two" / "last.pt"), checkpoint_weights(tmp_path / "one" / "last.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    state = load_checkpoint(tmp_path / "two" / "last.pt")
    assert state["step"] == 4 and state["data"] == {"epoch": 0, "position": 4, "shards": 2}
    assert len(state["rng_ranks"]) == 2  # each process's random state, for an exact resume
    assert sorted(p.name for p in (tmp_path / "two").glob("*.log")) == ["train.log"]  # rank 0 writes


def test_two_process_run_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    # With dropout on, exactness needs every process's random state and data position back.
    r = mtkit_train(tmp_path, "straight", ["train.max_steps=8", "train.eval_every=4"], "--devices", "2")
    assert r.returncode == 0, r.stderr
    r = mtkit_train(tmp_path, "resumed", ["train.max_steps=4", "train.eval_every=4"], "--devices", "2")
    assert r.returncode == 0, r.stderr
    r = mtkit_train(tmp_path, "resumed", ["train.max_steps=8", "train.eval_every=4"], "--devices", "2")
    assert r.returncode == 0, r.stderr
    assert same_weights(tmp_path / "straight" / "last.pt", tmp_path / "resumed" / "last.pt")


def test_a_failing_process_gives_one_error_line_and_its_exit_code(tmp_path):
    r = mtkit_train(tmp_path, "bad", [], "--devices", "2", "--init-from", str(tmp_path / "missing.pt"))
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    own = [e for e in errors if not e.startswith("error: [rank ")]  # rank 0's, unprefixed
    assert len(own) == 1 and "missing.pt" in own[0], r.stderr
    # another rank may add one line saying it lost contact; it never repeats a traceback
    assert all("lost contact" in e for e in errors if e not in own)
    assert "Traceback" not in r.stderr


def test_diverged_weights_are_detected(monkeypatch):
    world = distributed.World(rank=0, size=2, launched=True)
    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(distributed, "gather", lambda w, obj: [obj, (1.0, 2.0, 3.0)])
    with pytest.raises(TrainingError, match="weights differ"):
        distributed.check_in_sync(world, model)
    monkeypatch.setattr(distributed, "gather", lambda w, obj: [obj, obj])
    distributed.check_in_sync(world, model)  # equal: no error


def test_torchrun_environment_is_read_and_checked(monkeypatch):
    for k, v in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    w = distributed.world_from_env()
    assert (w.rank, w.local_rank, w.size, w.local_size, w.is_main, w.distributed) == (1, 1, 4, 2, False, True)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(TrainingError, match="inconsistent"):
        distributed.world_from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(TrainingError, match="not numeric"):
        distributed.world_from_env()
    with pytest.raises(TrainingError, match="started by torchrun"):
        distributed.launch(2, ["train", "x.yaml"])


def test_ctrl_c_stops_every_process_after_saving(tmp_path):
    import signal
    import time

    config = tmp_path / "empty.yaml"
    config.write_text("seed: 1\n")
    over = tiny_overrides(tmp_path, "run", ["train.max_steps=100000", "train.eval_every=100000", "train.log_every=5"])
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MTKIT_DEBUG")}
    p = subprocess.Popen([sys.executable, "-m", "mtkit", "train", str(config), *[f"--set={o}" for o in over],
                          "--devices", "2"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)  # its own process group, as a terminal's job
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.exists() and '"event": "train"' in metrics.read_text()):
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGINT)  # Ctrl-C reaches the launcher and both training processes
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert err.count("stopped by SIGINT") == 1 and "Traceback" not in err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] >= 5


@pytest.mark.parametrize("body, code, out", [
    ("print('done', end='')", 0, "done"),  # unflushed output still arrives
    ("raise SystemExit(3)", 3, ""),
    ("raise SystemExit('error: x')", 1, ""),
    ("raise KeyboardInterrupt", 130, ""),
    ("raise ValueError('a bug')", 1, ""),
])
def test_a_torchrun_process_ends_with_its_exit_code_and_without_interpreter_teardown(body, code, out):
    # run_then_exit skips Python's teardown (where gloo's leftover threads can abort the process):
    # an atexit handler, which teardown would run, must not print; the code and output must survive.
    script = ("import atexit, logging, sys\n"
              "from mtkit.training.distributed import run_then_exit\n"
              "atexit.register(lambda: print('TEARDOWN', file=sys.stderr))\n"
              "logging.basicConfig(stream=sys.stderr)\n"
              "def main():\n"
              "    logging.getLogger('t').warning('logged')\n"
              f"    {body}\n"
              "run_then_exit(main)\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (code, out), r.stderr
    assert "logged" in r.stderr and "TEARDOWN" not in r.stderr
    assert ("error: x" in r.stderr) == ("error: x" in body)
    assert ("Traceback" in r.stderr) == (code in (1, 130) and "SystemExit" not in body)


def test_the_mtkit_command_under_torchrun_keeps_its_exit_code_and_error_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {max_step: 5}\n")
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    env.pop("MTKIT_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "mtkit", "data", "check", str(bad)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "max_step" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
