"""Process memory: how freed tensor memory is reused, and the peak resident size for the logs,
told apart by kind: anonymous memory (what the process itself holds: tensors, arrays, the heap
kept for reuse) and file-backed pages (memory-mapped Arrow data and libraries, which the kernel
drops and reads again when memory runs short). Only the first can run a machine out of memory.

PyTorch's CPU tensors come straight from malloc. glibc serves a block over its mmap threshold (at
most 32 MB) with a fresh mmap and unmaps it on free, so every large activation, logit or gradient
tensor of every update is new memory that the kernel must fault in and zero page by page: on the
Ding model (2k-token batches, 8k vocabulary) a quarter of a training update went to that. Keeping
freed memory in the heap lets the next update reuse it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import resource
import sys
import threading
from collections.abc import Iterator

import pyarrow as pa
import torch

log = logging.getLogger("mtkit")

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # mallopt parameters, glibc's malloc.h


@functools.cache  # once per process: later calls return the first answer
def keep_freed_memory() -> bool:
    """Ask glibc to serve large blocks from the heap and keep freed ones for reuse (once per process).

    Measured on the Ding model, bf16, 2 CPU threads: 4,045-4,371 -> 5,403-5,462 target tok/s
    (bench/train_speed.py). The cost is that the resident size stays near its peak instead of
    shrinking between updates. MTKIT_MALLOC=system keeps glibc's defaults. Returns whether the
    settings were applied (not on other C libraries or systems). It also bounds oneDNN's kernel
    cache (`bound_kernel_cache`, whatever MTKIT_MALLOC says): both must happen before the first
    tensor work, so every entry point makes this one call.
    """
    bound_kernel_cache()
    applied = False
    if sys.platform.startswith("linux") and os.environ.get("MTKIT_MALLOC", "") != "system":
        try:
            libc = ctypes.CDLL("libc.so.6")
            applied = bool(libc.mallopt(_M_MMAP_MAX, 0)  # no mmap per block: all from the heap
                           and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)  # return the top only past 1 GB free
                           and libc.mallopt(_M_TOP_PAD, 256 << 20))  # grow the heap 256 MB at a time
        except (OSError, AttributeError):  # not glibc (musl, ...): its own allocator, left alone
            applied = False
    log.debug("malloc: %s", "freed memory kept for reuse" if applied else "system defaults")
    return applied


def release_freed_memory() -> None:
    """Give the heap's free memory back to the system (glibc's malloc_trim, and Arrow's own pool)
    after a phase that used much and freed it (loading a corpus, tokenizer training, data
    preparation): keep_freed_memory keeps up to 1 GB of it otherwise, Arrow's pool more (2 GB after
    tokenizer training at 20M pairs), and encoding workers forked later start with it counted as theirs."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: nothing to do
            pass
    pa.default_memory_pool().release_unused()  # Arrow's own allocator (mimalloc or jemalloc) keeps pages too


# oneDNN (bf16 matmuls on the CPU) builds a kernel for every new matmul shape and keeps up to
# 1,024 of them; token-budget batches come in hundreds of shapes, so in bf16 training the kept
# kernels and their buffers grew the heap by GBs. A few per layer shape suffice.
ONEDNN_KERNEL_CACHE = 16


@functools.cache
def bound_kernel_cache() -> None:
    """Keep oneDNN's cache of per-shape kernels small (unless ONEDNN_PRIMITIVE_CACHE_CAPACITY is
    set). Must run before the first oneDNN call, which reads the setting once."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_KERNEL_CACHE))


_PEAKS = {"anon": 0, "file": 0}  # the largest of each kind note_memory saw in this process
SAMPLE_EVERY_S = 0.5  # sampled_memory's interval


def rss_now_mb() -> dict[str, int]:
    """This process's resident memory now, in MB: "anon" (RssAnon) and "file" (RssFile + RssShmem,
    mapped files); empty where /proc/self/status does not say (not Linux)."""
    kinds = {"RssAnon": "anon", "RssFile": "file", "RssShmem": "file"}
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in kinds:
                    out[kinds[key]] = out.get(kinds[key], 0) + int(value.split()[0]) // 1024
    except (OSError, ValueError):
        return {}
    return out


def note_memory() -> dict[str, int]:
    """Sample rss_now_mb into the peaks (the kernel keeps no peak per kind); returns the sample.
    Called where memory is highest: after data preparation, at every log line and validation."""
    now = rss_now_mb()
    for kind, mb in now.items():
        _PEAKS[kind] = max(_PEAKS[kind], mb)
    return now


@contextlib.contextmanager
def sampled_memory(every_s: float = SAMPLE_EVERY_S) -> Iterator[None]:
    """note_memory every `every_s` seconds while inside, from a background thread, for phases that
    peak between log lines: SentencePiece training peaked at 3.5 GB anonymous where the next line
    saw 0.5 GB (it releases Python's lock while it trains, so the thread samples throughout)."""
    seen: dict[str, int] = {}  # the thread's own peaks, merged by this thread afterwards: no lock needed
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every_s):
            for kind, mb in rss_now_mb().items():
                seen[kind] = max(seen.get(kind, 0), mb)

    thread = threading.Thread(target=sample, name="mtkit-memory", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for kind, mb in seen.items():
            _PEAKS[kind] = max(_PEAKS[kind], mb)


def peak_memory_mb(device: str) -> dict[str, int]:
    """This process's peak resident memory, its sampled peaks of anonymous and file-backed memory
    (note_memory; absent off Linux), and the GPU's peak allocation on CUDA, in MB."""
    note_memory()
    peak = {"rss": peak_rss_mb(), **{k: v for k, v in _PEAKS.items() if v}}
    if device.startswith("cuda"):
        peak["gpu"] = torch.cuda.max_memory_allocated(device) // 2**20
    return peak


def memory_line(mb: dict[str, int]) -> str:
    """E.g. "rss 3,390 MB (anonymous 2,473 MB, file-backed 264 MB)"; GPU memory after it."""
    parts = [f"rss {mb['rss']:,} MB"] if "rss" in mb else []
    kinds = [f"{name} {mb[k]:,} MB" for k, name in (("anon", "anonymous"), ("file", "file-backed")) if k in mb]
    if kinds:
        parts.append(f"({', '.join(kinds)})" if parts else ", ".join(kinds))
    if "gpu" in mb:
        parts.append(f"gpu {mb['gpu']:,} MB")
    return " ".join(parts)


def peak_rss_mb() -> int:
    """Peak resident memory of this process so far, in MB (Linux reports ru_maxrss in KB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb // 1024 if sys.platform.startswith("linux") else kb // (1024 * 1024)
