"""Score translations with sacreBLEU: BLEU, chrF and TER, each with its signature.

`score` is the one function both `mtkit evaluate` and training's validation call, so the dev
BLEU logged during training is the number `mtkit evaluate --valid` reproduces. It scores
detokenized text against one reference per line; it does not translate (translate.py does).
"""

from __future__ import annotations

from typing import Any

from sacrebleu.metrics import BLEU, CHRF, TER

from mtkit.errors import DataError


def score(hyps: list[str], refs: list[str], metrics: tuple[str, ...] = ("bleu", "chrf", "ter")) -> dict[str, Any]:
    """Corpus-level sacreBLEU scores of detokenized hypotheses against references.

    Args:
        hyps: one hypothesis per line.
        refs: one reference per line, aligned with `hyps`.
        metrics: which of "bleu", "chrf", "ter" to compute (validation skips TER to save time).

    Returns:
        `{"bleu": float, "chrf": float, "ter": float, "signature": {metric: str}, "n": int}` with
        numbers exactly as sacreBLEU reports them (BLEU and chrF on a 0-100 scale).
    """
    if len(hyps) != len(refs):
        raise DataError(f"{len(hyps)} hypotheses but {len(refs)} references; they must be line-aligned")
    makers = {"bleu": BLEU, "chrf": CHRF, "ter": TER}
    out: dict[str, Any] = {"n": len(hyps), "signature": {}}
    for name in metrics:
        metric = makers[name]()
        result = metric.corpus_score(hyps, [refs])
        out[name] = result.score
        out["signature"][name] = str(metric.get_signature())
    return out


def format_scores(result: dict[str, Any]) -> str:
    """Human-readable lines: each score with its signature."""
    lines = []
    for name, label in (("bleu", "BLEU"), ("chrf", "chrF2"), ("ter", "TER")):
        if name in result:
            lines.append(f"{label} = {result[name]:.2f}    {result['signature'][name]}")
    return "\n".join(lines)
