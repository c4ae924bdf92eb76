"""The training loss: label-smoothed cross entropy (paper section 5.4), and the plain NLL beside it.

Training and validation both call `token_losses`, so the dev loss is the training loss on dev data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

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
    nll_tok = -lprobs.gather(1, target[:, None]).squeeze(1)  # (B*T,)
    # Label smoothing: (1 - eps) * NLL + eps * the mean of -log p over the tokens it is spread over.
    if over == "outputs":
        # NOTE (differs from paper): the paper spreads eps over the vocabulary; PAD and BOS are
        # never outputs (search bans them), so "outputs" gives them none (as JoeyNMT does for PAD).
        # Side by side on Ding (10-minute runs) dev perplexity was the same either way (BENCHMARKS.md).
        spread = lprobs.sum(dim=-1) - lprobs[:, PAD_ID] - lprobs[:, BOS_ID]  # (B*T,)
        smooth_tok = -spread / (lprobs.size(-1) - 2)
    else:  # as torch's cross_entropy(label_smoothing=eps)
        smooth_tok = -lprobs.mean(dim=-1)  # (B*T,)
    loss = torch.where(real, (1.0 - label_smoothing) * nll_tok + label_smoothing * smooth_tok, 0.0).sum()
    nll = torch.where(real, nll_tok.detach(), 0.0).sum()
    return loss, nll
