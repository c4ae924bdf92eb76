"""Greedy and batched beam search over a Transformer with an incremental decoder cache.

Turns source id tensors into ranked output ids, batched over sentences, feeding one new token per
step and dropping sentences from the batch as they finish. It does not tokenize, batch files,
move models between devices or detokenize: that is translate.py's job.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtkit.config import DecodeConfig
from mtkit.data.tokenizer import BOS_ID, EOS_ID, PAD_ID  # the special ids are defined once, in tokenizer.py
from mtkit.decoding.search_state import (
    Alive,
    Beams,
    TokenMasks,
    eval_mode,
    length_penalty,
    max_lengths,
    output_limit,
    select_rows,
)

__all__ = ["Hypothesis", "beam_search", "greedy_search", "length_penalty", "output_limit", "search"]

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


def search(model: Any, src: Tensor, cfg: DecodeConfig) -> list[list[Hypothesis]]:
    """Decode a batch with the settings of a DecodeConfig: beam_size 1 is greedy search.

    Args:
        model: has encode / start_cache / decode_step and a cache with select (see model/transformer.py).
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
                  bos: int = BOS_ID, eos: int = EOS_ID, pad: int = PAD_ID,
                  choose: Callable[[Tensor, list[int]], Tensor] | None = None) -> list[Hypothesis]:
    """Pick the most probable next token at every step, for all sentences of `src` at once.

    Args:
        model: has encode / start_cache / decode_step and a cache with select (see model/transformer.py).
        src: (B, S) source ids, each sentence ending in EOS, right-padded with `pad`.
        max_len_a, max_len_b: at most int(max_len_a * src_len + max_len_b) output tokens (EOS not
            counted); at the limit EOS is forced.
        choose: picks the next tokens instead of the most probable ones: (n, V) log-probs and the
            batch index of each row's sentence -> (n,) tokens (sampling.Sampler draws them).

    Returns:
        B hypotheses in the order of `src`; their score is their log_prob.
    """
    with eval_mode(model):
        limits = max_lengths(src, max_len_a, max_len_b, pad)  # host list, one sync
        B, device = src.size(0), src.device
        results: list[Hypothesis | None] = [None] * B
        if B == 0:
            return []
        memory, src_pad_mask = model.encode(src)  # (B, S, D), (B, S)
        cache = model.start_cache(memory, src_pad_mask)
        alive = Alive(limits, device)
        width = max(limits) + 1  # steps needed by the longest allowed output, EOS included
        out = torch.full((B, width), pad, dtype=torch.long, device=device)  # (n, W) tokens so far
        log_prob = torch.zeros(B, device=device)  # (n,)
        tok = torch.full((B,), bos, dtype=torch.long, device=device)  # (n,) newest token per row
        masks = TokenMasks(pad, bos, eos, device)
        for t in range(width):
            lprobs = masks.apply(model.decode_step(tok, cache), alive.at_limit(t))  # (n, V)
            if choose is None:
                best, tok = lprobs.max(dim=-1)  # (n,), (n,)
            else:
                tok = choose(lprobs, alive.index)  # (n,)
                best = lprobs.gather(1, tok[:, None]).squeeze(1)  # (n,) its log-prob
            log_prob += best
            out[:, t] = tok
            fin = alive.finished(tok == eos)  # at the limit EOS was forced, so those rows end too
            if not fin:
                continue
            for i, tk, lp in zip(fin, out[fin, :t].tolist(), log_prob[fin].tolist(), strict=True):
                results[alive.index[i]] = Hypothesis(tokens=tk, score=lp, log_prob=lp)
            if alive.all_done:
                break
            keep = alive.compact()
            out, log_prob, tok = out[keep], log_prob[keep], tok[keep]
            cache = select_rows(cache, keep, keep)
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
        model: has encode / start_cache / decode_step and a cache with select (see model/transformer.py).
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
    K = beam_size
    with eval_mode(model):
        limits = max_lengths(src, max_len_a, max_len_b, pad)  # host list, one sync
        B, device = src.size(0), src.device
        results: list[list[Hypothesis]] = [[] for _ in range(B)]
        if B == 0:
            return results
        memory, src_pad_mask = model.encode(src)  # (B, S, D), (B, S)
        # One row per sentence at step 0 (its K beams would all be BOS); the rows are copied to K
        # beams when the first step's choices reorder the cache.
        cache = model.start_cache(memory, src_pad_mask)  # cross-attention K/V computed once
        alive = Alive(limits, device)
        beams = Beams(alive.limit, max(limits) + 1, K, nbest, length_penalty, pad)
        tok = torch.full((B,), bos, dtype=torch.long, device=device)  # (n*K,) newest tokens; (n,) at step 0
        masks = TokenMasks(pad, bos, eos, device)
        for t in range(beams.width):
            n = len(alive.index)
            at_limit = alive.at_limit(t)  # EOS forcing only once some sentence may be at its limit
            force = at_limit.repeat_interleave(K) if at_limit is not None and t > 0 else at_limit
            lprobs = masks.apply(model.decode_step(tok, cache), force)  # (n*K, V); (n, V) at step 0
            parent, word = beams.advance(lprobs, t, eos)  # (n, K) each
            done_t = beams.can_stop(t, stopping)
            if at_limit is not None:
                done_t |= at_limit
            # (n, K) cache rows: beam `parent` of each sentence; at step 0 its one row.
            rows = torch.arange(n, device=device).unsqueeze(1) * (K if t > 0 else 1) + parent * (t > 0)
            sentences = None  # every sentence stays in the batch (step 0 copies its row to K beams)
            fin = alive.finished(done_t)
            if fin:
                _harvest(results, [alive.index[i] for i in fin], *beams.pools(fin))
                if alive.all_done:
                    break
                sentences = alive.compact()
                rows, word = rows[sentences], word[sentences]
                beams.keep(sentences)
            # Beams reordered within their sentences leave the cross-attention K/V in place (the
            # cache keeps them per sentence); a step that drops sentences also drops theirs.
            cache = select_rows(cache, rows.reshape(-1), sentences)
            tok = word.reshape(-1)
    return results


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
