"""training/curves.py: the curves of 1 to 4 runs are drawn with no text running into another panel.

Synthetic metrics.jsonl files stand for runs (long run-dir names, learning rates of 1e-4 whose
ticks need exponents); the check is geometric: every panel's bounding box with its title, tick
labels and axis labels (matplotlib's tight bounding box) overlaps no other, and all lie inside the
figure.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mtkit.training.curves import curves_figure, draw_curves, metric_events

plt = pytest.importorskip("matplotlib.pyplot")


def fake_run(folder: Path, seed: int) -> Path:
    """A run dir whose metrics.jsonl holds 400 updates of train events and a validation every 50."""
    folder.mkdir(parents=True)
    lines = [{"event": "start", "step": 0, "time": 1000.0}]
    for step in range(1, 401):
        lr = 1.5e-3 * min(step / 100, math.sqrt(100 / step)) * (1 + 0.1 * seed)
        lines.append({"event": "train", "step": step, "time": 1000.0 + 2.5 * step, "loss": 9.0 / math.sqrt(step),
                      "lr": lr})
        if step % 50 == 0:
            lines.append({"event": "valid", "step": step, "time": 1001.0 + 2.5 * step, "valid_ppl": 900.0 / step,
                          "bleu": step / 40 + seed})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    return folder


def overlapping_panels(fig) -> list[tuple[int, int]]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes if ax.get_visible()]
    page = fig.bbox
    outside = [i for i, b in enumerate(boxes) if b.x0 < page.x0 - 1 or b.y0 < page.y0 - 1
               or b.x1 > page.x1 + 1 or b.y1 > page.y1 + 1]
    overlaps = [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
                if boxes[i].overlaps(boxes[j])]
    return overlaps + [(i, -1) for i in outside]


@pytest.mark.parametrize("runs", [1, 2, 3, 4])
def test_no_panel_runs_into_another(tmp_path, runs):
    dirs = [fake_run(tmp_path / f"ding-de-en-a-rather-long-run-name-{k}", k) for k in range(runs)]
    fig = curves_figure(dirs)
    try:
        assert len(fig.axes) == 9  # 2 rows x 4 curves, and the legend's row
        assert overlapping_panels(fig) == []
        legend = fig.axes[-1].get_legend()
        assert [t.get_text() for t in legend.get_texts()] == [d.name for d in dirs]
    finally:
        plt.close(fig)


def test_the_old_layout_would_fail_the_check(tmp_path):
    """The check bites: four panels in a row without constrained layout put the learning rate's
    tick labels into the BLEU panel's space (what docs/curves.png showed before)."""
    fig, axes = plt.subplots(2, 4, figsize=(16.8, 7))
    for ax in axes.flat:
        ax.plot([1, 2], [1e-4, 2e-4])
        ax.set_title("a title long enough to need some room")
        ax.set_xlabel("minutes since the start")
    try:
        assert overlapping_panels(fig) != []
    finally:
        plt.close(fig)


def test_metric_events_keep_one_record_per_step_and_add_wall_time(tmp_path):
    run = fake_run(tmp_path / "run", 0)
    with open(run / "metrics.jsonl", "a") as f:  # a resumed run replays step 400
        f.write(json.dumps({"event": "train", "step": 400, "time": 3000.0, "loss": 0.5, "lr": 1e-4}) + "\n")
    events = metric_events(run)
    assert [e["step"] for e in events["train"]] == list(range(1, 401))
    assert events["train"][-1]["loss"] == 0.5 and events["train"][0]["wall_s"] == 2.5
    out = draw_curves([run], tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
