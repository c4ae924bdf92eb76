"""The package's structure, read from its source: the layers point one way, no module imports in a
circle, imports sit at the top of their module, modules and functions stay short, and the wheel
carries every subpackage.

The layers, lowest first: a module may import from its own layer and the ones below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import setuptools
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mtkit"
LAYERS = (
    ("mtkit", "mtkit.errors", "mtkit.files", "mtkit.extras"),  # mtkit: __version__
    ("mtkit.config", "mtkit.configcheck"),
    ("mtkit.hardware", "mtkit.memory"),
    ("mtkit.data",),
    ("mtkit.model",),
    ("mtkit.decoding",),
    ("mtkit.training",),
    ("mtkit.tools",),
    ("mtkit.cli_base",),  # what every command shares: error lines, --debug, --set
    ("mtkit.cli_data", "mtkit.cli_models", "mtkit.cli", "mtkit.__main__"),
)
# They say why in their docstrings: --help must not load torch.
LAZY_IMPORTS_ALLOWED = {"mtkit.cli", "mtkit.cli_base", "mtkit.cli_data", "mtkit.cli_models"}
OPTIONAL_EXTRAS = {"matplotlib", "ctranslate2", "zstandard", "safetensors", "transformers"}  # imported on demand, in extras.py only
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60  # docstring excluded


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def layer(name: str) -> int:
    """The index in LAYERS of the longest entry that is `name` or a package above it."""
    found = [(len(entry), i) for i, group in enumerate(LAYERS) for entry in group
             if name == entry or name.startswith(entry + ".") and entry != "mtkit"]
    assert found, f"{name} is in no layer: add it to tests/test_layers.py LAYERS"
    return max(found)[1]


def imports(name: str) -> list[tuple[str, ast.stmt]]:
    """(imported mtkit module, statement) for every import of mtkit in module `name`, wherever it sits."""
    out = []
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{name}:{node.lineno}: relative import; write it absolute"
            if node.module == "mtkit" or (node.module or "").startswith("mtkit."):
                for alias in node.names:  # `from mtkit.x import y`: module mtkit.x.y, or a name of mtkit.x
                    sub = f"{node.module}.{alias.name}"
                    out.append((sub if sub in MODULES else node.module, node))
        elif isinstance(node, ast.Import):
            out += [(alias.name, node) for alias in node.names if alias.name.split(".")[0] == "mtkit"]
    return out


GRAPH = {name: sorted({target for target, _ in imports(name)} - {name}) for name in MODULES}


def test_every_import_follows_the_layer_order():
    against = [f"{name}:{stmt.lineno} imports {target} (layer {layer(target)} above {layer(name)})"
               for name in MODULES for target, stmt in imports(name) if layer(target) > layer(name)]
    assert against == []


def test_no_import_circles_counting_every_import():
    """Depth-first search over the graph of every mtkit import (at the top or inside functions)."""
    state: dict[str, str] = {}
    circles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in GRAPH.get(name, []):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in MODULES:
        if name not in state:
            visit(name, [name])
    assert circles == []


def test_imports_sit_at_the_top_of_their_module():
    """Only the command-line modules import inside functions (and say why); extras.py imports the
    optional extras on demand, and nothing else."""
    misplaced = []
    for name, tree in TREES.items():
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                roots = {(node.module or "") if isinstance(node, ast.ImportFrom) else a.name for a in node.names}
                roots = {r.split(".")[0] for r in roots}
                if name in LAZY_IMPORTS_ALLOWED or (name == "mtkit.extras" and roots <= OPTIONAL_EXTRAS):
                    continue
                misplaced.append(f"{name}:{node.lineno} {ast.unparse(node)}")
    assert misplaced == []
    for name in sorted(LAZY_IMPORTS_ALLOWED):
        assert "inside functions, on purpose" in (ast.get_docstring(TREES[name]) or ""), name


def test_subpackages_import_nothing_on_their_own():
    """Importing mtkit.decoding.search must not load every other stage module: the packages'
    __init__ files hold a docstring only (the stage's modules in reading order)."""
    for name, path in MODULES.items():
        if path.name == "__init__.py" and name != "mtkit":
            tree = TREES[name]
            assert ast.get_docstring(tree), f"{path}: say what the stage holds"
            assert all(isinstance(s, ast.Expr) for s in tree.body), f"{path}: only a docstring"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_stay_short(name):
    path = MODULES[name]
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name}: {lines} lines; split it by concept"
    for node in ast.walk(TREES[name]):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body[1:] if ast.get_docstring(node) is not None else node.body
            if body:
                n = node.end_lineno - body[0].lineno + 1
                assert n <= MAX_FUNCTION_LINES, f"{path.name}:{node.lineno} {node.name}: {n} lines"


def test_the_wheel_finds_every_subpackage():
    """pyproject.toml's package discovery finds every folder of the package: a built wheel then
    carries every module (the release check builds one: docs/troubleshooting.md)."""
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = set(setuptools.find_packages(where=str(ROOT), include=find["include"]))
    folders = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    assert found == folders
    assert all(path.parent.joinpath("__init__.py").exists() for path in MODULES.values())


def test_one_module_puts_files_in_place():
    """Renames, links and temporary files for what a user keeps are files.py's alone; scratch
    folders that are thrown away (tempfile.TemporaryDirectory) are not placing anything."""
    placing = {"os.replace", "os.rename", "os.link", "shutil.move", "shutil.copyfile", "tempfile.mkstemp",
               "tempfile.mkdtemp", "tempfile.NamedTemporaryFile"}
    found = []
    for name, tree in TREES.items():
        if name == "mtkit.files":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                called = ast.unparse(node.func)
                if called in placing or called.endswith((".rename", ".link_to", ".hardlink_to")):
                    found.append(f"{name}:{node.lineno} {called}")
    assert found == []
