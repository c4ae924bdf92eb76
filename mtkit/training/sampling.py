"""What training draws: this process's batch sampler over the training pairs, and the batches of
one update.

The sampler (data/batching.py) is built from the config: data.upsample_* repeats pairs within
each corpus (data/upsample.py), several corpora share each epoch by weight (data/mixing.py), each
process takes its shard, and batch lengths are padded as the device likes them. An update draws
train.accum_steps batches, never across an epoch's end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import datasets
import numpy as np

from mtkit.config import Config
from mtkit.data.batching import TokenBatchSampler
from mtkit.data.mixing import CorpusMix
from mtkit.data.pairs import TrainPairs, token_lengths
from mtkit.data.upsample import source_matches, upsample_epochs, upsampling_line
from mtkit.training.distributed import World

log = logging.getLogger("mtkit")


def epoch_sampler(cfg: Config, train: TrainPairs, world: World, device: str
                  ) -> tuple[TokenBatchSampler, CorpusMix | None]:
    """This process's batch sampler over the training pairs, and what each epoch draws from each
    corpus (None for one corpus without upsampling: every pair once per epoch)."""
    src_lens, tgt_lens = token_lengths(train.ds)
    mix = corpus_mix(cfg, train, src_lens)
    # Each process takes every size-th batch of the epoch's shuffled list (its shard).
    sampler = TokenBatchSampler(src_lens, tgt_lens, cfg.train.batch_tokens, seed=cfg.seed, shuffle=True,
                                num_shards=world.size, shard=world.rank, pad_to=pad_multiple(cfg, device),
                                epoch_rows=mix)
    return sampler, mix


def corpus_mix(cfg: Config, train: TrainPairs, src_lens: np.ndarray) -> CorpusMix | None:
    """Each corpus's rows per epoch, upsampled pairs repeated (data.upsample_*), mixed by weight."""
    d = cfg.data
    upsampled = max(d.upsample_factors) > 1  # the config check made sure of a criterion
    if len(train.corpora) == 1 and not upsampled:
        return None
    matches = source_matches(train.ds, d.upsample_pattern) if d.upsample_pattern is not None and upsampled else None
    per_corpus = []
    for c in train.corpora:
        own = slice(c.start, c.start + c.kept)
        rows = upsample_epochs(src_lens[own], d, None if matches is None else matches[own]) if upsampled else None
        if rows is not None:
            line = upsampling_line(d, c.kept, [len(r) for r in rows])
            line = line if len(train.corpora) == 1 else f"{c.name}: {line}"
            if max(len(r) for r in rows) > c.kept:
                log.info("%s", line)
            else:
                log.warning("%s: nothing to repeat; check data.upsample_min_len / data.upsample_pattern", line)
        per_corpus.append(rows)
    mix = CorpusMix(train.corpora, per_corpus, cfg.seed)
    if len(train.corpora) > 1:
        log.info("corpora: %s", mix_line(mix, 0))
    return mix


def mix_line(mix: CorpusMix, epoch: int) -> str:
    """What `epoch` draws from each corpus, e.g. "reverse 1,333 pairs (66.7%), copy 667 (33.3%)"."""
    counts = mix.counts(epoch)
    total = max(sum(counts.values()), 1)
    return ", ".join(f"{name} {n:,} pairs ({n / total:.1%})" for name, n in counts.items())


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
