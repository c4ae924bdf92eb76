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
    """bf16 is timed where this CPU computes it natively, and reported as emulated elsewhere."""
    from mtkit.hardware import native_bf16

    r = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu-smoke"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["smoke"] is True
    native = native_bf16("cpu")[0]
    assert result["native_bf16"] is native
    precisions = ["bf16", "fp32"] if native else ["fp32"]
    assert [t["precision"] for t in result["training"]] == precisions
    assert all(t["tokens_per_s"] > 0 and t["steps"] >= 1 for t in result["training"])
    assert {(d["beam"], d["precision"]) for d in result["decoding"]} == {(b, p) for b in (1, 5) for p in precisions}
    assert result["matmul_tflops"]["tf32"] > 0
    assert result["matmul_tflops"]["bf16"] == "emulated" if not native else result["matmul_tflops"]["bf16"] > 0
    assert result["ddp"] == {**result["ddp"], "ok": True, "exit_code": 0, "backend": "gloo"}


@pytest.mark.slow
@pytest.mark.parametrize("native", ["0", "1"])
def test_train_speed_benchmark_runs_on_tiny_settings(tmp_path, native):
    """Both answers of the bf16 check (forced by MTKIT_NATIVE_BF16): an emulated bf16 is reported as
    such, never timed (on an AVX2 CPU timing it took over 5 minutes)."""
    import os

    from tests.tinyrun import tiny_overrides

    config = tmp_path / "c.yaml"
    config.write_text("seed: 1\n")
    sets = [x for o in tiny_overrides(tmp_path, "run") for x in ("--set", o)]
    r = subprocess.run([sys.executable, "bench/train_speed.py", "--config", str(config), "--batch-tokens", "256",
                        "--steps", "2", "--warmup", "1", "--rounds", "2", "--threads", "1", "--separate-qkv", *sets],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "MTKIT_NATIVE_BF16": native})
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    timed = ["fp32", "bf16"] if native == "1" else ["fp32"]
    timed += [f"{p}+separate-qkv" for p in timed]  # the attention before Q/K/V fusion, timed alike
    assert set(result["precisions"]) == {"bf16", *timed} and result["native_bf16"] is (native == "1")
    assert all(result["precisions"][p]["tokens_per_s"] > 0 for p in timed)
    assert result["mflop_per_target_token"] > 0 and result["matmul_peak_gflops"]["fp32"] > 0
    if native == "0":
        assert result["precisions"]["bf16"] == result["matmul_peak_gflops"]["bf16"] == "emulated"
        assert any(line.split()[:2] == ["bf16", "emulated"] for line in r.stdout.splitlines())
    else:
        assert result["matmul_peak_gflops"]["bf16"] > 0


def test_peer_log_parsers_read_target_tokens_per_second(tmp_path):
    """bench/peers/ reads the peers' own throughput lines (samples from OpenNMT-py 3.5.1 and JoeyNMT
    2.3.0 logs), and the noam factor puts OpenNMT-py's peak learning rate where mtkit's is."""
    sys.path.insert(0, str(ROOT / "bench" / "peers"))
    try:
        import joey
        import opennmt
    finally:
        sys.path.remove(str(ROOT / "bench" / "peers"))
    (tmp_path / "onmt").mkdir()
    (tmp_path / "onmt" / "train.log").write_text(
        "[2026-11-29 00:12:22,890 INFO] Step  5/   20; acc: 11.7; ppl: 5784.5; xent: 8.7; lr: 0.00090; sents:"
        "    1844; bsz: 1902/2143/369; 392/442 tok/s;     24 sec;\n"
        "[2026-11-29 00:12:33,387 INFO] Step 10/   20; acc: 15.5; ppl: 2348.9; xent: 7.8; lr: 0.00143; sents:"
        "    1364; bsz: 1565/1760/273; 745/838 tok/s;     35 sec;\n")
    out = opennmt.throughput(tmp_path / "onmt", skip=1)
    assert (out["median_tgt_tok_s"], out["intervals"], out["mean_real_tgt_tokens_per_batch"]) == (838, 2, 1760)
    (tmp_path / "joey").mkdir()
    line = ("2026-11-29 00:16:11,547 - INFO - joeynmt.training - Epoch   1, Step:       {}, Batch Loss:     7.244275,"
            " Batch Acc: 0.171111, Tokens per Sec:      {}, Lr: 0.000150\n")
    # JoeyNMT logs each line twice (console and its own log file): each step counts once.
    (tmp_path / "joey" / "train.log").write_text(line.format(5, 204) * 2 + line.format(10, 248) * 2)
    out = joey.throughput(tmp_path / "joey", skip=0)
    assert (out["intervals"], out["min_tgt_tok_s"], out["max_tgt_tok_s"]) == (2, 204, 248)
    # noam: lr(step) = factor * d^-0.5 * min(step^-0.5, step * W^-1.5) peaks at step W with the value P.
    factor, d, w = opennmt.noam_factor(1.5e-3, 200), 256, 200
    assert abs(factor * d**-0.5 * min(w**-0.5, w * w**-1.5) - 1.5e-3) < 1e-12


@pytest.mark.slow
def test_first_update_benchmark_times_a_fresh_run_and_a_resume(tmp_path):
    r = subprocess.run([sys.executable, "bench/first_update.py", "--pairs", "3000", "--vocab", "300", "--work",
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["pairs"] == 3000 and result["first"]["seconds"] > 0 and result["resume"]["seconds"] > 0
    assert result["first"]["main_anon"] > 0 and result["resume"]["main_file"] > 0
    assert "resumed from" in (tmp_path / "resume3000.log").read_text()
