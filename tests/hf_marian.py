"""A tiny Marian model directory, built with transformers as OPUS-MT's are laid out.

Used by tests/test_marian.py: a SentencePiece model trained on a few hundred synthetic sentences,
vocab.json with Marian's layout (</s> 0, <unk> 1, the pieces, <pad> last), a MarianMTModel with
swish FFNs, scaled embeddings and a random final logits bias, trained briefly to copy (so that its
translations differ between sentences and end on their own), saved with save_pretrained.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import sentencepiece as spm
import torch

WORDS = ("haus baum katze hund blau rot gross klein laufen sehen heute morgen und oder nicht sehr "
         "der die das ein eine mit ohne auf unter").split()


def sentences(n: int, seed: int = 0) -> list[str]:
    """n synthetic German-looking sentences of 2-9 words."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) for _ in range(n)]


def build_marian_dir(out: Path, activation: str = "swish", scale_embedding: bool = True, seed: int = 0,
                     train_steps: int = 100) -> Path:
    """Write a tiny MarianMTModel + MarianTokenizer directory to `out` (save_pretrained) and return it.

    The model is trained a little, in transformers, to copy its input: a random one repeats a piece
    until the length limit, where its translations would all look alike."""
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

    out.mkdir(parents=True, exist_ok=True)
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences(400, seed)), model_writer=writer,
                                   vocab_size=45, model_type="unigram", character_coverage=1.0, minloglevel=2)
    sp_path = out / "spm.model"
    sp_path.write_bytes(writer.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=writer.getvalue())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not sp.is_control(i) and not sp.is_unknown(i)]
    vocab = {"</s>": 0, "<unk>": 1, **{p: i + 2 for i, p in enumerate(pieces)}}
    vocab["<pad>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = MarianTokenizer(str(sp_path), str(sp_path), str(out / "vocab.json"), source_lang="de",
                                target_lang="en")
    V, pad = len(vocab), vocab["<pad>"]
    config = MarianConfig(vocab_size=V, decoder_vocab_size=V, d_model=64, encoder_layers=2, decoder_layers=2,
                          encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                          decoder_ffn_dim=128, activation_function=activation, scale_embedding=scale_embedding,
                          pad_token_id=pad, eos_token_id=0, decoder_start_token_id=pad, forced_eos_token_id=None,
                          max_position_embeddings=256, dropout=0.1)
    torch.manual_seed(seed)
    model = MarianMTModel(config)
    with torch.no_grad():
        model.final_logits_bias.normal_(0.0, 0.3)
    _learn_to_copy(model, tokenizer, train_steps, seed)
    model.generation_config = GenerationConfig(decoder_start_token_id=pad, eos_token_id=0, pad_token_id=pad,
                                               bad_words_ids=[[pad]], num_beams=4, max_length=64)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    sp_path.unlink()
    return out


def _learn_to_copy(model, tokenizer, steps: int, seed: int) -> None:
    """`steps` Adam updates of the copy task on 32 sentences each, with transformers' own loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        texts = sentences(32, seed=1000 * seed + step)
        batch = tokenizer(texts, text_target=texts, return_tensors="pt", padding=True)
        batch["labels"][batch["labels"] == tokenizer.pad_token_id] = -100
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
