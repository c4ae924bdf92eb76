"""What this machine computes natively, the precision `auto` picks from it, and what a bug report needs.

bf16 matmuls are fast only where the hardware multiplies bf16: CPUs with AVX-512 BF16 or AMX, GPUs
from Ampere on. Elsewhere torch emulates them: on an AVX2-only CPU a bf16 matmul ran at 0.3-3
GFLOP/s against 76-220 for fp32, and bf16 training made 3 updates where fp32 made 95. So
`train.precision: auto` and `decode.precision: auto` ask the hardware, never a development
machine's habits (decoding's int8 choice is decoding/precision.py's). MTKIT_NATIVE_BF16=0 or 1
overrides the answer (for a virtual machine that hides CPU flags, or to try the other path).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from mtkit import __version__
from mtkit.errors import TrainingError

log = logging.getLogger("mtkit")

NATIVE_BF16_ENV = "MTKIT_NATIVE_BF16"


def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels use here: "AVX512", "AVX2", "DEFAULT", ..."""
    return torch.backends.cpu.get_cpu_capability()


def resolve_device(name: str) -> str:
    """train.device / --device: "auto" is cuda when a GPU is visible, else cpu."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device: cuda was asked for but no CUDA GPU is visible; use cpu or auto")
    return name


def native_bf16(device: str = "cpu") -> tuple[bool, str]:
    """(whether `device` multiplies bf16 natively, why, in words for a log line)."""
    override = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if override in ("0", "1"):
        return override == "1", f"{NATIVE_BF16_ENV}={override} is set"
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3 has no including_emulation: tensor cores with bf16 are Ampere (8.0) on
            native = torch.cuda.get_device_capability(device) >= (8, 0)
        if native:
            return True, f"{name} computes bf16 natively"
        return False, f"{name} has no native bf16"
    return _cpu_native_bf16()


def _cpu_native_bf16() -> tuple[bool, str]:
    capability = cpu_capability()
    try:  # oneDNN's own answer; it also honours ONEDNN_MAX_CPU_ISA
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn = False
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return (onednn, f"this CPU computes bf16 natively ({platform.machine()})" if onednn
                else f"this CPU has no native bf16 ({platform.machine()}, {capability})")
    # oneDNN also says yes on AVX-512 CPUs without BF16 units (Skylake to Ice Lake), where it
    # converts to fp32 and gains nothing: native needs the units themselves.
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else _cpuinfo_flags()
    units = [name for key, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16")) if caps.get(key)]
    if onednn and units:
        return True, f"this CPU computes bf16 natively ({' and '.join(units)})"
    return False, f"this CPU has no native bf16 ({capability})"


def _cpuinfo_flags() -> dict[str, bool]:
    """The CPU's flags from /proc/cpuinfo (Linux), for torch versions without get_capabilities."""
    return dict.fromkeys(_cpuinfo("flags").split(), True)


def _cpuinfo(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo ("" where there is none, e.g. not on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.split(":", 1)[0].strip() == field), "")
    except OSError:
        return ""


def resolve_precision(requested: str, device: str, key: str = "train.precision", warn: bool = True) -> tuple[str, str]:
    """The precision to run with for `requested` ("auto", "fp32", "bf16", "fp16") and the reason.

    auto -> bf16 where `device` computes it natively, fp32 otherwise. An explicit bf16 on a device
    without native bf16 is kept (the user asked), with a loud warning that measures its cost
    (unless `warn` is false: the other processes of a distributed run leave it to rank 0).
    """
    if requested not in ("auto", "bf16"):
        return requested, f"{key} {requested}"
    native, why = native_bf16(device)
    if requested == "auto":
        return ("bf16" if native else "fp32"), f"{key} auto -> {'bf16' if native else 'fp32'}: {why}"
    if not native and warn:
        slower = bf16_slowdown(device)
        log.warning("%s bf16: %s, so bf16 matmuls are emulated, %s than fp32 (measured just now);"
                    " set %s to auto or fp32", key, why,
                    f"{slower:.0f}x slower" if slower >= 1.5 else "no faster", key)
    return "bf16", f"{key} bf16 as asked ({why})"


def matmul_flops(dtype, seconds: float = 0.1, max_n: int = 2048, device: str = "cpu") -> tuple[float, int]:
    """(FLOP/s, n) of an n x n x n matmul in `dtype`, in about `seconds` whatever the dtype costs.

    n doubles from 256 to `max_n` while one call takes under a 30th of the time: an emulated dtype
    stops at a small size after one slow call instead of spending minutes on a large one."""
    n = 256
    while True:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        a @ b  # warm-up: the first call picks kernels
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        one = time.perf_counter() - t0
        if n >= max_n or 8 * one > seconds / 4:  # the next size would take over a quarter of the time
            break
        n *= 2
    calls, t0 = 0, time.perf_counter()
    while True:
        a @ b
        calls += 1
        sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return 2 * n**3 * calls / elapsed, n


def best_time(calls: list[Callable[[], Any]], tries: int = 3, warm_up: bool = True,
              give_up_after: float = float("inf")) -> float:
    """Seconds of the fastest of `tries` passes over `calls` (each pass calls each once), after one
    untimed pass when `warm_up` (kernels are picked on first use); stops after a pass slower than
    `give_up_after` seconds (a kernel far too slow to win need not be timed again)."""
    if warm_up:
        for call in calls:
            call()
    times: list[float] = []
    while len(times) < tries and (not times or times[-1] <= give_up_after):
        t0 = time.perf_counter()
        for call in calls:
            call()
        times.append(time.perf_counter() - t0)
    return min(times)


def bf16_slowdown(device: str = "cpu") -> float:
    """How many times slower a bf16 matmul is than fp32 here (well under a second of timing)."""
    fp32, n = matmul_flops(torch.float32, 0.05, max_n=256, device=device)
    bf16, _ = matmul_flops(torch.bfloat16, 0.05, max_n=n, device=device)
    return fp32 / bf16


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), before reading a clock."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def machine_report() -> dict[str, Any]:
    """Versions and hardware facts for a bug report and a run's manifest (`mtkit info` adds what
    decode.precision auto picks: tools/info.py)."""

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    cpu_bf16, cpu_why = native_bf16("cpu")
    report: dict[str, Any] = {
        "mtkit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{p: version(p) for p in ("sentencepiece", "sacrebleu", "datasets")},
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_capability": cpu_capability(),
        "cpu_native_bf16": cpu_bf16,
        "cpu_native_bf16_why": cpu_why,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "auto_precision_cpu": "bf16" if cpu_bf16 else "fp32",  # train.precision auto
        "gpus": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            bf16, _ = native_bf16(f"cuda:{i}")
            report["gpus"].append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                                   "capability": f"{props.major}.{props.minor}", "native_bf16": bf16})
        report["cuda"] = torch.version.cuda
    return report


def _cpu_name() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()
