"""Self-describing checkpoints: written atomically, loaded safely.

A checkpoint is one dict saved with torch.save: format version, mtkit version, the resolved
config, model weights, optimizer/scaler/RNG state, data position, step, best score and the
tokenizer model bytes, so `best.pt` alone is enough to translate. Loading always uses
`weights_only=True`: a checkpoint can never run code. Which checkpoints a run dir keeps and
resumes from is training/rundir.py's business; loading.py builds a model from one.
"""

from __future__ import annotations

import errno
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from mtkit import __version__, files
from mtkit.errors import CheckpointError

FORMAT = "mtkit-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically (files.replacing: fsync, rename, fsync of the folder).

    A crash at any moment leaves either the old file or the new one, never a broken one.
    A full disk raises CheckpointError and leaves the previous checkpoint untouched.
    """
    path = Path(path)
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, "mtkit_version": __version__, **state}
    try:
        with files.replacing(path) as f:
            torch.save(state, f)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(
                f"{path}: disk full while saving the checkpoint; the previous {path.name} is intact."
                f" Free space in {path.parent} and run the same command again to resume"
            ) from None
        raise CheckpointError(f"{path}: cannot write checkpoint: {e.strerror or e}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check an mtkit checkpoint on the CPU, never executing code from it.

    Raises:
        CheckpointError: missing, unreadable, truncated, foreign, or from a newer mtkit.
    """
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
