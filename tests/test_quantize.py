"""int8 decoding (quantize.py): exact integer products, fp32-close layers, a quantized model that
translates like the fp32 one, and how decode.precision auto chooses it."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from mtkit.decoding import precision as precision_mod
from mtkit.decoding.precision import resolve_decode_precision
from mtkit.errors import ConfigError
from mtkit.model import quantize
from mtkit.model.quantize import FbgemmLinear, Int8Linear, kernel_available, quantize_linears, weight_levels
from tests.cpu_probe import fbgemm_exact, int_mm_exact

AVAILABLE = [k for k in quantize.KERNELS if kernel_available(k)]


def clear_caches():
    for cached in (quantize.weight_levels, quantize.kernel_available, quantize.kernel_speedups):
        cached.cache_clear()


def test_int8_products_are_exact_on_this_cpu():
    """weight_levels() is chosen so that _int_mm never saturates here, with full-range activations
    (tests/cpu_probe.py: the same check that runs under other CPUs' CPUID)."""
    levels = weight_levels()
    assert levels in (63, 127)
    assert int_mm_exact(levels)


def test_int8_linear_is_exact_where_rounding_is_and_close_elsewhere():
    levels = weight_levels()
    linear = nn.Linear(16, 8)
    with torch.no_grad():  # integer weights with one +-levels per row: scale 1, nothing rounds
        linear.weight.copy_(torch.randint(-levels, levels + 1, (8, 16)).float())
        linear.weight[:, 0] = levels
        linear.bias.copy_(torch.arange(8.0))
    x = torch.randint(-127, 128, (3, 5, 16)).float()
    x[..., 0] = 127
    q = Int8Linear(linear, levels)
    assert q(x).shape == (3, 5, 8)
    assert torch.equal(q(x), linear(x).detach())
    # Real-valued weights and inputs: the error of rounding both to 8 bits, about 1% of the output.
    torch.manual_seed(0)
    linear, x = nn.Linear(256, 512), torch.randn(64, 256)
    with torch.no_grad():
        rel = (Int8Linear(linear, levels)(x) - linear(x)).norm() / linear(x).norm()
    assert 1e-4 < rel < 0.03


@pytest.mark.skipif(not kernel_available("fbgemm"), reason="this torch has no fbgemm int8 linear")
def test_fbgemm_linear_sums_exactly_and_stays_close():
    """fbgemm's kernel rounds activations per tensor to 7 bits between their min and max (so AVX2's
    saturating int16 pair sums never overflow) and weights per channel to 8: on inputs that rounding
    leaves as they are (whole numbers from 0 to 127), the output is exact; on real-valued ones,
    about 2% off (per-tensor activations: coarser than Int8Linear's rows)."""
    linear = nn.Linear(32, 8)
    with torch.no_grad():  # weights with one +-127 per row and inputs with a 127: both scales exactly 1
        linear.weight.copy_(torch.randint(-127, 128, (8, 32)).float())
        linear.weight[:, 0] = 127
        linear.bias.copy_(torch.arange(8.0))
    x = torch.randint(0, 128, (4, 32)).float()
    x[0, 0], x[0, 1] = 127, 0  # the range is 0..127: activation scale 1, zero point 0
    x[1, :] = 127  # the worst case for pairwise int16 sums
    q = FbgemmLinear(linear)
    assert torch.equal(q(x), linear(x).detach())
    assert fbgemm_exact()  # the larger case tests/cpu_probe.py checks under other CPUs' CPUID
    torch.manual_seed(0)
    linear, x = nn.Linear(256, 512), torch.randn(64, 256)
    with torch.no_grad():
        rel = (FbgemmLinear(linear)(x) - linear(x)).norm() / linear(x).norm()
    assert 1e-4 < rel < 0.04


@pytest.mark.skipif(not kernel_available("fbgemm"), reason="this torch has no fbgemm int8 linear")
def test_fbgemm_linear_takes_any_leading_dims_and_strides():
    """forward hands its input to fbgemm as it is: a (B, 1, D) step, a transposed view and a
    2-D batch give exactly the rows the 2-D contiguous call gives."""
    torch.manual_seed(0)
    q = FbgemmLinear(nn.Linear(16, 24))
    x = torch.randn(3, 5, 16)
    flat = q(x.reshape(15, 16))  # (15, 24)
    assert torch.equal(q(x), flat.view(3, 5, 24))
    t = x.transpose(0, 1)  # (5, 3, 16), not contiguous
    assert torch.equal(q(t), q(t.contiguous()))
    assert q(x[:, :1]).shape == (3, 1, 24)
    # The op is called directly, not through torch.ops: the same result.
    assert q.linear_dynamic is not torch.ops.quantized.linear_dynamic
    assert torch.equal(flat, torch.ops.quantized.linear_dynamic(x.reshape(15, 16), q.packed, True))


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_quantize_swaps_every_linear(kernel):
    from mtkit.config import ModelConfig
    from mtkit.model.transformer import Transformer

    model = Transformer(ModelConfig(d_model=16, heads=2, d_ff=32, encoder_layers=2, decoder_layers=2,
                                    tie_embeddings=True), 30, 30).eval().fuse_for_decoding()
    quantize_linears(model, kernel)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    kind = Int8Linear if kernel == "int_mm" else FbgemmLinear
    assert isinstance(model.output, kind) and isinstance(model.cross_kv, kind)
    assert model.src_embed.weight.dtype == torch.float32  # the tied embedding itself stays fp32


@pytest.mark.slow
def test_quantized_model_translates_like_fp32(tmp_path):
    """A tiny model trained to reverse sequences: with every int8 kernel that runs here, greedy and
    beam output is fp32's on most sentences, and BLEU within 1 point."""
    from dataclasses import replace

    from mtkit.decoding.scoring import score
    from mtkit.decoding.translate import translate_lines
    from mtkit.model.loading import load_model
    from mtkit.training.train import train
    from tests.tinyrun import tiny_config

    train(tiny_config(tmp_path, extra=["train.max_steps=300", "train.eval_every=300", "model.d_model=64",
                                       "model.d_ff=128", "model.decoder_layers=2", "decode.max_len_b=10"]))
    data = tmp_path / "data"
    lines = [x for split in ("dev", "test", "train") for x in (data / f"{split}.src").read_text().splitlines()][:300]
    refs = [" ".join(reversed(x.split())) for x in lines]  # the task: reverse the words
    fp32, tok, cfg = load_model(tmp_path / "run/last.pt")
    for kernel, beam in [(k, b) for k in AVAILABLE for b in (1, 4)]:
        int8 = quantize_linears(load_model(tmp_path / "run/last.pt")[0].fuse_for_decoding(), kernel)
        decode = replace(cfg.decode, beam_size=beam, nbest=1)
        a = [t[0].text for t in translate_lines(fp32, tok, lines, decode)]
        b = [t[0].text for t in translate_lines(int8, tok, lines, decode)]
        bleu_a, bleu_b = score(a, refs)["bleu"], score(b, refs)["bleu"]
        same = sum(x == y for x, y in zip(a, b))
        assert bleu_a > 20, "the model must have learned the task for the comparison to mean anything"
        assert abs(bleu_a - bleu_b) < 1.0
        # Identical on 92-94% of the lines with int_mm (per-row activations), 80-84% with fbgemm
        # (per-tensor activations, measured on a Zen 2): the tiny model is unsure of many lines,
        # where rounding flips near-ties.
        assert same >= (0.85 if kernel == "int_mm" else 0.75) * len(lines), (kernel, beam)


def timed(monkeypatch, speedups: dict[str, float]) -> None:
    """Make the start-up timing answer `speedups` (kernel -> times as fast as fp32)."""
    monkeypatch.setattr(quantize, "kernel_speedups", lambda: speedups)
    monkeypatch.setattr(precision_mod, "kernel_speedups", lambda: speedups)


def test_auto_picks_int8_where_the_fastest_kernel_is_clearly_faster(monkeypatch):
    timed(monkeypatch, {"int_mm": 2.9, "fbgemm": 1.4})  # an AVX-512 VNNI CPU
    precision, why = resolve_decode_precision("auto", "cpu")
    assert precision == "int8" and why.endswith("8-bit matmuls by int_mm run 2.9x as fast as fp32 here"
                                                " (fbgemm: 1.4x as fast)")
    timed(monkeypatch, {"int_mm": 0.034, "fbgemm": 1.5})  # an AVX2 CPU without VNNI (Zen 2 or 3)
    precision, why = resolve_decode_precision("auto", "cpu")
    assert precision == "int8" and "by fbgemm run 1.5x as fast as fp32 here (int_mm: 29x slower)" in why
    timed(monkeypatch, {"int_mm": 0.034, "fbgemm": 1.1})
    precision, why = resolve_decode_precision("auto", "cpu")
    assert precision in ("fp32", "bf16") and "not int8: 8-bit matmuls by fbgemm run 1.1x as fast" in why
    timed(monkeypatch, {"int_mm": 0.5})
    assert "not int8: 8-bit matmuls by int_mm run 2.0x slower than fp32 here" in resolve_decode_precision(
        "auto", "cpu")[1]  # never "0.5x as fast", nor "0.0x"
    assert resolve_decode_precision("int8", "cpu")[0] == "int8"  # asked for: kept, however fast
    with pytest.raises(ConfigError, match="decode.precision: int8 runs on CPUs only"):
        resolve_decode_precision("int8", "cuda")


def test_kernels_are_timed_without_touching_the_random_stream():
    """Validation resolves decode.precision auto mid-training: probing and timing the kernels must
    not draw from training's random stream, or a resumed run would differ from an uninterrupted one."""
    clear_caches()
    before = torch.get_rng_state()
    speedups = quantize.kernel_speedups()
    assert set(speedups) == set(AVAILABLE) and all(s > 0 for s in speedups.values())
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.slow
def test_translate_cli_decodes_in_int8(tmp_path, caplog):
    from typer.testing import CliRunner

    from mtkit.cli import app
    from mtkit.training.train import train
    from tests.tinyrun import tiny_config

    train(tiny_config(tmp_path, extra=["train.max_steps=10"]))
    src = tmp_path / "in.txt"
    src.write_text("a b c\n\nd e\n")
    with caplog.at_level(logging.INFO, logger="mtkit"):
        r = CliRunner().invoke(app, ["translate", str(tmp_path / "run/last.pt"), "-i", str(src), "--set",
                                     "decode.precision=int8", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert len(r.stdout.splitlines()) == 3 and r.stdout.splitlines()[1] == ""
    assert "decode.precision int8" in r.output


def test_a_torch_without_a_cpu_int8_matmul_falls_back_or_says_so(monkeypatch):
    def missing(*_):
        raise RuntimeError("_int_mm: not implemented for 'CPU'")

    def gone(*_):
        raise AttributeError("no fbgemm in this torch")

    monkeypatch.setattr(torch, "_int_mm", missing)
    clear_caches()
    try:
        assert "int_mm" not in quantize.kernel_speedups()  # fbgemm alone, where this torch has it
        monkeypatch.setattr(torch, "quantize_per_channel", gone)
        clear_caches()
        precision, why = resolve_decode_precision("auto", "cpu")
        assert precision in ("fp32", "bf16") and why.endswith("not int8: no 8-bit matmul works with this torch")
        with pytest.raises(ConfigError, match="int8 needs torch._int_mm or fbgemm"):
            quantize_linears(nn.Sequential(nn.Linear(4, 4)))
    finally:
        monkeypatch.undo()
        clear_caches()
