"""Tests for decoding/ensemble.py: models decoding as one, each with its own cache."""

import pytest
import torch
import torch.nn.functional as F

from mtkit.config import ModelConfig
from mtkit.data.padding import make_batch
from mtkit.decoding.ensemble import Ensemble, parse_weights, same_tokenizer
from mtkit.decoding.search import beam_search, greedy_search
from mtkit.errors import ConfigError
from mtkit.model.transformer import Transformer

VOCAB = 19
LIMITS = dict(max_len_a=1.0, max_len_b=3)


def random_model(seed: int) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=16, heads=2, d_ff=32, encoder_layers=1, decoder_layers=2)
    model = Transformer(cfg, VOCAB, VOCAB).eval()
    with torch.no_grad():
        model.output.weight.mul_(3.0)
    return model


SRC = make_batch([[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]])["src"]


def test_a_model_ensembled_with_itself_translates_as_it_does_alone():
    model = random_model(0)
    for alone, pair in ((greedy_search(model, SRC, **LIMITS), greedy_search(Ensemble([model, model]), SRC, **LIMITS)),):
        assert [h.tokens for h in pair] == [h.tokens for h in alone]
        assert [h.log_prob for h in pair] == pytest.approx([h.log_prob for h in alone], abs=1e-5)
    alone = beam_search(model, SRC, beam_size=3, nbest=3, length_penalty=1.0, **LIMITS)
    pair = beam_search(Ensemble([model, model], [0.3, 0.7]), SRC, beam_size=3, nbest=3, length_penalty=1.0, **LIMITS)
    assert [[h.tokens for h in hs] for hs in pair] == [[h.tokens for h in hs] for hs in alone]


def test_each_step_is_the_weighted_average_of_the_models_log_probabilities():
    a, b = random_model(1), random_model(2)
    ens = Ensemble([a, b], [1.0, 3.0])  # normalised: 0.25, 0.75
    memories, mask = ens.encode(SRC)
    cache = ens.start_cache(memories, mask)
    caches = [m.start_cache(*m.encode(SRC)) for m in (a, b)]
    tokens = torch.full((SRC.size(0),), 2)
    for _ in range(3):  # a few steps: each model's cache advances on its own
        got = ens.decode_step(tokens, cache)
        la, lb = (F.log_softmax(m.decode_step(tokens, c), dim=-1) for m, c in zip((a, b), caches))
        assert torch.allclose(got, 0.25 * la + 0.75 * lb, atol=1e-6)
        tokens = got.argmax(dim=-1)
    rows = torch.tensor([1, 1, 0, 3])  # reordering rows reorders every model's cache
    cache.select(rows)
    for c in caches:
        c.select(rows)
    got = ens.decode_step(tokens, cache)
    la, lb = (F.log_softmax(m.decode_step(tokens, c), dim=-1) for m, c in zip((a, b), caches))
    assert torch.allclose(got, 0.25 * la + 0.75 * lb, atol=1e-6)


def test_ensembles_switch_their_models_mode_together():
    a, b = random_model(1), random_model(2)
    ens = Ensemble([a, b])
    assert not ens.training
    ens.train()
    assert a.training and b.training and ens.training
    ens.eval()
    assert not a.training and not b.training


class Tok:
    def __init__(self, data: bytes):
        self.data = data

    def to_bytes(self):
        return {"src": self.data}


def test_models_must_share_a_tokenizer_and_weights_are_checked():
    same_tokenizer(["a.pt", "b.pt"], [Tok(b"x"), Tok(b"x")])
    with pytest.raises(ConfigError, match="a.pt and c.pt have different tokenizers"):
        same_tokenizer(["a.pt", "b.pt", "c.pt"], [Tok(b"x"), Tok(b"x"), Tok(b"y")])
    assert parse_weights("0.6,0.4") == [0.6, 0.4] and parse_weights(None) is None
    with pytest.raises(ConfigError, match="--weights 'a,b'"):
        parse_weights("a,b")
    with pytest.raises(ConfigError, match="one positive weight per model"):
        Ensemble([random_model(1), random_model(2)], [1.0, 0.0])
    with pytest.raises(ConfigError, match="one positive weight per model"):
        Ensemble([random_model(1), random_model(2)], [1.0])
