"""Self-describing checkpoints: atomic writes, safe loads, resume discovery and averaging.

A checkpoint is one dict saved with torch.save: format version, mtkit version, the resolved
config, model weights, optimizer/scaler/RNG state, data position, step, best score and the
tokenizer model bytes, so `best.pt` alone is enough to translate. Loading always uses
`weights_only=True`: a checkpoint can never run code. The training loop lives in train.py.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from mtkit import __version__
from mtkit.errors import CheckpointError, ConfigError

log = logging.getLogger("mtkit")

FORMAT = "mtkit-checkpoint"
FORMAT_VERSION = 1
STEP_FILE = re.compile(r"step-(\d+)\.pt$")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: temporary file in the same folder, fsync, rename.

    A crash at any moment leaves either the old file or the new one, never a broken one.
    A full disk raises CheckpointError and leaves the previous checkpoint untouched.
    """
    import torch

    path = Path(path)
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, "mtkit_version": __version__, **state}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        _before_rename_hook(tmp, path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(
                f"{path}: disk full while saving the checkpoint; the previous {path.name} is intact."
                f" Free space in {path.parent} and run the same command again to resume"
            ) from None
        raise CheckpointError(f"{path}: cannot write checkpoint: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _before_rename_hook(tmp: Path, final: Path) -> None:
    """Does nothing; tests replace it to simulate a crash between the write and the rename."""


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def link_or_copy(src: Path, dst: Path) -> None:
    """Make `dst` the same checkpoint as `src` (a hard link: no extra disk), atomically."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check an mtkit checkpoint on the CPU, never executing code from it.

    Raises:
        CheckpointError: missing, unreadable, truncated, foreign, or from a newer mtkit.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found (absolute path {path.resolve()})")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; give a .pt file, or a run dir to `mtkit translate`")
    try:
        with warnings.catch_warnings():  # torch's warnings about foreign pickles: the error below says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
        raise CheckpointError(
            f"{path}: refused to load: it is not a plain mtkit checkpoint (it would need to run code"
            f" or load unknown types: {first[:160]}). Only load checkpoints you trust"
        ) from None
    except Exception as e:  # torch raises many types for garbage input; all mean "unreadable"
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated, corrupted or not a torch file: {type(e).__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mtkit checkpoint (no '{FORMAT}' header)")
    version = state.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} is newer than this mtkit ({__version__}) reads"
            f" (format {FORMAT_VERSION}); upgrade mtkit to load it"
        )
    for key in ("config", "model", "tokenizer"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint lacks '{key}'; it is incomplete or damaged")
    return state


def checkpoints_to_average(paths: list[Path], last: int | None = None) -> list[Path]:
    """`mtkit average`'s inputs: the given checkpoints, or with `last` the newest `last` step-N.pt
    of the one run dir given."""
    if last is None:
        return paths
    if len(paths) != 1 or not paths[0].is_dir():
        raise ConfigError("--last N needs exactly one run dir")
    found = [p for _, p in step_checkpoints(paths[0])][:last]
    if len(found) < last:
        raise ConfigError(f"{paths[0]}: has {len(found)} step-*.pt checkpoints, fewer than --last {last};"
                          " raise train.keep_last for future runs")
    return found


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """`step-N.pt` files in a run dir, newest (highest N) first."""
    found = []
    for p in run_dir.glob("step-*.pt"):
        m = STEP_FILE.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


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


def prune_step_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step-N.pt files."""
    for _, p in step_checkpoints(run_dir)[keep_last:]:
        p.unlink(missing_ok=True)


def resolve_model_path(model: str | Path) -> Path:
    """A checkpoint file, or a run dir meaning its best.pt (else last.pt)."""
    p = Path(model)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).exists():
                return p / name
        raise CheckpointError(f"{p}: run dir has no best.pt or last.pt; train first with `mtkit train`")
    if not p.exists():
        raise CheckpointError(f"{p}: model not found (absolute path {p.resolve()}); give a .pt file or a run dir")
    return p


def average_checkpoints(paths: list[Path]) -> dict[str, Any]:
    """The element-wise mean of several checkpoints' weights, as a weights-only checkpoint.

    Refuses checkpoints of different shapes, vocabularies or tokenizers. The result keeps the
    first checkpoint's config and tokenizer and can be translated with like any other.
    """
    import torch

    if len(paths) < 1:
        raise CheckpointError("average: no checkpoints given")
    first_path = paths[0]
    first = load_checkpoint(first_path)
    total = {k: v.detach().to(torch.float64).clone() for k, v in first["model"].items()}
    for p in paths[1:]:
        other = load_checkpoint(p)
        if other["tokenizer"] != first["tokenizer"]:
            raise CheckpointError(f"average: {p} and {first_path} use different tokenizers/vocabularies")
        if set(other["model"]) != set(total):
            raise CheckpointError(f"average: {p} and {first_path} are different models (parameter names differ)")
        for k, v in other["model"].items():
            if v.shape != total[k].shape:
                raise CheckpointError(
                    f"average: {p} and {first_path} differ in shape at {k}: {tuple(v.shape)} vs {tuple(total[k].shape)}"
                )
            total[k] += v.to(torch.float64)
    model = {k: (v / len(paths)).to(first["model"][k].dtype) for k, v in total.items()}
    return {
        "config": first["config"],
        "tokenizer": first["tokenizer"],
        "model": model,
        "step": first.get("step", 0),
        "averaged_from": [str(p) for p in paths],
    }
