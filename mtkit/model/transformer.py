"""The Transformer of Vaswani et al. (2017): embeddings, encoder and decoder.

Builds the network from a ModelConfig and computes logits: teacher-forced `forward` for training,
`encode` + `start_cache` + `decode_step` for incremental decoding (the cache itself: cache.py;
multi-head attention: attention.py).
It does not compute the loss, search for translations, tokenize, or save and load checkpoints
(training/loss.py, decoding/search.py, data/tokenizer.py and checkpoint.py do).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtkit.config import ModelConfig
from mtkit.data.tokenizer import PAD_ID  # the special ids are defined once, in tokenizer.py
from mtkit.errors import ConfigError
from mtkit.model.attention import (
    MultiHeadAttention,
    attend_mask_from_padding,
    stacked_linear,
    stacked_projection,
)
from mtkit.model.cache import DecoderCache

INITIAL_POSITIONS = 1024  # rows of the sinusoid table built up front; a longer input extends it


def sinusoidal_positions(length: int, d_model: int, device=None, dtype=None, layout: str = "interleaved") -> Tensor:
    """Section 3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(same angle).

    Returns the (length, D) table for positions 0 .. length-1 (any length) in `dtype` (default:
    torch's default dtype) on `device`. layout "halves" (model.positions) puts the same values as
    every sine, then every cosine (Marian's and fairseq's table).
    """
    # Computed in float64 on the CPU (it is built rarely): pos * frequency stays exact enough that
    # positions in the thousands match the formula to float32 precision.
    pos = torch.arange(length, dtype=torch.float64)[:, None]  # (L, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (ceil(D/2),)
    angle = pos / 10000.0 ** (two_i / d_model)  # (L, ceil(D/2))
    pe = torch.empty(length, d_model, dtype=torch.float64)
    # NOTE (differs from paper): layout "halves", an option for imported models; the values are the same.
    sines, cosines = (pe[:, 0::2], pe[:, 1::2]) if layout == "interleaved" else pe.split(angle.size(1), dim=1)
    sines[:] = torch.sin(angle)
    cosines[:] = torch.cos(angle[:, : d_model // 2])
    return pe.to(device=device, dtype=dtype or torch.get_default_dtype())


# NOTE (differs from paper): model.activation swish or gelu, options for imported models (Marian).
ACTIVATIONS = {"relu": F.relu, "swish": F.silu, "gelu": F.gelu}


class FeedForward(nn.Module):
    """Position-wise feed-forward network (section 3.3, eq. 2): max(0, x W_1 + b_1) W_2 + b_2, with
    ReLU (the paper's) or the model.activation chosen."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu"):
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, L, D)
        return self.w_2(self.activation(self.w_1(x)))


def dropout_while_training(dropout: nn.Dropout, x: Tensor) -> Tensor:
    """dropout(x) while training; in eval mode x itself, without the module call and torch dispatch
    that would return it (a decoding step would make about ten of them for nothing)."""
    return dropout(x) if dropout.training else x


class Residual(nn.Module):
    """Residual connection, dropout and LayerNorm around one sub-layer (sections 3.1 and 5.4).

    norm_first false (paper, post-norm): LayerNorm(x + Dropout(Sublayer(x))).
    norm_first true (pre-norm): x + Dropout(Sublayer(LayerNorm(x))).
    """

    def __init__(self, d_model: int, dropout: float, norm_first: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: Tensor, sublayer) -> Tensor:
        if self.norm_first:
            # NOTE (differs from paper): pre-norm keeps an un-normalised residual path, which trains
            # stably without long warmup (Xiong et al. 2020); norm_first: false is the paper's.
            return x + dropout_while_training(self.dropout, sublayer(self.norm(x)))
        return self.norm(x + dropout_while_training(self.dropout, sublayer(x)))


class EncoderLayer(nn.Module):
    """Section 3.1: self-attention over the source, then the FFN, each wrapped by Residual."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, cfg.attention_bias)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.activation)
        self.self_attn_residual = Residual(cfg.d_model, cfg.dropout, cfg.norm_first)
        self.ffn_residual = Residual(cfg.d_model, cfg.dropout, cfg.norm_first)

    def forward(self, x: Tensor, src_attend_mask: Tensor) -> Tensor:
        """x (B, S, D), src_attend_mask (B, 1, 1, S) True = real source token -> (B, S, D)."""
        x = self.self_attn_residual(x, lambda h: self.self_attn(h, h, src_attend_mask))
        return self.ffn_residual(x, self.ffn)


class DecoderLayer(nn.Module):
    """Section 3.1: masked self-attention, encoder-decoder attention, then the FFN."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, cfg.attention_bias)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, cfg.attention_bias)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.activation)
        self.self_attn_residual = Residual(cfg.d_model, cfg.dropout, cfg.norm_first)
        self.cross_attn_residual = Residual(cfg.d_model, cfg.dropout, cfg.norm_first)
        self.ffn_residual = Residual(cfg.d_model, cfg.dropout, cfg.norm_first)

    def forward(self, y: Tensor, memory: Tensor, src_attend_mask: Tensor) -> Tensor:
        """y (B, T, D) right-padded, memory (B, S, D), src_attend_mask (B, 1, 1, S) -> (B, T, D)."""
        # Masked self-attention (section 3.2.3) via is_causal, with no target padding mask: targets
        # are right-padded, so the keys a real position t may see (0..t) are all real tokens, and
        # outputs at pad positions are ignored by the loss. is_causal also lets the fused kernel
        # skip the blocks above the diagonal instead of reading a (T, T) mask.
        y = self.self_attn_residual(y, lambda h: self.self_attn(h, h, is_causal=True))
        y = self.cross_attn_residual(y, lambda h: self.cross_attn(h, memory, src_attend_mask))
        return self.ffn_residual(y, self.ffn)

    def step(self, y: Tensor, self_kv: Tensor, t: int, cross_kv: Tensor, src_attend_mask: Tensor
             ) -> Tensor:
        """One new position t per row, y (B, 1, D) -> (B, 1, D). Writes its self-attention key and
        value into slot t of `self_kv` (capacity, 2, B, H, d_k). `cross_kv` (2, B_s, H, S, d_k) and
        `src_attend_mask` (B_s, 1, 1, S) are per source sentence, B = B_s * beams (cache.py)."""
        sa, ca = self.self_attn, self.cross_attn
        B, B_s = y.size(0), cross_kv.size(1)

        def cross_attend(h: Tensor) -> Tensor:  # h (B, 1, D)
            # The beams of a sentence attend to its memory as `beams` queries of one row.
            q = ca.split_heads(ca.w_q(h).view(B_s, B // B_s, -1))  # (B_s, H, beams, d_k)
            return ca.attend(q, cross_kv[0], cross_kv[1], src_attend_mask).view(B, 1, -1)

        def self_attend(h: Tensor) -> Tensor:  # h (B, 1, D)
            q, k, v = sa.project_qkv(h)  # (B, 1, D) each
            self_kv[t, 0] = k.view(-1, sa.heads, sa.d_k)  # (B, H, d_k) into slot t
            self_kv[t, 1] = v.view(-1, sa.heads, sa.d_k)
            past = self_kv[: t + 1].permute(1, 2, 3, 0, 4)  # (2, B, H, t + 1, d_k), a view
            # No mask: the cache holds positions 0..t only, exactly what causality allows.
            return sa.attend(sa.split_heads(q), past[0], past[1])

        y = self.self_attn_residual(y, self_attend)
        y = self.cross_attn_residual(y, cross_attend)
        return self.ffn_residual(y, self.ffn)


class Transformer(nn.Module):
    """The encoder-decoder Transformer (section 3) with embeddings and the pre-softmax linear.

    Args:
        cfg: the `model` section of the config.
        src_vocab_size, tgt_vocab_size: vocabulary sizes (equal when cfg.tie_embeddings).
        pad_id: the padding token id; source positions holding it are never attended to.
    Raises:
        ConfigError: tie_embeddings with different source and target vocabulary sizes.
    """

    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, pad_id: int = PAD_ID):
        super().__init__()
        if cfg.tie_embeddings and src_vocab_size != tgt_vocab_size:
            raise ConfigError(
                f"model.tie_embeddings: true needs one shared vocabulary, but the source has"
                f" {src_vocab_size} pieces and the target {tgt_vocab_size}; set tokenizer.joint: true"
                " or model.tie_embeddings: false"
            )
        self.cfg, self.pad_id = cfg, pad_id
        D = cfg.d_model
        self.src_embed = nn.Embedding(src_vocab_size, D)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, D)
        self.dropout = nn.Dropout(cfg.dropout)  # on embeddings + positions (section 5.4)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        # NOTE (differs from paper): pre-norm leaves each stack's output un-normalised, so it needs a
        # final LayerNorm; the paper's post-norm already ends in one (Identity here).
        self.encoder_norm = nn.LayerNorm(D) if cfg.norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(D) if cfg.norm_first else nn.Identity()
        # The pre-softmax linear (softmax: loss/search). NOTE (differs from paper): model.output_bias,
        # a bias on it (Marian's final logits bias), is an option for imported models.
        self.output = nn.Linear(D, tgt_vocab_size, bias=cfg.output_bias)
        # NOTE (differs from paper): model.scale_embeddings false (some imported models) skips section
        # 3.4's multiplication by sqrt(d_model).
        self.embed_scale = math.sqrt(D) if cfg.scale_embeddings else 1.0
        # Non-persistent: the table is a pure function of (length, D), so it is not saved in
        # checkpoints, and `embed` rebuilds it longer when a longer input arrives.
        self.register_buffer("positions", sinusoidal_positions(INITIAL_POSITIONS, D, layout=cfg.positions),
                             persistent=False)
        self.cross_kv: nn.Linear | None = None  # every decoder layer's [W^K; W^V] stacked, for decoding
        self.reset_parameters()
        if cfg.tie_embeddings:
            # Section 3.4 (the paper's choice): one weight matrix for both embeddings and the
            # pre-softmax linear. NOTE (differs from paper): tie_embeddings: false, three matrices.
            self.tgt_embed.weight = self.src_embed.weight
            self.output.weight = self.src_embed.weight

    def reset_parameters(self) -> None:
        """Embeddings ~ N(0, d_model^-0.5), so scaled by sqrt(d_model) they have unit variance; every
        Linear Xavier-uniform with zero bias. The paper does not state its initialisation; these are
        tensor2tensor's and fairseq's choices."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=self.cfg.d_model**-0.5)

    def embed(self, tokens: Tensor, table: nn.Embedding, start: int = 0) -> Tensor:
        """tokens (B, L) at positions start .. start+L-1 -> (B, L, D): table(tokens) * sqrt(D) + PE,
        then dropout (sections 3.4, 3.5, 5.4)."""
        end = start + tokens.size(1)
        if end > self.positions.size(0):  # no maximum length: extend the table (doubling, so rarely)
            self.positions = sinusoidal_positions(max(end, 2 * self.positions.size(0)), self.cfg.d_model,
                                                  self.positions.device, self.positions.dtype, self.cfg.positions)
        return dropout_while_training(self.dropout, table(tokens) * self.embed_scale + self.positions[start:end])

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder stack (section 3.1): src (B, S) ids padded with pad_id -> memory (B, S, D) and
        src_pad_mask (B, S), True = padding."""
        src_pad_mask = src.eq(self.pad_id)  # (B, S) True = padding
        src_attend_mask = attend_mask_from_padding(src_pad_mask)  # (B, 1, 1, S) True = may attend
        x = self.embed(src, self.src_embed)  # (B, S, D)
        for layer in self.encoder_layers:
            x = layer(x, src_attend_mask)
        return self.encoder_norm(x), src_pad_mask

    def forward(self, src: Tensor, tgt_in: Tensor, features: bool = False) -> Tensor:
        """Teacher-forced training pass.

        Args:
            src: (B, S) source ids, padded with pad_id.
            tgt_in: (B, T) target ids shifted right (starting with BOS), right-padded with pad_id.
            features: return the decoder's output before the pre-softmax linear, for a loss that
                applies `self.output` itself (training/loss.py: output_losses).
        Returns:
            logits (B, T, V), or features (B, T, D); outputs at target pad positions are meaningless
            (the loss skips them).
        """
        memory, src_pad_mask = self.encode(src)  # (B, S, D), (B, S)
        src_attend_mask = attend_mask_from_padding(src_pad_mask)  # (B, 1, 1, S)
        y = self.embed(tgt_in, self.tgt_embed)  # (B, T, D)
        for layer in self.decoder_layers:
            y = layer(y, memory, src_attend_mask)
        y = self.decoder_norm(y)  # (B, T, D)
        return y if features else self.output(y)  # (B, T, V)

    def start_cache(self, memory: Tensor, src_pad_mask: Tensor) -> DecoderCache:
        """Start incremental decoding of B rows from `encode`'s memory (B, S, D) and mask (B, S).

        The encoder-decoder keys and values (section 3.2.3) depend on the memory only, so they are
        computed here once for every layer and step, as one matmul with every layer's W^K and W^V
        stacked (D -> L*2*D) instead of 2L small ones.
        """
        B, S, D = memory.shape
        H, d_k, L = self.cfg.heads, D // self.cfg.heads, len(self.decoder_layers)
        if self.cross_kv is not None:  # fused for decoding
            cross_kv = self.cross_kv(memory)  # (B, S, L*2*D)
        else:
            cross_kv = stacked_projection(memory, self._cross_kv_linears())  # W (L*2*D, D)
        cross_kv = cross_kv.view(B, S, L, 2, H, d_k)  # (B, S, L, 2, H, d_k)
        # Contiguous (L, 2, B, H, S, d_k): each layer's K and V are then plain (B, H, S, d_k) tensors.

        return DecoderCache(cross_kv.permute(2, 3, 0, 4, 1, 5).contiguous(), src_pad_mask)

    def _cross_kv_linears(self) -> list[nn.Linear]:
        return [m for layer in self.decoder_layers for m in (layer.cross_attn.w_k, layer.cross_attn.w_v)]

    def fuse_for_decoding(self) -> Transformer:
        """Inference only: stack the projections that run together (Q, K and V of self-attention; all
        layers' encoder-decoder K and V) into single Linears once, instead of stacking the weights at
        every call, so a decoding step runs fewer and larger matmuls and quantize.py can swap every
        matmul. Training must not use a fused model: the copies would go stale after an update.
        The fused copies are extra modules, so the state_dict of a fused model is not a checkpoint's."""
        for layer in [*self.encoder_layers, *self.decoder_layers]:
            layer.self_attn.fuse_projections()
        self.cross_kv = stacked_linear(self._cross_kv_linears())
        return self

    def decode_step(self, tokens: Tensor, cache: DecoderCache) -> Tensor:
        """Run the decoder on one new token per row, at position `cache.length`, and advance the cache.

        For inference (under torch.inference_mode or no_grad): the cache is written in place. In eval
        mode the logits equal `forward`'s at that position.

        Args:
            tokens: (B,) the newest token of each row (BOS at the first step).
            cache: from `start_cache`, advanced by earlier steps.
        Returns:
            logits (B, V) for the next token.
        """
        t = cache.length
        cache.reserve(t + 1)
        y = self.embed(tokens[:, None], self.tgt_embed, start=t)  # (B, 1, D)
        for i, layer in enumerate(self.decoder_layers):
            y = layer.step(y, cache.self_kv[:, i], t, cache.cross_kv[i], cache.src_attend_mask)
        cache.length = t + 1
        return self.output(self.decoder_norm(y[:, 0]))  # (B, V)

    def set_dropout(self, on: bool) -> None:
        """Switch dropout (model.dropout and attention_dropout) on or off for training, for
        train.dropout_after_epochs; eval mode turns it off regardless."""
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = self.cfg.dropout if on else 0.0  # p = 0 draws no random mask at all
            elif isinstance(module, MultiHeadAttention):
                module.attention_dropout = self.cfg.attention_dropout if on else 0.0

    def num_parameters(self) -> int:
        """Trainable parameters, a tied matrix counted once."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_target_token(self, src_len: int, tgt_len: int) -> float:
        """Forward+backward model FLOPs per target token, for a pair of S = src_len, T = tgt_len.

        Counts matmuls only (2 FLOPs per multiply-add), backward = 2 x forward (so 6 x params per
        token, as in Kaplan et al. 2020), attention over the full key length as in PaLM's MFU
        (causal halving ignored); embeddings, norms, softmax and biases are left out:
            encoder, per source token:  2 N_e (4 D^2 + 2 D d_ff) + N_e 4 S D
            decoder, per target token:  2 N_d (6 D^2 + 2 D d_ff) + N_d 4 (T + S) D + 2 D V
            cross-attention W^K, W^V, per source token: 2 N_d 2 D^2
            total = 3 (S (encoder + cross K/V) + T decoder) / T
        """
        c, S, T = self.cfg, src_len, tgt_len
        D, N_e, N_d, V = c.d_model, c.encoder_layers, c.decoder_layers, self.output.out_features
        encoder = 2 * N_e * (4 * D * D + 2 * D * c.d_ff) + N_e * 4 * S * D
        cross_kv = 2 * N_d * 2 * D * D
        decoder = 2 * N_d * (6 * D * D + 2 * D * c.d_ff) + N_d * 4 * (T + S) * D + 2 * D * V
        return 3.0 * (S * (encoder + cross_kv) + T * decoder) / T
