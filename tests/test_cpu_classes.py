"""The CPU-dependent paths as another CPU class takes them: run under qemu-user with a real AVX2
CPU's CPUID (bench/as_cpu.sh), torch dispatches as on that hardware, so which kernel runs and
whether its results are exact are what that CPU would get. (Timings under emulation mean nothing:
speed is measured on real machines, BENCHMARKS.md.)

An AVX-512 CPU restricted with ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY is not such a machine:
CPUID still says AVX-512, and torch picks its int8 matmul path from CPUID. Skipped, with the
reason, where Debian's qemu-user is not installed (`apt-get install qemu-user`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def probe(cpu_model: str) -> dict:
    r = subprocess.run(["bash", "bench/as_cpu.sh", cpu_model, sys.executable, "tests/cpu_probe.py"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs qemu-user (apt-get install qemu-user)")
def test_an_avx2_cpu_without_vnni_trains_in_fp32_and_sums_int8_exactly():
    """A Zen 3 (EPYC-Milan: AVX2, no AVX-512, no VNNI), the CPU issue 25 was measured on. (`bench/as_cpu.sh
    EPYC-Rome ...` gives a Zen 2; the same answers, 2026-12-02.)"""
    got = probe("EPYC-Milan")
    assert got["cpu_capability"] == "AVX2"
    assert got["native_bf16"] is False and got["train_precision_auto"] == "fp32"  # bf16 would be emulated
    assert got["int_mm_exact"] is True  # at the weight levels chosen there (quantize.weight_levels)
    assert got["fbgemm_exact"] in (True, None)
    assert got["kernels"], "some int8 kernel runs"
