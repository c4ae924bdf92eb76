"""The bookkeeping greedy and beam search share, so that search.py reads as the two algorithms.

Which sentences of a batch are still decoding and when finished ones leave it (`Alive`), beam
search's live beams and finished pools (`Beams`), the tokens that may come next (`TokenMasks`),
the output limit, the GNMT length penalty, and the cache and mode handling around a search.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

NEG_INF = float("-inf")
TOPK_BLOCK = 32  # values per block in block_topk


def length_penalty(length: int | float | Tensor, alpha: float) -> float | Tensor:
    """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al. 2016, section 7).

    Args:
        length: output tokens including EOS (a number or a tensor of them).
        alpha: 0 turns the penalty off (returns 1); larger values favour longer outputs.
    """
    return ((5 + length) / 6) ** alpha




def output_limit(src_len: int, a: float, b: int) -> int:
    """A sentence's output limit int(a * src_len + b), EOS not counted; src_len counts its source
    tokens with EOS (ct2.py gives CTranslate2 the same limits)."""
    return max(0, int(a * src_len + b))


def max_lengths(src: Tensor, a: float, b: int, pad: int) -> list[int]:
    """Per-sentence output_limit; src_len counts non-pad."""
    return [output_limit(n, a, b) for n in (src != pad).sum(dim=1).tolist()]


class Alive:
    """Which sentences of a batch are still being decoded; finished ones leave it at once.

    Both searches harvest a sentence once it is done and, in the same step, drop it from every
    per-sentence tensor and the cache, so that long sentences do not drag short ones through the
    model. Dropping costs little: beam search gathers every cache row each step anyway
    (cache.DecoderCache.select), and a step that drops sentences gathers fewer. Keeping finished
    rows until they were a quarter of the batch decoded ~5% more rows and ran 4-12% longer on the
    Ding test set (BENCHMARKS.md). Host-side lists keep the steps free of syncs but for one
    `any()` per step.

    Attributes:
        index: the original index of each sentence still in the batch (host).
        limit: (n,) each sentence's output limit (output_limit).
    """

    def __init__(self, limits: list[int], device: torch.device) -> None:
        self.limits = limits  # per original sentence
        self.index = list(range(len(limits)))
        self.limit = torch.tensor(limits, device=device)  # (n,)
        self.min_limit = min(limits)  # smallest limit among sentences still decoding (host side)
        self.keep: list[int] = self.index  # rows not finished at the last `finished` that found some

    def at_limit(self, t: int) -> Tensor | None:
        """(n,) bool: sentences at their limit at step t; None while none can be (the host knows the
        smallest limit, so the other steps skip the EOS forcing at no sync)."""
        return self.limit <= t if t >= self.min_limit else None

    def finished(self, done: Tensor) -> list[int]:
        """The rows of `done` (n,) bool that are True, on the host; [] for none."""
        if not done.any():  # the one host-device sync per step
            return []
        fin, self.keep = split_flags(done)  # these syncs and loops run only on steps where rows finish
        return fin

    @property
    def all_done(self) -> bool:
        """Every row finished at the last `finished` that found some."""
        return not self.keep

    def compact(self) -> Tensor:
        """Drop the rows the last `finished` found: the (k,) rows kept, to select every
        per-sentence tensor and the cache with."""
        k = torch.tensor(self.keep, device=self.limit.device)
        self.index = [self.index[i] for i in self.keep]
        self.min_limit = min(self.limits[i] for i in self.index)
        self.limit = self.limit[k]
        return k


class Beams:
    """Beam search's per-sentence state: K live beams and the N best finished hypotheses.

    Everything stays on tensors (no per-sentence Python) and -inf marks "none".

    Args:
        limit: (B,) output limits.
        width: W, steps of the longest allowed output (its limit + EOS).
        beam_size: K; nbest: N; alpha: GNMT length penalty; pad: fills unused token slots.
    """

    def __init__(self, limit: Tensor, width: int, beam_size: int, nbest: int, alpha: float, pad: int) -> None:
        B, K, N, device = limit.size(0), beam_size, nbest, limit.device
        self.K, self.N, self.alpha = K, N, alpha
        self.width = W = width  # steps needed by the longest allowed output, EOS included
        self.lp_max = length_penalty(limit + 1, alpha)  # (n,) penalty at the longest final length, for the bound
        self.hist = torch.full((B, K, W), pad, dtype=torch.long, device=device)  # (n, K, W) live tokens
        self.scores = torch.zeros(B, K, device=device)  # (n, K) live log-probs
        self.scores[:, 1:] = NEG_INF  # step 0: the K beams are identical; let only beam 0 expand
        self.fin_score = torch.full((B, N), NEG_INF, device=device)  # (n, N) best finished, sorted
        self.fin_logp = torch.full((B, N), NEG_INF, device=device)  # (n, N)
        self.fin_len = torch.zeros(B, N, dtype=torch.long, device=device)  # (n, N) tokens without EOS
        self.fin_tok = torch.full((B, N, W), pad, dtype=torch.long, device=device)  # (n, N, W)

    def advance(self, lprobs: Tensor, t: int, eos: int) -> tuple[Tensor, Tensor]:
        """Extend every live beam by step t's log-probs (n*K, V) ((n, V) at step 0): EOS extensions
        ranked within the top K join the finished pool, the best K others stay live. Returns each
        live beam's parent beam and new token, (n, K) each."""
        K, W = self.K, self.width
        n, V = self.scores.size(0), lprobs.size(-1)
        if t == 0:  # one row per sentence, broadcast to its K beams (all but beam 0 at -inf)
            cand = (lprobs.unsqueeze(1) + self.scores.unsqueeze(2)).view(n, K * V)
            top_lp, top_idx = block_topk(cand, 2 * K)  # (n, 2K), best first
        else:
            top_lp, top_idx = extension_topk(lprobs.view(n, K, V), self.scores, 2 * K)  # (n, 2K)
        beam, word = top_idx // V, top_idx % V  # (n, 2K) parent beam and new token
        is_eos = word == eos  # (n, 2K)
        self._finish(top_lp[:, :K], beam[:, :K], is_eos[:, :K], t)
        # Live: the best K non-EOS extensions (topk keeps them sorted, best first).
        self.scores, pos = top_lp.masked_fill(is_eos, NEG_INF).topk(K, dim=1)  # (n, K)
        parent, word = beam.gather(1, pos), word.gather(1, pos)  # (n, K)
        self.hist = self.hist.gather(1, parent[:, :, None].expand(-1, -1, W))
        self.hist[:, :, t] = word
        return parent, word

    def _finish(self, lp: Tensor, beam: Tensor, is_eos: Tensor, t: int) -> None:
        """Merge the EOS extensions among the top K (log-prob lp, parent beam; (n, K) each) into the
        N-best pool, scored log_prob / lp(t + 1)."""
        n, K, N, W = lp.size(0), self.K, self.N, self.width
        new_score = (lp / length_penalty(t + 1, self.alpha)).masked_fill(~is_eos, NEG_INF)  # (n, K)
        new_tok = self.hist.gather(1, beam[:, :, None].expand(-1, -1, W))  # (n, K, W) prefixes
        self.fin_score, pick = torch.cat([self.fin_score, new_score], 1).topk(N, dim=1)  # (n, N)
        self.fin_logp = torch.cat([self.fin_logp, lp], 1).gather(1, pick)
        self.fin_len = torch.cat([self.fin_len, self.fin_len.new_full((n, K), t)], 1).gather(1, pick)
        self.fin_tok = torch.cat([self.fin_tok, new_tok], 1).gather(1, pick[:, :, None].expand(-1, -1, W))

    def can_stop(self, t: int, stopping: str) -> Tensor:
        """(n,) bool: no live beam can beat the nbest-th finished hypothesis (see beam_search)."""
        if stopping == "exact":
            bound = self.scores[:, 0] / self.lp_max  # (n,) best score any live beam can still reach
        else:  # early: the best live beam's score if it ended now
            bound = self.scores[:, 0] / length_penalty(t + 2, self.alpha)  # its t + 1 tokens + EOS
        return self.fin_score[:, self.N - 1] >= bound

    def pools(self, rows: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The finished pools (score, log-prob, length, tokens) of `rows`, for harvesting."""
        return self.fin_score[rows], self.fin_logp[rows], self.fin_len[rows], self.fin_tok[rows]

    def keep(self, k: Tensor) -> None:
        """Keep only the sentences `k` (n',) long."""
        for name in ("lp_max", "hist", "scores", "fin_score", "fin_logp", "fin_len", "fin_tok"):
            setattr(self, name, getattr(self, name)[k])


class TokenMasks:
    """Constant masks built once per search, so that no step builds index tensors or syncs."""

    def __init__(self, pad: int, bos: int, eos: int, device: torch.device) -> None:
        self.banned = torch.tensor([pad, bos], device=device)  # never generated
        self.eos = eos
        self.not_eos: Tensor | None = None  # (V,) True except at EOS; built when V is known

    def apply(self, logits: Tensor, force_eos: Tensor | None) -> Tensor:
        """(R, V) logits -> (R, V) log-probs with PAD/BOS banned and EOS forced where asked.

        Args:
            logits: (R, V) unnormalised scores for R rows.
            force_eos: (R,) bool, rows at their length limit (only EOS allowed), or None.
        """
        # float32 softmax even under bf16/fp16 autocast: sums of log-probs need the precision.
        lprobs = F.log_softmax(logits.float(), dim=-1).index_fill_(1, self.banned, NEG_INF)
        if force_eos is not None:
            if self.not_eos is None:
                self.not_eos = torch.ones(lprobs.size(-1), dtype=torch.bool, device=lprobs.device)
                self.not_eos[self.eos] = False
            lprobs.masked_fill_(force_eos[:, None] & self.not_eos, NEG_INF)
        return lprobs


def block_topk(x: Tensor, k: int, block: int = TOPK_BLOCK) -> tuple[Tensor, Tensor]:
    """x.topk(k, dim=1) for (n, M) x, by way of block maxima where M is large.

    torch's topk is slow over a beam step's K * V candidates per sentence (it copies each row into a
    heap of value-index pairs): 1.1 ms for 32 x 40,000 on a Zen 2, two threads. The k largest values
    lie in the k blocks with the largest maxima (a block holding one of them has a maximum at least
    as large as the k-th value, and at most k blocks can), so the row's maxima per block of
    `block` values are taken in one pass, then the top k among the k best blocks' values: 0.4 ms.
    Values and indices equal topk's, but for the order among exactly tied values.
    """
    n, M = x.shape
    if M % block or M < 64 * block:  # short or ragged rows: the plain topk is as fast
        return x.topk(k, dim=1)
    blocks = x.view(n, M // block, block)  # (n, M/b, b)
    best_blocks = blocks.amax(dim=2).topk(k, dim=1).indices  # (n, k)
    return top_of_blocks(blocks, best_blocks, k)


def extension_topk(lprobs: Tensor, scores: Tensor, k: int, block: int = TOPK_BLOCK) -> tuple[Tensor, Tensor]:
    """block_topk(lprobs + scores[:, :, None] viewed (n, K*V), k), without forming the sums.

    lprobs (n, K, V) log-probs of each beam's next token, the caller's to overwrite; scores (n, K)
    the beams' log-probs so far. Rounding is monotonic, so a block's largest sum is its largest
    log-prob plus the beam's score: the score is added to the (n, K*V/block) block maxima and to the
    k chosen blocks' values only, not to all n*K*V log-probs (one pass over them fewer; 0.15 ms of
    a 160-row step on a Zen 2, real AVX2). Values and indices are block_topk's on the sums, ties
    included.
    """
    n, K, V = lprobs.shape
    if V % block or K * V < 64 * block:  # blocks would straddle beams, or the plain topk is as fast
        return block_topk(lprobs.add_(scores.unsqueeze(2)).view(n, K * V), k, block)
    per_beam = V // block
    maxima = lprobs.view(n, K, per_beam, block).amax(dim=3).add_(scores.unsqueeze(2))  # (n, K, V/b)
    best_blocks = maxima.view(n, K * per_beam).topk(k, dim=1).indices  # (n, k)
    return top_of_blocks(lprobs.view(n, K * per_beam, block), best_blocks, k,
                         shift=scores.gather(1, best_blocks // per_beam))  # each chosen block's beam score


def top_of_blocks(blocks: Tensor, best_blocks: Tensor, k: int, shift: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The k largest values among the chosen blocks, with their indices in the flattened row.

    Args:
        blocks: (n, M/b, b) each row's values in blocks of b.
        best_blocks: (n, k) the blocks to look in (block_topk: those with the k largest maxima).
        shift: (n, k) added to every value of the matching chosen block, or None.
    """
    n, block = blocks.size(0), blocks.size(2)
    values = blocks.gather(1, best_blocks[:, :, None].expand(-1, -1, block))  # (n, k, b)
    if shift is not None:
        values = values.add_(shift.unsqueeze(2))
    top, pos = values.view(n, k * block).topk(k, dim=1)  # (n, k)
    return top, best_blocks.gather(1, pos // block) * block + pos % block


def split_flags(done: Tensor) -> tuple[list[int], list[int]]:
    """(n,) bool -> (indices that are True, indices that are False), on the host."""
    flags = done.tolist()
    return [i for i, d in enumerate(flags) if d], [i for i, d in enumerate(flags) if not d]


def select_rows(cache: Any, rows: Tensor, sentences: Tensor | None = None) -> Any:
    """cache.select(rows, sentences), whether it works in place (returns None) or returns a new
    cache. `sentences` None: every sentence stays (cache.DecoderCache.select)."""
    new = cache.select(rows, sentences)
    return cache if new is None else new


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Dropout off while searching (validation searches mid-training); the mode is restored after."""
    training = bool(getattr(model, "training", False))
    if training:
        model.eval()
    try:
        yield
    finally:
        if training:
            model.train()
