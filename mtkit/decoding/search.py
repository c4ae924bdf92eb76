"""Greedy and batched beam search over a Transformer with an incremental decoder cache.

Turns source id tensors into ranked output ids, batched over sentences, feeding one new token per
step and dropping sentences from the batch as they finish. It does not tokenize, batch files,
move models between devices or detokenize: that is translate.py's job.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mtkit.config import DecodeConfig
from mtkit.tokenizer import BOS_ID, EOS_ID, PAD_ID  # the special ids are defined once, in tokenizer.py

NEG_INF = float("-inf")
# Finished sentences leave the batch once they are more than this fraction of it (see beam_search).
COMPACT_AFTER = 0.25

# Decisions shared by both searches (tests rely on them):
# * Length limit: a sentence with `src_len` non-pad source tokens may emit at most
#   L = int(max_len_a * src_len + max_len_b) output tokens, EOS not counted.
# * At the limit EOS is forced: at step L only EOS is allowed and its log-prob is added, so every
#   hypothesis ends in EOS and `log_prob` always includes an EOS term (as in fairseq).
# * PAD and BOS are never generated (their log-probs are set to -inf after the softmax, so the
#   other tokens' log-probs are unchanged).
# * Lengths for the length penalty count output tokens plus EOS: len(tokens) + 1.


@dataclass
class Hypothesis:
    """One finished translation.

    Attributes:
        tokens: output ids, without BOS and EOS.
        score: the ranking score, log_prob / length_penalty(len(tokens) + 1) (== log_prob when
            the penalty's alpha is 0, and always for greedy search).
        log_prob: sum of the token log-probabilities, EOS included.
    """

    tokens: list[int]
    score: float
    log_prob: float


def length_penalty(length: int | float | Tensor, alpha: float) -> float | Tensor:
    """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al. 2016, section 7).

    Args:
        length: output tokens including EOS (a number or a tensor of them).
        alpha: 0 turns the penalty off (returns 1); larger values favour longer outputs.
    """
    return ((5 + length) / 6) ** alpha


_gnmt = length_penalty  # beam_search's `length_penalty` argument shadows the function's name


def search(model: Any, src: Tensor, cfg: DecodeConfig) -> list[list[Hypothesis]]:
    """Decode a batch with the settings of a DecodeConfig: beam_size 1 is greedy search.

    Args:
        model: has encode / start_cache / decode_step and a cache with select (see model.py).
        src: (B, S) source ids, right-padded.

    Returns:
        B lists of hypotheses, best first: `cfg.nbest` of them (1 for greedy).
    """
    limits = dict(max_len_a=cfg.max_len_a, max_len_b=cfg.max_len_b)
    if cfg.beam_size == 1:
        return [[h] for h in greedy_search(model, src, **limits)]
    return beam_search(model, src, beam_size=cfg.beam_size, length_penalty=cfg.length_penalty,
                       nbest=cfg.nbest, stopping=cfg.stopping, **limits)


@torch.inference_mode()
def greedy_search(model: Any, src: Tensor, *, max_len_a: float, max_len_b: int,
                  bos: int = BOS_ID, eos: int = EOS_ID, pad: int = PAD_ID) -> list[Hypothesis]:
    """Pick the most probable next token at every step, for all sentences of `src` at once.

    Args:
        model: has encode / start_cache / decode_step and a cache with select (see model.py).
        src: (B, S) source ids, each sentence ending in EOS, right-padded with `pad`.
        max_len_a, max_len_b: at most int(max_len_a * src_len + max_len_b) output tokens (EOS not
            counted); at the limit EOS is forced.

    Returns:
        B hypotheses in the order of `src`; their score is their log_prob.
    """
    with _eval_mode(model):
        limits = _max_lengths(src, max_len_a, max_len_b, pad)  # host list, one sync
        B, device = src.size(0), src.device
        results: list[Hypothesis | None] = [None] * B
        if B == 0:
            return []
        memory, src_pad_mask = model.encode(src)  # (B, S, D), (B, S)
        cache = model.start_cache(memory, src_pad_mask)
        alive = list(range(B))  # original index of each row in the batch (host side)
        harvested = torch.zeros(B, dtype=torch.bool, device=device)  # (n,) done, awaiting compaction
        n_harvested = 0
        limit = torch.tensor(limits, device=device)  # (n,)
        width = max(limits) + 1  # steps needed by the longest allowed output, EOS included
        out = torch.full((B, width), pad, dtype=torch.long, device=device)  # (n, W) tokens so far
        log_prob = torch.zeros(B, device=device)  # (n,)
        tok = torch.full((B,), bos, dtype=torch.long, device=device)  # (n,) newest token per row
        masks = _Masks(pad, bos, eos, device)
        min_limit = min(limits)  # smallest limit among rows still decoding (host side)
        for t in range(width):
            # Rows only need the EOS forcing once one of them may be at its limit; the host knows
            # the smallest limit, so the other steps skip that masked_fill at no sync.
            force = limit <= t if t >= min_limit else None
            lprobs = masks.apply(model.decode_step(tok, cache), force)  # (n, V)
            best, tok = lprobs.max(dim=-1)  # (n,), (n,)
            log_prob += best
            out[:, t] = tok
            done_t = tok == eos  # (n,) at the limit EOS was forced, so those rows end too
            if n_harvested:
                done_t &= ~harvested
            if not done_t.any():  # the one host-device sync per step
                continue
            # Harvest finished rows: these syncs and loops run only on steps where rows finish.
            fin, _ = _split(done_t)
            for i, tk, lp in zip(fin, out[fin, :t].tolist(), log_prob[fin].tolist(), strict=True):
                results[alive[i]] = Hypothesis(tokens=tk, score=lp, log_prob=lp)
            harvested |= done_t
            n_harvested += len(fin)
            if n_harvested == len(alive):
                break
            # Drop finished rows so that long sentences do not drag short ones through the model,
            # once they are more than COMPACT_AFTER of the batch (as in beam_search).
            if n_harvested > COMPACT_AFTER * len(alive):
                _, keep = _split(harvested)
                k = torch.tensor(keep, device=device)
                alive = [alive[i] for i in keep]
                min_limit = min(limits[i] for i in alive)
                limit, out, log_prob, tok, harvested = limit[k], out[k], log_prob[k], tok[k], harvested[k]
                n_harvested = 0
                cache = _select(cache, k, k)
    assert all(r is not None for r in results), "every row ends at EOS or its length limit"
    return results  # type: ignore[return-value]


@torch.inference_mode()
def beam_search(model: Any, src: Tensor, *, beam_size: int, length_penalty: float, max_len_a: float,
                max_len_b: int, nbest: int = 1, stopping: str = "exact", bos: int = BOS_ID, eos: int = EOS_ID,
                pad: int = PAD_ID) -> list[list[Hypothesis]]:
    """Batched beam search with GNMT length penalty; stops by the exact rule or early (`stopping`).

    Every step, per sentence, takes the top 2K of the K*V extensions of its K live beams (by
    summed log-prob): EOS extensions ranked within the top K become finished hypotheses (score =
    log_prob / lp(len)); the best K non-EOS extensions stay live. At most K of the 2K are EOS, so K
    live beams always remain. A sentence stops when its nbest-th finished score is >= the best score
    any live beam could still reach: log-probs only fall, so a live beam ends with score at most
    log_prob_now / lp(L + 1) for alpha >= 0 (lp grows with length; L + 1 is the longest final
    length; alpha 0 gives log_prob_now). At its length limit EOS is forced, so a sentence always
    stops there. The search is exact given the beam: no finished-count heuristic cuts off a live
    beam that could still win.

    NOTE (differs from exact search): stopping="early" bounds a live beam by the score it would get
    if it ended at the next step, log_prob_now / lp(its length + EOS), instead of at the longest
    allowed length (as Hugging Face's beam search without early_stopping does). With alpha > 0 that can stop
    before a longer hypothesis that would have scored better (tests/test_search.py shows one);
    in return a sentence stops as soon as its best live beam falls behind, instead of running
    on towards its length limit. With alpha 0 both rules are the same.

    Args:
        model: has encode / start_cache / decode_step and a cache with select (see model.py).
        src: (B, S) source ids, each sentence ending in EOS, right-padded with `pad`.
        beam_size: K, live hypotheses per sentence.
        length_penalty: GNMT alpha; 0 ranks by log_prob alone.
        max_len_a, max_len_b: at most int(max_len_a * src_len + max_len_b) output tokens (EOS not
            counted); at the limit EOS is forced.
        nbest: hypotheses returned per sentence, <= beam_size.
        stopping: "exact" (the bound above) or "early" (the NOTE above).

    Returns:
        B lists of `nbest` hypotheses, best score first (fewer only if the model gives fewer
        distinct outputs a non-zero probability).
    """
    if not 1 <= nbest <= beam_size:
        raise ValueError(f"need 1 <= nbest <= beam_size (got nbest={nbest}, beam_size={beam_size})")
    if length_penalty < 0:  # the stopping bound assumes lp grows with length
        raise ValueError(f"length_penalty must be >= 0 (got {length_penalty})")
    if stopping not in ("exact", "early"):
        raise ValueError(f"stopping must be 'exact' or 'early' (got {stopping!r})")
    K, N, alpha = beam_size, nbest, length_penalty
    with _eval_mode(model):
        limits = _max_lengths(src, max_len_a, max_len_b, pad)  # host list, one sync
        B, device = src.size(0), src.device
        results: list[list[Hypothesis]] = [[] for _ in range(B)]
        if B == 0:
            return results
        memory, src_pad_mask = model.encode(src)  # (B, S, D), (B, S)
        # One row per sentence at step 0 (its K beams would all be BOS); the rows are copied to K
        # beams when the first step's choices reorder the cache.
        cache = model.start_cache(memory, src_pad_mask)  # cross-attention K/V computed once
        alive = list(range(B))  # original index of each sentence in the batch (host side)
        harvested = torch.zeros(B, dtype=torch.bool, device=device)  # (n,) done, awaiting compaction
        n_harvested = 0
        limit = torch.tensor(limits, device=device)  # (n,)
        lp_max = _gnmt(limit + 1, alpha)  # (n,) penalty at the longest final length, for the bound
        W = max(limits) + 1  # steps needed by the longest allowed output, EOS included
        hist = torch.full((B, K, W), pad, dtype=torch.long, device=device)  # (n, K, W) live tokens
        scores = torch.zeros(B, K, device=device)  # (n, K) live log-probs
        scores[:, 1:] = NEG_INF  # step 0: the K beams are identical; let only beam 0 expand
        fin_score = torch.full((B, N), NEG_INF, device=device)  # (n, N) best finished, sorted
        fin_logp = torch.full((B, N), NEG_INF, device=device)  # (n, N)
        fin_len = torch.zeros(B, N, dtype=torch.long, device=device)  # (n, N) tokens without EOS
        fin_tok = torch.full((B, N, W), pad, dtype=torch.long, device=device)  # (n, N, W)
        tok = torch.full((B,), bos, dtype=torch.long, device=device)  # (n*K,) newest tokens; (n,) at step 0
        masks = _Masks(pad, bos, eos, device)
        min_limit = min(limits)  # smallest limit among sentences still decoding (host side)
        for t in range(W):
            n = len(alive)
            # EOS forcing only once some sentence may be at its limit (host-known: no sync).
            at_limit = limit <= t if t >= min_limit else None
            force = at_limit.repeat_interleave(K) if at_limit is not None and t > 0 else at_limit
            lprobs = masks.apply(model.decode_step(tok, cache), force)  # (n*K, V); (n, V) at step 0
            V = lprobs.size(-1)
            if t == 0:  # one row per sentence, broadcast to its K beams (all but beam 0 at -inf)
                cand = (lprobs.unsqueeze(1) + scores.unsqueeze(2)).view(n, K * V)
            else:  # in place on our own log-softmax output: saves allocating another (n, K, V) tensor
                cand = lprobs.view(n, K, V).add_(scores.unsqueeze(2)).view(n, K * V)  # (n, K*V) sums
            top_lp, top_idx = cand.topk(2 * K, dim=1)  # (n, 2K), best first
            beam, word = top_idx // V, top_idx % V  # (n, 2K) parent beam and new token
            is_eos = word == eos  # (n, 2K)

            # Finished: EOS extensions ranked within the top K, merged into the N-best pool.
            # Everything stays on tensors (no per-sentence Python) and -inf marks "none".
            new_score = (top_lp[:, :K] / _gnmt(t + 1, alpha)).masked_fill(~is_eos[:, :K], NEG_INF)
            new_tok = hist.gather(1, beam[:, :K, None].expand(-1, -1, W))  # (n, K, W) prefixes
            fin_score, pick = torch.cat([fin_score, new_score], 1).topk(N, dim=1)  # (n, N)
            fin_logp = torch.cat([fin_logp, top_lp[:, :K]], 1).gather(1, pick)
            fin_len = torch.cat([fin_len, fin_len.new_full((n, K), t)], 1).gather(1, pick)
            fin_tok = torch.cat([fin_tok, new_tok], 1).gather(1, pick[:, :, None].expand(-1, -1, W))

            # Live: the best K non-EOS extensions (topk keeps them sorted, best first).
            scores, pos = top_lp.masked_fill(is_eos, NEG_INF).topk(K, dim=1)  # (n, K)
            parent, word = beam.gather(1, pos), word.gather(1, pos)  # (n, K)
            hist = hist.gather(1, parent[:, :, None].expand(-1, -1, W))
            hist[:, :, t] = word

            # Stop when no live beam can beat the nbest-th finished hypothesis (see docstring).
            if stopping == "exact":
                bound = scores[:, 0] / lp_max  # (n,) best score any live beam can still reach
            else:  # early: the best live beam's score if it ended now
                bound = scores[:, 0] / _gnmt(t + 2, alpha)  # its t + 1 tokens + EOS
            done_t = fin_score[:, N - 1] >= bound
            if at_limit is not None:
                done_t |= at_limit
            if n_harvested:
                done_t &= ~harvested
            # (n, K) cache rows: beam `parent` of each sentence; at step 0 its one row.
            rows = torch.arange(n, device=device).unsqueeze(1) * (K if t > 0 else 1) + parent * (t > 0)
            sentences = None  # every sentence stays in the batch (step 0 copies its row to K beams)
            if done_t.any():  # the one host-device sync per step
                # Harvest: these syncs and loops run only on steps where sentences finish.
                fin, _ = _split(done_t)
                _harvest(results, [alive[i] for i in fin], fin_score[fin], fin_logp[fin],
                         fin_len[fin], fin_tok[fin])
                harvested |= done_t
                n_harvested += len(fin)
                if n_harvested == n:
                    break
                # Drop finished sentences so that long sentences do not drag short ones along, but
                # only once they are more than COMPACT_AFTER of the batch: until then decoding a few
                # finished rows costs less than copying every cache row each time one finishes.
                if n_harvested > COMPACT_AFTER * n:
                    _, keep = _split(harvested)
                    k = torch.tensor(keep, device=device)
                    alive = [alive[i] for i in keep]
                    min_limit = min(limits[i] for i in alive)
                    limit, lp_max, rows, word, scores, hist = (
                        x[k] for x in (limit, lp_max, rows, word, scores, hist))
                    fin_score, fin_logp, fin_len, fin_tok = (x[k] for x in (fin_score, fin_logp, fin_len, fin_tok))
                    harvested, n_harvested = harvested[k], 0
                    sentences = k
            # Beams reordered within their sentences leave the cross-attention K/V in place (the
            # cache keeps them per sentence); a step that drops sentences also drops theirs.
            cache = _select(cache, rows.reshape(-1), sentences)
            tok = word.reshape(-1)
    return results


# ----------------------------------------------------------------------------- helpers


class _Masks:
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


def _split(done: Tensor) -> tuple[list[int], list[int]]:
    """(n,) bool -> (indices that are True, indices that are False), on the host."""
    flags = done.tolist()
    return [i for i, d in enumerate(flags) if d], [i for i, d in enumerate(flags) if not d]


def output_limit(src_len: int, a: float, b: int) -> int:
    """A sentence's output limit int(a * src_len + b), EOS not counted; src_len counts its source
    tokens with EOS (ct2.py gives CTranslate2 the same limits)."""
    return max(0, int(a * src_len + b))


def _max_lengths(src: Tensor, a: float, b: int, pad: int) -> list[int]:
    """Per-sentence output_limit; src_len counts non-pad."""
    return [output_limit(n, a, b) for n in (src != pad).sum(dim=1).tolist()]


def _select(cache: Any, rows: Tensor, sentences: Tensor | None = None) -> Any:
    """cache.select(rows, sentences), whether it works in place (returns None) or returns a new
    cache. `sentences` None: every sentence stays (cache.DecoderCache.select)."""
    new = cache.select(rows, sentences)
    return cache if new is None else new


def _harvest(results: list[list[Hypothesis]], sent: list[int], score: Tensor, logp: Tensor,
             length: Tensor, tokens: Tensor) -> None:
    """Store the finished pools of sentences `sent` as Hypothesis lists (best first).

    Args:
        score, logp, length: (n, N) pools sorted by score; -inf entries are empty slots.
        tokens: (n, N, W) output ids, padded.
    """
    for s, sc, lp, ln, tk in zip(sent, score.tolist(), logp.tolist(), length.tolist(), tokens.tolist(), strict=True):
        results[s] = [Hypothesis(tokens=tk[j][: ln[j]], score=sc[j], log_prob=lp[j])
                      for j in range(len(sc)) if math.isfinite(sc[j])]


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Dropout off while searching (validation searches mid-training); the mode is restored after."""
    training = bool(getattr(model, "training", False))
    if training:
        model.eval()
    try:
        yield
    finally:
        if training:
            model.train()
