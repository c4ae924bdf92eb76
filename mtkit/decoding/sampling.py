"""Sampled translations (for back-translation): each next piece drawn from the model's distribution.

`decode.sample` draws every piece instead of searching, on the batched incremental decoder greedy
search uses (search.greedy_search with a `Sampler` as its chooser): `decode.temperature` divides
the log-probabilities, `decode.topk` keeps the k most probable pieces (0: all), `decode.topp` the
smallest set holding that much probability (nucleus sampling, Holtzman et al. 2020), and the draw
is by inverse CDF on the renormalised rest. PAD and BOS are never drawn, and EOS is forced at the
output limit, as in search. A sample's score is its log-probability under the model itself
(temperature 1, nothing filtered), EOS included, as fairseq reports it.

Reproducible per line: each sample draws from its own generator, seeded from decode.seed, the
line's text and the sample's number (`line_seed`), so a line gets the same samples whatever batch
it is in, whatever the batch size and wherever it stands in the file. `--nbest N` gives N
independent samples per line.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor

from mtkit.config import DecodeConfig
from mtkit.decoding.search import Hypothesis, greedy_search


def line_seed(seed: int, text: str, sample: int) -> int:
    """A 63-bit seed for sample number `sample` of the line `text`, from decode.seed."""
    digest = hashlib.sha256(f"{seed}\0{sample}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_search(model: Any, src: Tensor, seeds: list[int], decode: DecodeConfig) -> list[Hypothesis]:
    """One sample per row of `src` (B, S), row r drawing from a generator seeded with seeds[r]."""
    sampler = Sampler(seeds, decode.topk, decode.topp, decode.temperature)
    return greedy_search(model, src, max_len_a=decode.max_len_a, max_len_b=decode.max_len_b, choose=sampler)


class Sampler:
    """Draws one piece per row from filtered log-probabilities, each row from its own generator.

    Args:
        seeds: one per sentence of the batch (rows are named by their sentence's index).
        topk, topp, temperature: see the module docstring.
    """

    def __init__(self, seeds: list[int], topk: int = 0, topp: float = 1.0, temperature: float = 1.0):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.topk, self.topp, self.temperature = topk, topp, temperature

    def __call__(self, lprobs: Tensor, rows: list[int]) -> Tensor:
        """lprobs (n, V) log-probabilities, rows (n,) the sentence of each row -> (n,) drawn pieces."""
        probs = filtered_probs(lprobs, self.topk, self.topp, self.temperature)  # (n, V)
        u = torch.tensor([torch.rand((), generator=self.generators[r]).item() for r in rows],
                         dtype=probs.dtype, device=probs.device)  # (n,) in [0, 1)
        cdf = probs.cumsum(dim=-1)  # (n, V)
        # (1 - u) * total lies in (0, total]: the first piece whose cumulative mass reaches it always
        # has a non-zero probability, and rounding in the sum cannot push it past the last piece.
        target = (1.0 - u) * cdf[:, -1]  # (n,)
        return torch.searchsorted(cdf, target[:, None]).squeeze(1).clamp_(max=probs.size(-1) - 1)


def filtered_probs(lprobs: Tensor, topk: int = 0, topp: float = 1.0, temperature: float = 1.0) -> Tensor:
    """(n, V) log-probabilities -> (n, V) probabilities to sample from: tempered, cut to the top k
    and to the nucleus, renormalised (pieces at -inf stay at 0)."""
    logits = lprobs.float() / temperature if temperature != 1.0 else lprobs.float()  # (n, V)
    if topk > 0:
        kth = logits.topk(min(topk, logits.size(-1)), dim=-1).values[:, -1:]  # (n, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (n, V)
    if topp < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)  # (n, V) each
        before = sorted_p.cumsum(dim=-1) - sorted_p  # (n, V) mass of the more probable pieces
        sorted_p = sorted_p.masked_fill(before >= topp, 0.0)  # keeps the first piece always
        probs = torch.zeros_like(probs).scatter_(1, order, sorted_p)
    return probs
