"""What the model computes, as arrays to look at: attention weights and the sinusoid table.

`attention_maps` runs one sentence pair through the model teacher-forced (given a translation, or
the model's own greedy one) and records every attention's weights as the layer computes them:
while recording, each MultiHeadAttention runs eq. 1 written out (attention.reference_attention)
instead of the fused kernel, so the weights shown are the ones that weighted the values. plots.py
draws them; `mtkit inspect` is the command. (Not named inspect.py: that is a standard module.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mtkit.data.padding import make_batch
from mtkit.data.tokenizer import BOS_ID, EOS_ID, Tokenizer
from mtkit.decoding.search import greedy_search
from mtkit.model.attention import MultiHeadAttention, reference_attention
from mtkit.model.transformer import Transformer, sinusoidal_positions

KINDS = ("encoder self-attention", "decoder self-attention", "encoder-decoder attention")


@dataclass
class AttentionMaps:
    """Attention weights of one sentence pair.

    Attributes:
        src_pieces: the source pieces + "</s>" (the encoder's input), S of them.
        tgt_pieces: "<s>" + the target pieces (the decoder's input), T of them.
        weights: kind (one of KINDS) -> (layers, heads, queries, keys) float array; encoder
            self-attention is (N_e, H, S, S), decoder self-attention (N_d, H, T, T) with the
            future exactly 0, encoder-decoder attention (N_d, H, T, S). Every row sums to 1.
    """

    src_pieces: list[str]
    tgt_pieces: list[str]
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain lists, for `mtkit inspect attention --json` and notebooks."""
        return {"src_pieces": self.src_pieces, "tgt_pieces": self.tgt_pieces,
                "weights": {k: np.round(v, 6).tolist() for k, v in self.weights.items()}}


@contextlib.contextmanager
def recording(model: Transformer) -> Iterator[list[tuple[str, Any, Any]]]:
    """Within the block every attention of `model` computes eq. 1 written out and appends
    (module name, weights (B, H, Tq, Tk), values (B, H, Tk, d_v)) to the yielded list; its output
    is Concat_heads(weights @ values) W^O, as the fused kernel's would be."""
    records: list[tuple[str, Any, Any]] = []

    def recorder(name: str, mha: MultiHeadAttention):
        def attend(q, k, v, attend_mask=None, is_causal=False):
            if is_causal:  # query i sees keys 0..i: the look-ahead mask as a boolean matrix
                Tq, Tk = q.size(-2), k.size(-2)
                causal = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril()
                attend_mask = causal if attend_mask is None else attend_mask & causal
            out, weights = reference_attention(q.float(), k.float(), v.float(), attend_mask)
            records.append((name, weights, v.float()))
            B, _, Tq, _ = out.shape
            return mha.w_o(out.to(q.dtype).transpose(1, 2).reshape(B, Tq, -1))
        return attend

    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)]
    for name, mha in modules:
        mha.attend = recorder(name, mha)  # an instance attribute shadows the class's method
    try:
        yield records
    finally:
        for _, mha in modules:
            del mha.attend


def attention_maps(model: Transformer, tokenizer: Tokenizer, src: str, tgt: str | None = None,
                   max_len_a: float = 1.5, max_len_b: int = 10) -> AttentionMaps:
    """Attention of `model` on `src` forced through `tgt`, or through its own greedy translation
    (at most int(max_len_a * source length + max_len_b) pieces) when `tgt` is None."""
    src_ids = tokenizer.encode_src([src])[0]
    batch = make_batch([src_ids])
    model.eval()
    with torch.inference_mode():
        if tgt is None:
            tgt_ids = greedy_search(model, batch["src"], max_len_a=max_len_a, max_len_b=max_len_b)[0].tokens
        else:
            tgt_ids = tokenizer.encode_tgt([tgt])[0]
        tgt_in = torch.tensor([[BOS_ID, *tgt_ids]])
        with recording(model) as records:
            model(batch["src"], tgt_in)
    pieces = {"src": tokenizer.pieces("src"), "tgt": tokenizer.pieces("tgt")}
    maps = AttentionMaps(src_pieces=[pieces["src"][i] for i in src_ids] + [pieces["src"][EOS_ID]],
                         tgt_pieces=[pieces["tgt"][i] for i in (BOS_ID, *tgt_ids)])
    for kind, part in zip(KINDS, ("encoder_layers.", "decoder_layers.", "decoder_layers.")):
        role = "cross_attn" if kind == KINDS[2] else "self_attn"
        mine = [w for name, w, _ in records if name.startswith(part) and name.endswith(role)]
        maps.weights[kind] = np.stack([w[0].numpy() for w in mine])  # (layers, H, Tq, Tk)
    return maps


def position_table(d_model: int, length: int) -> np.ndarray:
    """The sinusoidal position encodings of section 3.5 as the model adds them: (length, d_model)."""
    return sinusoidal_positions(length, d_model).numpy()


def wavelengths(d_model: int) -> np.ndarray:
    """The wavelength of each sin/cos pair: 2 pi * 10000^(2i / d_model), from 2 pi to 10000 * 2 pi."""
    return 2 * np.pi * 10000.0 ** (np.arange(0, d_model, 2) / d_model)
