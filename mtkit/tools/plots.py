"""Pictures: attention heat maps, the sinusoid table, and training curves, drawn with matplotlib.

matplotlib is an optional extra (`pip install -e .[plot]`; `make install` installs it), imported
only here and only when a picture is asked for. The arrays come from inspection.py (attention,
positions) and from a run's metrics.jsonl (curves); this file only draws them.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from mtkit.errors import DataError, MtkitError
from mtkit.inspection import KINDS, AttentionMaps

log = logging.getLogger("mtkit")


def import_pyplot(quiet: bool = False):
    """matplotlib.pyplot on the file-only Agg backend; None (quiet) or one error line if missing."""
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


def _save(fig: Any, plt: Any, out: Path) -> Path:
    """Write the figure in the format its suffix names (png without one), atomically."""
    from mtkit.runsetup import atomic_path

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format=out.suffix[1:] or "png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return out


def panels(maps: AttentionMaps, layer: int | None = None, head: int | None = None
           ) -> list[tuple[str, int, int, np.ndarray, list[str], list[str]]]:
    """The cells of the attention figure, row by row: (kind, layer, head, weights (queries, keys),
    query labels, key labels); `layer` / `head` (1-based) keep only those."""
    labels = {KINDS[0]: (maps.src_pieces, maps.src_pieces), KINDS[1]: (maps.tgt_pieces, maps.tgt_pieces),
              KINDS[2]: (maps.tgt_pieces, maps.src_pieces)}
    cells = []
    for kind in KINDS:
        w = maps.weights[kind]  # (layers, H, Tq, Tk)
        for li in range(w.shape[0]):
            if layer is not None and li + 1 != layer:
                continue
            for hi in range(w.shape[1]):
                if head is None or hi + 1 == head:
                    cells.append((kind, li + 1, hi + 1, w[li, hi], *labels[kind]))
    return cells


def draw_attention(maps: AttentionMaps, out: Path, layer: int | None = None, head: int | None = None) -> Path:
    """One grid: a row per (kind, layer), a column per head; pieces on the axes (queries down,
    keys across); dark = more weight."""
    plt = import_pyplot()
    cells = panels(maps, layer, head)
    if not cells:
        raise DataError(f"no attention to draw for layer {layer}, head {head}; layers and heads count from 1")
    rows = sorted({(KINDS.index(k), li) for k, li, *_ in cells})
    cols = max(hi for _, _, hi, *_ in cells) if head is None else 1
    size = max(len(maps.src_pieces), len(maps.tgt_pieces)) * 0.28 + 1.5
    fig, axes = plt.subplots(len(rows), cols, figsize=(size * cols, size * len(rows)), squeeze=False)
    for kind, li, hi, w, ylabels, xlabels in cells:
        ax = axes[rows.index((KINDS.index(kind), li))][0 if head is not None else hi - 1]
        ax.imshow(w, cmap="Greys", vmin=0.0, vmax=1.0)
        ax.set_title(f"{kind}\nlayer {li}, head {hi}", fontsize=8)
        ax.set_xticks(range(len(xlabels)), xlabels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(ylabels)), ylabels, fontsize=7)
    fig.tight_layout()  # titles clear of the rotated labels above them
    return _save(fig, plt, out)


def draw_positions(table: np.ndarray, out: Path, dims: tuple[int, ...] = (4, 5, 6, 7)) -> Path:
    """The (length, d_model) sinusoid table as a heat map, and a few of its dimensions as curves
    over the positions (the paper's section 3.5: sin on even, cos on odd dimensions)."""
    plt = import_pyplot()
    length, d_model = table.shape
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    image = left.imshow(table, cmap="RdBu", vmin=-1.0, vmax=1.0, aspect="auto")
    left.set_xlabel("dimension i")
    left.set_ylabel("position")
    left.set_title(f"PE(pos, i), d_model {d_model}")
    fig.colorbar(image, ax=left)
    for d in (d for d in dims if d < d_model):
        wavelength = 2 * np.pi * 10000.0 ** ((d - d % 2) / d_model)
        right.plot(range(length), table[:, d], label=f"dim {d} ({'sin' if d % 2 == 0 else 'cos'},"
                                                     f" wavelength {wavelength:.1f})")
    right.set_xlabel("position")
    right.set_title("a few dimensions")
    right.legend(fontsize=8, loc="lower left")
    return _save(fig, plt, out)


def metric_events(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """A run's metrics.jsonl events by kind ("train", "valid", ...), in step order, with `wall_s`
    (seconds since the run's first start) added; a resumed run's replayed steps keep their last
    record."""
    from mtkit.runlog import read_metrics

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{run_dir}: no metrics.jsonl; give a run dir that `mtkit train` wrote")
    events: dict[str, dict[Any, dict[str, Any]]] = {}
    start = None
    for no, e in enumerate(read_metrics(path)):
        if "time" in e:
            start = e["time"] if start is None else start
            e["wall_s"] = e["time"] - start
        events.setdefault(e.get("event", "?"), {})[e.get("step", no)] = e
    return {k: [v[s] for s in sorted(v)] for k, v in events.items()}


CURVES = (("train", "loss", "train loss (label-smoothed)"), ("valid", "valid_ppl", "dev perplexity"),
          ("valid", "bleu", "dev BLEU"), ("train", "lr", "learning rate"))


def draw_curves(run_dirs: list[Path], out: Path) -> Path:
    """Train loss, dev perplexity, dev BLEU and learning rate of each run against updates (top row)
    and wall time (bottom row), one colour per run, labelled by its directory."""
    plt = import_pyplot()
    runs = [(Path(r), metric_events(r)) for r in run_dirs]
    fig, axes = plt.subplots(2, len(CURVES), figsize=(4.2 * len(CURVES), 7), squeeze=False)
    for run_dir, events in runs:
        for col, (kind, key, title) in enumerate(CURVES):
            points = [e for e in events.get(kind, []) if e.get(key) is not None]
            for row, x in enumerate(("step", "wall_s")):
                ax = axes[row][col]
                ax.plot([e.get(x, 0) / (60 if x == "wall_s" else 1) for e in points], [e[key] for e in points],
                        marker="." if kind == "valid" else None, label=str(run_dir))
                ax.set_title(title, fontsize=9)
                ax.set_xlabel("update" if x == "step" else "minutes since the start")
                if key == "valid_ppl":
                    ax.set_yscale("log")
    axes[0][0].legend(fontsize=7)
    return _save(fig, plt, out)


_LAST_DRAWN: dict[str, float] = {}  # run dir -> time.monotonic() of its last curves.png
REDRAW_SECONDS = 30.0  # at most one redraw per this many seconds, unless forced (the run's end)


def refresh_run_curves(run_dir: Path, force: bool = False) -> None:
    """Redraw RUN_DIR/curves.png (what `mtkit plot RUN_DIR` draws); `mtkit train` calls this after
    each validation (at most every 30 s) and at the end (`force`). Skipped silently without
    matplotlib; a drawing error is a warning, never the end of a training run."""
    import time

    key = str(Path(run_dir).resolve())
    if not force and time.monotonic() - _LAST_DRAWN.get(key, -math.inf) < REDRAW_SECONDS:
        return
    if import_pyplot(quiet=True) is None:
        return
    _LAST_DRAWN[key] = time.monotonic()
    try:
        draw_curves([run_dir], Path(run_dir) / "curves.png")
    except Exception as e:  # noqa: BLE001 - a picture must not stop training
        log.warning("could not draw %s: %s", Path(run_dir) / "curves.png", e)
