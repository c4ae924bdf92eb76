"""`mtkit export --format huggingface`: an mtkit model as a Marian directory for transformers.

`AutoModelForSeq2SeqLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load what this
writes (MarianMTModel, MarianTokenizer): config.json, generation_config.json, model.safetensors,
source.spm, target.spm, vocab.json and tokenizer_config.json, replaced as a whole (files.replacing_dir).

Marian is the paper's post-norm Transformer with biases on every projection, so any post-norm
mtkit model with one shared vocabulary fits it: absent biases are written as zeros, mtkit's ids
stay as they are (vocab.json maps each piece to its mtkit id; PAD 0 is Marian's pad, BOS 2 its
decoder start, EOS 3 its eos). Marian lays its sinusoid table out as halves (every sine, then every
cosine); a model with mtkit's interleaved table is exported with its d_model axis permuted the same
way in every weight that reads or writes the residual stream, which computes exactly the same
function. Pre-norm models (mtkit's default) do not fit: transformers' Marian has no pre-norm form,
and its pre-norm relatives (mBART) normalise the embeddings, which mtkit does not; those are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtkit import extras, files
from mtkit.config import Config
from mtkit.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from mtkit.errors import ConfigError
from mtkit.model.loading import load_model
from mtkit.model.marian import layer_modules
from mtkit.model.transformer import Transformer, sinusoidal_positions

MAX_POSITIONS = 1024  # Marian's position table (max_position_embeddings)


def export_huggingface(model_path: str | Path, out_dir: Path, force: bool = False) -> Path:
    """Write the checkpoint (or run dir's best.pt) at `model_path` as a transformers Marian directory."""
    safetensors = extras.safetensors_torch()  # fails first, with the install hint
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise ConfigError(f"{out_dir}: exists and is not an empty directory; give another -o or add --force to"
                          " replace it")
    model, tok, cfg = load_model(model_path, "cpu")
    m = cfg.model
    if m.norm_first:
        raise ConfigError(f"{model_path}: a pre-norm model (model.norm_first: true) has no Marian form in transformers,"
                          " which is post-norm; train with --set model.norm_first=false to export to Hugging Face,"
                          " or export to CTranslate2")
    if not (tok.joint and m.tie_embeddings):
        raise ConfigError(f"{model_path}: Marian shares one vocabulary and one embedding matrix; this model has"
                          " model.tie_embeddings: false or separate vocabularies")
    weights = marian_weights(model.float())
    pieces = tok.pieces("tgt")
    with files.replacing_dir(out_dir) as tmp:
        safetensors.save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        models = tok.to_bytes()
        files.write_bytes(tmp / "source.spm", models["src"])
        files.write_bytes(tmp / "target.spm", models.get("tgt", models["src"]))  # one joint model: both sides
        texts = {"config.json": _config(cfg, len(pieces)), "generation_config.json": _generation(cfg),
                 "vocab.json": {p: i for i, p in reversed(list(enumerate(pieces)))},
                 "tokenizer_config.json": _tokenizer_config(cfg, pieces)}
        for name, content in texts.items():
            files.write_text(tmp / name, json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    return out_dir


def marian_weights(model: Transformer) -> dict[str, Tensor]:
    """MarianMTModel's state dict for a post-norm mtkit model (zeros for the biases it lacks)."""
    m = model.cfg
    sd = model.state_dict()
    D = m.d_model
    # d_model order: Marian's halves table = mtkit's interleaved one read at these columns.
    axis = torch.cat([torch.arange(0, D, 2), torch.arange(1, D, 2)]) if m.positions == "interleaved" else None

    def residual(t: Tensor, rows: bool = False, cols: bool = False) -> Tensor:
        if axis is None:
            return t.clone()
        t = t[axis] if rows else t
        return (t[:, axis] if cols else t).clone()

    shared = residual(sd["src_embed.weight"], cols=True)  # (V, D)
    table = sinusoidal_positions(MAX_POSITIONS, D, layout="halves")
    out = {"model.shared.weight": shared, "model.encoder.embed_positions.weight": table,
           "model.decoder.embed_positions.weight": table.clone(),
           "final_logits_bias": sd.get("output.bias", torch.zeros(shared.size(0))).reshape(1, -1).clone()}
    for ours, theirs, role in layer_modules(m.encoder_layers, m.decoder_layers):
        w = sd[f"{ours}.weight"]
        b = sd.get(f"{ours}.bias", torch.zeros(w.size(0)))  # mtkit's attention may have no biases
        out[f"model.{theirs}.weight"] = residual(w, rows=role != "reads", cols=role == "reads")
        out[f"model.{theirs}.bias"] = residual(b, rows=role != "reads")
    return {k: v.contiguous() for k, v in out.items()}


def _config(cfg: Config, vocab_size: int) -> dict[str, Any]:
    m = cfg.model
    return {
        "architectures": ["MarianMTModel"], "model_type": "marian", "vocab_size": vocab_size,
        "decoder_vocab_size": vocab_size, "d_model": m.d_model, "encoder_layers": m.encoder_layers,
        "decoder_layers": m.decoder_layers, "encoder_attention_heads": m.heads, "decoder_attention_heads": m.heads,
        "encoder_ffn_dim": m.d_ff, "decoder_ffn_dim": m.d_ff, "activation_function": m.activation,
        "dropout": m.dropout, "attention_dropout": m.attention_dropout, "activation_dropout": 0.0,
        "scale_embedding": m.scale_embeddings, "max_position_embeddings": MAX_POSITIONS,
        "pad_token_id": PAD_ID, "eos_token_id": EOS_ID, "decoder_start_token_id": BOS_ID,
        "forced_eos_token_id": EOS_ID, "share_encoder_decoder_embeddings": True, "tie_word_embeddings": True,
        "is_encoder_decoder": True,
    }


def _generation(cfg: Config) -> dict[str, Any]:
    # mtkit never emits PAD or BOS (search bans them); neither will generate().
    return {"decoder_start_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID,
            "forced_eos_token_id": EOS_ID, "bad_words_ids": [[PAD_ID], [BOS_ID]],
            "num_beams": cfg.decode.beam_size, "max_length": 512}


def _tokenizer_config(cfg: Config, pieces: list[str]) -> dict[str, Any]:
    return {"tokenizer_class": "MarianTokenizer", "source_lang": cfg.data.src_lang, "target_lang": cfg.data.tgt_lang,
            "unk_token": pieces[UNK_ID], "eos_token": pieces[EOS_ID], "pad_token": pieces[PAD_ID],
            "model_max_length": 512, "separate_vocabs": False}
