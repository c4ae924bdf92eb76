"""The benchmark scripts keep working (never how fast: that is for bench/ and BENCHMARKS.md).

bench/gpu_check.sh must keep working although CI has no GPU: its --cpu-smoke mode runs the
same code (training in bf16 and fp32, decoding, the torchrun DDP start) with a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
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


@pytest.mark.slow
def test_train_speed_benchmark_runs_on_tiny_settings(tmp_path):
    from tests.tinyrun import tiny_overrides

    config = tmp_path / "c.yaml"
    config.write_text("seed: 1\n")
    sets = [x for o in tiny_overrides(tmp_path, "run") for x in ("--set", o)]
    r = subprocess.run([sys.executable, "bench/train_speed.py", "--config", str(config), "--batch-tokens", "256",
                        "--steps", "2", "--warmup", "1", "--rounds", "2", "--threads", "1", *sets],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(result["precisions"]) == {"fp32", "bf16"}
    assert all(p["tokens_per_s"] > 0 for p in result["precisions"].values())
    assert result["mflop_per_target_token"] > 0 and result["matmul_peak_gflops"]["fp32"] > 0
