"""Looking inside: attention maps are the attention the model computes, the position table is the
model's, the pictures and curves get drawn, and every checkpoint carries its run manifest."""

import json
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mtkit.cli import app
from mtkit.model.attention import MultiHeadAttention
from mtkit.model.loading import load_model
from mtkit.tools.inspection import KINDS, attention_maps, position_table, recording, wavelengths
from mtkit.tools.plots import panels
from mtkit.training.train import train
from tests.tinyrun import tiny_config

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("insp")
    train(tiny_config(root, extra=["train.max_steps=30", "train.eval_every=15", "model.decoder_layers=2"]))
    model, tok, cfg = load_model(root / "run")
    return root, model, tok, cfg


@pytest.mark.slow
def test_attention_maps_have_the_shapes_and_masks_of_the_paper(trained):
    _, model, tok, _ = trained
    maps = attention_maps(model, tok, "ba de fi ko", "ko fi de ba")
    S, T = len(maps.src_pieces), len(maps.tgt_pieces)
    assert maps.src_pieces[-1] == "</s>" and maps.tgt_pieces[0] == "<s>"
    assert maps.tgt_pieces[1:] == [tok.pieces("tgt")[i] for i in tok.encode_tgt(["ko fi de ba"])[0]]
    enc, dec, cross = (maps.weights[k] for k in KINDS)
    assert enc.shape == (1, 2, S, S) and dec.shape == (2, 2, T, T) and cross.shape == (2, 2, T, S)
    for w in (enc, dec, cross):
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)  # every query's weights sum to 1
        assert (w >= 0).all()
    assert (np.triu(dec, k=1) == 0).all()  # the look-ahead mask: no weight on the future, exactly
    assert (dec[..., np.tril(np.ones((T, T), dtype=bool))] > 0).all()  # ... and some on every visible one
    # Without a translation the model is forced through its own greedy output.
    own = attention_maps(model, tok, "ba de fi ko")
    assert own.weights[KINDS[1]].shape[-1] == len(own.tgt_pieces) >= 1


@pytest.mark.slow
def test_recorded_weights_are_the_ones_the_model_uses(trained):
    """Weights x values, through W^O, give each attention's output in the normal (fused) forward."""
    _, model, tok, _ = trained
    src = torch.tensor([tok.encode_src(["ba de fi ko lu"])[0] + [3]])
    tgt_in = torch.tensor([[2] + tok.encode_tgt(["lu ko fi"])[0]])
    outputs = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, name=n: outputs.setdefault(name, out))
             for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)]
    with torch.no_grad():
        plain_logits = model(src, tgt_in)
        for h in hooks:
            h.remove()
        with recording(model) as records:
            recorded_logits = model(src, tgt_in)
    assert [name for name, _, _ in records] == list(outputs)
    for name, weights, values in records:
        mha = model.get_submodule(name)
        B, H, Tq, _ = weights.shape
        rebuilt = mha.w_o((weights @ values).transpose(1, 2).reshape(B, Tq, -1))
        torch.testing.assert_close(rebuilt, outputs[name], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(recorded_logits, plain_logits, atol=1e-4, rtol=1e-4)
    assert not any("attend" in vars(m) for m in model.modules())  # the patch is undone


@pytest.mark.slow
def test_position_table_is_the_models_and_wavelengths_follow_the_formula(trained):
    _, model, _, _ = trained
    table = position_table(model.cfg.d_model, 50)
    np.testing.assert_array_equal(table, model.positions[:50].numpy())
    assert table.shape == (50, model.cfg.d_model) and np.abs(table).max() <= 1.0
    waves = wavelengths(128)
    assert waves[0] == pytest.approx(2 * np.pi) and waves[-1] < 10000 * 2 * np.pi and (np.diff(waves) > 0).all()


@pytest.mark.slow
def test_panels_select_layers_and_heads(trained):
    _, model, tok, _ = trained
    maps = attention_maps(model, tok, "ba de", "de ba")
    assert len(panels(maps)) == 1 * 2 + 2 * 2 + 2 * 2  # encoder 1 layer, decoder 2 (self and cross), 2 heads
    assert [(k, li, hi) for k, li, hi, *_ in panels(maps, layer=2, head=1)] == [(KINDS[1], 2, 1), (KINDS[2], 2, 1)]


@pytest.mark.slow
def test_picture_commands_write_their_files(trained, tmp_path):
    root, _, _, _ = trained
    run = str(root / "run")
    r = runner.invoke(app, ["inspect", "attention", run, "--src", "ba de fi", "-o", str(tmp_path / "attn.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "attn.png").read_bytes()[:8] == PNG
    r = runner.invoke(app, ["inspect", "attention", run, "--src", "ba de fi", "--tgt", "fi de ba", "--json"])
    got = json.loads(r.stdout)
    assert r.exit_code == 0 and set(got["weights"]) == set(KINDS) and got["tgt_pieces"][0] == "<s>"
    r = runner.invoke(app, ["inspect", "attention", run, "--src", "ba", "--layer", "7", "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 1 and "layers and heads count from 1" in r.output
    r = runner.invoke(app, ["inspect", "attention", run, "--src", "ba"])
    assert r.exit_code == 2 and "give -o PICTURE" in r.output
    r = runner.invoke(app, ["inspect", "positions", "--d-model", "64", "--length", "40", "-o", str(tmp_path / "pe.png")])
    assert r.exit_code == 0 and (tmp_path / "pe.png").read_bytes()[:8] == PNG
    r = runner.invoke(app, ["plot", run, run, "-o", str(tmp_path / "curves.png")])
    assert r.exit_code == 0 and (tmp_path / "curves.png").read_bytes()[:8] == PNG
    r = runner.invoke(app, ["plot", str(tmp_path), "-o", str(tmp_path / "none.png")])
    assert r.exit_code == 1 and "no metrics.jsonl" in r.output
    assert (root / "run" / "curves.png").read_bytes()[:8] == PNG  # training drew its own curves


def test_missing_matplotlib_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    r = runner.invoke(app, ["inspect", "positions", "-o", str(tmp_path / "pe.png")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip().splitlines() == ["error: matplotlib is not installed; install it with `pip install"
                                             " matplotlib` (or `pip install -e .[plot]`, which `make install` does)"]


@pytest.mark.slow
def test_every_checkpoint_carries_the_run_manifest(trained, tmp_path):
    root, _, _, _ = trained
    from mtkit.model.checkpoint import load_checkpoint

    on_disk = json.loads((root / "run" / "manifest.json").read_text())
    stored = load_checkpoint(root / "run" / "last.pt")["manifest"]
    assert stored == on_disk
    assert {"config", "versions", "git", "machine", "data", "tokenizer_sha256", "metric_signatures"} <= set(stored)
    assert stored["machine"]["precision"] == "fp32" and stored["machine"]["processes"] == 1
    assert stored["versions"]["torch"] == torch.__version__
    files = {f["path"]: f for f in stored["data"]["train"]["files"]}
    src = root / "data" / "train.src"
    assert files[str(src)]["bytes"] == src.stat().st_size
    assert stored["metric_signatures"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    # Stable: a second run on the same data and tokenizer settings hashes the same.
    train(tiny_config(root, "again", extra=["train.max_steps=2", "train.eval_every=2"]))
    again = load_checkpoint(root / "again" / "last.pt")["manifest"]
    assert again["data"] == stored["data"] and again["tokenizer_sha256"] == stored["tokenizer_sha256"]
    r = runner.invoke(app, ["info", str(root / "run")])
    assert r.exit_code == 0 and "tokenizer sha256: " + stored["tokenizer_sha256"] in r.stdout
    assert json.loads(runner.invoke(app, ["info", str(root / "run"), "--json"]).stdout) == stored
