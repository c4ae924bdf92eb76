"""TokenBatchSampler: budget, coverage, determinism, resume, shards, padding."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest

from mtkit.data.batching import TokenBatchSampler, padding_stats
from mtkit.errors import CheckpointError, DataError


def lengths(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Skewed like real corpora: many short pairs, a long tail; target ~ source length."""
    rng = np.random.default_rng(seed)
    src = np.clip(rng.lognormal(2.3, 0.6, n).astype(int), 0, 200)
    tgt = np.clip((src * rng.uniform(0.7, 1.4, n)).astype(int), 0, 200)
    return src, tgt


def cost(batch, src, tgt) -> int:
    return len(batch) * max(int(src[batch].max()) + 1, int(tgt[batch].max()) + 1)


def test_budget_respected_and_every_pair_once_per_epoch():
    src, tgt = lengths()
    sampler = TokenBatchSampler(src, tgt, batch_tokens=1024, seed=1)
    for epoch in (0, 1):
        batches = sampler.epoch_batches(epoch)
        assert len(batches) == len(sampler)
        assert all(cost(b, src, tgt) <= 1024 for b in batches)
        assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(len(src)))


def test_oversize_pairs_go_alone_with_one_warning(caplog):
    src = np.array([3, 300, 4, 5, 250, 2])
    tgt = np.array([3, 10, 4, 600, 2, 2])
    with caplog.at_level(logging.WARNING, logger="mtkit"):
        sampler = TokenBatchSampler(src, tgt, batch_tokens=100, seed=0)
    assert caplog.text.count("3 pair(s) are longer than batch_tokens=100") == 1
    batches = sampler.epoch_batches(0)
    alone = sorted(int(b[0]) for b in batches if len(b) == 1 and cost(b, src, tgt) > 100)
    assert alone == [1, 3, 4]
    assert all(cost(b, src, tgt) <= 100 for b in batches if len(b) > 1)


def test_deterministic_per_seed_and_different_across_epochs_and_seeds():
    src, tgt = lengths()

    def order(seed, epoch):
        return [b.tolist() for b in TokenBatchSampler(src, tgt, 1024, seed=seed).epoch_batches(epoch)]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)


def test_no_shuffle_is_fixed_and_sorted_by_length():
    src, tgt = lengths(500)
    sampler = TokenBatchSampler(src, tgt, 512, seed=1, shuffle=False)
    first = sampler.epoch_batches(0)
    assert [b.tolist() for b in first] == [b.tolist() for b in sampler.epoch_batches(7)]
    longest = [int(np.maximum(src[b], tgt[b]).max()) for b in first]
    assert longest == sorted(longest)


@pytest.mark.parametrize("stop_after", [5, 12, 40])  # within epoch 0, at the boundary, in epoch 3
def test_resume_continues_the_exact_sequence(stop_after):
    src, tgt = lengths(400)
    reference = TokenBatchSampler(src, tgt, 512, seed=3)
    assert len(reference) == 12
    expected = [(e, b.tolist()) for e, b in itertools.islice(iter(reference), 60)]

    first = TokenBatchSampler(src, tgt, 512, seed=3)
    it = iter(first)
    got = [(e, b.tolist()) for e, b in itertools.islice(it, stop_after)]
    state = first.state_dict()
    assert state == {"epoch": (stop_after - 1) // 12, "position": (stop_after - 1) % 12 + 1, "shards": 1}

    resumed = TokenBatchSampler(src, tgt, 512, seed=3)
    resumed.load_state_dict(dict(state))
    got += [(e, b.tolist()) for e, b in itertools.islice(iter(resumed), 60 - stop_after)]
    assert got == expected


def test_bad_state_is_a_checkpoint_error():
    sampler = TokenBatchSampler([1, 2], [1, 2], 64, seed=0)
    with pytest.raises(CheckpointError, match="'epoch' and 'position'"):
        sampler.load_state_dict({"epoch": 1})
    with pytest.raises(CheckpointError, match="position must be a whole number >= 0"):
        sampler.load_state_dict({"epoch": 1, "position": -2})


@pytest.mark.parametrize("num_shards", [2, 3])
def test_shards_are_disjoint_and_equal_sized(num_shards):
    src, tgt = lengths(2000)
    full = TokenBatchSampler(src, tgt, 1024, seed=5)
    shards = [TokenBatchSampler(src, tgt, 1024, seed=5, num_shards=num_shards, shard=k) for k in range(num_shards)]
    for epoch in (0, 1):
        per_shard = [s.epoch_batches(epoch) for s in shards]
        assert len({len(b) for b in per_shard}) == 1 and len(per_shard[0]) == len(shards[0])
        assert len(shards[0]) == len(full) // num_shards
        seen = np.concatenate([np.concatenate(b) for b in per_shard])
        assert len(seen) == len(set(seen.tolist()))  # disjoint
        interleaved = [b.tolist() for group in zip(*per_shard, strict=True) for b in group]
        assert interleaved == [b.tolist() for b in full.epoch_batches(epoch)[: len(interleaved)]]


def test_too_few_batches_for_the_shards_and_empty_input():
    with pytest.raises(DataError, match="only 1 batch"):
        TokenBatchSampler([1, 2], [1, 2], 4096, seed=0, num_shards=2, shard=1)
    with pytest.raises(DataError, match="no sentence pairs"):
        TokenBatchSampler([], [], 4096, seed=0)


def test_padding_ratio_is_high():
    src, tgt = lengths(20_000)
    sampler = TokenBatchSampler(src, tgt, 4096, seed=0)
    assert padding_stats(sampler.epoch_batches(0), src, tgt) >= 0.9
    assert padding_stats([np.array([0, 1])], np.array([1, 3]), np.array([1, 1])) == pytest.approx((6 + 4) / (8 + 4))


def test_fast_enough_for_a_large_corpus():
    import time

    src, tgt = lengths(400_000)
    start = time.perf_counter()
    sampler = TokenBatchSampler(src, tgt, 4096, seed=0)
    sampler.epoch_batches(0)
    assert time.perf_counter() - start < 5.0  # typically ~0.2 s; generous for shared CI machines


def test_resume_with_another_shard_count_continues_at_the_same_share_of_the_epoch():
    src, tgt = lengths(2000)
    two = TokenBatchSampler(src, tgt, 1024, seed=5, num_shards=2, shard=0)
    it = iter(two)
    for _ in range(3):
        next(it)
    one = TokenBatchSampler(src, tgt, 1024, seed=5)
    one.load_state_dict(two.state_dict())  # 3 batches on each of 2 processes = 6 of the epoch
    assert one.state_dict() == {"epoch": 0, "position": 6, "shards": 1}
    with pytest.raises(CheckpointError, match="shards must be a whole number >= 1"):
        one.load_state_dict({"epoch": 0, "position": 1, "shards": 0})


def test_pad_to_counts_padded_lengths_and_makes_few_shapes():
    """With pad_to 8 a batch's cost is counted as make_batch pads it, so the padded batch still fits
    the budget, and the batches come in far fewer distinct shapes."""
    from mtkit.data.padding import make_batch

    src, tgt = lengths()
    shapes = {}
    for pad_to in (1, 8):
        sampler = TokenBatchSampler(src, tgt, batch_tokens=1024, seed=1, pad_to=pad_to)
        batches = sampler.epoch_batches(0)
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(src)))
        seen = set()
        for b in batches:
            batch = make_batch([[5] * int(n) for n in src[b]], [[5] * int(n) for n in tgt[b]], pad_to=pad_to)
            (rows, s_len), t_len = batch["src"].shape, batch["tgt_in"].shape[1]
            assert s_len % pad_to == 0 and t_len % pad_to == 0
            assert rows * max(s_len, t_len) <= 1024 or rows == 1
            seen.add((rows, s_len, t_len))
        shapes[pad_to] = len(seen)
    assert shapes[8] < shapes[1] / 2
    with pytest.raises(ValueError, match="pad_to must be > 0"):
        TokenBatchSampler(src, tgt, batch_tokens=1024, seed=1, pad_to=0)


def test_epoch_rows_change_per_epoch_and_resume_exactly():
    """epoch_rows: epoch e covers epoch_rows(e) (repeats counted), len() follows the
    epoch, and a sampler restored mid-way gives the batches an uninterrupted one would."""
    src, tgt = lengths(600)
    every = np.arange(600)
    twice = np.concatenate([every, every[:100]])
    thrice = np.concatenate([every, every[:100], every[:100]])
    sets = [every, twice, thrice]
    make = lambda: TokenBatchSampler(src, tgt, batch_tokens=512, seed=3,  # noqa: E731
                                     epoch_rows=lambda e: sets[min(e, 2)])
    sampler = make()
    for epoch, rows in enumerate([every, twice, thrice, thrice]):
        got = np.concatenate(sampler.epoch_batches(epoch))
        assert sorted(got.tolist()) == sorted(rows.tolist())
        assert len(sampler.epoch_batches(epoch)) == sampler.batches_in(epoch)
    assert sampler.batches_in(0) < sampler.batches_in(1) < sampler.batches_in(2) == sampler.batches_in(5)
    stream = list(itertools.islice(iter(sampler), sampler.batches_in(0) + sampler.batches_in(1) + 3))
    assert [e for e, _ in stream].count(1) == sampler.batches_in(1)
    assert len(sampler) == sampler.batches_in(2)  # the epoch it is in
    resumed, first = make(), make()
    head = list(itertools.islice(iter(first), sampler.batches_in(0) + 5))
    resumed.load_state_dict(first.state_dict())
    rest = list(itertools.islice(iter(resumed), len(stream) - len(head)))
    for (e1, b1), (e2, b2) in zip(head + rest, stream, strict=True):
        assert e1 == e2 and b1.tolist() == b2.tolist()


def test_epoch_rows_of_every_pair_give_the_plain_batches():
    """Rows that list every pair once batch exactly as no rows at all (old checkpoints resume the same)."""
    src, tgt = lengths(500)
    plain = TokenBatchSampler(src, tgt, batch_tokens=512, seed=2)
    listed = TokenBatchSampler(src, tgt, batch_tokens=512, seed=2, epoch_rows=lambda e: np.arange(500))
    for epoch in (0, 1):
        assert [b.tolist() for b in plain.epoch_batches(epoch)] == [b.tolist() for b in listed.epoch_batches(epoch)]
