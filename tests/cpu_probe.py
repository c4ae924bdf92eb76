"""What mtkit's CPU-dependent paths decide on this CPU, as one JSON line on stdout.

tests/test_cpu_classes.py runs it under qemu-user with another CPU model's CPUID
(bench/as_cpu.sh), so that torch dispatches as on real hardware of that class: the vector ISA torch
uses, native bf16, train.precision auto, whether each int8 kernel's integer sums are exact.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from mtkit.hardware import cpu_capability, native_bf16, resolve_precision
from mtkit.model import quantize


def int_mm_exact(levels: int) -> bool:
    """torch._int_mm of full-range activations and weights of `levels` against int32 sums."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-127, 128, (40, 96), generator=gen, dtype=torch.int8)
    x[:, :8] = 127  # the worst case for pairwise int16 sums
    w = torch.randint(-levels, levels + 1, (96, 50), generator=gen, dtype=torch.int8)
    w[:8] = levels
    return torch.equal(torch._int_mm(x, w), x.int() @ w.int())


def fbgemm_exact() -> bool:
    """fbgemm's int8 linear on inputs its rounding keeps (0..127, weights +-127 per row)."""
    gen = torch.Generator().manual_seed(0)
    linear = nn.Linear(64, 16)
    with torch.no_grad():
        linear.weight.copy_(torch.randint(-127, 128, (16, 64), generator=gen).float())
        linear.weight[:, 0] = 127
        linear.bias.zero_()
        x = torch.randint(0, 128, (8, 64), generator=gen).float()
        x[0, 0], x[0, 1], x[1, :] = 127, 0, 127
        return torch.equal(quantize.FbgemmLinear(linear)(x), linear(x))


def main() -> None:
    levels = quantize.weight_levels()
    print(json.dumps({
        "cpu_capability": cpu_capability(),
        "native_bf16": native_bf16("cpu")[0],
        "train_precision_auto": resolve_precision("auto", "cpu", warn=False)[0],
        "kernels": [k for k in quantize.KERNELS if quantize.kernel_available(k)],
        "weight_levels": levels,
        "int_mm_exact": int_mm_exact(levels),
        "fbgemm_exact": fbgemm_exact() if quantize.kernel_available("fbgemm") else None,
    }))


if __name__ == "__main__":
    main()
