"""bench/gpu_check.sh must keep working although CI has no GPU: its --cpu-smoke mode runs the
same code (training in bf16 and fp32, decoding, the torchrun DDP start) with a tiny model."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_and_reports_every_figure():
    r = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu-smoke"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["smoke"] is True
    assert [t["precision"] for t in result["training"]] == ["bf16", "fp32"]
    assert all(t["tokens_per_s"] > 0 and t["steps"] >= 1 for t in result["training"])
    assert {(d["beam"], d["precision"]) for d in result["decoding"]} == {(1, "fp32"), (1, "bf16"), (5, "fp32"),
                                                                        (5, "bf16")}
    assert result["ddp"] == {**result["ddp"], "ok": True, "exit_code": 0, "backend": "gloo"}
