"""int8 decoding on CPUs: every Linear's matmul in 8-bit integers, with fp32 outside the matmuls.

`decode.precision: int8` swaps each nn.Linear of a (fused, see model.fuse_for_decoding) model for
an 8-bit one: weights quantized once per output channel, activations at every call (dynamic
quantization), products summed exactly in int32 and scaled back to fp32. Two kernels do it, and
the faster one here is used (`kernel_speedups`, timed at start-up on a decoding step's shapes):
- "int_mm" (`Int8Linear`): `torch._int_mm`, activations per row. Fast where oneDNN has a VNNI
  int8 path (3x fp32 on an AVX-512 VNNI CPU); on CPUs without VNNI (Zen 2/3) torch falls back to a
  slow generic loop, ~30x slower than fp32.
- "fbgemm" (`FbgemmLinear`): fbgemm's dynamic int8 linear, activations per tensor in 7 bits. Fast
  on AVX2 CPUs without VNNI (1.1-1.6x fp32 on a Zen 2).
Embeddings, layer norms, attention over the cache, the softmax and the search stay fp32. Training
never uses it.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch
from torch import Tensor, nn

from mtkit.errors import ConfigError
from mtkit.hardware import best_time

ACTIVATION_LEVELS = 127  # activations in [-127, 127]: symmetric, so 0 is exact and no zero point is needed
KERNELS = ("int_mm", "fbgemm")
# A decoding step of the default model (d_model 256, d_ff 1024, 8k vocabulary, 32 sentences x beam 5):
# the FFN's two matmuls and the output projection, (rows, in, out), timed together.
STEP_SHAPES = ((160, 256, 1024), (160, 1024, 256), (160, 256, 8000))
SCREEN_SLOWDOWN = 3  # a kernel this many times slower than fp32 on the first shape is not timed further


# Before running an operator, torch looks for a __torch_function__ override on each argument. On the
# packed weights (a TorchScript object) that lookup raises and catches a C++ exception inside
# torch: ~16 us per call on a Zen 2 (real AVX2), all of it holding Python's lock, and a decoding
# step makes ~20 calls. Inputs here are plain tensors (no subclass to defer to), so the lookup is
# switched off around the call: beam 5 on the first 400 Ding test sentences, one thread, took
# 4.79-5.12 s against 5.08-5.31 s (BENCHMARKS.md). Where a torch lacks the switch the call runs
# as before.
_skip_override_check = getattr(torch._C, "DisableTorchFunctionSubclass", contextlib.nullcontext)


def _direct(op):
    """The C++ function behind `op`'s default overload, or `op` itself where a torch lacks it.

    Called through `torch.ops`, an operator that takes a TorchScript object first walks its arguments
    in Python, looking for the stand-ins torch.compile traces with: ~3 us per call on a Zen 2 (real
    AVX2), ~20 calls per decoding step, all of it holding Python's lock. Decoding runs eagerly on
    real weights, so the walk can never find one.
    """
    return getattr(getattr(op, "default", None), "_op", op)


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


class FbgemmLinear(nn.Module):
    """y = x W^T + b by fbgemm's dynamic int8 linear (torch.ops.quantized.linear_dynamic).

    Weights in [-127, 127] per output channel; activations quantized per call, per tensor, to 7
    bits (reduce_range): AVX2 CPUs without VNNI add pairs of u8 x s8 products in saturating int16,
    which 7-bit activations never overflow (127 * 127 * 2 < 32767), so the int32 sums are exact.
    NOTE: torch deprecates its quantized tensor types (pytorch#184982), which fbgemm's packed weights
    are made from; where a torch has removed them, `kernel_available("fbgemm")` is False and the
    other kernel or fp32 decodes.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()  # (N, K)
        scale = (w.abs().amax(dim=1).clamp_min(1e-12) / 127).double()  # (N,) one per output channel
        zero = torch.zeros(w.size(0), dtype=torch.long)
        with warnings.catch_warnings():  # the deprecation above, said once in this docstring instead
            warnings.simplefilter("ignore", UserWarning)
            w_q = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.packed = torch.ops.quantized.linear_prepack(w_q, bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.linear_dynamic = _direct(torch.ops.quantized.linear_dynamic)

    def forward(self, x: Tensor) -> Tensor:  # (..., K) -> (..., N), fp32
        # The op takes any leading dimensions and strides itself, so it is the only call here.
        with _skip_override_check():
            return self.linear_dynamic(x.float(), self.packed, True)


@functools.cache
def kernel_available(kernel: str) -> bool:
    """Whether `kernel` runs here (a torch build may lack an int8 matmul for CPUs, or fbgemm)."""
    probe = nn.utils.skip_init(nn.Linear, 8, 8)  # no random initialisation: training's stream is left alone
    with torch.no_grad():
        probe.weight.copy_(torch.eye(8))
        probe.bias.zero_()
    try:
        make_int8_linear(probe, kernel)(torch.ones(2, 8))
    except (RuntimeError, AttributeError, ConfigError):
        return False
    return True


def make_int8_linear(linear: nn.Linear, kernel: str) -> nn.Module:
    """`linear` as an 8-bit Linear computed by `kernel` ("int_mm" or "fbgemm")."""
    return Int8Linear(linear, weight_levels()) if kernel == "int_mm" else FbgemmLinear(linear)


def quantize_linears(model: nn.Module, kernel: str | None = None) -> nn.Module:
    """Swap every nn.Linear in `model` for an 8-bit one, in place (`kernel`: the fastest available
    here when None); returns the model.

    Raises:
        ConfigError: no int8 kernel works with this torch.
    """
    kernel = kernel or fastest_kernel()[0]
    if kernel is None:
        raise ConfigError("decode.precision: int8 needs torch._int_mm or fbgemm's int8 linear, and neither works"
                          " with this torch; use auto, fp32 or bf16")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, make_int8_linear(child, kernel))
    return model


def fastest_kernel() -> tuple[str | None, float]:
    """(the fastest int8 kernel here, how many times as fast as fp32); (None, 0.0) when none runs."""
    speedups = kernel_speedups()
    if not speedups:
        return None, 0.0
    kernel = max(speedups, key=speedups.get)
    return kernel, speedups[kernel]


@functools.cache
def kernel_speedups() -> dict[str, float]:
    """How many times as fast as fp32 each available int8 kernel runs here, quantization included, on
    a decoding step's matmuls (STEP_SHAPES), best of 3; 0.2-0.3 s in all on a Zen 2.

    A kernel is first timed on the smallest shape alone: one that runs it more than SCREEN_SLOWDOWN
    x slower than fp32 cannot win and keeps that ratio. Without this, `torch._int_mm` on a CPU
    without VNNI (~20x slower than fp32) took ~0.3 s of every start on a Zen 2.
    """
    gen = torch.Generator().manual_seed(0)  # its own generator: training's random stream is left alone
    layers = []
    for rows, k, n in STEP_SHAPES:
        linear = nn.utils.skip_init(nn.Linear, k, n)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(n, k, generator=gen) / 16)
            linear.bias.zero_()
        layers.append((linear, torch.randn(rows, k, generator=gen)))
    with torch.inference_mode():
        fp32_calls = [lambda lin=lin, x=x: lin(x) for lin, x in layers]
        fp32, fp32_first = best_time(fp32_calls), best_time(fp32_calls[:1])
        out = {}
        for kernel in (k for k in KERNELS if kernel_available(k)):
            calls = [lambda q=make_int8_linear(lin, kernel), x=x: q(x) for lin, x in layers]
            first = best_time(calls[:1], tries=1)
            if first > SCREEN_SLOWDOWN * fp32_first:
                out[kernel] = fp32_first / first
            else:
                out[kernel] = fp32 / best_time(calls, give_up_after=SCREEN_SLOWDOWN * fp32)
    return out
