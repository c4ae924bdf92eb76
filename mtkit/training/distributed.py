"""Training on several processes: torchrun's environment, the process group, and the few messages
the training loop exchanges.

`torchrun --nproc_per_node N -m mtkit train CONFIG` (or `mtkit train CONFIG --devices N`, which
calls torch's launcher API in-process) starts one process per device and sets RANK, LOCAL_RANK,
WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT. Every process builds the same model;
DistributedDataParallel averages the gradients (NCCL on GPUs, gloo on CPUs) and each process
applies the same update, so all hold identical weights. mtkit starts no processes of its own.

Besides the gradients the processes agree on two small things per update: the target tokens of
the global batch (the loss is normalised by it, as on one process) and whether to stop (time
budget, early stopping or a signal, which each process may see at a different moment). With
NCCL those go over a second, gloo group on CPU numbers, so they never wait for the GPU.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, NoReturn

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
from torch.nn.parallel import DistributedDataParallel

from mtkit.errors import TrainingError

log = logging.getLogger("mtkit")

# Collectives wait this long for a process that fell behind (e.g. rank 0 training the tokenizer or
# validating) before failing; a crashed process is noticed by the launcher much sooner.
TIMEOUT = timedelta(minutes=60)


@dataclass
class World:
    """Where this process stands among the training processes (one process: rank 0 of 1)."""

    rank: int = 0  # global rank, 0..size-1; rank 0 logs, validates and writes checkpoints
    local_rank: int = 0  # rank on this machine: which GPU this process uses
    size: int = 1  # processes on all machines
    local_size: int = 1  # processes on this machine
    control: Any = None  # process group for CPU-side messages (None: the default group)
    launched: bool = False  # started by torchrun: DDP even for 1 process (the same code path as N)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.launched


def world_from_env() -> World:
    """Read torchrun's variables; without them this is the only process."""
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
    if "WORLD_SIZE" not in os.environ:
        return World()
    try:
        rank, local_rank, size, local_size = (int(os.environ.get(n, "0" if n != "LOCAL_WORLD_SIZE" else "1"))
                                              for n in names)
    except ValueError:
        shown = ", ".join(f"{n}={os.environ.get(n)!r}" for n in names)
        raise TrainingError(f"torchrun environment is not numeric ({shown}); launch with torchrun"
                            " or `mtkit train --devices N`") from None
    if not (0 <= rank < size and 0 <= local_rank < max(local_size, 1)):
        raise TrainingError(f"torchrun environment is inconsistent (RANK={rank}, WORLD_SIZE={size},"
                            f" LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_size})")
    return World(rank=rank, local_rank=local_rank, size=size, local_size=max(local_size, 1), launched=True)


def join(world: World, device: str) -> str:
    """Join the process group (NCCL on CUDA, gloo on CPU); returns this process's device."""
    if not world.distributed:
        return device
    if device == "cuda":
        if torch.cuda.device_count() <= world.local_rank:
            raise TrainingError(f"rank {world.rank} wants GPU {world.local_rank} but this machine shows"
                                f" {torch.cuda.device_count()}; start at most that many processes per node")
        torch.cuda.set_device(world.local_rank)
        device = f"cuda:{world.local_rank}"
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)  # env:// rendezvous from torchrun's variables
    world.control = dist.new_group(backend="gloo", timeout=TIMEOUT) if backend == "nccl" else None
    log.info("process group: %s, %d processes, this is rank %d", backend, world.size, world.rank)
    return device


@contextmanager
def collective(world: World):
    """A message exchange; a peer that died (its own error is printed above) becomes one line here."""
    try:
        yield
    except RuntimeError as e:  # torch.distributed.DistBackendError and gloo's connection errors
        log.debug("collective failed: %s", e)
        raise TrainingError("lost contact with the other training processes: one of them stopped"
                            " (its own error is printed too)") from e


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        with collective(world):
            dist.barrier(group=world.control)


def agree(world: World, values: list[int], op: str) -> list[int]:
    """Combine small integers over all processes ("sum" or "max"); one process: unchanged."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.int64)  # CPU: goes over gloo, no GPU sync
    with collective(world):
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX, group=world.control)
    return [int(v) for v in t]


def sum_tensor(world: World, t):
    """Sum a (device) tensor over all processes in place; returns it."""
    if world.distributed:
        with collective(world):
            dist.all_reduce(t)
    return t


def gather(world: World, obj: Any) -> list[Any]:
    """Every process's `obj` (small, picklable), in rank order; one process: [obj]."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    with collective(world):
        dist.all_gather_object(out, obj, group=world.control)
    return out


def check_in_sync(world: World, model) -> None:
    """Fail loudly if the processes' weights have drifted apart (they must be bit-identical)."""
    if not world.distributed:
        return
    with torch.no_grad():  # three sums per tensor, on its device, in float64
        sums = [torch.stack([x.sum(), x.abs().sum(), (x * x).sum()])
                for x in (p.detach().double() for p in model.parameters())]
        fingerprint = tuple(torch.stack(sums).sum(0).tolist())
    prints = gather(world, fingerprint)
    if any(p != prints[0] for p in prints):
        raise TrainingError(f"the training processes' weights differ ({prints}); this is a bug in"
                            " mtkit's distributed training, please report it")


def no_buffer_sync() -> dict[str, bool]:
    """DistributedDataParallel's keyword for "never broadcast buffers" (renamed in torch 2.13)."""
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:  # still syncs once at start, when every table is the same
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def cpu_threads(world: World) -> int:
    """CPU threads per process when train.threads is not set: this machine's cores, shared."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // world.local_size)


def launch(nproc: int, args: list[str]) -> int:
    """Run `python -m mtkit ARGS` as `nproc` processes on this machine with torch's launcher (what
    `torchrun --standalone --nproc_per_node NPROC` does); returns the exit code to pass on."""
    if "WORLD_SIZE" in os.environ:
        raise TrainingError("--devices: this process was itself started by torchrun; give the process"
                            " count to torchrun (--nproc_per_node) and leave out --devices")
    if not (os.environ.get("MTKIT_DEBUG") or "--debug" in args):
        logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)  # its own logs repeat ours
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"mtkit-{os.getpid()}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2)
    try:
        elastic_launch(config, sys.executable)("-m", "mtkit", *args)
    except ChildFailedError as e:
        # Rank 0's code if it failed (its message is the one printed), else the first failure's.
        failures = sorted(e.failures.items())
        code = dict(failures).get(0, failures[0][1]).exitcode
        return 128 - code if code < 0 else code  # killed by signal s: -s -> 128 + s, as a shell says
    except SignalException as e:
        return 128 + int(e.sigval)
    return 0


def run_then_exit(main: Callable[[], Any]) -> NoReturn:
    """Run `main` (the CLI) in a process that torchrun started, then end the process without
    Python's interpreter teardown, keeping its exit code.

    Why: DistributedDataParallel leaves a C++ reference to the gloo process group behind (torch
    2.13), so destroy_process_group does not stop it: its two worker threads and its socket thread
    still run afterwards, even once the DDP module and its parameters are freed (seen in
    /proc/self/task; a group never handed to DDP stops). Those threads then race the teardown of the
    interpreter at exit, and now and then the process aborts there ("terminate called without an
    active exception", exit 134: pytorch/pytorch#190489) after training has finished and saved.
    By then everything mtkit writes is closed (checkpoints fsynced, logs closed), so the process
    flushes its streams and leaves with os._exit, which takes those threads with it.
    """
    code = 0
    try:
        main()
    except SystemExit as e:  # how the CLI always ends
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:  # with --debug the CLI lets it through
        sys.excepthook(*sys.exc_info())
        code = 130
    except BaseException:  # a bug: the traceback Python would print
        sys.excepthook(*sys.exc_info())
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or gone (a pipe whose reader left)
            pass
    os._exit(code)
