"""Pictures of what the model computes: attention heat maps and the sinusoid table.

The arrays come from inspection.py; this file only draws them, with matplotlib, an optional extra
(extras.py: `pip install -e .[plot]`, which `make install` does). Training curves are drawn by
training/curves.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtkit import extras
from mtkit.errors import DataError
from mtkit.tools.inspection import KINDS, AttentionMaps


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
    plt = extras.pyplot()
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
    return extras.save_figure(fig, out)


def draw_positions(table: np.ndarray, out: Path, dims: tuple[int, ...] = (4, 5, 6, 7)) -> Path:
    """The (length, d_model) sinusoid table as a heat map, and a few of its dimensions as curves
    over the positions (the paper's section 3.5: sin on even, cos on odd dimensions)."""
    plt = extras.pyplot()
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
    return extras.save_figure(fig, out)
