"""decode.precision: what a model decodes in, and the model prepared for it.

auto picks int8 on a CPU where the fastest 8-bit kernel, timed at start-up on a decoding step's
matmuls, runs at least INT8_MIN_SPEEDUP x as fast as fp32 (model/quantize.py), else what
train.precision's auto picks (hardware.py: bf16 where native, fp32 elsewhere). The model is then
fused and cast or quantized once; search keeps its log-softmax and scores in fp32 throughout. Translation, evaluation and validation all prepare
models here, so they decode alike.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from mtkit.errors import ConfigError
from mtkit.hardware import resolve_precision
from mtkit.model.quantize import fastest_kernel, kernel_speedups, quantize_linears
from mtkit.model.transformer import Transformer

log = logging.getLogger("mtkit")

INT8_MIN_SPEEDUP = 1.3  # int8 rounds every matmul; it is worth it only where it is clearly faster


def resolve_decode_precision(requested: str, device: str) -> tuple[str, str]:
    """decode.precision to run with, and why: int8 (CPUs only) as asked, or what auto picks on a CPU
    where the fastest 8-bit kernel is at least INT8_MIN_SPEEDUP x as fast as fp32 (timed here:
    quantize.py); otherwise as resolve_precision (auto: bf16 where native, else fp32).

    On the Ding model int8 stayed within 0.2 BLEU of fp32 on dev with either kernel (BENCHMARKS.md).
    """
    if requested == "int8" and not device.startswith("cpu"):
        raise ConfigError(f"decode.precision: int8 runs on CPUs only (device {device}); use auto, bf16 or fp32")
    if requested == "int8":
        return "int8", f"decode.precision int8 as asked: {int8_words()}"
    if requested == "auto" and device.startswith("cpu"):
        if fastest_kernel()[1] >= INT8_MIN_SPEEDUP:
            return "int8", f"decode.precision auto -> int8: {int8_words()}"
        precision, why = resolve_precision("auto", device, "decode.precision")
        return precision, f"{why}; not int8: {int8_words()}"
    return resolve_precision(requested, device, "decode.precision")


def int8_words() -> str:
    """What the int8 kernels do here, in words for a log line: "8-bit matmuls by fbgemm run 1.5x as
    fast as fp32 here (int_mm: 23x slower)"."""
    speedups = kernel_speedups()
    kernel, speedup = fastest_kernel()
    if kernel is None:
        return "no 8-bit matmul works with this torch"
    others = [f"{name}: {_ratio(s, short=True)}" for name, s in speedups.items() if name != kernel]
    return f"8-bit matmuls by {kernel} run {_ratio(speedup)} fp32 here" + (f" ({'; '.join(others)})" if others else "")


def _ratio(speedup: float, short: bool = False) -> str:
    """1.52 -> "1.5x as fast as"; 0.034 -> "29x slower than" (never "0.0x"); `short` drops "as"/"than"."""
    if speedup >= 1:
        return f"{speedup:.1f}x as fast" + ("" if short else " as")
    slower = 1 / max(speedup, 1e-9)
    return (f"{slower:.1f}x" if slower < 10 else f"{slower:.0f}x") + " slower" + ("" if short else " than")


def cast_for_decoding(model: Transformer, precision: str, device: str = "cpu") -> tuple[nn.Module, str]:
    """decode.precision resolved for `device` (auto: resolve_decode_precision, logged) and
    the model prepared for it (prepare_for_decoding). Returns (model, precision run)."""
    precision, why = resolve_decode_precision(precision, device)
    log.info("%s", why)
    return prepare_for_decoding(model, precision), precision


def prepare_for_decoding(model: Transformer, precision: str) -> nn.Module:
    """A loaded model made ready to decode in `precision` (fp32, bf16 or int8; resolved, not auto).

    The projections are fused (model.fuse_for_decoding) whatever the precision. bf16 turns the
    weights to bf16, so the matmuls run on the CPU's bf16 units (or a GPU's tensor cores); int8
    runs every Linear in 8-bit integers (quantize.py, CPUs only). Search keeps its log-softmax and
    scores in fp32 throughout. The model must not be trained afterwards.
    """
    model.fuse_for_decoding()
    if precision == "int8":
        return quantize_linears(model)
    return model.to(torch.bfloat16) if precision == "bf16" else model
