"""Training curves: train loss, dev perplexity, dev BLEU and the learning rate of one or more runs,
against updates and against wall time, read from each run's metrics.jsonl.

`mtkit train` redraws RUN_DIR/curves.png as it goes; `mtkit plot` draws several runs side by side.
The figure uses matplotlib's constrained layout and keeps the legend in its own row, so no titles,
labels or ticks overlap, whatever the number of runs.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from mtkit import extras
from mtkit.errors import DataError
from mtkit.training.runlog import read_metrics

log = logging.getLogger("mtkit")

CURVES = (("train", "loss", "train loss (label-smoothed)"), ("valid", "valid_ppl", "dev perplexity"),
          ("valid", "bleu", "dev BLEU"), ("train", "lr", "learning rate"))
X_AXES = (("step", "update", 1), ("wall_s", "minutes since the start", 60))


def metric_events(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """A run's metrics.jsonl events by kind ("train", "valid", ...), in step order, with `wall_s`
    (seconds since the run's first start) added; a resumed run's replayed steps keep their last
    record."""
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


def draw_curves(run_dirs: list[Path], out: Path) -> Path:
    """Write `curves_figure` of the runs to `out` (the format its suffix names)."""
    return extras.save_figure(curves_figure(run_dirs), out)


def curves_figure(run_dirs: list[Path]) -> Any:
    """Train loss, dev perplexity, dev BLEU and learning rate of each run against updates (top row)
    and wall time (bottom row), one colour per run, labelled by its directory in a legend below."""
    plt = extras.pyplot()
    runs = [(Path(r), metric_events(r)) for r in run_dirs]
    fig = plt.figure(figsize=(4.2 * len(CURVES), 7.6 + 0.25 * len(runs)), layout="constrained")
    grid = fig.add_gridspec(3, len(CURVES), height_ratios=[1, 1, 0.08 + 0.07 * len(runs)])
    axes = [[fig.add_subplot(grid[row, col]) for col in range(len(CURVES))] for row in range(len(X_AXES))]
    for name, (_, events) in zip(_run_names([r for r, _ in runs]), runs):
        for col, (kind, key, title) in enumerate(CURVES):
            points = [e for e in events.get(kind, []) if e.get(key) is not None]
            for row, (x, label, unit) in enumerate(X_AXES):
                ax = axes[row][col]
                ax.plot([e.get(x, 0) / unit for e in points], [e[key] for e in points],
                        marker="." if kind == "valid" else None, label=name)
                ax.set_title(f"{title}, by {label.split()[0]}", fontsize=9)
                ax.set_xlabel(label, fontsize=8)
                ax.tick_params(which="both", labelsize=7)
                if key == "valid_ppl":
                    ax.set_yscale("log")
                if key == "lr":  # each tick says its power of ten: no offset text over the title
                    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.1e}"))
    legend = fig.add_subplot(grid[2, :])
    legend.axis("off")
    legend.legend(*axes[0][0].get_legend_handles_labels(), loc="center", ncol=min(len(runs), 2), fontsize=8,
                  frameon=False)
    return fig


def _run_names(run_dirs: list[Path]) -> list[str]:
    """Legend labels: the run dirs' names, or their paths where two names are alike."""
    names = [p.name or str(p) for p in run_dirs]
    return names if len(set(names)) == len(names) else [str(p) for p in run_dirs]


_LAST_DRAWN: dict[str, float] = {}  # run dir -> time.monotonic() of its last curves.png
REDRAW_SECONDS = 30.0  # at most one redraw per this many seconds, unless forced (the run's end)


def refresh_run_curves(run_dir: Path, force: bool = False) -> None:
    """Redraw RUN_DIR/curves.png (what `mtkit plot RUN_DIR` draws); `mtkit train` calls this after
    each validation (at most every 30 s) and at the end (`force`). Skipped silently without
    matplotlib; a drawing error is a warning, never the end of a training run."""
    key = str(Path(run_dir).resolve())
    if not force and time.monotonic() - _LAST_DRAWN.get(key, -math.inf) < REDRAW_SECONDS:
        return
    if extras.pyplot(quiet=True) is None:
        return
    _LAST_DRAWN[key] = time.monotonic()
    try:
        draw_curves([run_dir], Path(run_dir) / "curves.png")
    except Exception as e:  # noqa: BLE001 - a picture must not stop training
        log.warning("could not draw %s: %s", Path(run_dir) / "curves.png", e)
