"""The optional extras: imported only when a feature asks for them, one error line when missing.

matplotlib (pictures: `mtkit inspect`, `mtkit plot`, curves.png) and ctranslate2 (`mtkit export`,
`--engine ctranslate2`) and safetensors (`mtkit import` of a Hugging Face model) are real
dependencies of those features, installed by `make install` (`pip install -e .[plot,ct2,hf]`), but
mtkit runs without them. zstandard unpacks zstd-compressed
Debian packages on Pythons before 3.14 (`mtkit data ding` falls back to dpkg-deb without it).
This is the one module that imports packages inside functions, so that importing mtkit never
needs an extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtkit import files
from mtkit.errors import MtkitError


def pyplot(quiet: bool = False) -> Any:
    """matplotlib.pyplot on the file-only Agg backend; None (`quiet`) or one error line if missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if quiet:
            return None
        raise MtkitError("matplotlib is not installed; install it with `pip install matplotlib`"
                         " (or `pip install -e .[plot]`, which `make install` does)") from None
    return plt


def save_figure(fig: Any, out: Path) -> Path:
    """Write a matplotlib figure in the format its suffix names (png without one), atomically, and
    close it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with files.replacing(out) as f:
            fig.savefig(f, format=out.suffix[1:] or "png", dpi=100, bbox_inches="tight")
    finally:
        pyplot().close(fig)
    return out


def ctranslate2() -> Any:
    """The ctranslate2 module, or one error line saying how to install it."""
    try:
        import ctranslate2
        import ctranslate2.specs
    except ImportError:
        raise MtkitError("CTranslate2 is not installed; install it with `pip install ctranslate2`"
                         " (or `pip install -e .[ct2]`, which `make install` does)") from None
    return ctranslate2


def safetensors_torch() -> Any:
    """safetensors.torch (reading and writing Hugging Face weights), or one error line."""
    try:
        import safetensors.torch
    except ImportError:
        raise MtkitError("safetensors is not installed; install it with `pip install safetensors`"
                         " (or `pip install -e .[hf]`, which `make install` does)") from None
    return safetensors.torch


def zstandard() -> Any | None:
    """The zstandard module, or None when it is not installed."""
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard
