"""The `mtkit` command through Typer's CliRunner, plus real subprocesses for start-up and signals."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtkit import __version__
from mtkit.cli import app
from tests.tinyrun import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def sets(overrides):
    return [x for o in overrides for x in ("--set", o)]


def test_help_lists_commands_and_version():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("train", "translate", "evaluate", "average", "export", "tokenizer", "data"):
        assert cmd in r.stdout
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and __version__ in r.stdout
    r = runner.invoke(app, ["data", "--help"])
    assert "ding" in r.stdout and "check" in r.stdout


def test_bad_config_is_one_clear_error_exit_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {hedas: 4}\ntrain: {lr: fast}\ndata: {train: {src: a, tgt: b}}\n")
    r = runner.invoke(app, ["train", str(cfg)])
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ")
    assert "model.hedas: unknown key; did you mean model.heads?" in r.stderr
    assert "train.lr: expected a number (got 'fast')" in r.stderr
    assert "Traceback" not in r.output
    r = runner.invoke(app, ["data", "check", str(cfg), "--set", "oops"])
    assert r.exit_code == 2 and "--set 'oops'" in r.stderr


def test_debug_shows_the_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("- a list\n")
    r = runner.invoke(app, ["--debug", "train", str(cfg)])
    assert r.exit_code != 0 and r.exception is not None  # raised, not swallowed


def test_missing_data_file_names_key_and_path(tmp_path):
    r = runner.invoke(app, ["train", "--set", f"run_dir={tmp_path / 'run'}", "--set", "data.train.src=nope.de",
                            "--set", "data.train.tgt=nope.en", str(ROOT / "configs/base.yaml")])
    assert r.exit_code == 1 and r.stderr.startswith("error: ")
    assert "nope.de" in r.stderr and "Traceback" not in r.output


def test_evaluate_scores_only_and_counts_mismatch(tmp_path):
    hyp, ref, short = tmp_path / "h.txt", tmp_path / "r.txt", tmp_path / "s.txt"
    hyp.write_text("the cat sat on the mat\nhello world\n")
    ref.write_text("the cat sat on the mat\nhello there world\n")
    short.write_text("one line\n")
    r = runner.invoke(app, ["evaluate", "--hyp", str(hyp), "--ref", str(ref), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert 0 < out["bleu"] <= 100 and set(out["signature"]) == {"bleu", "chrf", "ter"}
    r = runner.invoke(app, ["evaluate", "--hyp", str(hyp), "--ref", str(ref)])
    assert "BLEU = " in r.stdout and "nrefs:1" in r.stdout
    r = runner.invoke(app, ["evaluate", "--hyp", str(hyp), "--ref", str(short)])
    assert r.exit_code == 1 and "has 2 lines" in r.stderr and "has 1" in r.stderr
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nnot \xff utf-8\n")
    r = runner.invoke(app, ["evaluate", "--hyp", str(bad), "--ref", str(ref)])
    assert r.exit_code == 1 and r.stderr.startswith("error: ") and "line 2: invalid UTF-8" in r.stderr


def test_translate_missing_model(tmp_path):
    r = runner.invoke(app, ["translate", str(tmp_path / "nope.pt")])
    assert r.exit_code == 1 and r.stderr.startswith("error: ") and "model not found" in r.stderr


@pytest.mark.slow
def test_train_translate_evaluate_average_end_to_end(tmp_path):
    over = tiny_overrides(tmp_path, extra=["train.keep_last=3"])
    cfg = str(ROOT / "configs/base.yaml")
    r = runner.invoke(app, ["tokenizer", cfg, *sets(over)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["data", "check", cfg, *sets(over)])
    assert r.exit_code == 0, r.output
    assert "train" in r.stdout and "400" in r.stdout
    r = runner.invoke(app, ["train", cfg, *sets(over)])
    assert r.exit_code == 0, r.output
    run = tmp_path / "run"
    src = tmp_path / "data/test.src"
    r = runner.invoke(app, ["translate", str(run), "-i", str(src), "--greedy", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert len(r.stdout.splitlines()) == len(src.read_text().splitlines())
    r = runner.invoke(app, ["translate", str(run), "--beam", "2", "--set", "decode.length_penalty=0"],
                      input="ba de fi\n\nko\n")
    assert r.exit_code == 0 and len(r.stdout.split("\n")) == 4
    r = runner.invoke(app, ["translate", str(run), "--set", "model.d_model=8"], input="x\n")
    assert r.exit_code == 2 and "only decode.*" in r.stderr
    r = runner.invoke(app, ["average", str(run), "--last", "2", "-o", str(tmp_path / "avg.pt")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "avg.pt"), "--src", str(src), "--ref",
                            str(tmp_path / "data/test.tgt"), "--json", "-o", str(tmp_path / "hyp.txt")])
    assert r.exit_code == 0, r.output
    assert "bleu" in json.loads(r.stdout)
    assert len((tmp_path / "hyp.txt").read_text().splitlines()) == 30


def _mtkit(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "mtkit", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_help_and_config_errors_answer_fast(tmp_path):
    """No torch/datasets/sacrebleu import on the way to --help or a config error."""
    t0 = time.monotonic()
    p = _mtkit("--help")
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0 and "translate" in out
    code = ("import sys, mtkit.cli; from mtkit.config import load_config; "
            "print(sorted(m for m in ('torch', 'datasets', 'sacrebleu', 'sentencepiece') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
    assert time.monotonic() - t0 < 30  # generous: the import check above is the real guard


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    """SIGKILL after a save loses only the steps since it; the resumed run ends bit-identical."""

    from mtkit.model.checkpoint import load_checkpoint
    from mtkit.training.train import train
    from tests.tinyrun import same_weights, tiny_config

    over = tiny_overrides(tmp_path, extra=["train.max_steps=40", "train.eval_every=10", "train.log_every=1"])
    p = _mtkit("train", str(ROOT / "configs/base.yaml"), *sets(over))
    metrics = tmp_path / "run/metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until it is past the step-10 save, mid-way to step 20
        text = metrics.read_text() if metrics.exists() else ""
        if '"step": 13,' in text:
            break
        time.sleep(0.05)
    p.kill()
    p.communicate(timeout=60)
    assert p.returncode == -9
    saved = load_checkpoint(tmp_path / "run/last.pt")["step"]
    assert 10 <= saved < 40
    r = _mtkit("train", str(ROOT / "configs/base.yaml"), *sets(over))
    _, err = r.communicate(timeout=300)
    assert r.returncode == 0, err
    assert f"resumed from {tmp_path / 'run'}" in err
    train(tiny_config(tmp_path, "straight", ["train.max_steps=40", "train.eval_every=10", "train.log_every=1"]))
    assert same_weights(tmp_path / "run/last.pt", tmp_path / "straight/last.pt")
    # The steps replayed after the resume are logged once: their first record was dropped.
    events = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "train"] == list(range(1, 41))
    assert [e["step"] for e in events if e["event"] == "valid"] == [10, 20, 30, 40]


@pytest.mark.slow
def test_kill_9_then_resume_under_a_time_budget_ends_as_an_uninterrupted_run_with_its_plan(tmp_path, monkeypatch):
    """train.max_time with a cooldown: where the cooldown begins, the time left becomes a number of
    updates (the plan, saved in checkpoints). A run killed after the plan and resumed ends at the
    planned update, bit-identical to an uninterrupted run that made the same plan."""
    from mtkit.model.checkpoint import load_checkpoint
    from mtkit.training import trainer as trainer_module
    from mtkit.training.runlog import read_metrics
    from mtkit.training.train import train
    from tests.tinyrun import same_weights, tiny_config

    budget = ["train.max_steps=null", "train.cooldown=0.5", "train.eval_every=10", "train.log_every=1",
              "train.patience=0"]
    p = _mtkit("train", str(ROOT / "configs/base.yaml"), *sets(tiny_overrides(tmp_path, extra=[*budget, "train.max_time=8s"])))
    metrics = tmp_path / "run/metrics.jsonl"
    deadline, plan = time.monotonic() + 120, None
    while time.monotonic() < deadline:  # wait for the plan, the first save after it, and 3 updates more
        events = read_metrics(metrics)
        plan = next((e for e in events if e["event"] == "plan"), None)
        saves = [e["step"] for e in events if plan and e["event"] == "valid" and e["step"] > plan["step"]]
        if saves and any(e["event"] == "train" and e["step"] >= saves[0] + 3 for e in events):
            break
        time.sleep(0.05)
    p.kill()
    p.communicate(timeout=60)
    assert p.returncode == -9 and plan is not None
    plan = {k: plan[k] for k in ("step", "fraction", "end_step", "budget_s", "updates_per_s")}
    saved = load_checkpoint(tmp_path / "run/last.pt")
    assert saved["progress"]["time_plan"] == plan and plan["step"] < saved["step"] < plan["end_step"]
    r = _mtkit("train", str(ROOT / "configs/base.yaml"), *sets(tiny_overrides(tmp_path, extra=[*budget, "train.max_time=8s"])))
    _, err = r.communicate(timeout=300)
    assert r.returncode == 0, err
    assert load_checkpoint(tmp_path / "run/last.pt")["step"] == plan["end_step"]
    # The same plan, made at the same update, in a run never stopped (its clock is far from its budget).
    monkeypatch.setattr(trainer_module, "make_time_plan", lambda step, *_: plan if step == plan["step"] else None)
    train(tiny_config(tmp_path, "straight", [*budget, "train.max_time=600s"]))
    assert same_weights(tmp_path / "run/last.pt", tmp_path / "straight/last.pt")


@pytest.mark.slow
def test_sigterm_during_training_saves_and_exits_143(tmp_path):
    over = tiny_overrides(tmp_path, extra=["train.max_steps=100000", "train.eval_every=100000"])
    p = _mtkit("train", str(ROOT / "configs/base.yaml"), *sets(over))
    deadline = time.monotonic() + 120
    log = tmp_path / "run/metrics.jsonl"
    while time.monotonic() < deadline:
        if log.exists() and '"event": "train"' in log.read_text():
            break
        time.sleep(0.2)
    p.send_signal(15)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert "saved" in err and "Resume with the same" in err
    assert (tmp_path / "run/last.pt").exists()


BROKEN_PIPE_PROBE = """
import typer
from mtkit.cli_base import handles_errors

app = typer.Typer()

@app.command()
@handles_errors
def lines():
    for i in range(1_000_000):
        print(f"line {i}")

app()
"""


@pytest.mark.slow
def test_a_reader_that_stops_reading_ends_the_output_quietly():
    """`mtkit translate ... | head`: the closed pipe ends the command with the shell's SIGPIPE status,
    no `error:` line and no traceback (before: `error: Broken pipe`)."""
    p = subprocess.Popen([sys.executable, "-c", BROKEN_PIPE_PROBE], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.stdout.readline() == b"line 0\n"
    p.stdout.close()  # as head does after its lines
    _, err = p.communicate(timeout=60)
    assert p.returncode == 141 and err == b"", err
