"""Scaled dot-product and multi-head attention (section 3.2), and the padding mask they take.

`MultiHeadAttention` is what the encoder and decoder layers (transformer.py) use; `reference_attention`
is eq. 1 written out, for inspection and tests; `matmul_attention` is the bf16-on-CPU path, and a
decoding step's self-attention over many cached positions on a CPU (`one_query_over_many_keys`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# A single query's keys x d_k from which its attention runs as matmuls (one_query_over_many_keys):
# torch's batched matmul calls BLAS from 400 products per matrix (below, it loops per element).
MATMUL_MIN_PRODUCTS = 400


def reference_attention(q: Tensor, k: Tensor, v: Tensor, attend_mask: Tensor | None = None
                        ) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention written out (section 3.2.1, eq. 1), returning the weights too.

    The plain, slow path: for inspecting attention and for testing the fused
    `F.scaled_dot_product_attention` the model runs. A row that may attend to nothing gives NaN.

    Args:
        q: (B, H, Tq, d_k) queries.
        k: (B, H, Tk, d_k) keys.
        v: (B, H, Tk, d_v) values.
        attend_mask: bool, broadcastable to (B, H, Tq, Tk); True = the query may attend to the key.
    Returns:
        output (B, H, Tq, d_v) and weights (B, H, Tq, Tk), each row summing to 1.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, Tq, Tk)
    if attend_mask is not None:
        scores = scores.masked_fill(~attend_mask, float("-inf"))
    weights = scores.softmax(dim=-1)  # (B, H, Tq, Tk)
    return weights @ v, weights


def matmul_attention(q: Tensor, k: Tensor, v: Tensor, attend_mask: Tensor | None = None,
                     is_causal: bool = False, dropout_p: float = 0.0) -> Tensor:
    """Eq. 1 as two batched matmuls with the softmax in fp32: the model's path for bf16 on CPUs, and
    for a decoding step's single query over many keys (one_query_over_many_keys).

    torch's CPU flash-attention kernel is slow in bf16 for the short sentences of MT (measured with
    torch 2.13, 2 threads, forward + backward: 7.1 against 2.7 ms at 400 x 5 tokens, 15.5 against
    1.8 ms at 120 x 16, 16.7 against 6.8 ms at 16 x 128; one decoding step over a 30-token cache
    1.5 against 0.4 ms). In fp32 and on GPUs the fused kernel is the faster one and stays in use.
    Same arguments and result as `F.scaled_dot_product_attention`; the weights are not returned.
    """
    scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.size(-1))  # (B, H, Tq, Tk) fp32
    if attend_mask is not None:
        scores = scores.masked_fill(~attend_mask, float("-inf"))
    if is_causal:  # query i sees keys 0..i
        Tq, Tk = scores.shape[-2:]
        future = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).triu(1)  # (Tq, Tk)
        scores = scores.masked_fill(future, float("-inf"))
    weights = scores.softmax(dim=-1)  # (B, H, Tq, Tk)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights.to(v.dtype) @ v  # (B, H, Tq, d_v)


def one_query_over_many_keys(q: Tensor, k: Tensor, attend_mask: Tensor | None) -> bool:
    """A decoding step's self-attention (one query per row, no mask) over enough cached keys that
    two batched matmuls beat the fused kernel on a CPU.

    The fused kernel pays a fixed cost per (row, head) pair, which a 160-row step has 640 of per
    layer; torch's batched matmul hands them to BLAS in one call once each matrix holds at least
    400 products (below that it loops per element and is slower). A real-model step (32 sentences
    x beam 5, d_k 64, cache reorder included) on a Zen 2 (real AVX2), one thread: 3-4% faster at
    11 keys, 6-8% at 21; with matmuls at 5 and 6 keys it was 3-5% slower (BENCHMARKS.md).
    """
    return q.size(-2) == 1 and attend_mask is None and k.size(-2) * k.size(-1) >= MATMUL_MIN_PRODUCTS


def attend_mask_from_padding(pad_mask: Tensor) -> Tensor:
    """(B, L) True = padding -> (B, 1, 1, L) True = the key may be attended (SDPA's convention)."""
    return ~pad_mask[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """Multi-head attention (section 3.2.2): `heads` heads of d_k = d_model / heads, then W^O.

    The per-head projections W_i^Q, W_i^K, W_i^V (d_model -> d_k each) are packed into one
    d_model -> d_model matrix per role, so all heads are projected by one matmul and no Python
    loop runs over heads. As in the paper's equations the projections have no bias. `forward`
    stacks the matrices so that self-attention projects Q, K and V by one matmul and
    encoder-decoder attention K and V by one (the weights stay three modules, so checkpoints do
    not change).
    """

    def __init__(self, d_model: int, heads: int, attention_dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.heads, self.d_k = heads, d_model // heads
        # NOTE (differs from paper): bias (model.attention_bias) adds biases to the four projections,
        # an option for imported models (Marian, fairseq); the paper's equations have none.
        self.w_q = nn.Linear(d_model, d_model, bias=bias)
        self.w_k = nn.Linear(d_model, d_model, bias=bias)
        self.w_v = nn.Linear(d_model, d_model, bias=bias)
        self.w_o = nn.Linear(d_model, d_model, bias=bias)
        # NOTE (differs from paper): dropout on the attention weights is not in the paper;
        # attention_dropout: 0 (the default) keeps the paper's model.
        self.attention_dropout = attention_dropout
        self.w_qkv: nn.Linear | None = None  # [W^Q; W^K; W^V] (3D, D) for decoding (fuse_projections)

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, L, D) -> (B, H, L, d_k), a view."""
        B, L, _ = x.shape
        return x.view(B, L, self.heads, self.d_k).transpose(1, 2)

    def forward(self, query: Tensor, key_value: Tensor, attend_mask: Tensor | None = None,
                is_causal: bool = False) -> Tensor:
        """`query` (B, Tq, D) attends to `key_value` (B, Tk, D) -> (B, Tq, D). `attend_mask`: bool,
        broadcastable to (B, H, Tq, Tk), True = may attend; `is_causal`: query i sees keys 0..i."""
        if query is key_value:  # self-attention
            q, k, v = self.project_qkv(query)  # each (B, L, D)
        else:  # encoder-decoder attention
            q = self.w_q(query)  # (B, Tq, D)
            k, v = stacked_projection(key_value, [self.w_k, self.w_v]).chunk(2, dim=-1)  # (B, Tk, D)
        return self.attend(self.split_heads(q), self.split_heads(k), self.split_heads(v),  # (B, H, T, d_k)
                           attend_mask, is_causal)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, ...]:
        """x (B, L, D) -> Q, K, V (B, L, D) each, by one matmul with [W^Q; W^K; W^V] (3D, D)."""
        if self.w_qkv is not None:
            return self.w_qkv(x).chunk(3, dim=-1)
        return stacked_projection(x, [self.w_q, self.w_k, self.w_v]).chunk(3, dim=-1)

    def fuse_projections(self) -> None:
        """For decoding only: keep [W^Q; W^K; W^V] as one module instead of stacking the weights at
        every call (a copy each time), so that quantize.py can swap it too. Training must not call
        it: the stacked copy would go stale after the next update."""
        self.w_qkv = stacked_linear([self.w_q, self.w_k, self.w_v])

    def attend(self, q: Tensor, k: Tensor, v: Tensor, attend_mask: Tensor | None = None,
               is_causal: bool = False) -> Tensor:
        """Projected q (B, H, Tq, d_k), k, v (B, H, Tk, d_k) -> Concat(heads) W^O (B, Tq, D)."""
        dropout_p = self.attention_dropout if self.training else 0.0
        if q.device.type == "cpu" and (q.dtype == torch.bfloat16 or one_query_over_many_keys(q, k, attend_mask)):
            out = matmul_attention(q, k, v, attend_mask, is_causal, dropout_p)  # (B, H, Tq, d_k)
        else:
            # The fused kernel (flash attention) computes softmax(QK^T/sqrt(d_k))V in blocks without
            # materialising the (Tq, Tk) weights, and with is_causal skips the blocks above the diagonal.
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend_mask, is_causal=is_causal,
                                                 dropout_p=dropout_p)  # (B, H, Tq, d_k)
        B, _, Tq, _ = out.shape
        return self.w_o(out.transpose(1, 2).reshape(B, Tq, -1))  # Concat(head_1..head_h) W^O


def stacked_projection(x: Tensor, linears: list[nn.Linear]) -> Tensor:
    """x (..., D) through the given Linears side by side, as one matmul: (..., sum of outputs)."""
    bias = None if linears[0].bias is None else torch.cat([m.bias for m in linears])
    return F.linear(x, torch.cat([m.weight for m in linears]), bias)


def stacked_linear(linears: list[nn.Linear]) -> nn.Linear:
    """One Linear whose output is the given Linears' outputs side by side (a copy)."""
    weight = torch.cat([m.weight.detach() for m in linears])  # (sum of outputs, D)
    with_bias = linears[0].bias is not None
    # skip_init: no random initialisation, which would draw from (and so change) training's RNG.
    fused = nn.utils.skip_init(nn.Linear, weight.size(1), weight.size(0), bias=with_bias,
                               device=weight.device, dtype=weight.dtype)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if with_bias:
        fused.bias = nn.Parameter(torch.cat([m.bias.detach() for m in linears]), requires_grad=False)
    return fused
