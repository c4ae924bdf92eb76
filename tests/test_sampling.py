"""Tests for decoding/sampling.py: sampled translations that follow the model's distribution, cut to
the top k or the nucleus, and come out the same for a line whatever batch it is in."""

from dataclasses import replace

import pytest
import torch

from mtkit.config import DecodeConfig, ModelConfig, load_config
from mtkit.data.padding import make_batch
from mtkit.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from mtkit.decoding.sampling import Sampler, filtered_probs, line_seed, sample_search
from mtkit.decoding.search import greedy_search
from mtkit.decoding.translate import translate_lines
from mtkit.errors import ConfigError
from mtkit.model.transformer import Transformer

# One step's distribution over 12 pieces: PAD, UNK and BOS impossible, EOS and 4..11 not.
LOGITS = torch.tensor([float("-inf")] * 3 + [0.3, 1.5, -0.4, 0.9, 2.2, -1.0, 0.1, 1.1, -2.0])
PROBS = torch.softmax(LOGITS, dim=0)
CHI2_DF8_P001 = 26.12  # chi-square critical value, 8 degrees of freedom, p = 0.001


class OneStep:
    """A scripted model: every row's first piece has LOGITS' distribution; EOS is forced after it."""

    class Cache:
        def select(self, rows, sentences=None):
            return None

    def encode(self, src):
        return torch.zeros(src.size(0), 1, 1), src.eq(PAD_ID)

    def start_cache(self, memory, src_pad_mask):
        return self.Cache()

    def decode_step(self, tokens, cache):
        return LOGITS.expand(tokens.size(0), -1).clone()


def first_pieces(n: int, seed: int = 0, **filters) -> torch.Tensor:
    """The first piece of n samples, one per row, each row its own seed."""
    src = torch.full((n, 2), 5, dtype=torch.long)
    src[:, 1] = EOS_ID
    decode = replace(DecodeConfig(sample=True, max_len_a=0.0, max_len_b=1), **filters)
    hyps = sample_search(OneStep(), src, [line_seed(seed, str(r), 0) for r in range(n)], decode)
    return torch.tensor([h.tokens[0] if h.tokens else EOS_ID for h in hyps])


def chi_square(drawn: torch.Tensor, probs: torch.Tensor) -> float:
    support = probs > 0
    observed = torch.bincount(drawn, minlength=probs.numel()).double()[support]
    expected = probs[support].double() * drawn.numel()
    return float(((observed - expected) ** 2 / expected).sum())


def test_samples_follow_the_distribution():
    drawn = first_pieces(4000)
    assert set(drawn.tolist()) <= set(torch.nonzero(PROBS).squeeze(1).tolist())  # never PAD, UNK, BOS
    assert chi_square(drawn, PROBS) < CHI2_DF8_P001


def test_topk_draws_only_the_k_best_in_proportion():
    drawn = first_pieces(3000, topk=3)
    best3 = set(PROBS.topk(3).indices.tolist())
    assert set(drawn.tolist()) == best3
    renormalised = torch.where(torch.isin(torch.arange(12), torch.tensor(sorted(best3))), PROBS, 0.0)
    assert chi_square(drawn, renormalised / renormalised.sum()) < 13.82  # 2 degrees of freedom, p = 0.001


def test_topp_draws_only_from_the_nucleus():
    order = PROBS.argsort(descending=True)
    mass = PROBS[order].cumsum(0)
    nucleus = set(order[: int((mass < 0.6).sum()) + 1].tolist())  # the fewest pieces holding 0.6
    drawn = first_pieces(3000, topp=0.6)
    assert set(drawn.tolist()) == nucleus


def test_temperature_sharpens_and_softens():
    lp = torch.log_softmax(LOGITS, 0)[None]
    cold, hot = filtered_probs(lp, temperature=0.5)[0], filtered_probs(lp, temperature=2.0)[0]
    assert cold.max() > PROBS.max() > hot.max() and cold.argmax() == PROBS.argmax() == hot.argmax()
    assert filtered_probs(lp)[0] == pytest.approx(PROBS.tolist(), abs=1e-6)


def test_a_row_draws_from_its_own_generator_whatever_its_batch_mates():
    lp = torch.log_softmax(LOGITS, 0).expand(3, -1)
    alone = Sampler([11])(lp[:1], [0])
    assert torch.equal(Sampler([99, 11, 42])(lp, [1, 0, 2])[:1], alone)  # row 0 names generator 1 (seed 11)


def random_model(vocab: int = 23) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, heads=2, d_ff=32, encoder_layers=1, decoder_layers=2)
    return Transformer(cfg, vocab, vocab).eval()


def test_topk_1_is_greedy():
    model = random_model()
    src = make_batch([[5, 6, 7], [8, 9], [10, 11, 12, 13]])["src"]
    greedy = greedy_search(model, src, max_len_a=1.0, max_len_b=3)
    sampled = sample_search(model, src, [1, 2, 3], DecodeConfig(sample=True, topk=1, max_len_a=1.0, max_len_b=3))
    assert [(h.tokens, h.log_prob) for h in sampled] == [(h.tokens, pytest.approx(h.log_prob, abs=1e-6)) for h in greedy]


class Ids:
    """A tokenizer stand-in: pieces are whitespace-separated integers."""

    def encode_src(self, texts, tag=None):
        assert tag is None
        return [[int(x) for x in t.split()] for t in texts]

    def decode_tgt(self, ids):
        return [" ".join(map(str, x)) for x in ids]


def test_a_lines_samples_do_not_depend_on_batch_or_order():
    model, tok = random_model(), Ids()
    lines = ["5 6 7", "8 9", "", "10 11 12 13", "14 15 16 17 18", "5 6 7"]
    decode = DecodeConfig(sample=True, nbest=3, max_len_a=1.0, max_len_b=4, seed=3)
    whole = translate_lines(model, tok, lines, decode)
    small = translate_lines(model, tok, lines, replace(decode, batch_tokens=2, workers=1))
    backwards = translate_lines(model, tok, lines[::-1], decode)[::-1]
    texts = [[t.text for t in ts] for ts in whole]
    assert texts == [[t.text for t in ts] for ts in small] == [[t.text for t in ts] for ts in backwards]
    assert texts[2] == ["", "", ""] and texts[0] == texts[5]  # a blank line; the same line, the same samples
    assert len({tuple(t) for t in texts}) > 1 and any(len(set(t)) > 1 for t in texts)  # samples differ
    other_seed = translate_lines(model, tok, lines, replace(decode, seed=4))
    assert [[t.text for t in ts] for ts in other_seed] != texts


def test_sampling_settings_are_checked_and_need_mtkits_engine():
    data = ["data.train.src=a", "data.train.tgt=b"]
    for bad, says in (("decode.topp=0", "decode.topp: must be in (0, 1]"), ("decode.temperature=0", "decode.temperature"),
                      ("decode.topk=-1", "decode.topk")):
        with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace("]", r"\]")):
            load_config(None, [*data, bad])
    assert load_config(None, [*data, "decode.sample=true", "decode.nbest=8", "decode.beam_size=2"]).decode.nbest == 8

    class Engine:
        def search_ids(self, sources, decode):
            raise AssertionError("not reached")

    with pytest.raises(ConfigError, match="sampling runs on mtkit's own engine"):
        translate_lines(Engine(), Ids(), ["5 6"], DecodeConfig(sample=True))
    assert (PAD_ID, UNK_ID, BOS_ID) == (0, 1, 2)

