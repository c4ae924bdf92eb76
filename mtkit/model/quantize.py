"""int8 decoding on CPUs: every Linear's matmul in 8-bit integers, with fp32 outside the matmuls.

`decode.precision: int8` swaps each nn.Linear of a (fused, see model.fuse_for_decoding) model for
an `Int8Linear`: weights quantized once per output channel, activations per row at every call
(dynamic quantization), the product accumulated exactly in int32 by `torch._int_mm` and scaled
back to fp32. Embeddings, layer norms, attention over the cache, the softmax and the search stay
fp32. Training never uses it.
"""

from __future__ import annotations

import functools
import time

import torch
from torch import Tensor, nn

from mtkit.errors import ConfigError

ACTIVATION_LEVELS = 127  # activations in [-127, 127]: symmetric, so 0 is exact and no zero point is needed


class Int8Linear(nn.Module):
    """y = x W^T + b with W and x rounded to int8 (per output channel and per row) for the product.

    Args:
        linear: the fp32 Linear to copy; its weight is quantized, its bias kept in fp32.
        weight_levels: weights in [-weight_levels, weight_levels]; see `weight_levels`.
    """

    def __init__(self, linear: nn.Linear, weight_levels: int):
        super().__init__()
        w = linear.weight.detach().float()  # (N, K)
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / weight_levels  # (N,) one per output channel
        # Stored (K, N), the layout torch._int_mm multiplies by; a transposed view of (N, K) rows.
        self.register_buffer("weight_t", torch.round(w / scale[:, None]).to(torch.int8).t())
        self.register_buffer("weight_scale", scale)  # (N,)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: Tensor) -> Tensor:  # (..., K) -> (..., N), fp32
        shape = x.shape
        x = x.reshape(-1, shape[-1]).float()  # (R, K)
        x_scale = x.abs().amax(dim=1, keepdim=True).clamp_min_(1e-12).div_(ACTIVATION_LEVELS)  # (R, 1)
        x_q = torch.round(x / x_scale).to(torch.int8)  # (R, K)
        y = torch._int_mm(x_q, self.weight_t).float()  # (R, N), exact int32 sums
        y = y.mul_(x_scale).mul_(self.weight_scale)
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.view(*shape[:-1], self.out_features)


@functools.lru_cache(maxsize=1)
def weight_levels() -> int:
    """127 where this CPU multiplies int8 x int8 exactly, else 63.

    Without VNNI (e.g. AVX2-only CPUs) oneDNN multiplies through instructions that add pairs of
    products in int16 and saturate, which full-range weights overflow; weights in [-63, 63] never
    do (255 * 64 * 2 < 32767). Decided by trying it here, not by reading CPU flags: the products of
    full-range operands either come out exact or they do not.
    """
    x = torch.full((32, 64), 127, dtype=torch.int8)
    w = torch.full((64, 32), 127, dtype=torch.int8)
    try:
        exact = torch.equal(torch._int_mm(x, w), x.int() @ w.int())
    except RuntimeError as e:  # a torch build or platform without an int8 matmul for CPUs
        raise ConfigError(f"decode.precision: int8 needs torch._int_mm, which fails here ({str(e)[:120]});"
                          " use auto, fp32 or bf16") from None
    return 127 if exact else 63


def quantize_linears(model: nn.Module) -> nn.Module:
    """Swap every nn.Linear in `model` for an Int8Linear, in place; returns the model (fp32 otherwise)."""
    levels = weight_levels()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child, levels))
    return model


@functools.lru_cache(maxsize=1)
def int8_speedup() -> float:
    """How many times faster an Int8Linear is than an fp32 Linear here, quantization included, at
    a decoding step's size (160 rows, 256 -> 1024); timed in a few milliseconds, best of 5."""
    gen = torch.Generator().manual_seed(0)  # its own generator: training's random stream is left alone
    linear = nn.utils.skip_init(nn.Linear, 256, 1024)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(1024, 256, generator=gen) / 16)
        linear.bias.zero_()
    x = torch.randn(160, 256, generator=gen)
    try:
        quantized = Int8Linear(linear, weight_levels())
    except ConfigError:
        return 0.0  # no int8 matmul here: auto keeps bf16 / fp32

    def best_time(f) -> float:
        f()  # warm-up: picks kernels
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(4):
                f()
            times.append(time.perf_counter() - t0)
        return min(times)

    with torch.inference_mode():
        return best_time(lambda: linear(x)) / best_time(lambda: quantized(x))
