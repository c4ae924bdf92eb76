"""decode.workers: several batches decoded at once on a CPU, each with an equal share of its threads.

A decoding step is many small operations (a few hundred per step for 3 + 3 layers), most too small
to split across threads, and Python runs between them; with two threads on one batch the second
thread waits through much of a step. torch releases Python's lock inside its operations, so two
batches decoded side by side by two Python threads, each with one torch thread, keep both cores
busy: on a 2-core Zen 2 (real AVX2) beam 5 on the 1,000 Ding test sentences ran 1.3-1.4x the
sentences/s of one batch at a time on both threads, in fp32 and in int8 (BENCHMARKS.md).
Python's lock is the limit as workers grow, so auto stops at MAX_AUTO_WORKERS. A GPU decodes one
batch at a time (its kernels are queued asynchronously already).

Each batch is searched exactly as it would be alone: the same sentences, the same search; only
the number of threads inside each matrix product changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

MAX_AUTO_WORKERS = 4  # Python's lock is held between operations: more workers than this wait on it

Batch = TypeVar("Batch")
Result = TypeVar("Result")


def resolve_workers(requested: int | None, device: str, threads: int | None = None) -> int:
    """Batches to decode at once: 1 on a GPU; `requested` on a CPU (capped at its threads, so each
    worker has one); auto (None): one per thread, at most MAX_AUTO_WORKERS.

    Args:
        threads: the CPU threads decoding may use; torch's current setting when None.
    """
    if not device.startswith("cpu"):
        return 1
    threads = threads or torch.get_num_threads()
    return max(1, min(threads, requested if requested is not None else MAX_AUTO_WORKERS))


def workers_for(model: Any, requested: int | None, device: str) -> int:
    """Batches to hand `model` at once: an engine that brings its own split (ct2.CT2Engine.workers,
    CTranslate2's inter_threads) says; a torch model takes resolve_workers."""
    engine_workers = getattr(model, "workers", None)
    return engine_workers if engine_workers is not None else resolve_workers(requested, device)


def map_batches(search: Callable[[Batch], Result], batches: Iterable[Batch], workers: int) -> Iterator[Result]:
    """search(batch) for each batch, in order, `workers` batches at a time with torch's threads shared
    out among them (restored afterwards). One worker runs in the calling thread, as before."""
    if workers <= 1:
        yield from map(search, batches)
        return
    with threads_each(workers), ThreadPoolExecutor(workers, thread_name_prefix="mtkit-decode") as pool:
        futures = [pool.submit(search, batch) for batch in batches]
        try:
            for future in futures:
                yield future.result()
        finally:  # an error or an interrupt: batches not yet started are not started
            for future in futures:
                future.cancel()


def threads_per_worker(workers: int) -> int:
    """torch's intra-op threads divided among `workers` (at least one each)."""
    return max(1, torch.get_num_threads() // workers)


@contextlib.contextmanager
def threads_each(workers: int) -> Iterator[None]:
    """torch's intra-op threads divided among `workers` while inside (threads_per_worker)."""
    total = torch.get_num_threads()
    torch.set_num_threads(threads_per_worker(workers))
    try:
        yield
    finally:
        torch.set_num_threads(total)
