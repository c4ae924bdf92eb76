"""Tests for mtkit.decoding.search: hand-worked beams on a scripted model, then properties on random models.

The scripted model's next-token probabilities depend only on the source's first token (which
"table" to use) and the prefix decoded so far, so every expected beam below is worked out on paper
in the comments. Vocabulary: 0 pad, 1 unk, 2 bos, 3 eos, 4 "a", 5 "b".
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtkit.config import DecodeConfig
from mtkit.decoding.search import Hypothesis, beam_search, greedy_search, length_penalty, search

PAD, UNK, BOS, EOS, A, B = 0, 1, 2, 3, 4, 5
log = math.log


# ----------------------------------------------------------------------------- the scripted model


class ScriptedCache:
    """Per sentence: which table (the source's first token); per row: every token fed so far."""

    def __init__(self, key: torch.Tensor):
        self.key = key  # (B,) one per sentence
        self.fed = torch.zeros(len(key), 0, dtype=torch.long)  # (B * beams, t)

    @property
    def length(self) -> int:
        return self.fed.size(1)

    def row_keys(self) -> torch.Tensor:  # (B * beams,) each row's sentence's key
        return self.key.repeat_interleave(len(self.fed) // len(self.key))

    def select(self, rows: torch.Tensor, sentences: torch.Tensor | None = None) -> None:
        # The contract search promises (cache.DecoderCache.select): the rows of each new sentence
        # come from the rows of the one old sentence `sentences` names (the same one when None).
        old_beams = len(self.fed) // len(self.key)
        groups = (rows // old_beams).view(len(self.key) if sentences is None else len(sentences), -1)
        named = torch.arange(len(self.key)) if sentences is None else sentences
        assert torch.equal(groups, named[:, None].expand_as(groups)), "rows must stay with their sentence"
        self.fed = self.fed[rows]
        if sentences is not None:
            self.key = self.key[sentences]


class ScriptedModel:
    """Next-token probabilities from TABLES[key][prefix] (a dict token -> p; missing tokens p=0)."""

    def __init__(self):
        self.rows_per_step: list[int] = []  # rows fed to each decode_step call
        self.encode_calls = 0

    def encode(self, src):
        self.encode_calls += 1
        return src.float().unsqueeze(-1), src == PAD  # (B, S, 1), (B, S)

    def start_cache(self, memory, src_pad_mask):
        return ScriptedCache(memory[:, 0, 0].long())

    def decode_step(self, tokens, cache):
        assert tokens.dim() == 1 and len(tokens) == len(cache.fed), "one newest token per row"
        cache.fed = torch.cat([cache.fed, tokens[:, None]], dim=1)
        self.rows_per_step.append(len(tokens))
        rows = []
        for key, fed in zip(cache.row_keys().tolist(), cache.fed.tolist(), strict=True):
            # (Rows of dead beams, log-prob -inf when fewer than K extensions are possible, may
            # hold anything, EOS included; they never reach the output.)
            assert fed[0] == BOS
            table = TABLES[key]
            probs = table.get(tuple(fed[1:]), table["default"])
            rows.append([probs.get(v, 0.0) for v in range(6)])
        return torch.tensor(rows).log()  # (B', V): log(p) are valid unnormalised logits


GREEDY_TRAP, LENGTH, EOS_KEPT, LIVE_WINS, LIMIT, DIP = 10, 11, 12, 13, 14, 15
TABLES = {
    # Greedy takes "a" (.5) then "a" (.35) then EOS (.5): [a a] with p = .5 * .35 * .5 = .0875.
    # Beam 2 also keeps "b" (.4), whose EOS (.9) gives [b] with p = .36.
    GREEDY_TRAP: {
        (): {A: 0.5, B: 0.4, EOS: 0.1},
        (A,): {A: 0.35, EOS: 0.3, B: 0.25, UNK: 0.1},
        (B,): {EOS: 0.9, A: 0.05, B: 0.05},
        (A, A): {EOS: 0.5, A: 0.3, B: 0.2},
        "default": {EOS: 0.6, A: 0.2, B: 0.1, UNK: 0.1},
    },
    # Short [] (p .52) against long [a a a] (p .48 * .95^3 = .41154): alpha 0 picks the short one,
    # alpha 1 the long one, as lp(1) = 1 and lp(4) = 9/6 = 1.5.
    LENGTH: {
        (): {EOS: 0.52, A: 0.48},
        (A,): {A: 0.95, EOS: 0.05},
        (A, A): {A: 0.95, EOS: 0.05},
        (A, A, A): {EOS: 0.95, A: 0.05},
        "default": {EOS: 0.95, A: 0.05},
    },
    # [] finishes at step 0 (p .4) and stays best: the live beam falls .6 -> .48 -> .384.
    EOS_KEPT: {(): {EOS: 0.4, A: 0.6}, "default": {A: 0.8, EOS: 0.2}},
    # [] finishes at step 0 (p .4), but the live "a" (.6) goes on to [a] with p .54 and wins.
    LIVE_WINS: {(): {EOS: 0.4, A: 0.6}, "default": {EOS: 0.9, A: 0.1}},
    # alpha 1: [] scores log .5 = -0.693. The live "a a" dips to log(.5 * .75) / lp(3) = -0.736
    # (below []) before [a a a] ends at log(.5 * .75 * .99 * .99) / lp(4) = -0.667 (above []).
    DIP: {
        (): {EOS: 0.5, A: 0.5},
        (A,): {A: 0.75, EOS: 0.25},
        (A, A): {A: 0.99, EOS: 0.01},
        "default": {EOS: 0.99, A: 0.01},
    },
    # EOS is never likely: only the length limit ends a hypothesis.
    LIMIT: {"default": {A: 0.97, EOS: 0.03}},
}


def batch(*sents: list[int]) -> torch.Tensor:
    """Right-pad id lists (EOS appended) into a (B, S) tensor."""
    S = max(len(s) for s in sents) + 1
    return torch.tensor([s + [EOS] + [PAD] * (S - len(s) - 1) for s in sents])


def beam(src, k=2, alpha=0.0, nbest=1, a=0.0, b=5, model=None):
    return beam_search(model or ScriptedModel(), src, beam_size=k, length_penalty=alpha, nbest=nbest,
                       max_len_a=a, max_len_b=b)


def greedy(src, a=0.0, b=5, model=None):
    return greedy_search(model or ScriptedModel(), src, max_len_a=a, max_len_b=b)


def check(hyp: Hypothesis, tokens: list[int], log_prob: float, length_alpha: float = 0.0) -> None:
    assert hyp.tokens == tokens
    assert hyp.log_prob == pytest.approx(log_prob, rel=1e-5)
    assert hyp.score == pytest.approx(log_prob / ((5 + len(tokens) + 1) / 6) ** length_alpha, rel=1e-5)


# ----------------------------------------------------------------------------- hand-worked cases


def test_length_penalty_is_gnmt_and_counts_eos():
    assert length_penalty(1, 1.0) == 1.0  # an empty output ([EOS]) is not penalised
    assert length_penalty(4, 1.0) == pytest.approx(1.5)
    assert length_penalty(4, 0.0) == 1.0
    assert torch.allclose(length_penalty(torch.tensor([1, 7]), 2.0), torch.tensor([1.0, 4.0]))


def test_beam_finds_what_greedy_misses():
    src = batch([GREEDY_TRAP])
    check(greedy(src)[0], [A, A], log(0.5) + log(0.35) + log(0.5))
    # Beam 2, step 0: live a (.5), b (.4); EOS (.1) ranks 3rd of the top 2K = 4, not within K.
    # Step 1: b-EOS .36 | a-a .175 | a-EOS .15 | a-b .125 -> [b] finished (rank 1 <= K);
    # live a-a, a-b; .175 < .36 so no live beam can win (alpha 0): stop.
    [best] = beam(src)[0]
    check(best, [B], log(0.4) + log(0.9))


def test_nbest_order_and_exact_scores():
    # Continuing the case above for nbest 2: at step 1 a-EOS (.15) ranked 3rd, not within K = 2,
    # so it is not a finished hypothesis. Step 2: a-a-EOS .0875 | a-b-EOS .125*.6 = .075 |
    # a-a-a .0525 | a-a-b .035 -> both EOS finish; pool .36, .0875 (.075 is 3rd);
    # best live .0525 < .0875: stop.
    hyps = beam(batch([GREEDY_TRAP]), nbest=2)[0]
    assert len(hyps) == 2
    check(hyps[0], [B], log(0.4 * 0.9))
    check(hyps[1], [A, A], log(0.5 * 0.35 * 0.5))


def test_length_penalty_changes_the_winner():
    src = batch([LENGTH])
    # alpha 0: [] (.52) finishes at step 0; live "a" (.48) can only fall below it: stop.
    check(beam(src, alpha=0.0)[0][0], [], log(0.52))
    # alpha 1: [] scores log .52 / lp(1) = -0.654. [a a a] scores log(.48 * .95^3) / lp(4)
    # = -0.888 / 1.5 = -0.592 and wins; [a] and [a a] score log(.48*.05)/lp(2) = -3.20 and
    # log(.48*.95*.05)/lp(3) = -2.84.
    hyps = beam(src, alpha=1.0, nbest=2)[0]
    check(hyps[0], [A, A, A], log(0.48 * 0.95**3), length_alpha=1.0)
    check(hyps[1], [], log(0.52), length_alpha=1.0)
    assert hyps[0].score == pytest.approx(log(0.48 * 0.95**3) / 1.5, rel=1e-5)
    # Greedy ranks by log-prob alone: [].
    check(greedy(src)[0], [], log(0.52))


def test_live_beam_that_could_still_win_is_not_cut_off():
    # LENGTH, alpha 1, step 0: the finished [] scores -0.654 and the live "a" has log-prob
    # log .48 = -0.734, lower. Stopping on log-probs (or once nbest hypotheses finished) would
    # return []; the bound log .48 / lp(L + 1) = -0.734 / (11/6) = -0.40 keeps "a" alive.
    assert beam(batch([LENGTH]), alpha=1.0)[0][0].tokens == [A, A, A]
    # alpha 0: [] finishes first (.4) but the live "a" (.6) ends as [a] (.54) and wins.
    hyps = beam(batch([LIVE_WINS]), nbest=2)[0]
    check(hyps[0], [A], log(0.6 * 0.9))
    check(hyps[1], [], log(0.4))


def test_early_finished_hypothesis_is_kept_and_search_stops_when_it_cannot_lose():
    # [] (.4) finishes at step 0; live a (.6) -> a-a (.48) still could win, so step 2 runs;
    # a-a-a (.384) < .4: stop after 3 decoder steps, [] wins.
    model = ScriptedModel()
    [best] = beam(batch([EOS_KEPT]), model=model)[0]
    check(best, [], log(0.4))
    assert model.rows_per_step == [1, 2, 2] and model.encode_calls == 1  # step 0: one row per sentence


def test_max_length_limit_and_forced_eos():
    # LIMIT never prefers EOS: outputs are cut at L = int(1.5 * src_len + 1) tokens (src_len counts
    # the source EOS), and the forced EOS's log-prob (log .03) is part of log_prob.
    src = batch([LIMIT], [LIMIT, A], [LIMIT, A, A])  # src_len 2, 3, 4 -> L = 4, int(5.5) = 5, 7
    for hyp, L in zip(greedy(src, a=1.5, b=1), [4, 5, 7], strict=True):
        check(hyp, [A] * L, L * log(0.97) + log(0.03))
    # Beam, alpha 1: (L log .97 + log .03) / lp(L + 1) grows with L, so the longest allowed wins.
    for hyps, L in zip(beam(src, alpha=1.0, nbest=2, a=1.5, b=1), [4, 5, 7], strict=True):
        check(hyps[0], [A] * L, L * log(0.97) + log(0.03), length_alpha=1.0)
        check(hyps[1], [A] * (L - 1), (L - 1) * log(0.97) + log(0.03), length_alpha=1.0)
    # A limit of 0 tokens: EOS is forced at once.
    check(greedy(src[:1], a=0.0, b=0)[0], [], log(0.03))
    check(beam(src[:1], a=0.0, b=0)[0][0], [], log(0.03))


def test_finished_sentences_leave_the_batch():
    # Greedy: GREEDY_TRAP ends after 3 steps, LIMIT (L = 4) after 5 (4 tokens + forced EOS).
    model = ScriptedModel()
    greedy(batch([GREEDY_TRAP], [LIMIT]), b=4, model=model)
    assert model.rows_per_step == [2, 2, 2, 1, 1]
    # Beam 2: EOS_KEPT stops after 3 steps; LIMIT runs to its limit (5 steps); rows = sentences * K
    # after step 0, which runs one row per sentence.
    model = ScriptedModel()
    beam(batch([EOS_KEPT], [LIMIT]), b=4, model=model)
    assert model.rows_per_step == [2, 4, 4, 2, 2]


def test_finished_sentences_leave_the_batch_at_once():
    # Beam 2, five sentences: EOS_KEPT stops after 3 steps, the four LIMIT ones after 5. From the
    # next step on the batch holds the four others only; every result is the same as alone.
    src = batch([EOS_KEPT], [LIMIT], [LIMIT], [LIMIT], [LIMIT])
    for nbest, rows in [(1, [5, 10, 10, 8, 8]), (2, [5, 10, 10, 10, 10])]:  # nbest 2: EOS_KEPT runs on
        model = ScriptedModel()
        together = beam(src, b=4, nbest=nbest, model=model)
        assert model.rows_per_step == rows
        assert together == [beam(src[i: i + 1], b=4, nbest=nbest)[0] for i in range(5)]
    model = ScriptedModel()
    beam(batch([EOS_KEPT], [EOS_KEPT], [LIMIT], [LIMIT], [LIMIT]), b=4, model=model)
    assert model.rows_per_step == [5, 10, 10, 6, 6]
    # Greedy, the same rule: GREEDY_TRAP ends after 3 steps, LIMIT after 5.
    model = ScriptedModel()
    src = batch([GREEDY_TRAP], [LIMIT], [LIMIT], [LIMIT], [LIMIT])
    assert greedy(src, b=4, model=model) == [greedy(src[i: i + 1], b=4)[0] for i in range(5)]
    assert model.rows_per_step == [5, 5, 5, 4, 4]
    model = ScriptedModel()
    greedy(batch([GREEDY_TRAP], [GREEDY_TRAP], [LIMIT], [LIMIT], [LIMIT]), b=4, model=model)
    assert model.rows_per_step == [5, 5, 5, 3, 3]


def test_scripted_batch_independence():
    sents = [[GREEDY_TRAP], [LENGTH, A, A, A, A], [EOS_KEPT, A], [LIVE_WINS], [LIMIT, A, A]]
    for alpha in (0.0, 1.0):
        together = beam(batch(*sents), k=3, alpha=alpha, nbest=2, a=1.0, b=2)
        backwards = beam(batch(*sents[::-1]), k=3, alpha=alpha, nbest=2, a=1.0, b=2)[::-1]
        alone = [beam(batch(s), k=3, alpha=alpha, nbest=2, a=1.0, b=2)[0] for s in sents]
        assert together == alone == backwards
    assert greedy(batch(*sents), a=1.0, b=2) == [greedy(batch(s), a=1.0, b=2)[0] for s in sents]


def test_search_dispatches_on_beam_size():
    src = batch([GREEDY_TRAP], [LENGTH])
    cfg = DecodeConfig(beam_size=1, max_len_a=0.0, max_len_b=5)
    assert search(ScriptedModel(), src, cfg) == [[h] for h in greedy(src)]
    cfg = DecodeConfig(beam_size=2, nbest=2, length_penalty=1.0, max_len_a=0.0, max_len_b=5)
    assert search(ScriptedModel(), src, cfg) == beam(src, alpha=1.0, nbest=2)
    assert search(ScriptedModel(), src[:0], cfg) == []
    with pytest.raises(ValueError, match="nbest"):
        beam(src, k=2, nbest=3)


# ----------------------------------------------------------------------------- random models

VOCAB = 13


class TinyCache:
    """Self-attention keys/values grown per step (per row), cross-attention ones fixed (per sentence)."""

    def __init__(self, mem_k, mem_v, src_pad_mask):
        self.mem_k, self.mem_v, self.mask = mem_k, mem_v, src_pad_mask  # (B, S, D) x2, (B, S)
        self.k = self.v = mem_k[:, :0]  # (B * beams, t, D)

    @property
    def length(self) -> int:
        return self.k.size(1)

    def select(self, rows, sentences=None):
        self.k, self.v = self.k[rows], self.v[rows]
        if sentences is not None:
            self.mem_k, self.mem_v, self.mask = self.mem_k[sentences], self.mem_v[sentences], self.mask[sentences]


class TinyTransformer(nn.Module):
    """A one-layer, one-head encoder-decoder with a KV cache: a test double for model/transformer.py's."""

    def __init__(self, seed: int, d: int = 16):
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.pos = nn.Embedding(VOCAB, d), nn.Embedding(64, d)
        self.enc_qkv, self.dec_qkv, self.cross_q = nn.Linear(d, 3 * d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.cross_kv, self.out = nn.Linear(d, 2 * d), nn.Linear(d, VOCAB)
        nn.init.normal_(self.out.weight, std=1.5)  # peaked distributions: few near-ties

    def encode(self, src):
        x = self.emb(src) + self.pos(torch.arange(src.size(1)))  # (B, S, D)
        q, k, v = self.enc_qkv(x).chunk(3, dim=-1)
        mask = src == PAD
        x = x + F.scaled_dot_product_attention(q, k, v, attn_mask=~mask[:, None, :])
        return x, mask

    def start_cache(self, memory, src_pad_mask):
        return TinyCache(*self.cross_kv(memory).chunk(2, dim=-1), src_pad_mask)

    def decode_step(self, tokens, cache):
        x = self.emb(tokens) + self.pos.weight[cache.length]  # (B', D)
        q, k, v = self.dec_qkv(x)[:, None].chunk(3, dim=-1)  # (B', 1, D) each
        cache.k, cache.v = torch.cat([cache.k, k], 1), torch.cat([cache.v, v], 1)
        h = x + F.scaled_dot_product_attention(q, cache.k, cache.v)[:, 0]
        beams = len(tokens) // len(cache.mask)
        mem_k, mem_v, mask = (x.repeat_interleave(beams, 0) for x in (cache.mem_k, cache.mem_v, cache.mask))
        c = F.scaled_dot_product_attention(self.cross_q(h)[:, None], mem_k, mem_v, attn_mask=~mask[:, None, :])[:, 0]
        return self.out(torch.tanh(h + c))  # (B', V)


def real_transformer(seed: int):
    from mtkit.config import ModelConfig

    Transformer = pytest.importorskip("mtkit.model.transformer").Transformer  # skipped only if transformer.py fails to import

    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=16, heads=2, d_ff=32, encoder_layers=1, decoder_layers=2, dropout=0.1)
    model = Transformer(cfg, VOCAB, VOCAB)  # left in train mode: search must switch dropout off
    with torch.no_grad():  # sharpen its random distributions so that near-ties are rare
        model.output.weight.mul_(3.0)
    return model


def random_src(seed: int, n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 8, (n,), generator=g).tolist()
    return batch(*[torch.randint(4, VOCAB, (m,), generator=g).tolist() for m in lengths])


def same(xs: list[Hypothesis], ys: list[Hypothesis]) -> bool:
    return all(x.tokens == y.tokens and x.score == pytest.approx(y.score, abs=1e-4)
               and x.log_prob == pytest.approx(y.log_prob, abs=1e-4) for x, y in zip(xs, ys, strict=True))


MODELS = [pytest.param(TinyTransformer, id="tiny"), pytest.param(real_transformer, id="mtkit.model.transformer")]
LIMITS = dict(max_len_a=1.0, max_len_b=3)


@pytest.mark.parametrize("make_model", MODELS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_model_properties(make_model, seed):
    model, src = make_model(seed), random_src(seed)
    was_training = model.training
    src_len = (src != PAD).sum(1).tolist()
    g = greedy_search(model, src, **LIMITS)
    # Beam size 1 is greedy search (alpha 0: no penalty to look past greedy's EOS for).
    b1 = beam_search(model, src, beam_size=1, length_penalty=0.0, **LIMITS)
    assert same([h for [h] in b1], g)
    # Beam 4, alpha 0: never a worse log-prob than greedy here. (Not a theorem: beam search can
    # prune greedy's prefix, but on these models it holds, and a failure would be worth a look.)
    b4 = beam_search(model, src, beam_size=4, length_penalty=0.0, **LIMITS)
    assert all(b[0].log_prob >= h.log_prob - 1e-5 for [*b], h in zip(b4, g, strict=True))
    # nbest: distinct, sorted by score, scores = log_prob / lp, lengths within the limit.
    nb = beam_search(model, src, beam_size=4, length_penalty=1.0, nbest=4, **LIMITS)
    for hyps, n in zip(nb, src_len, strict=True):
        assert len(hyps) == 4 and len({tuple(h.tokens) for h in hyps}) == 4
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            assert len(h.tokens) <= int(1.0 * n + 3) and EOS not in h.tokens and PAD not in h.tokens
            assert h.score == pytest.approx(h.log_prob / length_penalty(len(h.tokens) + 1, 1.0), rel=1e-5)
    assert model.training == was_training  # the mode is restored after search


@pytest.mark.parametrize("make_model", MODELS)
def test_random_model_batch_independence(make_model):
    model, src = make_model(3), random_src(3, n=5)
    alone = [src[i : i + 1, : int((src[i] != PAD).sum())] for i in range(len(src))]  # no padding
    for k, alpha in [(3, 1.0), (4, 0.0)]:
        kw = dict(beam_size=k, length_penalty=alpha, nbest=2, **LIMITS)
        together = beam_search(model, src, **kw)
        reversed_ = beam_search(model, src.flip(0), **kw)[::-1]
        for i, s in enumerate(alone):
            [one] = beam_search(model, s, **kw)
            assert same(one, together[i]) and same(one, reversed_[i])
    g = greedy_search(model, src, **LIMITS)
    assert all(same(greedy_search(model, s, **LIMITS), [g[i]]) for i, s in enumerate(alone))


def test_early_stopping_trades_the_exact_bound_for_fewer_steps():
    # DIP, alpha 1: after step 1 the live "a a" would score -0.736 if it ended, below the finished
    # [] (-0.693): "early" stops there with [], while the exact bound (-0.981 / lp(6) = -0.535)
    # keeps it alive to find [a a a] (-0.667), which wins.
    exact, early = ScriptedModel(), ScriptedModel()
    kw = dict(beam_size=2, length_penalty=1.0, max_len_a=0.0, max_len_b=5)
    check(beam_search(exact, batch([DIP]), **kw)[0][0], [A, A, A], log(0.5 * 0.75 * 0.99 * 0.99), length_alpha=1.0)
    check(beam_search(early, batch([DIP]), stopping="early", **kw)[0][0], [], log(0.5))
    assert len(early.rows_per_step) == 2 < len(exact.rows_per_step)
    # alpha 0: log-probs only fall, so both rules are the same search.
    for sents in ([LIVE_WINS], [EOS_KEPT], [GREEDY_TRAP], [LENGTH, A], [DIP]):
        kw = dict(beam_size=2, length_penalty=0.0, nbest=2, max_len_a=0.0, max_len_b=5)
        exact = beam_search(ScriptedModel(), batch(sents), **kw)
        early = beam_search(ScriptedModel(), batch(sents), stopping="early", **kw)
        assert [[(h.tokens, h.score) for h in hs] for hs in early] == [[(h.tokens, h.score) for h in hs] for hs in exact]
    with pytest.raises(ValueError, match="stopping"):
        beam_search(ScriptedModel(), batch([DIP]), stopping="fast", **kw)
