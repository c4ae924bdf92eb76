"""Tests for decoding/workers.py (batches decoded side by side on a CPU) and search_state's block_topk and
extension_topk."""

import threading
import time

import pytest
import torch

from mtkit.config import load_config
from mtkit.decoding.search_state import block_topk, extension_topk
from mtkit.decoding.workers import MAX_AUTO_WORKERS, map_batches, resolve_workers, threads_each
from mtkit.errors import ConfigError


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_resolve_workers():
    assert resolve_workers(None, "cpu", threads=2) == 2  # auto: one per thread
    assert resolve_workers(None, "cpu", threads=16) == MAX_AUTO_WORKERS
    assert resolve_workers(None, "cpu", threads=1) == 1
    assert resolve_workers(3, "cpu", threads=8) == 3
    assert resolve_workers(8, "cpu", threads=2) == 2  # at least one thread each
    assert resolve_workers(None, "cuda", threads=8) == 1  # a GPU decodes one batch at a time
    assert resolve_workers(4, "cuda:0", threads=8) == 1


def test_map_batches_runs_side_by_side_in_order_with_the_threads_shared(two_threads):
    seen: dict[int, tuple[str, int]] = {}
    both_running = threading.Barrier(2, timeout=10)  # fails unless two batches run at the same time

    def search(batch: int) -> int:
        seen[batch] = (threading.current_thread().name, torch.get_num_threads())
        if batch < 2:
            both_running.wait()
        time.sleep(0.01 * (5 - batch))  # later batches finish first: the order must still hold
        return batch * 10

    assert list(map_batches(search, range(5), workers=2)) == [0, 10, 20, 30, 40]
    assert {name.split("_")[0] for name, _ in seen.values()} == {"mtkit-decode"}
    assert {threads for _, threads in seen.values()} == {1}  # 2 threads / 2 workers
    assert torch.get_num_threads() == 2  # restored


def test_one_worker_runs_in_the_calling_thread(two_threads):
    names = list(map_batches(lambda b: (threading.current_thread().name, torch.get_num_threads()), [1, 2], 1))
    assert names == [(threading.current_thread().name, 2)] * 2


def test_an_error_in_a_batch_reaches_the_caller_and_later_batches_are_not_started(two_threads):
    started = []

    def search(batch: int) -> int:
        started.append(batch)
        if batch == 0:
            raise ValueError("batch 0 failed")
        time.sleep(0.2)
        return batch

    with pytest.raises(ValueError, match="batch 0 failed"):
        list(map_batches(search, range(20), workers=2))
    time.sleep(0.5)
    assert len(started) < 20
    assert torch.get_num_threads() == 2


def test_threads_each_restores_on_error(two_threads):
    with pytest.raises(RuntimeError), threads_each(2):
        assert torch.get_num_threads() == 1
        raise RuntimeError
    assert torch.get_num_threads() == 2


def test_decode_workers_must_be_positive():
    data = ["data.train.src=a.de", "data.train.tgt=a.en"]
    with pytest.raises(ConfigError, match=r"decode.workers: must be > 0 \(got 0\)"):
        load_config(None, [*data, "decode.workers=0"])
    assert load_config(None, [*data, "decode.workers=2"]).decode.workers == 2
    assert load_config(None, data).decode.workers is None


@pytest.mark.parametrize("n,m,k", [(32, 40_000, 10), (3, 8_000 * 5, 4), (1, 64 * 32, 1), (5, 100, 6), (4, 2050 * 32 + 5, 8)])
def test_block_topk_equals_topk(n, m, k):
    gen = torch.Generator().manual_seed(n * m + k)
    x = torch.randn(n, m, generator=gen)
    x[0, : m // 2] = float("-inf")  # rows partly -inf (beams that do not exist yet, banned tokens)
    x[-1, 7] = 1e9  # one value far above the rest
    (values, indices), want = block_topk(x, k), x.topk(k, dim=1)
    assert torch.equal(values, want.values)
    assert torch.equal(indices, want.indices)


@pytest.mark.parametrize("n,K,V", [(32, 5, 8_000), (3, 4, 64 * 32), (2, 5, 1_000), (7, 3, 8_001)])
def test_extension_topk_equals_block_topk_of_the_sums(n, K, V):
    """Bit for bit, ties included: log-probs on a coarse grid tie often; dead beams score -inf."""
    gen = torch.Generator().manual_seed(n * V + K)
    for coarse in (False, True):
        lprobs = torch.randn(n, K, V, generator=gen).log_softmax(-1)
        if coarse:
            lprobs = (lprobs * 4).round() / 4
        lprobs[:, :, :2] = float("-inf")  # banned tokens
        scores = torch.randn(n, K, generator=gen) * 5
        scores[0, 1:] = float("-inf")
        want = block_topk((lprobs + scores[:, :, None]).view(n, K * V), 2 * K)
        values, indices = extension_topk(lprobs.clone(), scores, 2 * K)
        assert torch.equal(values, want[0]) and torch.equal(indices, want[1])


def test_an_engine_with_its_own_split_says_how_many_batches_it_takes(two_threads):
    from mtkit.decoding.workers import workers_for

    class Engine:
        workers = 3  # CTranslate2's inter_threads

    assert workers_for(Engine(), None, "cpu") == 3
    assert workers_for(object(), None, "cpu") == 2 and workers_for(object(), 1, "cpu") == 1
