"""The training loss: label smoothing by hand, and the chunked output layer + loss against the whole one."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtkit.data.tokenizer import BOS_ID, PAD_ID
from mtkit.training.loss import output_losses, token_losses


def test_label_smoothed_loss_matches_hand_computation():
    # Two real target tokens and one pad, vocabulary of 4 (ids 0..3; id 0 is PAD), epsilon 0.1.
    logits = torch.tensor([[[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4], [9.0, -9.0, 3.0, 1.0]]])  # (1, 3, 4)
    target = torch.tensor([[2, 3, PAD_ID]])  # (1, 3): the last position is padding, ignored
    eps, V = 0.1, 4
    total = nll = 0.0
    for row, t in ((0, 2), (1, 3)):
        logp = [x - math.log(sum(math.exp(y) for y in logits[0, row].tolist())) for x in logits[0, row].tolist()]
        # (1 - eps) on the true class plus eps spread uniformly over all V classes (as PyTorch does)
        total += -((1 - eps) * logp[t] + eps / V * sum(logp))
        nll += -logp[t]
    loss, got_nll = token_losses(logits, target, eps, "vocab")
    assert float(loss) == pytest.approx(total, rel=1e-6)
    assert float(got_nll) == pytest.approx(nll, rel=1e-6)
    # The same as torch's own label-smoothed cross entropy, and differentiable through the logits.
    torch_loss = F.cross_entropy(logits.view(-1, V), target.view(-1), ignore_index=PAD_ID, label_smoothing=eps,
                                 reduction="sum")
    assert float(loss) == pytest.approx(float(torch_loss), rel=1e-6)
    assert float(token_losses(logits, target, 0.0, "vocab")[0]) == pytest.approx(nll, rel=1e-6)
    assert float(token_losses(logits, target, 0.0, "outputs")[0]) == pytest.approx(nll, rel=1e-6)


def test_label_smoothing_over_outputs_gives_pad_and_bos_nothing():
    # Vocabulary of 5: PAD 0, BOS 2 (tokenizer.py) get no smoothing mass; the other 3 get eps / 3 each.
    assert (PAD_ID, BOS_ID) == (0, 2)
    logits = torch.tensor([[[2.0, 0.5, -1.0, 0.0, 1.0], [0.1, 0.2, 0.3, 0.4, 0.5]]], requires_grad=True)
    target = torch.tensor([[3, 4]])
    eps = 0.1
    total = 0.0
    for row, t in ((0, 3), (1, 4)):
        logp = torch.log_softmax(logits[0, row].detach(), -1).tolist()
        total += -((1 - eps) * logp[t] + eps / 3 * (logp[1] + logp[3] + logp[4]))
    loss, _ = token_losses(logits, target, eps, "outputs")
    assert float(loss.detach()) == pytest.approx(total, rel=1e-6)
    # The loss is minimal when PAD and BOS have probability 0: their logits' gradient is their probability.
    loss.backward()
    probs = torch.softmax(logits.detach(), -1)
    assert torch.allclose(logits.grad[0, :, [PAD_ID, BOS_ID]], probs[0, :, [PAD_ID, BOS_ID]], atol=1e-6)
    assert float(token_losses(logits, target, eps, "vocab")[0].detach()) != pytest.approx(total, rel=1e-6)


@pytest.mark.parametrize("over", ["outputs", "vocab"])
@pytest.mark.parametrize("chunk", [0, 1, 3, 7, 1024])
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_output_loss_equals_the_whole_logits_one(over, chunk, bias):
    # The loss, the NLL and the gradients of the hidden states, the weight and the bias are those of
    # token_losses(output(hidden)) at every chunk size (0 = one chunk), pads skipped.
    torch.manual_seed(0)
    B, T, D, V = 3, 5, 8, 11
    output = nn.Linear(D, V, bias=bias)
    if bias:
        nn.init.normal_(output.bias)
    hidden = torch.randn(B, T, D, requires_grad=True)
    target = torch.randint(3, V, (B, T))
    target[0, 3:] = PAD_ID
    target[2, 1:] = PAD_ID
    target[1, 0] = BOS_ID  # a real position may hold any id; only PAD is skipped

    def run(fn):
        output.zero_grad()
        hidden.grad = None
        loss, nll = fn()
        (2.5 * loss).backward()  # the incoming gradient scales every gradient
        grads = [hidden.grad.clone(), output.weight.grad.clone()] + ([output.bias.grad.clone()] if bias else [])
        return loss.detach(), nll, grads

    want = run(lambda: token_losses(output(hidden), target, 0.1, over))
    got = run(lambda: output_losses(hidden, output, target, 0.1, over, chunk))
    assert torch.allclose(got[0], want[0], rtol=1e-6) and torch.allclose(got[1], want[1], rtol=1e-6)
    for g, w in zip(got[2], want[2]):
        assert torch.allclose(g, w, atol=1e-6), (g - w).abs().max()
    with torch.no_grad():  # validation's path: no gradients taken, the same sums
        loss, nll = output_losses(hidden, output, target, 0.1, over, chunk)
    assert torch.allclose(loss, want[0], rtol=1e-6) and torch.allclose(nll, want[1], rtol=1e-6)


def test_chunked_output_loss_under_bf16_autocast_is_the_whole_ones():
    # Under autocast the linear runs in bf16 as nn.Linear would, the softmax in fp32: the same loss
    # and gradients as the whole logits' path to bf16's precision.
    torch.manual_seed(0)
    output = nn.Linear(16, 50, bias=False)
    hidden = torch.randn(4, 6, 16, requires_grad=True)
    target = torch.randint(3, 50, (4, 6))
    results = []
    for fn in (lambda: token_losses(output(hidden), target, 0.1, "outputs"),
               lambda: output_losses(hidden, output, target, 0.1, "outputs", 5)):
        output.zero_grad()
        hidden.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = fn()
        loss.backward()
        results.append((loss.detach(), hidden.grad.clone(), output.weight.grad.clone()))
    (loss_a, h_a, w_a), (loss_b, h_b, w_b) = results
    assert torch.allclose(loss_a, loss_b, rtol=1e-3)
    assert h_b.dtype == h_a.dtype == torch.float32
    assert torch.allclose(h_a, h_b, atol=2e-2 * h_a.abs().max()) and torch.allclose(w_a, w_b, atol=2e-2 * w_a.abs().max())
