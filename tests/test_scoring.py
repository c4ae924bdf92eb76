"""Tests for decoding/scoring.py and `mtkit evaluate`'s scoring options: BLEU tokenized for the
target language, chrF++, and one error line for a tokenizer that cannot run."""

import json

import pytest
from sacrebleu.metrics import BLEU, CHRF, TER

from mtkit.decoding.scoring import bleu_language, format_scores, score
from mtkit.errors import ConfigError

HYPS = ["我们今天下午去公园散步。", "他昨天买了一本新书。"]
REFS = ["我们今天下午去公园走走。", "他昨天买了一本书。"]


def sacrebleu_bleu(hyps, refs, **kw):
    metric = BLEU(**kw)
    return metric.corpus_score(hyps, [refs]).score, str(metric.get_signature())


def test_chinese_bleu_equals_sacrebleu_for_zh_and_differs_from_13a():
    ours = score(HYPS, REFS, tgt_lang="zh")
    theirs, signature = sacrebleu_bleu(HYPS, REFS, trg_lang="zh")
    assert ours["bleu"] == theirs and ours["signature"]["bleu"] == signature
    assert "tok:zh" in signature
    as_13a = score(HYPS, REFS, tgt_lang="en")
    assert as_13a["bleu"] == sacrebleu_bleu(HYPS, REFS)[0] and "tok:13a" in as_13a["signature"]["bleu"]
    assert ours["bleu"] > as_13a["bleu"] + 20  # 13a counts each clause as one word
    # TER splits the characters too (sacreBLEU's Asian support, normalized)
    ter = TER(normalized=True, asian_support=True)
    assert ours["ter"] == ter.corpus_score(HYPS, [REFS]).score and "asian:yes" in ours["signature"]["ter"]


@pytest.mark.parametrize("code", ["zh", "ZH", "zh-Hans", "zh_CN", "zho", "cmn"])
def test_language_codes_name_chinese_however_written(code):
    assert bleu_language(code) == "zh"
    assert "tok:zh" in score(HYPS, REFS, tgt_lang=code)["signature"]["bleu"]


def test_tokenize_overrides_the_language_and_unknown_names_are_refused():
    char = score(HYPS, REFS, tgt_lang="zh", tokenize="char")
    assert char["bleu"] == sacrebleu_bleu(HYPS, REFS, tokenize="char")[0] and "tok:char" in char["signature"]["bleu"]
    with pytest.raises(ConfigError, match=r"--tokenize 'zhh': sacreBLEU's tokenizers are none, zh, 13a"):
        score(HYPS, REFS, tokenize="zhh")


def test_chrf_plus_plus():
    result = score(HYPS, REFS, tgt_lang="zh", chrf_word_order=2)
    assert result["chrf"] == CHRF(word_order=2).corpus_score(HYPS, [REFS]).score
    assert result["label"]["chrf"] == "chrF2++" and "nw:2" in result["signature"]["chrf"]
    assert format_scores(result).splitlines()[1].startswith("chrF2++ = ")
    assert score(HYPS, REFS)["label"]["chrf"] == "chrF2"


@pytest.mark.parametrize("lang", ["ja", "ko"])
def test_japanese_and_korean_need_mecab_and_never_fall_back_to_13a(lang):
    try:
        BLEU(trg_lang=lang)
    except RuntimeError:
        with pytest.raises(ConfigError) as e:
            score(["a"], ["a"], tgt_lang=lang)
        message = str(e.value)
        assert f'pip install "sacrebleu[{lang}]"' in message and f"{lang}-mecab" in message
        assert "\n" not in message
    else:  # MeCab is installed here: then the score is sacreBLEU's with MeCab
        assert f"tok:{lang}-mecab" in score(["a"], ["a"], tgt_lang=lang)["signature"]["bleu"]


def test_evaluate_a_hypothesis_file_for_a_target_language(tmp_path):
    from typer.testing import CliRunner

    from mtkit.cli import app

    hyp, ref = tmp_path / "hyp.zh", tmp_path / "ref.zh"
    hyp.write_text("".join(h + "\n" for h in HYPS), encoding="utf-8")
    ref.write_text("".join(r + "\n" for r in REFS), encoding="utf-8")
    r = CliRunner().invoke(app, ["evaluate", "--hyp", str(hyp), "--ref", str(ref), "--tgt-lang", "zh",
                                 "--chrf-word-order", "2", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["bleu"] == sacrebleu_bleu(HYPS, REFS, trg_lang="zh")[0] and "tok:zh" in out["signature"]["bleu"]
    assert out["label"]["chrf"] == "chrF2++"
    r = CliRunner().invoke(app, ["evaluate", "--hyp", str(hyp), "--ref", str(ref)])  # no language: 13a
    assert r.exit_code == 0 and "tok:13a" in r.stdout
    for bad, says in ((["--tokenize", "nope"], "--tokenize 'nope'"), (["--chrf-word-order", "-1"], "--chrf-word-order")):
        r = CliRunner().invoke(app, ["evaluate", "--hyp", str(hyp), "--ref", str(ref), *bad])
        assert r.exit_code != 0
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], r.output
