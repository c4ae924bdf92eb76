"""CTranslate2: export a trained model to it, and translate with it.

`export` writes a CTranslate2 model directory from mtkit's weights through ctranslate2's public
model-spec API (pre-norm or the paper's post-norm, tied embeddings, mtkit's sinusoid table in either
layout, embeddings scaled by sqrt(d_model) or not, the FFN activation, the attention and output
biases when the model has them, LayerNorm epsilon 1e-5), with the SentencePiece model(s) and
the run's config beside it. `CT2Engine` translates token ids with it for translate.py, which
keeps the line contract (empty lines, over-long lines, n-best) the same for both engines.

ctranslate2 is an optional extra (`pip install -e .[ct2]`; `make install` installs it), imported
through extras.py when a command asks for it.

What differs from mtkit's own search (docs/decoding.md, "Deploying with CTranslate2"):
* length_penalty: CTranslate2 divides a hypothesis's log-probability by length ** alpha, not by
  GNMT's ((5 + length) / 6) ** alpha; alpha 0 (no normalisation) is the same in both.
* at the output limit mtkit forces EOS (its log-probability counts in the score); CTranslate2
  stops without it.
* beam search stops a sentence once K hypotheses have ended, where mtkit's waits until no live
  beam can still win: the best hypothesis was the same on every test sentence, but the lower
  entries of an n-best list can differ (4 of 300 sentences in tests/test_ct2.py).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from mtkit import extras, files
from mtkit.config import Config, DecodeConfig, from_plain_dict, to_dict
from mtkit.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from mtkit.decoding.search_state import output_limit
from mtkit.decoding.settings import check_prefix, decode_overrides, decode_settings
from mtkit.decoding.workers import resolve_workers, threads_per_worker
from mtkit.errors import ConfigError, DataError
from mtkit.hardware import resolve_device
from mtkit.model.loading import load_model
from mtkit.model.transformer import sinusoidal_positions

log = logging.getLogger("mtkit")

QUANTIZATIONS = ("float32", "int8", "int8_float32", "float16", "bfloat16")
CONFIG_FILE = "mtkit_config.yaml"  # mtkit's config beside the CTranslate2 files (decode settings, languages)


def is_ct2_dir(path: str | Path) -> bool:
    """True for a directory that `export` wrote (a CTranslate2 model.bin and mtkit's config)."""
    p = Path(path)
    return p.is_dir() and (p / "model.bin").is_file() and (p / CONFIG_FILE).is_file()


def export(model_path: str | Path, out_dir: Path, quantization: str = "float32", force: bool = False,
           overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Write the checkpoint (or run dir's best.pt) at `model_path` as a CTranslate2 model in
    `out_dir`, weights stored as `quantization`, with the checkpoint's config (`--set decode.*`
    overrides applied: the defaults of the exported model). An existing non-empty `out_dir` is an
    error unless `force`. Returns out_dir."""
    extras.ctranslate2()  # fails first, with the install hint
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"--quantization: expected one of {', '.join(QUANTIZATIONS)} (got {quantization!r})")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not force:
            raise ConfigError(f"{out_dir}: exists and is not an empty directory; give another -o or add --force"
                              " to replace it")
        log.warning("replacing %s", out_dir)
    model, tok, cfg = load_model(model_path, "cpu")
    cfg = decode_overrides(cfg, overrides)
    spec = model_spec(model.float(), cfg, tok)
    spec.validate()
    spec.optimize(quantization=None if quantization == "float32" else quantization)
    with files.replacing_dir(out_dir) as tmp:  # the old directory stays until the new one is complete
        spec.save(str(tmp))
        tok.save(tmp / "tokenizer")
        files.write_text(tmp / CONFIG_FILE, yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
    return out_dir


def model_spec(model: Any, cfg: Config, tok: Any) -> Any:
    """ctranslate2's TransformerSpec holding `model`'s weights (fp32 numpy arrays) and vocabularies."""
    specs = extras.ctranslate2().specs
    m = cfg.model
    tgt_pieces = tok.pieces("tgt")
    activation = {"relu": "RELU", "swish": "SWISH", "gelu": "GELU"}[m.activation]
    spec = specs.transformer_spec.TransformerSpec.from_config(
        (m.encoder_layers, m.decoder_layers), m.heads, pre_norm=m.norm_first,
        activation=specs.common_spec.Activation[activation])
    spec.config.layer_norm_epsilon = model.decoder_layers[0].ffn_residual.norm.eps if m.decoder_layers else 1e-5
    spec.config.add_source_eos = True  # mtkit's encoder input is the pieces + EOS
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = (tgt_pieces[i] for i in (UNK_ID, BOS_ID, EOS_ID))
    spec.config.decoder_start_token = tgt_pieces[BOS_ID]
    sd = {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}
    # The sinusoid table, long enough for decode.max_input_tokens and the longest output.
    positions = _positions(model, cfg.decode).numpy()

    def linear(target: Any, *names: str) -> None:
        """The Linears `names` (state-dict prefixes) stacked as one, with their biases if they have them."""
        target.weight = np.concatenate([sd[f"{n}.weight"] for n in names])
        if f"{names[0]}.bias" in sd:
            target.bias = np.concatenate([sd[f"{n}.bias"] for n in names])

    def norm(target: Any, name: str) -> None:
        target.gamma, target.beta = sd[f"{name}.weight"], sd[f"{name}.bias"]

    def ffn(target: Any, prefix: str) -> None:
        norm(target.layer_norm, f"{prefix}.ffn_residual.norm")
        linear(target.linear_0, f"{prefix}.ffn.w_1")
        linear(target.linear_1, f"{prefix}.ffn.w_2")

    for side, stack, embed in (("encoder", spec.encoder, "src_embed"), ("decoder", spec.decoder, "tgt_embed")):
        (stack.embeddings[0] if isinstance(stack.embeddings, list) else stack.embeddings).weight = sd[f"{embed}.weight"]
        stack.scale_embeddings = m.scale_embeddings  # table(tokens) * sqrt(d_model), section 3.4
        stack.position_encodings.encodings = positions
        if m.norm_first:
            norm(stack.layer_norm, f"{side}_norm")
        for i, layer in enumerate(stack.layer):
            p = f"{side}_layers.{i}"
            att = layer.self_attention
            linear(att.linear[0], f"{p}.self_attn.w_q", f"{p}.self_attn.w_k", f"{p}.self_attn.w_v")
            linear(att.linear[1], f"{p}.self_attn.w_o")
            norm(att.layer_norm, f"{p}.self_attn_residual.norm")
            if side == "decoder":
                cross = layer.attention
                linear(cross.linear[0], f"{p}.cross_attn.w_q")
                linear(cross.linear[1], f"{p}.cross_attn.w_k", f"{p}.cross_attn.w_v")
                linear(cross.linear[2], f"{p}.cross_attn.w_o")
                norm(cross.layer_norm, f"{p}.cross_attn_residual.norm")
            ffn(layer.ffn, p)
    linear(spec.decoder.projection, "output")  # with model.output_bias, Marian's final logits bias
    spec.register_source_vocabulary(tok.pieces("src"))
    spec.register_target_vocabulary(tgt_pieces)
    return spec


def _positions(model: Any, decode: DecodeConfig) -> torch.Tensor:
    return sinusoidal_positions(positions_needed(decode), model.cfg.d_model, dtype=model.positions.dtype,
                                layout=model.cfg.positions)


def positions_needed(decode: DecodeConfig) -> int:
    """Rows of the exported sinusoid table: CTranslate2 cannot extend it as mtkit does, so it covers
    the longest input (decode.max_input_tokens + EOS) and the longest output it allows (+ BOS, EOS)."""
    longest_input = decode.max_input_tokens + 1
    return max(longest_input, int(decode.max_len_a * longest_input + decode.max_len_b) + 2)


@dataclass
class _Hyp:
    tokens: list[int]
    score: float


class CT2Engine:
    """Translates token ids with a CTranslate2 model directory (`export`'s), like search.search.

    Args:
        path: the exported directory.
        tokenizer: its tokenizer (ids <-> the pieces CTranslate2 takes and gives).
        device: "cpu" or "cuda".
        compute_type: CTranslate2's compute type: "default" (as exported), "int8", "float32", ...
        threads: intra-op threads per worker on the CPU (0 = CTranslate2's default; `load_engine`
            gives torch's, shared out among the workers).
        workers: batches translated at once (CTranslate2's inter_threads; decode.workers, workers.py).
    """

    def __init__(self, path: str | Path, tokenizer: Any, device: str = "cpu", compute_type: str = "default",
                 threads: int = 0, workers: int = 1):
        ct2 = extras.ctranslate2()
        torch_threads = torch.get_num_threads()
        self.translator = ct2.Translator(str(path), device=device, compute_type=compute_type, intra_threads=threads,
                                         inter_threads=workers)
        torch.set_num_threads(torch_threads)  # CTranslate2 sets the process's OpenMP threads to its own
        self.workers = workers  # translate.py hands it this many batches at once
        self.src_pieces = tokenizer.pieces("src")
        self.tgt_pieces = tokenizer.pieces("tgt")
        self.tgt_ids = {p: i for i, p in enumerate(self.tgt_pieces)}

    def search_ids(self, sources: list[list[int]], decode: DecodeConfig) -> list[list[_Hyp]]:
        """Best `decode.nbest` hypotheses (ids without BOS/EOS, score) per source id list (no EOS)."""
        # search.py's limit is per sentence (output_limit of the pieces + EOS), CTranslate2's per call:
        # sentences of one limit go together (a length-sorted batch holds few distinct lengths).
        groups: dict[int, list[int]] = {}
        for k, s in enumerate(sources):
            groups.setdefault(output_limit(len(s) + 1, decode.max_len_a, decode.max_len_b), []).append(k)  # + EOS
        out: list[list[_Hyp]] = [[] for _ in sources]
        for limit, members in groups.items():
            results = self.translator.translate_batch(
                [[self.src_pieces[i] for i in sources[k]] for k in members],
                beam_size=decode.beam_size,
                # CTranslate2 stops a sentence once num_hypotheses have ended (search.py: once no
                # live beam can win). The best agreed on every test sentence either way; for an
                # n-best list asking for all K keeps searching longer, closer to mtkit's lists.
                num_hypotheses=decode.beam_size if decode.nbest > 1 else 1,
                length_penalty=decode.length_penalty,
                max_decoding_length=limit,  # tokens, as search.py's limit (which then forces EOS)
                min_decoding_length=0,  # CTranslate2's default 1 forbids the empty output mtkit allows
                max_input_length=0,  # translate.py already left out lines over decode.max_input_tokens
                return_scores=True,
                # PAD and BOS are not suppressed: CTranslate2 would renormalise the other tokens'
                # probabilities (mtkit's search bans them without), and a trained model never
                # ranks them high enough to matter. They are dropped from the output below.
            )
            for k, r in zip(members, results):
                out[k] = [_Hyp([self.tgt_ids[p] for p in h if self.tgt_ids[p] not in (BOS_ID, EOS_ID, PAD_ID)],
                               float(sc)) for h, sc in zip(r.hypotheses[: decode.nbest], r.scores)]
        return out

    def score_ids(self, sources: list[list[int]], targets: list[list[int]]) -> list[list[float]]:
        """Per-piece log-probabilities of each target (pieces + EOS) given its source (ids without
        EOS), by CTranslate2's score_batch, as forced.force gives them."""
        results = self.translator.score_batch([[self.src_pieces[i] for i in s] for s in sources],
                                              [[self.tgt_pieces[i] for i in t] for t in targets], max_input_length=0)
        return [list(r.log_probs) for r in results]


def export_config(path: str | Path) -> Config:
    """The config of the model an `export` directory holds (written beside it as CONFIG_FILE)."""
    return from_plain_dict(yaml.safe_load((Path(path) / CONFIG_FILE).read_text(encoding="utf-8")))


# decode.precision -> CTranslate2's compute type; auto keeps what the model was exported as.
COMPUTE_TYPES = {"auto": "default", "fp32": "float32", "bf16": "bfloat16", "int8": "int8"}


def load_engine(path: str | Path, device: str = "auto", overrides: list[str] | tuple[str, ...] = (), **flags: Any):
    """(engine, tokenizer, decode settings, device) for an exported directory, as
    loading.load_for_decoding gives them for a checkpoint. A checkpoint or run dir is exported
    (float32) to a temporary directory first: CTranslate2 holds the model in memory once loaded."""
    p = Path(path)
    if not is_ct2_dir(p):
        with tempfile.TemporaryDirectory(prefix="mtkit-ct2-") as tmp:
            return load_engine(export(p, Path(tmp) / "model"), device, overrides, **flags)
    cfg = export_config(p)
    tok = Tokenizer.load(p / "tokenizer")
    if tok is None:
        raise DataError(f"{p / 'tokenizer'}: no SentencePiece model; export the model again")
    decode = decode_settings(decode_overrides(cfg, overrides).decode, **flags)
    check_prefix(tok, decode, cfg)
    if positions_needed(decode) > positions_needed(cfg.decode):
        raise ConfigError(f"--set decode.*: {p} was exported for inputs of up to {cfg.decode.max_input_tokens} tokens"
                          f" and outputs of {cfg.decode.max_len_a} x input + {cfg.decode.max_len_b}; export again"
                          " with the same --set decode.* options to allow longer ones")
    device = resolve_device(device)
    compute_type = COMPUTE_TYPES[decode.precision]
    workers = resolve_workers(decode.workers, device)
    engine = CT2Engine(p, tok, "cuda" if device.startswith("cuda") else "cpu", compute_type,
                       threads_per_worker(workers), workers)
    log.info("CTranslate2 %s: %s, compute type %s, %d batch(es) at once", extras.ctranslate2().__version__, p,
             compute_type, workers)
    return engine, tok, decode, device
