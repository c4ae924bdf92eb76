"""SentencePiece tokenizer: round trips, fixed special ids, small-corpus fallback, storage."""

from __future__ import annotations

import io
import logging
import pickle

import pytest
import sentencepiece as spm

from mtkit.config import TokenizerConfig
from mtkit.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from mtkit.data.tokenizer_training import train_tokenizer
from mtkit.errors import DataError
from tests.conftest import DE_EN, reverse_pairs

SRC = [a for a, _ in DE_EN]
TGT = [b for _, b in DE_EN]


def test_special_ids_are_fixed():
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_joint_round_trip(tiny_tokenizer, model_type):
    tok = tiny_tokenizer if model_type == "unigram" else train_tokenizer(
        TokenizerConfig(model_type="bpe", vocab_size=150), SRC * 3, TGT * 3
    )
    assert tok.joint and tok.src_vocab_size == tok.tgt_vocab_size
    assert tok.decode_src(tok.encode_src(SRC)) == SRC
    assert tok.decode_tgt(tok.encode_tgt(TGT)) == TGT
    assert tok.encode_src(SRC) == tok.encode_tgt(SRC)  # one vocabulary for both sides
    assert all(UNK_ID not in ids for ids in tok.encode_src(SRC + TGT))
    assert all(i not in (PAD_ID, BOS_ID, EOS_ID) for ids in tok.encode_tgt(TGT) for i in ids)  # none added


def test_separate_round_trip_and_sizes():
    tok = train_tokenizer(TokenizerConfig(joint=False, vocab_size=70, model_type="bpe"), SRC * 3, TGT * 3)
    assert not tok.joint
    assert (tok.src_vocab_size, tok.tgt_vocab_size) == (70, 70)
    assert tok.decode_src(tok.encode_src(SRC)) == SRC
    assert tok.decode_tgt(tok.encode_tgt(TGT)) == TGT
    assert set(tok.to_bytes()) == {"src", "tgt"}


def test_model_bytes_have_the_fixed_special_pieces(tiny_tokenizer):
    sp = spm.SentencePieceProcessor(model_proto=tiny_tokenizer.to_bytes()["src"])
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]


def test_decode_ignores_pad_bos_eos(tiny_tokenizer):
    ids = tiny_tokenizer.encode_tgt(TGT[:2])
    wrapped = [[BOS_ID, *x, EOS_ID, PAD_ID, PAD_ID] for x in ids]
    assert tiny_tokenizer.decode_tgt(wrapped) == TGT[:2]
    assert tiny_tokenizer.decode_src([[]]) == [""]


def test_small_corpus_lowers_vocab_size_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="mtkit"):
        tok = train_tokenizer(TokenizerConfig(vocab_size=8000), SRC, TGT)
    assert 8 < tok.src_vocab_size < 8000
    assert "too small for tokenizer.vocab_size=8000" in caplog.text
    assert tok.decode_src(tok.encode_src(SRC)) == SRC


def test_fallback_replays_one_shot_iterators(caplog):
    with caplog.at_level(logging.WARNING, logger="mtkit"):
        tok = train_tokenizer(TokenizerConfig(vocab_size=5000, joint=False), iter(SRC), (t for t in TGT))
    assert tok.src_vocab_size < 5000 and tok.tgt_vocab_size < 5000
    assert tok.decode_tgt(tok.encode_tgt(TGT)) == TGT


def test_vocab_below_the_character_count_says_what_to_set():
    with pytest.raises(DataError, match=r"tokenizer.vocab_size: 10 is too small .* set tokenizer.vocab_size >= \d+"):
        train_tokenizer(TokenizerConfig(vocab_size=10), SRC, TGT)


def test_empty_training_text_is_a_data_error():
    with pytest.raises(DataError, match="tokenizer"):
        train_tokenizer(TokenizerConfig(vocab_size=100), ["", ""], [])


def test_bytes_round_trip_and_pickle(tiny_tokenizer):
    again = Tokenizer.from_bytes(tiny_tokenizer.to_bytes())
    assert set(tiny_tokenizer.to_bytes()) == {"src"}
    assert again.joint and again.encode_src(SRC) == tiny_tokenizer.encode_src(SRC)
    unpickled = pickle.loads(pickle.dumps(tiny_tokenizer))
    assert unpickled.encode_tgt(TGT) == tiny_tokenizer.encode_tgt(TGT)


def test_save_load_joint_and_separate(tmp_path, tiny_tokenizer):
    assert Tokenizer.load(tmp_path / "nothing") is None
    tiny_tokenizer.save(tmp_path / "joint")
    assert sorted(p.name for p in (tmp_path / "joint").iterdir()) == ["spm.model"]
    loaded = Tokenizer.load(tmp_path / "joint")
    assert loaded.joint and loaded.encode_src(SRC) == tiny_tokenizer.encode_src(SRC)

    sep = train_tokenizer(TokenizerConfig(joint=False, vocab_size=60), SRC * 2, TGT * 2)
    sep.save(tmp_path / "sep")
    assert sorted(p.name for p in (tmp_path / "sep").iterdir()) == ["spm.src.model", "spm.tgt.model"]
    loaded = Tokenizer.load(tmp_path / "sep")
    assert not loaded.joint and loaded.encode_tgt(TGT) == sep.encode_tgt(TGT)

    sep.save(tmp_path / "joint")  # replacing a joint model by separate ones
    assert sorted(p.name for p in (tmp_path / "joint").iterdir()) == ["spm.src.model", "spm.tgt.model"]
    assert not Tokenizer.load(tmp_path / "joint").joint


def test_broken_or_half_saved_models_are_data_errors(tmp_path, tiny_tokenizer):
    (tmp_path / "spm.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match=str(tmp_path / "spm.model")):
        Tokenizer.load(tmp_path)
    half = tmp_path / "half"
    half.mkdir()
    (half / "spm.src.model").write_bytes(tiny_tokenizer.to_bytes()["src"])
    with pytest.raises(DataError, match="spm.tgt.model: missing"):
        Tokenizer.load(half)
    with pytest.raises(DataError, match="not a SentencePiece model"):
        Tokenizer.from_bytes({"src": b"\x00\x01garbage"})
    with pytest.raises(DataError):
        Tokenizer.from_bytes({"tgt": b""})


def test_foreign_special_ids_are_rejected():
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SRC * 3), model_writer=writer, vocab_size=60, minloglevel=2,
        input_sentence_size=1000,
    )  # SentencePiece's defaults: unk=0, bos=1, eos=2, no pad
    with pytest.raises(DataError, match="special ids"):
        Tokenizer(writer.getvalue())


def test_reverse_task_round_trip():
    words = [a for a, _ in reverse_pairs(200)]
    tok = train_tokenizer(TokenizerConfig(vocab_size=60), words, words)
    assert tok.decode_src(tok.encode_src(words[:20])) == words[:20]


def test_coverage_sentencepiece_refuses_is_explained():
    with pytest.raises(DataError, match=r"tokenizer.character_coverage: .*\[0.98, 1\] \(got 0.5\)"):
        train_tokenizer(TokenizerConfig(vocab_size=60, character_coverage=0.5), SRC, TGT)


def test_special_ids_are_defined_once():
    """PAD/UNK/BOS/EOS are defined in tokenizer.py only: no other module assigns them or spells a
    special id as a literal default (bos=2, eos=3, pad=0, pad_id=0)."""
    import ast
    from pathlib import Path

    import mtkit

    names = {"PAD_ID", "UNK_ID", "BOS_ID", "EOS_ID"}
    arguments = {"bos", "eos", "pad", "unk", "pad_id", "bos_id", "eos_id", "unk_id"}
    found = []
    for path in sorted(Path(mtkit.__file__).parent.glob("*.py")):
        if path.name == "tokenizer.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                found += [f"{path.name}: {t.id} =" for t in node.targets if isinstance(t, ast.Name) and t.id in names]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults + node.args.kw_defaults
                found += [f"{path.name}: {node.name}({a.arg}={d.value})" for a, d in zip(args, defaults)
                          if a.arg in arguments and isinstance(d, ast.Constant) and isinstance(d.value, int)]
    assert found == []
