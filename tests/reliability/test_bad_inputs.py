"""Every bad input, through the real command line: a non-zero exit code, one line starting with
`error:` that names the file, line or key, no traceback, and no output pretending to be complete.

The cases are listed in one table so the list of what was tried is readable in one place.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mtkit.cli import app
from mtkit.model.checkpoint import FORMAT, load_checkpoint
from mtkit.training.train import train
from tests.tinyrun import tiny_config, tiny_overrides

runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny trained checkpoint for the translate/evaluate/checkpoint cases."""
    root = tmp_path_factory.mktemp("model")
    train(tiny_config(root, "run", ["train.max_steps=10"]))
    return root / "run" / "best.pt"


class Payload:
    """Pickled, it would create a file when loaded: a checkpoint must never run it."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def train_args(tmp: Path, **data: str) -> list[str]:
    """`mtkit train` on the tiny config with data.train replaced by `data` (e.g. path=...)."""
    config = write(tmp / "c.yaml", "seed: 1\n")
    sets = [o for o in tiny_overrides(tmp, "run") if not o.startswith("data.train.")]
    sets += [f"data.train.{k}={v}" for k, v in data.items()]
    return ["train", str(config), *[x for o in sets for x in ("--set", o)]]


def pair(tmp: Path, src: str | bytes, tgt: str | bytes) -> dict[str, str]:
    return {"src": str(write(tmp / "bad.de", src)), "tgt": str(write(tmp / "bad.en", tgt))}


# name -> (function of (tmp, model) giving the CLI args, expected exit code, text the error must name)
CONFIG_CASES = {
    "invalid YAML": (lambda t, m: ["train", str(write(t / "c.yaml", "model: {d_model: 4\n"))], 2, "c.yaml"),
    "unknown key": (lambda t, m: ["train", str(write(t / "c.yaml", "model: {hedas: 4}\n"))], 2, "model.hedas"),
    "wrong type": (lambda t, m: ["train", str(write(t / "c.yaml", "train: {lr: fast}\n"))], 2, "train.lr"),
    "negative lr": (lambda t, m: train_args(t) + ["--set", "train.lr=-1"], 2, "train.lr"),
    "heads do not divide d_model": (lambda t, m: train_args(t) + ["--set", "model.heads=3"], 2, "model.heads"),
    "beam 0": (lambda t, m: train_args(t) + ["--set", "decode.beam_size=0"], 2, "decode.beam_size"),
    "--set without =": (lambda t, m: train_args(t) + ["--set", "train.lr"], 2, "--set 'train.lr'"),
    "config is a list": (lambda t, m: ["train", str(write(t / "c.yaml", "- a\n- b\n"))], 2, "c.yaml"),
    "config is empty": (lambda t, m: ["train", str(write(t / "c.yaml", ""))], 2, "c.yaml"),
    "config missing": (lambda t, m: ["train", str(t / "nope.yaml")], 2, "nope.yaml"),
}
DATA_CASES = {
    "missing file": (lambda t, m: train_args(t, src=str(t / "no.de"), tgt=str(t / "no.en")), 1, "no.de"),
    "directory instead of file": (lambda t, m: train_args(t, src=str(t), tgt=str(t)), 1, "directory"),
    "line counts differ": (lambda t, m: train_args(t, **pair(t, "a\nb\nc\n", "a\nb\n")), 1, "bad.de"),
    "invalid UTF-8": (lambda t, m: train_args(t, **pair(t, b"gut\nschl\xffecht\n", "good\nbad\n")), 1,
                      "line 2"),
    "only empty lines": (lambda t, m: train_args(t, **pair(t, "\n\n\n", "\n\n\n")), 1, "data.train"),
    "TSV missing column": (lambda t, m: train_args(t, path=str(write(t / "x.tsv", "de\tfr\na\tb\n"))), 1,
                           "tgt"),
    "JSONL line not JSON": (lambda t, m: train_args(t, path=str(write(
        t / "x.jsonl", '{"src": "a", "tgt": "b"}\n{"src": oops\n'))), 1, "line 2"),
    "binary file as text": (lambda t, m: train_args(t, **pair(t, bytes(range(256)) * 4, "a\n")), 1, "bad.de"),
    "gzip that is not gzip": (lambda t, m: train_args(t, src=str(write(t / "x.de.gz", "plain")),
                                                      tgt=str(write(t / "x.en.gz", "plain"))), 1, "x.de.gz"),
    "a 1 MB single line (all data filtered out)": (
        lambda t, m: train_args(t, **pair(t, "wort " * 200_000 + "\n", "word " * 200_000 + "\n")), 1, "max_len"),
}


def _checkpoint_with(tmp: Path, model: Path, **changes) -> Path:
    state = load_checkpoint(model)
    state.update(changes)
    out = tmp / "changed.pt"
    torch.save(state, out)
    return out


def _evil(tmp: Path) -> Path:
    evil = tmp / "evil.pt"
    torch.save({"format": FORMAT, "format_version": 1, "x": Payload(tmp / "pwned")}, evil)
    return evil


CHECKPOINT_CASES = {
    "not a checkpoint": (lambda t, m: ["translate", str(write(t / "notes.pt", "hello")), "-i", str(t / "in")], 1,
                         "notes.pt"),
    "truncated checkpoint": (lambda t, m: ["translate", str(write(t / "cut.pt", m.read_bytes()[:5000])),
                                           "-i", str(t / "in")], 1, "cut.pt"),
    "newer format version": (lambda t, m: ["translate", str(_checkpoint_with(t, m, format_version=99)),
                                           "-i", str(t / "in")], 1, "newer"),
    "pickle that carries code": (lambda t, m: ["translate", str(_evil(t)), "-i", str(t / "in")], 1, "evil.pt"),
    "bare pickle": (lambda t, m: ["translate", str(write(t / "raw.pt", pickle.dumps({"a": 1}))),
                                  "-i", str(t / "in")], 1, "raw.pt"),
}
TRANSLATE_CASES = {
    "missing model": (lambda t, m: ["translate", str(t / "nope.pt"), "-i", str(t / "in")], 1, "nope.pt"),
    "run dir without best.pt": (lambda t, m: ["translate", str(t)], 1, "best.pt"),
    "input with invalid UTF-8": (lambda t, m: ["translate", str(m), "-i", str(write(t / "in", b"gut\n\xff\n")),
                                               "-o", str(t / "out")], 1, "line 2"),
    "input with NUL bytes": (lambda t, m: ["translate", str(m), "-i", str(write(t / "in", b"a\0b\n")),
                                           "-o", str(t / "out")], 1, "in"),
    "missing input": (lambda t, m: ["translate", str(m), "-i", str(t / "nope.txt")], 1, "nope.txt"),
    "hypothesis/reference count mismatch": (lambda t, m: ["evaluate", "--hyp", str(write(t / "h", "a\nb\n")),
                                                          "--ref", str(write(t / "r", "a\n"))], 1, "has 2 lines"),
    "evaluate without --src or --hyp": (lambda t, m: ["evaluate", str(m), "--ref", str(write(t / "r", "a\n"))],
                                        2, "--src"),
}
def corpora(t: Path, *entries: dict) -> list[str]:
    """`mtkit train` with data.train a list: a good corpus first, then `entries`."""
    good = {"src": str(t / "data/train.src"), "tgt": str(t / "data/train.tgt")}
    return at(t, "data.train", json.dumps([good, *entries]))


def at(t: Path, key: str, value: str) -> list[str]:
    """`mtkit train` on the tiny config with `key` set to `value`."""
    sets = [*tiny_overrides(t, "run"), f"{key}={value}"]
    return ["train", str(write(t / "c.yaml", "seed: 1\n")), *[x for o in sets for x in ("--set", o)]]


# Corpus entries, and every path a command reads or writes: checked before any work starts.
# (/proc takes no new files or folders, whoever asks: a place that cannot be written.)
PATH_CASES = {
    "missing test file": (lambda t, m: at(t, "data.test.src", t / "no.src") + ["--set", f"data.test.tgt={t / 'no.tgt'}"],
                          1, "data.test.src"),
    "missing valid file": (lambda t, m: at(t, "data.valid.tgt", t / "gone.tgt"), 1, "data.valid.tgt"),
    "missing file in a second corpus": (lambda t, m: corpora(t, {"src": str(t / "bt.de"), "tgt": str(t / "bt.en")}),
                                        1, "data.train[1].src"),
    "corpus with an unknown key": (lambda t, m: corpora(t, {"path": "x.tsv", "wieght": 2}), 2, "data.train[1].wieght"),
    "corpus with a negative weight": (lambda t, m: corpora(t, {"path": "x.tsv", "weight": -1}), 2,
                                      "data.train[1].weight"),
    "tag with a space": (lambda t, m: corpora(t, {"path": "x.tsv", "tag": "<B T>"}), 2, "data.train[1].tag"),
    "run_dir that cannot be created": (lambda t, m: at(t, "run_dir", "/proc/mtkit-test/run"), 1,
                                       "run_dir /proc/mtkit-test/run"),
    "run_dir that is a file": (lambda t, m: at(t, "run_dir", write(t / "f", "x")), 1, "run_dir"),
    "translate -o where nothing can be written": (lambda t, m: ["translate", str(m), "-i", str(write(t / "in", "a\n")),
                                                                "-o", "/proc/mtkit-test/out.txt"], 1, "/proc/mtkit-test"),
    "translate -o a folder": (lambda t, m: ["translate", str(m), "-i", str(write(t / "in", "a\n")), "-o", str(t)], 1,
                              "is a folder"),
    "score -o where nothing can be written": (lambda t, m: ["score", str(m), "--src", str(write(t / "s", "a\n")),
                                                            "--tgt", str(write(t / "g", "b\n")), "-o", "/proc/o.txt"],
                                              1, "-o /proc/o.txt"),
    "export -o where nothing can be written": (lambda t, m: ["export", str(m), "-o", "/proc/ct2"], 1, "-o /proc/ct2"),
    "plot -o where nothing can be written": (lambda t, m: ["plot", str(m.parent), "-o", "/proc/c.png"], 1,
                                             "-o /proc/c.png"),
    "data --out where nothing can be written": (lambda t, m: ["data", "synthetic", "--out", "/proc/syn"], 1,
                                                "--out /proc/syn"),
    "--prefix the model was not trained with": (lambda t, m: ["translate", str(m), "--prefix", "<2de>", "-i",
                                                              str(write(t / "in", "a\n"))], 2, "--prefix '<2de>'"),
}
CASES = {**CONFIG_CASES, **DATA_CASES, **CHECKPOINT_CASES, **TRANSLATE_CASES, **PATH_CASES}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_error(name, tmp_path, model):
    make_args, code, named = CASES[name]
    r = runner.invoke(app, make_args(tmp_path, model))
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = r.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr  # exactly one error line (warnings before it are allowed)
    message = r.stderr[r.stderr.index(errors[0]):]  # the error line and its indented details, if several
    assert named in message, message
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit)
    # nothing left pretending to be complete, and the code in the evil pickle never ran
    assert not (tmp_path / "out").exists() and not (tmp_path / "pwned").exists()
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.slow
def test_a_missing_test_file_fails_before_any_work(tmp_path):
    """data.test naming a missing file: one error line before the run dir or tokenizer exist."""
    r = runner.invoke(app, at(tmp_path, "data.test.src", tmp_path / "no.src") + ["--set", "data.test.tgt=x"])
    assert r.exit_code == 1 and "error: data.test.src:" in r.stderr and "file not found" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_empty_input_gives_an_empty_output_file(tmp_path, model):
    out = tmp_path / "out.txt"
    r = runner.invoke(app, ["translate", str(model), "-i", str(write(tmp_path / "in", "")), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == b""


def test_every_case_names_a_distinct_problem():
    assert len(CASES) >= 30
    assert len({v[2] for v in CASES.values()}) >= 20  # not thirty copies of one check

