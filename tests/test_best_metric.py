"""train.best_metric (what picks best.pt and counts patience) and validation scored for the target
language (train.valid_tokenize, train.valid_chrf_word_order)."""

import json
import logging

import pytest

from mtkit.config import TrainConfig
from mtkit.errors import ConfigError
from mtkit.model.checkpoint import load_checkpoint
from mtkit.training.state import Progress, restart_best_if_scored_otherwise
from mtkit.training.train import train
from tests.tinyrun import tiny_config


def test_resuming_with_the_same_scoring_keeps_best_and_patience():
    p = restart_best_if_scored_otherwise(Progress(best_bleu=7.0, best=7.0, bad_validations=2),
                                         {"best_metric": "bleu"}, TrainConfig())
    assert (p.best, p.best_bleu, p.bad_validations) == (7.0, 7.0, 2)


def test_a_run_saved_before_best_metric_existed_resumes_with_its_best_bleu():
    p = restart_best_if_scored_otherwise(Progress(best_bleu=6.5, bad_validations=1), {}, TrainConfig())
    assert (p.best, p.bad_validations) == (6.5, 1)


@pytest.mark.parametrize("change", [dict(best_metric="loss"), dict(valid_tokenize="char"),
                                    dict(valid_chrf_word_order=2), dict(valid_max_sentences=100)])
def test_resuming_with_other_scoring_restarts_best_and_patience_with_a_warning(change, caplog):
    saved = {"best_metric": "bleu", "valid_max_sentences": None, "valid_tokenize": None, "valid_chrf_word_order": 0}
    with caplog.at_level(logging.WARNING, logger="mtkit"):
        p = restart_best_if_scored_otherwise(Progress(best_bleu=7.0, best=7.0, bad_validations=3), saved,
                                             TrainConfig(**change))
    assert (p.best, p.best_bleu, p.bad_validations) == (None, -1.0, 0)
    (key,) = change
    assert any(f"train.{key}" in r.message and "start afresh" in r.message for r in caplog.records)


@pytest.mark.slow
def test_best_metric_loss_picks_the_lowest_dev_loss_and_validation_scores_chinese_as_zh(tmp_path):
    from typer.testing import CliRunner

    from mtkit.cli import app

    cfg = tiny_config(tmp_path, extra=["data.tgt_lang=zh", "train.best_metric=loss", "train.max_steps=40",
                                       "train.eval_every=10", "train.patience=0", "train.valid_chrf_word_order=2"])
    train(cfg)
    events = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    valids = [e for e in events if e["event"] == "valid"]
    assert len(valids) >= 4 and all("tok:zh" in e["signature"] and "nw:2" in e["chrf_signature"] for e in valids)
    lowest = min(valids, key=lambda e: e["valid_loss"])
    best = load_checkpoint(tmp_path / "run/best.pt")
    assert best["progress"]["step"] == lowest["step"]
    assert best["progress"]["best"] == pytest.approx(lowest["valid_loss"])
    assert all(e["best_metric"] == "loss" for e in valids)
    end = next(e for e in events if e["event"] == "end")
    assert end["best"] == pytest.approx(lowest["valid_loss"]) and end["best_bleu"] == max(e["bleu"] for e in valids)
    # `mtkit evaluate --valid` scores best.pt as its validation did: zh BLEU, chrF++
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run/best.pt"), "--valid", "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["bleu"] == pytest.approx(lowest["bleu"], abs=1e-9) and out["signature"]["bleu"] == lowest["signature"]
    assert out["chrf"] == pytest.approx(lowest["chrf"], abs=1e-9) and out["label"]["chrf"] == "chrF2++"


@pytest.mark.slow
def test_a_validation_tokenizer_that_cannot_run_stops_training_before_the_first_update(tmp_path):
    cfg = tiny_config(tmp_path, extra=["train.valid_tokenize=nope"])
    with pytest.raises(ConfigError, match="train.valid_tokenize .nope.: sacreBLEU"):
        train(cfg)
    assert not (tmp_path / "run/last.pt").exists()


def test_a_japanese_target_without_mecab_is_one_error_before_anything_is_prepared(tmp_path):
    from sacrebleu.metrics import BLEU

    try:
        BLEU(trg_lang="ja")
        pytest.skip("MeCab is installed here: Japanese BLEU runs")
    except RuntimeError:
        pass
    cfg = tiny_config(tmp_path, extra=["data.tgt_lang=ja"])
    with pytest.raises(ConfigError, match=r'needs MeCab: pip install "sacrebleu\[ja\]".*train.valid_tokenize'):
        train(cfg)
    assert not (tmp_path / "run").exists()
