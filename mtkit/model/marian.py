"""`mtkit import`: a Hugging Face Marian model directory (OPUS-MT) as an mtkit checkpoint.

The directory is what `MarianMTModel.save_pretrained` and `MarianTokenizer.save_pretrained` write
and what Helsinki-NLP publishes: config.json, model.safetensors (or pytorch_model.bin), source.spm,
target.spm and vocab.json. transformers itself is not needed: the weights are read with
safetensors (or torch.load(weights_only=True)) and renamed to mtkit's modules.

Marian is the paper's post-norm Transformer with model options mtkit names (configs/base.yaml):
biases on the attention projections, an FFN activation (swish for OPUS-MT), sinusoids laid out sin
half / cos half, embeddings scaled by sqrt(d_model) or not, and a final logits bias.

The vocabulary: Marian's ids come from vocab.json (the SentencePiece models only cut text into
pieces), with </s> at 0 and <pad> last, and its decoder starts from <pad>. mtkit's special ids
are fixed (tokenizer.py), so the table is reordered: PAD, UNK, BOS, EOS first, then Marian's other
pieces in Marian's order; every embedding row and the logits bias follow. mtkit's BOS is a copy of
Marian's decoder start row; as an output it gets a logits bias of BOS_LOGIT_BIAS, so that the
softmax runs over exactly Marian's pieces and the log-probabilities are Marian's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtkit import extras
from mtkit.config import Config, ModelConfig, to_dict
from mtkit.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, SPECIAL_PIECES, UNK_ID, Tokenizer
from mtkit.errors import CheckpointError, DataError
from mtkit.model.transformer import Transformer

log = logging.getLogger("mtkit")

BOS_LOGIT_BIAS = -1e9  # mtkit's BOS is never an output: exp() of its logit is 0
ACTIVATIONS = {"relu": "relu", "swish": "swish", "silu": "swish", "gelu": "gelu"}  # Marian's name -> mtkit's
SPM_FILES = ("source.spm", "target.spm")


def import_marian(directory: str | Path) -> dict[str, Any]:
    """The Marian model in `directory` as an mtkit checkpoint state (config, model, tokenizer).

    Raises:
        CheckpointError: not a Marian model directory, a missing file, or an architecture mtkit
            cannot express (one line naming the file and the setting).
    """
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d}: not a directory; give a Marian model directory (config.json, model.safetensors,"
                              " source.spm, target.spm, vocab.json)")
    hf = _read_config(d / "config.json")
    try:
        model_cfg = _model_config(hf, d / "config.json")
    except KeyError as e:
        raise CheckpointError(f"{d / 'config.json'}: lacks {e}; it is not a complete Marian config") from None
    cfg = _config(d, hf, model_cfg)
    tokenizer, order = _tokenizer(d, hf)
    model = Transformer(model_cfg, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, pad_id=PAD_ID)
    state = _mtkit_state(_read_weights(d), hf, order, model_cfg.tie_embeddings, d)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{d}: the weights do not fit its config.json ({str(e).splitlines()[0][:160]})") from None
    log.info("imported %s: %d parameters, %d pieces", d, model.num_parameters(), tokenizer.tgt_vocab_size)
    return {"config": to_dict(cfg), "model": model.state_dict(), "tokenizer": tokenizer.to_bytes(), "step": 0,
            "imported_from": str(d.resolve())}


def _read_json(path: Path, required: bool = True) -> Any:
    """The JSON in `path`. A required file that is missing or unreadable is a CheckpointError naming
    it; an optional side file (tokenizer_config.json, generation_config.json) then gives {}."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not required:
            return {}
        raise CheckpointError(f"{path}: not found; a Marian model directory has {path.name}"
                              " (save_pretrained writes it)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        if not required:
            return {}
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    return found if required or isinstance(found, dict) else {}


def _read_config(path: Path) -> dict[str, Any]:
    hf = _read_json(path)
    if not isinstance(hf, dict) or hf.get("model_type") != "marian":
        got = hf.get("model_type") if isinstance(hf, dict) else None
        raise CheckpointError(f"{path}: model_type is {got!r}, not 'marian'; mtkit import reads Marian (OPUS-MT) models")
    return hf


def _config(d: Path, hf: dict[str, Any], model_cfg: ModelConfig) -> Config:
    """The checkpoint's config: the model's section, the languages MarianTokenizer saved (they pick
    evaluation's BLEU tokenizer), the beam size of its generation settings; the rest mtkit's defaults."""
    cfg = Config()
    saved = _read_json(d / "tokenizer_config.json", required=False)
    generation = _read_json(d / "generation_config.json", required=False)
    names = {"src_lang": "source_lang", "tgt_lang": "target_lang"}
    langs = {ours: str(saved[theirs]) for ours, theirs in names.items() if saved.get(theirs)}
    beams = generation.get("num_beams", hf.get("num_beams"))
    decode = replace(cfg.decode, beam_size=beams) if isinstance(beams, int) and beams > 0 else cfg.decode
    # No training data: the config is the model's; `mtkit train --init-from` brings its own data.
    return replace(cfg, model=model_cfg, data=replace(cfg.data, train=(), **langs), decode=decode)


def _model_config(hf: dict[str, Any], path: Path) -> ModelConfig:
    """mtkit's `model` section for a Marian config.json."""

    def same(a: str, b: str) -> Any:
        if hf.get(a) != hf.get(b):
            raise CheckpointError(f"{path}: {a} ({hf.get(a)}) differs from {b} ({hf.get(b)}); mtkit models use one"
                                  " value for encoder and decoder")
        return hf[a]

    activation = hf.get("activation_function", "gelu")
    if activation not in ACTIVATIONS:
        raise CheckpointError(f"{path}: activation_function {activation!r} is not supported; mtkit has"
                              f" {sorted(set(ACTIVATIONS))}")
    if hf.get("normalize_before") or hf.get("add_final_layer_norm"):
        raise CheckpointError(f"{path}: normalize_before / add_final_layer_norm: mtkit imports post-norm Marian models")
    if not hf.get("share_encoder_decoder_embeddings", True):
        raise CheckpointError(f"{path}: share_encoder_decoder_embeddings is false (separate vocabularies);"
                              " mtkit imports Marian models with one shared vocabulary")
    return ModelConfig(
        d_model=hf["d_model"], heads=same("encoder_attention_heads", "decoder_attention_heads"),
        d_ff=same("encoder_ffn_dim", "decoder_ffn_dim"), encoder_layers=hf["encoder_layers"],
        decoder_layers=hf["decoder_layers"], dropout=float(hf.get("dropout", 0.1)),
        attention_dropout=float(hf.get("attention_dropout", 0.0)), norm_first=False,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)), activation=ACTIVATIONS[activation],
        attention_bias=True, output_bias=True, scale_embeddings=bool(hf.get("scale_embedding", False)),
        positions="halves",
    )


def _tokenizer(d: Path, hf: dict[str, Any]) -> tuple[Tokenizer, list[int]]:
    """The table tokenizer and `order`: mtkit id -> Marian id (mtkit's BOS -> Marian's decoder start)."""
    models = []
    for name in SPM_FILES:
        path = d / name
        if not path.is_file():
            raise CheckpointError(f"{path}: not found; a Marian model directory has {' and '.join(SPM_FILES)}"
                                  " (MarianTokenizer.save_pretrained writes them)")
        models.append(path.read_bytes())
    vocab_path = d / "vocab.json"
    marian = _read_json(vocab_path)
    size = hf.get("vocab_size")
    pieces = {i: p for p, i in marian.items()} if isinstance(marian, dict) else {}
    if sorted(pieces) != list(range(len(pieces))) or len(pieces) != size:
        raise CheckpointError(f"{vocab_path}: must map {size} pieces (config.json vocab_size) to the ids 0..{size - 1}")
    special = {PAD_ID: hf.get("pad_token_id"), UNK_ID: marian.get("<unk>"), BOS_ID: hf.get("decoder_start_token_id"),
               EOS_ID: hf.get("eos_token_id")}
    if any(not isinstance(i, int) or i not in pieces for i in special.values()):
        raise CheckpointError(f"{vocab_path}: pad, <unk>, decoder start and eos ids must be pieces of it"
                              f" (got {special})")
    order = [special[i] for i in range(len(SPECIAL_PIECES))]
    moved = set(order)
    order += [i for i in range(size) if i not in moved]
    table = list(SPECIAL_PIECES) + [pieces[i] for i in order[len(SPECIAL_PIECES):]]
    try:
        return Tokenizer(models[0], models[1], vocab=table), order
    except DataError as e:
        raise CheckpointError(f"{d}: {SPM_FILES[0]} / {SPM_FILES[1]}: {e}") from None


def _read_weights(d: Path) -> dict[str, Tensor]:
    if (d / "model.safetensors").is_file():
        return extras.safetensors_torch().load_file(str(d / "model.safetensors"), device="cpu")
    if (d / "pytorch_model.bin").is_file():
        try:
            return torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{d / 'pytorch_model.bin'}: not loadable as plain weights ({type(e).__name__})") from None
    raise CheckpointError(f"{d}: has neither model.safetensors nor pytorch_model.bin")


def layer_modules(encoder_layers: int, decoder_layers: int) -> list[tuple[str, str, str]]:
    """(mtkit module, Marian module, role) for every Linear and LayerNorm of the layers; the role says
    how it meets the residual stream (d_model): "reads" it (input side), "writes" it (output side),
    or "norm" (a LayerNorm over it). The import and the export (marian_export.py) both follow it."""
    projections = {"w_q": ("q_proj", "reads"), "w_k": ("k_proj", "reads"), "w_v": ("v_proj", "reads"),
                   "w_o": ("out_proj", "writes")}
    found = []
    for side, count in (("encoder", encoder_layers), ("decoder", decoder_layers)):
        for i in range(count):
            ours, theirs = f"{side}_layers.{i}", f"{side}.layers.{i}"
            attentions = [("self_attn", "self_attn")] + ([("cross_attn", "encoder_attn")] if side == "decoder" else [])
            for mine, hf in attentions:
                found += [(f"{ours}.{mine}.{proj}", f"{theirs}.{hf}.{name}", role)
                          for proj, (name, role) in projections.items()]
                found.append((f"{ours}.{mine}_residual.norm", f"{theirs}.{hf}_layer_norm", "norm"))
            found += [(f"{ours}.ffn.w_1", f"{theirs}.fc1", "reads"), (f"{ours}.ffn.w_2", f"{theirs}.fc2", "writes"),
                      (f"{ours}.ffn_residual.norm", f"{theirs}.final_layer_norm", "norm")]
    return found


def _mtkit_state(w: dict[str, Tensor], hf: dict[str, Any], order: list[int], tied: bool, d: Path) -> dict[str, Tensor]:
    """Marian's state dict renamed to mtkit's modules, vocabulary rows in mtkit's order."""
    w = {k.removeprefix("model."): v for k, v in w.items()}
    rows = torch.tensor(order)

    def get(name: str) -> Tensor:
        if name not in w:
            raise CheckpointError(f"{d}: the weights lack {name!r}; the directory holds no complete Marian model")
        return w[name]

    shared = get("shared.weight") if "shared.weight" in w else get("encoder.embed_tokens.weight")
    out = {"src_embed.weight": shared[rows], "tgt_embed.weight": shared[rows]}
    lm_head = shared if tied else w.get("lm_head.weight", shared)
    bias = w.get("final_logits_bias", torch.zeros(1, hf["vocab_size"])).reshape(-1)[rows].clone()
    bias[BOS_ID] = BOS_LOGIT_BIAS
    out["output.weight"], out["output.bias"] = lm_head[rows], bias
    for ours, theirs, _ in layer_modules(hf["encoder_layers"], hf["decoder_layers"]):
        for kind in ("weight", "bias"):
            out[f"{ours}.{kind}"] = get(f"{theirs}.{kind}")
    return {k: v.float().contiguous() for k, v in out.items()}
