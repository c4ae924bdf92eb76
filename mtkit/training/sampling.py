"""What training draws: this process's batch sampler over the training pairs, and the batches of
one update.

The sampler (data/batching.py) is built from the config: data.upsample_* repeats pairs per epoch
(data/upsample.py), each process takes its shard, and batch lengths are padded as the device
likes them. An update draws train.accum_steps batches, never across an epoch's end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import datasets
import numpy as np

from mtkit.config import Config
from mtkit.data.batching import TokenBatchSampler
from mtkit.data.pairs import token_lengths
from mtkit.data.upsample import source_matches, upsample_epochs, upsampling_line
from mtkit.training.distributed import World

log = logging.getLogger("mtkit")


def epoch_sampler(cfg: Config, train_ds: datasets.Dataset, world: World, device: str) -> TokenBatchSampler:
    """This process's batch sampler over the training pairs, upsampled pairs repeated (data.upsample_*)."""
    t = cfg.train
    src_lens, tgt_lens = token_lengths(train_ds)
    d = cfg.data
    upsampled = max(d.upsample_factors) > 1  # the config check made sure of a criterion
    matches = source_matches(train_ds, d.upsample_pattern) if d.upsample_pattern is not None and upsampled else None
    epoch_rows = upsample_epochs(src_lens, d, matches) if upsampled else None
    if epoch_rows is not None:
        line = upsampling_line(d, len(src_lens), [len(r) for r in epoch_rows])
        if max(len(r) for r in epoch_rows) > len(src_lens):
            log.info("%s", line)
        else:
            log.warning("%s: nothing to repeat; check data.upsample_min_len / data.upsample_pattern", line)
    # Each process takes every size-th batch of the epoch's shuffled list (its shard).
    return TokenBatchSampler(src_lens, tgt_lens, t.batch_tokens, seed=cfg.seed, shuffle=True, num_shards=world.size,
                             shard=world.rank, pad_to=pad_multiple(cfg, device), epoch_rows=epoch_rows)


def pad_multiple(cfg: Config, device: str) -> int:
    """train.pad_to_multiple, or its default: 8 on GPU (tensor-core friendly shapes), 1 (none) on CPU."""
    if cfg.train.pad_to_multiple is not None:
        return cfg.train.pad_to_multiple
    return 8 if device.startswith("cuda") else 1


def draw_group(batches: Iterator[tuple[int, np.ndarray]], sampler: TokenBatchSampler,
               accum_steps: int) -> list[tuple[int, np.ndarray]]:
    """The batches of one update: accum_steps of them, fewer at the end of an epoch, so an update
    never mixes two epochs (train.max_epochs ends on the epoch's last batch, and late dropout
    switches between updates). The loss is normalised by the group's target tokens either way."""
    group = [next(batches)]
    while len(group) < accum_steps and sampler.state_dict()["position"] < len(sampler):
        group.append(next(batches))
    return group


def rows(ds: datasets.Dataset, indices: np.ndarray) -> tuple[list[list[int]], list[list[int]]]:
    """The token ids of the given training pairs."""
    picked = ds[[int(i) for i in indices]]
    return picked["src_ids"], picked["tgt_ids"]
