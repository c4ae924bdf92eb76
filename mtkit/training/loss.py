"""The training loss: label-smoothed cross entropy (paper section 5.4), and the plain NLL beside it.

Training and validation both call `output_losses`, so the dev loss is the training loss on dev data.
It runs the pre-softmax linear and the loss together, a chunk of target tokens at a time, so the
(tokens x V) logits of a whole batch never exist at once (`token_losses` is the same loss from
logits that do).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtkit.data.tokenizer import BOS_ID, PAD_ID


def token_losses(logits: Tensor, target: Tensor, label_smoothing: float, over: str) -> tuple[Tensor, Tensor]:
    """Label-smoothed cross entropy and plain NLL, each summed over the real (non-pad) tokens.

    Args:
        logits: (B, T, V) model outputs (any float dtype; computed in fp32).
        target: (B, T) gold ids, PAD where there is no token.
        label_smoothing: epsilon_ls, the probability mass spread uniformly.
        over: "outputs" spreads it over the V - 2 pieces the decoder can emit, not PAD and BOS, which
            search never generates; "vocab" over all V (torch's cross_entropy). train.label_smoothing_over.

    Returns:
        (loss, nll): the smoothed loss (differentiable) and the NLL for perplexity (no gradient).
    """
    # One log-softmax serves both sums (a second logsumexp pass for the NLL cost ~8% of a step).
    lprobs = F.log_softmax(logits.float().view(-1, logits.size(-1)), dim=-1)  # (B*T, V)
    target = target.view(-1)  # (B*T,)
    real = target != PAD_ID  # (B*T,)
    loss_tok, nll_tok = smoothed_losses(lprobs, target, label_smoothing, over)  # (B*T,) each
    return torch.where(real, loss_tok, 0.0).sum(), torch.where(real, nll_tok.detach(), 0.0).sum()


def smoothed_losses(lprobs: Tensor, target: Tensor, label_smoothing: float, over: str) -> tuple[Tensor, Tensor]:
    """Per token: (1 - eps) * NLL + eps * the mean of -log p over the pieces eps is spread over, and
    the NLL. lprobs (N, V) log-probabilities, target (N,) -> (N,), (N,)."""
    nll_tok = -lprobs.gather(1, target[:, None]).squeeze(1)  # (N,)
    if over == "outputs":
        # NOTE (differs from paper): the paper spreads eps over the vocabulary; PAD and BOS are
        # never outputs (search bans them), so "outputs" gives them none (as JoeyNMT does for PAD).
        # Side by side on Ding (10-minute runs) dev perplexity was the same either way (BENCHMARKS.md).
        spread = lprobs.sum(dim=-1) - lprobs[:, PAD_ID] - lprobs[:, BOS_ID]  # (N,)
        smooth_tok = -spread / (lprobs.size(-1) - 2)
    else:  # as torch's cross_entropy(label_smoothing=eps)
        smooth_tok = -lprobs.mean(dim=-1)  # (N,)
    return (1.0 - label_smoothing) * nll_tok + label_smoothing * smooth_tok, nll_tok


def output_losses(hidden: Tensor, output: nn.Linear, target: Tensor, label_smoothing: float, over: str,
                  chunk_tokens: int) -> tuple[Tensor, Tensor]:
    """`token_losses(output(hidden), target, ...)`, computed `chunk_tokens` real target tokens at a time.

    Only the real (non-pad) positions go through the pre-softmax linear. With gradients on, each
    chunk's gradient is taken at once (the loss is the end of the graph, so it is known there):
    memory holds one chunk's (chunk_tokens x V) probabilities, not the batch's logits, their
    log-softmax and the gradients of both (~260 MB each at 4,096 tokens and 16k pieces).
    The sums equal token_losses' up to float rounding (they are added in another order).

    Args:
        hidden: (B, T, D) the decoder's output before the pre-softmax linear (model(..., features=True)).
        output: the pre-softmax linear, D -> V (its weight may be tied to the embeddings).
        target, label_smoothing, over: as for token_losses.
        chunk_tokens: target tokens per chunk (train.loss_chunk_tokens); 0 = all at once.
    Returns:
        (loss, nll) as token_losses.
    """
    D = hidden.size(-1)
    flat_target = target.reshape(-1)  # (B*T,)
    real = flat_target.ne(PAD_ID).nonzero().squeeze(1)  # (N,) positions of real tokens
    h, t = hidden.reshape(-1, D).index_select(0, real), flat_target.index_select(0, real)  # (N, D), (N,)
    device = h.device.type
    # Under autocast the linear runs in its dtype, as nn.Linear would; the softmax in fp32.
    compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else output.weight.dtype
    chunk = chunk_tokens if chunk_tokens > 0 else max(h.size(0), 1)
    if torch.is_grad_enabled() and (h.requires_grad or output.weight.requires_grad):
        return _ChunkedOutputLoss.apply(h, output.weight, output.bias, t, label_smoothing, over, chunk, compute)
    loss, nll, _ = _chunk_pass(h, output.weight, output.bias, t, label_smoothing, over, chunk, compute, grads=False)
    return loss, nll


class _ChunkedOutputLoss(torch.autograd.Function):
    """The pre-softmax linear and the smoothed loss, chunk by chunk, with the gradients of h, W and b
    taken in the forward pass and scaled by the incoming gradient in the backward pass."""

    @staticmethod
    def forward(ctx, h, weight, bias, target, label_smoothing, over, chunk, compute):  # noqa: ANN001, ANN205
        loss, nll, grads = _chunk_pass(h, weight, bias, target, label_smoothing, over, chunk, compute, grads=True)
        ctx.save_for_backward(*grads)
        ctx.dtypes = (h.dtype, weight.dtype)
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):  # noqa: ANN001, ANN205
        grad_h, grad_w, grad_b = ctx.saved_tensors
        grad_b = grad_b * grad_loss if grad_b.numel() else None
        return ((grad_h * grad_loss).to(ctx.dtypes[0]), (grad_w * grad_loss).to(ctx.dtypes[1]), grad_b,
                None, None, None, None, None)


def _chunk_pass(h: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, label_smoothing: float, over: str,
                chunk: int, compute: torch.dtype, grads: bool) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """Loss and NLL sums over h (N, D) -> V, chunk rows at a time; with `grads`, also the fp32
    gradients of the loss sum with respect to h (N, D), weight (V, D) and bias (V,) (empty: no bias).

    d loss / d z_i = p_i - (1 - eps) [i = target] - eps [i in S] / |S|, where S is the set of pieces
    eps is spread over: all V, or V - 2 without PAD and BOS (smoothed_losses).
    """
    V = weight.size(0)
    with torch.autocast(h.device.type, enabled=False):
        w = weight.to(compute)  # (V, D)
        h_c = h.to(compute)  # (N, D)
        loss = torch.zeros((), device=h.device)
        nll = torch.zeros((), device=h.device)
        grad_h = torch.empty(h.shape, device=h.device) if grads else h.new_empty(0)  # fp32
        grad_w = torch.zeros(weight.shape, device=h.device) if grads else h.new_empty(0)
        grad_b = torch.zeros(V, device=h.device) if grads and bias is not None else h.new_empty(0)
        spread = torch.full((V,), label_smoothing / (V - 2 if over == "outputs" else V), device=h.device)  # eps / |S|
        if over == "outputs":
            spread[[PAD_ID, BOS_ID]] = 0.0
        for start in range(0, h.size(0), chunk):
            rows, t = h_c[start:start + chunk], target[start:start + chunk]  # (c, D), (c,)
            logits = F.linear(rows, w).float()  # (c, V)
            if bias is not None:
                logits += bias.float()
            lprobs = F.log_softmax(logits, dim=-1)  # (c, V)
            del logits
            loss_tok, nll_tok = smoothed_losses(lprobs, t, label_smoothing, over)
            loss += loss_tok.sum()
            nll += nll_tok.sum()
            if not grads:
                continue
            g = lprobs.exp_()  # (c, V) probabilities, in place
            g[torch.arange(t.size(0), device=g.device), t] -= 1.0 - label_smoothing
            g -= spread  # (c, V) - (V,)
            g_c = g.to(compute)  # (c, V)
            grad_h[start:start + chunk] = g_c @ w  # (c, D)
            grad_w += (g_c.t() @ rows).float()  # (V, D)
            if bias is not None:
                grad_b += g.sum(dim=0)
    return loss, nll, (grad_h, grad_w, grad_b)
