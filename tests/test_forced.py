"""Tests for decoding/forced.py: a given translation's log-probability, as search computes it."""

import logging

import pytest
import torch
import torch.nn.functional as F

from mtkit.config import DecodeConfig, ModelConfig
from mtkit.data.padding import make_batch
from mtkit.data.tokenizer import EOS_ID, PAD_ID
from mtkit.decoding.forced import PairScore, force, score_pairs
from mtkit.decoding.search import beam_search, greedy_search
from mtkit.model.transformer import Transformer


def random_model(vocab: int, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=16, heads=2, d_ff=32, encoder_layers=1, decoder_layers=2, dropout=0.1)
    model = Transformer(cfg, vocab, vocab).eval()
    with torch.no_grad():  # sharper distributions, as a trained model has
        model.output.weight.mul_(3.0)
    return model


def random_rows(n: int, vocab: int, seed: int, longest: int = 7) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab, (int(m),), generator=g).tolist() for m in torch.randint(0, longest, (n,), generator=g)]


def test_force_equals_an_independent_teacher_forced_forward():
    model = random_model(29)
    srcs, tgts = [s or [5] for s in random_rows(6, 29, seed=1)], random_rows(6, 29, seed=2)
    got = force(model, make_batch(srcs)["src"], tgts)
    batch = make_batch(srcs, tgts)
    with torch.no_grad():
        lprobs = F.log_softmax(model(batch["src"], batch["tgt_in"]), dim=-1)  # (B, T, V), all positions at once
    want = lprobs.gather(2, batch["tgt_out"][:, :, None]).squeeze(2)  # (B, T)
    for row, t in enumerate(tgts):
        assert len(got[row]) == len(t) + 1  # the pieces and EOS
        assert got[row] == pytest.approx(want[row, : len(t) + 1].tolist(), abs=1e-5)
    assert batch["tgt_out"][0, len(tgts[0])] == EOS_ID


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_hypotheses_score_what_search_says(seed):
    """Every hypothesis beam search returns, and greedy's, scores its own log_prob (EOS included)."""
    model = random_model(17, seed)
    src = make_batch([s or [5] for s in random_rows(5, 17, seed=seed + 10)])["src"]
    limits = dict(max_len_a=1.0, max_len_b=3)
    for row, hyps in enumerate(beam_search(model, src, beam_size=4, nbest=4, length_penalty=1.0, **limits)):
        scored = force(model, src[row: row + 1], [h.tokens for h in hyps][:1])[0]
        assert sum(scored) == pytest.approx(hyps[0].log_prob, abs=1e-4)
        scored = force(model, src[row: row + 1].expand(len(hyps), -1), [h.tokens for h in hyps])
        assert [sum(s) for s in scored] == pytest.approx([h.log_prob for h in hyps], abs=1e-4)
    for row, h in enumerate(greedy_search(model, src, **limits)):
        assert sum(force(model, src[row: row + 1], [h.tokens])[0]) == pytest.approx(h.log_prob, abs=1e-4)


class Pieces:
    """A tokenizer stand-in: whitespace-separated integers are the piece ids."""

    def encode_src(self, texts, tag=None):
        assert tag is None
        return [[int(x) for x in t.split()] for t in texts]

    def encode_tgt(self, texts):
        return self.encode_src(texts)


def test_score_pairs_keeps_the_line_contract_and_does_not_depend_on_the_batch(caplog):
    model = random_model(23)
    srcs = ["5 6 7", "", "8 9", "   ", " ".join(["5"] * 30), "10 11 12 13"]
    tgts = ["7 6 5", "5", "", "5", "6", "13 12"]
    decode = DecodeConfig(max_input_tokens=20, batch_tokens=4096)
    with caplog.at_level(logging.WARNING, logger="mtkit"):
        scores = score_pairs(model, Pieces(), srcs, tgts, decode, first_line_no=11)
    assert [s is None for s in scores] == [False, True, False, True, True, False]
    assert any("line 15:" in r.message and "max_input_tokens=20" in r.message for r in caplog.records)
    assert scores[2].pieces == [EOS_ID] and len(scores[2].log_probs) == 1  # an empty target: P(EOS | source)
    assert scores[0].pieces == [7, 6, 5, EOS_ID] and scores[0].per_piece == pytest.approx(scores[0].log_prob / 4)
    one_by_one = score_pairs(model, Pieces(), srcs, tgts, DecodeConfig(max_input_tokens=20, batch_tokens=1))
    for a, b in zip(scores, one_by_one):
        assert (a is None and b is None) or a.log_probs == pytest.approx(b.log_probs, abs=1e-5)
    alone = score_pairs(model, Pieces(), ["10 11 12 13"], ["13 12"], decode)[0]
    assert alone.log_probs == pytest.approx(scores[5].log_probs, abs=1e-5)
    with pytest.raises(ValueError, match="2 sources but 1 targets"):
        score_pairs(model, Pieces(), ["5", "6"], ["5"], decode)


def test_a_pair_score_sums_its_pieces():
    s = PairScore([4, 5, EOS_ID], [-1.0, -0.5, -0.25])
    assert (s.log_prob, s.per_piece) == (-1.75, pytest.approx(-1.75 / 3))
    assert PAD_ID not in s.pieces



def test_score_file_names_a_missing_or_wrong_input(tmp_path):
    from mtkit.decoding.forced import score_file
    from mtkit.errors import DataError

    (tmp_path / "t.txt").write_text("5\n")
    with pytest.raises(DataError, match=r"source .*nope.txt: file not found \(absolute path"):
        score_file(None, None, DecodeConfig(), tmp_path / "nope.txt", tmp_path / "t.txt", None)
    with pytest.raises(DataError, match=r"target .*: is a directory; give a text file"):
        score_file(None, None, DecodeConfig(), tmp_path / "t.txt", tmp_path, None)
