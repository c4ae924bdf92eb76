"""CTranslate2 export: the exported model translates as mtkit does (parity), int8 stays close,
and the CLI (`mtkit export`, `mtkit translate --engine ctranslate2`) keeps the line contract."""

import sys
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from mtkit.cli import app
from mtkit.data.padding import make_batch
from mtkit.decoding.ct2 import export, load_engine
from mtkit.decoding.scoring import score
from mtkit.decoding.search import search
from mtkit.decoding.settings import decode_settings
from mtkit.decoding.translate import translate_lines
from mtkit.model.loading import load_model
from mtkit.training.train import train
from tests.tinyrun import make_data, tiny_config

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny pre-norm model trained until it reverses most dev lines (outputs end by EOS, not the limit)."""
    pytest.importorskip("ctranslate2", reason="the ct2 extra: `pip install -e .[ct2]` (make install does)")
    root = tmp_path_factory.mktemp("ct2")
    make_data(root)
    train(tiny_config(root, extra=["train.max_steps=300", "train.eval_every=300", "model.d_model=64",
                                   "model.d_ff=128", "model.decoder_layers=2", "decode.max_len_b=10"]))
    return root


def sources(root, n=300):
    lines = []
    for split in ("dev", "test", "train"):
        lines += (root / "data" / f"{split}.src").read_text().splitlines()
    return lines[:n]


@pytest.mark.slow
@pytest.mark.parametrize("norm_first", [True, False])
def test_exported_model_translates_exactly_as_mtkit(tmp_path, trained, norm_first):
    """float32 export, 300 sentences, alpha 0: greedy gives mtkit's tokens everywhere; greedy and
    beam 4 give mtkit's best hypothesis, scored within 1e-3, wherever it ends before the output
    limit (>80% of them); 2-best lists agree on at least 97% (CTranslate2 stops a sentence once K
    hypotheses have ended, see ct2.py)."""
    root = trained
    if norm_first:
        model_path = root / "run" / "last.pt"
    else:  # the paper's post-norm
        train(tiny_config(root, "post", extra=["train.max_steps=300", "train.eval_every=300", "model.d_model=64",
                                                "model.d_ff=128", "model.norm_first=false", "decode.max_len_b=10"]))
        model_path = root / "post" / "last.pt"
    model, tok, cfg = load_model(model_path)
    out = export(model_path, tmp_path / "ct2")
    assert (out / "model.bin").is_file() and (out / "tokenizer" / "spm.model").is_file()
    engine, tok2, decode, _ = load_engine(out, "cpu")
    lines = sources(root)
    ids = tok.encode_src(lines)
    src = make_batch(ids)["src"]
    limits = [int(cfg.decode.max_len_a * (len(x) + 1) + cfg.decode.max_len_b) for x in ids]
    for how in (dict(greedy=True), dict(beam=4), dict(beam=4, nbest=2)):
        settings = replace(decode_settings(cfg.decode, **how), length_penalty=0.0)
        mine = search(model, src, settings)
        theirs = engine.search_ids(ids, settings)
        # At its output limit mtkit forces EOS and counts its log-probability, CTranslate2 stops
        # without it: beams that reach the limit rank differently. Every other best hypothesis
        # ends by EOS in both and must be the same, scored the same.
        ended = [k for k, limit in enumerate(limits) if len(mine[k][0].tokens) < limit]
        assert len(ended) > 0.8 * len(lines)
        if settings.beam_size == 1:
            ended_or_not = range(len(lines))  # greedy: one path, the same up to the limit
            assert all(mine[k][0].tokens == theirs[k][0].tokens for k in ended_or_not)
        assert all(mine[k][0].tokens == theirs[k][0].tokens for k in ended)
        assert max(abs(mine[k][0].score - theirs[k][0].score) for k in ended) < 1e-3, how
        if settings.nbest > 1:
            same = sum([h.tokens for h in mine[k]] == [h.tokens for h in theirs[k]] for k in ended)
            assert same >= 0.97 * len(ended), (same, len(ended))
        texts = [ts[0].text for ts in translate_lines(engine, tok2, lines, settings)]
        assert [texts[k] for k in ended] == [ts[0].text for ts in translate_lines(model, tok, [lines[k] for k in ended],
                                                                                    settings)]
    assert sum(t != "" for t in texts) > 250  # a real test: the model translates


@pytest.mark.slow
def test_int8_export_stays_within_one_bleu(tmp_path, trained):
    root = trained
    model, tok, cfg = load_model(root / "run" / "last.pt")
    lines = sources(root)
    refs = [" ".join(reversed(s.split())) for s in lines]  # the task: reverse the words
    settings = decode_settings(cfg.decode, greedy=True)
    fp32 = score([ts[0].text for ts in translate_lines(model, tok, lines, settings)], refs)["bleu"]
    out = export(root / "run" / "last.pt", tmp_path / "int8", quantization="int8")
    engine, tok2, _, _ = load_engine(out, "cpu")
    int8 = score([ts[0].text for ts in translate_lines(engine, tok2, lines, settings)], refs)["bleu"]
    assert fp32 > 20 and abs(int8 - fp32) <= 1.0, (fp32, int8)  # the model has learnt the task in part


@pytest.mark.slow
def test_cli_export_then_translate_keeps_the_line_contract(tmp_path, trained):
    root = trained
    ct2_dir = tmp_path / "exported"
    r = runner.invoke(app, ["export", str(root / "run"), "-o", str(ct2_dir)])
    assert r.exit_code == 0, r.output
    # Nothing saved is overwritten silently: a second export to the same place is refused.
    r = runner.invoke(app, ["export", str(root / "run"), "-o", str(ct2_dir)])
    assert r.exit_code == 2 and "exists and is not an empty directory" in r.output and "--force" in r.output
    src = sources(root, 6)
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join([src[0], "", src[1], "x " * 1500, *src[2:]]) + "\n", encoding="utf-8")
    outs = {}
    for name, model_arg, engine in (("torch", root / "run", "torch"), ("ct2", ct2_dir, "ctranslate2"),
                                    ("ct2-from-checkpoint", root / "run" / "last.pt", "ctranslate2")):
        out = tmp_path / f"{name}.txt"
        r = runner.invoke(app, ["translate", str(model_arg), "--engine", engine, "--greedy", "-i", str(inp),
                                "-o", str(out), "--set", "decode.max_input_tokens=100"])
        assert r.exit_code == 0, r.output
        outs[name] = out.read_text(encoding="utf-8").split("\n")
    assert outs["ct2"] == outs["torch"] == outs["ct2-from-checkpoint"]
    assert len(outs["ct2"]) == 9 and outs["ct2"][1] == "" and outs["ct2"][3] == "" and outs["ct2"][0] != ""
    r = runner.invoke(app, ["translate", str(ct2_dir), "--beam", "3", "--nbest", "2", "-i", str(inp),
                            "--engine", "ctranslate2"])
    rows = [line.split(" ||| ") for line in r.stdout.splitlines()]
    assert r.exit_code == 0 and [int(x[0]) for x in rows] == [k for k in range(8) for _ in range(2)]
    r = runner.invoke(app, ["translate", str(ct2_dir), "-i", str(inp)])
    assert r.exit_code == 2 and "is a CTranslate2 export; translate it with --engine ctranslate2" in r.output
    # The exported position table covers decode.max_input_tokens (1024): longer needs a new export.
    r = runner.invoke(app, ["translate", str(ct2_dir), "--engine", "ctranslate2", "-i", str(inp),
                            "--set", "decode.max_input_tokens=5000"])
    assert r.exit_code == 2 and "export again with the same --set decode.* options" in r.output
    r = runner.invoke(app, ["export", str(root / "run"), "-o", str(tmp_path / "long"), "--set",
                            "decode.max_input_tokens=5000"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["translate", str(tmp_path / "long"), "--engine", "ctranslate2", "-i", str(inp),
                            "--set", "decode.max_input_tokens=5000", "--greedy"])
    assert r.exit_code == 0 and r.stdout.split("\n")[3] != ""  # the long line is translated now


def test_missing_ctranslate2_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # `import ctranslate2` now raises ImportError
    r = runner.invoke(app, ["export", str(tmp_path / "run"), "-o", str(tmp_path / "out")])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == ["error: CTranslate2 is not installed; install it with `pip install"
                                             " ctranslate2` (or `pip install -e .[ct2]`, which `make install` does)"]
    assert "Traceback" not in r.output


@pytest.mark.slow
def test_mtkit_score_keeps_the_line_contract_and_ctranslate2_scores_alike(tmp_path, trained):
    """`mtkit score`: one line per pair, in order, the search's own log-probabilities (a model's
    greedy output scores its greedy log_prob); CTranslate2's score_batch within 1e-3 in fp32;
    files of different lengths are one error line and leave no output."""
    import json

    from mtkit.decoding.forced import score_pairs

    root = trained
    model_path = root / "run" / "last.pt"
    srcs = sources(root, 40)
    model, tok, cfg = load_model(model_path)
    greedy = decode_settings(cfg.decode, greedy=True)
    hyps = translate_lines(model, tok, srcs, greedy)
    tgts = [h[0].text for h in hyps]
    srcs[3], tgts[5] = "", ""  # a blank source: no score; an empty target: P(EOS | source)
    (tmp_path / "s.txt").write_text("".join(s + "\n" for s in srcs))
    (tmp_path / "t.txt").write_text("".join(t + "\n" for t in tgts))
    args = ["score", str(model_path), "--src", str(tmp_path / "s.txt"), "--tgt", str(tmp_path / "t.txt"),
            "--set", "decode.precision=fp32"]
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "scores.txt")])
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "scores.txt").read_text().splitlines()
    assert len(lines) == 40 and lines[3] == "" and float(lines[5]) < 0
    for i in (0, 1, 2, 10, 39):  # the greedy outputs score what greedy search said they scored
        assert float(lines[i]) == pytest.approx(hyps[i][0].score, abs=1e-4)
    r = runner.invoke(app, [*args, "--json", "--normalize"])
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert rows[3] == {"score": None} and rows[0]["pieces"][-1] == "</s>"
    assert rows[0]["score"] == pytest.approx(sum(rows[0]["log_probs"]) / len(rows[0]["pieces"]), abs=1e-5)
    # CTranslate2 float32 gives the same scores
    engine, tok2, decode, _ = load_engine(export(model_path, tmp_path / "ct2"), "cpu")
    ours = score_pairs(model, tok, srcs, tgts, greedy)
    theirs = score_pairs(engine, tok2, srcs, tgts, decode)
    for a, b in zip(ours, theirs):
        assert (a is None and b is None) or a.log_probs == pytest.approx(b.log_probs, abs=1e-3)
    # unequal lengths: one error line naming the first line without a partner, and no output
    (tmp_path / "t.txt").write_text("".join(t + "\n" for t in tgts[:-2]))
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "bad.txt")])
    assert r.exit_code != 0 and not (tmp_path / "bad.txt").exists()
    assert r.output.strip().splitlines()[-1].startswith("error: source ") and "line 39 is only in" in r.output
