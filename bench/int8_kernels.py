#!/usr/bin/env python3
"""int8 kernels against fp32, one Linear at a time: ms per call, speed ratio and relative error.

Times an fp32 nn.Linear and mtkit's two int8 Linears (model/quantize.py: torch._int_mm with
per-row activations, fbgemm's dynamic int8 linear with per-tensor 7-bit activations; activation
quantization included) on decoding-sized shapes, best of 5 x N calls, then prints what
`decode.precision: auto` would pick here. Run on the CPU whose figures you want: under emulation
(bench/as_cpu.sh) the timings mean nothing.

usage: python bench/int8_kernels.py [--threads 2] [--calls 20]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = ((160, 256, 768), (160, 256, 1024), (160, 1024, 256), (160, 256, 8000), (2048, 256, 1024))


def best_ms(f, calls: int) -> float:
    """ms per call: the best of 5 passes of `calls` calls (hardware.best_time)."""
    from mtkit.hardware import best_time

    return 1000 * best_time([f] * calls, tries=5) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()

    import torch
    from torch import nn

    from mtkit.decoding.precision import resolve_decode_precision
    from mtkit.hardware import cpu_capability
    from mtkit.model.quantize import KERNELS, kernel_available, make_int8_linear

    torch.set_num_threads(args.threads)
    kernels = [k for k in KERNELS if kernel_available(k)]
    print(f"int8 kernels: torch {torch.__version__}, cpu capability {cpu_capability()}, {args.threads} threads,"
          f" kernels here: {', '.join(kernels)}")
    rows = []
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for r, k, n in SHAPES:
            linear = nn.Linear(k, n)
            linear.weight.copy_(torch.randn(n, k, generator=gen) / 16)
            x = torch.randn(r, k, generator=gen)
            row = {"shape": f"{r}x{k}->{n}", "fp32_ms": round(best_ms(lambda f=linear, x=x: f(x), args.calls), 3)}
            for kernel in kernels:
                q = make_int8_linear(linear, kernel)
                ms = best_ms(lambda q=q, x=x: q(x), args.calls)
                err = float((q(x) - linear(x)).norm() / linear(x).norm())
                row[kernel] = {"ms": round(ms, 3), "speedup": round(row["fp32_ms"] / ms, 3), "rel_err": round(err, 4)}
            rows.append(row)
            print(f"  {row['shape']:>16}: fp32 {row['fp32_ms']:.3f} ms" + "".join(
                f" | {k} {row[k]['ms']:.3f} ms ({row[k]['speedup']:.2f}x, rel err {row[k]['rel_err']:.4f})"
                for k in kernels))
    precision, why = resolve_decode_precision("auto", "cpu")
    print(f"  {why}")
    print(json.dumps({"bench": "int8_kernels", "cpu_capability": cpu_capability(), "threads": args.threads,
                      "rows": rows, "auto": precision, "why": why}))


if __name__ == "__main__":
    main()
