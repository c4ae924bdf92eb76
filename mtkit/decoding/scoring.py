"""Score translations with sacreBLEU: BLEU, chrF (or chrF++) and TER, each with its signature.

`score` is the one function both `mtkit evaluate` and training's validation call, so the dev
BLEU logged during training is the number `mtkit evaluate --valid` reproduces. It scores
detokenized text against one reference per line; it does not translate (translate.py does).

BLEU is tokenized for the target language as sacreBLEU's own command line does (`-l xx-zh`):
`zh` for Chinese, `ja-mecab` for Japanese, `ko-mecab` for Korean, `13a` for the rest; 13a does not
split Chinese, Japanese or Korean into words, so BLEU on them would count whole clauses. ja-mecab
and ko-mecab need MeCab (`pip install "sacrebleu[ja]"` / `"sacrebleu[ko]"`); without it scoring
stops with one error line rather than fall back to 13a. TER tokenizes the same three with
sacreBLEU's Asian-language support (normalized; it would otherwise count whole lines as words).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sacrebleu.metrics import BLEU, CHRF, TER

from mtkit.errors import ConfigError, DataError

CJK = ("zh", "ja", "ko")  # targets whose BLEU needs its own tokenizer (and TER its Asian support)
ISO_639_3 = {"zho": "zh", "cmn": "zh", "yue": "zh", "jpn": "ja", "kor": "ko"}  # three-letter codes for them


def score(hyps: list[str], refs: list[str], metrics: tuple[str, ...] = ("bleu", "chrf", "ter"), *,
          tgt_lang: str | None = None, tokenize: str | None = None, chrf_word_order: int = 0) -> dict[str, Any]:
    """Corpus-level sacreBLEU scores of detokenized hypotheses against references.

    Args:
        hyps: one hypothesis per line.
        refs: one reference per line, aligned with `hyps`.
        metrics: which of "bleu", "chrf", "ter" to compute (validation skips TER to save time).
        tgt_lang: the target language code (data.tgt_lang); picks BLEU's tokenizer as sacreBLEU does.
        tokenize: a sacreBLEU tokenizer name for BLEU instead (`--tokenize`).
        chrf_word_order: chrF's word n-gram order: 0 chrF, 2 chrF++.

    Returns:
        `{"bleu": float, "chrf": float, "ter": float, "signature": {metric: str}, "label": {metric:
        str}, "n": int}` with numbers exactly as sacreBLEU reports them (BLEU and chrF on 0-100).

    Raises:
        ConfigError: an unknown tokenizer, or one whose package is missing (the line says which).
    """
    if len(hyps) != len(refs):
        raise DataError(f"{len(hyps)} hypotheses but {len(refs)} references; they must be line-aligned")
    lang = bleu_language(tgt_lang)
    makers = {"bleu": lambda: bleu_metric(lang, tokenize), "chrf": lambda: CHRF(word_order=chrf_word_order),
              # TER tokenizes (and so splits CJK characters) only when normalized.
              "ter": lambda: TER(normalized=lang in CJK, asian_support=lang in CJK)}
    out: dict[str, Any] = {"n": len(hyps), "signature": {}, "label": {}}
    for name in metrics:
        metric = makers[name]()
        result = metric.corpus_score(hyps, [refs])
        out[name] = result.score
        out["signature"][name] = str(metric.get_signature())
        out["label"][name] = result.name
    return out


@dataclass(frozen=True)
class Scoring:
    """How `mtkit evaluate` and validation score: the target language (BLEU's tokenizer), a sacreBLEU
    tokenizer instead, chrF's word order."""

    tgt_lang: str | None = None
    tokenize: str | None = None
    chrf_word_order: int = 0

    def score(self, hyps: list[str], refs: list[str], metrics: tuple[str, ...] = ("bleu", "chrf", "ter")
              ) -> dict[str, Any]:
        return score(hyps, refs, metrics, tgt_lang=self.tgt_lang, tokenize=self.tokenize,
                     chrf_word_order=self.chrf_word_order)

    def check(self, key: str = "--tokenize") -> None:
        """Fail now, with one error line naming `key`, where BLEU's tokenizer cannot run: not after
        translating a test set or training up to the first validation."""
        bleu_metric(bleu_language(self.tgt_lang), self.tokenize, key)


def validation_scoring(cfg: Any) -> Scoring:
    """How validation scores the dev set (and `mtkit evaluate --valid` again): BLEU tokenized for
    data.tgt_lang (or train.valid_tokenize), chrF with train.valid_chrf_word_order."""
    return Scoring(cfg.data.tgt_lang, cfg.train.valid_tokenize, cfg.train.valid_chrf_word_order)


def bleu_language(tgt_lang: str | None) -> str:
    """A language code as sacreBLEU's BLEU reads it: "zh-Hans", "zh_CN", "ZH" and "zho" are "zh"."""
    primary = re.split(r"[-_]", (tgt_lang or "").strip())[0].lower()
    return ISO_639_3.get(primary, primary)


def bleu_metric(lang: str, tokenize: str | None, key: str = "--tokenize") -> BLEU:
    """sacreBLEU's BLEU for target language `lang`, or with tokenizer `tokenize` when given (`key`:
    where the user sets it, for the error line)."""
    if tokenize is not None and tokenize not in BLEU.TOKENIZERS:
        raise ConfigError(f"{key} {tokenize!r}: sacreBLEU's tokenizers are {', '.join(BLEU.TOKENIZERS)}")
    name = tokenize or {"zh": "zh", "ja": "ja-mecab", "ko": "ko-mecab"}.get(lang, "13a")
    try:
        return BLEU(trg_lang=lang, tokenize=tokenize)
    except (RuntimeError, ImportError, OSError) as e:  # ja-mecab / ko-mecab without MeCab; spm without its model
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        need = f"MeCab: pip install \"sacrebleu[{name[:2]}]\"" if name.endswith("-mecab") else "what sacreBLEU says"
        target = f" for target language {lang!r}" if tokenize is None else ""
        raise ConfigError(f"BLEU{target} tokenizes with {name}, which needs {need} (sacreBLEU: {why});"
                          f" or choose another tokenizer with {key}, e.g. char") from None


def format_scores(result: dict[str, Any]) -> str:
    """Human-readable lines: each score with its signature."""
    lines = []
    for name in ("bleu", "chrf", "ter"):
        if name in result:
            label = result.get("label", {}).get(name, name.upper())
            lines.append(f"{label} = {result[name]:.2f}    {result['signature'][name]}")
    return "\n".join(lines)
