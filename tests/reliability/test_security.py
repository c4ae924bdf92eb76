"""Security: checkpoints cannot run code, configs cannot run code, and a run writes only under
its run dir. The source is scanned so that a later change cannot quietly weaken this."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mtkit.training.train import train
from tests.tinyrun import tiny_config

PACKAGE = Path(__file__).resolve().parents[2] / "mtkit"


def calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call of `name` (e.g. "torch.load", "eval") in the package's source, every subpackage's too."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                found.append((path, node))
    return found


def test_the_scan_reads_every_module_of_every_subpackage():
    scanned = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}
    assert {"cli.py", "model/checkpoint.py", "decoding/search.py", "training/trainer.py"} <= scanned


def test_every_torch_load_is_weights_only():
    loads = calls("torch.load")
    assert any(p.name == "checkpoint.py" for p, _ in loads), "expected model/checkpoint.py to load checkpoints"
    for path, node in loads:
        kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
        assert kw.get("weights_only") == "True", f"{path.name}:{node.lineno} loads without weights_only=True"


@pytest.mark.parametrize("name", ["eval", "exec", "compile", "__import__", "pickle.load", "pickle.loads",
                                  "yaml.load", "yaml.unsafe_load", "yaml.full_load", "os.system",
                                  "subprocess.call", "subprocess.Popen"])
def test_no_code_execution_from_data(name):
    assert calls(name) == [], f"{name} used in {[f'{p.name}:{n.lineno}' for p, n in calls(name)]}"


def test_yaml_is_only_safe_loaded():
    assert calls("yaml.safe_load"), "expected configs to be read with yaml.safe_load"


def test_subprocesses_never_use_a_shell():
    for path, node in calls("subprocess.run"):
        kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
        assert kw.get("shell", "False") == "False", f"{path.name}:{node.lineno} uses a shell"


@pytest.mark.slow
def test_a_run_writes_only_under_its_run_dir(tmp_path):
    cfg = tiny_config(tmp_path, "run", ["train.max_steps=5"])
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    train(cfg)
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    outside = [p for p in after if before.get(p) != after[p] and (tmp_path / "run") not in p.parents
               and p != tmp_path / "run"]
    assert outside == []  # the data it read is untouched; nothing was written beside it
