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
from mtkit.model.quantize import Int8Linear, quantize_linears, weight_levels


def test_int8_products_are_exact_on_this_cpu():
    """weight_levels() is chosen so that _int_mm never saturates here, with full-range activations."""
    levels = weight_levels()
    assert levels in (63, 127)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-127, 128, (40, 96), generator=gen, dtype=torch.int8)
    x[:, :8] = 127  # the worst case for pairwise int16 sums
    w = torch.randint(-levels, levels + 1, (96, 50), generator=gen, dtype=torch.int8)
    w[:8] = levels
    assert torch.equal(torch._int_mm(x, w), x.int() @ w.int())


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


def test_quantize_swaps_every_linear():
    from mtkit.config import ModelConfig
    from mtkit.model.transformer import Transformer

    model = Transformer(ModelConfig(d_model=16, heads=2, d_ff=32, encoder_layers=2, decoder_layers=2,
                                    tie_embeddings=True), 30, 30).eval().fuse_for_decoding()
    quantize_linears(model)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert isinstance(model.output, Int8Linear) and isinstance(model.cross_kv, Int8Linear)
    assert model.src_embed.weight.dtype == torch.float32  # the tied embedding itself stays fp32


@pytest.mark.slow
def test_quantized_model_translates_like_fp32(tmp_path):
    """A tiny model trained to reverse sequences: int8 greedy and beam output is fp32's on most
    sentences, and BLEU within 1 point."""
    from dataclasses import replace

    from mtkit.decoding.precision import prepare_for_decoding
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
    int8 = prepare_for_decoding(load_model(tmp_path / "run/last.pt")[0], "int8")
    for beam in (1, 4):
        decode = replace(cfg.decode, beam_size=beam, nbest=1)
        a = [t[0].text for t in translate_lines(fp32, tok, lines, decode)]
        b = [t[0].text for t in translate_lines(int8, tok, lines, decode)]
        bleu_a, bleu_b = score(a, refs)["bleu"], score(b, refs)["bleu"]
        same = sum(x == y for x, y in zip(a, b))
        assert bleu_a > 20, "the model must have learned the task for the comparison to mean anything"
        assert abs(bleu_a - bleu_b) < 1.0
        # Identical on 92-94% of the lines with 8-bit weights, 88% with the 7-bit ones of AVX2-only
        # CPUs: the tiny model is unsure of many lines, where rounding flips near-ties.
        assert same >= 0.85 * len(lines)


def test_auto_picks_int8_where_it_is_clearly_faster(monkeypatch):
    monkeypatch.setattr(precision_mod, "int8_speedup", lambda: 2.9)
    precision, why = resolve_decode_precision("auto", "cpu")
    assert precision == "int8" and "2.9x as fast" in why
    monkeypatch.setattr(precision_mod, "int8_speedup", lambda: 1.1)  # e.g. a CPU without int8 kernels
    precision, why = resolve_decode_precision("auto", "cpu")
    assert precision in ("fp32", "bf16") and "not int8" in why
    assert resolve_decode_precision("int8", "cpu")[0] == "int8"  # asked for: kept, however fast
    with pytest.raises(ConfigError, match="decode.precision: int8 runs on CPUs only"):
        resolve_decode_precision("int8", "cuda")


def test_int8_speedup_is_measured_without_touching_the_random_stream():
    quantize.int8_speedup.cache_clear()
    before = torch.get_rng_state()
    assert quantize.int8_speedup() > 0
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

    monkeypatch.setattr(torch, "_int_mm", missing)
    quantize.weight_levels.cache_clear()
    quantize.int8_speedup.cache_clear()
    try:
        precision, why = resolve_decode_precision("auto", "cpu")
        assert precision in ("fp32", "bf16") and "0.0x" in why
        with pytest.raises(ConfigError, match="int8 needs torch._int_mm"):
            quantize_linears(nn.Sequential(nn.Linear(4, 4)))
    finally:
        quantize.weight_levels.cache_clear()
        quantize.int8_speedup.cache_clear()
