"""Token-budget batches: length buckets, a deterministic shuffle, a resumable position, shards.

Works on arrays of token lengths and hands out index arrays; padding.make_batch turns those rows
into tensors. It does not read data, build tensors or know about models; multi-process training
only tells it how many shards there are and which one is ours (training/sampling.py builds the
sampler training draws from).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from mtkit.errors import CheckpointError, DataError
from mtkit.memory import release_freed_memory

log = logging.getLogger("mtkit")

# An epoch's sort of this many pairs frees ~50 MB (~25 bytes a pair: 0.5 GB at 20M), which is given
# back once per epoch; a smaller corpus keeps it in the heap, where its updates reuse it.
RELEASE_AFTER_SORTING = 2_000_000


class TokenBatchSampler:
    """Batches of pair indices whose padded size stays within a token budget.

    A batch of B pairs costs `B * max(max_src_len + 1, max_tgt_len + 1)` tokens (the +1 is the
    EOS/BOS that make_batch adds), rounded up to a multiple of `pad_to` as make_batch pads them,
    which must be <= `batch_tokens`; a single pair over budget is put alone in its batch. Pairs are sorted by length (longer side, then source, then target;
    ties broken randomly from seed and epoch) and cut greedily, so pairs of similar length share
    a batch and padding stays low; then the batch order is shuffled from (seed, epoch). With
    `shuffle=False` the order is fixed: sorted by length, ties in index order (for validation
    and translation).

    An epoch covers every pair once, or the pairs `epoch_rows(epoch)` lists (repeats allowed: how
    data.upsample_* and several weighted corpora give some pairs more weight, mixing.CorpusMix),
    and then hands out those pair indices.

    Sharding (one shard per training process): shard k gets batches k, k+N, k+2N, ... of the
    epoch's shuffled list, truncated to a multiple of N so every process does the same number of
    steps. Up to N-1 batches per epoch are skipped that way; which ones changes every epoch.

    Args:
        src_lens: source lengths in tokens (without EOS), one per pair.
        tgt_lens: target lengths in tokens (without BOS/EOS), one per pair.
        batch_tokens: padded-token budget of the longer side per batch.
        seed: seeds the tie-breaking and the batch order.
        shuffle: False keeps a fixed order.
        num_shards: number of training processes N.
        shard: this process's rank k in [0, N).
        pad_to: make_batch's rounding of both sequence lengths (1 = none).
        epoch_rows: epoch -> the pair indices of that epoch, deterministic in the epoch (a resumed
            run asks again); None = every pair once in every epoch.

    Raises:
        DataError: if there are no pairs, or fewer batches than shards.
    """

    def __init__(
        self,
        src_lens: Sequence[int] | np.ndarray,
        tgt_lens: Sequence[int] | np.ndarray,
        batch_tokens: int,
        seed: int,
        shuffle: bool = True,
        num_shards: int = 1,
        shard: int = 0,
        pad_to: int = 1,
        epoch_rows: Callable[[int], np.ndarray] | None = None,
    ) -> None:
        # int32 throughout (lengths, costs, row indices): 4 bytes a pair each, not 8, at WMT's tens of
        # millions of pairs (the sums numpy takes of them are int64).
        src = np.asarray(src_lens, dtype=np.int32)
        tgt = np.asarray(tgt_lens, dtype=np.int32)
        if src.shape != tgt.shape or src.ndim != 1:
            raise ValueError(f"src_lens and tgt_lens must be 1-d and equally long (got {src.shape}, {tgt.shape})")
        if batch_tokens <= 0:
            raise ValueError(f"batch_tokens must be > 0 (got {batch_tokens})")
        if pad_to <= 0:
            raise ValueError(f"pad_to must be > 0 (got {pad_to})")
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard must be in [0, {num_shards}) (got {shard})")
        if len(src) == 0:
            raise DataError("no sentence pairs to batch; check the data section of the config")
        self.batch_tokens = int(batch_tokens)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.num_shards = int(num_shards)
        self.shard = int(shard)
        self._src, self._tgt = src, tgt
        # Cost of one pair in a batch: its longer side plus EOS/BOS, as padded.
        self._cost = -(-(np.maximum(src, tgt) + 1) // pad_to) * pad_to
        oversize = int((self._cost > self.batch_tokens).sum())
        if oversize:
            log.warning(
                "batching: %d pair(s) are longer than batch_tokens=%d on their own; each goes alone in a batch",
                oversize, self.batch_tokens,
            )
        self._epoch_rows = epoch_rows
        self._plans: dict[int, tuple[np.ndarray | None, np.ndarray]] = {}  # epoch -> (rows, batch bounds)
        self._plan(0)  # fails now if there are fewer batches than shards
        self.epoch = 0
        self.position = 0

    def _plan(self, epoch: int) -> tuple[np.ndarray | None, np.ndarray]:
        """The rows of `epoch` (None: every pair once) and its batch boundaries over them sorted.

        The batch sizes depend only on the sorted costs, not on how ties are broken, so the cuts
        are made once per epoch (once in all without epoch_rows) and kept for the last few epochs.
        """
        key = 0 if self._epoch_rows is None else epoch
        if key not in self._plans:
            rows = None if self._epoch_rows is None else np.asarray(self._epoch_rows(epoch), dtype=np.int32)
            bounds = _greedy_cuts(np.sort(self._cost if rows is None else self._cost[rows]), self.batch_tokens)
            if len(bounds) - 1 < self.num_shards:
                raise DataError(
                    f"only {len(bounds) - 1} batch(es) per epoch for {self.num_shards} processes;"
                    " lower train.batch_tokens or use fewer processes"
                )
            if len(self._plans) >= 3:
                del self._plans[min(self._plans)]
            self._plans[key] = (rows, bounds)
        return self._plans[key]

    def __len__(self) -> int:
        """Batches of the current epoch for this shard."""
        return self.batches_in(self.epoch)

    def batches_in(self, epoch: int) -> int:
        """Batches of `epoch` for this shard."""
        return (len(self._plan(epoch)[1]) - 1) // self.num_shards

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """This shard's batches (arrays of pair indices) for `epoch`, deterministic in (seed, epoch)."""
        rows, bounds = self._plan(epoch)
        cost, src, tgt = ((self._cost, self._src, self._tgt) if rows is None
                          else (self._cost[rows], self._src[rows], self._tgt[rows]))
        # Sort by cost, then by source and target length so both sides of a batch need little
        # padding (cost alone leaves the shorter side ragged: 0.88 vs 0.98 non-pad on Ding), then
        # randomly (or by index without shuffle) among pairs of identical lengths.
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            order = np.lexsort((rng.random(len(cost)), tgt, src, cost))
        else:
            order = np.lexsort((tgt, src, cost))  # lexsort is stable: index ties
        order = order.astype(np.int32) if rows is None else rows[order]
        batches = np.split(order, bounds[1:-1])
        if self.shuffle:
            perm = rng.permutation(len(batches))
            batches = [batches[i] for i in perm]
        usable = len(batches) - len(batches) % self.num_shards
        return batches[self.shard : usable : self.num_shards]

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (epoch, batch indices) forever, starting at the saved epoch and position."""
        while True:
            batches = self.epoch_batches(self.epoch)
            if len(self._cost) >= RELEASE_AFTER_SORTING:
                release_freed_memory()  # the sort's temporaries, else kept in the heap for the updates to stack on
            while self.position < len(batches):
                i = self.position
                self.position += 1  # counted as handed out before the caller sees it
                yield self.epoch, batches[i]
            self.epoch += 1
            self.position = 0

    def state_dict(self) -> dict[str, int]:
        """Where iteration stands: {"epoch", "position", "shards"}; position counts the batches this
        shard handed out this epoch (every shard is at the same position)."""
        return {"epoch": self.epoch, "position": self.position, "shards": self.num_shards}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Continue from a `state_dict`; the next batch is the one an uninterrupted run would give."""
        try:
            epoch, position, shards = d["epoch"], d["position"], d.get("shards", 1)
        except (KeyError, TypeError, AttributeError):
            raise CheckpointError(f"batch sampler state must have 'epoch' and 'position' (got {d!r})") from None
        for key, value, least in (("epoch", epoch, 0), ("position", position, 0), ("shards", shards, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise CheckpointError(f"batch sampler state: {key} must be a whole number >= {least} (got {value!r})")
        if shards != self.num_shards:  # another process count: continue at the same share of the epoch
            position = position * shards // self.num_shards
            log.warning("batching: saved with %d shard(s), now %d; continuing at batch %d of %d of this epoch",
                        shards, self.num_shards, position, self.batches_in(epoch))
        if position > self.batches_in(epoch):
            log.warning(
                "batching: saved position %d is past the %d batches of an epoch (was the data changed?);"
                " starting the next epoch", position, self.batches_in(epoch),
            )
        self.epoch, self.position = int(epoch), int(position)


def _greedy_cuts(sorted_cost: np.ndarray, budget: int) -> np.ndarray:
    """Batch boundaries [0, b1, ..., n] over costs sorted ascending.

    Each batch takes as many following pairs as fit: n pairs starting at s fit when
    n * cost[s + n - 1] <= budget. Because costs ascend, that test holds for a prefix of n, so one
    vectorised test per batch finds it (a Python loop over batches, not over pairs).
    """
    n_total = len(sorted_cost)
    bounds = [0]
    start = 0
    while start < n_total:
        limit = max(1, budget // int(sorted_cost[start]))  # no more pairs than this can fit
        window = sorted_cost[start : start + limit]
        fits = np.arange(1, len(window) + 1) * window <= budget
        size = max(1, int(fits.sum()))  # a pair over budget on its own still gets a batch
        start += size
        bounds.append(start)
    return np.asarray(bounds, dtype=np.int64)


def padding_stats(batches: Sequence[np.ndarray], src_lens: Sequence[int], tgt_lens: Sequence[int]) -> float:
    """Non-pad ratio: real tokens / padded tokens over both sides (EOS/BOS counted as real).

    Args:
        batches: index arrays, e.g. from `TokenBatchSampler.epoch_batches`.
        src_lens: source lengths without EOS.
        tgt_lens: target lengths without BOS/EOS.

    Returns:
        A ratio in (0, 1]; 1.0 means no padding at all (also returned for no batches).
    """
    batches = [np.asarray(b, dtype=np.int64) for b in batches if len(b)]
    if not batches:
        return 1.0
    idx = np.concatenate(batches)
    starts = np.cumsum([0] + [len(b) for b in batches[:-1]])
    sizes = np.array([len(b) for b in batches])
    real = padded = 0
    for lens in (np.asarray(src_lens, dtype=np.int64), np.asarray(tgt_lens, dtype=np.int64)):
        per_pair = lens[idx] + 1
        real += int(per_pair.sum())
        padded += int((np.maximum.reduceat(per_pair, starts) * sizes).sum())
    return real / padded
